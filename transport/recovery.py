"""Loss recovery of one Go-Back-N sender: RTT estimation, Karn, RTO and probe timers,
duplicate ACKs.

Split from congestion control as aioquic splits ``recovery.py`` from its Reno:
this module decides *when* the sender must resend and *whether* a duplicate
ACK means a loss; :mod:`stacklab.transport.congestion` decides how many
chunks may be in flight.  It keeps no datagrams and sends nothing: the sender
tells it what happened (a first transmission, a resend, an advancing ACK, a
duplicate) and asks it for deadlines.  The rules are the sender's part of
``docs/rulebook.md`` (E3 to E5 and the give-up rule).

Limits (RFC 6298 with two documented departures):

* the initial RTO is 1 s, as RFC 6298 and the original's fixed timeout;
* the minimum RTO is :data:`MIN_RTO` = 200 ms, not RFC 6298's 1 s: the
  stack runs on loopback and LANs where a round trip is well under 1 ms, and
  200 ms is Linux's TCP minimum; the loss probe covers the gap in between;
* the maximum RTO is :data:`MAX_RTO` = 10 s, not RFC 6298's "at least 60 s"
  (a MAY): both ends end a session after 30 s without a datagram from the
  other (the client's silence limit, the server's idle limit), so a resend
  gap above that could never be answered; 10 s leaves room for two lost
  resends in a row inside those 30 s.

Give-up: every failure to advance — a timeout, a loss probe, a fast
retransmit — counts; :data:`MAX_FAILURES` consecutive ones end the transfer.
A vanished peer therefore costs at most the window in flight, the two loss
probes and one datagram per later timeout on top of the halving windows
(W/2 + W/4 + ... < W): about three windows and three probes.
"""

from __future__ import annotations

ALPHA = 1 / 8
BETA = 1 / 4
K = 4

INITIAL_RTO = 1.0
MIN_RTO = 0.2
MAX_RTO = 10.0
LEGACY_MAX_RTO = 3.0
"""The longest timeout towards an original client: it stops reading after 5 s
without a datagram and saves what it has as if complete, so a sender backing
off past that (a chunk the client ignored three times in a row) would cut its
file short.  3 s leaves room for the client's own 0.1-0.4 s sleeps."""
DUP_ACK_THRESHOLD = 3
"""The duplicate ACK that triggers a fast retransmit (never the 1st or 2nd)."""
MAX_PROBES = 2
"""Loss probes in a row without progress; then only the RTO resends."""
MAX_FAILURES = 12
"""Consecutive failures to advance (timeouts, probes, fast retransmits) before giving up.

At 30% loss each way a resend of a lone base and its ACK both get through
about half the time; 12 failures in a row then happen about once in 3,000
stalls, so a lossy but live legacy path (no doubled base) is not abandoned."""

SILENCE_TIMEOUT = 60.0
"""Seconds a receiving client waits without any datagram from the server before giving up.

Six maximum RTOs: the server resends at most every :data:`MAX_RTO` seconds
while it backs off, so only six lost resends in a row (or the server's own
give-up, about 73 s after its last progress) end the wait."""
HANDSHAKE_TIMEOUT = 120.0
"""Seconds a stateful server session waits for the command after the SYN: longer than
the client's :data:`MAX_FAILURES` backed-off resends of it (1 + 2 + 4 + 8 + 8 x 10 s)."""


class RttEstimator:
    """SRTT / RTTVAR / RTO state of one sender (RFC 6298 sections 2 and 5.5)."""

    def __init__(
        self,
        initial_rto: float = INITIAL_RTO,
        min_rto: float = MIN_RTO,
        max_rto: float = MAX_RTO,
        granularity: float = 0.001,
    ) -> None:
        if not 0 < min_rto <= max_rto:
            raise ValueError(f"need 0 < min_rto ({min_rto}) <= max_rto ({max_rto})")
        self.initial_rto = initial_rto
        self.min_rto = min_rto
        self.max_rto = max_rto
        self.granularity = granularity
        self.srtt: float | None = None
        self.rttvar: float | None = None
        self._base = self._clamp(initial_rto)
        self._rto = self._base
        self.backoffs = 0

    def _clamp(self, value: float) -> float:
        return min(self.max_rto, max(self.min_rto, value))

    @property
    def rto(self) -> float:
        """The current timeout, backoff included."""
        return self._rto

    @property
    def pto(self) -> float | None:
        """The probe timeout before any backoff (RFC 9002 6.2.1), None before a sample."""
        if self.srtt is None or self.rttvar is None:
            return None
        return self.srtt + max(K * self.rttvar, self.granularity)

    def on_sample(self, rtt: float) -> None:
        """Fold in one RTT measurement (RFC 6298 section 2) and undo any backoff."""
        rtt = max(rtt, 0.0)
        if self.srtt is None or self.rttvar is None:
            self.srtt = rtt
            self.rttvar = rtt / 2
        else:
            self.rttvar = (1 - BETA) * self.rttvar + BETA * abs(self.srtt - rtt)
            self.srtt = (1 - ALPHA) * self.srtt + ALPHA * rtt
        self._base = self._clamp(self.srtt + max(self.granularity, K * self.rttvar))
        self.backoffs = 0
        self._rto = self._base

    def backoff(self) -> None:
        """Double the timeout after it expired, up to ``max_rto`` (RFC 6298 5.5)."""
        self.backoffs += 1
        self._rto = min(self.max_rto, self._rto * 2)

    def reset_backoff(self) -> None:
        """Return to the estimate without backoff (new data was acknowledged)."""
        self.backoffs = 0
        self._rto = self._base


class Recovery:
    """Timers, Karn's rule, probes and duplicate ACKs of one sender.

    * the retransmission timer runs while chunks are outstanding: started by
      a send when it is not running, restarted by an advancing ACK and by
      every resend of the base (a go-back or a probe), so it never fires
      sooner than the RTO (>= ``min_rto``) after the base's last transmission;
    * one chunk at a time is timed, on its first transmission only; a
      go-back cancels the measurement, a probe cancels it when it resends the
      timed chunk (Karn);
    * the loss probe fires a probe timeout (SRTT + max(4 RTTVAR, G)) after
      the last transmission or advancing ACK, whichever is later, doubled for each probe already sent without
      progress (RFC 9002 6.2.1), at most :data:`MAX_PROBES` times, never
      while the RTO is backed off and never at or after the RTO deadline;
    * duplicates: the :data:`DUP_ACK_THRESHOLD`-th duplicate at one base
      calls for a fast retransmit unless a recovery episode is running.  An
      episode starts at a fast retransmit or a timeout and ends when an ACK
      covers the highest chunk sent when it started (NewReno's ``recover``,
      RFC 6582); duplicates within it never trigger another go-back.
    """

    def __init__(self, rtt: RttEstimator) -> None:
        self.rtt = rtt
        self.timer: float | None = None
        self.probe_at: float | None = None
        self.probes = 0  # loss probes since the base last moved
        self.timeouts = 0  # timeouts since the base last moved
        self.failures = 0  # timeouts + probes + fast retransmits since the base last moved
        self.dup_acks = 0  # duplicates at the current base
        self.recovery_point: int | None = None  # None: no episode running
        self._timed_seq: int | None = None
        self._timed_at = 0.0
        self._last_sent = 0.0

    @property
    def in_recovery(self) -> bool:
        return self.recovery_point is not None

    def deadline(self) -> float | None:
        probe = self.probe_at
        if probe is not None and (self.timer is None or probe < self.timer):
            return probe
        return self.timer

    # -- what the sender tells us ------------------------------------------------

    def on_sent(self, now: float, first_seq: int | None) -> None:
        """Datagrams left at ``now``; ``first_seq``: the lowest first transmission among them."""
        self._last_sent = now
        if first_seq is not None and self._timed_seq is None:
            self._timed_seq = first_seq
            self._timed_at = now
        if self.timer is None:
            self.timer = now + self.rtt.rto
        self._schedule_probe()

    def on_base_resent(self, now: float) -> None:
        """The base went out again (go-back or probe): restart the RTO from now."""
        self.timer = now + self.rtt.rto
        self._last_sent = now
        self._schedule_probe()

    def cancel_timing(self, up_to: int | None = None) -> None:
        """Karn: forget the measurement (of a chunk ``<= up_to`` when given)."""
        if up_to is None or (self._timed_seq is not None and self._timed_seq <= up_to):
            self._timed_seq = None

    def on_advance(self, ack: int, now: float, outstanding: bool) -> tuple[float, int] | None:
        """An ACK moved the base past ``ack``; returns ``(rtt, seq)`` when it gave a sample."""
        self.probes = self.timeouts = self.failures = self.dup_acks = 0
        if self.recovery_point is not None and ack >= self.recovery_point:
            self.recovery_point = None
        sample: tuple[float, int] | None = None
        if self._timed_seq is not None and ack >= self._timed_seq:
            sample = (now - self._timed_at, self._timed_seq)
            self._timed_seq = None
            self.rtt.on_sample(sample[0])
        elif self.rtt.backoffs:
            # New data got through: the path works again, so drop the backoff
            # (keeping it until a Karn-clean sample starves a lossy Go-Back-N).
            self.rtt.reset_backoff()
        if outstanding:  # RFC 6298 5.3
            self.timer = now + self.rtt.rto
            self._last_sent = max(self._last_sent, now)  # the probe counts from the ACK too
            self._schedule_probe()
        else:  # RFC 6298 5.2
            self.timer = self.probe_at = None
        return sample

    def on_duplicate(self) -> bool:
        """A duplicate ACK at the base: True when it calls for a fast retransmit now."""
        self.dup_acks += 1
        return self.dup_acks == DUP_ACK_THRESHOLD and self.recovery_point is None

    def start_episode(self, highest_sent: int) -> None:
        """A go-back (fast retransmit or timeout): duplicates until ``highest_sent`` is
        acknowledged belong to this loss."""
        if self.recovery_point is None or highest_sent > self.recovery_point:
            self.recovery_point = highest_sent

    def on_fast_retransmit(self) -> None:
        self.failures += 1

    def on_probe(self) -> None:
        self.probes += 1
        self.failures += 1
        self.probe_at = None

    def on_timeout(self) -> None:
        self.timeouts += 1
        self.failures += 1
        self.probe_at = None

    def stop(self) -> None:
        self.timer = self.probe_at = None

    # -- internals ---------------------------------------------------------------

    def _schedule_probe(self) -> None:
        pto = self.rtt.pto
        if pto is None or self.timer is None or self.rtt.backoffs or self.probes >= MAX_PROBES:
            self.probe_at = None
            return
        at = self._last_sent + pto * (2**self.probes)
        self.probe_at = at if at < self.timer else None


__all__ = [
    "DUP_ACK_THRESHOLD",
    "HANDSHAKE_TIMEOUT",
    "INITIAL_RTO",
    "MAX_FAILURES",
    "MAX_PROBES",
    "MAX_RTO",
    "MIN_RTO",
    "SILENCE_TIMEOUT",
    "Recovery",
    "RttEstimator",
]
