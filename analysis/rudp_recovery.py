"""How the sender recovered: round-trip times, duplicate ACKs, and what a resend was.

The rulebook (``docs/rulebook.md``, rules S5 to S7) knows three ways to
resend: a *go-back* (the base, then every later chunk again in order) after a
timeout or after the third duplicate ACK, and a *loss probe* (the base alone,
sooner than a timeout, after which the sender carries on).  Telling them
apart needs two measurements from the capture itself:

* the retransmission timeout a sender would use, estimated as RFC 6298 does
  (SRTT + 4 RTTVAR, at least the minimum RTO) from the capture's own round
  trips, sampled on chunks sent once only (Karn's rule);
* the duplicate ACKs of each value, counted, with the time and frame of the
  latest, so that a go-back can be matched with the duplicates before it.

Compiled with mypyc together with :mod:`~stacklab.analysis.rudp`.
"""

from __future__ import annotations

_VALUES_KEEP: int = 256
"""ACK values whose duplicates are remembered."""


class RttEstimate:
    """RFC 6298's smoothed round trip and its variation, from capture samples."""

    def __init__(self, min_rto: float) -> None:
        self.min_rto = min_rto
        self.srtt = -1.0
        self.rttvar = 0.0
        self.samples = 0
        self.max_rtt = 0.0

    def sample(self, rtt: float) -> None:
        if rtt < 0.0:
            return
        self.samples += 1
        if rtt > self.max_rtt:  # noqa: PLR1730 - compiled, no call
            self.max_rtt = rtt
        if self.srtt < 0.0:
            self.srtt = rtt
            self.rttvar = rtt / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - rtt)
            self.srtt = 0.875 * self.srtt + 0.125 * rtt

    def rto(self) -> float:
        """The timeout a sender with these samples would use (never below the minimum)."""
        if self.srtt < 0.0:
            return self.min_rto
        value = self.srtt + 4 * self.rttvar
        return value if value > self.min_rto else self.min_rto


class DupAcks:
    """Duplicate ACKs per value (``ack == highest ack`` while chunks above it were sent).

    A value is duplicated only while it is the highest ACK, so its count is
    the count since the ACK first came, as TCP counts them.
    """

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.latest: dict[int, tuple[float, int]] = {}

    def add(self, value: int, time: float, frame: int) -> None:
        counts = self.counts
        if value not in counts and len(counts) >= _VALUES_KEEP:
            oldest = min(counts)
            del counts[oldest]
            del self.latest[oldest]
        counts[value] = counts.get(value, 0) + 1
        self.latest[value] = (time, frame)

    def last(self, value: int) -> tuple[float, int]:
        """(time, frame) of the latest duplicate of ``value``, or (-1.0, 0)."""
        return self.latest.get(value, (-1.0, 0))
