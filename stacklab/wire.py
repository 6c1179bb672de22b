"""The wire facts of the stack: one source of truth.

Every byte layout, flag letter and default address that the original
programs put on the wire is defined here and nowhere else (see WIRE.md in the
project documentation).  The fast struct codec used by the services, the
Scapy layers in :mod:`stacklab.layers` and the generated Wireshark dissector
are all derived from the tables in this module, and the test suite proves that
they agree byte for byte.

This module imports nothing heavy: it sits on the hot path of the transfer
loop and of capture analysis.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import Enum
from typing import Final, NamedTuple

# ---------------------------------------------------------------------------
# Default addresses and ports (every one is configurable at run time)
# ---------------------------------------------------------------------------

DHCP_ADDR: Final = "127.0.0.1"
DHCP_PORT: Final = 6767
DNS_ADDR: Final = "127.0.0.1"
DNS_PORT: Final = 5353
APP_ADDR: Final = "127.0.0.3"
APP_TCP_PORT: Final = 2121
APP_RUDP_PORT: Final = 2122
ORIGIN_ADDR: Final = "127.0.0.1"
ORIGIN_PORT: Final = 8080
OFFERED_ADDR: Final = "127.0.0.2"
APP_DOMAIN: Final = "my-app-server.local"
DEFAULT_URL: Final = f"http://{ORIGIN_ADDR}:{ORIGIN_PORT}/test_file.txt"


class Endpoint(NamedTuple):
    """A default (address, port) pair of one service."""

    addr: str
    port: int
    transport: str  # "udp" or "tcp"


DEFAULT_ENDPOINTS: Final[dict[str, Endpoint]] = {
    "dhcp": Endpoint(DHCP_ADDR, DHCP_PORT, "udp"),
    "dns": Endpoint(DNS_ADDR, DNS_PORT, "udp"),
    "app-tcp": Endpoint(APP_ADDR, APP_TCP_PORT, "tcp"),
    "app-rudp": Endpoint(APP_ADDR, APP_RUDP_PORT, "udp"),
    "origin": Endpoint(ORIGIN_ADDR, ORIGIN_PORT, "tcp"),
}

# ---------------------------------------------------------------------------
# DHCP and DNS (JSON over UDP)
# ---------------------------------------------------------------------------

DHCP_DISCOVER: Final = b"DISCOVER"
"""The bare 8-byte keyword the original client sends (not JSON)."""

DNS_STATUS_SUCCESS: Final = "SUCCESS"
DNS_STATUS_NOT_FOUND: Final = "NOT_FOUND"
DNS_STATUS_ERROR: Final = "ERROR"

JSON_WELL_KNOWN_KEYS: Final = ("type", "assigned_ip", "domain", "status", "ip", "client_id")
"""Keys that the Scapy JSON layers and the decoder expose as named fields."""

# ---------------------------------------------------------------------------
# App protocol over TCP: 10 ASCII decimal digits, zero padded, then the body
# ---------------------------------------------------------------------------

FRAME_PREFIX_LEN: Final = 10
FRAME_MAX_BODY: Final = 10**FRAME_PREFIX_LEN - 1
FETCH_COMMAND: Final = "FETCH"
ERROR_PREFIX: Final = "ERROR: "
ERROR_UNKNOWN_COMMAND: Final = "ERROR: Unknown command. Use: FETCH <url>"


def fetch_error_text(url: str, reason: str) -> str:
    """The byte-exact error text the original app server sends on a failed fetch."""
    return f"ERROR: Could not fetch '{url}'. Reason: {reason}"


def frame_prefix(length: int) -> bytes:
    """The 10-digit prefix for a body of ``length`` bytes (``str(n).zfill(10)``)."""
    if not 0 <= length <= FRAME_MAX_BODY:
        raise ValueError(f"frame body length {length} does not fit {FRAME_PREFIX_LEN} digits")
    return str(length).zfill(FRAME_PREFIX_LEN).encode("ascii")


def encode_frame(body: bytes) -> bytes:
    """Prefix ``body`` with its 10-digit length."""
    return frame_prefix(len(body)) + body


def parse_frame_prefix(prefix: bytes) -> int:
    """Parse a 10-byte length prefix; raise ``ValueError`` unless it is 10 ASCII digits."""
    if len(prefix) != FRAME_PREFIX_LEN or not prefix.isdigit():
        raise ValueError(f"bad frame prefix {prefix!r}: expected {FRAME_PREFIX_LEN} ASCII digits")
    return int(prefix)


# ---------------------------------------------------------------------------
# RUDP over UDP: struct.pack('!IIcH', seq, ack, flag, length) + payload
# ---------------------------------------------------------------------------


class HeaderField(NamedTuple):
    """One field of the RUDP header; the table below drives every encoder."""

    name: str
    struct_code: str
    size: int
    description: str


RUDP_HEADER_FIELDS: Final = (
    HeaderField("seq", "I", 4, "Sequence number"),
    HeaderField("ack", "I", 4, "Acknowledgement number"),
    HeaderField("flag", "c", 1, "Flag (one ASCII letter)"),
    HeaderField("len", "H", 2, "Payload length"),
)
RUDP_HEADER_FORMAT: Final = "!" + "".join(f.struct_code for f in RUDP_HEADER_FIELDS)
RUDP_HEADER = struct.Struct(RUDP_HEADER_FORMAT)
RUDP_HEADER_LEN: Final = 11
assert RUDP_HEADER_FORMAT == "!IIcH" and RUDP_HEADER.size == RUDP_HEADER_LEN

# Where each field starts and how long it is.  Written as literals so that
# compiled readers (the capture scan, built with mypyc) fold them into
# constants; the assertion ties them to the table above.
RUDP_SEQ_AT: Final = 0
RUDP_SEQ_SIZE: Final = 4
RUDP_ACK_AT: Final = 4
RUDP_ACK_SIZE: Final = 4
RUDP_FLAG_AT: Final = 8
RUDP_FLAG_SIZE: Final = 1
RUDP_LEN_AT: Final = 9
RUDP_LEN_SIZE: Final = 2


def rudp_field_layout() -> dict[str, tuple[int, int]]:
    """``{field name: (offset, size)}`` of the RUDP header, computed from the table."""
    layout = {}
    offset = 0
    for spec in RUDP_HEADER_FIELDS:
        layout[spec.name] = (offset, spec.size)
        offset += spec.size
    return layout


assert rudp_field_layout() == {
    "seq": (RUDP_SEQ_AT, RUDP_SEQ_SIZE),
    "ack": (RUDP_ACK_AT, RUDP_ACK_SIZE),
    "flag": (RUDP_FLAG_AT, RUDP_FLAG_SIZE),
    "len": (RUDP_LEN_AT, RUDP_LEN_SIZE),
}

RUDP_MAX_SEQ: Final = 2**32 - 1
RUDP_MAX_LEN: Final = 2**16 - 1


class Flag(bytes, Enum):
    """RUDP flag letters."""

    SYN = b"S"
    ACK = b"A"
    DATA = b"D"
    FIN = b"F"


FLAG_NAMES: Final[dict[bytes, str]] = {f.value: f.name for f in Flag}
"""Flag byte -> name, e.g. ``b"D" -> "DATA"``."""

FLAG_BYTES: Final = frozenset(FLAG_NAMES)

ORIGINAL_ISN: Final = 100
"""The original client always starts at 100; verifiers must not assume it."""
ORIGINAL_CHUNK_SIZE: Final = 500
ORIGINAL_MAX_WINDOW: Final = 5
ORIGINAL_TIMEOUT_S: Final = 1.0
ORIGINAL_RECV_BUFFER: Final = 2048
MAX_CHUNK_FOR_ORIGINAL_CLIENT: Final = ORIGINAL_RECV_BUFFER - RUDP_HEADER_LEN  # 2037
STACKLAB_DEFAULT_CHUNK: Final = 1400
"""Fits one Ethernet MTU: 1400 + 11 (RUDP) + 8 (UDP) + 20 (IPv4) + 4 (CRC) < 1500."""


@dataclass(frozen=True, slots=True)
class RudpHeader:
    """A decoded RUDP header.  ``length`` is what the header says, not the truth."""

    seq: int
    ack: int
    flag: bytes
    length: int

    @property
    def flag_letter(self) -> str:
        """The flag as a printable one-character string (``\\xNN`` when not ASCII)."""
        return flag_letter(self.flag)


def flag_letter(flag: bytes) -> str:
    """A printable form of a flag byte."""
    if len(flag) == 1 and 0x20 <= flag[0] < 0x7F:
        return flag.decode("ascii")
    return "".join(f"\\x{b:02x}" for b in flag)


def pack_rudp(
    seq: int, ack: int, flag: bytes, payload: bytes = b"", length: int | None = None
) -> bytes:
    """Encode a RUDP datagram.  ``length`` defaults to ``len(payload)``; pass it to lie."""
    return RUDP_HEADER.pack(seq, ack, flag, len(payload) if length is None else length) + payload


class RudpDecodeError(ValueError):
    """Raised when a datagram is too short to hold a RUDP header."""


def unpack_rudp(datagram: bytes | memoryview) -> tuple[RudpHeader, bytes]:
    """Split a datagram into header and payload.

    The payload is what follows the header, cut at the header's ``length``
    when the datagram is longer (the rest is padding).  A header whose
    ``length`` claims more than is present is returned as is: callers decide
    whether that is an error (see :func:`rudp_length_ok`).
    """
    if len(datagram) < RUDP_HEADER_LEN:
        raise RudpDecodeError(
            f"datagram of {len(datagram)} bytes is shorter than the {RUDP_HEADER_LEN}-byte RUDP header"
        )
    seq, ack, flag, length = RUDP_HEADER.unpack_from(datagram, 0)
    payload = bytes(datagram[RUDP_HEADER_LEN : RUDP_HEADER_LEN + length])
    return RudpHeader(seq, ack, flag, length), payload


def rudp_length_ok(datagram: bytes | memoryview) -> bool:
    """True when the header's length field equals the bytes that follow it."""
    if len(datagram) < RUDP_HEADER_LEN:
        return False
    return int.from_bytes(datagram[9:11], "big") == len(datagram) - RUDP_HEADER_LEN


def looks_like_rudp(datagram: bytes | memoryview) -> bool:
    """The strict heuristic for RUDP on any UDP port: known flag and exact length."""
    return (
        len(datagram) >= RUDP_HEADER_LEN
        and bytes(datagram[8:9]) in FLAG_BYTES
        and rudp_length_ok(datagram)
    )


@dataclass(frozen=True, slots=True)
class Ports:
    """Which UDP/TCP ports carry which protocol, for decoders and verifiers.

    Defaults follow the original programs; every tool that reads captures
    takes ``--rudp-port``, ``--dns-port``, ``--dhcp-port`` and ``--app-port``
    and builds one of these.
    """

    rudp: int = APP_RUDP_PORT
    dns: int = DNS_PORT
    dhcp: int = DHCP_PORT
    app: int = APP_TCP_PORT
    origin: int = ORIGIN_PORT


# ---------------------------------------------------------------------------
# RUDP extensions negotiated by a stacklab client (invisible to original peers)
# ---------------------------------------------------------------------------

ETHERNET_MAX_UDP_PAYLOAD: Final = 1500 - 20 - 8  # 1472: IPv4 MTU minus IPv4 and UDP headers
RUDP_CRC_TRAILER_LEN: Final = 4
"""With integrity negotiated, every datagram ends with CRC32C (big endian) of all bytes before it.

The header's length field counts the trailer (see :func:`rudp_trailer_ok`).
"""
MAX_STACKLAB_CHUNK: Final = (
    ETHERNET_MAX_UDP_PAYLOAD - RUDP_HEADER_LEN - RUDP_CRC_TRAILER_LEN
)  # 1457
RUDP_SHA256_LEN: Final = 32
RUDP_ABORT_PREFIX: Final = b"ABORT "
"""Start of a server FIN's payload (negotiated sessions only) ending a transfer whose content
failed mid-way (an origin that closed mid-body): the reason follows in UTF-8, instead of the
SHA-256.  A stacklab client reports the failure and keeps no file; it ACKs the FIN."""
RUDP_REJECT_PAYLOAD: Final = b"REJECT sha256"
"""Payload of a client's FIN (ack = the server's FIN) refusing content whose SHA-256 differs
(integrity negotiated only): the server records a failed transfer, not a completed one."""
"""With integrity negotiated, the FIN payload is the SHA-256 of the whole content (then the CRC)."""

_unpack_u16 = struct.Struct("!H").unpack_from
_unpack_u32 = struct.Struct("!I").unpack_from


def rudp_trailer_ok(datagram: bytes | memoryview) -> bool:
    """True when ``datagram`` ends with a valid CRC32C trailer of a negotiated session.

    The trailer is the last 4 bytes, CRC32C (Castagnoli, big endian) of every
    byte before it, header included, and the header's length field counts it
    (length = content + 4): a stacklab sender writes ``len(payload) + 4`` and
    a stacklab receiver drops any datagram whose length is not exact.  So a
    datagram carries a trailer exactly when its length is exact, at least 4
    bytes follow the header and the CRC matches.  Without session state a
    datagram whose last 4 bytes do not match is just a datagram without a
    trailer (a corrupted trailer and ordinary content look alike); an original
    datagram that matches by chance has a 1 in 2**32 probability.
    """
    # Struct reads, not slices and int.from_bytes: decode calls this for
    # every exact datagram of a capture, and this form costs a third.
    end = len(datagram) - RUDP_CRC_TRAILER_LEN
    if (
        end < RUDP_HEADER_LEN
        or _unpack_u16(datagram, 9)[0] != end + RUDP_CRC_TRAILER_LEN - RUDP_HEADER_LEN
    ):
        return False
    return crc_trailer_ok(datagram)


def crc_trailer_ok(datagram: bytes | memoryview) -> bool:
    """True when the last four bytes are the CRC32C of the rest (and a header fits before them).

    The receivers' check, for datagrams of a session known to carry trailers;
    the length field is theirs to judge.
    """
    end = len(datagram) - RUDP_CRC_TRAILER_LEN
    if end < RUDP_HEADER_LEN:
        return False
    from crc32c import crc32c  # here: the package costs 20 ms of start-up (importlib.metadata)

    return crc32c(datagram[:end]) == _unpack_u32(datagram, end)[0]


# -- the busy answer ---------------------------------------------------------------------
#
# A server that cannot take one more client (its session table is full, or the
# client's address already holds its share of sessions) answers the SYN, or the
# command, with a bare FIN: seq 0, ack = the ISN + 1 for a SYN and the command's
# seq for a command, no payload.  Never larger than the datagram it answers, so
# it amplifies nothing.  The original client expects an ACK at both steps and
# closes at once on anything else; stacklab's client reports "server busy".


def busy_answer(ack: int) -> bytes:
    """The bare FIN a busy server sends instead of a SYN-ACK or a command ACK."""
    return pack_rudp(0, ack & RUDP_MAX_SEQ, Flag.FIN.value)


def is_busy_answer(datagram: bytes | memoryview) -> bool:
    """Whether ``datagram`` is :func:`busy_answer` (meaningful before any data arrived)."""
    if len(datagram) != RUDP_HEADER_LEN:
        return False
    seq, _, flag, length = RUDP_HEADER.unpack_from(datagram, 0)
    return seq == 0 and flag == Flag.FIN.value and length == 0
