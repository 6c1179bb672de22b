"""stacklab grade without a network: the catalogue, drop rules, Wilson, score and outputs."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from stacklab.tools.grade_outputs import grade_json, gradescope, junit_tree, matrix_html
from stacklab.tools.grade_run import (
    CheckResult,
    RunResult,
    describe_decision,
    excuse_network,
    subject_argv,
)
from stacklab.tools.grade_scenarios import (
    CATALOGUE,
    CLIENT,
    SCENARIOS,
    SERVER,
    Outage,
    TargetedDrop,
    drop_rule,
    select,
)
from stacklab.tools.grade_score import reproducer, score, verdicts, wilson
from stacklab.wire import pack_rudp

REQUIRED = (
    "handshake",
    "clean-small",
    "clean",
    "loss-2",
    "loss-30",
    "ack-loss",
    "reorder",
    "duplicate",
    "corrupt",
    "blackhole",
    "handshake-loss-30",
    "drop-3rd-data",
    "drop-first-ack",
    "drop-fin",
    "probe",
)


def test_the_catalogue_has_every_scenario_with_a_budget_and_what_passes() -> None:
    assert tuple(s.id for s in CATALOGUE) == REQUIRED
    for s in CATALOGUE:
        assert s.budget > 0 and s.shows and s.passes and s.weight > 0
    assert SCENARIOS["clean"].chunks >= 100
    assert SCENARIOS["clean-small"].chunks == 1
    assert not SCENARIOS["loss-30"].up.is_clean and not SCENARIOS["loss-30"].down.is_clean
    assert SCENARIOS["ack-loss"].down.is_clean and not SCENARIOS["ack-loss"].up.is_clean


def test_servers_are_judged_on_every_rule_and_clients_on_the_receivers_part() -> None:
    clean = SCENARIOS["clean"]
    assert {"rudp.gbn", "rudp.aimd", "grade.content"} <= set(clean.checks(SERVER))
    assert "rudp.gbn" not in clean.checks(CLIENT)
    assert {"rudp.delivery", "rudp.teardown", "grade.content"} <= set(clean.checks(CLIENT))
    assert {"probe.alive", "probe.gives-up"} <= set(SCENARIOS["probe"].checks(SERVER))
    assert SCENARIOS["handshake"].checks(SERVER) == (
        "grade.subject",
        "grade.budget",
        "rudp.handshake",
    )


def test_only_selects_scenarios_and_names_unknown_ones() -> None:
    assert [s.id for s in select(SERVER, "drop-fin, clean,clean")] == ["drop-fin", "clean"]
    assert "probe" not in [s.id for s in select(CLIENT, None)]
    with pytest.raises(ValueError, match=r"for a client \(the probe is for servers\)"):
        select(CLIENT, "probe")
    with pytest.raises(ValueError, match="unknown scenario 'nope'"):
        select(SERVER, "nope")


def test_a_targeted_drop_hits_the_nth_match_once() -> None:
    rule = drop_rule((TargetedDrop("third", "down", "D", seq=3),))
    assert rule is not None
    data3 = pack_rudp(3, 0, b"D", b"x")
    assert rule("up", data3) is None
    assert rule("down", pack_rudp(2, 0, b"D", b"x")) is None
    assert rule("down", data3) == "third"
    assert rule("down", data3) is None  # the resend goes through
    second_ack = drop_rule((TargetedDrop("ack", "up", "A", ack_at_least=1, nth=2),))
    assert second_ack is not None
    assert second_ack("up", pack_rudp(0, 1, b"A")) is None
    assert second_ack("up", pack_rudp(0, 2, b"A")) == "ack"
    assert drop_rule(()) is None


def test_an_outage_starts_at_its_data_and_lasts_its_duration() -> None:
    now = [0.0]
    rule = drop_rule((), Outage(after_seq=10, duration=2.0), clock=lambda: now[0])
    assert rule is not None
    assert rule("down", pack_rudp(9, 0, b"D", b"x")) is None
    now[0] = 5.0
    assert rule("down", pack_rudp(10, 0, b"D", b"x")) == "blackhole 2 s"
    now[0] = 6.9
    assert rule("up", pack_rudp(0, 9, b"A")) == "blackhole 2 s"
    now[0] = 7.0
    assert rule("up", pack_rudp(0, 9, b"A")) is None


@pytest.mark.parametrize(
    ("passed", "runs", "lo", "hi"),
    [(0, 0, 0.0, 1.0), (5, 10, 0.2366, 0.7634), (3, 3, 0.4385, 1.0), (0, 3, 0.0, 0.5615)],
)
def test_wilson_interval_matches_published_values(
    passed: int, runs: int, lo: float, hi: float
) -> None:
    got = wilson(passed, runs)
    assert got == pytest.approx((lo, hi), abs=1e-4)


def test_wilson_rejects_impossible_counts() -> None:
    with pytest.raises(ValueError):
        wilson(4, 3)


def _result(scenario: str, seed: int, passed: bool) -> RunResult:
    checks = [CheckResult("rudp.gbn", "pass" if passed else "fail", "why", [3])]
    return RunResult(
        scenario, seed, passed, 1.5, f"/out/runs/{scenario}-s{seed}/capture.pcapng", checks
    )


def test_verdicts_score_and_the_json_document() -> None:
    scenarios = [SCENARIOS["clean"], SCENARIOS["drop-fin"]]
    results = [
        _result("clean", 1, True),
        _result("clean", 2, False),
        _result("drop-fin", 1, True),
        _result("drop-fin", 2, True),
    ]
    items = verdicts(SERVER, "my server --port {port}", scenarios, results)
    # clean (weight 2) passes half the time, drop-fin (weight 1) always: (2 * 0.5 + 1) / 3
    assert score(items) == pytest.approx(66.7)
    doc = grade_json("my server --port {port}", SERVER, items, [1, 2])
    assert set(doc) >= {"subject", "role", "score", "scenarios"}
    first = doc["scenarios"][0]
    assert (first["id"], first["runs"], first["passed"], first["pass_rate"]) == ("clean", 2, 1, 0.5)
    lo, hi = first["interval"]
    assert 0 < lo < 0.5 < hi < 1
    (failure,) = first["failures"]
    assert failure["seed"] == 2 and failure["checks"] == ["rudp.gbn"]
    assert failure["reproduce"] == (
        "stacklab grade --server 'my server --port {port}' --only clean --seed 2"
    )
    assert json.loads(json.dumps(doc)) == doc


def test_junit_has_one_case_per_scenario_and_gradescope_adds_up() -> None:
    scenarios = [SCENARIOS["clean"], SCENARIOS["drop-fin"]]
    results = [_result("clean", 1, False), _result("drop-fin", 1, True)]
    items = verdicts(SERVER, "srv", scenarios, results)
    root = junit_tree("srv", SERVER, items).getroot()
    cases = root.findall(".//testcase")
    assert [c.get("name") for c in cases] == ["clean", "drop-fin"]
    assert cases[0].find("failure") is not None and cases[1].find("failure") is None
    assert root.get("failures") == "1"
    ET.fromstring(ET.tostring(root))
    gs = gradescope("srv", SERVER, items)
    assert [t["name"] for t in gs["tests"]] == ["clean", "drop-fin"]
    assert sum(t["max_score"] for t in gs["tests"]) == pytest.approx(100, abs=0.05)
    assert gs["score"] == pytest.approx(sum(t["score"] for t in gs["tests"]), abs=0.05)
    assert gs["tests"][0]["status"] == "failed" and "reproduce" in gs["tests"][0]["output"]


def test_the_matrix_page_links_each_run_and_escapes_the_subject() -> None:
    items = verdicts(SERVER, "<srv>", [SCENARIOS["clean"]], [_result("clean", 1, False)])
    page = matrix_html("<srv>", SERVER, items, {("clean", 1): "runs/clean-s1/report.html"})
    assert 'href="runs/clean-s1/report.html"' in page
    assert "<srv>" not in page and "&lt;srv&gt;" in page
    assert 'class="fail"' in page


def test_the_command_is_split_filled_in_and_its_relative_paths_anchored(tmp_path: Path) -> None:
    (tmp_path / "prog").mkdir()
    (tmp_path / "prog" / "server.py").write_text("")
    argv = subject_argv(
        "python3 prog/server.py --host {host} --port={port} -o '{output}'",
        str(tmp_path),
        {"host": "127.0.0.3", "port": "2122", "output": "/r/out file"},
    )
    assert argv == [
        "python3",
        str(tmp_path / "prog" / "server.py"),
        "--host",
        "127.0.0.3",
        "--port=2122",
        "-o",
        "/r/out file",
    ]


def test_network_decisions_become_readable_comments() -> None:
    assert describe_decision({"verdict": "deliver", "dir": "up", "delay_ms": 0}, 3) is None
    assert (
        describe_decision({"verdict": "loss", "dir": "down"}, 3)
        == "dropped by the network: loss (seed 3, down)"
    )
    assert "rule drop-fin" in str(
        describe_decision({"verdict": "rule", "rule": "drop-fin", "dir": "down"}, 1)
    )
    assert str(
        describe_decision({"verdict": "deliver", "corrupt": True, "dir": "up"}, 1)
    ).startswith("corrupted by the network")


def test_reproducer_quotes_the_command() -> None:
    assert (
        reproducer(CLIENT, "a b", "clean", 7)
        == "stacklab grade --client 'a b' --only clean --seed 7"
    )


def _decisions(tmp_path: Path, *records: dict[str, object]) -> Path:
    path = tmp_path / "network.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_the_network_is_blamed_only_for_what_it_did(tmp_path: Path) -> None:
    dropped_data = {"dir": "down", "verdict": "loss", "rudp": {"flag": "D", "seq": 3, "ack": 0}}
    dropped_fin_ack = {"dir": "up", "verdict": "loss", "rudp": {"flag": "A", "seq": 0, "ack": 11}}
    log = _decisions(tmp_path, dropped_data, dropped_fin_ack)
    missing = CheckResult("rudp.delivery", "fail", "a chunk is missing from the capture: ...")
    unacked = CheckResult("rudp.teardown", "fail", "FIN 11 never acknowledged", [80])
    other_fin = CheckResult("rudp.teardown", "fail", "FIN 12 never acknowledged", [80])
    # A client's side of the proxy lacks what the network dropped: skipped, saying why.
    (delivery,) = excuse_network([missing], log, CLIENT)
    assert (
        delivery.status == "skip"
        and "dropped, corrupted, held back or duplicated 1 datagram" in delivery.detail
    )
    # A server's side shows what it sent: the same words are its own failure.
    assert excuse_network([missing], log, SERVER) == [missing]
    (teardown,) = excuse_network([unacked], log, SERVER)
    assert teardown.status == "skip" and "ACK(s) of it dropped by the network" in teardown.detail
    assert excuse_network([other_fin], log, SERVER) == [other_fin]
    clean = _decisions(tmp_path, {"dir": "down", "verdict": "deliver"})
    assert excuse_network([missing, unacked], clean, CLIENT) == [missing, unacked]


def test_seeds_count_from_the_first_seed() -> None:
    from stacklab.tools.grade_matrix import seed_list

    assert seed_list(3, None) == [1, 2, 3]
    assert seed_list(1, 7) == [7]
    assert seed_list(2, 7) == [7, 8]
