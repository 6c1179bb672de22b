"""The sans-I/O impairment model: every decision checked in virtual time with fixed seeds."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stacklab.sim.impairment import (
    DELIVER,
    DROP_BLACKHOLE,
    DROP_BURST,
    DROP_LOSS,
    DROP_QUEUE,
    Blackhole,
    Decision,
    GilbertElliott,
    Impairment,
    Link,
    corrupt_bytes,
    derive_rng,
)


def run(imp: Impairment, n: int, seed: int = 1, step: float = 0.001) -> list[Decision]:
    link = Link(imp)
    rng = derive_rng(seed, "test")
    return [link.offer(bytes([i % 256]) * 100, i * step, rng) for i in range(n)]


def test_clean_link_delivers_at_once_intact_exactly_once() -> None:
    link = Link(Impairment())
    d = link.offer(b"hello", 3.5, random.Random(0))
    assert d.verdict == DELIVER
    assert d.deliveries == ((3.5, b"hello"),)
    assert not (d.corrupted or d.duplicated or d.reordered)
    assert Impairment().is_clean and not Impairment(loss=0.1).is_clean


def test_same_seed_same_decisions_and_other_seed_differs() -> None:
    imp = Impairment(loss=0.2, delay_min=0.01, delay_max=0.05, duplicate=0.1, corrupt=0.1)
    a = [d.to_record() for d in run(imp, 500, seed=7)]
    b = [d.to_record() for d in run(imp, 500, seed=7)]
    c = [d.to_record() for d in run(imp, 500, seed=8)]
    assert a == b
    assert a != c


def test_loss_rate_is_statistically_right() -> None:
    decisions = run(Impairment(loss=0.1), 20_000, seed=3)
    lost = sum(d.verdict == DROP_LOSS for d in decisions)
    # Binomial(20000, 0.1): sd = 42; 4 sd either side.
    assert abs(lost - 2000) < 170
    assert all(d.verdict in (DELIVER, DROP_LOSS) for d in decisions)


def test_loss_decisions_do_not_depend_on_other_settings() -> None:
    plain = [d.dropped for d in run(Impairment(loss=0.3), 2000, seed=5)]
    busy = [
        d.dropped
        for d in run(
            Impairment(loss=0.3, delay_min=0.01, delay_max=0.2, duplicate=0.5, reorder=0.3),
            2000,
            seed=5,
        )
    ]
    assert plain == busy


def test_gilbert_elliott_bursts() -> None:
    ge = GilbertElliott(p_enter=0.02, p_exit=0.25)
    decisions = run(Impairment(burst=ge), 50_000, seed=11)
    lost = [d.verdict == DROP_BURST for d in decisions]
    rate = sum(lost) / len(lost)
    assert abs(rate - ge.mean_loss) < 0.01, (rate, ge.mean_loss)
    # Mean burst length is 1 / p_exit = 4 datagrams, far from Bernoulli's ~1.08.
    runs, current = [], 0
    for x in lost:
        if x:
            current += 1
        elif current:
            runs.append(current)
            current = 0
    mean_run = sum(runs) / len(runs)
    assert 3.4 < mean_run < 4.6, mean_run


def test_burst_and_independent_loss_combine() -> None:
    ge = GilbertElliott(p_enter=0.01, p_exit=0.5)
    decisions = run(Impairment(loss=0.1, burst=ge), 30_000, seed=2)
    verdicts = {v: sum(d.verdict == v for d in decisions) for v in (DROP_LOSS, DROP_BURST)}
    expected_total = ge.mean_loss + (1 - ge.mean_loss) * 0.1
    assert abs(sum(verdicts.values()) / 30_000 - expected_total) < 0.01
    assert verdicts[DROP_LOSS] > 0 and verdicts[DROP_BURST] > 0


def test_delay_is_within_bounds_and_fifo_without_jitter() -> None:
    decisions = run(Impairment(delay_min=0.02, delay_max=0.06), 1000, seed=4)
    delays = [d.delay for d in decisions]
    assert min(delays) >= 0.02 and max(delays) <= 0.06
    assert max(delays) - min(delays) > 0.03  # the jitter is really spread
    fixed = run(Impairment(delay_min=0.05, delay_max=0.05), 100, seed=4)
    times = [d.deliveries[0][0] for d in fixed]
    assert times == sorted(times)
    assert all(abs(d.delay - 0.05) < 1e-12 for d in fixed)


def test_reorder_holds_back_so_later_datagrams_overtake() -> None:
    link = Link(Impairment(reorder=1.0, reorder_gap=0.01))
    rng = random.Random(0)
    first = link.offer(b"first", 0.0, rng)
    link = Link(Impairment())
    second = link.offer(b"second", 0.001, rng)
    assert first.reordered and first.deliveries[0][0] == pytest.approx(0.01)
    assert second.deliveries[0][0] < first.deliveries[0][0]
    decisions = run(Impairment(reorder=0.2), 5000, seed=9)
    share = sum(d.reordered for d in decisions) / 5000
    assert abs(share - 0.2) < 0.025


def test_duplicate_delivers_two_identical_copies() -> None:
    decisions = run(Impairment(duplicate=1.0, delay_min=0.0, delay_max=0.01), 50)
    for d in decisions:
        assert d.duplicated and len(d.deliveries) == 2
        assert d.deliveries[0][1] == d.deliveries[1][1]
    share = sum(d.duplicated for d in run(Impairment(duplicate=0.2), 5000)) / 5000
    assert abs(share - 0.2) < 0.025


def test_corruption_changes_bytes_but_not_length() -> None:
    data = bytes(range(256)) * 4
    link = Link(Impairment(corrupt=1.0, corrupt_max_bytes=3))
    rng = random.Random(5)
    for i in range(200):
        d = link.offer(data, i, rng)
        out = d.deliveries[0][1]
        assert d.corrupted and len(out) == len(data) and out != data
        assert 1 <= sum(a != b for a, b in zip(out, data, strict=True)) <= 3
    assert Link(Impairment(corrupt=1.0)).offer(b"", 0, rng).deliveries[0][1] == b""


def test_corrupt_bytes_flips_exactly_requested_positions() -> None:
    out = corrupt_bytes(b"\x00" * 10, random.Random(1), max_bytes=1)
    assert sum(b != 0 for b in out) == 1


def test_rate_limit_spaces_departures_and_bounds_the_queue() -> None:
    # 8000 bit/s: a 100-byte datagram takes 0.1 s on the wire.
    link = Link(Impairment(rate_bps=8000, queue_limit=10))
    rng = random.Random(0)
    decisions = [link.offer(b"x" * 100, 0.0, rng) for _ in range(30)]
    delivered = [d for d in decisions if not d.dropped]
    assert len(delivered) == 10
    assert all(d.verdict == DROP_QUEUE for d in decisions[10:])
    times = [d.deliveries[0][0] for d in delivered]
    assert times == pytest.approx([0.1 * (i + 1) for i in range(10)])
    assert link.queue_depth(0.0) == 10
    assert link.queue_depth(0.55) == 5
    # Once the queue drains, datagrams are accepted again.
    later = link.offer(b"x" * 100, 0.55, rng)
    assert later.verdict == DELIVER
    assert later.deliveries[0][0] == pytest.approx(1.1)


def test_blackhole_window_drops_exactly_inside() -> None:
    link = Link(Impairment(blackholes=(Blackhole(1.0, 2.0),)), start=10.0)
    rng = random.Random(0)
    verdict = {t: link.offer(b"x", 10.0 + t, rng).verdict for t in (0.5, 0.999, 1.0, 2.9, 3.0, 4)}
    assert verdict == {
        0.5: DELIVER,
        0.999: DELIVER,
        1.0: DROP_BLACKHOLE,
        2.9: DROP_BLACKHOLE,
        3.0: DELIVER,
        4: DELIVER,
    }


@pytest.mark.parametrize(
    "kwargs",
    [
        {"loss": 1.5},
        {"loss": -0.1},
        {"delay_min": 0.2, "delay_max": 0.1},
        {"rate_bps": 0},
        {"queue_limit": 0},
        {"corrupt_max_bytes": 0},
        {"reorder_gap": -1},
    ],
)
def test_invalid_settings_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Impairment(**kwargs)  # type: ignore[arg-type]


def test_describe_names_each_setting() -> None:
    text = Impairment(
        loss=0.1,
        burst=GilbertElliott(0.1, 0.5),
        delay_min=0.01,
        delay_max=0.02,
        rate_bps=1e6,
        blackholes=(Blackhole(2, 1),),
    ).describe()
    for word in ("loss 0.1", "burst", "delay 10-20 ms", "rate 1000 kbit/s", "blackhole 2s+1s"):
        assert word in text
    assert Impairment().describe() == "clean"


probability = st.floats(0.0, 1.0)
impairments = st.builds(
    Impairment,
    loss=probability,
    burst=st.none() | st.builds(GilbertElliott, probability, probability, probability, probability),
    delay_min=st.just(0.0) | st.floats(0.0, 0.1),
    delay_max=st.floats(0.1, 0.3),
    reorder=probability,
    duplicate=probability,
    corrupt=probability,
    rate_bps=st.none() | st.floats(1e3, 1e8),
    queue_limit=st.integers(1, 50),
    blackholes=st.lists(st.builds(Blackhole, st.floats(0, 5), st.floats(0, 5)), max_size=2).map(
        tuple
    ),
)


@settings(max_examples=150, deadline=None)
@given(
    imp=impairments,
    seed=st.integers(0, 2**32),
    sizes=st.lists(st.integers(0, 1500), min_size=1, max_size=60),
)
def test_any_setting_gives_sane_decisions(imp: Impairment, seed: int, sizes: list[int]) -> None:
    link = Link(imp)
    rng = random.Random(seed)
    now = 0.0
    for size in sizes:
        data = bytes(size)
        d = link.offer(data, now, rng)
        assert d.verdict in (DELIVER, DROP_LOSS, DROP_BURST, DROP_BLACKHOLE, DROP_QUEUE)
        if d.dropped:
            assert d.deliveries == ()
        else:
            assert 1 <= len(d.deliveries) <= 2
            for at, out in d.deliveries:
                assert at >= now
                assert len(out) == size
                assert (out != data) == (d.corrupted and size > 0)
        now += 0.01
