"""What window the sender may have had: the AIMD rule replayed as an interval.

The rulebook (``docs/rulebook.md``, rules S2 to S4) defines the sender's
window: it starts at 1, grows by 1 per ACK that advances the base, up to the
maximum window, and is halved (floor 1) once per loss event.  A capture sees
the ACKs from one point of the path, so the verifier cannot know the window
exactly; it keeps two bounds instead:

* ``hi``, the largest window any correct sender could have had: every
  advancing ACK in the capture counts as soon as it is seen (the sender
  cannot have had ACKs the capture never saw), a go-back halves it only when
  it starts a new recovery episode (a sender may halve once per episode, as
  NewReno does, or at every go-back, as the original does), and the ACKs a
  go-back shows the sender had not received yet count again at once (they may
  arrive any moment).  A DATA beyond ``base + hi - 1`` breaks the rule
  whatever happened out of sight.
* ``lo``, the smallest window a correct sender could have had: only ACKs the
  sender demonstrably acted on count (it sent new data right after them: an
  ACK lost after the capture point is never acted on), and every go-back
  halves it.  A sender that, with data left, keeps stopping short of
  ``base + lo - 1`` sends less than its window allows.

Both are ``min(limit, floor + n)``, ``floor`` being the window set at the
last halving and ``n`` the ACKs counted since; the ACK values are kept so
that a go-back can take back the ones it proves the sender never had.

Compiled with mypyc together with :mod:`~stacklab.analysis.rudp`.
"""

from __future__ import annotations

_KEEP: int = 512
"""ACK values remembered per bound (only recent ones can be taken back)."""


class WindowBounds:
    """The interval [lo, hi] of windows a correct sender may have had."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.hi_floor = 1
        self.hi_acks: list[int] = []  # advancing ACK values since the last halving of hi
        # min(limit, hi_floor + len(hi_acks)), kept up to date by every method
        # that changes one of them: read once per DATA, where a property costs a call.
        self.hi = min(limit, 1)
        self.lo_floor = 1
        self.lo_acks: list[int] = []  # acted-on ACK values since the last go-back
        self.recover = 0  # highest chunk sent when the current recovery episode began
        self.in_episode = False
        self.max_hi = 1
        self.max_lo = 1
        self.halvings = 0
        self.acted_count = 0

    def _update_hi(self) -> None:
        value = self.hi_floor + len(self.hi_acks)
        self.hi = value if value < self.limit else self.limit

    @property
    def lo(self) -> int:
        value = self.lo_floor + len(self.lo_acks)
        return value if value < self.limit else self.limit

    def set_limit(self, limit: int) -> None:
        """The maximum window negotiated in the SYN-ACK."""
        self.limit = limit
        self._update_hi()

    def advanced(self, ack: int) -> None:
        """An ACK in the capture advanced the highest acknowledged chunk."""
        acks = self.hi_acks
        acks.append(ack)
        if len(acks) > _KEEP:
            del acks[: _KEEP // 2]
            self.hi_floor += _KEEP // 2
        hi = self.hi_floor + len(acks)  # _update_hi, inlined: once per ACK
        limit = self.limit
        if hi > limit:  # noqa: PLR1730 - hot path, no call
            hi = limit
        self.hi = hi
        if hi > self.max_hi:  # noqa: PLR1730 - compiled, no call
            self.max_hi = hi

    def acted(self, ack: int) -> int:
        """The sender sent new data right after this advancing ACK: it had it.

        Returns ``lo`` as it now is, which the caller needs at once.
        """
        self.acted_count += 1
        acks = self.lo_acks
        acks.append(ack)
        if len(acks) > _KEEP:
            del acks[: _KEEP // 2]
            self.lo_floor += _KEEP // 2
        lo = self.lo_floor + len(acks)  # the property, inlined: once per ACK acted on
        limit = self.limit
        if lo > limit:  # noqa: PLR1730 - hot path, no call
            lo = limit
        if lo > self.max_lo:  # noqa: PLR1730 - compiled, no call
            self.max_lo = lo
        return lo

    def go_back(self, chunk: int, highest_sent: int) -> None:
        """The sender went back to ``chunk``: a loss event.

        ACKs of ``chunk`` or above had not reached the sender.  ``lo`` drops
        them and halves; ``hi`` halves only when this go-back starts a new
        episode (the sender's base passed the previous episode's recovery
        point), and keeps counting them, since they may still arrive.
        """
        self.halvings += 1
        lo_kept = [a for a in self.lo_acks if a < chunk]
        lo_before = min(self.lo_floor + len(lo_kept), self.limit)
        self.lo_floor = max(lo_before // 2, 1)
        self.lo_acks = []
        if not self.in_episode or chunk > self.recover:
            pending = [a for a in self.hi_acks if a >= chunk]
            received = len(self.hi_acks) - len(pending)
            hi_before = min(self.hi_floor + received, self.limit)
            self.hi_floor = max(hi_before // 2, 1)
            self.hi_acks = pending
            self._update_hi()
            self.recover = highest_sent
            self.in_episode = True
        elif highest_sent > self.recover:
            self.recover = highest_sent

    def lone_resend(self, chunk: int) -> None:
        """The base resent alone: a loss probe, or a timeout with one chunk to resend.

        A probe leaves the window as it was, a timeout halves it: ``lo``
        takes the halving, ``hi`` does not.  ACKs of ``chunk`` or above had
        not reached the sender either way.
        """
        lo_kept = [a for a in self.lo_acks if a < chunk]
        lo_before = min(self.lo_floor + len(lo_kept), self.limit)
        self.lo_floor = max(lo_before // 2, 1)
        self.lo_acks = []
