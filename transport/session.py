"""What the server and client sessions share: parsing, stats, events, the output queue."""

from __future__ import annotations

from collections import deque

from stacklab.transport.events import Event, PacketSent
from stacklab.transport.integrity import add_trailer, check_trailer
from stacklab.wire import RUDP_CRC_TRAILER_LEN, RUDP_HEADER, RUDP_HEADER_LEN, Flag

SYN = Flag.SYN.value
ACK = Flag.ACK.value
DATA = Flag.DATA.value
FIN = Flag.FIN.value


class SessionBase:
    """Events, counters and the control-datagram queue of one endpoint."""

    def __init__(self, trace: bool) -> None:
        self.trace = trace
        self._events: deque[Event] = deque()
        self._out: list[bytes] = []
        self.stats: dict[str, int] = {
            "datagrams_in": 0,
            "datagrams_out": 0,
            "malformed": 0,
            "bad_crc": 0,
            "unexpected": 0,
        }
        self.failed: str | None = None
        self.done = False

    def next_event(self) -> Event | None:
        """The oldest engine event not yet taken, or None."""
        return self._events.popleft() if self._events else None

    def _parse(
        self, data: bytes | memoryview, integrity: bool
    ) -> tuple[int, int, bytes, bytes | memoryview] | None:
        """(seq, ack, flag, payload) of a well-formed datagram, else None (counted)."""
        self.stats["datagrams_in"] += 1
        size = len(data)
        if size < RUDP_HEADER_LEN:
            self.stats["malformed"] += 1
            return None
        seq, ack, flag, length = RUDP_HEADER.unpack_from(data, 0)
        if length != size - RUDP_HEADER_LEN:
            self.stats["malformed"] += 1
            return None
        if integrity:
            if not check_trailer(data):
                self.stats["bad_crc"] += 1
                return None
            return seq, ack, flag, memoryview(data)[RUDP_HEADER_LEN:-RUDP_CRC_TRAILER_LEN]
        return seq, ack, flag, memoryview(data)[RUDP_HEADER_LEN:]

    def _queue(
        self, now: float, seq: int, ack: int, flag: bytes, payload: bytes, integrity: bool
    ) -> bytes:
        """Queue one control datagram (with the CRC trailer when ``integrity``)."""
        if integrity:
            datagram = add_trailer(
                RUDP_HEADER.pack(seq, ack, flag, len(payload) + RUDP_CRC_TRAILER_LEN) + payload
            )
        else:
            datagram = RUDP_HEADER.pack(seq, ack, flag, len(payload)) + payload
        self._out.append(datagram)
        if self.trace:
            self._events.append(
                PacketSent(now, seq, flag.decode("latin-1"), len(datagram) - RUDP_HEADER_LEN, False)
            )
        return datagram

    def _take_out(self) -> list[bytes]:
        out, self._out = self._out, []
        return out
