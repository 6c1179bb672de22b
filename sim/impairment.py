"""A seeded, sans-I/O model of an impaired network link (what tc netem does).

One :class:`Link` decides, for each datagram offered to it at time ``now``,
whether it is dropped and otherwise when (and how many times, and with which
bytes) it comes out the far end.  It never touches a socket or a clock: the
caller passes the time and a random number generator, so the same seed and the
same sequence of offers always give the same decisions.

This is the single source of truth for impairment in stacklab: the
``stacklab chaos`` UDP relay (:mod:`stacklab.tools.chaos`) and the
deterministic simulator (:mod:`stacklab.sim.network`) both build on it,
so a network setting means exactly the same thing in a simulation and on real
sockets.

Order of decisions for one datagram (documented because it defines the
semantics of combined settings):

1. blackhole: inside an outage window everything is dropped;
2. loss: the Gilbert-Elliott chain (if configured) takes one step, then the
   datagram is lost with the loss probability of the current state, or with
   the independent (Bernoulli) ``loss`` probability;
3. rate: with a bandwidth limit the datagram waits for the link to be free
   (serialisation at ``rate_bps``); if ``queue_limit`` datagrams are already
   waiting it is dropped (tail drop, like a router's queue);
4. delay: a propagation delay drawn uniformly from ``[delay_min, delay_max]``
   (the spread is the jitter, which alone may reorder datagrams, as in netem);
5. reorder: with probability ``reorder`` the datagram is held back for an
   extra ``reorder_gap`` so that the datagrams behind it overtake it;
6. corrupt: with probability ``corrupt`` one to ``corrupt_max_bytes`` bytes
   are XORed with non-zero values (so each chosen byte surely changes);
7. duplicate: with probability ``duplicate`` a second copy is delivered, with
   its own delay draw.

Every offer consumes the same number of draws from the generator whatever
the settings (plus corruption positions from a sub-seed drawn every time), so
turning one impairment on does not reshuffle the others: with a given seed
``--loss 0.1`` loses the same datagrams with or without ``--delay``.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import MutableMapping
from dataclasses import dataclass, field, replace
from typing import Final, Protocol

DROP_BLACKHOLE: Final = "blackhole"
DROP_LOSS: Final = "loss"
DROP_BURST: Final = "burst"
DROP_QUEUE: Final = "queue"
DELIVER: Final = "deliver"
VERDICTS: Final = (DELIVER, DROP_LOSS, DROP_BURST, DROP_BLACKHOLE, DROP_QUEUE)


class RandomSource(Protocol):
    """What the model needs from a generator; ``random.Random`` fits."""

    def random(self) -> float: ...

    def getrandbits(self, k: int, /) -> int: ...


def derive_rng(seed: int, label: str) -> random.Random:
    """An independent, reproducible generator for one stream (``label``) of a seed.

    The proxy's two directions and the simulator's scenario draws each get
    their own stream so that adding traffic in one direction never changes
    the decisions taken in the other.
    """
    return random.Random(f"stacklab:{seed}:{label}")


@dataclass(frozen=True, slots=True)
class GilbertElliott:
    """A two-state Markov loss model for bursts.

    The chain moves good -> bad with probability ``p_enter`` and bad -> good
    with ``p_exit`` at each datagram; in the bad state a datagram is lost with
    ``loss_bad``, in the good state with ``loss_good``.  The mean burst
    length is ``1 / p_exit`` datagrams.
    """

    p_enter: float
    p_exit: float
    loss_bad: float = 1.0
    loss_good: float = 0.0

    def __post_init__(self) -> None:
        for name in ("p_enter", "p_exit", "loss_bad", "loss_good"):
            _check_probability(name, getattr(self, name))

    @property
    def mean_loss(self) -> float:
        """The long-run loss rate: stationary share of each state times its loss."""
        total = self.p_enter + self.p_exit
        bad_share = self.p_enter / total if total > 0 else 0.0
        return bad_share * self.loss_bad + (1.0 - bad_share) * self.loss_good


@dataclass(frozen=True, slots=True)
class Blackhole:
    """An outage: everything offered in ``[start, start + duration)`` is dropped (seconds)."""

    start: float
    duration: float

    def __post_init__(self) -> None:
        if self.start < 0 or self.duration < 0:
            raise ValueError(f"blackhole {self.start}:{self.duration} must have non-negative times")

    def covers(self, t: float) -> bool:
        """True when time ``t`` (relative to the link's start) is inside the outage."""
        return self.start <= t < self.start + self.duration


@dataclass(frozen=True, slots=True)
class Impairment:
    """The settings of one direction of a link.  Times in seconds, probabilities in [0, 1].

    The default instance impairs nothing: a datagram is delivered at once,
    intact, exactly once.
    """

    loss: float = 0.0
    burst: GilbertElliott | None = None
    delay_min: float = 0.0
    delay_max: float = 0.0
    reorder: float = 0.0
    reorder_gap: float = 0.010
    duplicate: float = 0.0
    corrupt: float = 0.0
    corrupt_max_bytes: int = 1
    rate_bps: float | None = None
    queue_limit: int = 64
    blackholes: tuple[Blackhole, ...] = ()

    def __post_init__(self) -> None:
        for name in ("loss", "reorder", "duplicate", "corrupt"):
            _check_probability(name, getattr(self, name))
        if not 0 <= self.delay_min <= self.delay_max:
            raise ValueError(
                f"delay must satisfy 0 <= min <= max, got {self.delay_min}:{self.delay_max}"
            )
        if self.reorder_gap < 0:
            raise ValueError(f"reorder gap must be >= 0, got {self.reorder_gap}")
        if self.corrupt_max_bytes < 1:
            raise ValueError(f"corrupt_max_bytes must be >= 1, got {self.corrupt_max_bytes}")
        if self.rate_bps is not None and self.rate_bps <= 0:
            raise ValueError(f"rate must be positive, got {self.rate_bps} bit/s")
        if self.queue_limit < 1:
            raise ValueError(f"queue limit must be >= 1 datagram, got {self.queue_limit}")

    @property
    def is_clean(self) -> bool:
        """True when this impairs nothing (the relay can take its fast path)."""
        return self == Impairment()

    def with_blackholes(self, *holes: Blackhole) -> Impairment:
        """A copy with extra outage windows."""
        return replace(self, blackholes=self.blackholes + holes)

    def describe(self) -> str:
        """A short human summary, e.g. ``loss 10%, delay 20-40 ms``."""
        parts: list[str] = []
        if self.loss:
            parts.append(f"loss {self.loss:.3g}")
        if self.burst:
            b = self.burst
            parts.append(
                f"burst {b.p_enter:.3g}/{b.p_exit:.3g} (bad {b.loss_bad:.3g}, good {b.loss_good:.3g})"
            )
        if self.delay_max:
            parts.append(f"delay {self.delay_min * 1e3:.3g}-{self.delay_max * 1e3:.3g} ms")
        if self.reorder:
            parts.append(f"reorder {self.reorder:.3g} (+{self.reorder_gap * 1e3:.3g} ms)")
        if self.duplicate:
            parts.append(f"duplicate {self.duplicate:.3g}")
        if self.corrupt:
            parts.append(f"corrupt {self.corrupt:.3g}")
        if self.rate_bps:
            parts.append(f"rate {self.rate_bps / 1e3:.4g} kbit/s, queue {self.queue_limit}")
        for hole in self.blackholes:
            parts.append(f"blackhole {hole.start:.3g}s+{hole.duration:.3g}s")
        return ", ".join(parts) or "clean"


def _check_probability(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value}")


@dataclass(frozen=True, slots=True)
class Decision:
    """What the link does with one datagram.

    ``deliveries`` holds ``(time, data)`` pairs in absolute time (the caller's
    clock): empty when dropped, two entries when duplicated.  The flags say
    which impairments touched it, for logs and counters.
    """

    verdict: str
    deliveries: tuple[tuple[float, bytes], ...]
    delay: float = 0.0
    corrupted: bool = False
    duplicated: bool = False
    reordered: bool = False
    queued: float = 0.0

    @property
    def dropped(self) -> bool:
        return self.verdict != DELIVER

    def to_record(self) -> dict[str, object]:
        """A JSON-friendly summary (no payload bytes) for decision logs."""
        record: dict[str, object] = {"verdict": self.verdict}
        if not self.dropped:
            record["delay_ms"] = round(self.delay * 1e3, 3)
            if self.queued:
                record["queued_ms"] = round(self.queued * 1e3, 3)
            if self.corrupted:
                record["corrupt"] = True
            if self.duplicated:
                record["duplicate"] = True
            if self.reordered:
                record["reorder"] = True
        return record

    def count(self, stats: MutableMapping[str, int], direction: str) -> None:
        """Add this decision to ``stats``: ``<direction>.<verdict>`` for a drop, else the
        impairments that touched the datagram (``corrupt``, ``duplicate``, ``reorder``)."""
        if self.dropped:
            stats[f"{direction}.{self.verdict}"] += 1
            return
        if self.corrupted:
            stats[f"{direction}.corrupt"] += 1
        if self.duplicated:
            stats[f"{direction}.duplicate"] += 1
        if self.reordered:
            stats[f"{direction}.reorder"] += 1


@dataclass(slots=True)
class Link:
    """One direction of an impaired link: the settings plus the state they need.

    State: the Gilbert-Elliott chain's current state and, with a rate limit,
    the departure times of the datagrams still waiting in the queue.  ``start``
    is the time from which blackhole windows count.
    """

    impairment: Impairment
    start: float = 0.0
    bad_state: bool = False
    _departures: deque[float] = field(default_factory=deque)
    _link_free_at: float = 0.0

    def queue_depth(self, now: float) -> int:
        """How many datagrams are still waiting for the rate-limited link at ``now``."""
        departures = self._departures
        while departures and departures[0] <= now:
            departures.popleft()
        return len(departures)

    def offer(self, data: bytes, now: float, rng: RandomSource) -> Decision:
        """Decide the fate of ``data`` offered at time ``now``; see the module docstring."""
        imp = self.impairment
        rand = rng.random
        # Always the same number of draws (see the module docstring).
        u_chain, u_loss, u_delay, u_reorder, u_corrupt, u_dup, u_dup_delay = (
            rand(),
            rand(),
            rand(),
            rand(),
            rand(),
            rand(),
            rand(),
        )
        corrupt_seed = rng.getrandbits(32)

        rel = now - self.start
        for hole in imp.blackholes:
            if hole.covers(rel):
                return Decision(DROP_BLACKHOLE, ())

        burst = imp.burst
        if burst is not None:
            if self.bad_state:
                if u_chain < burst.p_exit:
                    self.bad_state = False
            elif u_chain < burst.p_enter:
                self.bad_state = True
            state_loss = burst.loss_bad if self.bad_state else burst.loss_good
            if u_loss < state_loss:
                return Decision(DROP_BURST, ())
            # Reuse the draw for the independent loss, rescaled past the state's share.
            if (
                imp.loss
                and state_loss < 1.0
                and (u_loss - state_loss) / (1.0 - state_loss) < imp.loss
            ):
                return Decision(DROP_LOSS, ())
        elif u_loss < imp.loss:
            return Decision(DROP_LOSS, ())

        depart = now
        if imp.rate_bps is not None:
            if self.queue_depth(now) >= imp.queue_limit:
                return Decision(DROP_QUEUE, ())
            depart = max(now, self._link_free_at) + len(data) * 8.0 / imp.rate_bps
            self._link_free_at = depart
            self._departures.append(depart)

        spread = imp.delay_max - imp.delay_min
        delay = imp.delay_min + spread * u_delay
        reordered = u_reorder < imp.reorder
        if reordered:
            delay += imp.reorder_gap
        at = depart + delay

        corrupted = u_corrupt < imp.corrupt and len(data) > 0
        if corrupted:
            data = corrupt_bytes(data, random.Random(corrupt_seed), imp.corrupt_max_bytes)

        if u_dup < imp.duplicate:
            dup_at = depart + imp.delay_min + spread * u_dup_delay
            return Decision(
                DELIVER,
                ((at, data), (dup_at, data)),
                delay=at - now,
                corrupted=corrupted,
                duplicated=True,
                reordered=reordered,
                queued=depart - now,
            )
        return Decision(
            DELIVER,
            ((at, data),),
            delay=at - now,
            corrupted=corrupted,
            reordered=reordered,
            queued=depart - now,
        )


def corrupt_bytes(data: bytes, rng: random.Random, max_bytes: int = 1) -> bytes:
    """Return ``data`` with 1..``max_bytes`` bytes XORed with non-zero values (surely changed)."""
    out = bytearray(data)
    count = rng.randint(1, min(max_bytes, len(out)))
    for position in rng.sample(range(len(out)), count):
        out[position] ^= rng.randint(1, 255)
    return bytes(out)
