"""The Go-Back-N receiver: keep in-order chunks, discard the rest, ACK cumulatively.

As the original client: a chunk with ``seq == expected`` is appended and
acknowledged with ``ack = seq``; anything else is discarded and answered at
once with ``ack = expected - 1`` (which the sender counts as a duplicate
ACK).  With ``ack_every > 1`` in-order chunks are acknowledged in groups, and
:meth:`GbnReceiver.flush` acknowledges a partial group: the session calls it
whenever it is asked for datagrams, so an ACK never waits for more data.

Content goes to a sink (:mod:`stacklab.transport.sink`): by default one
growing ``bytearray`` (amortised appends, no ``bytes + bytes``), or batches
handed to a file as they fill, so a streamed download keeps one batch in
memory; ``max_bytes`` bounds it so a lying peer cannot exhaust memory or disk.
"""

from __future__ import annotations

from collections import deque

from stacklab.transport.events import DataDelivered, Event
from stacklab.transport.options import TransferOptions
from stacklab.transport.sink import MemorySink, StreamSink


class ReceiverOverflow(Exception):
    """The peer sent more than ``max_bytes``."""


class GbnReceiver:
    """In-order reassembly with cumulative ACKs; ACK numbers are queued for the session."""

    def __init__(
        self,
        options: TransferOptions,
        first_seq: int = 1,
        *,
        max_bytes: int | None = None,
        events: deque[Event] | None = None,
        trace: bool = True,
        sink: MemorySink | StreamSink | None = None,
    ) -> None:
        self.options = options
        self.first_seq = first_seq
        self.expected = first_seq
        self.max_bytes = max_bytes
        self.events: deque[Event] = events if events is not None else deque()
        self.trace = trace
        self.sink = sink if sink is not None else MemorySink()
        self._write = self.sink.write
        self._size = 0  # content bytes delivered
        self._acks: list[int] = []
        self._unacked = 0  # in-order chunks not yet covered by an ACK
        self.fin_seq: int | None = None
        self.discarded = 0

    @property
    def delivered_bytes(self) -> int:
        return self._size

    @property
    def content(self) -> bytes:
        """Everything received (a memory sink only: a stream sink has handed it on)."""
        sink = self.sink
        if not isinstance(sink, MemorySink):
            raise TypeError("the content went to a stream sink, not memory")
        return sink.content

    @property
    def acks_ready(self) -> bool:
        """True when a completed group (or a duplicate) waits to be acknowledged.

        The socket loop checks this after every datagram so an ACK leaves as
        soon as its group is complete, instead of after a whole receive batch:
        the sender's window then keeps moving while the batch is processed.
        """
        return bool(self._acks)

    @property
    def complete(self) -> bool:
        return self.fin_seq is not None

    def on_data(self, seq: int, payload: bytes | memoryview, now: float) -> None:
        """One DATA chunk (payload without any integrity trailer)."""
        if seq == self.expected and self.fin_seq is None:
            size = self._size  # called once per chunk: locals, not attribute lookups
            n = len(payload)
            max_bytes = self.max_bytes
            if max_bytes is not None and size + n > max_bytes:
                raise ReceiverOverflow(f"content exceeds the limit of {max_bytes} bytes")
            if self.trace:
                self.events.append(DataDelivered(now, size, n))
            self._write(payload)
            self._size = size + n
            self.expected = seq + 1
            unacked = self._unacked + 1
            if unacked >= self.options.ack_every:
                self._acks.append(seq)
                unacked = 0
            self._unacked = unacked
        else:
            self.discarded += 1
            self._acks.append(self.expected - 1)
            self._unacked = 0

    def on_fin(self, seq: int, now: float) -> bool:
        """A FIN: True when it ends the transfer (every chunk before it is here)."""
        if self.fin_seq is not None:
            self._acks.append(self.fin_seq if seq == self.fin_seq else self.expected - 1)
            return False
        if seq != self.expected:
            self.discarded += 1
            self._acks.append(self.expected - 1)
            self._unacked = 0
            return False
        self.fin_seq = seq
        self.expected = seq + 1  # a stale chunk after the FIN is answered with the FIN's ACK
        self._unacked = 0
        self._acks.append(seq)
        return True

    def digest(self) -> bytes:
        return self.sink.digest()

    def flush(self) -> None:
        """Acknowledge in-order chunks still waiting for their group to fill."""
        if self._unacked:
            self._acks.append(self.expected - 1)
            self._unacked = 0

    def take_acks(self) -> list[int]:
        """The ACK numbers to send, oldest first (cleared)."""
        self.flush()
        acks, self._acks = self._acks, []
        return acks
