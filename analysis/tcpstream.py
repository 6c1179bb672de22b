"""Rebuild the byte stream of each TCP direction from captured segments.

Segments are placed by sequence number: retransmitted and overlapping bytes
are kept once, out-of-order segments wait until the gap is filled.  Each
delivered piece remembers the frame numbers it came from, so a check can
point at the frames that show a problem.  Memory is bounded by the
out-of-order backlog, which is capped.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from stacklab.analysis.pcapio import TCP_FIN, TCP_RST, TCP_SYN, Packet

_MAX_BACKLOG = 256  # out-of-order segments held per direction


@dataclass(slots=True)
class Chunk:
    """In-order stream bytes delivered by one captured segment."""

    data: bytes
    frame: int
    time: float


@dataclass
class Direction:
    """One direction of a TCP connection."""

    next_seq: int | None = None
    backlog: dict[int, tuple[bytes, int, float]] = field(default_factory=dict)
    finished: bool = False
    gaps: int = 0

    def add(self, seq: int, flags: int, data: bytes, frame: int, time: float) -> Iterator[Chunk]:
        if flags & TCP_SYN:
            self.next_seq = (seq + 1) & 0xFFFFFFFF
            return
        if self.next_seq is None:  # capture started mid-connection
            self.next_seq = seq
        if flags & (TCP_FIN | TCP_RST):
            self.finished = True
        if not data:
            return
        self.backlog.setdefault(seq, (data, frame, time))
        if len(self.backlog) > _MAX_BACKLOG:  # give up on the hole: skip to the lowest seq
            self.gaps += 1
            self.next_seq = min(self.backlog, key=lambda s: (s - self.next_seq) & 0xFFFFFFFF)  # type: ignore[operator]
        yield from self._drain()

    def _drain(self) -> Iterator[Chunk]:
        progressed = True
        while progressed and self.backlog:
            progressed = False
            for seg_seq in list(self.backlog):
                assert self.next_seq is not None
                offset = (self.next_seq - seg_seq) & 0xFFFFFFFF
                data, frame, time = self.backlog[seg_seq]
                if offset >= 0x80000000:  # segment starts after next_seq: still a hole
                    continue
                del self.backlog[seg_seq]
                if offset < len(data):
                    fresh = data[offset:]
                    self.next_seq = (self.next_seq + len(fresh)) & 0xFFFFFFFF
                    progressed = True
                    yield Chunk(fresh, frame, time)


ConnKey = tuple[str, int, str, int]


class TcpReassembler:
    """Feed TCP packets, get (connection key, direction, chunk) in stream order.

    The connection key is (client addr, client port, server addr, server
    port), where the client is the side that sent the SYN (or, without a SYN
    in the capture, the sender of the first packet seen).  ``direction`` is
    ``"c2s"`` or ``"s2c"``.
    """

    def __init__(self) -> None:
        self.connections: dict[ConnKey, dict[str, Direction]] = {}

    def key_of(self, packet: Packet) -> tuple[ConnKey, str]:
        forward = (packet.src, packet.sport, packet.dst, packet.dport)
        backward = (packet.dst, packet.dport, packet.src, packet.sport)
        if forward in self.connections:
            return forward, "c2s"
        if backward in self.connections:
            return backward, "s2c"
        is_synack = packet.tcp_flags & TCP_SYN and packet.tcp_flags & 0x10
        if is_synack:
            return backward, "s2c"
        return forward, "c2s"

    def feed(self, packet: Packet) -> Iterator[tuple[ConnKey, str, Chunk]]:
        key, direction = self.key_of(packet)
        conn = self.connections.get(key)
        if conn is None or (
            packet.tcp_flags & TCP_SYN and not packet.tcp_flags & 0x10 and conn["c2s"].finished
        ):
            conn = self.connections[key] = {"c2s": Direction(), "s2c": Direction()}
        for chunk in conn[direction].add(
            packet.tcp_seq, packet.tcp_flags, packet.payload, packet.number, packet.time
        ):
            yield key, direction, chunk

    def close(self, key: ConnKey) -> None:
        """Forget a connection (callers do this on FIN/RST to keep memory flat)."""
        self.connections.pop(key, None)
