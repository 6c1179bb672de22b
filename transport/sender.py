"""The Go-Back-N data sender: chunks, cumulative ACKs, RTO, fast retransmit, FIN.

Exactly the original's Go-Back-N (WIRE.md) with three improvements that stay
Go-Back-N on the wire:

* the timeout follows RFC 6298 (:class:`~stacklab.transport.rto.RttEstimator`)
  with Karn's rule: one chunk at a time is timed, only on its first
  transmission, and any go-back cancels the measurement; an ACK of new data
  undoes the exponential backoff (as Linux does), otherwise under steady loss
  a Go-Back-N sender rarely gets a clean sample and its RTO creeps to the
  maximum;
* the third duplicate ACK (ack == base - 1 while chunks are in flight) goes
  back at once instead of waiting for the timer.  After a go-back, for one
  SRTT and for as many duplicates as the old flight can still produce,
  duplicates are ignored (they echo chunks sent before it, and counting them
  feeds a retransmission storm); three more then mean the resent flight lost its
  first chunk too, and the sender goes back again without waiting for a
  timeout (AIMD does not halve twice for it: no new data was acknowledged);
* in negotiated sessions only (``TransferOptions.duplicate_base_on_timeout``),
  the base chunk goes out twice after a timeout: the give-up bound counts
  rounds, and at 30 % loss each way one copy and its ACK both survive only
  half the time, so a lossy but live path would otherwise be abandoned.  A
  legacy session (an original client, :data:`~stacklab.transport.options.ORIGINAL`)
  resends it once, as the original does;
* probe timeouts: when the RTO is held up by its floor (200 ms, far above a
  LAN round trip), a window silent for SRTT + 4 RTTVAR goes back like a fast
  retransmit, without backoff (see :meth:`GbnSender._probe`);
* ``max_timeouts`` consecutive timeouts without progress end the transfer with
  a :class:`~stacklab.transport.events.GaveUp` event instead of retransmitting
  forever.

Sequence numbers: chunks are ``first_seq .. last_seq``, the FIN is
``last_seq + 1`` and is sent only once every chunk is acknowledged; its ACK
ends the transfer.  Chunks in flight never exceed the window: a window too
small to yield three duplicate ACKs recovers by the loss probe or the RTO
instead (new chunks beyond the window, RFC 3042's limited transmit, would
break the original's "at most 5 in flight").  Nothing here touches a socket or a clock: ``now`` is
always given by the caller.
"""

from __future__ import annotations

from collections import deque

from crc32c import crc32c

from stacklab.transport.congestion import CongestionController
from stacklab.transport.events import (
    AckReceived,
    Event,
    FastRetransmit,
    GaveUp,
    GoBack,
    LossProbe,
    PacketSent,
    RtoChanged,
    RttSample,
    Timeout,
    WindowChanged,
)
from stacklab.transport.integrity import content_digest
from stacklab.transport.options import TransferOptions
from stacklab.transport.rto import RttEstimator
from stacklab.wire import RUDP_CRC_TRAILER_LEN, RUDP_HEADER, Flag

DUP_ACK_THRESHOLD = 3
_DATA = Flag.DATA.value
_FIN = Flag.FIN.value
_pack = RUDP_HEADER.pack


class GbnSender:
    """Sends ``content`` in chunks with Go-Back-N; see the module docstring."""

    def __init__(
        self,
        content: bytes,
        options: TransferOptions,
        rto: RttEstimator,
        cc: CongestionController,
        first_seq: int = 1,
        max_timeouts: int = 8,
        *,
        events: deque[Event] | None = None,
        trace: bool = True,
    ) -> None:
        if max_timeouts < 1:
            raise ValueError("max_timeouts must be at least 1")
        self._content = memoryview(content)
        self._chunk = options.chunk_size
        self._integrity = options.integrity
        self.options = options
        self._rto = rto
        self._cc = cc
        self.max_timeouts = max_timeouts
        self.events: deque[Event] = events if events is not None else deque()
        self.trace = trace

        chunks = -(-len(content) // self._chunk)
        self.first_seq = first_seq
        self.last_seq = first_seq + chunks - 1
        self.fin_seq = self.last_seq + 1
        self.base = first_seq
        self.next_seq = first_seq
        self.max_sent = first_seq - 1  # highest sequence number ever sent (FIN included)
        self.consecutive_timeouts = 0
        self.done = False
        self.fin_acknowledged = False
        self.failed: str | None = None
        self.retransmissions = 0

        self._timer: float | None = None
        self._timed_seq: int | None = None
        self._timed_at = 0.0
        self._dup_acks = 0  # duplicates counted towards the next fast retransmit
        self._dups_at_base = 0  # every duplicate seen since the base last moved
        self._old_flight = 0  # duplicates still expected from chunks sent before the go-back
        self._quiet_until = 0.0  # duplicates before this time echo an earlier flight
        self._double_base = False  # the next resend of the base goes out twice (negotiated only)
        self._probe_at: float | None = None
        self._probes = 0  # loss probes since the base last moved
        self._fin_payload = content_digest(content) if self._integrity else b""

    # -- introspection -------------------------------------------------------

    @property
    def window(self) -> int:
        return self._cc.window

    @property
    def in_flight(self) -> int:
        """Chunks sent (or resent) since the last go-back and not yet acknowledged.

        Never more than ``window``: nothing ever leaves beyond it.
        """
        return self.next_seq - self.base

    @property
    def rto(self) -> float:
        return self._rto.rto

    @property
    def estimator(self) -> RttEstimator:
        return self._rto

    def get_timer(self) -> float | None:
        probe = self._probe_at
        if probe is not None and (self._timer is None or probe < self._timer):
            return probe
        return self._timer

    @property
    def rto_timer(self) -> float | None:
        """The retransmission-timeout deadline alone (``get_timer`` may be an earlier probe)."""
        return self._timer

    @property
    def probe_timer(self) -> float | None:
        return self._probe_at

    def _arm(self, now: float) -> None:
        """(Re)start the retransmission timer and schedule the next loss probe before it."""
        self._timer = now + self._rto.rto
        self._probe_at = self._next_probe(now)

    def _next_probe(self, now: float) -> float | None:
        est = self._rto
        if est.srtt is None or est.rttvar is None or self._timer is None or est.backoffs:
            return None  # no estimate yet, or backing off: the path is in trouble, wait
        pto = est.srtt + max(4 * est.rttvar, est.granularity)
        at = now + pto
        return at if at < self._timer else None

    def _disarm(self) -> None:
        self._timer = None
        self._probe_at = None

    # -- output ----------------------------------------------------------------

    def _build(self, seq: int) -> bytes:
        if seq == self.fin_seq:
            payload: bytes | memoryview = self._fin_payload
            flag = _FIN
        else:
            offset = (seq - self.first_seq) * self._chunk
            payload = self._content[offset : offset + self._chunk]
            flag = _DATA
        if self._integrity:
            # The CRC runs on over header then payload (crc32c chains), and one
            # join builds the datagram: the payload is copied once, not twice.
            header = _pack(seq, 0, flag, len(payload) + RUDP_CRC_TRAILER_LEN)
            crc = crc32c(payload, crc32c(header)).to_bytes(RUDP_CRC_TRAILER_LEN, "big")
            return b"".join((header, payload, crc))
        return _pack(seq, 0, flag, len(payload)) + payload

    def datagrams_to_send(self, now: float) -> list[bytes]:
        """Every chunk the window allows now (new ones, or resends after a go-back)."""
        if self.done or self.failed is not None:
            return []
        out: list[bytes] = []
        limit = min(self.base + self._cc.window, self.fin_seq)
        if self.base == self.fin_seq:
            limit = self.fin_seq + 1  # everything acknowledged: the FIN may go
        seq = self.next_seq
        cc_sent = self._cc.on_sent
        trace = self.trace
        while seq < limit:
            datagram = self._build(seq)
            out.append(datagram)
            copies = 1
            if self._double_base and seq == self.base:
                self._double_base = False
                out.append(datagram)
                self.retransmissions += 1
                copies = 2
            retransmission = seq <= self.max_sent
            if retransmission:
                self.retransmissions += 1
            else:
                self.max_sent = seq
                if self._timed_seq is None:
                    self._timed_seq = seq
                    self._timed_at = now
            cc_sent(seq, now)
            if trace:
                # Every datagram on the wire gets its event, the doubled base's copy
                # included: the log is the ground truth a capture is checked against.
                flag = "F" if seq == self.fin_seq else "D"
                length = len(datagram) - RUDP_HEADER.size
                self.events.append(PacketSent(now, seq, flag, length, retransmission))
                if copies == 2:
                    self.events.append(PacketSent(now, seq, flag, length, True))
            seq += 1
        self.next_seq = seq
        if out and self._timer is None:
            self._arm(now)
        return out

    # -- input -----------------------------------------------------------------

    def on_ack(self, ack: int, now: float) -> None:
        """A cumulative ACK: everything up to ``ack`` has arrived."""
        if self.done or self.failed is not None:
            return
        base = self.base
        if base <= ack <= self.max_sent:
            self._advance(ack, now)
        elif ack == base - 1 and self.max_sent >= base:
            self._duplicate(ack, now)
        # else: stale (below base - 1) or bogus (beyond anything sent): ignored

    def _advance(self, ack: int, now: float) -> None:
        newly = ack - self.base + 1
        if self.trace:
            self.events.append(AckReceived(now, ack, False))
        self.base = ack + 1
        self.next_seq = max(self.next_seq, self.base)
        self.consecutive_timeouts = 0
        self._dup_acks = 0
        self._dups_at_base = 0
        self._old_flight = 0
        self._probes = 0
        if self._timed_seq is not None and ack >= self._timed_seq:
            rtt = now - self._timed_at
            seq = self._timed_seq
            self._timed_seq = None
            self._rto.on_sample(rtt)
            self.events.append(RttSample(now, rtt, seq))
            self.events.append(RtoChanged(now, self._rto.rto, self._rto.srtt, self._rto.rttvar))
        elif self._rto.backoffs:
            # New data got through: the path works again, so drop the backoff
            # (keeping it until a Karn-clean sample starves a lossy Go-Back-N).
            self._rto.reset_backoff()
            self.events.append(RtoChanged(now, self._rto.rto, self._rto.srtt, self._rto.rttvar))
        if ack >= self.fin_seq:
            self.done = True
            self.fin_acknowledged = True
            self._disarm()
            return
        old = self._cc.window
        self._cc.on_acked(newly, now)
        if self._cc.window != old:
            self.events.append(WindowChanged(now, old, self._cc.window, "ack"))
        # RFC 6298 5.2/5.3: stop the timer when nothing is outstanding, else restart it.
        if self.base > self.max_sent:
            self._disarm()
        else:
            self._arm(now)

    def _duplicate(self, ack: int, now: float) -> None:
        self._dups_at_base += 1
        if now < self._quiet_until:
            # Less than a round trip since the last go-back: this duplicate was
            # caused by something sent before it, not by what we resent.
            if self.trace:
                self.events.append(AckReceived(now, ack, True, False))
            return
        if self._old_flight > 0:
            # An echo of a chunk sent before the last go-back (or of a loss
            # probe): it says nothing about what was resent since, so it does
            # not count.
            self._old_flight -= 1
            if self.trace:
                self.events.append(AckReceived(now, ack, True, False))
            return
        if self.trace:
            self.events.append(AckReceived(now, ack, True, True))
        self._dup_acks += 1
        if self._dup_acks == DUP_ACK_THRESHOLD:
            self.events.append(FastRetransmit(now, self.base, self._dup_acks))
            self._go_back(now, "dupack")
            self._arm(now)

    def _go_back(self, now: float, reason: str) -> None:
        old = self._cc.window
        self._cc.on_loss(now, reason)
        if self._cc.window != old:
            self.events.append(WindowChanged(now, old, self._cc.window, reason))
        srtt = self._rto.srtt
        quiet = srtt if srtt is not None else self._rto.rto
        self._quiet_until = now + quiet
        self.events.append(GoBack(now, self.next_seq - 1, self.base, reason, quiet))
        # Chunks base+1 .. next_seq-1 of the old flight may each still produce one
        # duplicate; those already seen are subtracted.  Only duplicates beyond
        # that come from the resent flight and may trigger the next fast retransmit.
        self._old_flight = max(0, self.next_seq - 1 - self.base - self._dups_at_base)
        self._dups_at_base = 0
        self.next_seq = self.base
        self._timed_seq = None  # Karn: nothing resent is ever timed
        self._dup_acks = 0

    def handle_timer(self, now: float) -> None:
        """Run whichever timer is due: a loss probe, or the retransmission timeout."""
        if self.done or self.failed is not None:
            return
        if self._timer is not None and now >= self._timer:
            self._timeout(now)
        elif self._probe_at is not None and now >= self._probe_at:
            self._probe(now)

    def _probe(self, now: float) -> None:
        # The RTO floor (200 ms) is far above a loopback or LAN round trip.  When
        # the window has been silent for a whole round trip and its variation
        # (SRTT + 4 RTTVAR), the base is taken as lost and the sender goes back
        # at once, as on a third duplicate ACK: a Go-Back-N receiver has thrown
        # away everything after a lost base anyway.  Unlike a timeout this does
        # not back off the RTO nor count towards giving up, and the window halves
        # only under the fast-retransmit rule (new data acknowledged since the
        # last halving).  The RTO timer keeps running: with no progress at all,
        # the timeout proper still fires.
        self._probes += 1
        self.events.append(LossProbe(now, self.base, self._probes))
        self._go_back(now, "probe")
        self._probe_at = self._next_probe(now)

    def _timeout(self, now: float) -> None:
        self.consecutive_timeouts += 1
        fired_rto = self._rto.rto
        self.events.append(Timeout(now, self.base, fired_rto, self.consecutive_timeouts))
        if self.consecutive_timeouts >= self.max_timeouts and self.base == self.fin_seq:
            # Every chunk is acknowledged, only our FIN is not: the peer has the
            # whole content (it may have left after ACKing a FIN whose ACK was lost).
            self.done = True
            self.fin_acknowledged = False
            self._disarm()
            return
        if self.consecutive_timeouts >= self.max_timeouts:
            self.failed = (
                f"gave up after {self.consecutive_timeouts} consecutive timeouts "
                f"waiting for the ACK of {self.base}"
            )
            self.events.append(GaveUp(now, self.failed))
            self._disarm()
            return
        self._rto.backoff()
        self.events.append(RtoChanged(now, self._rto.rto, self._rto.srtt, self._rto.rttvar))
        self._go_back(now, "timeout")
        self._double_base = self.options.duplicate_base_on_timeout
        self._probes = 0
        self._arm(now)


__all__ = ["DUP_ACK_THRESHOLD", "GbnSender"]
