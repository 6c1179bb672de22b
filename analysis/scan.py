"""The verifier's hot path: walk a capture and pick out the packets that matter.

A million-packet capture must verify in a couple of seconds, so the common
case costs one ``struct.unpack_from`` per frame: a single precompiled format
reads the record header, the link header, the IPv4 fields and the UDP ports
in one go, and frames whose ports are not watched are skipped before any
object is built.  Everything unusual (VLAN tags, IPv6, IP options,
fragments, other link types, TCP) goes through the general decoder
:func:`stacklab.analysis.pcapio.parse_packet`, so correctness never depends
on the shortcut.

:class:`CaptureScan` yields, in frame order, either a UDP tuple
``(number, time, src, sport, dst, dport, payload)`` or a
:class:`~stacklab.analysis.pcapio.Packet` for TCP.  Validation and error
messages are :class:`~stacklab.analysis.pcapio.CaptureReader`'s.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO, Final

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
_PAD: Final = 128
_PCAPNG_SHB: Final = 0x0A0D0D0A

HotHandler = Callable[[int, float, "bytes | tuple[str, int, str, int]", bool, bytes], None]
"""``handler(number, time, key, to_port, payload)`` for UDP datagrams on the hot port."""

UdpItem = tuple[int, float, "bytes | tuple[str, int, str, int]", int, int, bytes]

_V4: dict[bytes, str] = {}


def _ipv4(raw: bytes) -> str:
    text = _V4.get(raw)
    if text is None:
        text = "%d.%d.%d.%d" % tuple(raw)  # noqa: UP031 - fastest here
        if len(_V4) < 1 << 16:
            _V4[raw] = text
    return text


def _swap(port: int) -> int:
    return ((port & 0xFF) << 8) | (port >> 8)


def _fast_layout(linktype: int, swap: bool) -> tuple[int, frozenset[int | bytes]] | None:
    """(link header length, accepted link header tails) for link types the shortcut handles.

    The tail is read in the file's byte order (``swap``: little-endian).
    """
    if linktype == LINKTYPE_ETHERNET:
        return 14, frozenset({0x0008 if swap else 0x0800})  # the IPv4 ethertype
    if linktype in (LINKTYPE_NULL, LINKTYPE_LOOP):
        return 4, frozenset({2, 0x02000000})  # AF_INET, written in either byte order
    if linktype in (LINKTYPE_RAW, LINKTYPE_IPV4):
        return 0, frozenset({b""})
    return None


def flow_endpoints(key: bytes | tuple[str, int, str, int]) -> tuple[str, int, str, int]:
    """(src, sport, dst, dport) of a flow key yielded by :class:`CaptureScan`."""
    if isinstance(key, tuple):
        return key
    return (
        _ipv4(key[0:4]),
        (key[8] << 8) | key[9],
        _ipv4(key[4:8]),
        (key[10] << 8) | key[11],
    )


class CaptureScan:
    """Iterate the watched packets of one capture file (see the module docstring).

    UDP packets come as ``(number, time, key, sport, dport, payload)``, where
    ``key`` identifies the flow and its direction: the 12 raw bytes of the
    IPv4 source, destination and ports, or a ``(src, sport, dst, dport)``
    tuple for packets decoded by the general path (IPv6...).
    :func:`flow_endpoints` turns either into addresses.  TCP packets come as
    :class:`~stacklab.analysis.pcapio.Packet`.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        udp_ports: frozenset[int],
        tcp_ports: frozenset[int],
        hot_port: int | None = None,
        hot_handler: HotHandler | None = None,
    ) -> None:
        self.path = os.fspath(path)
        self.hot_port = hot_port if hot_handler is not None else None
        self.hot_handler = hot_handler
        with CaptureReader(self.path) as probe:  # validates, and names the format
            self.format = probe.format
        self.udp_ports = udp_ports
        self.tcp_ports = tcp_ports
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

    # -- the slow, general path ---------------------------------------------------

    def _general(
        self, number: int, time: float, linktype: int, data: bytes
    ) -> UdpItem | Packet | None:
        packet = parse_packet(Frame(number, time, linktype, data))
        if packet is None:
            return None
        if packet.proto == "udp":
            hot = self.hot_port
            if hot is not None and hot in (packet.dport, packet.sport):
                assert self.hot_handler is not None
                key = (packet.src, packet.sport, packet.dst, packet.dport)
                self.hot_handler(number, time, key, packet.dport == hot, packet.payload)
                return None
            if packet.sport in self.udp_ports or packet.dport in self.udp_ports:
                key = (packet.src, packet.sport, packet.dst, packet.dport)
                return (number, time, key, packet.sport, packet.dport, packet.payload)
            return None
        if packet.proto == "tcp" and (
            packet.sport in self.tcp_ports or packet.dport in self.tcp_ports
        ):
            return packet
        return None

    def _watch(self, swap: bool) -> tuple[frozenset[int], frozenset[int], int]:
        """The watched ports as the fast struct reads them (byte-swapped on little-endian files).

        The hot port is -1 when there is none (no port matches it).
        """
        hot = -1 if self.hot_port is None else self.hot_port
        if not swap:
            return self.udp_ports, self.tcp_ports, hot
        return (
            frozenset(map(_swap, self.udp_ports)),
            frozenset(map(_swap, self.tcp_ports)),
            _swap(hot) if hot >= 0 else -1,
        )

    # -- pcap ---------------------------------------------------------------------------

    def _pcap(self, f: BinaryIO) -> Iterator[UdpItem | Packet]:
        with f:
            header = f.read(24)
            if len(header) < 24:
                raise CaptureError(f"{self.path}: truncated pcap header")
            magic = header[:4]
            endian = "<" if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
            resolution = 1e-9 if magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d") else 1e-6
            linktype = struct.unpack(endian + "I", header[20:24])[0] & 0x0FFFFFFF
            self.linktypes.append(linktype)
            read = f.read
            general = self._general
            hot_handler = self.hot_handler or _ignore
            swap = endian == "<"
            layout = _fast_layout(linktype, swap)
            udp_watch, tcp_watch, hot = self._watch(swap)
            frag_mask = 0xFF3F if swap else 0x3FFF  # MF flag and fragment offset
            head = struct.Struct(endian + "IIII").unpack_from
            if layout is not None:
                l2, tails = layout
                fast = _compile(endian + "IIII", l2).unpack_from
                min_len = l2 + 28
            else:
                l2, min_len = 0, 1 << 62
                tails = frozenset()
                fast = None
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
                if fast is not None:
                    sec, frac, incl, _orig, tail, verihl, frag, proto, sport, dport, ulen = fast(
                        buf, pos
                    )
                else:
                    sec, frac, incl, _orig = head(buf, pos)
                if incl > 0x4000000:
                    raise CaptureError(f"{self.path}: corrupt pcap record after frame {number}")
                start = pos + 16
                end = start + incl
                if end > real:
                    if eof:
                        self.truncated = True
                        break
                    limit = pos  # refill, keeping this record
                    continue
                number += 1
                pos = end
                if incl >= min_len and verihl == 0x45 and not frag & frag_mask and tail in tails:
                    if proto == 17:
                        if dport == hot or sport == hot:  # noqa: PLR1714 - no tuple per packet
                            ip = start + l2
                            if (
                                incl <= 64
                            ):  # short frames may carry link padding: trust the UDP length
                                ulen = ((ulen & 0xFF) << 8) | (ulen >> 8) if swap else ulen
                                stop = ip + 20 + ulen if 8 <= ulen <= end - ip - 20 else end
                            else:
                                stop = end
                            hot_handler(
                                number,
                                sec + frac * resolution,
                                buf[ip + 12 : ip + 24],
                                dport == hot,
                                buf[ip + 28 : stop],
                            )
                            continue
                        if sport not in udp_watch and dport not in udp_watch:
                            continue
                        item = general(number, sec + frac * resolution, linktype, buf[start:end])
                        if item is not None:
                            yield item
                        continue
                    if proto != 6 or (sport not in tcp_watch and dport not in tcp_watch):
                        continue
                item = general(number, sec + frac * resolution, linktype, buf[start:end])
                if item is not None:
                    yield item
            self.frames = number

    # -- pcapng --------------------------------------------------------------------------

    def _pcapng(self, f: BinaryIO) -> Iterator[UdpItem | Packet]:
        with f:
            read = f.read
            general = self._general
            hot_handler = self.hot_handler or _ignore
            number = 0
            endian = "<"
            interfaces: list[tuple[int, float]] = []
            fast: Callable[[bytes, int], tuple[Any, ...]] | None = None
            l2, min_len = 0, 1 << 62
            tails: frozenset[int | bytes] = frozenset()
            # Fields of the fast struct (bound before the first interface block).
            if_id = ts_hi = ts_lo = incl = verihl = frag = proto = sport = dport = ulen = 0
            tail: int | bytes = 0
            swap = True
            udp_watch, tcp_watch, hot = self._watch(swap)
            frag_mask = 0xFF3F
            resolution = 1e-6
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
                if fast is not None:
                    (
                        btype,
                        blen,
                        if_id,
                        ts_hi,
                        ts_lo,
                        incl,
                        _orig,
                        tail,
                        verihl,
                        frag,
                        proto,
                        sport,
                        dport,
                        ulen,
                    ) = fast(buf, pos)
                else:
                    btype, blen = struct.unpack_from(endian + "II", buf, pos)
                if btype == _PCAPNG_SHB:
                    bom = buf[pos + 8 : pos + 12]
                    if bom == b"\x4d\x3c\x2b\x1a":
                        endian = "<"
                    elif bom == b"\x1a\x2b\x3c\x4d":
                        endian = ">"
                    else:
                        raise CaptureError(f"{self.path}: corrupt pcapng section header")
                    blen = struct.unpack_from(endian + "I", buf, pos + 4)[0]
                    interfaces = []
                    fast = None
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
                            resolution = interfaces[0][1]
                            swap = endian == "<"
                            udp_watch, tcp_watch, hot = self._watch(swap)
                            frag_mask = 0xFF3F if swap else 0x3FFF
                            layout = _fast_layout(lt, swap)
                            if layout is not None:
                                l2, tails = layout
                                min_len = l2 + 28
                                fast = _compile(endian + "IIIIIII", l2).unpack_from
                    elif btype == 3 and interfaces:  # simple packet
                        number += 1
                        orig = struct.unpack_from(endian + "I", buf, pos + 8)[0]
                        data = buf[pos + 12 : pos + 12 + min(orig, blen - 16)]
                        item = general(number, 0.0, interfaces[0][0], data)
                        if item is not None:
                            yield item
                    pos = end
                    continue
                if fast is None:
                    if_id, ts_hi, ts_lo, incl = struct.unpack_from(endian + "IIII", buf, pos + 8)
                if if_id >= len(interfaces) or 28 + incl > blen:
                    raise CaptureError(
                        f"{self.path}: corrupt enhanced packet block at frame {number + 1}"
                    )
                number += 1
                pos = end
                start = pos - blen + 28
                if (
                    fast is not None
                    and not if_id
                    and incl >= min_len
                    and verihl == 0x45
                    and not frag & frag_mask
                    and tail in tails
                ):
                    if proto == 17:
                        if dport == hot or sport == hot:  # noqa: PLR1714 - no tuple per packet
                            ip = start + l2
                            stop = start + incl
                            if incl <= 64:
                                ulen = ((ulen & 0xFF) << 8) | (ulen >> 8) if swap else ulen
                                if 8 <= ulen <= stop - ip - 20:
                                    stop = ip + 20 + ulen
                            hot_handler(
                                number,
                                ((ts_hi << 32) | ts_lo) * resolution,
                                buf[ip + 12 : ip + 24],
                                dport == hot,
                                buf[ip + 28 : stop],
                            )
                            continue
                        if sport not in udp_watch and dport not in udp_watch:
                            continue
                    elif proto != 6 or (sport not in tcp_watch and dport not in tcp_watch):
                        continue
                lt, tick = interfaces[if_id]
                item = general(
                    number, ((ts_hi << 32) | ts_lo) * tick, lt, buf[start : start + incl]
                )
                if item is not None:
                    yield item
            self.frames = number


def _ignore(
    number: int, time: float, key: bytes | tuple[str, int, str, int], to_port: bool, payload: bytes
) -> None:
    """The hot handler when there is none (never called: no port matches)."""


def _compile(record: str, l2: int) -> struct.Struct:
    """One struct: the record header, the link header's tail, IPv4 fields, UDP ports and length."""
    link = {14: "12xH", 4: "I", 0: "0s"}[l2]
    # IPv4: ver/ihl B, tos x, total 2x, id 2x, flags+frag H, ttl x, proto B, csum 2x, addrs 8x
    return struct.Struct(record + link + "Bx4xHxB2x8xHHH")


def _tsresol(buf: bytes, start: int, stop: int, endian: str) -> float:
    pos = start
    while pos + 4 <= stop:
        code, length = struct.unpack_from(endian + "HH", buf, pos)
        if code == 0:
            break
        if code == 9 and length:
            raw = buf[pos + 4]
            return 2.0 ** -(raw & 0x7F) if raw & 0x80 else 10.0**-raw
        pos += 4 + ((length + 3) & ~3)
    return 1e-6
