"""Sans-I/O decoder for the app protocol's 10-digit length-prefix framing.

One decoder serves the app server, the client, the capture decoder and the
verifier: feed it bytes as they arrive (whole, split at any byte, or several
frames at once) and take complete frames out.  A prefix that is not ten ASCII
digits, or a length above the configured cap, is a :class:`FramingError`:
the caller answers with an error frame and closes, as WIRE.md expects.
"""

from __future__ import annotations

from dataclasses import dataclass

from stacklab.wire import FRAME_MAX_BODY, FRAME_PREFIX_LEN, parse_frame_prefix


class FramingError(ValueError):
    """The byte stream does not follow the 10-digit framing."""


@dataclass(frozen=True, slots=True)
class Frame:
    """A complete frame: its declared length, the body, and where it started in the stream."""

    length: int
    body: bytes
    offset: int


class FrameDecoder:
    """Incremental frame decoder.

    ``max_body`` caps the declared length so that a lying prefix cannot make
    a receiver allocate gigabytes.  The body is gathered into one
    preallocated ``bytearray`` (no quadratic ``bytes + bytes``).
    """

    def __init__(self, max_body: int = FRAME_MAX_BODY) -> None:
        self.max_body = max_body
        self._prefix = bytearray()
        self._body: bytearray | None = None
        self._filled = 0
        self._offset = 0  # stream offset of the frame being read
        self._consumed = 0  # bytes fed so far
        self.error: FramingError | None = None

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame held so far (prefix included)."""
        return len(self._prefix) + self._filled

    @property
    def expected_length(self) -> int | None:
        """The declared body length of the frame in progress, once its prefix is complete."""
        return None if self._body is None else len(self._body)

    def feed(self, data: bytes | memoryview) -> list[Frame]:
        """Consume ``data``; return the frames it completes.  Raises FramingError once broken."""
        if self.error is not None:
            raise self.error
        frames: list[Frame] = []
        view = memoryview(data)
        pos = 0
        while pos < len(view):
            if self._body is None:
                take = min(FRAME_PREFIX_LEN - len(self._prefix), len(view) - pos)
                self._prefix += view[pos : pos + take]
                pos += take
                if len(self._prefix) < FRAME_PREFIX_LEN:
                    break
                try:
                    length = parse_frame_prefix(bytes(self._prefix))
                except ValueError as exc:
                    self.error = FramingError(str(exc))
                    raise self.error from None
                if length > self.max_body:
                    self.error = FramingError(
                        f"frame length {length} exceeds the limit of {self.max_body} bytes"
                    )
                    raise self.error
                self._body = bytearray(length)
                self._filled = 0
            take = min(len(self._body) - self._filled, len(view) - pos)
            self._body[self._filled : self._filled + take] = view[pos : pos + take]
            self._filled += take
            pos += take
            if self._filled == len(self._body):
                frames.append(Frame(len(self._body), bytes(self._body), self._offset))
                self._offset = self._consumed + pos
                self._prefix.clear()
                self._body = None
                self._filled = 0
        self._consumed += len(view)
        return frames
