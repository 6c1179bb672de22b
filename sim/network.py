"""A simulated network in virtual time: two impaired links and an event queue.

Built from the same impairment model as ``stacklab chaos``
(:class:`stacklab.sim.impairment.Link`), so a setting such as
``loss=0.1, delay 20-40 ms`` means the same in a simulation as through the
real relay.  Nothing here reads a clock or touches a socket: the simulator
asks for the time of the next delivery and pops deliveries that are due.
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter
from dataclasses import dataclass, field
from typing import Final

from stacklab.sim.impairment import Impairment, Link, RandomSource

C2S: Final = "c2s"
"""Client -> server (``up`` in ``stacklab chaos`` terms)."""
S2C: Final = "s2c"
"""Server -> client (``down``)."""


@dataclass(slots=True)
class SimNetwork:
    """Two one-way links (one per direction) and the datagrams in flight on them.

    Deliveries at the same instant come out in the order they were scheduled
    (a counter breaks ties), so a run is fully determined by the seed.
    """

    up: Impairment
    down: Impairment
    rng_up: RandomSource
    rng_down: RandomSource
    stats: Counter[str] = field(default_factory=Counter)
    _links: dict[str, Link] = field(init=False)
    _rngs: dict[str, RandomSource] = field(init=False)
    _queue: list[tuple[float, int, str, bytes]] = field(default_factory=list)
    _order: itertools.count[int] = field(default_factory=itertools.count)

    def __post_init__(self) -> None:
        self._links = {C2S: Link(self.up), S2C: Link(self.down)}
        self._rngs = {C2S: self.rng_up, S2C: self.rng_down}

    def send(self, direction: str, data: bytes, now: float) -> None:
        """Offer one datagram to a link at ``now``; it is queued for delivery or dropped."""
        decision = self._links[direction].offer(data, now, self._rngs[direction])
        stats = self.stats
        stats[direction] += 1  # datagrams offered; the rest is counted only when it happens
        decision.count(stats, direction)
        if decision.dropped:
            return
        queue = self._queue
        for at, payload in decision.deliveries:
            heapq.heappush(queue, (at, next(self._order), direction, payload))

    def next_delivery_time(self) -> float | None:
        """When the earliest datagram in flight arrives, or None when nothing is in flight."""
        return self._queue[0][0] if self._queue else None

    def pop_delivery(self) -> tuple[float, str, bytes]:
        """The earliest datagram in flight: (arrival time, direction, bytes)."""
        at, _, direction, data = heapq.heappop(self._queue)
        return at, direction, data

    @property
    def in_flight(self) -> int:
        return len(self._queue)
