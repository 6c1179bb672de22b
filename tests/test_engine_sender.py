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
from stacklab.transport.recovery import RttEstimator
from stacklab.transport.sender import GbnSender, SequenceSpaceExhausted
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
    assert s.recovery.recovery_point == 10  # the episode covers everything sent so far
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
    assert "4 consecutive failures to advance (4 timeouts)" in s.failed
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


def test_third_duplicate_ack_triggers_fast_retransmit_once_per_episode() -> None:
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
    assert seqs(s.datagrams_to_send(now + 0.03)) == [base, base + 1, base + 2]
    assert s.rto_timer == pytest.approx(now + 0.03 + s.rto)  # the base was just resent
    # every later duplicate belongs to the same episode, however many and however late
    for i in range(30):
        s.on_ack(base - 1, now + 0.04 + i / 100)
    assert len(events(s, FastRetransmit)) == 1 and s.next_seq == base + 3
    # a partial ACK (below the highest chunk sent when the episode began) keeps it running
    s.on_ack(base, now + 0.5)
    assert s.recovery.in_recovery
    for i in range(5):
        s.on_ack(base, now + 0.51 + i / 100)
    assert len(events(s, FastRetransmit)) == 1
    # an ACK covering ``top`` ends the episode: three duplicates then mean a new loss
    s.datagrams_to_send(now + 0.6)
    s.on_ack(top, now + 0.6)
    assert not s.recovery.in_recovery
    s.datagrams_to_send(now + 0.6)
    for i in range(3):
        s.on_ack(top, now + 0.61 + i / 100)
    assert len(events(s, FastRetransmit)) == 2
    assert [e.reason for e in events(s, WindowChanged) if e.new < e.old] == ["dupack", "dupack"]


def test_a_stream_of_duplicate_acks_ends_in_a_give_up() -> None:
    """A peer answering ack = base - 1 every 5 ms forever: one fast retransmit, then the
    timeouts run their course and the session gives up (the old engine re-armed its timer on
    each of 39,986 fast retransmits and never ended)."""
    s = make(chunks=40, max_window=8, max_timeouts=8)
    now = _grow(s, 6, step=0.01)
    base = s.base
    while s.failed is None and now < 600.0:
        now = round(now + 0.005, 6)
        timer = s.get_timer()
        if timer is not None and timer <= now:
            s.handle_timer(timer)
        s.on_ack(base - 1, now)
        s.datagrams_to_send(now)
    assert s.failed is not None and "8 consecutive failures" in s.failed
    assert len(events(s, FastRetransmit)) == 1
    failures = events(s, FastRetransmit) + events(s, LossProbe) + events(s, Timeout)
    assert len(failures) == 8  # every failure to advance counted, the timeouts included
    assert now < 60.0


def test_stale_and_bogus_acks_are_ignored() -> None:
    s = make()
    now = _grow(s, 3)
    state = (s.base, s.next_seq, s.window, s.get_timer())
    s.on_ack(0, now)  # below base - 1
    s.on_ack(s.next_seq + 5, now)  # beyond anything sent
    s.on_ack(2**32 - 1, now)
    assert (s.base, s.next_seq, s.window, s.get_timer()) == state
    assert s.ignored_acks == 3


def test_a_transfer_that_would_wrap_the_sequence_space_is_refused() -> None:
    options = TransferOptions(chunk_size=10)
    with pytest.raises(SequenceSpaceExhausted, match="32 bits"):
        GbnSender(b"x" * 30, options, RttEstimator(), AimdController(5), first_seq=2**32 - 3)
    # the last one that fits: chunks 2**32-4 .. 2**32-2, FIN 2**32-1
    s = GbnSender(b"x" * 30, options, RttEstimator(), AimdController(5), first_seq=2**32 - 4)
    assert s.fin_seq == 2**32 - 1
    sent = seqs(s.datagrams_to_send(0.0))
    for seq in range(2**32 - 4, 2**32 - 1):
        s.on_ack(seq, 0.1)
        sent += seqs(s.datagrams_to_send(0.1))
    assert sent == [2**32 - 4, 2**32 - 3, 2**32 - 2, 2**32 - 1]
    s.on_ack(2**32 - 1, 0.2)
    assert s.done


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


def test_probe_resends_the_base_alone_well_before_the_rto_floor_without_backoff() -> None:
    s = make()
    now = _fast_path(s)
    assert s.rto == 0.2 and s.window == 3
    rto_deadline = s.rto_timer
    assert rto_deadline == pytest.approx(now + 0.2)
    pto = s.estimator.pto
    assert pto is not None
    assert s.get_timer() == pytest.approx(now + pto)
    base, next_seq = s.base, s.next_seq
    s.handle_timer(now + pto - 0.0001)  # not due yet
    assert events(s, LossProbe) == []
    s.handle_timer(now + pto)
    assert [e.probes for e in events(s, LossProbe)] == [1]
    assert events(s, GoBack) == []
    # exactly one datagram, the base; then the sender carries on where it was
    assert seqs(s.datagrams_to_send(now + pto)) == [base]
    assert (s.next_seq, s.window, s.consecutive_timeouts, s.failures, s.rto) == (
        next_seq,
        3,
        0,
        1,
        0.2,
    )
    # the RTO restarts from the base's resend; the next probe waits twice as long
    assert s.rto_timer == pytest.approx(now + pto + 0.2)
    assert s.probe_timer == pytest.approx(now + pto + 2 * pto)
    s.handle_timer(now + 3 * pto)
    assert seqs(s.datagrams_to_send(now + 3 * pto)) == [base]
    assert len(events(s, LossProbe)) == 2
    assert s.probe_timer is None  # two probes without progress: only the RTO now
    while not events(s, Timeout):
        t = s.get_timer()
        assert t is not None
        s.handle_timer(t)
        s.datagrams_to_send(t)
    assert events(s, Timeout)[0].time == pytest.approx(now + 3 * pto + 0.2)
    assert len(events(s, LossProbe)) == 2
    assert s.get_timer() == pytest.approx(events(s, Timeout)[0].time + 0.4)  # no probes


def test_progress_after_a_probe_resets_the_probe_backoff() -> None:
    s = make(chunks=40, max_window=8)
    _grow(s, 6, step=0.01)
    t = s.get_timer()
    assert t is not None and s.probe_timer == t
    s.handle_timer(t)
    assert seqs(s.datagrams_to_send(t)) == [s.base]
    s.on_ack(s.base, t + 0.005)  # the probe got through
    assert s.failures == 0 and s.window == 7
    s.datagrams_to_send(t + 0.005)
    pto = s.estimator.pto
    assert pto is not None
    assert s.probe_timer == pytest.approx(t + 0.005 + pto)  # not doubled any more


def test_a_vanished_peer_costs_about_three_windows_and_three_probes() -> None:
    """A fast start to window 64, then silence: the old engine sent 99 probes and 3,249
    datagrams before the first timeout and never backed its probes off."""
    options = TransferOptions(chunk_size=CHUNK, max_window=64)
    s = GbnSender(b"y" * 4000 * CHUNK, options, RttEstimator(), AimdController(64), max_timeouts=12)
    now = 0.0
    s.datagrams_to_send(now)
    while s.window < 64:
        now += 0.001
        s.on_ack(s.next_seq - 1, now)
        s.datagrams_to_send(now)
    vanished = now
    sent = 0
    while s.failed is None:
        t = s.get_timer()
        assert t is not None
        s.handle_timer(t)
        sent += len(s.datagrams_to_send(t))
        now = t
    assert len(events(s, LossProbe)) == 2
    assert sent <= 2 * 64 + 2 + 12  # the halving windows, two probes, the base per timeout
    assert sent <= 3 * 64 + 3
    assert now - vanished < 80.0


def test_a_window_of_two_sends_nothing_on_duplicates_and_recovers_by_the_probe() -> None:
    """Two chunks in flight can yield at most two duplicates: no fast retransmit and no
    chunk beyond the window; the loss probe (well before the RTO) resends the base."""
    s = make(chunks=40, max_window=2)
    s.datagrams_to_send(0.0)
    now = 0.0
    for _ in range(6):  # steady 100 ms round trips: window 2, a settled estimate
        now += 0.1
        s.on_ack(s.next_seq - 1, now)
        s.datagrams_to_send(now)
    assert (s.window, s.in_flight) == (2, 2)
    base = s.base
    pto = s.estimator.pto
    assert pto is not None
    probe_at = now + pto
    assert s.probe_timer == pytest.approx(probe_at)
    assert s.rto_timer == pytest.approx(now + s.rto) and probe_at < now + s.rto
    # the base is lost; the next chunk answers ack = base - 1, and the network duplicates it
    s.on_ack(base - 1, now + 0.1)
    assert s.datagrams_to_send(now + 0.1) == []
    s.on_ack(base - 1, now + 0.11)
    assert s.datagrams_to_send(now + 0.11) == []
    assert s.in_flight == 2 and s.next_seq == base + 2
    assert events(s, FastRetransmit) == [] and events(s, GoBack) == []
    rto_before = s.rto
    s.handle_timer(probe_at)
    assert events(s, LossProbe) == [LossProbe(probe_at, base, 1)]
    assert seqs(s.datagrams_to_send(probe_at)) == [base]
    assert (s.window, s.in_flight) == (2, 2)
    assert events(s, Timeout) == [] and s.consecutive_timeouts == 0 and s.rto == rto_before
    s.on_ack(base + 1, probe_at + 0.1)  # the resent base filled the hole: both acknowledged
    assert s.base == base + 2 and s.window == 2
    assert seqs(s.datagrams_to_send(probe_at + 0.1)) == [base + 2, base + 3]
