"""The Go-Back-N data sender: chunks, cumulative ACKs, timeouts, fast retransmit, probes, FIN.

The sender's part of the rulebook (``docs/rulebook.md``; timers and
duplicate ACKs live in :mod:`stacklab.transport.recovery`, the window in
:mod:`stacklab.transport.congestion`):

* E1 in flight (highest chunk sent - base + 1) never exceeds the window at
  any send; nothing beyond it, no limited transmit;
* E2 the window starts at 1 and grows by 1 per ACK that advances the base,
  up to the maximum (5 for the original protocol, negotiated otherwise);
* E3 go-back by timeout: only when the retransmission timer expires, never
  sooner than the RTO (>= ``min_rto``, 200 ms) after the base's last
  transmission; the window halves (floor 1) and everything from the base
  is resent in order;
* E4 fast retransmit on exactly the third duplicate ACK (ack == base - 1
  with chunks in flight), at most once per recovery episode (NewReno: the
  episode ends when an ACK covers the highest chunk sent when it began; a
  timeout starts or extends one); it halves the window once and goes back;
* E5 loss probe: the base alone, one datagram, then the sender carries on
  where it was (no go-back, no window change); it fires no sooner than the
  probe timeout after the last transmission, the probe timeout doubles per
  probe without progress, and after two probes only the RTO resends;
* E6 in negotiated sessions only (``TransferOptions.duplicate_base_on_timeout``)
  a timeout sends the base twice; a legacy session (an original client)
  keeps the original's wire behaviour;
* E7 sequence numbers are 32-bit: a transfer whose FIN would not fit
  (``first_seq + chunks > 2**32 - 1``) is refused at construction with
  :class:`SequenceSpaceExhausted`, so nothing ever wraps (a streamed content
  of unknown length is cut off instead, as a failed source, below);
* give-up: every failure to advance (timeout, probe, fast retransmit)
  counts; ``max_timeouts`` consecutive ones end the transfer with a
  :class:`~stacklab.transport.events.GaveUp` event (at a timeout).  When only
  the FIN is unacknowledged the transfer ends quietly instead: the peer has
  the whole content.

The content comes from a :class:`~stacklab.transport.source.ChunkSource`
(bytes are wrapped in a :class:`~stacklab.transport.source.MemorySource`):
a new chunk is pulled only when the window lets it leave, and only the
chunks sent and not yet acknowledged are kept (a deque from the base), so a
streamed content costs a window of memory, whatever its size.  When the
source says "nothing yet" the sender simply stops; the FIN's sequence number
becomes known when the source ends (at once for a memory source).  A source
that fails mid-content (the origin closed mid-body) must not look like a
complete file: in a negotiated session everything already sent is finished
and the FIN then carries :data:`~stacklab.wire.RUDP_ABORT_PREFIX` and the
reason instead of the SHA-256, which a stacklab client reports as a failure;
the transfer counts as failed once that FIN is acknowledged.  An original
client has no way to hear it, so a legacy session ends at once without a FIN:
the client never sees the transfer complete.

Karn's rule: only chunks sent once are timed, and an ACK of new data undoes
the RTO backoff (as Linux does), otherwise under steady loss a Go-Back-N
sender rarely gets a clean sample and its RTO creeps to the maximum.
Nothing here touches a socket or a clock: ``now`` is always given by the caller.
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
from stacklab.transport.options import TransferOptions
from stacklab.transport.recovery import DUP_ACK_THRESHOLD, MAX_FAILURES, Recovery, RttEstimator
from stacklab.transport.source import ChunkSource, SourceFailed, as_source
from stacklab.wire import RUDP_ABORT_PREFIX, RUDP_CRC_TRAILER_LEN, RUDP_HEADER, Flag

SEQ_LIMIT = 0xFFFFFFFF
"""The largest sequence number the 32-bit header field holds (the FIN's at most)."""
_UNKNOWN_FIN = SEQ_LIMIT + 1
"""``fin_seq`` while a streamed content has not ended: above any sequence number sent."""
MAX_ABORT_REASON = 200
"""Bytes of the reason an aborting FIN carries (the payload stays one small datagram)."""
_DATA = Flag.DATA.value
_FIN = Flag.FIN.value
_pack = RUDP_HEADER.pack


class SequenceSpaceExhausted(ValueError):
    """The content needs more chunks than 32-bit sequence numbers can name without wrapping."""


class GbnSender:
    """Sends ``content`` in chunks with Go-Back-N; see the module docstring."""

    def __init__(
        self,
        content: bytes | ChunkSource,
        options: TransferOptions,
        rto: RttEstimator,
        cc: CongestionController,
        first_seq: int = 1,
        max_timeouts: int = MAX_FAILURES,
        *,
        events: deque[Event] | None = None,
        trace: bool = True,
        abort_fin: bool = True,
    ) -> None:
        if max_timeouts < 1:
            raise ValueError("max_timeouts must be at least 1")
        self.source = source = as_source(content)
        self._take = source.take
        self._kept: deque[bytes | memoryview] = deque()  # chunks base..max_sent, FIN excluded
        self.abort_fin = abort_fin  # False: an original client, which cannot hear an abort
        self.aborted: str | None = None  # why the source failed mid-content
        self._chunk = options.chunk_size
        self._integrity = options.integrity
        self.options = options
        self._rto = rto
        self._recovery = Recovery(rto)
        self._cc = cc
        self.max_timeouts = max_timeouts
        self.events: deque[Event] = events if events is not None else deque()
        self.trace = trace

        if first_seq < 0 or first_seq > SEQ_LIMIT:
            raise SequenceSpaceExhausted(f"first sequence number {first_seq} is not 32-bit")
        self.first_seq = first_seq
        # Unknown until the source ends: above anything sent, so nothing compares equal.
        self.last_seq = _UNKNOWN_FIN - 1
        self.fin_seq = _UNKNOWN_FIN
        self._fin_payload: bytes | None = None  # None: the digest, computed when first sent
        length = source.exact_length
        if length is not None:
            chunks = -(-length // self._chunk)
            if first_seq + chunks > SEQ_LIMIT:
                raise SequenceSpaceExhausted(
                    f"{chunks} chunks from sequence number {first_seq} do not fit in 32 bits "
                    f"(the FIN must be at most {SEQ_LIMIT}): refused rather than wrapped"
                )
            self._set_fin(first_seq + chunks)
        self.base = first_seq
        self.next_seq = first_seq
        self.max_sent = first_seq - 1  # highest sequence number ever sent (FIN included)
        self.done = False
        self.fin_acknowledged = False
        self.failed: str | None = None
        self.retransmissions = 0
        self.ignored_acks = 0  # ACKs beyond anything sent, or below base - 1

        self._double_base = False  # the next resend of the base goes out twice (negotiated only)
        self._probe_pending = False  # a loss probe is due: the base alone, then carry on

    def _set_fin(self, fin_seq: int) -> None:
        self.fin_seq = fin_seq
        self.last_seq = fin_seq - 1

    @property
    def fin_known(self) -> bool:
        """True once the content's end (and so the FIN's sequence number) is known."""
        return self.fin_seq != _UNKNOWN_FIN

    @property
    def kept(self) -> int:
        """Chunks held for a possible resend: those sent and not yet acknowledged."""
        return len(self._kept)

    @property
    def kept_bytes(self) -> int:
        return sum(len(chunk) for chunk in self._kept)

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

    @property
    def recovery(self) -> Recovery:
        return self._recovery

    @property
    def consecutive_timeouts(self) -> int:
        return self._recovery.timeouts

    @property
    def failures(self) -> int:
        """Consecutive failures to advance: timeouts, loss probes and fast retransmits."""
        return self._recovery.failures

    def get_timer(self) -> float | None:
        return self._recovery.deadline()

    @property
    def rto_timer(self) -> float | None:
        """The retransmission-timeout deadline alone (``get_timer`` may be an earlier probe)."""
        return self._recovery.timer

    @property
    def probe_timer(self) -> float | None:
        return self._recovery.probe_at

    # -- output ----------------------------------------------------------------

    def _build(self, seq: int) -> bytes:
        if seq == self.fin_seq:
            payload: bytes | memoryview | None = self._fin_payload
            if payload is None:
                payload = self._fin_payload = self.source.digest() if self._integrity else b""
            flag = _FIN
        else:
            payload = self._kept[seq - self.base]
            flag = _DATA
        if self._integrity:
            # The CRC runs on over header then payload (crc32c chains), and one
            # join builds the datagram: the payload is copied once, not twice.
            header = _pack(seq, 0, flag, len(payload) + RUDP_CRC_TRAILER_LEN)
            crc = crc32c(payload, crc32c(header)).to_bytes(RUDP_CRC_TRAILER_LEN, "big")
            return b"".join((header, payload, crc))
        return _pack(seq, 0, flag, len(payload)) + payload

    def _trace_sent(self, now: float, seq: int, datagram: bytes, retransmission: bool) -> None:
        flag = "F" if seq == self.fin_seq else "D"
        length = len(datagram) - RUDP_HEADER.size
        self.events.append(PacketSent(now, seq, flag, length, retransmission))

    def datagrams_to_send(self, now: float) -> list[bytes]:
        """A due loss probe (the base alone), then every chunk the window allows now."""
        if self.done or self.failed is not None:
            return []
        out: list[bytes] = []
        recovery = self._recovery
        if self._probe_pending:
            self._probe_pending = False
            if self.base <= self.max_sent:
                datagram = self._build(self.base)
                out.append(datagram)
                self.retransmissions += 1
                self._cc.on_sent(self.base, now)
                if self.trace:
                    self._trace_sent(now, self.base, datagram, True)
                recovery.on_base_resent(now)
        limit = min(self.base + self._cc.window, self.fin_seq)
        if self.base == self.fin_seq:
            limit = self.fin_seq + 1  # everything acknowledged: the FIN may go
        seq = self.next_seq
        first_new: int | None = None
        resent_base = False
        cc_sent = self._cc.on_sent
        trace = self.trace
        kept = self._kept
        while seq < limit:
            if seq > self.max_sent and seq != self.fin_seq:
                # A new chunk: pull it from the source now, keep it until acknowledged.
                chunk = self._pull(seq, now)
                if chunk is None:
                    if self.failed is not None:
                        return out
                    if self.base == self.fin_seq:
                        limit = self.fin_seq + 1  # the end, and everything is acknowledged
                        continue
                    break  # nothing yet, or the end while chunks are still in flight
                kept.append(chunk)
                # After the last chunk the FIN is known, and waits for that chunk's ACK.
                limit = min(limit, self.fin_seq)
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
                if seq == self.base:
                    resent_base = True
            else:
                self.max_sent = seq
                if first_new is None:
                    first_new = seq
            cc_sent(seq, now)
            if trace:
                # Every datagram on the wire gets its event, the doubled base's copy
                # included: the log is the ground truth a capture is checked against.
                self._trace_sent(now, seq, datagram, retransmission)
                if copies == 2:
                    self._trace_sent(now, seq, datagram, True)
            seq += 1
        self.next_seq = seq
        if out:
            if resent_base:
                recovery.on_base_resent(now)
            recovery.on_sent(now, first_new)
        return out

    def _pull(self, seq: int, now: float) -> bytes | memoryview | None:
        """Chunk ``seq`` from the source, or None (nothing yet, the end, or a failure)."""
        if seq >= SEQ_LIMIT:
            self._abort(seq, now, f"the content needs more than the {SEQ_LIMIT} sequence numbers")
            return None
        try:
            chunk = self._take(self._chunk)
        except SourceFailed as exc:
            self._abort(seq, now, exc.reason)
            return None
        if chunk is None:
            return None
        if not chunk:
            self._end(seq)
            return None
        if len(chunk) < self._chunk:
            self._end(seq + 1)  # a short chunk is the last: the FIN's number is known now
        return chunk

    def _end(self, fin_seq: int) -> None:
        if not self.fin_known:
            self._set_fin(fin_seq)

    def _abort(self, seq: int, now: float, reason: str) -> None:
        """The content cannot go on: never let what was sent pass for the whole of it."""
        self.aborted = reason
        self.source.close()
        if not self.abort_fin:
            self._fail(now, f"the content failed mid-transfer: {reason}")
            return
        self._set_fin(seq)
        text = reason.encode("utf-8", errors="replace")[:MAX_ABORT_REASON]
        self._fin_payload = RUDP_ABORT_PREFIX + text

    def _fail(self, now: float, reason: str) -> None:
        self.failed = reason
        self.events.append(GaveUp(now, reason))
        self._recovery.stop()

    def _finish(self, now: float, acknowledged: bool) -> None:
        """Everything is over: done, unless the FIN was an abort (then failed)."""
        self._recovery.stop()
        if self.aborted is not None:
            self.failed = f"the content failed mid-transfer: {self.aborted}"
            self.events.append(GaveUp(now, self.failed))
            return
        self.done = True
        self.fin_acknowledged = acknowledged

    # -- input -----------------------------------------------------------------

    def on_ack(self, ack: int, now: float) -> bool:
        """A cumulative ACK: everything up to ``ack`` has arrived.

        Returns False for an ACK outside ``base - 1 .. max_sent`` (stale, or
        of something never sent): ignored and counted in ``ignored_acks``.
        """
        if self.done or self.failed is not None:
            return True
        base = self.base
        if base <= ack <= self.max_sent:
            self._advance(ack, now)
        elif ack == base - 1:
            if self.max_sent >= base:
                self._duplicate(ack, now)
        else:
            self.ignored_acks += 1
            return False
        return True

    def _advance(self, ack: int, now: float) -> None:
        newly = ack - self.base + 1
        if self.trace:
            self.events.append(AckReceived(now, ack, False))
        kept = self._kept
        for _ in range(min(newly, len(kept))):
            kept.popleft()
        self.base = ack + 1
        self.next_seq = max(self.next_seq, self.base)
        self._probe_pending = False
        backed_off = self._rto.backoffs
        sample = self._recovery.on_advance(ack, now, outstanding=self.base <= self.max_sent)
        if sample is not None:
            self.events.append(RttSample(now, sample[0], sample[1]))
            self.events.append(RtoChanged(now, self._rto.rto, self._rto.srtt, self._rto.rttvar))
        elif backed_off:
            self.events.append(RtoChanged(now, self._rto.rto, self._rto.srtt, self._rto.rttvar))
        if ack >= self.fin_seq:
            self._finish(now, True)
            return
        old = self._cc.window
        self._cc.on_acked(newly, now)
        if self._cc.window != old:
            self.events.append(WindowChanged(now, old, self._cc.window, "ack"))

    def _duplicate(self, ack: int, now: float) -> None:
        recovery = self._recovery
        counted = not recovery.in_recovery
        fast = recovery.on_duplicate()
        if self.trace:
            self.events.append(AckReceived(now, ack, True, counted))
        if fast:
            recovery.on_fast_retransmit()
            self.events.append(FastRetransmit(now, self.base, recovery.dup_acks))
            self._go_back(now, "dupack")

    def _go_back(self, now: float, reason: str) -> None:
        old = self._cc.window
        self._cc.on_loss(now, reason)
        if self._cc.window != old:
            self.events.append(WindowChanged(now, old, self._cc.window, reason))
        self.events.append(GoBack(now, self.next_seq - 1, self.base, reason, 0.0))
        self._recovery.start_episode(self.max_sent)
        self._recovery.cancel_timing()  # Karn: nothing resent is ever timed
        self._probe_pending = False
        self.next_seq = self.base

    def handle_timer(self, now: float) -> None:
        """Run whichever timer is due: a loss probe, or the retransmission timeout."""
        if self.done or self.failed is not None:
            return
        recovery = self._recovery
        if recovery.timer is not None and now >= recovery.timer:
            self._timeout(now)
        elif recovery.probe_at is not None and now >= recovery.probe_at:
            self._probe(now)

    def _probe(self, now: float) -> None:
        # The RTO floor (200 ms) is far above a loopback or LAN round trip: a
        # window silent for a probe timeout gets its base resent alone, which a
        # Go-Back-N receiver that lost the base needs before anything else.  No
        # go-back, no window change, no backoff of the RTO; the RTO restarts
        # (the base was just sent) and the next probe waits twice as long.
        self._recovery.on_probe()
        self._recovery.cancel_timing(self.base)
        self.events.append(LossProbe(now, self.base, self._recovery.probes))
        self._probe_pending = True

    def _timeout(self, now: float) -> None:
        recovery = self._recovery
        recovery.on_timeout()
        fired_rto = self._rto.rto
        self.events.append(Timeout(now, self.base, fired_rto, recovery.timeouts))
        if recovery.failures >= self.max_timeouts and self.base == self.fin_seq:
            # Every chunk is acknowledged, only our FIN is not: the peer has the
            # whole content (it may have left after ACKing a FIN whose ACK was lost).
            self._finish(now, False)
            return
        if recovery.failures >= self.max_timeouts:
            self.failed = (
                f"gave up after {recovery.failures} consecutive failures to advance "
                f"({recovery.timeouts} timeouts) waiting for the ACK of {self.base}"
            )
            self.events.append(GaveUp(now, self.failed))
            recovery.stop()
            return
        self._rto.backoff()
        self.events.append(RtoChanged(now, self._rto.rto, self._rto.srtt, self._rto.rttvar))
        self._go_back(now, "timeout")
        self._double_base = self.options.duplicate_base_on_timeout
        recovery.on_base_resent(now)


__all__ = ["DUP_ACK_THRESHOLD", "SEQ_LIMIT", "GbnSender", "SequenceSpaceExhausted"]
