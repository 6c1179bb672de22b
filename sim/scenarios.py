"""Drawing the simulator's scenarios: network, file size, options and peer behaviour.

A scenario is everything a run depends on; ``(seed, index)`` draws the same
one every time (:func:`draw_scenario`), independently of every other index.
Besides impaired networks (loss, bursts, delay, reordering, duplication,
corruption, rate limits, blackholes), some scenarios have a hostile or
unusual peer (:data:`PEERS`):

* ``vanish``: the client disappears mid-transfer (nothing reaches it, it sends
  nothing): the server must give up within bounded datagrams and time;
* ``dupacks``: from some point on the client answers nothing but a duplicate
  ACK every 5 ms, forever: fast retransmit once per episode, then a give-up;
* ``bogus``: forged ACKs of chunks never sent (and 0xFFFFFFFF) arrive among the
  real ones: ignored and counted, and they never prove a legacy address;
* ``slow``: the original client's 0.1-0.4 s sleep before handling each DATA;
* ACK loss alone: loss on the client -> server link only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Final

from stacklab.sim.impairment import Blackhole, GilbertElliott, Impairment, derive_rng
from stacklab.transport.options import TransferOptions
from stacklab.transport.recovery import (
    INITIAL_RTO,
    MAX_FAILURES,
    MAX_RTO,
    MIN_RTO,
    SILENCE_TIMEOUT,
)

MAX_SIZE: Final = 200_000
"""Largest file a drawn scenario transfers (bytes): modest, so 10,000 scenarios stay fast."""
SLOW_MAX_SIZE: Final = 30_000
"""Largest file for a slow receiver (0.25 s per chunk on average)."""
SHORT_HOLE_MAX: Final = 3.0
LONG_HOLE_MIN: Final = 100.0
"""Longer than every give-up limit: the client's handshake (12 backed-off resends, about
95 s), the server's (about 75 s after its last progress) and the client's silence (60 s)."""
PEERS: Final = ("normal", "vanish", "dupacks", "bogus", "slow")
SLOW_SLEEP: Final = (0.1, 0.4)
"""What the original client sleeps before handling each DATA (seconds, uniform)."""
DUPACK_INTERVAL: Final = 0.005


@dataclass(frozen=True, slots=True)
class Scenario:
    """One network setting, file size and engine configuration: everything a run depends on.

    ``index`` is the position in the seed's stream of drawn scenarios (None
    for a setting chosen by hand); ``(seed, index)`` replays it.
    ``expect`` is what the blackhole rule demands: ``complete`` (a short
    outage, otherwise a mild network), ``abort`` (an outage longer than
    every give-up limit, or a peer that vanishes or only sends duplicate
    ACKs) or ``either``.
    """

    seed: int
    index: int | None
    size: int
    options: TransferOptions | None
    up: Impairment
    down: Impairment
    initial_rto: float = INITIAL_RTO
    min_rto: float = MIN_RTO
    max_rto: float = MAX_RTO
    max_timeouts: int = MAX_FAILURES
    silence_timeout: float = SILENCE_TIMEOUT
    expect: str = "either"
    peer: str = "normal"
    peer_at: float = 0.0
    """When a ``vanish`` or ``dupacks`` peer turns (virtual seconds); ``bogus``: the rate
    of forged ACKs per second."""

    @property
    def replay(self) -> str:
        """The command line that runs this scenario again."""
        if self.index is not None:
            return f"stacklab simulate --seed {self.seed} --scenario {self.index}"
        return f"stacklab simulate --seed {self.seed} (with the same network options)"

    @property
    def integrity(self) -> bool:
        return self.options is not None and self.options.integrity

    def describe(self) -> str:
        if self.options is None:
            engine = "original client (chunk 500, window 5)"
        else:
            o = self.options
            engine = (
                f"chunk {o.chunk_size}, window {o.max_window}, ack_every {o.ack_every}, "
                f"integrity {'on' if o.integrity else 'off'}"
            )
        peer = "" if self.peer == "normal" else f"; peer {self.peer} ({self.peer_at:g})"
        return (
            f"{self.size} bytes; {engine}; up: {self.up.describe()}; "
            f"down: {self.down.describe()}; expect {self.expect}{peer}"
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["describe"] = self.describe()
        return data


# -- drawing -----------------------------------------------------------------


def draw_scenario(seed: int, index: int) -> Scenario:
    """The ``index``-th random scenario of ``seed`` (independent of every other index)."""
    r = derive_rng(seed, f"scenario:{index}")
    # Sizes: many small files, some large ones, a few empty or one byte.
    shape = r.random()
    size = r.choice((0, 1)) if shape < 0.05 else int(MAX_SIZE * r.random() ** 2.5)

    if r.random() < 0.2:
        options: TransferOptions | None = None
    else:
        options = TransferOptions(
            chunk_size=r.choice((500, 1000, 1400, 1457))
            if size > 40_000
            else r.choice((200, 500, 1400)),
            max_window=r.choice((1, 2, 5, 16, 32, 64)),
            integrity=r.random() < 0.7,
            ack_every=r.choice((1, 1, 2, 4, 8)),
        )
    integrity = options is not None and options.integrity

    def direction() -> Impairment:
        loss = 0.0 if r.random() < 0.4 else r.uniform(0.0, 0.3)
        burst = None
        if r.random() < 0.2:
            burst = GilbertElliott(r.uniform(0.005, 0.05), r.uniform(0.3, 0.8))
        low = r.uniform(0.0, 0.05)
        high = low + (0.0 if r.random() < 0.3 else r.uniform(0.0, 0.05))
        reorder = 0.0 if r.random() < 0.7 else r.uniform(0.0, 0.1)
        duplicate = 0.0 if r.random() < 0.7 else r.uniform(0.0, 0.2)
        corrupt = 0.0 if not integrity or r.random() < 0.6 else r.uniform(0.0, 0.1)
        rate = None if r.random() < 0.8 else r.uniform(1e6, 50e6)
        return Impairment(
            loss=loss,
            burst=burst,
            delay_min=low,
            delay_max=high,
            reorder=reorder,
            reorder_gap=r.uniform(0.001, 0.03),
            duplicate=duplicate,
            corrupt=corrupt,
            corrupt_max_bytes=r.choice((1, 1, 4)),
            rate_bps=rate,
            queue_limit=r.choice((10, 50, 200)),
        )

    up, down = direction(), direction()
    expect = "either"
    hole_roll = r.random()
    if hole_roll < 0.25:
        start = r.uniform(0.0, 2.0)
        if hole_roll < 0.05:
            hole = Blackhole(start, r.uniform(LONG_HOLE_MIN, LONG_HOLE_MIN + 50))
            expect = "abort"
        else:
            hole = Blackhole(start, r.uniform(0.05, SHORT_HOLE_MAX))
            # A short outage on an otherwise mild network must not end the transfer.
            if r.random() < 0.6:
                up, down = _mild(up), _mild(down)
                expect = "complete"
        up, down = up.with_blackholes(hole), down.with_blackholes(hole)
    peer, peer_at = "normal", 0.0
    roll = r.random()
    if expect == "either" and roll < 0.2:
        peer = PEERS[1 + int(roll / 0.05)]
        if peer in ("vanish", "dupacks"):
            peer_at = r.uniform(0.0, 3.0)
            expect = "abort" if size > 0 else "either"
        elif peer == "bogus":
            peer_at = r.choice((5.0, 50.0, 500.0))
        else:  # slow: a small file, the original client's sleeps
            size = min(size, SLOW_MAX_SIZE)
    elif expect == "either" and roll < 0.25:
        down = replace(down, loss=0.0, burst=None)  # ACK loss alone
    return Scenario(seed, index, size, options, up, down, expect=expect, peer=peer, peer_at=peer_at)


def _mild(imp: Impairment) -> Impairment:
    """The same setting with at most 2% independent loss and no bursts or corruption."""
    return replace(imp, loss=min(imp.loss, 0.02), burst=None, corrupt=min(imp.corrupt, 0.02))


def content_for(scenario: Scenario) -> bytes:
    """The file a scenario transfers: seeded random bytes (repeats would hide reordering bugs)."""
    if scenario.size == 0:
        return b""
    return derive_rng(scenario.seed, f"content:{scenario.index}").randbytes(scenario.size)


__all__ = ["MAX_SIZE", "PEERS", "Scenario", "content_for", "draw_scenario"]
