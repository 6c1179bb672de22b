"""Write synthetic captures: pcap/pcapng records of IPv4 UDP and TCP.

Tests need captures that break one rule on purpose (a window that grows by
two, a selective resend, a wrong handshake ack...) and the benchmark needs a
capture of a million packets.  Neither should wait for, or pay for, Scapy:
this module builds the few headers involved with ``struct`` and writes them
straight to disk, streaming, so a large capture costs no memory.

It has three layers:

* :class:`CaptureWriter` writes link-layer records (pcap or pcapng, link type
  Ethernet, BSD NULL or raw IP) of UDP datagrams and TCP segments over IPv4
  or IPv6 (by the packet's addresses), optionally fragmented at an MTU, with
  a hook that reorders, duplicates or drops the fragments;
* :class:`Conversation` scripts a RUDP exchange packet by packet (for
  hand-made rule breakers) and :func:`simulate_transfer` runs a small seeded
  Go-Back-N / AIMD sender against a Go-Back-N receiver with loss, with knobs
  that make the sender misbehave in one precise way;
* :func:`dhcp_exchange`, :func:`dns_exchange` and :func:`app_fetch` script the
  other services.
"""

from __future__ import annotations

import heapq
import ipaddress
import os
import random
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO, Final, Literal

from stacklab.wire import (
    APP_ADDR,
    APP_RUDP_PORT,
    APP_TCP_PORT,
    DEFAULT_URL,
    DHCP_DISCOVER,
    DHCP_PORT,
    DNS_PORT,
    ORIGINAL_CHUNK_SIZE,
    ORIGINAL_ISN,
    ORIGINAL_MAX_WINDOW,
    ORIGINAL_TIMEOUT_S,
    Flag,
    encode_frame,
    pack_rudp,
)

LINK_ETHERNET: Final = 1
LINK_NULL: Final = 0
LINK_RAW: Final = 101

_ETH_HEADER: Final = b"\x00" * 12 + b"\x08\x00"
_ETH_HEADER6: Final = b"\x00" * 12 + b"\x86\xdd"
_NULL_HEADER: Final = struct.pack("<I", 2)
_NULL_HEADER6: Final = struct.pack("<I", 24)  # AF_INET6 of the BSDs
_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_IPV6 = struct.Struct("!IHBB16s16s")
_IPV6_FRAGMENT = struct.Struct("!BBHI")
IPV4_DF: Final = 0x4000
IPV4_MF: Final = 0x2000
IPPROTO_FRAGMENT: Final = 44

FragmentHook = Callable[[list[bytes]], list[bytes]]
"""Given the IP packets of one fragmented datagram in order, return the ones to write.

Reorder, duplicate or drop them to script an unusual path (see :class:`CaptureWriter`).
"""
_UDP = struct.Struct("!HHHH")
_TCP = struct.Struct("!HHIIBBHHH")
_PCAP_RECORD = struct.Struct("<IIII")
_EPB_HEAD = struct.Struct("<IIIIIII")

TCP_FIN: Final = 0x01
TCP_SYN: Final = 0x02
TCP_PSH: Final = 0x08
TCP_ACK: Final = 0x10

CLIENT_ADDR: Final = "127.0.0.1"


@dataclass(frozen=True, slots=True)
class UdpPacket:
    """One UDP datagram to write: time, endpoints and payload."""

    time: float
    src: str
    sport: int
    dst: str
    dport: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class TcpPacket:
    """One TCP segment to write."""

    time: float
    src: str
    sport: int
    dst: str
    dport: int
    seq: int
    ack: int
    flags: int
    payload: bytes = b""


Packet = UdpPacket | TcpPacket


def _addr(text: str) -> bytes:
    return bytes(int(part) for part in text.split("."))


def _checksum(header: bytes) -> int:
    total = sum(struct.unpack("!10H", header))
    total = (total & 0xFFFF) + (total >> 16)
    total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _internet_checksum(data: bytes) -> int:
    """The ones' complement checksum of RFC 1071 over ``data`` (padded to even length)."""
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ipv4(
    src: str, dst: str, proto: int, l4: bytes, ident: int = 0, flags_offset: int = IPV4_DF
) -> bytes:
    """An IPv4 header (with a correct checksum) followed by ``l4``.

    ``flags_offset`` is the header's flags and fragment offset field (by
    default Don't Fragment, as Linux sends UDP and TCP).
    """
    header = _IPV4.pack(
        0x45, 0, 20 + len(l4), ident & 0xFFFF, flags_offset, 64, proto, 0, _addr(src), _addr(dst)
    )
    return header[:10] + struct.pack("!H", _checksum(header)) + header[12:] + l4


def ipv6(src: str, dst: str, next_header: int, payload: bytes) -> bytes:
    """A fixed IPv6 header (no extension headers) followed by ``payload``."""
    return (
        _IPV6.pack(
            6 << 28,
            len(payload),
            next_header,
            64,
            ipaddress.IPv6Address(src).packed,
            ipaddress.IPv6Address(dst).packed,
        )
        + payload
    )


def ipv4_fragments(src: str, dst: str, proto: int, l4: bytes, ident: int, mtu: int) -> list[bytes]:
    """``l4`` in IPv4 packets of at most ``mtu`` bytes: one whole packet, or its fragments.

    Each fragment but the last carries a multiple of 8 bytes and More
    Fragments, as RFC 791 cuts them; fragmented packets do not carry Don't
    Fragment.
    """
    if 20 + len(l4) <= mtu:
        return [ipv4(src, dst, proto, l4, ident)]
    step = (mtu - 20) // 8 * 8
    if step <= 0:
        raise ValueError(f"MTU {mtu} leaves no room for IPv4 fragment data")
    out = []
    for start in range(0, len(l4), step):
        piece = l4[start : start + step]
        more = IPV4_MF if start + step < len(l4) else 0
        out.append(ipv4(src, dst, proto, piece, ident, more | start // 8))
    return out


def ipv6_fragments(
    src: str, dst: str, next_header: int, l4: bytes, ident: int, mtu: int
) -> list[bytes]:
    """``l4`` in IPv6 packets of at most ``mtu`` bytes, with Fragment headers when it must be cut.

    The Fragment extension header (next header 44, RFC 8200 section 4.5)
    carries the 32-bit identification, the offset in 8-byte units and the M
    flag.
    """
    if 40 + len(l4) <= mtu:
        return [ipv6(src, dst, next_header, l4)]
    step = (mtu - 48) // 8 * 8
    if step <= 0:
        raise ValueError(f"MTU {mtu} leaves no room for IPv6 fragment data")
    out = []
    for start in range(0, len(l4), step):
        piece = l4[start : start + step]
        more = 1 if start + step < len(l4) else 0
        header = _IPV6_FRAGMENT.pack(next_header, 0, start | more, ident & 0xFFFFFFFF)
        out.append(ipv6(src, dst, IPPROTO_FRAGMENT, header + piece))
    return out


def udp_segment(sport: int, dport: int, payload: bytes) -> bytes:
    """A UDP header (checksum 0: optional in IPv4) and payload."""
    return _UDP.pack(sport, dport, 8 + len(payload), 0) + payload


def udp6_segment(src: str, sport: int, dst: str, dport: int, payload: bytes) -> bytes:
    """A UDP header with the checksum IPv6 requires (RFC 8200 section 8.1) and payload."""
    length = 8 + len(payload)
    pseudo = (
        ipaddress.IPv6Address(src).packed
        + ipaddress.IPv6Address(dst).packed
        + struct.pack("!IxxxB", length, 17)
    )
    checksum = _internet_checksum(pseudo + _UDP.pack(sport, dport, length, 0) + payload) or 0xFFFF
    return _UDP.pack(sport, dport, length, checksum) + payload


def tcp_segment(sport: int, dport: int, seq: int, ack: int, flags: int, payload: bytes) -> bytes:
    """A 20-byte TCP header (checksum left 0) and payload."""
    return (
        _TCP.pack(sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, 5 << 4, flags, 65535, 0, 0)
        + payload
    )


class CaptureWriter:
    """Stream packets into a pcap or pcapng file.

    ``fmt`` is ``"pcap"`` (microsecond timestamps) or ``"pcapng"`` (one
    interface, microsecond resolution).  ``link`` chooses the link header:
    Ethernet with zero MAC addresses (Linux loopback), BSD NULL (macOS and
    Npcap loopback, like the seed captures) or raw IP.  A packet whose
    addresses are IPv6 goes out over IPv6, otherwise over IPv4.

    ``mtu`` fragments every IP packet bigger than that, as a sending host
    does (IPv4: RFC 791 fragments; IPv6: Fragment extension headers); all the
    fragments of a datagram get the datagram's time.  ``fragments`` (see
    :data:`FragmentHook`) may reorder, duplicate or drop them before they are
    written.  ``snaplen`` cuts every record to that many bytes, as a capture
    with a snapshot length does.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        fmt: Literal["pcap", "pcapng"] = "pcap",
        link: int = LINK_ETHERNET,
        mtu: int | None = None,
        fragments: FragmentHook | None = None,
        snaplen: int | None = None,
    ) -> None:
        if link not in (LINK_ETHERNET, LINK_NULL, LINK_RAW):
            raise ValueError(f"unsupported link type {link}")
        if mtu is not None and mtu < 68:
            raise ValueError(f"MTU {mtu} is below the IPv4 minimum of 68")
        self.fmt = fmt
        self.link = link
        self.mtu = mtu
        self.fragments = fragments
        self.snaplen = snaplen
        self.count = 0
        self._prefix = {LINK_ETHERNET: _ETH_HEADER, LINK_NULL: _NULL_HEADER, LINK_RAW: b""}[link]
        self._prefix6 = {LINK_ETHERNET: _ETH_HEADER6, LINK_NULL: _NULL_HEADER6, LINK_RAW: b""}[link]
        self._file: BinaryIO = open(path, "wb")  # noqa: SIM115 - closed in close()
        self._ident = 0
        if fmt == "pcap":
            self._file.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, link))
        elif fmt == "pcapng":
            shb = struct.pack("<IIIHHq", 0x0A0D0D0A, 28, 0x1A2B3C4D, 1, 0, -1) + struct.pack(
                "<I", 28
            )
            idb = struct.pack("<IIHHI", 1, 20, link, 0, 262144) + struct.pack("<I", 20)
            self._file.write(shb + idb)
        else:
            raise ValueError(f"unknown capture format {fmt!r}")

    def __enter__(self) -> CaptureWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    def frame(self, time: float, data: bytes) -> None:
        """Write one link-layer frame (``data`` already carries the link header)."""
        micros = round(time * 1_000_000)
        self.count += 1
        size = len(data)
        if self.snaplen is not None:
            data = data[: self.snaplen]
        if self.fmt == "pcap":
            sec, usec = divmod(micros, 1_000_000)
            self._file.write(_PCAP_RECORD.pack(sec, usec, len(data), size) + data)
        else:
            pad = -len(data) % 4
            total = 32 + len(data) + pad
            head = _EPB_HEAD.pack(6, total, 0, micros >> 32, micros & 0xFFFFFFFF, len(data), size)
            self._file.write(head + data + b"\x00" * pad + struct.pack("<I", total))

    def ip(self, time: float, src: str, dst: str, proto: int, l4: bytes) -> None:
        """One IP packet (IPv6 when ``src`` is an IPv6 address), fragmented beyond the MTU."""
        self._ident += 1
        mtu = self.mtu if self.mtu is not None else 1 << 20
        if ":" in src:
            prefix = self._prefix6
            packets = ipv6_fragments(src, dst, proto, l4, self._ident, mtu)
        else:
            prefix = self._prefix
            packets = ipv4_fragments(src, dst, proto, l4, self._ident, mtu)
        if len(packets) > 1 and self.fragments is not None:
            packets = self.fragments(packets)
        for packet in packets:
            self.frame(time, prefix + packet)

    def write(self, packet: Packet) -> None:
        """Write a :class:`UdpPacket` or :class:`TcpPacket`."""
        if isinstance(packet, UdpPacket):
            if ":" in packet.src:
                datagram = udp6_segment(
                    packet.src, packet.sport, packet.dst, packet.dport, packet.payload
                )
            else:
                datagram = udp_segment(packet.sport, packet.dport, packet.payload)
            self.ip(packet.time, packet.src, packet.dst, 17, datagram)
        else:
            segment = tcp_segment(
                packet.sport, packet.dport, packet.seq, packet.ack, packet.flags, packet.payload
            )
            self.ip(packet.time, packet.src, packet.dst, 6, segment)

    def write_all(self, packets: Iterable[Packet]) -> None:
        for packet in packets:
            self.write(packet)


def write_capture(
    path: str | os.PathLike[str],
    packets: Iterable[Packet],
    *,
    fmt: Literal["pcap", "pcapng"] = "pcap",
    link: int = LINK_ETHERNET,
    mtu: int | None = None,
    fragments: FragmentHook | None = None,
    snaplen: int | None = None,
) -> int:
    """Write ``packets`` (in the order given) to ``path``; return how many frames.

    ``mtu``, ``fragments`` and ``snaplen`` are :class:`CaptureWriter`'s.
    """
    with CaptureWriter(
        path, fmt=fmt, link=link, mtu=mtu, fragments=fragments, snaplen=snaplen
    ) as writer:
        writer.write_all(packets)
        return writer.count


# ---------------------------------------------------------------------------
# Scripted RUDP exchanges
# ---------------------------------------------------------------------------


@dataclass
class Conversation:
    """Script a RUDP exchange one datagram at a time.

    Every call appends a datagram ``step`` seconds after the previous one
    (or ``dt`` seconds when given), so a test reads as the ladder diagram it
    describes.  :meth:`handshake` writes the four opening datagrams.
    """

    client: tuple[str, int] = (CLIENT_ADDR, 50000)
    server: tuple[str, int] = (APP_ADDR, APP_RUDP_PORT)
    start: float = 1_700_000_000.0
    step: float = 0.001
    packets: list[Packet] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.now = self.start

    def _add(
        self, from_client: bool, seq: int, ack: int, flag: bytes, payload: bytes, dt: float | None
    ) -> UdpPacket:
        self.now += self.step if dt is None else dt
        src, dst = (self.client, self.server) if from_client else (self.server, self.client)
        packet = UdpPacket(
            self.now, src[0], src[1], dst[0], dst[1], pack_rudp(seq, ack, flag, payload)
        )
        self.packets.append(packet)
        return packet

    def c2s(
        self, seq: int, ack: int, flag: bytes, payload: bytes = b"", dt: float | None = None
    ) -> UdpPacket:
        """A datagram from the client to the server."""
        return self._add(True, seq, ack, flag, payload, dt)

    def s2c(
        self, seq: int, ack: int, flag: bytes, payload: bytes = b"", dt: float | None = None
    ) -> UdpPacket:
        """A datagram from the server to the client."""
        return self._add(False, seq, ack, flag, payload, dt)

    def handshake(
        self,
        isn: int = ORIGINAL_ISN,
        command: bytes = f"FETCH {DEFAULT_URL}".encode(),
        *,
        byte_ack: bool = False,
        synack: int | None = None,
    ) -> None:
        """SYN, SYN-ACK, command DATA, command ACK (ack = seq, or seq + length)."""
        mask = 0xFFFFFFFF  # sequence numbers wrap
        self.c2s(isn & mask, 0, Flag.SYN.value)
        self.s2c(0, (isn + 1) & mask if synack is None else synack, Flag.ACK.value)
        self.c2s((isn + 1) & mask, 0, Flag.DATA.value, command)
        self.s2c(0, (isn + 1 + (len(command) if byte_ack else 0)) & mask, Flag.ACK.value)

    def data(self, chunk: int, payload: bytes, dt: float | None = None) -> UdpPacket:
        return self.s2c(chunk, 0, Flag.DATA.value, payload, dt)

    def ack(self, value: int, dt: float | None = None) -> UdpPacket:
        return self.c2s(0, value, Flag.ACK.value, b"", dt)

    def fin(self, seq: int, dt: float | None = None) -> UdpPacket:
        return self.s2c(seq, 0, Flag.FIN.value, b"", dt)


def chunks_of(content: bytes, size: int) -> list[bytes]:
    """Split ``content`` into ``size``-byte chunks (one empty chunk for empty content)."""
    return [content[i : i + size] for i in range(0, len(content), size)] or [b""]


@dataclass(frozen=True)
class SenderFaults:
    """Ways to make the simulated sender (or receiver) break exactly one rule.

    The defaults are a correct Go-Back-N / AIMD pair (docs/rulebook.md);
    each knob makes one of them wrong in one precise way:

    * ``growth``: window increase per base-advancing ACK (0: stop-and-wait,
      2: grows too fast);
    * ``halve``: what a loss does to the window: ``"half"`` (correct),
      ``"none"`` (no decrease), ``"reset"`` (back to 1: too much);
    * ``window_cap``: never more than this many in flight although the
      window allows more (sends less than its window allows);
    * ``selective``: on a timeout resend only the base, then carry on with
      new chunks (a selective-repeat sender);
    * ``resend_from``: a go-back starts this many chunks above the base;
    * ``fast_retransmit``: go back on this many duplicate ACKs (0: never; 3 is
      correct, 1 is a look-alike);
    * ``receiver``: ``"gbn"`` discards out-of-order chunks (correct), ``"sr"``
      keeps them and acknowledges past them (selective repeat);
    * ``malformed_chunk``: this chunk's first copy claims twice the bytes it
      carries, and the receiver takes it anyway;
    * ``fin_early``: the FIN goes out before the last chunk is acknowledged.

    ``probes`` (correct too) sends loss probes: the base alone, sooner than
    the timeout, at most two in a row, after which the sender carries on.
    """

    growth: int = 1
    halve: Literal["half", "none", "reset"] = "half"
    window_cap: int | None = None
    selective: bool = False
    resend_from: int = 0
    fast_retransmit: int = 0
    receiver: Literal["gbn", "sr"] = "gbn"
    malformed_chunk: int | None = None
    fin_early: bool = False
    probes: bool = False


def simulate_transfer(
    content: bytes,
    *,
    rng: random.Random,
    client: tuple[str, int] = (CLIENT_ADDR, 50000),
    server: tuple[str, int] = (APP_ADDR, APP_RUDP_PORT),
    start: float = 1_700_000_000.0,
    isn: int = ORIGINAL_ISN,
    chunk_size: int = ORIGINAL_CHUNK_SIZE,
    max_window: int = ORIGINAL_MAX_WINDOW,
    rto: float = ORIGINAL_TIMEOUT_S,
    loss: float = 0.0,
    ack_loss: float = 0.0,
    delay: float = 0.0005,
    byte_ack: bool = False,
    faults: SenderFaults = SenderFaults(),
    command: bytes = f"FETCH {DEFAULT_URL}".encode(),
) -> list[UdpPacket]:
    """Run a seeded Go-Back-N / AIMD transfer and return its datagrams in time order.

    The capture point sits next to the receiver, like a loopback capture: a
    DATA packet that the receiver ignores (probability ``loss``, as the
    original client's fault injection) is still in the capture, just never
    ACKed, and an ACK lost on its way back (``ack_loss``) is in the capture
    but never reaches the sender.
    """
    conv = Conversation(client=client, server=server, start=start, step=delay)
    conv.handshake(isn, command, byte_ack=byte_ack)
    chunks = chunks_of(content, chunk_size)
    total = len(chunks)
    out: list[UdpPacket] = []
    now = conv.now
    base, next_chunk, window = 1, 1, 1
    expected = 1
    kept: set[int] = set()  # out-of-order chunks a selective-repeat receiver keeps
    timer_start = now
    last_send = now
    dups = 0
    recover = 0  # the highest chunk sent at the last go-back (one fast retransmit per episode)
    probes = 0
    losses = 0
    pto = 8 * delay
    malformed_sent = False
    # ACKs travelling to the sender: (arrival time, ack value).
    acks: list[tuple[float, int]] = []
    server_ep, client_ep = server, client

    def send(chunk: int) -> None:
        nonlocal now, expected, last_send, malformed_sent
        now += delay / 10
        last_send = now
        payload = chunks[chunk - 1]
        datagram = pack_rudp(chunk, 0, b"D", payload)
        if chunk == faults.malformed_chunk and not malformed_sent:
            malformed_sent = True
            datagram = datagram[:11] + payload[: len(payload) // 2]  # length field says more
        out.append(_udp(now, server_ep, client_ep, datagram))
        if rng.random() < loss:
            return  # ignored by the receiver: on the wire, never ACKed
        if chunk == expected:
            expected += 1
            while faults.receiver == "sr" and expected in kept:
                kept.discard(expected)
                expected += 1
        elif chunk > expected and faults.receiver == "sr":
            kept.add(chunk)
        value = expected - 1
        ack_time = now + delay + rng.random() * delay
        out.append(_udp(ack_time, client_ep, server_ep, pack_rudp(0, value, b"A")))
        if rng.random() >= ack_loss:
            heapq.heappush(acks, (ack_time + delay / 10, value))

    def lose(reason: str) -> None:
        """A loss event: shrink the window and go back (or resend selectively)."""
        nonlocal window, next_chunk, recover, dups, timer_start, probes, losses
        losses += 1
        if faults.halve == "half":
            window = max(window // 2, 1)
        elif faults.halve == "reset":
            window = 1
        recover = max(recover, next_chunk - 1)  # the highest chunk sent so far
        dups = 0
        probes = 0
        timer_start = now
        if faults.selective and reason == "timeout":
            send(base)
        elif faults.resend_from and base + faults.resend_from < next_chunk and losses % 2:
            next_chunk = base + faults.resend_from  # every other go-back skips the base
        else:
            next_chunk = base

    cap = faults.window_cap or max_window
    while base <= total:
        if faults.fin_early and next_chunk > total:
            break  # every chunk sent: the FIN goes out without waiting for the ACKs
        while next_chunk < base + min(window, cap) and next_chunk <= total:
            if next_chunk == base:
                timer_start = now
            send(next_chunk)
            next_chunk += 1
        deadline = timer_start + rto
        probe_at = last_send + pto if faults.probes and probes < 2 else deadline + 1.0
        if acks and acks[0][0] < min(deadline, probe_at):
            arrival, value = heapq.heappop(acks)
            now = max(now, arrival)
            if value >= base:
                base = value + 1
                next_chunk = max(next_chunk, base)
                window = min(window + faults.growth, max_window)
                timer_start = now
                dups = 0
                probes = 0
            elif value == base - 1 and next_chunk > base:
                dups += 1
                if faults.fast_retransmit and dups == faults.fast_retransmit and base > recover:
                    lose("dupack")
            continue
        if probe_at < deadline:
            now = max(now, probe_at)
            probes += 1
            send(base)  # a loss probe: the base alone; the sender carries on
            continue
        # Timeout: no ACK advanced the base for one RTO.
        now = max(now, deadline)
        lose("timeout")
    # Teardown: FIN seq = N + 1, acknowledged by the client.
    now += delay
    out.append(_udp(now, server_ep, client_ep, pack_rudp(total + 1, 0, b"F")))
    out.append(_udp(now + delay, client_ep, server_ep, pack_rudp(0, total + 1, b"A")))
    out.sort(key=lambda p: p.time)
    return [p for p in conv.packets if isinstance(p, UdpPacket)] + out


def _udp(time: float, src: tuple[str, int], dst: tuple[str, int], payload: bytes) -> UdpPacket:
    return UdpPacket(time, src[0], src[1], dst[0], dst[1], payload)


# ---------------------------------------------------------------------------
# The other services
# ---------------------------------------------------------------------------


def dhcp_exchange(
    time: float, client_port: int = 61000, offer: bytes | None = None, server_port: int = DHCP_PORT
) -> list[UdpPacket]:
    """DISCOVER and the JSON OFFER (``offer`` overrides the reply body)."""
    reply = b'{"type": "OFFER", "assigned_ip": "127.0.0.2"}' if offer is None else offer
    return [
        UdpPacket(time, CLIENT_ADDR, client_port, CLIENT_ADDR, server_port, DHCP_DISCOVER),
        UdpPacket(time + 0.0005, CLIENT_ADDR, server_port, CLIENT_ADDR, client_port, reply),
    ]


def dns_exchange(
    time: float,
    client_port: int = 61001,
    domain: str = "my-app-server.local",
    answer: bytes | None = None,
    server_port: int = DNS_PORT,
) -> list[UdpPacket]:
    """A JSON query and its answer (``answer`` overrides the reply body)."""
    query = ('{"domain": "%s"}' % domain).encode()  # noqa: UP031 - the original's byte layout
    reply = b'{"status": "SUCCESS", "ip": "127.0.0.3"}' if answer is None else answer
    return [
        UdpPacket(time, CLIENT_ADDR, client_port, CLIENT_ADDR, server_port, query),
        UdpPacket(time + 0.0005, CLIENT_ADDR, server_port, CLIENT_ADDR, client_port, reply),
    ]


def app_fetch(
    time: float,
    body: bytes,
    *,
    client_port: int = 52000,
    server: tuple[str, int] = (APP_ADDR, APP_TCP_PORT),
    request: bytes | None = None,
    response: bytes | None = None,
    segment: int = 1000,
) -> list[TcpPacket]:
    """One framed FETCH over TCP: handshake, request, response (split into segments), FINs.

    ``request`` / ``response`` are the raw framed byte streams; by default the
    correct frames of ``FETCH <url>`` and ``body``.
    """
    req = encode_frame(f"FETCH {DEFAULT_URL}".encode()) if request is None else request
    resp = encode_frame(body) if response is None else response
    c, s = (CLIENT_ADDR, client_port), server
    cseq, sseq = 1000, 5000
    t = time
    out: list[TcpPacket] = []

    def seg(from_client: bool, flags: int, payload: bytes = b"") -> None:
        nonlocal t, cseq, sseq
        t += 0.0001
        if from_client:
            out.append(TcpPacket(t, c[0], c[1], s[0], s[1], cseq, sseq, flags, payload))
            cseq += len(payload) + (1 if flags & (TCP_SYN | TCP_FIN) else 0)
        else:
            out.append(TcpPacket(t, s[0], s[1], c[0], c[1], sseq, cseq, flags, payload))
            sseq += len(payload) + (1 if flags & (TCP_SYN | TCP_FIN) else 0)

    seg(True, TCP_SYN)
    seg(False, TCP_SYN | TCP_ACK)
    seg(True, TCP_ACK)
    seg(True, TCP_ACK | TCP_PSH, req)
    for i in range(0, len(resp), segment):
        seg(False, TCP_ACK | TCP_PSH, resp[i : i + segment])
    seg(False, TCP_ACK | TCP_FIN)
    seg(True, TCP_ACK | TCP_FIN)
    seg(False, TCP_ACK)
    return out


def merge(streams: Iterable[Iterable[Packet]]) -> Iterator[Packet]:
    """Interleave several time-ordered packet streams into one, by time."""
    return heapq.merge(*streams, key=lambda p: p.time)


def benchmark_stream(
    total: int,
    *,
    seed: int = 1,
    concurrent: int = 40,
    loss: float = 0.05,
    noise: float = 0.1,
    file_size: int = 60_000,
    chunk_size: int = ORIGINAL_CHUNK_SIZE,
) -> Iterator[Packet]:
    """About ``total`` packets of many interleaved RUDP transfers, with loss and noise.

    Once ``total`` is reached no new transfer starts and the running ones
    finish, so every transfer in the capture is complete.

    ``concurrent`` transfers run at once (staggered starts); ``noise`` is the
    share of unrelated UDP/TCP packets, with an occasional DHCP, DNS and app
    fetch among them.  Deterministic for a given ``seed``; streaming, so the
    memory does not grow with ``total``.
    """
    rng = random.Random(seed)
    heap: list[tuple[float, int, int, Iterator[Packet]]] = []
    counter = 0
    produced = 0
    clock = 1_700_000_000.0
    client_port = 20000

    def start_transfer(at: float) -> None:
        nonlocal counter, client_port
        client_port = 20000 + (client_port - 19999) % 40000
        content = rng.randbytes(rng.randint(file_size // 2, file_size * 3 // 2))
        packets = simulate_transfer(
            content,
            rng=random.Random(rng.random()),
            client=(f"10.0.{counter % 200}.{1 + counter % 250}", client_port),
            start=at,
            loss=loss,
            chunk_size=chunk_size,
            rto=0.2,
        )
        it = iter(packets)
        first = next(it)
        counter += 1
        heapq.heappush(heap, (first.time, counter, 0, _chain(first, it)))

    for i in range(concurrent):
        start_transfer(clock + i * 0.01)
    noise_ports = (443, 53, 8443, 123, 5000)
    while heap:
        time, _, _, it = heapq.heappop(heap)
        packet = next(it, None)
        if packet is None:
            continue
        yield packet
        produced += 1
        nxt = _peek_time(it)
        if nxt is None:
            if produced < total:  # past the target, let the running transfers finish
                start_transfer(time + rng.random() * 0.01)
        else:
            counter += 1
            heapq.heappush(heap, (nxt, counter, 0, it))
        if rng.random() < noise:
            produced += 1
            roll = rng.random()
            if roll < 0.01:
                request, reply = dhcp_exchange(time, client_port=30000 + produced % 20000)
                yield request
                yield UdpPacket(time, reply.src, reply.sport, reply.dst, reply.dport, reply.payload)
                produced += 1
            elif roll < 0.02:
                request, reply = dns_exchange(time, client_port=30000 + produced % 20000)
                yield request
                yield UdpPacket(time, reply.src, reply.sport, reply.dst, reply.dport, reply.payload)
                produced += 1
            elif roll < 0.5:
                port = noise_ports[produced % len(noise_ports)]
                yield UdpPacket(
                    time,
                    "192.168.1.10",
                    40000 + produced % 1000,
                    "192.168.1.20",
                    port,
                    rng.randbytes(rng.randint(20, 300)),
                )
            else:
                yield TcpPacket(
                    time,
                    "192.168.1.10",
                    40000 + produced % 1000,
                    "192.168.1.30",
                    443,
                    produced,
                    1,
                    TCP_ACK,
                    rng.randbytes(rng.randint(0, 1200)),
                )


class _Peekable:
    __slots__ = ("head", "it")

    def __init__(self, head: Packet | None, it: Iterator[Packet]) -> None:
        self.head = head
        self.it = it

    def __iter__(self) -> _Peekable:
        return self

    def __next__(self) -> Packet:
        if self.head is None:
            raise StopIteration
        head = self.head
        self.head = next(self.it, None)
        return head


def _chain(first: Packet, it: Iterator[Packet]) -> Iterator[Packet]:
    return _Peekable(first, it)


def _peek_time(it: Iterator[Packet]) -> float | None:
    assert isinstance(it, _Peekable)
    return None if it.head is None else it.head.time
