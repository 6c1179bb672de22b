"""stacklab grade's command line without running anything: bad input is one line, exit 2."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from stacklab.cli import cli


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "exactly one of --server CMD and --client CMD"),
        (["--server", "a", "--client", "b"], "exactly one of"),
        (["--server", "  "], "--server needs a command"),
        (["--client", "c", "--only", "probe"], "the probe is for servers"),
        (["--server", "s", "--only", "nope"], "unknown scenario 'nope'"),
        (["--server", "s", "--json", "/nonexistent-dir/g.json"], "no such folder"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str], message: str, tmp_path: object) -> None:
    result = CliRunner().invoke(cli, ["grade", "--out", str(tmp_path), *args])
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("role", "command", "message"),
    [
        ("--client", "my-client", "grading a client needs the original addresses"),
        ("--server", "my-server", "a server whose command has no {host} and {port}"),
    ],
)
def test_without_namespaces_it_says_what_cannot_run(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object, role: str, command: str, message: str
) -> None:
    from stacklab.tools import netns

    monkeypatch.setattr(netns, "unavailable_reason", lambda: "private network namespaces need root")
    result = CliRunner().invoke(cli, ["grade", role, command, "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert message in result.output and "need root" in result.output
