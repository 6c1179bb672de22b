"""The Go-Back-N sender on a stepped virtual clock: exact window, RTO and timer after each event."""

from __future__ import annotations

import hashlib

import pytest
from crc32c import crc32c
from hypothesis import given, settings
from hypothesis import strategies as st

from stacklab.transport.aimd import AimdController
from stacklab.transport.events import (
    FastRetransmit,
    GaveUp,
    GoBack,
    LossProbe,
    PacketSent,
    RttSample,
    Timeout,
    WindowChanged,
)
from stacklab.transport.options import TransferOptions
from stacklab.transport.rto import RttEstimator
from stacklab.transport.sender import GbnSender
from stacklab.wire import RUDP_HEADER, unpack_rudp

CHUNK = 10


def make(
    chunks: int = 20,
    max_window: int = 5,
    max_timeouts: int = 8,
    integrity: bool = False,
    tail: int = 0,
    duplicate_base: bool = False,
) -> GbnSender:
    content = bytes(range(256)) * 4
    content = content[: chunks * CHUNK - tail]
    options = TransferOptions(
        chunk_size=CHUNK,
        max_window=max_window,
        integrity=integrity,
        duplicate_base_on_timeout=duplicate_base,
    )
    return GbnSender(
        content,
        options,
        RttEstimator(initial_rto=1.0, min_rto=0.2, max_rto=10.0),
        AimdController(max_window),
        max_timeouts=max_timeouts,
    )


def seqs(datagrams: list[bytes]) -> list[int]:
    return [RUDP_HEADER.unpack_from(d)[0] for d in datagrams]


def events(sender: GbnSender, kind: type) -> list:
    return [e for e in sender.events if isinstance(e, kind)]


def test_first_send_is_one_chunk_with_a_one_second_timer() -> None:
    s = make()
    out = s.datagrams_to_send(0.0)
    assert seqs(out) == [1]
    header, payload = unpack_rudp(out[0])
    assert (header.ack, header.flag, header.length) == (0, b"D", CHUNK)
    assert payload == bytes(range(CHUNK))
    assert s.get_timer() == 1.0
    assert (s.base, s.next_seq, s.window, s.in_flight) == (1, 2, 1, 1)
    assert s.datagrams_to_send(0.0) == []  # window full


def test_slow_growth_one_per_advancing_ack_with_rtt_samples() -> None:
    s = make()
    s.datagrams_to_send(0.0)
    s.on_ack(1, 0.1)
    assert s.window == 2
    assert s.rto == pytest.approx(0.1 + 4 * 0.05)
    assert s.get_timer() is None  # nothing outstanding
    assert seqs(s.datagrams_to_send(0.1)) == [2, 3]
    assert s.get_timer() == pytest.approx(0.1 + 0.3)
    s.on_ack(2, 0.2)  # times seq 2: sample 0.1 again
    assert s.window == 3
    assert s.get_timer() == pytest.approx(0.2 + s.rto)  # restarted, 3 still out
    assert seqs(s.datagrams_to_send(0.2)) == [4, 5]
    s.on_ack(5, 0.3)  # one cumulative ACK for three chunks: still +1
    assert s.window == 4
    assert seqs(s.datagrams_to_send(0.3)) == [6, 7, 8, 9]
    s.on_ack(9, 0.4)
    s.on_ack(9, 0.4)  # duplicate of the same ack with nothing in flight: no change
    assert s.window == 5
    assert seqs(s.datagrams_to_send(0.4)) == [10, 11, 12, 13, 14]
    s.on_ack(14, 0.5)
    assert s.window == 5  # capped
    assert [e.seq for e in events(s, RttSample)] == [1, 2, 4, 6, 10]


@pytest.mark.parametrize(
    ("duplicate_base", "resent"),
    [(False, [7, 8]), (True, [7, 7, 8])],
    ids=["legacy", "negotiated"],
)
def test_timeout_backs_off_halves_and_goes_back_to_base(
    duplicate_base: bool, resent: list[int]
) -> None:
    s = make(max_window=8, duplicate_base=duplicate_base)
    s.datagrams_to_send(0.0)
    for t, ack in ((0.1, 1), (0.2, 3), (0.3, 6)):
        s.on_ack(ack, t)
        s.datagrams_to_send(t)
    assert s.window == 4
    assert (s.base, s.next_seq) == (7, 11)
    timer = s.get_timer()
    assert timer is not None
    rto = s.rto
    s.handle_timer(timer - 0.001)  # not due yet: nothing happens
    assert s.consecutive_timeouts == 0
    s.handle_timer(timer)
    assert s.consecutive_timeouts == 1
    assert s.window == 2
    assert s.rto == pytest.approx(2 * rto)
    assert s.get_timer() == pytest.approx(timer + 2 * rto)
    go_back = events(s, GoBack)[-1]
    assert (go_back.time, go_back.from_seq, go_back.to_seq, go_back.reason) == (
        timer,
        10,
        7,
        "timeout",
    )
    assert go_back.quiet == s.estimator.srtt
    # the base (twice after a timeout in a negotiated session only), then the
    # rest of the halved window
    sent_before = len(events(s, PacketSent))
    out = s.datagrams_to_send(timer)
    assert seqs(out) == resent
    assert s.retransmissions == len(resent)
    assert s.in_flight == s.window == 2
    # one PacketSent per datagram on the wire, the doubled base's copy included
    logged = events(s, PacketSent)[sent_before:]
    assert [(e.seq, e.retransmission) for e in logged] == [(seq, True) for seq in resent]


def test_karn_no_sample_from_resent_chunk_but_backoff_undone_by_new_ack() -> None:
    s = make()
    s.datagrams_to_send(0.0)
    s.handle_timer(1.0)
    assert s.rto == 2.0 and s.get_timer() == 3.0
    assert seqs(s.datagrams_to_send(1.0)) == [1]  # once: a legacy session does not double it
    s.on_ack(1, 1.05)  # ambiguous: answer to the first or the second copy?
    assert events(s, RttSample) == []
    assert s.estimator.srtt is None
    assert s.rto == 1.0  # backoff undone, estimate unchanged
    assert s.window == 2
    s.datagrams_to_send(1.05)  # seq 2 and 3 are first transmissions: 2 is timed
    s.on_ack(2, 1.15)
    assert [(e.seq, round(e.rtt, 6)) for e in events(s, RttSample)] == [(2, 0.1)]


def test_exponential_backoff_and_give_up_after_max_timeouts() -> None:
    s = make(max_timeouts=4)
    s.datagrams_to_send(0.0)
    fired = []
    now = 0.0
    while s.failed is None:
        timer = s.get_timer()
        assert timer is not None
        now = timer
        s.handle_timer(now)
        fired.append((now, s.rto))
        s.datagrams_to_send(now)
    assert [t for t, _ in fired] == [1.0, 3.0, 7.0, 15.0]
    assert [e.consecutive for e in events(s, Timeout)] == [1, 2, 3, 4]
    assert "4 consecutive timeouts" in s.failed
    assert isinstance(s.events[-1], GaveUp)
    assert s.get_timer() is None
    assert s.datagrams_to_send(20.0) == []  # never retransmit forever


def test_rto_clamped_at_maximum_under_backoff() -> None:
    s = make(max_timeouts=20)
    s.datagrams_to_send(0.0)
    for _ in range(6):
        timer = s.get_timer()
        assert timer is not None
        s.handle_timer(timer)
    assert s.rto == 10.0


def _grow(s: GbnSender, to_window: int, step: float = 0.1) -> float:
    now = 0.0
    s.datagrams_to_send(now)
    while s.window < to_window:
        now += step
        s.on_ack(s.next_seq - 1, now)
        s.datagrams_to_send(now)
    return now


def test_third_duplicate_ack_triggers_fast_retransmit_once() -> None:
    s = make(chunks=40, max_window=8)
    now = _grow(s, 6)
    base, top = s.base, s.next_seq - 1
    assert top - base + 1 == 6
    # base is lost; the receiver answers each later chunk with ack = base - 1
    s.on_ack(base - 1, now + 0.01)
    s.on_ack(base - 1, now + 0.02)
    assert events(s, FastRetransmit) == []
    assert s.next_seq == top + 1
    s.on_ack(base - 1, now + 0.03)
    assert events(s, FastRetransmit) == [FastRetransmit(now + 0.03, base, 3)]
    assert s.window == 3
    assert s.next_seq == base
    assert s.rto_timer == pytest.approx(now + 0.03 + s.rto)
    assert seqs(s.datagrams_to_send(now + 0.03)) == [base, base + 1, base + 2]
    # within one SRTT (0.1 s) of the go-back every duplicate echoes the old flight
    for i in range(6):
        s.on_ack(base - 1, now + 0.04 + i / 100)
    assert len(events(s, FastRetransmit)) == 1
    later = now + 0.03 + 0.1
    # after it, the old flight (base+1 .. base+5) can still echo 2 duplicates
    s.on_ack(base - 1, later)
    s.on_ack(base - 1, later + 0.01)
    assert len(events(s, FastRetransmit)) == 1
    # three more can only come from the resent flight: its first chunk was lost too
    s.on_ack(base - 1, later + 0.02)
    s.on_ack(base - 1, later + 0.03)
    assert len(events(s, FastRetransmit)) == 1
    s.on_ack(base - 1, later + 0.04)
    assert len(events(s, FastRetransmit)) == 2
    assert s.window == 3  # nothing acknowledged in between: one loss event, one halving
    assert s.next_seq == base
    assert [e.reason for e in events(s, WindowChanged) if e.new < e.old] == ["dupack"]


def test_stale_and_bogus_acks_are_ignored() -> None:
    s = make()
    now = _grow(s, 3)
    state = (s.base, s.next_seq, s.window, s.get_timer())
    s.on_ack(0, now)  # below base - 1
    s.on_ack(s.next_seq + 5, now)  # beyond anything sent
    s.on_ack(2**32 - 1, now)
    assert (s.base, s.next_seq, s.window, s.get_timer()) == state


def test_fin_after_last_ack_then_done() -> None:
    s = make(chunks=3, tail=4)  # 26 bytes: chunks of 10, 10, 6
    out = s.datagrams_to_send(0.0)
    s.on_ack(1, 0.1)
    out = s.datagrams_to_send(0.1)
    assert [len(d) - 11 for d in out] == [10, 6]
    s.on_ack(2, 0.2)
    assert s.datagrams_to_send(0.2) == []  # FIN only after the LAST chunk is acknowledged
    s.on_ack(3, 0.3)
    (fin,) = s.datagrams_to_send(0.3)
    assert fin == RUDP_HEADER.pack(4, 0, b"F", 0)
    assert not s.done
    s.handle_timer(s.get_timer() or 0.0)  # a lost FIN is resent like data
    assert s.datagrams_to_send(10.0) == [fin]
    s.on_ack(4, 10.1)
    assert s.done and s.get_timer() is None
    assert s.datagrams_to_send(10.2) == []


def test_empty_content_sends_fin_1_at_once() -> None:
    s = GbnSender(b"", TransferOptions(), RttEstimator(), AimdController(5))
    assert s.datagrams_to_send(0.0) == [RUDP_HEADER.pack(1, 0, b"F", 0)]
    s.on_ack(1, 0.1)
    assert s.done


def test_integrity_trailer_on_data_and_digest_in_fin() -> None:
    s = make(chunks=1, integrity=True)
    (d,) = s.datagrams_to_send(0.0)
    assert RUDP_HEADER.unpack_from(d) == (1, 0, b"D", CHUNK + 4)
    assert int.from_bytes(d[-4:], "big") == crc32c(d[:-4])
    s.on_ack(1, 0.1)
    (fin,) = s.datagrams_to_send(0.1)
    assert RUDP_HEADER.unpack_from(fin) == (2, 0, b"F", 36)
    assert fin[11:43] == hashlib.sha256(bytes(range(CHUNK))).digest()
    assert int.from_bytes(fin[-4:], "big") == crc32c(fin[:-4])


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["ack", "dup", "timer", "send", "junk"]), st.integers(0, 40)),
        max_size=80,
    )
)
def test_invariants_under_any_event_sequence(steps: list[tuple[str, int]]) -> None:
    s = make(chunks=25, max_window=6, max_timeouts=5)
    now = 0.0
    for kind, n in steps:
        now += 0.05
        if kind == "ack":
            s.on_ack(s.base + n % 4, now)
        elif kind == "dup":
            s.on_ack(s.base - 1, now)
        elif kind == "junk":
            s.on_ack(n * 1000, now)
        elif kind == "timer":
            t = s.get_timer()
            if t is not None:
                now = max(now, t)
                s.handle_timer(now)
        else:
            for d in s.datagrams_to_send(now):
                assert s.base <= RUDP_HEADER.unpack_from(d)[0] <= s.fin_seq
        assert 1 <= s.window <= 6
        assert s.first_seq <= s.base <= s.fin_seq + 1
        assert s.base <= s.next_seq <= s.fin_seq + 1
        assert s.in_flight == s.next_seq - s.base <= s.window  # never beyond the window
        assert 0.2 <= s.rto <= 10.0
        assert s.consecutive_timeouts <= 5
        if s.failed or s.done:
            assert s.get_timer() is None


def test_an_unacknowledged_fin_closes_quietly_after_max_timeouts() -> None:
    s = make(chunks=1, max_timeouts=2)
    s.datagrams_to_send(0.0)
    s.on_ack(1, 0.1)
    s.datagrams_to_send(0.1)  # the FIN
    for _ in range(2):
        timer = s.get_timer()
        assert timer is not None
        s.handle_timer(timer)
        s.datagrams_to_send(timer)
    assert s.done and not s.fin_acknowledged and s.failed is None
    assert s.get_timer() is None


def _fast_path(s: GbnSender) -> float:
    """Grow to window 3 with 10 ms round trips: SRTT 10 ms, RTO held at its 200 ms floor."""
    s.datagrams_to_send(0.0)
    now = 0.0
    for _ in range(2):
        now += 0.01
        s.on_ack(s.next_seq - 1, now)
        s.datagrams_to_send(now)
    return now


def test_probe_timeout_goes_back_well_before_the_rto_floor_without_backoff() -> None:
    s = make()
    now = _fast_path(s)
    assert s.rto == 0.2 and s.window == 3
    rto_deadline = s.rto_timer
    assert rto_deadline == pytest.approx(now + 0.2)
    srtt, rttvar = s.estimator.srtt, s.estimator.rttvar
    assert srtt is not None and rttvar is not None
    pto = srtt + 4 * rttvar
    assert s.get_timer() == pytest.approx(now + pto)
    base = s.base
    s.handle_timer(now + pto)
    assert [e.probes for e in events(s, LossProbe)] == [1]
    go_back = events(s, GoBack)[-1]
    assert (go_back.from_seq, go_back.to_seq, go_back.reason) == (base + 2, base, "probe")
    assert (s.next_seq, s.window, s.consecutive_timeouts, s.rto) == (base, 1, 0, 0.2)
    assert s.rto_timer == rto_deadline  # the timeout proper keeps running
    assert seqs(s.datagrams_to_send(now + pto)) == [base]
    assert s.get_timer() == pytest.approx(now + 2 * pto)
    s.handle_timer(now + 2 * pto)  # the same loss again: no second halving (window is 1 anyway)
    assert s.window == 1 and len(events(s, LossProbe)) == 2
    while not events(s, Timeout):
        t = s.get_timer()
        assert t is not None
        s.handle_timer(t)
        s.datagrams_to_send(t)
    assert events(s, Timeout)[0].time == pytest.approx(rto_deadline)
    assert s.get_timer() == pytest.approx(rto_deadline + 0.4)  # backing off: no probes


def test_probe_halves_only_after_new_data_was_acknowledged() -> None:
    s = make(chunks=40, max_window=8)
    _grow(s, 6, step=0.01)
    assert s.window == 6
    t = s.get_timer()
    assert t is not None and t < s.rto_timer  # type: ignore[operator]
    s.handle_timer(t)
    assert s.window == 3
    s.datagrams_to_send(t)
    t2 = s.get_timer()
    assert t2 is not None
    s.handle_timer(t2)
    assert s.window == 3 and len(events(s, LossProbe)) == 2
    s.on_ack(s.base, t2 + 0.001)
    assert s.window == 4
    s.datagrams_to_send(t2 + 0.001)
    t3 = s.get_timer()
    assert t3 is not None and t3 < s.rto_timer  # type: ignore[operator]
    s.handle_timer(t3)
    assert s.window == 2


def test_old_flight_echoes_after_a_probe_do_not_count_towards_fast_retransmit() -> None:
    s = make(chunks=40, max_window=8)
    now = _grow(s, 4, step=0.01)
    base, top = s.base, s.next_seq - 1
    t = s.get_timer()
    assert t is not None and t > now
    s.handle_timer(t)  # probe: go back to base; base+1 .. top may still echo
    s.datagrams_to_send(t)
    srtt = s.estimator.srtt
    assert srtt is not None
    for i in range(5):  # within one SRTT: echoes
        s.on_ack(base - 1, t + srtt * i / 10)
    later = t + srtt
    for i in range(top - base):  # then as many as the old flight still holds
        s.on_ack(base - 1, later + 0.001 * i)
    assert events(s, FastRetransmit) == []
    for i in range(3):
        s.on_ack(base - 1, later + 0.01 + 0.001 * i)
    assert len(events(s, FastRetransmit)) == 1


def test_a_window_of_two_sends_nothing_on_duplicates_and_recovers_by_the_probe() -> None:
    """Two chunks in flight can yield at most two duplicates: no fast retransmit and no
    chunk beyond the window; the loss probe (well before the RTO) goes back instead."""
    s = make(chunks=40, max_window=2)
    s.datagrams_to_send(0.0)
    now = 0.0
    for _ in range(6):  # steady 100 ms round trips: window 2, a settled estimate
        now += 0.1
        s.on_ack(s.next_seq - 1, now)
        s.datagrams_to_send(now)
    assert (s.window, s.in_flight) == (2, 2)
    base = s.base
    est = s.estimator
    assert est.srtt is not None and est.rttvar is not None
    probe_at = now + est.srtt + max(4 * est.rttvar, est.granularity)
    assert s.probe_timer == pytest.approx(probe_at)
    assert s.rto_timer == pytest.approx(now + s.rto) and probe_at < now + s.rto
    # the base is lost; the next chunk answers ack = base - 1, and the network duplicates it
    s.on_ack(base - 1, now + 0.1)
    assert s.datagrams_to_send(now + 0.1) == []
    s.on_ack(base - 1, now + 0.11)
    assert s.datagrams_to_send(now + 0.11) == []
    assert s.in_flight == 2 and s.next_seq == base + 2
    assert events(s, FastRetransmit) == [] and events(s, GoBack) == []
    s.handle_timer(probe_at - 0.001)  # not due yet
    assert events(s, LossProbe) == []
    rto_before = s.rto
    s.handle_timer(probe_at)
    assert events(s, LossProbe) == [LossProbe(probe_at, base, 1)]
    assert events(s, GoBack)[-1].reason == "probe"
    # halved (new data was acknowledged since the last loss): only the base goes again,
    # without backoff and without counting towards giving up
    assert s.window == 1
    assert seqs(s.datagrams_to_send(probe_at)) == [base]
    assert s.in_flight == 1
    assert events(s, Timeout) == [] and s.consecutive_timeouts == 0 and s.rto == rto_before
    s.on_ack(base, probe_at + 0.1)  # the resent base gets through: the transfer moves on
    assert s.base == base + 1 and s.window == 2
    assert seqs(s.datagrams_to_send(probe_at + 0.1)) == [base + 1, base + 2]
