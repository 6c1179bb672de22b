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

from crc32c import crc32c
from scapy.compat import raw as raw_bytes
from scapy.fields import (
    ByteField,
    ConditionalField,
    Field,
    IntField,
    ShortField,
    StrLenField,
    XIntField,
)
from scapy.layers.inet import UDP
from scapy.packet import NoPayload, Packet, bind_layers
from scapy.volatile import RandBin

from stacklab.gso import is_batch, split_batch
from stacklab.summaries import rudp_summary
from stacklab.wire import (
    APP_RUDP_PORT,
    FLAG_NAMES,
    RUDP_CRC_TRAILER_LEN,
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


class FlagValue(bytes):
    """A flag byte that also equals its letter, its name and its value: ``flag == "S"``.

    ``pkt[RUDP].flag`` is ``b"S"`` (raw bytes, as before) and compares equal
    to ``"S"``, ``"SYN"``, ``Flag.SYN`` and ``0x53`` alike; anything that is
    not a flag compares unequal rather than raising.
    """

    def __eq__(self, other: object) -> bool:
        if isinstance(other, bytes | bytearray):
            return bytes.__eq__(self, bytes(other))
        if isinstance(other, str | int) and not isinstance(other, bool):
            try:
                return bytes.__eq__(self, flag_byte(other))
            except ValueError:
                return False
        return NotImplemented

    def __ne__(self, other: object) -> bool:
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal

    __hash__ = bytes.__hash__


class RudpFlagField(Field[bytes, bytes]):
    """The one-byte flag: shown as its letter and name; any other byte is kept as unknown."""

    def __init__(self, name: str, default: bytes | None) -> None:
        Field.__init__(self, name, default, "c")

    def any2i(self, pkt: Packet | None, x: Any) -> bytes | None:
        return None if x is None else FlagValue(flag_byte(x))

    def m2i(self, pkt: Packet | None, x: bytes) -> bytes:
        return FlagValue(x)

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


def _has_options(pkt: Packet) -> bool:
    return pkt.getfieldval("options") is not None or bool(getattr(pkt, "_options_len", 0))


def _has_trailer(pkt: Packet) -> bool:
    return pkt.getfieldval("crc32c") is not None or bool(getattr(pkt, "_trailer", False))


def is_options_carrier(flag: bytes, seq: int, ack: int) -> bool:
    """A SYN, or a SYN-ACK (flag A, ack = ISN + 1, seq a cookie): where options may travel."""
    return flag == Flag.SYN.value or (flag == Flag.ACK.value and seq != 0 and ack != 0)


class RUDP(Packet):
    """The 11-byte RUDP header and stacklab's extensions; bytes beyond ``len`` are padding.

    Except in a captured UDP GSO batch (several segments in one datagram, see
    :mod:`stacklab.gso`; a layer has no session, so only the length
    fields decide): each further segment is a RUDP layer of its own.

    Two conditional fields, present only when the datagram has them (see the
    README's "Wire extensions"): ``options``, the JSON of a SYN or SYN-ACK
    (``RUDP(flag="S", options=b'{"v":1}')``), and ``crc32c``, the trailer of
    a session that negotiated integrity.  The trailer goes last on the wire
    and is counted in ``len``; :meth:`seal` fills in its correct value, any
    other number is written as given (a bad trailer, for a test).
    """

    name = "RUDP"
    fields_desc = [  # noqa: RUF012
        *(_scapy_field(spec) for spec in RUDP_HEADER_FIELDS),
        ConditionalField(
            StrLenField(
                "options",
                None,  # type: ignore[arg-type]  # absent unless given or dissected
                length_from=lambda pkt: pkt._options_len,
            ),
            _has_options,
        ),
        ConditionalField(XIntField("crc32c", None), _has_trailer),
    ]

    def pre_dissect(self, s: bytes) -> bytes:
        """Find the trailer and the options, and put them where ``fields_desc`` reads them.

        On the wire the trailer is last; for dissection it is moved right after
        the options, so that the content that follows is the payload.
        """
        self._options_len = 0
        self._trailer = False
        self._gso_batch = False
        self._gso_rest = b""
        if len(s) < RUDP_HEADER_LEN:
            return s
        header, _ = unpack_rudp(s[:RUDP_HEADER_LEN])
        exact = len(s) - RUDP_HEADER_LEN == header.length
        if is_batch(s, 0, len(s)) and isinstance(split_batch(s, 0, len(s)), list):
            # A captured GSO batch: this segment is exact, the next ones follow as RUDP layers.
            self._gso_batch = exact = True
        trailer = b""
        body = s[RUDP_HEADER_LEN : RUDP_HEADER_LEN + header.length]
        rest = s[RUDP_HEADER_LEN + header.length :]
        segment = s[: RUDP_HEADER_LEN + header.length]
        if exact and header.length >= RUDP_CRC_TRAILER_LEN and rudp_trailer_ok(segment):
            self._trailer = True
            body, trailer = body[:-RUDP_CRC_TRAILER_LEN], body[-RUDP_CRC_TRAILER_LEN:]
        if is_options_carrier(header.flag, header.seq, header.ack) and body[:1] == b"{":
            self._options_len = len(body)
        return (
            s[:RUDP_HEADER_LEN]
            + body[: self._options_len]
            + trailer
            + body[self._options_len :]
            + rest
        )

    def post_dissect(self, s: bytes) -> bytes:
        if getattr(self, "_trailer", False):
            # The cached bytes have the trailer where pre_dissect moved it:
            # build from the fields instead, so post_build puts it back last.
            self.raw_packet_cache = None
        return s

    def post_build(self, p: bytes, pay: bytes) -> bytes:
        trailer = b""
        rest = b""
        if self.crc32c is not None:
            p, trailer = p[:-RUDP_CRC_TRAILER_LEN], p[-RUDP_CRC_TRAILER_LEN:]
            own = (self.len or 0) - len(p) + RUDP_HEADER_LEN - RUDP_CRC_TRAILER_LEN
            if self.len is not None and 0 <= own < len(pay):
                # More bytes follow than the length field counts: the next segments of
                # a GSO batch.  The trailer goes right after this segment's content.
                pay, rest = pay[:own], pay[own:]
        if self.len is None:
            offset = RUDP_HEADER_LEN - 2
            length = len(p) - RUDP_HEADER_LEN + len(pay) + len(trailer)
            p = p[:offset] + length.to_bytes(2, "big") + p[offset + 2 :]
        return p + pay + trailer + rest

    def extract_padding(self, s: bytes) -> tuple[bytes, bytes]:
        length = (self.len or 0) - getattr(self, "_options_len", 0)
        if getattr(self, "_trailer", False):
            length -= RUDP_CRC_TRAILER_LEN
        length = max(0, length)
        if getattr(self, "_gso_batch", False):
            self._gso_rest = s[length:]
            return s[:length], b""
        return s[:length], s[length:]

    def do_dissect_payload(self, s: bytes) -> None:
        """The content, then, in a GSO batch, the next segment as a RUDP layer of its own.

        ``pkt[RUDP]`` is the first segment and ``pkt.getlayer(RUDP, n)`` the
        n-th; each knows its :attr:`gso_position`.  A datagram whose extra
        bytes are not a valid batch keeps them as padding, as before.
        """
        super().do_dissect_payload(s)
        tail: bytes = getattr(self, "_gso_rest", b"")
        if not tail:
            return
        self.add_payload(RUDP(tail, _internal=1, _underlayer=self))
        segments = []
        layer: Packet | None = self
        while layer is not None and not isinstance(layer, NoPayload):
            if isinstance(layer, RUDP):
                segments.append(layer)
            layer = layer.payload
        for index, segment in enumerate(segments, start=1):
            segment.gso_position = (index, len(segments))

    gso_position: tuple[int, int] | None = None
    """(i, n) for the i-th of n segments of a captured GSO batch; None for a plain datagram."""

    def seal(self) -> RUDP:
        """A copy with the correct CRC32C trailer (added if it had none)."""
        sealed = self.copy()
        sealed.crc32c = 0
        built = raw_bytes(sealed)
        sealed.crc32c = crc32c(built[:-RUDP_CRC_TRAILER_LEN])
        return sealed

    def options_json(self) -> dict[str, Any] | None:
        """The options as a dict, or None (no options, or not a JSON object)."""
        import json

        if self.options is None:
            return None
        try:
            obj = json.loads(bytes(self.options))
        except ValueError:
            return None
        return obj if isinstance(obj, dict) else None

    def header(self) -> RudpHeader:
        """The header as :func:`stacklab.wire.unpack_rudp` reads it (``len`` filled in)."""
        return unpack_rudp(self.build())[0]

    def mysummary(self) -> str:
        # build() includes the padding, so this counts every byte after the header
        # (but for a segment of a GSO batch, only its own bytes).
        built = self.build()
        header = unpack_rudp(built)[0]
        position = self.gso_position
        if position is not None:
            built = built[: RUDP_HEADER_LEN + header.length]
        text = rudp_summary(header, len(built) - RUDP_HEADER_LEN, rudp_trailer_ok(built))
        if position is not None:
            text += f" [GSO {position[0]}/{position[1]}]"
        return text

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
