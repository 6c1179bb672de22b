"""The original's additive-increase / multiplicative-decrease window.

+1 chunk per ACK that advances the base (capped at ``max_window``), halved
(floor 1) on a loss.  The original halves on every 1 s timeout; with fast
retransmit there are two ways to detect a loss, so "at most once per loss
event" is defined precisely:

* a *timeout* always halves: the resent data went unacknowledged for a whole
  (backed-off) RTO, which is a new loss event;
* a *fast retransmit* (or a probe timeout, reason ``"probe"``) halves only if
  new data was acknowledged since the last halving; otherwise it is the same
  loss event seen again.
"""

from __future__ import annotations


class AimdController:
    """AIMD in chunks: start at ``initial``, +1 per advancing ACK, halve on loss."""

    def __init__(self, max_window: int, initial: int = 1) -> None:
        if max_window < 1:
            raise ValueError("max_window must be at least 1")
        self.max_window = max_window
        self._window = max(1, min(initial, max_window))
        self._acked_since_loss = True

    @property
    def window(self) -> int:
        return self._window

    def on_sent(self, seq: int, now: float) -> None:
        """AIMD does not look at individual sends."""

    def on_acked(self, newly_acked: int, now: float) -> None:
        self._acked_since_loss = True
        if self._window < self.max_window:
            self._window += 1

    def on_loss(self, now: float, reason: str) -> None:
        if reason != "timeout" and not self._acked_since_loss:
            return
        self._acked_since_loss = False
        self._window = max(1, self._window // 2)
