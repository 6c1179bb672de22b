"""stacklab grade end to end, each run in a private network namespace (root).

A small matrix keeps this affordable: stacklab's own server and client on a
few scenarios and one seed, the command line once with every output, and the
same runs on a Dask LocalCluster.
"""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from stacklab.analysis.pcapio import CaptureReader
from stacklab.tools.grade_matrix import plan
from stacklab.tools.grade_run import RunResult, RunSpec, run_in_namespace
from stacklab.tools.grade_scenarios import CLIENT, SCENARIOS, SERVER

from conftest import REPO, requires_netns_capture

pytestmark = [requires_netns_capture, pytest.mark.netns, pytest.mark.slow]

STACKLAB_SERVER = f"{sys.executable} -m stacklab serve app-rudp --app-rudp-max-rto 1"
STACKLAB_CLIENT = f"{sys.executable} -m stacklab fetch --transport rudp -o {{output}}"


def _run(tmp_path: Path, role: str, command: str, scenario: str, seed: int = 1) -> RunResult:
    spec = RunSpec(role, command, scenario, seed, str(tmp_path / f"{scenario}-s{seed}"), str(REPO))
    return run_in_namespace(spec)


def _explain(result: RunResult) -> str:
    return "; ".join(f"{c.id}: {c.detail}" for c in result.failing) or str(result.error)


@pytest.mark.parametrize(
    "scenario", ["handshake", "clean-small", "drop-3rd-data", "drop-fin", "corrupt"]
)
def test_stacklabs_server_passes(tmp_path: Path, scenario: str) -> None:
    result = _run(tmp_path, SERVER, STACKLAB_SERVER, scenario)
    assert result.passed, _explain(result)
    wanted = set(SCENARIOS[scenario].checks(SERVER))
    assert {c.id for c in result.checks} == wanted
    assert result.capture is not None and Path(result.capture).exists()


@pytest.mark.parametrize("scenario", ["clean-small", "drop-first-ack", "drop-fin"])
def test_stacklabs_client_passes(tmp_path: Path, scenario: str) -> None:
    result = _run(tmp_path, CLIENT, STACKLAB_CLIENT, scenario)
    assert result.passed, _explain(result)
    assert any(c.id == "grade.content" and c.status == "pass" for c in result.checks)


def test_the_networks_drops_are_packet_comments_and_not_the_servers_fault(tmp_path: Path) -> None:
    result = _run(tmp_path, SERVER, STACKLAB_SERVER, "drop-3rd-data")
    assert result.passed, _explain(result)
    assert result.network.get("down.rule") == 1
    assert result.capture is not None
    comments = {f.number: f.comment for f in CaptureReader(result.capture) if f.comment}
    (text,) = comments.values()
    assert text == "dropped by the network: rule drop-3rd-data (seed 1, down)"


def test_a_server_that_does_not_start_fails_the_subject_check(tmp_path: Path) -> None:
    result = _run(tmp_path, SERVER, f"{sys.executable} -c 'raise SystemExit(3)'", "clean-small")
    assert not result.passed
    subject = next(c for c in result.checks if c.id == "grade.subject")
    assert subject.status == "fail" and "status 3" in subject.detail


def test_the_command_line_writes_every_output(tmp_path: Path) -> None:
    out = tmp_path / "out"
    files = {k: tmp_path / f"g.{k}" for k in ("json", "xml", "gs.json", "html")}
    proc = subprocess.run(
        [
            sys.executable, "-m", "stacklab", "grade", "--server", STACKLAB_SERVER,
            "--only", "clean-small,drop-fin", "--seeds", "1", "--jobs", "2",
            "--out", str(out), "--json", str(files["json"]), "--junit", str(files["xml"]),
            "--gradescope", str(files["gs.json"]), "--html", str(files["html"]),
        ],
        capture_output=True, text=True, timeout=300, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(files["json"].read_text())
    assert doc["role"] == "server" and doc["score"] == 100.0 and doc["subject"] == STACKLAB_SERVER
    assert [s["id"] for s in doc["scenarios"]] == ["clean-small", "drop-fin"]
    assert all(s["runs"] == s["passed"] == 1 for s in doc["scenarios"])
    cases = ET.parse(files["xml"]).getroot().findall(".//testcase")
    assert [c.get("name") for c in cases] == ["clean-small", "drop-fin"]
    assert json.loads(files["gs.json"].read_text())["score"] == 100.0
    page = files["html"].read_text()
    for scenario in ("clean-small", "drop-fin"):
        link = f"out/runs/{scenario}-s1/report.html"
        assert f'href="{link}"' in page
        assert (tmp_path / link).exists()
    assert "score 100.0" in proc.stdout


def test_a_failing_run_exits_1_and_prints_its_reproducer(tmp_path: Path) -> None:
    broken = f"{sys.executable} {REPO / 'tests' / 'broken_server.py'} --fault fin-early"
    proc = subprocess.run(
        [sys.executable, "-m", "stacklab", "grade", "--server", broken, "--only", "clean-small",
         "--seeds", "1", "--seed", "4", "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "FAIL clean-small seed 4: rudp.teardown:" in proc.stdout
    assert "--only clean-small --seed 4" in proc.stdout


def test_without_namespaces_a_server_taking_its_address_runs_on_free_loopback_addresses(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from click.testing import CliRunner

    from stacklab.cli import cli
    from stacklab.tools import netns

    monkeypatch.setattr(netns, "unavailable_reason", lambda: "private network namespaces need root")
    command = (
        f"{sys.executable} -m stacklab serve app-rudp --app-rudp-host {{host}} "
        "--app-rudp-port {port} --fetch-allow {origin} --app-rudp-max-rto 1"
    )
    out = tmp_path / "out"
    result = CliRunner().invoke(
        cli,
        [
            "grade",
            "--server",
            command,
            "--only",
            "drop-3rd-data",
            "--seeds",
            "1",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "running on free loopback addresses" in result.output
    doc = json.loads((out / "grade.json").read_text())
    assert doc["score"] == 100.0
    comments = [f.comment for f in CaptureReader(out / "runs/drop-3rd-data-s1/capture.pcapng")]
    assert "dropped by the network: rule drop-3rd-data (seed 1, down)" in comments


def test_the_same_runs_on_a_dask_local_cluster(tmp_path: Path) -> None:
    distributed = pytest.importorskip("distributed")
    from stacklab.tools.grade_dask import run_dask

    specs = plan(SERVER, STACKLAB_SERVER, [SCENARIOS["clean-small"]], [1, 2], tmp_path, str(REPO))
    seen: list[RunResult] = []
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None
    ) as cluster:
        results = run_dask(specs, cluster.scheduler_address, seen.append)
    assert sorted(r.seed for r in results) == [1, 2]
    assert seen == results
    assert all(r.passed for r in results), [_explain(r) for r in results]
