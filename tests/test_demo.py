"""stacklab demo: the whole tour, its summary, its exit status."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from stacklab.cli import cli
from stacklab.commands import demo as demo_module
from stacklab.tools.scenarios import ALL, SCENARIOS, ScenarioResult

from conftest import REPO, requires_netns_capture

CAPTURES = REPO / "captures"


def _committed(name: str, as_name: str | None = None) -> ScenarioResult:
    return ScenarioResult(
        name=as_name or name,
        path=str(CAPTURES / f"{name}.pcapng"),
        frames=0,
        seconds=0.0,
        url="",
        bytes=0,
        sha256="",
        comment="",
    )


def _fake_captures(results: list[ScenarioResult]) -> Callable[..., list[ScenarioResult]]:
    def run(names: list[str], paths: list[Path], *, netns: bool) -> list[ScenarioResult]:
        return results

    return run


def test_summary_and_exit_zero_when_every_check_passes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(demo_module, "run_captures", _fake_captures([_committed(n) for n in ALL]))
    result = CliRunner().invoke(cli, ["demo", "--out", str(tmp_path), "--no-netns", "--no-extras"])
    assert result.exit_code == 0, result.output
    for name in ALL:
        assert name in result.output
    assert "all checks passed" in result.output
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["passed"] is True
    rows = {row["scenario"]: row for row in summary["scenarios"]}
    assert rows["rudp-clean"]["retransmissions"] == 0 and rows["rudp-clean"]["window_max"] == 5
    assert rows["rudp-loss"]["retransmissions"] > 0
    assert rows["tcp-flow"]["window_max"] == 0 and rows["tcp-flow"]["passed"] == 3


def test_a_failing_check_exits_one_and_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The handshake capture offered as tcp-flow: the expected app traffic is missing.
    results = [_committed("rudp-handshake", as_name="tcp-flow"), _committed("rudp-clean")]
    monkeypatch.setattr(demo_module, "run_captures", _fake_captures(results))
    result = CliRunner().invoke(cli, ["demo", "--out", str(tmp_path), "--no-netns", "--no-extras"])
    assert result.exit_code == 1, result.output
    assert "app.framing" in result.output
    assert "some checks failed" in result.output
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["passed"] is False
    assert [r["ok"] for r in summary["scenarios"]] == [False, True]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_extras_write_plots_and_a_report_judged_like_verify(tmp_path: Path) -> None:
    """The handshake-only capture's report passes with the scenario's --expect, as verify does."""
    from stacklab.analysis.checks import parse_expect

    capture = str(CAPTURES / "rudp-handshake.pcapng")
    expect = parse_expect(SCENARIOS["rudp-handshake"].expect)
    written = demo_module.write_extras(capture, tmp_path / "judged", expect)
    assert list((tmp_path / "judged" / "plots").glob("rudp-handshake.*.png"))
    report = tmp_path / "judged" / "reports" / "rudp-handshake.html"
    assert report.is_file() and str(report) in written
    unjudged = tmp_path / "plain"
    demo_module.write_extras(capture, unjudged)
    assert _verdict(report) == "PASS"
    assert _verdict(unjudged / "reports" / "rudp-handshake.html") == "FAIL"


def _verdict(report: Path) -> str:
    """The report's overall verdict (the page's ``verdict`` badge)."""
    match = re.search(r'class="verdict (\w+)"', report.read_text())
    assert match is not None
    return match.group(1).upper()


@pytest.mark.netns
@pytest.mark.slow
@pytest.mark.timeout(180)
@requires_netns_capture
def test_demo_in_a_private_namespace(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["demo", "--out", str(tmp_path), "--netns", "--no-extras"])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["passed"] is True and summary["netns"] is True
    assert [r["scenario"] for r in summary["scenarios"]] == list(ALL)
    for name in ALL:
        assert (tmp_path / "captures" / f"{name}.pcapng").is_file()
