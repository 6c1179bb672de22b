"""stacklab capture without capturing: filters, markers, paths, scenarios, error lines."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from stacklab.cli import cli
from stacklab.commands.capture import SCENARIO_CHOICES, output_paths
from stacklab.errors import UserError
from stacklab.tools import capture as cap
from stacklab.tools.scenarios import (
    ALL,
    SCENARIOS,
    ScenarioError,
    resolve_names,
    scenario_content,
)


def test_filter_covers_every_port_and_the_markers() -> None:
    bpf = cap.capture_filter([("udp", 6767), ("tcp", 2121), ("udp", 6767)])
    assert bpf == "tcp port 2121 or udp port 6767 or (udp dst port 9 and dst host 127.0.0.1)"


@pytest.mark.parametrize(
    ("numbers", "ranges"),
    [([], []), ([4], ["4"]), ([1, 2, 3, 7], ["1-3", "7"]), ([9, 8, 1, 10], ["1", "8-10"])],
)
def test_editcap_ranges(numbers: list[int], ranges: list[str]) -> None:
    assert cap._ranges(numbers) == ranges


def test_scenario_content_is_fixed_and_sized() -> None:
    a = scenario_content("rudp-clean", 20_000)
    assert len(a) == 20_000
    assert a == scenario_content("rudp-clean", 20_000)
    assert a != scenario_content("rudp-loss", 20_000)
    assert a.startswith(b"rudp-clean line 00000: ")


def test_resolve_names_all_in_order_without_duplicates() -> None:
    assert [s.name for s in resolve_names(["all"])] == list(ALL)
    assert [s.name for s in resolve_names(["rudp-loss", "tcp-flow", "rudp-loss"])] == [
        "rudp-loss",
        "tcp-flow",
    ]
    with pytest.raises(ScenarioError, match="unknown scenario 'nope'"):
        resolve_names(["nope"])


def test_scenarios_are_seeded_and_expect_what_they_show() -> None:
    # The command lists the names itself (it imports no scenario code to parse
    # its arguments): the two lists must stay the same.
    assert (*ALL, "all") == SCENARIO_CHOICES
    assert SCENARIOS["rudp-clean"].legacy and not SCENARIOS["rudp-negotiated"].legacy
    assert "stacklab RUDP" in SCENARIOS["rudp-negotiated"].client_settings()
    assert "app" in SCENARIOS["tcp-flow"].expect
    assert SCENARIOS["rudp-handshake"].handshake_only
    loss = SCENARIOS["rudp-loss"]
    assert loss.drop > 0 and "seed" in loss.client_settings()
    advanced = SCENARIOS["rudp-advanced"]
    assert advanced.delay is not None and advanced.drop > 0


def test_output_paths(tmp_path: Path) -> None:
    assert output_paths(["tcp-flow"], None) == [Path("tcp-flow.pcapng")]
    assert output_paths(["tcp-flow"], str(tmp_path / "x.pcapng")) == [tmp_path / "x.pcapng"]
    several = output_paths(["tcp-flow", "rudp-loss"], str(tmp_path / "new"))
    assert several == [tmp_path / "new" / "tcp-flow.pcapng", tmp_path / "new" / "rudp-loss.pcapng"]
    assert (tmp_path / "new").is_dir()
    assert output_paths(["tcp-flow"], str(tmp_path)) == [tmp_path / "tcp-flow.pcapng"]
    with pytest.raises(UserError, match="no such folder"):
        output_paths(["tcp-flow"], str(tmp_path / "missing" / "x.pcapng"))
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match="not a folder"):
        output_paths(["tcp-flow", "rudp-loss"], str(tmp_path / "file"))


def test_no_permission_is_one_line_with_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cap, "permission_problem", lambda dumpcap: "no permission to capture")
    monkeypatch.setattr(cap, "find_tool", lambda name: f"/usr/bin/{name}")
    result = CliRunner().invoke(cli, ["capture", "tcp-flow", "-o", os.devnull + ".pcapng"])
    assert result.exit_code == 2
    assert result.output.strip() == "stacklab: error: no permission to capture"
    problem = cap.permission_problem("/nonexistent/dumpcap")
    if os.geteuid() != 0:
        assert problem is not None and "setcap cap_net_raw,cap_net_admin+eip" in problem


def test_conflicting_options_are_user_errors() -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["capture", "tcp-flow", "--running", "--netns"])
    assert result.exit_code == 2 and "exclude each other" in result.output
    result = runner.invoke(cli, ["capture", "tcp-flow", "--url", "http://x/"])
    assert result.exit_code == 2 and "--url needs --running" in result.output
    result = runner.invoke(cli, ["capture", "bogus"])
    assert result.exit_code == 2


def _fake_tool(folder: Path, name: str, script: str) -> None:
    path = folder / name
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


@pytest.mark.timeout(30)
def test_dumpcap_refusing_to_capture_is_a_permission_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """dumpcap prints 'Capturing on' even when it may not capture: the error must still show."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    _fake_tool(
        bindir,
        "dumpcap",
        "echo \"Capturing on 'Loopback: lo'\" >&2\n"
        "echo 'dumpcap: You do not have permission to capture on device \"lo\".' >&2\n"
        "exit 1\n",
    )
    _fake_tool(bindir, "editcap", "exit 0\n")
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(cap, "permission_problem", lambda dumpcap: None)
    capture = cap.DumpcapCapture(tmp_path / "out.pcapng", "udp port 1", "comment")
    with pytest.raises(cap.CapturePermissionError, match="setcap"):
        capture.start()
    assert not capture.raw_path.exists()


@pytest.mark.timeout(30)
def test_dumpcap_failing_otherwise_reports_its_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    _fake_tool(bindir, "dumpcap", "echo 'dumpcap: There is no device named \"lo9\".' >&2\nexit 1\n")
    _fake_tool(bindir, "editcap", "exit 0\n")
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(cap, "permission_problem", lambda dumpcap: None)
    capture = cap.DumpcapCapture(tmp_path / "out.pcapng", "udp port 1", "c", interface="lo9")
    with pytest.raises(cap.CaptureToolError, match='no device named "lo9"') as info:
        capture.start()
    assert not isinstance(info.value, cap.CapturePermissionError)


def test_missing_tool_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(cap.CaptureToolError, match="dumpcap is not installed"):
        cap.find_tool("dumpcap")
