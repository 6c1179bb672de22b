"""RUDP: the stack's reliable protocol over UDP (Go-Back-N, AIMD window).

Wire format (WIRE.md, "RUDP over UDP"): ``struct.pack('!IIcH', seq, ack,
flag, length)`` + payload; no checksum, no version.  The ``fields_desc``
below is *derived* from :data:`stacklab.wire.RUDP_HEADER_FIELDS` (struct code
-> Scapy field), so the Scapy layer, the struct codec and the generated
Wireshark dissector cannot drift apart.

    >>> raw(RUDP(seq=101, flag="D") / b"hi")
    b'\\x00\\x00\\x00e\\x00\\x00\\x00\\x00D\\x00\\x02hi'
"""

from __future__ import annotations

from typing import Any

from scapy.fields import ByteField, Field, IntField, ShortField
from scapy.layers.inet import UDP
from scapy.packet import Packet, bind_layers
from scapy.volatile import RandBin

from stacklab.analysis.decode import rudp_summary
from stacklab.wire import (
    APP_RUDP_PORT,
    FLAG_NAMES,
    RUDP_HEADER_FIELDS,
    RUDP_HEADER_LEN,
    Flag,
    HeaderField,
    RudpHeader,
    flag_letter,
    rudp_trailer_ok,
    unpack_rudp,
)

LENGTH_FIELD = "len"
"""The header field that :meth:`RUDP.post_build` fills from the payload when left ``None``."""


def flag_byte(value: object) -> bytes:
    """Normalise a flag given as ``b"D"``, ``"D"``, ``"DATA"``, ``Flag.DATA`` or ``0x44``."""
    if isinstance(value, Flag):
        return bytes(value.value)
    if isinstance(value, bytes | bytearray) and len(value) == 1:
        return bytes(value)
    if isinstance(value, int) and 0 <= value <= 0xFF:
        return bytes([value])
    if isinstance(value, str):
        if value.upper() in Flag.__members__:
            return bytes(Flag[value.upper()].value)
        if len(value) == 1 and ord(value) <= 0xFF:
            return value.encode("latin-1")
    raise ValueError(f"not a RUDP flag: {value!r} (use S, A, D, F, a name, or one byte)")


class RudpFlagField(Field[bytes, bytes]):
    """The one-byte flag: shown as its letter and name; any other byte is kept as unknown."""

    def __init__(self, name: str, default: bytes | None) -> None:
        Field.__init__(self, name, default, "c")

    def any2i(self, pkt: Packet | None, x: Any) -> bytes | None:
        return None if x is None else flag_byte(x)

    def i2repr(self, pkt: Packet | None, x: bytes | None) -> str:
        if x is None:
            return "None"
        name = FLAG_NAMES.get(x)
        return f"{flag_letter(x)} ({name})" if name else f"{flag_letter(x)} (unknown)"

    def randval(self) -> Any:
        return RandBin(1)


def _scapy_field(spec: HeaderField) -> Field[Any, Any]:
    """The Scapy field for one row of the header table, chosen by its struct code."""
    default: Any = None if spec.name == LENGTH_FIELD else 0
    if spec.struct_code == "c":
        return RudpFlagField(spec.name, Flag.DATA.value)
    factory = {"I": IntField, "H": ShortField, "B": ByteField}[spec.struct_code]
    return factory(spec.name, default)


class RUDP(Packet):
    """The 11-byte RUDP header; bytes beyond ``len`` are Scapy padding."""

    name = "RUDP"
    fields_desc = [_scapy_field(spec) for spec in RUDP_HEADER_FIELDS]  # noqa: RUF012

    def post_build(self, p: bytes, pay: bytes) -> bytes:
        if self.len is None:
            offset = RUDP_HEADER_LEN - 2
            p = p[:offset] + len(pay).to_bytes(2, "big") + p[offset + 2 :]
        return p + pay

    def extract_padding(self, s: bytes) -> tuple[bytes, bytes]:
        length = self.len or 0
        return s[:length], s[length:]

    def header(self) -> RudpHeader:
        """The header as :func:`stacklab.wire.unpack_rudp` reads it (``len`` filled in)."""
        return unpack_rudp(self.build())[0]

    def mysummary(self) -> str:
        # build() includes the padding, so this counts every byte after the header.
        built = self.build()
        return rudp_summary(
            unpack_rudp(built)[0], len(built) - RUDP_HEADER_LEN, rudp_trailer_ok(built)
        )

    def hashret(self) -> bytes:
        # Request and answer must hash alike; seq/ack differ between them, so
        # matching is left to answers() (IP/UDP already hash the addresses).
        return b"RUDP"

    def answers(self, other: Packet) -> int:
        """True when this packet is an ACK of ``other``.

        SYN -> ack = seq + 1; DATA -> cumulative ack >= seq (both the
        original ack = seq and the byte-counting ack = seq + len occur);
        FIN -> ack = seq or seq + 1.
        """
        if not isinstance(other, RUDP) or self.flag != Flag.ACK.value:
            return 0
        mask = 0xFFFFFFFF
        if other.flag == Flag.SYN.value:
            return int(self.ack == (other.seq + 1) & mask)
        if other.flag == Flag.DATA.value:
            return int((self.ack - other.seq) & mask < 0x80000000)
        if other.flag == Flag.FIN.value:
            return int(self.ack in (other.seq, (other.seq + 1) & mask))
        return 0


bind_layers(UDP, RUDP, sport=APP_RUDP_PORT)
bind_layers(UDP, RUDP, dport=APP_RUDP_PORT)
