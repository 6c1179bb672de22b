"""Streaming pcap / pcapng reader for the hot path.

Reads a capture block by block in constant memory with ``struct`` and
``memoryview``, never building a Scapy object: verifying a capture of a
million packets must be fast.  Scapy is kept for rich decoding of the few
frames a person looks at.

Supported link types: Ethernet, BSD NULL/Loopback (either byte order, as
macOS and Npcap write them), OpenBSD LOOP, raw IPv4/IPv6, Linux cooked
capture v1 (SLL) and v2 (SLL2).  802.1Q VLAN tags on Ethernet are skipped.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, Final, cast

from stacklab.analysis.ipfrag import Datagram, Fragment, Reassembler

log = logging.getLogger(__name__)

# Link types (https://www.tcpdump.org/linktypes.html)
LINKTYPE_NULL: Final = 0
LINKTYPE_ETHERNET: Final = 1
LINKTYPE_RAW: Final = 101
LINKTYPE_LOOP: Final = 108
LINKTYPE_LINUX_SLL: Final = 113
LINKTYPE_IPV4: Final = 228
LINKTYPE_IPV6: Final = 229
LINKTYPE_LINUX_SLL2: Final = 276

LINKTYPE_NAMES: Final = {
    LINKTYPE_NULL: "null",
    LINKTYPE_ETHERNET: "ethernet",
    LINKTYPE_RAW: "raw",
    LINKTYPE_LOOP: "loop",
    LINKTYPE_LINUX_SLL: "linux-sll",
    LINKTYPE_IPV4: "ipv4",
    LINKTYPE_IPV6: "ipv6",
    LINKTYPE_LINUX_SLL2: "linux-sll2",
}


def unsupported_link_types(names: str) -> list[str]:
    """The link types of a ``linktype_name`` string (``"ethernet,147"``) this reader cannot parse.

    Frames of such a link type are read but cannot be decoded, so a capture
    made only of them must be reported as "not supported", never as a capture
    with no project traffic.
    """
    known = set(LINKTYPE_NAMES.values())
    return [name for name in names.split(",") if name and name != "unknown" and name not in known]


def link_type_problem(names: str) -> str | None:
    """One line when some link types of a capture are not supported, else None."""
    unsupported = unsupported_link_types(names)
    if not unsupported:
        return None
    return (
        f"link type {', '.join(unsupported)} is not supported "
        f"(supported: {', '.join(LINKTYPE_NAMES.values())})"
    )


_READ_SIZE: Final = 1 << 20
_PCAP_MAGICS: Final = {
    b"\xd4\xc3\xb2\xa1": ("<", 1e-6),
    b"\xa1\xb2\xc3\xd4": (">", 1e-6),
    b"\x4d\x3c\xb2\xa1": ("<", 1e-9),
    b"\xa1\xb2\x3c\x4d": (">", 1e-9),
}
_PCAPNG_SHB: Final = 0x0A0D0D0A
_BYTE_ORDER_MAGIC: Final = 0x1A2B3C4D

IPPROTO_TCP: Final = 6
IPPROTO_UDP: Final = 17
IPPROTO_FRAGMENT: Final = 44
_IPV6_EXTENSIONS: Final = frozenset({0, 43, 44, 51, 60, 135, 139, 140})
"""Hop-by-hop, routing, fragment, AH, destination options, mobility, HIP, shim6."""


class CaptureError(Exception):
    """The file is missing, unreadable, not a capture, or corrupt beyond reading."""


@dataclass(slots=True)
class Frame:
    """One captured frame, before any protocol decoding."""

    number: int  # 1-based, as Wireshark numbers frames
    time: float  # seconds since the epoch
    linktype: int
    data: bytes
    comment: str | None = None


@dataclass(slots=True)
class Packet:
    """The transport-level view of a frame: addresses, ports and payload."""

    number: int
    time: float
    src: str
    dst: str
    sport: int
    dport: int
    proto: str  # "udp", "tcp", "fragment" (an IP fragment, see ``fragment``) or "other"
    payload: bytes
    tcp_seq: int = 0
    tcp_ack: int = 0
    tcp_flags: int = 0
    fragment: Fragment | None = None  # proto "fragment": the fragment, not (yet) a datagram
    fragments: tuple[int, ...] = ()  # reassembled from IP fragments: their frame numbers

    @property
    def src_ep(self) -> str:
        return _endpoint(self.src, self.sport)

    @property
    def dst_ep(self) -> str:
        return _endpoint(self.dst, self.dport)


def _endpoint(addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


class CaptureReader:
    """Iterate the frames of a pcap or pcapng file, streaming.

    After iteration, ``truncated`` tells whether the file ended in the middle
    of a record (the usual state of a capture that was cut short): the frames
    before it are still returned.  ``linktypes`` lists the link types seen.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self.truncated = False
        self.format = ""
        self.linktypes: list[int] = []
        self.comments: list[str] = []
        try:
            self._file: BinaryIO = open(self.path, "rb")  # noqa: SIM115 - closed in close()
        except FileNotFoundError:
            raise CaptureError(f"{self.path}: no such file") from None
        except IsADirectoryError:
            raise CaptureError(f"{self.path}: is a directory, not a capture file") from None
        except OSError as exc:
            raise CaptureError(f"{self.path}: cannot read: {exc.strerror}") from None
        head = self._file.read(4)
        if head in _PCAP_MAGICS:
            self.format = "pcap"
        elif len(head) == 4 and struct.unpack("<I", head)[0] == _PCAPNG_SHB:
            self.format = "pcapng"
        else:
            self._file.close()
            raise CaptureError(f"{self.path}: not a pcap or pcapng capture file")
        self._file.seek(0)

    @classmethod
    def from_stream(cls, stream: BinaryIO, name: str = "<stream>") -> CaptureReader:
        """Read a capture while it is being written, e.g. dumpcap's output through a pipe.

        Frames come out as soon as they are whole: the reader takes whatever
        the pipe holds (``read1``) instead of waiting for a full block, and
        never seeks.  The end of the stream ends the iteration.
        """
        self = cls.__new__(cls)
        self.path = name
        self.truncated = False
        self.linktypes = []
        self.comments = []
        head = _read_exactly(stream, 4)
        if head in _PCAP_MAGICS:
            self.format = "pcap"
            head += _read_exactly(stream, 20)  # the rest of the file header, read whole
        elif len(head) == 4 and struct.unpack("<I", head)[0] == _PCAPNG_SHB:
            self.format = "pcapng"
        else:
            raise CaptureError(f"{name}: not a pcap or pcapng capture stream")
        self._file = cast(BinaryIO, _Pushback(stream, head))
        return self

    def __enter__(self) -> CaptureReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    @property
    def linktype_name(self) -> str:
        """The link type(s) of the capture, e.g. ``"null"`` or ``"ethernet"``."""
        if not self.linktypes:
            return "unknown"
        return ",".join(LINKTYPE_NAMES.get(lt, str(lt)) for lt in self.linktypes)

    def __iter__(self) -> Iterator[Frame]:
        if self.format == "pcap":
            return self._iter_pcap()
        return self._iter_pcapng()

    # -- buffered reading -------------------------------------------------

    def _chunks(self) -> Iterator[bytes]:
        read = self._file.read
        while True:
            chunk = read(_READ_SIZE)
            if not chunk:
                return
            yield chunk

    def _iter_pcap(self) -> Iterator[Frame]:
        f = self._file
        header = f.read(24)
        if len(header) < 24:
            raise CaptureError(f"{self.path}: truncated pcap header")
        endian, resolution = _PCAP_MAGICS[header[:4]]
        per_sec = round(1 / resolution)
        linktype = struct.unpack(endian + "I", header[20:24])[0] & 0x0FFFFFFF
        self.linktypes.append(linktype)
        rec = struct.Struct(endian + "IIII")
        buf = b""
        pos = 0
        number = 0
        chunks = self._chunks()
        while True:
            if len(buf) - pos < 16:
                more = next(chunks, b"")
                if not more:
                    if len(buf) - pos:
                        self.truncated = True
                    return
                buf = buf[pos:] + more
                pos = 0
                continue
            ts_sec, ts_frac, incl_len, _orig = rec.unpack_from(buf, pos)
            if incl_len > 0x4000000:
                raise CaptureError(f"{self.path}: corrupt pcap record after frame {number}")
            end = pos + 16 + incl_len
            if end > len(buf):
                more = next(chunks, b"")
                if not more:
                    self.truncated = True
                    return
                buf = buf[pos:] + more
                pos = 0
                continue
            number += 1
            # Integer ticks over ticks per second, correctly rounded: the same
            # float as the compiled scan's, so that every engine agrees.
            time = (ts_sec * per_sec + ts_frac) / per_sec
            yield Frame(number, time, linktype, buf[pos + 16 : end])
            pos = end

    def _iter_pcapng(self) -> Iterator[Frame]:
        buf = b""
        pos = 0
        number = 0
        endian = "<"
        interfaces: list[tuple[int, int]] = []  # (linktype, ticks per second)
        seen_header = False
        chunks = self._chunks()
        while True:
            if len(buf) - pos < 12:
                more = next(chunks, b"")
                if not more:
                    if not seen_header:
                        raise CaptureError(f"{self.path}: truncated pcapng section header")
                    if len(buf) - pos:
                        self.truncated = True
                    return
                buf = buf[pos:] + more
                pos = 0
                continue
            block_type = struct.unpack_from(endian + "I", buf, pos)[0]
            if block_type == _PCAPNG_SHB:
                bom = buf[pos + 8 : pos + 12]
                if bom == b"\x4d\x3c\x2b\x1a":
                    endian = "<"
                elif bom == b"\x1a\x2b\x3c\x4d":
                    endian = ">"
                else:
                    raise CaptureError(f"{self.path}: corrupt pcapng section header")
                interfaces = []
            block_len = struct.unpack_from(endian + "I", buf, pos + 4)[0]
            if block_len < 12 or block_len % 4 or block_len > 0x4000000:
                raise CaptureError(f"{self.path}: corrupt pcapng block after frame {number}")
            end = pos + block_len
            if end > len(buf):
                more = next(chunks, b"")
                if not more:
                    if not seen_header:
                        raise CaptureError(f"{self.path}: truncated pcapng section header")
                    self.truncated = True
                    return
                buf = buf[pos:] + more
                pos = 0
                continue
            seen_header = True
            if block_type == 6:  # Enhanced Packet Block
                if_id, ts_hi, ts_lo, cap_len = struct.unpack_from(endian + "IIII", buf, pos + 8)
                if if_id >= len(interfaces) or 28 + cap_len > block_len:
                    raise CaptureError(
                        f"{self.path}: corrupt enhanced packet block at frame {number + 1}"
                    )
                linktype, tick = interfaces[if_id]
                number += 1
                data = buf[pos + 28 : pos + 28 + cap_len]
                comment = None
                opt_start = pos + 28 + ((cap_len + 3) & ~3)
                if opt_start < end - 4:
                    comment = _pcapng_comment(buf, opt_start, end - 4, endian)
                yield Frame(number, ((ts_hi << 32) | ts_lo) / tick, linktype, data, comment)
            elif block_type == 1:  # Interface Description Block
                linktype = struct.unpack_from(endian + "H", buf, pos + 8)[0]
                tick = _pcapng_tsresol(buf, pos + 16, end - 4, endian)
                interfaces.append((linktype, tick))
                if linktype not in self.linktypes:
                    self.linktypes.append(linktype)
            elif block_type == 3:  # Simple Packet Block
                if not interfaces:
                    raise CaptureError(f"{self.path}: simple packet block before any interface")
                orig_len = struct.unpack_from(endian + "I", buf, pos + 8)[0]
                cap_len = min(orig_len, block_len - 16)
                number += 1
                yield Frame(number, 0.0, interfaces[0][0], buf[pos + 12 : pos + 12 + cap_len])
            elif block_type == _PCAPNG_SHB:
                comment = _pcapng_comment(buf, pos + 24, end - 4, endian)
                if comment:
                    self.comments.append(comment)
            pos = end


def _read_exactly(stream: BinaryIO, size: int) -> bytes:
    """``size`` bytes from a stream (fewer only at its end), however a pipe splits them."""
    out = b""
    while len(out) < size:
        more = stream.read(size - len(out))
        if not more:
            break
        out += more
    return out


class _Pushback:
    """A stream whose first bytes were already read; ``read`` returns what a pipe holds.

    :meth:`CaptureReader._chunks` calls ``read(n)``: here that is one read of
    at most ``n`` bytes (``read1``), so a frame is handed on as soon as it
    arrives rather than when a whole block has filled.
    """

    def __init__(self, stream: BinaryIO, head: bytes) -> None:
        self._stream = stream
        self._head = head

    def read(self, size: int = -1) -> bytes:
        if self._head:
            cut = len(self._head) if size < 0 else size
            out, self._head = self._head[:cut], self._head[cut:]
            return out
        read1 = getattr(self._stream, "read1", None)
        if read1 is not None:
            return bytes(read1(size if size > 0 else _READ_SIZE))
        return self._stream.read(size)

    def close(self) -> None:
        self._stream.close()


def _pcapng_options(buf: bytes, start: int, stop: int, endian: str) -> Iterator[tuple[int, bytes]]:
    pos = start
    while pos + 4 <= stop:
        code, length = struct.unpack_from(endian + "HH", buf, pos)
        if code == 0:
            return
        yield code, buf[pos + 4 : pos + 4 + length]
        pos += 4 + ((length + 3) & ~3)


def _pcapng_tsresol(buf: bytes, start: int, stop: int, endian: str) -> int:
    """Ticks per second of an interface (if_tsresol: 10**n or 2**n; default 10**6)."""
    for code, value in _pcapng_options(buf, start, stop, endian):
        if code == 9 and value:
            raw = value[0]
            return 2 ** (raw & 0x7F) if raw & 0x80 else 10**raw
    return 10**6


def _pcapng_comment(buf: bytes, start: int, stop: int, endian: str) -> str | None:
    for code, value in _pcapng_options(buf, start, stop, endian):
        if code == 1:
            return value.decode("utf-8", "replace")
    return None


# ---------------------------------------------------------------------------
# Link, network and transport layers
# ---------------------------------------------------------------------------

_NULL_AF_INET: Final = 2
_NULL_AF_INET6: Final = frozenset({10, 24, 28, 30})  # Linux, BSDs, FreeBSD, macOS


def network_offset(linktype: int, data: bytes) -> tuple[int, int] | None:
    """Return (offset of the IP header, IP version) or None for non-IP frames."""
    if linktype == LINKTYPE_ETHERNET:
        off = 12
        ethertype = int.from_bytes(data[12:14], "big")
        while ethertype in (0x8100, 0x88A8):
            off += 4
            ethertype = int.from_bytes(data[off : off + 2], "big")
        off += 2
        if ethertype == 0x0800:
            return off, 4
        if ethertype == 0x86DD:
            return off, 6
        return None
    if linktype in (LINKTYPE_NULL, LINKTYPE_LOOP):
        if len(data) < 4:
            return None
        family = int.from_bytes(data[:4], "little")
        if family > 0xFFFF:  # written in the other byte order
            family = int.from_bytes(data[:4], "big")
        if family == _NULL_AF_INET:
            return 4, 4
        if family in _NULL_AF_INET6:
            return 4, 6
        return None
    if linktype in (LINKTYPE_RAW, LINKTYPE_IPV4, LINKTYPE_IPV6):
        if not data:
            return None
        version = data[0] >> 4
        return (0, version) if version in (4, 6) else None
    if linktype == LINKTYPE_LINUX_SLL:
        proto = int.from_bytes(data[14:16], "big")
        return (16, 4) if proto == 0x0800 else (16, 6) if proto == 0x86DD else None
    if linktype == LINKTYPE_LINUX_SLL2:
        proto = int.from_bytes(data[0:2], "big")
        return (20, 4) if proto == 0x0800 else (20, 6) if proto == 0x86DD else None
    return None


_IPV4_CACHE: dict[bytes, str] = {}


def _ipv4(raw: bytes) -> str:
    text = _IPV4_CACHE.get(raw)
    if text is None:
        text = "%d.%d.%d.%d" % tuple(raw)  # noqa: UP031 - fastest here
        if len(_IPV4_CACHE) < 65536:
            _IPV4_CACHE[raw] = text
    return text


def parse_packet(frame: Frame, fragments: Reassembler | None = None) -> Packet | None:
    """Decode a frame down to UDP or TCP.  Returns None for non-IP frames.

    An IP fragment (IPv4, or IPv6 with a Fragment header) is returned with
    ``proto="fragment"`` and its :class:`~stacklab.analysis.ipfrag.Fragment`;
    given the capture's ``fragments`` reassembler, the fragment that
    completes a datagram returns the whole datagram instead, with this
    frame's number and time and ``fragments`` naming every fragment's frame.
    A partial datagram is never returned.  Truncated headers give ``None``
    rather than an exception.
    """
    data = frame.data
    located = network_offset(frame.linktype, data)
    if located is None:
        return None
    off, version = located
    fragment: Fragment | None = None
    if version == 4:
        if len(data) < off + 20:
            return None
        ihl = (data[off] & 0x0F) * 4
        total = int.from_bytes(data[off + 2 : off + 4], "big")
        proto_num = data[off + 9]
        flags_offset = int.from_bytes(data[off + 6 : off + 8], "big")
        src = _ipv4(data[off + 12 : off + 16])
        dst = _ipv4(data[off + 16 : off + 20])
        l4 = off + ihl
        end = off + total if total >= ihl else len(data)
        if flags_offset & 0x3FFF and total >= ihl >= 20:
            ident = int.from_bytes(data[off + 4 : off + 6], "big")
            fragment = Fragment(
                4,
                src,
                dst,
                ident,
                proto_num,
                (flags_offset & 0x1FFF) * 8,
                bool(flags_offset & 0x2000),
                data[l4:end],
                max(0, end - len(data)),
            )
        elif flags_offset & 0x3FFF:
            proto_num = -1
    elif version == 6:
        if len(data) < off + 40:
            return None
        src = str(ipaddress.IPv6Address(data[off + 8 : off + 24]))
        dst = str(ipaddress.IPv6Address(data[off + 24 : off + 40]))
        end = off + 40 + int.from_bytes(data[off + 4 : off + 6], "big")
        proto_num, l4, fragment = _ipv6_walk(data, data[off + 6], off + 40, end, src, dst)
    else:
        return None
    if fragment is not None:
        if fragments is None:
            return _fragment_packet(frame, src, dst, fragment)
        datagram = fragments.add(fragment, frame.number, frame.time)
        if datagram is None:
            return _fragment_packet(frame, src, dst, fragment)
        return reassembled_packet(frame.number, frame.time, datagram)
    return _transport(frame.number, frame.time, src, dst, proto_num, data, l4, min(end, len(data)))


def _ipv6_walk(
    data: bytes, nh: int, pos: int, end: int, src: str, dst: str
) -> tuple[int, int, Fragment | None]:
    """Follow IPv6 extension headers from ``pos``: (upper protocol, its offset, fragment or None).

    The protocol is -1 when a header runs past the data.  A Fragment header
    with offset 0 and no More Fragments (an atomic fragment, RFC 6946) is
    stepped over like any extension header.
    """
    while nh in _IPV6_EXTENSIONS:
        if pos + 8 > len(data):
            return -1, pos, None
        if nh == IPPROTO_FRAGMENT:
            field = int.from_bytes(data[pos + 2 : pos + 4], "big")
            if field & 0xFFF9:  # an offset, or More Fragments
                ident = int.from_bytes(data[pos + 4 : pos + 8], "big")
                payload = data[pos + 8 : end]
                cut = max(0, end - len(data))
                return (
                    nh,
                    pos,
                    Fragment(
                        6, src, dst, ident, data[pos], field & 0xFFF8, bool(field & 1), payload, cut
                    ),
                )
            size = 8
        elif nh == 51:  # AH counts 4-byte words
            size = (data[pos + 1] + 2) * 4
        else:
            size = (data[pos + 1] + 1) * 8
        nh = data[pos]
        pos += size
    return nh, pos, None


def _fragment_packet(frame: Frame, src: str, dst: str, fragment: Fragment) -> Packet:
    return Packet(frame.number, frame.time, src, dst, 0, 0, "fragment", b"", fragment=fragment)


def reassembled_packet(number: int, time: float, datagram: Datagram) -> Packet:
    """The UDP/TCP packet of a reassembled datagram, numbered as its last fragment."""
    data = datagram.data
    proto_num, l4 = datagram.proto, 0
    if datagram.version == 6:
        proto_num, l4, _ = _ipv6_walk(data, proto_num, 0, len(data), datagram.src, datagram.dst)
    packet = _transport(number, time, datagram.src, datagram.dst, proto_num, data, l4, len(data))
    packet.fragments = datagram.frames
    return packet


def _transport(
    number: int, time: float, src: str, dst: str, proto_num: int, data: bytes, l4: int, end: int
) -> Packet:
    """The UDP or TCP packet at ``data[l4:end]``, or an "other" packet."""
    if proto_num == IPPROTO_UDP and end - l4 >= 8:
        sport = int.from_bytes(data[l4 : l4 + 2], "big")
        dport = int.from_bytes(data[l4 + 2 : l4 + 4], "big")
        ulen = int.from_bytes(data[l4 + 4 : l4 + 6], "big")
        stop = l4 + ulen if 8 <= ulen <= end - l4 else end
        return Packet(number, time, src, dst, sport, dport, "udp", data[l4 + 8 : stop])
    if proto_num == IPPROTO_TCP and end - l4 >= 20:
        sport = int.from_bytes(data[l4 : l4 + 2], "big")
        dport = int.from_bytes(data[l4 + 2 : l4 + 4], "big")
        seq = int.from_bytes(data[l4 + 4 : l4 + 8], "big")
        ack = int.from_bytes(data[l4 + 8 : l4 + 12], "big")
        doff = (data[l4 + 12] >> 4) * 4
        flags = data[l4 + 13]
        return Packet(
            number,
            time,
            src,
            dst,
            sport,
            dport,
            "tcp",
            data[l4 + doff : end],
            seq,
            ack,
            flags,
        )
    return Packet(number, time, src, dst, 0, 0, "other", b"")


def read_packets(path: str | os.PathLike[str]) -> Iterator[Packet]:
    """Convenience: the transport-level packets of a capture, IP fragments reassembled.

    Non-IP frames are skipped; a fragment that does not complete a datagram
    comes as ``proto="fragment"``.
    """
    fragments = Reassembler()
    with CaptureReader(path) as reader:
        for frame in reader:
            packet = parse_packet(frame, fragments)
            if packet is not None:
                yield packet


TCP_FIN: Final = 0x01
TCP_SYN: Final = 0x02
TCP_RST: Final = 0x04
TCP_PSH: Final = 0x08
TCP_ACK: Final = 0x10
