"""Retransmission timeout estimation as in RFC 6298.

The original server waits a fixed 1 s.  Here the timeout follows the
measured round-trip time (SRTT + max(G, K * RTTVAR)), starts at 1 s like
the original before any sample, is clamped to ``[min_rto, max_rto]`` and
doubles on each timeout (exponential backoff) until a fresh sample resets
the backoff.  Karn's rule — never sample a retransmitted chunk — is the
sender's job: it decides what it feeds to :meth:`RttEstimator.on_sample`.
"""

from __future__ import annotations

ALPHA = 1 / 8
BETA = 1 / 4
K = 4


class RttEstimator:
    """SRTT / RTTVAR / RTO state of one sender."""

    def __init__(
        self,
        initial_rto: float = 1.0,
        min_rto: float = 0.2,
        max_rto: float = 10.0,
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
