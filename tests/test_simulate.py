"""The deterministic simulator: clean runs, replay, random scenarios, and that it catches bugs.

The "catches bugs" tests break the engine on purpose (monkeypatched, restored
after each test) and assert that the matching invariant is reported: a
checker that never fails would prove nothing.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace

import pytest
from click.testing import CliRunner

from stacklab.cli import cli
from stacklab.sim import runner as simulate
from stacklab.sim.impairment import Blackhole, Impairment
from stacklab.sim.runner import (
    Outcome,
    Scenario,
    Summary,
    content_for,
    draw_scenario,
    run_many,
    run_scenario,
)
from stacklab.transport import aimd, receiver, recovery, sender
from stacklab.transport.options import ORIGINAL, TransferOptions
from stacklab.transport.server import ServerSession

pytestmark = pytest.mark.timeout(300)

STACKLAB = TransferOptions(chunk_size=1400, max_window=32, integrity=True, ack_every=1)


def scenario(
    size: int = 20_000,
    options: TransferOptions | None = STACKLAB,
    up: Impairment | None = None,
    down: Impairment | None = None,
    **kwargs: object,
) -> Scenario:
    return Scenario(
        7,
        None,
        size,
        options,
        up or Impairment(),
        down or Impairment(),
        **kwargs,  # type: ignore[arg-type]
    )


def assert_clean(outcome: Outcome) -> None:
    assert outcome.violation is None, outcome.violation


def test_clean_network_completes_without_retransmission() -> None:
    delay = Impairment(delay_min=0.01, delay_max=0.01)
    outcome = run_scenario(scenario(20_000, up=delay, down=delay), keep_trace=True)
    assert_clean(outcome)
    assert outcome.status == "completed"
    assert outcome.delivered == 20_000
    assert outcome.retransmissions == outcome.go_backs == outcome.timeouts == 0
    # 15 chunks, +1 per ACK that advances the base (not the FIN's): windows 2..16, never halved.
    assert [w for _, w in outcome.window_trace] == list(range(2, 17))
    # SYN, command, 15 chunks + FIN: each a 20 ms round trip at most, plus the handshake.
    assert 0.04 < outcome.virtual_time < 1.0


def test_original_client_and_empty_file() -> None:
    for size in (0, 1, 500, 501):
        outcome = run_scenario(scenario(size, options=None))
        assert_clean(outcome)
        assert outcome.status == "completed" and outcome.delivered == size


def test_runs_replay_exactly() -> None:
    lossy = Impairment(loss=0.2, delay_min=0.005, delay_max=0.03, duplicate=0.05, reorder=0.05)
    a = run_scenario(scenario(60_000, up=lossy, down=lossy), keep_trace=True)
    b = run_scenario(scenario(60_000, up=lossy, down=lossy), keep_trace=True)
    assert_clean(a)
    assert a.retransmissions > 0
    assert (a.virtual_time, a.retransmissions, a.window_trace, a.network) == (
        b.virtual_time,
        b.retransmissions,
        b.window_trace,
        b.network,
    )
    assert draw_scenario(5, 17) == draw_scenario(5, 17)
    assert draw_scenario(5, 17) != draw_scenario(5, 18)
    assert content_for(draw_scenario(5, 17)) == content_for(draw_scenario(5, 17))


def test_corruption_with_integrity_never_reaches_the_bytes() -> None:
    bad = Impairment(corrupt=0.3, corrupt_max_bytes=4)
    outcome = run_scenario(scenario(50_000, up=bad, down=bad))
    assert_clean(outcome)
    assert outcome.status == "completed"
    assert outcome.network["s2c.corrupt"] > 5


def test_short_blackhole_is_survived_and_long_one_ends_cleanly() -> None:
    short = Impairment(delay_min=0.01, delay_max=0.01, blackholes=(Blackhole(0.1, 2.0),))
    ok = run_scenario(scenario(200_000, up=short, down=short, expect="complete"))
    assert_clean(ok)
    assert ok.status == "completed" and ok.timeouts >= 2
    long = Impairment(delay_min=0.01, delay_max=0.01, blackholes=(Blackhole(0.1, 100.0),))
    gone = run_scenario(scenario(200_000, up=long, down=long, expect="abort"))
    assert_clean(gone)
    assert gone.status == "aborted" and gone.client_error and gone.server_error
    assert gone.virtual_time < 0.1 + 100 + 60


def test_random_scenarios_fast_suite() -> None:
    summary = Summary()
    for outcome in run_many(0, 300, workers=2):
        summary.add(outcome)
    assert summary.scenarios == 300
    assert summary.violations == []
    assert summary.completed > 200 and summary.aborted > 0
    assert summary.completed + summary.aborted == 300


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_ten_thousand_random_scenarios() -> None:
    count = int(os.environ.get("STACKLAB_SIM_SCENARIOS", "10000"))
    summary = Summary()
    for outcome in run_many(1, count, workers=2):
        summary.add(outcome)
    assert summary.scenarios == count
    assert summary.violations == [], json.dumps(summary.violations[:5], indent=1)


# -- the checker catches broken engines ----------------------------------------

LOSSY = Impairment(loss=0.15, delay_min=0.01, delay_max=0.02)


def violation_of(outcome: Outcome) -> str:
    assert outcome.violation is not None, "the broken engine was not caught"
    return outcome.violation.invariant


def test_catches_a_receiver_that_accepts_out_of_order(monkeypatch: pytest.MonkeyPatch) -> None:
    original = receiver.GbnReceiver.on_data

    def sloppy(self: receiver.GbnReceiver, seq: int, payload: bytes, now: float) -> None:
        self.expected = max(self.expected, seq)  # take whatever comes
        original(self, seq, payload, now)

    monkeypatch.setattr(receiver.GbnReceiver, "on_data", sloppy)
    reorder = Impairment(reorder=0.3, delay_min=0.01, delay_max=0.01)
    outcome = run_scenario(scenario(100_000, up=reorder, down=reorder))
    assert violation_of(outcome) in (
        "delivered bytes are a prefix of the sent bytes",
        "delivered bytes equal the sent bytes",
        "ACKs never beyond what was sent",
        "complete transfer",
    )


def test_catches_a_window_that_never_halves(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aimd.AimdController, "on_loss", lambda self, now, reason: None)
    outcome = run_scenario(scenario(100_000, up=LOSSY, down=LOSSY))
    assert violation_of(outcome) == "window halves on loss"


OUTAGE = Impairment(delay_min=0.01, delay_max=0.02, blackholes=(Blackhole(0.3, 1.5),))
"""An outage forces consecutive timeouts, whatever else the sender does to avoid them."""


def test_catches_rto_without_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(recovery.RttEstimator, "backoff", lambda self: None)
    outcome = run_scenario(scenario(100_000, up=OUTAGE, down=OUTAGE))
    assert violation_of(outcome) == "RTO doubles on expiry"


def test_catches_karn_violation(monkeypatch: pytest.MonkeyPatch) -> None:
    # sample a chunk that is being resent
    monkeypatch.setattr(recovery.Recovery, "cancel_timing", lambda self, up_to=None: None)
    outcome = run_scenario(scenario(100_000, up=LOSSY, down=LOSSY))
    assert violation_of(outcome) in ("Karn's rule", "RTT sample")


def test_catches_fast_retransmit_on_the_wrong_duplicate(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(recovery, "DUP_ACK_THRESHOLD", 2)
    outcome = run_scenario(scenario(100_000, up=LOSSY, down=LOSSY))
    assert violation_of(outcome) == "fast retransmit on the third duplicate ACK only"


def test_catches_a_chunk_beyond_the_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """One chunk more than the window allows (what limited transmit did) is a violation."""
    original = sender.GbnSender.datagrams_to_send

    def one_more(self: sender.GbnSender, now: float) -> list[bytes]:
        cc = self._cc
        assert isinstance(cc, aimd.AimdController)
        cc._window += 1  # the window the sender reports (and the checker tracks) stays put
        try:
            return original(self, now)
        finally:
            cc._window -= 1

    monkeypatch.setattr(sender.GbnSender, "datagrams_to_send", one_more)
    outcome = run_scenario(scenario(100_000, options=None))
    assert violation_of(outcome) == "in flight <= window"


def test_catches_a_legacy_session_that_doubles_the_base(monkeypatch: pytest.MonkeyPatch) -> None:
    """An original client served with the negotiated sessions' doubled base is caught."""
    doubling = replace(ORIGINAL, duplicate_base_on_timeout=True)
    monkeypatch.setattr(simulate, "ORIGINAL", doubling)  # what the handshake hands out
    outcome = run_scenario(scenario(100_000, options=None, up=OUTAGE, down=OUTAGE))
    assert violation_of(outcome) == "a legacy session sends each resend once"
    # ... and the same outage with the real legacy options is clean
    monkeypatch.undo()
    assert_clean(run_scenario(scenario(100_000, options=None, up=OUTAGE, down=OUTAGE)))


def test_catches_a_stuck_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sender.GbnSender, "handle_timer", lambda self, now: None)
    outcome = run_scenario(scenario(100_000, up=LOSSY, down=LOSSY))
    assert violation_of(outcome) in (
        "time advances",
        "ends in bounded virtual time",
        "the transfer ends",
    )


def test_catches_corruption_without_integrity() -> None:
    bad = Impairment(corrupt=0.2)
    outcome = run_scenario(
        scenario(100_000, options=TransferOptions(1400, 16, False, 1), up=bad, down=bad)
    )
    assert violation_of(outcome) in (
        "delivered bytes are a prefix of the sent bytes",
        "delivered bytes equal the sent bytes",
        "command intact",
        "ACKs never beyond what was sent",
    )
    assert outcome.violation is not None
    assert "stacklab simulate --seed 7" in outcome.violation.replay


# -- command line ----------------------------------------------------------------


def test_cli_one_setting_prints_what_happened() -> None:
    result = CliRunner().invoke(
        cli, ["simulate", "--loss", "0.1", "--delay", "10:20", "--size", "50000", "--seed", "2"]
    )
    assert result.exit_code == 0, result.output
    for text in (
        "completed",
        "virtual transfer time",
        "retransmissions",
        "go-backs",
        "window trace",
    ):
        assert text in result.output


def test_cli_many_scenarios_json() -> None:
    result = CliRunner().invoke(
        cli, ["simulate", "--scenarios", "40", "--seed", "0", "--workers", "1", "--json"]
    )
    data = json.loads(result.output)
    assert data["scenarios"] == 40
    assert isinstance(data["violations"], list)
    assert data["completed"] + data["aborted"] + len(data["violations"]) == 40
    assert result.exit_code == (1 if data["violations"] else 0)
    for v in data["violations"]:
        assert v["replay"].startswith("stacklab simulate --seed 0 --scenario ")


def test_cli_violation_exits_1_and_names_the_replay() -> None:
    result = CliRunner().invoke(
        cli, ["simulate", "--no-integrity", "--corrupt", "0.3", "--size", "100000", "--seed", "4"]
    )
    assert result.exit_code == 1
    assert "VIOLATION seed 4" in result.output and "replay" in result.output


def test_cli_replays_a_drawn_scenario() -> None:
    result = CliRunner().invoke(cli, ["simulate", "--seed", "0", "--scenario", "3", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["scenarios"] == 1


@pytest.mark.parametrize(
    "args",
    [
        ["--scenarios", "0"],
        ["--scenarios", "5", "--scenario", "1"],
        ["--chunk", "0"],
        ["--min-rto", "2", "--max-rto", "1"],
        ["--loss", "7"],
    ],
)
def test_cli_bad_options(args: list[str]) -> None:
    result = CliRunner().invoke(cli, ["simulate", *args])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output


def test_acks_never_go_backwards_after_the_fin() -> None:
    """A late duplicate of the last chunk, arriving after the FIN, must not pull the ACK back.

    Found by the simulator (seed 1, scenarios 308, 428, 1984, ...): the client
    ACKs the FIN (N+1), then answers a stale copy of chunk N with ack N.
    """
    from stacklab.transport.client import ClientSession
    from stacklab.wire import RUDP_HEADER, pack_rudp

    client = ClientSession("FETCH http://127.0.0.1:8080/x", None)
    client.start(0.0)
    client.datagrams_to_send(0.0)
    acks: list[int] = []
    script = [
        pack_rudp(0, 101, b"A"),  # SYN-ACK
        pack_rudp(0, 101, b"A"),  # command ACK
        pack_rudp(1, 0, b"D", b"x" * 10),
        pack_rudp(2, 0, b"F"),
        pack_rudp(1, 0, b"D", b"x" * 10),  # a duplicate that took the long way
    ]
    for i, datagram in enumerate(script, start=1):
        client.receive_datagram(datagram, i * 0.01)
        for out in client.datagrams_to_send(i * 0.01):
            _, ack, flag, _ = RUDP_HEADER.unpack_from(out, 0)
            if flag == b"A":
                acks.append(ack)
    assert client.done and client.content == b"x" * 10
    assert acks[:2] == [1, 2]
    assert acks == sorted(acks), acks


# -- replays of findings ------------------------------------------------------------
# Each names the seed and scenario the random search found; the engine must pass them.


def test_replay_window_of_one_keeps_one_chunk_in_flight() -> None:
    """Seed 1, scenario 61: window 1, where limited transmit once sent chunks 9, 10, 11 at once.

    Nothing leaves beyond the window any more; the checker holds in flight <= window.
    """
    outcome = run_scenario(draw_scenario(1, 61))
    assert_clean(outcome)


def test_replay_no_retransmission_storm_under_duplication() -> None:
    """Seed 1, scenario 2238: 20% duplication both ways blew up to 12,000 datagrams in flight."""
    outcome = run_scenario(draw_scenario(1, 2238))
    assert_clean(outcome)


# -- the production server path and hostile peers -------------------------------------


def test_runs_the_production_handshake_cookies_and_unproven_budget() -> None:
    """A negotiated client echoes its SYN cookie and gets a proven session; an original
    client gets an unproven legacy session whose budget is lifted by its first ACK of data."""
    negotiated = run_scenario(scenario(20_000))
    assert_clean(negotiated)
    assert negotiated.status == "completed"
    assert negotiated.server_stats["syn_answered"] >= 1
    legacy = run_scenario(scenario(20_000, options=None))
    assert_clean(legacy)
    assert legacy.status == "completed" and legacy.server_stats["syn_answered"] >= 1


@pytest.mark.parametrize("peer", ["vanish", "dupacks"])
@pytest.mark.parametrize("options", [STACKLAB, None], ids=["negotiated", "legacy"])
def test_a_peer_that_vanishes_or_only_repeats_its_ack_is_given_up(
    peer: str, options: TransferOptions | None
) -> None:
    delay = Impairment(delay_min=0.01, delay_max=0.01)
    outcome = run_scenario(
        scenario(150_000, options=options, up=delay, down=delay, peer=peer, peer_at=0.1)
    )
    assert_clean(outcome)
    assert outcome.status == "aborted"
    assert outcome.server_error is not None and "consecutive failures" in outcome.server_error
    assert outcome.fast_retransmits <= 1


def test_bogus_acks_are_ignored_counted_and_prove_nothing() -> None:
    delay = Impairment(delay_min=0.01, delay_max=0.01)
    outcome = run_scenario(
        scenario(30_000, options=None, up=delay, down=delay, peer="bogus", peer_at=200.0)
    )
    assert_clean(outcome)
    assert outcome.status == "completed"
    assert outcome.server_stats.get("ignored_acks", 0) > 10


def test_a_slow_receiver_like_the_original_client_completes() -> None:
    outcome = run_scenario(scenario(10_000, options=None, peer="slow"))
    assert_clean(outcome)
    assert outcome.status == "completed"
    assert outcome.virtual_time > 20 * 0.1  # 20 chunks, at least 0.1 s each


def test_catches_a_probe_that_goes_back_over_the_window(monkeypatch: pytest.MonkeyPatch) -> None:
    def old_probe(self: sender.GbnSender, now: float) -> None:
        self._recovery.on_probe()
        self._go_back(now, "probe")

    monkeypatch.setattr(sender.GbnSender, "_probe", old_probe)
    outcome = run_scenario(scenario(100_000, up=LOSSY, down=LOSSY))
    assert violation_of(outcome) == "go-back only on a timeout or a fast retransmit"


def test_catches_any_ack_proving_an_address(monkeypatch: pytest.MonkeyPatch) -> None:
    original = ServerSession.receive_datagram

    def gullible(self: ServerSession, data: bytes, now: float) -> None:
        if self.sender is not None and data[8:9] == b"A":
            self.proven = True  # what the engine did for ack >= 1, 0xFFFFFFFF included
        original(self, data, now)

    monkeypatch.setattr(ServerSession, "receive_datagram", gullible)
    slow_down = Impairment(delay_min=0.05, delay_max=0.05)
    outcome = run_scenario(
        scenario(30_000, options=None, up=slow_down, down=slow_down, peer="bogus", peer_at=500.0)
    )
    assert violation_of(outcome) == "only an ACK of a chunk sent proves an address"


def test_catches_a_sender_that_never_gives_up(monkeypatch: pytest.MonkeyPatch) -> None:
    def uncounted(self: recovery.Recovery) -> None:
        self.timeouts += 1  # ... but not a failure: the give-up count never grows
        self.probe_at = None

    monkeypatch.setattr(recovery.Recovery, "on_timeout", uncounted)
    delay = Impairment(delay_min=0.01, delay_max=0.01)
    outcome = run_scenario(scenario(100_000, up=delay, down=delay, peer="vanish", peer_at=0.1))
    assert violation_of(outcome) == "give-up limit"
