"""RFC 6298 estimator and AIMD policy: exact values after each event."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stacklab.transport.aimd import AimdController
from stacklab.transport.recovery import RttEstimator


def test_initial_rto_is_one_second_like_the_original() -> None:
    est = RttEstimator()
    assert est.rto == 1.0
    assert est.srtt is None and est.rttvar is None


def test_first_and_second_sample_follow_rfc6298() -> None:
    est = RttEstimator(min_rto=0.001)
    est.on_sample(0.1)
    assert est.srtt == pytest.approx(0.1)
    assert est.rttvar == pytest.approx(0.05)
    assert est.rto == pytest.approx(0.1 + 4 * 0.05)
    est.on_sample(0.3)
    # RTTVAR = 3/4 * 0.05 + 1/4 * |0.1 - 0.3| ; SRTT = 7/8 * 0.1 + 1/8 * 0.3
    assert est.rttvar == pytest.approx(0.0875)
    assert est.srtt == pytest.approx(0.125)
    assert est.rto == pytest.approx(0.125 + 4 * 0.0875)


def test_minimum_and_granularity_apply() -> None:
    est = RttEstimator()  # min 0.2 s
    est.on_sample(0.001)
    assert est.rto == 0.2
    fine = RttEstimator(min_rto=0.0001, granularity=0.05)
    fine.on_sample(0.01)
    fine.on_sample(0.01)
    fine.on_sample(0.01)
    # RTTVAR shrinks towards 0, so G dominates K * RTTVAR
    assert fine.rto == pytest.approx(0.01 + max(0.05, 4 * fine.rttvar))  # type: ignore[operator]


def test_backoff_doubles_up_to_the_maximum_and_a_sample_resets_it() -> None:
    est = RttEstimator(initial_rto=1.0, max_rto=5.0)
    est.backoff()
    assert est.rto == 2.0
    est.backoff()
    assert est.rto == 4.0
    est.backoff()
    assert est.rto == 5.0
    assert est.backoffs == 3
    est.reset_backoff()
    assert est.rto == 1.0
    est.backoff()
    est.on_sample(0.5)
    assert est.backoffs == 0
    assert est.rto == pytest.approx(0.5 + 4 * 0.25)


def test_bad_limits_are_refused() -> None:
    with pytest.raises(ValueError):
        RttEstimator(min_rto=2.0, max_rto=1.0)


@given(st.lists(st.floats(min_value=0, max_value=100), max_size=50), st.integers(0, 20))
def test_rto_always_within_limits(samples: list[float], backoffs: int) -> None:
    est = RttEstimator(min_rto=0.2, max_rto=10.0)
    for s in samples:
        est.on_sample(s)
    for _ in range(backoffs):
        est.backoff()
    assert 0.2 <= est.rto <= 10.0


def test_aimd_grows_by_one_per_advancing_ack_and_caps() -> None:
    cc = AimdController(max_window=3)
    assert cc.window == 1
    seen = []
    for _ in range(4):
        cc.on_acked(5, 0.0)  # newly_acked does not matter: +1 per ACK
        seen.append(cc.window)
    assert seen == [2, 3, 3, 3]


def test_aimd_halves_with_floor_one() -> None:
    cc = AimdController(max_window=64, initial=7)
    cc.on_loss(0.0, "timeout")
    assert cc.window == 3
    cc.on_loss(0.0, "timeout")
    assert cc.window == 1
    cc.on_loss(0.0, "timeout")
    assert cc.window == 1


def test_aimd_halves_once_per_loss_event() -> None:
    cc = AimdController(max_window=64, initial=16)
    cc.on_loss(0.0, "dupack")
    assert cc.window == 8
    cc.on_loss(0.1, "dupack")  # same event seen again: nothing acked since
    assert cc.window == 8
    cc.on_loss(0.2, "timeout")  # a timeout after the resend is a new event
    assert cc.window == 4
    cc.on_acked(1, 0.3)
    assert cc.window == 5
    cc.on_loss(0.4, "dupack")  # new data was acknowledged: new event
    assert cc.window == 2
