"""Transfer options a stacklab client negotiates in its SYN payload.

An original client sends an empty SYN and gets exactly the original
behaviour (:data:`ORIGINAL`).  A stacklab client puts a small JSON object in
its SYN payload; the server clamps each value to its own limits and answers
the accepted values in the SYN-ACK payload.  An original server ignores the
SYN payload and answers an empty SYN-ACK, which tells the client to fall back
to :data:`ORIGINAL`.

Both negotiation payloads end with the CRC32C trailer (see
:mod:`stacklab.transport.integrity`) so that a corrupted offer is dropped and
resent instead of being misread.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

from stacklab.wire import (
    MAX_CHUNK_FOR_ORIGINAL_CLIENT,
    MAX_STACKLAB_CHUNK,
    ORIGINAL_CHUNK_SIZE,
    ORIGINAL_MAX_WINDOW,
    STACKLAB_DEFAULT_CHUNK,
)

OPTIONS_VERSION = 1
"""Bumped when the meaning of a key changes; a server answers with the version it speaks."""


class OptionsError(ValueError):
    """A negotiation payload that is not a valid options object."""


@dataclass(frozen=True, slots=True)
class TransferOptions:
    """How one transfer runs.

    ``chunk_size`` counts content bytes per DATA datagram (the CRC trailer
    comes on top); ``max_window`` caps the AIMD window in chunks;
    ``integrity`` adds a CRC32C trailer to every datagram and the content's
    SHA-256 to the FIN; ``ack_every`` lets the receiver acknowledge up to that
    many in-order chunks with one cumulative ACK (it still ACKs at the end of
    every batch it is handed, so a lone chunk is never left unacknowledged).

    ``duplicate_base_on_timeout`` is the sender's own policy, never on the
    wire: after a timeout the base chunk goes out twice, so that on a very
    lossy path one round of the give-up count is less likely to be lost
    entirely.  The original sender sends it once, and an original client must
    see exactly the original behaviour, so it is off unless the session was
    negotiated (:func:`decode_options` and :data:`STACKLAB_DEFAULT` turn it on).
    """

    chunk_size: int = ORIGINAL_CHUNK_SIZE
    max_window: int = ORIGINAL_MAX_WINDOW
    integrity: bool = False
    ack_every: int = 1
    duplicate_base_on_timeout: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.chunk_size <= MAX_CHUNK_FOR_ORIGINAL_CLIENT:
            raise OptionsError(
                f"chunk size {self.chunk_size} outside 1..{MAX_CHUNK_FOR_ORIGINAL_CLIENT}"
            )
        if not 1 <= self.max_window <= MAX_WINDOW_LIMIT:
            raise OptionsError(f"window {self.max_window} outside 1..{MAX_WINDOW_LIMIT}")
        if not 1 <= self.ack_every <= MAX_ACK_EVERY:
            raise OptionsError(f"ack_every {self.ack_every} outside 1..{MAX_ACK_EVERY}")

    def to_dict(self) -> dict[str, object]:
        return {
            "v": OPTIONS_VERSION,
            "chunk": self.chunk_size,
            "window": self.max_window,
            "integrity": self.integrity,
            "ack_every": self.ack_every,
        }


MAX_WINDOW_LIMIT = 4096
MAX_ACK_EVERY = 64

ORIGINAL = TransferOptions(
    chunk_size=ORIGINAL_CHUNK_SIZE,
    max_window=ORIGINAL_MAX_WINDOW,
    integrity=False,
    ack_every=1,
    duplicate_base_on_timeout=False,
)
"""What an original peer does: 500-byte chunks, window 5, no trailer, one ACK per chunk,
each resend sent once."""

NEGOTIATED_BASE = replace(ORIGINAL, duplicate_base_on_timeout=True)
"""What a negotiated session starts from: the original values for every key the offer omits,
with stacklab's own sender policies."""

STACKLAB_DEFAULT = TransferOptions(
    chunk_size=STACKLAB_DEFAULT_CHUNK,
    max_window=256,
    integrity=True,
    ack_every=16,
    duplicate_base_on_timeout=True,
)
"""What stacklab's client asks for unless told otherwise."""


@dataclass(frozen=True, slots=True)
class OptionLimits:
    """The most a server grants a stacklab client (original clients always get ORIGINAL)."""

    max_chunk: int = MAX_STACKLAB_CHUNK
    max_window: int = 1024
    allow_integrity: bool = True
    max_ack_every: int = 32

    def clamp(self, requested: TransferOptions) -> TransferOptions:
        """The accepted values: each request clamped to the limits, never above it."""
        return replace(
            requested,
            chunk_size=min(requested.chunk_size, self.max_chunk),
            max_window=min(requested.max_window, self.max_window),
            integrity=requested.integrity and self.allow_integrity,
            ack_every=min(requested.ack_every, self.max_ack_every),
        )


def encode_options(options: TransferOptions) -> bytes:
    """The JSON body of a SYN request or a SYN-ACK answer (without the CRC trailer)."""
    return json.dumps(options.to_dict(), separators=(",", ":"), sort_keys=True).encode("ascii")


def decode_options(body: bytes) -> TransferOptions:
    """Parse a JSON options body; unknown keys are ignored, missing keys take ORIGINAL's values.

    The result describes a negotiated session, so its sender policies are
    stacklab's (:data:`NEGOTIATED_BASE`), whatever the values on the wire.

    Raises :class:`OptionsError` for anything that is not a JSON object with
    sane values, so callers can drop the datagram and count it.
    """
    try:
        obj = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise OptionsError(f"options are not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise OptionsError("options are not a JSON object")
    values: dict[str, object] = {}
    for key, attr, kind in (
        ("chunk", "chunk_size", int),
        ("window", "max_window", int),
        ("integrity", "integrity", bool),
        ("ack_every", "ack_every", int),
    ):
        if key not in obj:
            continue
        value = obj[key]
        # bool is an int subclass: reject True as a chunk size and 1 as a flag.
        if type(value) is not kind:
            raise OptionsError(f"option {key!r} must be {kind.__name__}, not {value!r}")
        values[attr] = value
    return replace(NEGOTIATED_BASE, **values)  # type: ignore[arg-type]
