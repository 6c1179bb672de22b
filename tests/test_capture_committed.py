"""The committed reference captures in captures/ pass ``stacklab verify``, as users run it."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from stacklab.analysis.pcapio import CaptureReader
from stacklab.cli import cli
from stacklab.tools.scenarios import ALL, SCENARIOS

from conftest import REPO

CAPTURES = REPO / "captures"


def test_every_scenario_has_a_committed_capture_and_a_readme_row() -> None:
    readme = (CAPTURES / "README.md").read_text()
    for name in ALL:
        assert (CAPTURES / f"{name}.pcapng").is_file(), name
        assert f"`{name}.pcapng`" in readme, name


@pytest.mark.parametrize("name", ALL)
def test_committed_capture_passes_verify(name: str) -> None:
    path = CAPTURES / f"{name}.pcapng"
    result = CliRunner().invoke(
        cli, ["verify", "--expect", SCENARIOS[name].expect, "--json", str(path)]
    )
    assert result.exit_code == 0, result.output
    assert '"passed": true' in result.output
    with CaptureReader(path) as reader:
        frames = sum(1 for _ in reader)
        comments = reader.comments
    assert frames > 0
    assert any(c.startswith(f"stacklab capture {name}:") for c in comments), comments


def test_handshake_capture_fails_without_expect() -> None:
    """The handshake capture is an unfinished transfer: only --expect handshake accepts it."""
    path: Path = CAPTURES / "rudp-handshake.pcapng"
    result = CliRunner().invoke(cli, ["verify", str(path)])
    assert result.exit_code == 1
