"""One unreadable capture among several is a result of its own, not the end of the run."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

from click.testing import CliRunner

from stacklab.cli import cli

from conftest import requires_tshark, seed_capture


def _files(tmp_path: Path) -> tuple[str, str]:
    junk = tmp_path / "random.bin"
    junk.write_bytes(bytes(range(256)) * 3)
    return str(seed_capture("part1_flow")), str(junk)


def test_junit_and_json_keep_the_readable_results(tmp_path: Path) -> None:
    good, junk = _files(tmp_path)
    junit = tmp_path / "j.xml"
    result = CliRunner().invoke(cli, ["verify", "--junit", str(junit), "--json", good, junk])
    assert result.exit_code == 1  # one capture could not be read: not a green run
    doc = json.loads(result.stdout)
    assert [c["path"] for c in doc["captures"]] == [good]
    assert doc["unreadable"] == [
        {"path": junk, "error": f"{junk}: not a pcap or pcapng capture file"}
    ]
    assert doc["passed"] is False
    assert "1 unreadable" in result.stderr
    root = ET.parse(junit).getroot()
    suites = {s.get("name"): s for s in root.iter("testsuite")}
    assert set(suites) == {good, junk}
    assert int(suites[good].get("tests") or 0) == 3
    error = suites[junk].find("testcase/error")
    assert error is not None and "not a pcap or pcapng" in (error.get("message") or "")
    assert root.get("errors") == "1"


def test_a_summary_line_ends_a_multi_file_run(tmp_path: Path) -> None:
    good, junk = _files(tmp_path)
    result = CliRunner().invoke(cli, ["verify", good, junk, good])
    assert result.exit_code == 1
    assert result.stdout.rstrip().splitlines()[-1] == (
        "FAIL: 3 captures: 2 passed, 0 failed, 1 unreadable"
    )
    assert f"stacklab: error: {junk}: not a pcap or pcapng capture file" in result.stderr
    passing = CliRunner().invoke(cli, ["verify", good, good])
    assert passing.exit_code == 0
    assert passing.stdout.rstrip().endswith("PASS: 2 captures: 2 passed, 0 failed, 0 unreadable")


def test_exit_2_only_when_nothing_could_be_read(tmp_path: Path) -> None:
    _, junk = _files(tmp_path)
    junit = tmp_path / "j.xml"
    result = CliRunner().invoke(cli, ["verify", "--junit", str(junit), junk, str(tmp_path / "no")])
    assert result.exit_code == 2
    root = ET.parse(junit).getroot()  # still a JUnit file: CI shows the reasons
    assert root.get("errors") == "2" and root.get("tests") == "2"


def test_quiet_verify_prints_only_failures(tmp_path: Path) -> None:
    good = str(seed_capture("part1_flow"))
    quiet = CliRunner().invoke(cli, ["-q", "verify", good])
    assert quiet.exit_code == 0 and quiet.stdout == ""
    cut = tmp_path / "cut.pcapng"
    cut.write_bytes(seed_capture("part4_rudp_loss_flow").read_bytes()[:2500])
    failing = CliRunner().invoke(cli, ["-q", "verify", str(cut)])
    assert failing.exit_code == 1
    lines = failing.stdout.splitlines()
    assert lines and all(line.startswith(f"FAIL {cut}: ") for line in lines)


def test_an_empty_or_garbage_events_log_fails_rudp_events(tmp_path: Path) -> None:
    capture = str(seed_capture("part4_rudp_loss_flow"))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    garbage = tmp_path / "garbage.jsonl"
    garbage.write_bytes(bytes(range(256)) * 4 + b'\n{"neither": "an event"}\n[1, 2]\n')
    for log, reason in ((empty, "the events log is empty"), (garbage, "not an events log")):
        result = CliRunner().invoke(cli, ["verify", "--json", "--events", str(log), capture])
        assert result.exit_code == 1, result.output
        checks = json.loads(result.stdout)["captures"][0]["checks"]
        events = [c for c in checks if c["id"] == "rudp.events"]
        assert len(events) == 1 and events[0]["status"] == "fail"
        assert reason in events[0]["detail"]


@requires_tshark
def test_tshark_engine_reports_progress() -> None:
    from stacklab.analysis.sessions import VerifyOptions
    from stacklab.analysis.tshark_engine import analyze_capture

    calls: list[tuple[int, int]] = []
    analysis = analyze_capture(
        str(seed_capture("part4_rudp_loss_flow")),
        VerifyOptions(),
        lambda f, n: calls.append((f, n)),
    )
    assert analysis.passed
    assert calls and all(0 < frame <= total == analysis.packets for frame, total in calls)
