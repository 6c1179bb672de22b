"""The verifier's hot path: walk a capture and pick out the packets that matter.

A million-packet capture must verify in about a second, so the common case
reads every field it needs (record header, link type, IPv4 and UDP fields,
the 11-byte RUDP header) by indexing the read buffer: no tuple, no slice and
no object per frame until a datagram of the hot port is handed over.  The
module is written for mypyc, which compiles that indexing to plain C (see
``setup.py``; after editing, ``make native`` rebuilds it); run as Python it
gives the same results, about five times more slowly.  Frames
whose ports are not watched are skipped before any object is built.
Everything unusual (VLAN tags, IPv6, IP options, fragments, other link
types, TCP) goes through the general decoder
:func:`stacklab.analysis.pcapio.parse_packet`, so correctness never depends
on the shortcut.  IP fragments are reassembled there
(:class:`~stacklab.analysis.ipfrag.Reassembler`, :attr:`CaptureScan.fragments`):
the datagram is handed over once, with the frame number of the fragment that
completes it, and a datagram missing a fragment is never handed over.

The *hot port* (RUDP) is handed straight to a :class:`HotSink`:
:meth:`HotSink.fields` when the whole RUDP header is there (the datagram is
``buf[start:stop]``), else :meth:`HotSink.raw`.  ``key`` identifies the flow
and its direction: the 12 raw bytes of IPv4 source, destination and ports,
or, for IPv6, a ``(src, sport, dst, dport)`` tuple from the general path
(which gives IPv4 flows the same 12 bytes as the fast path, so a flow whose
datagrams take both paths stays one flow); :func:`flow_endpoints` decodes
either.

Iterating a :class:`CaptureScan` yields the other watched packets in frame
order: UDP as ``(number, time, key, sport, dport, payload)``, TCP as
:class:`~stacklab.analysis.pcapio.Packet`.  Validation and error messages are
:class:`~stacklab.analysis.pcapio.CaptureReader`'s.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Iterator
from operator import truediv as _exact_div
from typing import BinaryIO, Final, Union

from mypy_extensions import mypyc_attr

from stacklab.analysis.ipfrag import Reassembler
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
from stacklab.wire import (
    RUDP_ACK_AT,
    RUDP_ACK_SIZE,
    RUDP_FLAG_AT,
    RUDP_FLAG_SIZE,
    RUDP_HEADER_LEN,
    RUDP_LEN_AT,
    RUDP_LEN_SIZE,
    RUDP_SEQ_AT,
    RUDP_SEQ_SIZE,
)

_READ_SIZE: Final = 1 << 22
_PAD: Final = 128  # zero bytes after the last read: the fast path never reads past the buffer
_PCAPNG_SHB: Final = 0x0A0D0D0A
_MAX_RECORD: Final = 0x4000000
_EXACT: Final = 1 << 53  # integers below this are exact as floats

# How the link header says "IPv4" (checked before the IPv4 fields are read).
_LINK_NONE: Final = 0  # raw IP: nothing to check
_LINK_ETHERTYPE: Final = 1  # Ethernet: type 0x0800 at offset 12
_LINK_AF_INET: Final = 2  # BSD loopback: AF_INET (2) as 4 bytes in either byte order

FlowKey = Union[bytes, tuple[str, int, str, int]]  # noqa: UP007 - a runtime alias for mypyc
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


# Compiled, the fast path reads a frame's fields by indexing the buffer (plain
# loads in C); as Python it reads them with one struct call instead, several
# times quicker there than indexing byte by byte (and slower compiled, where
# each call goes through the interpreter's machinery).  Both give the same
# fields; tests/test_native_build.py compares the two builds' results.
_COMPILED: Final = not __file__.endswith(".py")
# From the IPv4 header on: version and header length, flags and fragment
# offset, protocol, the ports (where UDP and TCP both have them), the UDP
# length, then the RUDP header at the wire module's offsets.
assert RUDP_SEQ_SIZE == RUDP_ACK_SIZE == 4 and RUDP_FLAG_SIZE == 1 and RUDP_LEN_SIZE == 2
assert (RUDP_SEQ_AT, RUDP_ACK_AT, RUDP_FLAG_AT, RUDP_LEN_AT) == (0, 4, 8, 9)
_IPV4_UDP_RUDP: Final = struct.Struct(">B5xHxB10xHHH2xIIBH")
# The same from an Ethernet header on, its EtherType first.
_ETHER_IPV4_UDP_RUDP: Final = struct.Struct(">12xH" + _IPV4_UDP_RUDP.format[1:])
_ROOM: Final = (
    64  # bytes the fast path may read past a frame's end (it unpacks 39 from the IP header)
)
assert _IPV4_UDP_RUDP.size - 28 == RUDP_HEADER_LEN and _IPV4_UDP_RUDP.size < _ROOM < _PAD
assert _ETHER_IPV4_UDP_RUDP.size == 14 + _IPV4_UDP_RUDP.size < _ROOM
# pcap record header: seconds, fraction, captured length
_PCAP_LE: Final = struct.Struct("<III")
_PCAP_BE: Final = struct.Struct(">III")


def packet_key(packet: Packet) -> FlowKey:
    """The flow key of a general-path packet: the fast path's 12 bytes for IPv4."""
    if ":" in packet.src:
        return (packet.src, packet.sport, packet.dst, packet.dport)
    return (
        socket.inet_aton(packet.src)
        + socket.inet_aton(packet.dst)
        + bytes((packet.sport >> 8, packet.sport & 0xFF, packet.dport >> 8, packet.dport & 0xFF))
    )


def _be32(buf: bytes, pos: int) -> int:
    return (buf[pos] << 24) | (buf[pos + 1] << 16) | (buf[pos + 2] << 8) | buf[pos + 3]


def _le32(buf: bytes, pos: int) -> int:
    return buf[pos] | (buf[pos + 1] << 8) | (buf[pos + 2] << 16) | (buf[pos + 3] << 24)


def _port_map(ports: frozenset[int]) -> bytes:
    """65,536 bytes, 1 at each port of ``ports``."""
    table = bytearray(1 << 16)
    for port in ports:
        if 0 <= port < 1 << 16:
            table[port] = 1
    return bytes(table)


def _link(linktype: int) -> tuple[int, int] | None:
    """(link header length, how it says IPv4) for the link types of the fast path."""
    if linktype == LINKTYPE_ETHERNET:
        return 14, _LINK_ETHERTYPE
    if linktype in (LINKTYPE_NULL, LINKTYPE_LOOP):
        return 4, _LINK_AF_INET
    if linktype in (LINKTYPE_RAW, LINKTYPE_IPV4):
        return 0, _LINK_NONE
    return None


@mypyc_attr(allow_interpreted_subclasses=True)
class HotSink:
    """Receives the hot port's datagrams; subclass it (compiled, the calls are direct)."""

    def fields(
        self,
        number: int,
        time: float,
        key: FlowKey,
        to_port: bool,
        seq: int,
        ack: int,
        flag: int,
        length: int,
        buf: bytes,
        start: int,
        stop: int,
    ) -> None:
        """A datagram ``buf[start:stop]`` whose RUDP header is all there, already decoded.

        ``flag`` is the flag letter's byte value, ``to_port``: sent to the hot
        port (by a client).
        """

    def raw(self, number: int, time: float, key: FlowKey, to_port: bool, datagram: bytes) -> None:
        """A datagram from the general path, or one too short for the RUDP header."""


class CaptureScan:
    """Walk one capture file: hot-port datagrams to a sink, other watched packets yielded."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        udp_ports: frozenset[int],
        tcp_ports: frozenset[int],
        hot_port: int | None = None,
        hot_sink: HotSink | None = None,
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
        # One byte per port: a lookup by index costs no int object when compiled.
        self._udp_watch = _port_map(udp_ports)
        self._tcp_watch = _port_map(tcp_ports)
        self.hot = hot_port if hot_port is not None and hot_sink is not None else -1
        self.sink: HotSink = hot_sink if hot_sink is not None else HotSink()
        self.frames = 0
        self.truncated = False
        self.linktypes: list[int] = []
        # IP fragments, reassembled on the general path (see ipfrag for the rules).
        self.fragments = Reassembler()
        self._found: list[UdpItem | Packet] = []
        # The fast path's view of the (first) interface.
        self._fast = False
        self._linktype = -1
        self._l2 = 0
        self._link_kind = _LINK_NONE
        self._per_sec = 10**6
        self._little = True
        # pcapng: (link type, ticks per second) of each interface of the section
        self._interfaces: list[tuple[int, int]] = []
        self._seen_block = False

    @property
    def linktype_name(self) -> str:
        if not self.linktypes:
            return "unknown"
        return ",".join(LINKTYPE_NAMES.get(lt, str(lt)) for lt in self.linktypes)

    def __iter__(self) -> Iterator[UdpItem | Packet]:
        try:
            # Unbuffered: every read is one big system call into a fresh block.
            f: BinaryIO = open(self.path, "rb", buffering=0)  # noqa: SIM115 - closed by _walk
        except OSError as exc:
            raise CaptureError(f"{self.path}: cannot read: {exc.strerror}") from None
        return self._walk(f)

    def _use_link(self, linktype: int) -> None:
        link = _link(linktype)
        self._linktype = linktype
        self._fast = link is not None
        if link is not None:
            self._l2, self._link_kind = link

    # -- the read loop ------------------------------------------------------------------

    def _walk(self, f: BinaryIO) -> Iterator[UdpItem | Packet]:
        """Read the file in big blocks; the record walkers stop where a block runs out.

        A block that ends inside a record is not joined to the next read (a
        copy of megabytes): the next read starts at that record instead.
        """
        pcap = self.format == "pcap"
        with f:
            if pcap:
                self._pcap_header(f.read(24))
            header = 16 if pcap else 12  # bytes a record needs before its length is known
            offset = f.tell()  # of buf[0] in the file
            size = _READ_SIZE
            while True:
                buf = f.read(size)
                real = len(buf)
                eof = real < size
                if eof:
                    buf += bytes(_PAD)
                limit = real - header + 1 if eof else real - _PAD
                # Records must end _ROOM bytes before the end of a block (the
                # last block is padded with zeros): the fast path reads past a frame.
                room = real if eof else real - _ROOM
                if pcap:
                    pos = self._pcap_records(buf, 0, limit, room)
                else:
                    pos = self._pcapng_blocks(buf, 0, limit, room)
                if self._found:
                    found, self._found = self._found, []
                    yield from found
                if eof:
                    if pos < real:
                        if not pcap and not self._seen_block:
                            raise CaptureError(f"{self.path}: truncated pcapng section header")
                        self.truncated = True
                    self.fragments.finish()
                    return
                # A record bigger than a whole block: read more at once.
                size = size * 2 if pos == 0 else _READ_SIZE
                offset += pos
                f.seek(offset)

    # -- the slow, general path --------------------------------------------------

    def _general(self, number: int, time: float, linktype: int, data: bytes) -> None:
        packet = parse_packet(Frame(number, time, linktype, data), self.fragments)
        if packet is None:
            return
        if packet.proto == "udp":
            key = packet_key(packet)
            if self.hot in (packet.dport, packet.sport):
                to_port = packet.dport == self.hot
                client_port = packet.sport if to_port else packet.dport
                if client_port % self.parts == self.part:
                    self.sink.raw(number, time, key, to_port, packet.payload)
                return
            if packet.sport in self.udp_ports or packet.dport in self.udp_ports:
                self._found.append((number, time, key, packet.sport, packet.dport, packet.payload))
            return
        if packet.proto == "tcp" and (
            packet.sport in self.tcp_ports or packet.dport in self.tcp_ports
        ):
            self._found.append(packet)

    # -- the fast path -------------------------------------------------------------

    def _frame(self, number: int, time: float, buf: bytes, start: int, stop: int) -> None:
        """One frame ``buf[start:stop]`` of the fast path's link type.

        ``buf`` holds at least ``_ROOM`` bytes after ``stop``.
        """
        ip = start + self._l2
        if stop - ip >= 28:
            kind = self._link_kind
            if kind == _LINK_ETHERTYPE:
                is_ipv4 = buf[start + 12] == 8 and buf[start + 13] == 0
            elif kind == _LINK_AF_INET:
                b0, b3 = buf[start], buf[start + 3]
                is_ipv4 = (
                    buf[start + 1] == 0
                    and buf[start + 2] == 0
                    and ((b0 == 2 and b3 == 0) or (b0 == 0 and b3 == 2))
                )
            else:
                is_ipv4 = True
            if is_ipv4:
                # Typed, so that compiled code keeps them as plain integers.
                vihl: int
                frag: int
                proto: int
                sport: int
                dport: int
                ulen: int
                seq: int
                ack: int
                flag: int
                length: int
                if _COMPILED:
                    vihl = buf[ip]
                    frag = (buf[ip + 6] << 8) | buf[ip + 7]
                    proto = buf[ip + 9]
                    sport = (buf[ip + 20] << 8) | buf[ip + 21]
                    dport = (buf[ip + 22] << 8) | buf[ip + 23]
                    ulen = (buf[ip + 24] << 8) | buf[ip + 25]
                    at = ip + 28
                    seq = (buf[at] << 24) | (buf[at + 1] << 16) | (buf[at + 2] << 8) | buf[at + 3]
                    at += 4
                    ack = (buf[at] << 24) | (buf[at + 1] << 16) | (buf[at + 2] << 8) | buf[at + 3]
                    flag = buf[at + 4]
                    length = (buf[at + 5] << 8) | buf[at + 6]
                else:
                    vihl, frag, proto, sport, dport, ulen, seq, ack, flag, length = (
                        _IPV4_UDP_RUDP.unpack_from(buf, ip)
                    )
                # Plain IPv4 (no options), not a fragment.
                if vihl == 0x45 and not frag & 0x3FFF:
                    if proto == 17:
                        hot = self.hot
                        to_port = dport == hot
                        if to_port or sport == hot:
                            parts = self.parts
                            if parts > 1 and (sport if to_port else dport) % parts != self.part:
                                return
                            # A frame may carry link padding after the datagram:
                            # trust the UDP length when it fits in the frame.
                            if 8 <= ulen <= stop - ip - 20:
                                stop = ip + 20 + ulen
                            key = buf[ip + 12 : ip + 24]
                            begin = ip + 28
                            if stop - begin >= RUDP_HEADER_LEN:
                                self.sink.fields(
                                    number,
                                    time,
                                    key,
                                    to_port,
                                    seq,
                                    ack,
                                    flag,
                                    length,
                                    buf,
                                    begin,
                                    stop,
                                )
                            else:
                                self.sink.raw(number, time, key, to_port, buf[begin:stop])
                            return
                        watch = self._udp_watch
                        if not watch[sport] and not watch[dport]:
                            return
                    elif proto == 6:
                        watch = self._tcp_watch
                        if not watch[sport] and not watch[dport]:
                            return
                    else:
                        return
        self._general(number, time, self._linktype, buf[start:stop])

    # -- pcap ------------------------------------------------------------------------------

    def _pcap_header(self, header: bytes) -> None:
        if len(header) < 24:
            raise CaptureError(f"{self.path}: truncated pcap header")
        magic = header[:4]
        self._little = magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1")
        # Times are exact integer ticks divided once (correctly rounded), so
        # they equal the float of tshark's decimal timestamps bit for bit.
        self._per_sec = 10**9 if magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d") else 10**6
        linktype = (_le32(header, 20) if self._little else _be32(header, 20)) & 0x0FFFFFFF
        self.linktypes.append(linktype)
        self._use_link(linktype)

    def _pcap_records(self, buf: bytes, pos: int, limit: int, room: int) -> int:
        """Walk the records that start before ``limit``; return where to go on.

        Stops early at a record that does not end within ``room`` bytes.
        """
        number = self.frames
        per_sec = self._per_sec
        # Microsecond ticks fit a float exactly (below 2**53): dividing that
        # float rounds like dividing the integer, without big-int arithmetic.
        micro = per_sec == 10**6
        record = _PCAP_LE if self._little else _PCAP_BE
        fast = self._fast
        sec: int
        frac: int
        incl: int
        little = self._little
        compiled = _COMPILED
        if not compiled and fast and self._link_kind == _LINK_ETHERTYPE:
            return self._pcap_ethernet(buf, pos, limit, room)
        while pos < limit:
            if not compiled:
                sec, frac, incl = record.unpack_from(buf, pos)
            elif little:  # _le32, inlined: three calls per frame cost measurably
                sec = buf[pos] | (buf[pos + 1] << 8) | (buf[pos + 2] << 16) | (buf[pos + 3] << 24)
                frac = (
                    buf[pos + 4] | (buf[pos + 5] << 8) | (buf[pos + 6] << 16) | (buf[pos + 7] << 24)
                )
                incl = (
                    buf[pos + 8]
                    | (buf[pos + 9] << 8)
                    | (buf[pos + 10] << 16)
                    | (buf[pos + 11] << 24)
                )
            else:
                sec = _be32(buf, pos)
                frac = _be32(buf, pos + 4)
                incl = _be32(buf, pos + 8)
            start = pos + 16
            end = start + incl
            if end > room:
                if incl > _MAX_RECORD:
                    raise CaptureError(f"{self.path}: corrupt pcap record after frame {number}")
                break
            number += 1
            pos = end
            if micro:
                time = (sec * 1e6 + frac) / 1e6  # the ints convert to floats exactly
            else:
                time = _exact_div(sec * per_sec + frac, per_sec)
            if fast:
                self._frame(number, time, buf, start, end)
            else:
                self._general(number, time, self._linktype, buf[start:end])
        self.frames = number
        return pos

    def _pcap_ethernet(self, buf: bytes, pos: int, limit: int, room: int) -> int:
        """:meth:`_pcap_records` for Ethernet as Python, with the hot port's frames inlined.

        Interpreted, a call and the attribute lookups of :meth:`_frame` cost
        as much as its decoding: here the commonest frame (a datagram of the
        hot port) takes neither, and every other frame goes to :meth:`_frame`
        as usual.  Compiled code never comes here (calls cost it nothing).
        """
        number = self.frames
        per_sec = self._per_sec
        micro = per_sec == 10**6
        record = _PCAP_LE if self._little else _PCAP_BE
        unpack_record = record.unpack_from
        unpack_frame = _ETHER_IPV4_UDP_RUDP.unpack_from
        frame = self._frame
        hot = self.hot
        parts = self.parts
        part = self.part
        sink = self.sink
        fields = sink.fields
        udp_watch = self._udp_watch
        tcp_watch = self._tcp_watch
        while pos < limit:
            sec, frac, incl = unpack_record(buf, pos)
            start = pos + 16
            end = start + incl
            if end > room:
                if incl > _MAX_RECORD:
                    raise CaptureError(f"{self.path}: corrupt pcap record after frame {number}")
                break
            number += 1
            pos = end
            if micro:
                time = (sec * 1e6 + frac) / 1e6  # the ints convert to floats exactly
            else:
                time = _exact_div(sec * per_sec + frac, per_sec)
            if incl >= 14 + 28:  # the checks of _frame, in its order
                ethertype, vihl, frag, proto, sport, dport, ulen, seq, ack, flag, length = (
                    unpack_frame(buf, start)
                )
                if ethertype == 0x0800 and vihl == 0x45 and not frag & 0x3FFF:
                    if proto == 17:
                        to_port = dport == hot
                        if to_port or sport == hot:
                            if parts > 1 and (sport if to_port else dport) % parts != part:
                                continue
                            # _frame's offsets, from the frame's start (IP header at 14).
                            stop = start + 34 + ulen if 8 <= ulen <= incl - 34 else end
                            key = buf[start + 26 : start + 38]
                            begin = start + 42
                            if stop - begin >= RUDP_HEADER_LEN:
                                fields(
                                    number,
                                    time,
                                    key,
                                    to_port,
                                    seq,
                                    ack,
                                    flag,
                                    length,
                                    buf,
                                    begin,
                                    stop,
                                )
                            else:
                                sink.raw(number, time, key, to_port, buf[begin:stop])
                            continue
                        if not udp_watch[sport] and not udp_watch[dport]:
                            continue
                    elif proto == 6:
                        if not tcp_watch[sport] and not tcp_watch[dport]:
                            continue
                    else:
                        continue
            frame(number, time, buf, start, end)  # what is left: _frame's general path
        self.frames = number
        return pos

    # -- pcapng ------------------------------------------------------------------------------

    def _pcapng_blocks(self, buf: bytes, pos: int, limit: int, room: int) -> int:
        """Walk the blocks that start before ``limit``; return where to go on.

        Stops early at a block that does not end within ``room`` bytes.
        """
        number = self.frames
        interfaces = self._interfaces
        while pos < limit:
            # The section header's type reads the same in both byte orders.
            btype = buf[pos] | (buf[pos + 1] << 8) | (buf[pos + 2] << 16) | (buf[pos + 3] << 24)
            if btype == _PCAPNG_SHB:
                bom = buf[pos + 8 : pos + 12]
                if bom == b"\x4d\x3c\x2b\x1a":
                    self._little = True
                elif bom == b"\x1a\x2b\x3c\x4d":
                    self._little = False
                else:
                    raise CaptureError(f"{self.path}: corrupt pcapng section header")
                interfaces = self._interfaces = []
                self._fast = False
            little = self._little
            if little:
                blen = (
                    buf[pos + 4] | (buf[pos + 5] << 8) | (buf[pos + 6] << 16) | (buf[pos + 7] << 24)
                )
            else:
                btype = _be32(buf, pos)
                blen = _be32(buf, pos + 4)
            if blen < 12 or blen % 4 or blen > _MAX_RECORD:
                raise CaptureError(f"{self.path}: corrupt pcapng block after frame {number}")
            end = pos + blen
            if end > room:
                break
            self._seen_block = True
            if btype != 6:
                if btype == 1:  # interface description
                    self._interface(buf, pos, end)
                elif btype == 3 and interfaces:  # simple packet
                    number += 1
                    orig = _le32(buf, pos + 8) if little else _be32(buf, pos + 8)
                    data = buf[pos + 12 : pos + 12 + min(orig, blen - 16)]
                    self._general(number, 0.0, interfaces[0][0], data)
                pos = end
                continue
            if little:  # _le32, inlined: six calls per block cost measurably
                if_id = (
                    buf[pos + 8]
                    | (buf[pos + 9] << 8)
                    | (buf[pos + 10] << 16)
                    | (buf[pos + 11] << 24)
                )
                ts = (
                    (buf[pos + 12] << 32)
                    | (buf[pos + 13] << 40)
                    | (buf[pos + 14] << 48)
                    | (buf[pos + 15] << 56)
                    | buf[pos + 16]
                    | (buf[pos + 17] << 8)
                    | (buf[pos + 18] << 16)
                    | (buf[pos + 19] << 24)
                )
                incl = (
                    buf[pos + 20]
                    | (buf[pos + 21] << 8)
                    | (buf[pos + 22] << 16)
                    | (buf[pos + 23] << 24)
                )
            else:
                if_id = _be32(buf, pos + 8)
                ts = (_be32(buf, pos + 12) << 32) | _be32(buf, pos + 16)
                incl = _be32(buf, pos + 20)
            if if_id >= len(interfaces) or 28 + incl > blen:
                raise CaptureError(
                    f"{self.path}: corrupt enhanced packet block at frame {number + 1}"
                )
            number += 1
            start = pos + 28
            pos = end
            linktype, tick = interfaces[if_id]
            # Compiled, int / int converts both to floats first: exact only
            # below 2**53 (nanosecond ticks are not).  CPython's division of
            # the ints is correctly rounded, like tshark's decimal times.
            time = ts / tick if ts < _EXACT else _exact_div(ts, tick)
            if if_id == 0 and self._fast:
                self._frame(number, time, buf, start, start + incl)
            else:
                self._general(number, time, linktype, buf[start : start + incl])
        self.frames = number
        return pos

    def _interface(self, buf: bytes, pos: int, end: int) -> None:
        """An interface description block: its link type and time resolution."""
        little = self._little
        raw = buf[pos + 8 : pos + 10]
        linktype = raw[0] | (raw[1] << 8) if little else (raw[0] << 8) | raw[1]
        self._interfaces.append((linktype, _tsresol(buf, pos + 16, end - 4, little)))
        if linktype not in self.linktypes:
            self.linktypes.append(linktype)
        if len(self._interfaces) == 1:
            self._use_link(linktype)


def _tsresol(buf: bytes, start: int, stop: int, little: bool) -> int:
    """Ticks per second of an interface (if_tsresol: 10**n or 2**n; default 10**6)."""
    endian = "<" if little else ">"
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
