"""The interface between the Go-Back-N sender and a congestion-control policy.

Recovery (timers, what to resend) stays in the sender; the policy only
decides how many chunks may be in flight.  The original's AIMD lives in
:mod:`stacklab.transport.aimd`; another policy only has to implement this.
"""

from __future__ import annotations

from typing import Protocol


class CongestionController(Protocol):
    """How many chunks the sender may have in flight."""

    @property
    def window(self) -> int:
        """The current window, in chunks (always >= 1)."""
        ...

    def on_sent(self, seq: int, now: float) -> None:
        """A chunk left (first transmission or resend)."""
        ...

    def on_acked(self, newly_acked: int, now: float) -> None:
        """An ACK advanced the base by ``newly_acked`` chunks."""
        ...

    def on_loss(self, now: float, reason: str) -> None:
        """The sender goes back to its base: ``reason`` is "timeout" or "dupack"."""
        ...
