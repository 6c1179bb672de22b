"""The verifier's hot path: walk a capture and pick out the packets that matter.

A million-packet capture must verify in a couple of seconds, so the common
case costs two ``struct.unpack_from`` calls per frame: one for the record
header (in the file's byte order) and one, in network order, that reads the
link header's type field, the IPv4 fields, the UDP ports and, for the RUDP
port, the 11-byte RUDP header, all in one go.  Frames whose ports are not
watched are skipped before any object is built.  Everything unusual (VLAN
tags, IPv6, IP options, fragments, other link types, TCP) goes through the
general decoder :func:`stacklab.analysis.pcapio.parse_packet`, so
correctness never depends on the shortcut.

The *hot port* (RUDP) is handed straight to callbacks, with no tuple and no
generator step per packet: ``hot_fields(number, time, key, to_port, seq,
ack, flag, length, buf, start, stop)`` when the whole RUDP header is there
(the datagram is ``buf[start:stop]``), else ``hot_raw(number, time, key,
to_port, datagram)``.  ``key`` identifies the flow and its direction: the 12
raw bytes of IPv4 source, destination and ports, or a ``(src, sport, dst,
dport)`` tuple from the general path; :func:`flow_endpoints` decodes either.

Iterating a :class:`CaptureScan` yields the other watched packets in frame
order: UDP as ``(number, time, key, sport, dport, payload)``, TCP as
:class:`~stacklab.analysis.pcapio.Packet`.  Validation and error messages are
:class:`~stacklab.analysis.pcapio.CaptureReader`'s.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterator
from typing import BinaryIO, Final

from stacklab.analysis.pcapio import (
    LINKTYPE_ETHERNET,
    LINKTYPE_IPV4,
    LINKTYPE_LOOP,
    LINKTYPE_NAMES,
    LINKTYPE_NULL,
    LINKTYPE_RAW,
    CaptureError,
    CaptureReader,
    Frame,
    Packet,
    parse_packet,
)

_READ_SIZE: Final = 1 << 22
_PAD: Final = 128  # zero bytes after the last read: the fast structs never read past the buffer
_PCAPNG_SHB: Final = 0x0A0D0D0A

FlowKey = bytes | tuple[str, int, str, int]
HotFields = Callable[[int, float, FlowKey, bool, int, int, bytes, int, bytes, int, int], None]
HotRaw = Callable[[int, float, FlowKey, bool, bytes], None]
UdpItem = tuple[int, float, FlowKey, int, int, bytes]

_V4: dict[bytes, str] = {}


def _ipv4(raw: bytes) -> str:
    text = _V4.get(raw)
    if text is None:
        text = "%d.%d.%d.%d" % tuple(raw)  # noqa: UP031 - fastest here
        if len(_V4) < 1 << 16:
            _V4[raw] = text
    return text


def flow_endpoints(key: FlowKey) -> tuple[str, int, str, int]:
    """(src, sport, dst, dport) of a flow key."""
    if isinstance(key, tuple):
        return key
    return (
        _ipv4(key[0:4]),
        (key[8] << 8) | key[9],
        _ipv4(key[4:8]),
        (key[10] << 8) | key[11],
    )


class _Layout:
    """The network-order struct for one link type, and how to read its result."""

    __slots__ = ("l2", "min_len", "net", "tail_a", "tail_b")

    def __init__(self, linktype: int) -> None:
        # tail_a / tail_b: the accepted values of the link header's last field
        self.tail_a: int | bytes
        self.tail_b: int | bytes
        if linktype == LINKTYPE_ETHERNET:
            self.l2, link, self.tail_a, self.tail_b = 14, "12xH", 0x0800, 0x0800
        elif linktype in (LINKTYPE_NULL, LINKTYPE_LOOP):
            # AF_INET in host order, written by either kind of host
            self.l2, link, self.tail_a, self.tail_b = 4, "I", 2, 0x02000000
        elif linktype in (LINKTYPE_RAW, LINKTYPE_IPV4):
            self.l2, link, self.tail_a, self.tail_b = 0, "0s", b"", b""
        else:
            raise ValueError(linktype)
        # link tail; IPv4 ver/ihl, (tos, total, id), flags+frag, (ttl), proto,
        # (checksum, addresses); UDP ports, length, (checksum); RUDP seq, ack, flag, length.
        self.net = struct.Struct("!" + link + "Bx4xHxB2x8xHHH2x" + "IIcH").unpack_from
        self.min_len = self.l2 + 28


def _layout(linktype: int) -> _Layout | None:
    try:
        return _Layout(linktype)
    except ValueError:
        return None


def _ignore_fields(*args: object) -> None:
    """The hot handler when there is none (never called: no port matches -1)."""


class CaptureScan:
    """Walk one capture file: hot-port datagrams to callbacks, other watched packets yielded."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        udp_ports: frozenset[int],
        tcp_ports: frozenset[int],
        hot_port: int | None = None,
        hot_fields: HotFields | None = None,
        hot_raw: HotRaw | None = None,
        hot_share: tuple[int, int] = (1, 0),
    ) -> None:
        self.path = os.fspath(path)
        # (parts, part): only hot flows whose client port % parts == part are
        # handed over, so that several processes can share the sessions.
        self.parts, self.part = hot_share
        with CaptureReader(self.path) as probe:  # validates, and names the format
            self.format = probe.format
        self.udp_ports = udp_ports
        self.tcp_ports = tcp_ports
        active = hot_port is not None and hot_fields is not None and hot_raw is not None
        self.hot = hot_port if active and hot_port is not None else -1
        self.hot_fields: HotFields = hot_fields if active and hot_fields else _ignore_fields
        self.hot_raw: HotRaw = hot_raw if active and hot_raw else _ignore_fields
        self.frames = 0
        self.truncated = False
        self.linktypes: list[int] = []

    @property
    def linktype_name(self) -> str:
        if not self.linktypes:
            return "unknown"
        return ",".join(LINKTYPE_NAMES.get(lt, str(lt)) for lt in self.linktypes)

    def __iter__(self) -> Iterator[UdpItem | Packet]:
        try:
            f: BinaryIO = open(self.path, "rb")  # noqa: SIM115 - closed by the walkers
        except OSError as exc:
            raise CaptureError(f"{self.path}: cannot read: {exc.strerror}") from None
        if self.format == "pcap":
            return self._pcap(f)
        return self._pcapng(f)

    # -- the slow, general path --------------------------------------------------

    def _general(
        self, number: int, time: float, linktype: int, data: bytes
    ) -> UdpItem | Packet | None:
        packet = parse_packet(Frame(number, time, linktype, data))
        if packet is None:
            return None
        if packet.proto == "udp":
            key = (packet.src, packet.sport, packet.dst, packet.dport)
            if self.hot in (packet.dport, packet.sport):
                to_port = packet.dport == self.hot
                client_port = packet.sport if to_port else packet.dport
                if client_port % self.parts == self.part:
                    self.hot_raw(number, time, key, to_port, packet.payload)
                return None
            if packet.sport in self.udp_ports or packet.dport in self.udp_ports:
                return (number, time, key, packet.sport, packet.dport, packet.payload)
            return None
        if packet.proto == "tcp" and (
            packet.sport in self.tcp_ports or packet.dport in self.tcp_ports
        ):
            return packet
        return None

    def _hot(
        self, number: int, time: float, buf: bytes, ip: int, end: int, incl_ok: bool, fields: tuple
    ) -> None:
        """A hot-port datagram whose frame is short: trust the UDP length, maybe no full header."""
        _tail, _v, _f, _p, _sport, dport, ulen, seq, ack, flag, rlen = fields
        stop = ip + 20 + ulen if 8 <= ulen <= end - ip - 20 else end
        key = buf[ip + 12 : ip + 24]
        if stop - ip - 28 >= 11:
            self.hot_fields(
                number, time, key, dport == self.hot, seq, ack, flag, rlen, buf, ip + 28, stop
            )
        else:
            self.hot_raw(number, time, key, dport == self.hot, buf[ip + 28 : stop])

    # -- pcap ------------------------------------------------------------------------------

    def _pcap(self, f: BinaryIO) -> Iterator[UdpItem | Packet]:
        with f:
            header = f.read(24)
            if len(header) < 24:
                raise CaptureError(f"{self.path}: truncated pcap header")
            magic = header[:4]
            endian = "<" if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
            # Times are exact integer ticks divided once (correctly rounded), so
            # they equal the float of tshark's decimal timestamps bit for bit.
            per_sec = 10**9 if magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d") else 10**6
            linktype = struct.unpack(endian + "I", header[20:24])[0] & 0x0FFFFFFF
            self.linktypes.append(linktype)
            read = f.read
            general = self._general
            hot_fields = self.hot_fields
            short_hot = self._hot
            hot = self.hot
            parts, part = self.parts, self.part
            udp_watch, tcp_watch = self.udp_ports, self.tcp_ports
            head = struct.Struct(endian + "III4x").unpack_from  # orig_len: unused
            layout = _layout(linktype)
            if layout is not None:
                net, l2, min_len = layout.net, layout.l2, layout.min_len
                tail_a, tail_b = layout.tail_a, layout.tail_b
            else:
                net, l2, min_len = None, 0, 1 << 62
                tail_a = tail_b = -1
            big = max(min_len + 11, 65)  # frames of 64 bytes or less may carry link padding
            ip_udp = l2 + 20  # link and IPv4 headers: the UDP length is incl - ip_udp
            number = 0
            buf = read(_READ_SIZE)
            real = len(buf)
            eof = real < _READ_SIZE
            if eof:
                buf += bytes(_PAD)
            limit = real - 15 if eof else real - _PAD
            pos = 0
            while True:
                if pos >= limit:
                    if eof:
                        if pos < real:
                            self.truncated = True
                        break
                    more = read(_READ_SIZE)
                    buf = buf[pos:real] + more
                    real = len(buf)
                    pos = 0
                    eof = len(more) < _READ_SIZE
                    if eof:
                        buf += bytes(_PAD)
                    limit = real - 15 if eof else real - _PAD
                    continue
                sec, frac, incl = head(buf, pos)
                start = pos + 16
                end = start + incl
                if end > real:
                    if incl > 0x4000000:
                        raise CaptureError(f"{self.path}: corrupt pcap record after frame {number}")
                    if eof:
                        self.truncated = True
                        break
                    limit = pos  # refill, keeping this record
                    continue
                number += 1
                pos = end
                if incl >= min_len:
                    fields = net(buf, start)  # type: ignore[misc]
                    tail, verihl, frag, proto, sport, dport, ulen, seq, ack, flag, rlen = fields
                    if verihl == 0x45 and (tail == tail_a or tail == tail_b) and not frag & 0x3FFF:  # noqa: PLR1714, SIM109
                        if proto == 17:
                            to_port = dport == hot
                            if to_port or sport == hot:
                                if parts > 1 and (sport if to_port else dport) % parts != part:
                                    continue
                                ip = start + l2
                                # Past any link padding, or exactly the UDP length (no
                                # padding): the whole RUDP header is there.
                                if incl >= big or (ulen == incl - ip_udp and ulen >= 19):
                                    hot_fields(
                                        number,
                                        (sec * per_sec + frac) / per_sec,
                                        buf[ip + 12 : ip + 24],
                                        to_port,
                                        seq,
                                        ack,
                                        flag,
                                        rlen,
                                        buf,
                                        ip + 28,
                                        end,
                                    )
                                else:  # short frames may carry link padding: trust the UDP length
                                    short_hot(
                                        number,
                                        (sec * per_sec + frac) / per_sec,
                                        buf,
                                        ip,
                                        end,
                                        True,
                                        fields,
                                    )
                                continue
                            if sport not in udp_watch and dport not in udp_watch:
                                continue
                        elif proto != 6 or (sport not in tcp_watch and dport not in tcp_watch):
                            continue
                item = general(number, (sec * per_sec + frac) / per_sec, linktype, buf[start:end])
                if item is not None:
                    yield item
            self.frames = number

    # -- pcapng ------------------------------------------------------------------------------

    def _pcapng(self, f: BinaryIO) -> Iterator[UdpItem | Packet]:
        with f:
            read = f.read
            general = self._general
            hot_fields = self.hot_fields
            short_hot = self._hot
            hot = self.hot
            parts, part = self.parts, self.part
            udp_watch, tcp_watch = self.udp_ports, self.tcp_ports
            number = 0
            endian = "<"
            head = struct.Struct("<IIIIII").unpack_from
            interfaces: list[tuple[int, int]] = []
            net = None
            l2, min_len = 0, 1 << 62
            tail_a: int | bytes = -1
            tail_b: int | bytes = -1
            big = 1 << 62
            ip_udp = 1 << 62
            buf = read(_READ_SIZE)
            real = len(buf)
            eof = real < _READ_SIZE
            if eof:
                buf += bytes(_PAD)
            limit = real - 11 if eof else real - _PAD
            pos = 0
            seen_header = False
            while True:
                if pos >= limit:
                    if eof:
                        if pos < real:
                            if not seen_header:
                                raise CaptureError(f"{self.path}: truncated pcapng section header")
                            self.truncated = True
                        break
                    more = read(_READ_SIZE)
                    buf = buf[pos:real] + more
                    real = len(buf)
                    pos = 0
                    eof = len(more) < _READ_SIZE
                    if eof:
                        buf += bytes(_PAD)
                    limit = real - 11 if eof else real - _PAD
                    continue
                btype, blen, if_id, ts_hi, ts_lo, incl = head(buf, pos)
                if btype == _PCAPNG_SHB:
                    bom = buf[pos + 8 : pos + 12]
                    if bom == b"\x4d\x3c\x2b\x1a":
                        endian = "<"
                    elif bom == b"\x1a\x2b\x3c\x4d":
                        endian = ">"
                    else:
                        raise CaptureError(f"{self.path}: corrupt pcapng section header")
                    head = struct.Struct(endian + "IIIIII").unpack_from
                    btype, blen, if_id, ts_hi, ts_lo, incl = head(buf, pos)
                    interfaces = []
                    net = None
                if blen < 12 or blen % 4 or blen > 0x4000000:
                    raise CaptureError(f"{self.path}: corrupt pcapng block after frame {number}")
                end = pos + blen
                if end > real:
                    if eof:
                        if not seen_header:
                            raise CaptureError(f"{self.path}: truncated pcapng section header")
                        self.truncated = True
                        break
                    limit = pos
                    continue
                seen_header = True
                if btype != 6:
                    if btype == 1:  # interface description
                        lt = struct.unpack_from(endian + "H", buf, pos + 8)[0]
                        interfaces.append((lt, _tsresol(buf, pos + 16, end - 4, endian)))
                        if lt not in self.linktypes:
                            self.linktypes.append(lt)
                        if len(interfaces) == 1:
                            layout = _layout(lt)
                            if layout is not None:
                                net, l2, min_len = layout.net, layout.l2, layout.min_len
                                tail_a, tail_b = layout.tail_a, layout.tail_b
                                big = max(min_len + 11, 65)
                                ip_udp = l2 + 20
                    elif btype == 3 and interfaces:  # simple packet
                        number += 1
                        orig = struct.unpack_from(endian + "I", buf, pos + 8)[0]
                        data = buf[pos + 12 : pos + 12 + min(orig, blen - 16)]
                        item = general(number, 0.0, interfaces[0][0], data)
                        if item is not None:
                            yield item
                    pos = end
                    continue
                if if_id >= len(interfaces) or 28 + incl > blen:
                    raise CaptureError(
                        f"{self.path}: corrupt enhanced packet block at frame {number + 1}"
                    )
                number += 1
                pos = end
                start = end - blen + 28
                lt, tick = interfaces[if_id]
                if not if_id and incl >= min_len:
                    fields = net(buf, start)  # type: ignore[misc]
                    tail, verihl, frag, proto, sport, dport, ulen, seq, ack, flag, rlen = fields
                    if verihl == 0x45 and (tail == tail_a or tail == tail_b) and not frag & 0x3FFF:  # noqa: PLR1714, SIM109
                        if proto == 17:
                            to_port = dport == hot
                            if to_port or sport == hot:
                                if parts > 1 and (sport if to_port else dport) % parts != part:
                                    continue
                                ip = start + l2
                                # Past any link padding, or exactly the UDP length (no
                                # padding): the whole RUDP header is there.
                                if incl >= big or (ulen == incl - ip_udp and ulen >= 19):
                                    hot_fields(
                                        number,
                                        ((ts_hi << 32) | ts_lo) / tick,
                                        buf[ip + 12 : ip + 24],
                                        to_port,
                                        seq,
                                        ack,
                                        flag,
                                        rlen,
                                        buf,
                                        ip + 28,
                                        start + incl,
                                    )
                                else:
                                    short_hot(
                                        number,
                                        ((ts_hi << 32) | ts_lo) / tick,
                                        buf,
                                        ip,
                                        start + incl,
                                        True,
                                        fields,
                                    )
                                continue
                            if sport not in udp_watch and dport not in udp_watch:
                                continue
                        elif proto != 6 or (sport not in tcp_watch and dport not in tcp_watch):
                            continue
                item = general(
                    number, ((ts_hi << 32) | ts_lo) / tick, lt, buf[start : start + incl]
                )
                if item is not None:
                    yield item
            self.frames = number


def _tsresol(buf: bytes, start: int, stop: int, endian: str) -> int:
    """Ticks per second of an interface (if_tsresol: 10**n or 2**n; default 10**6)."""
    pos = start
    while pos + 4 <= stop:
        code, length = struct.unpack_from(endian + "HH", buf, pos)
        if code == 0:
            break
        if code == 9 and length:
            raw = buf[pos + 4]
            return 2 ** (raw & 0x7F) if raw & 0x80 else 10**raw
        pos += 4 + ((length + 3) & ~3)
    return 10**6
