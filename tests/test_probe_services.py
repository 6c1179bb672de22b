"""stacklab's own servers survive thousands of probe cases per protocol.

A test of the servers as much as of the probe: each server runs in-process on
an ephemeral port and the probe throws its systematic cases and then seeded
random mutations at it; zero failures allowed.  A failure message lists the
replay command of each failing case.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from stacklab.cli import cli
from stacklab.config import StackConfig
from stacklab.services.stack import Stack
from stacklab.tools.probe_cases import ProbeContext, generate_cases, systematic_count
from stacklab.tools.probe_report import RunInfo
from stacklab.tools.probe_runner import ProbeRunner, ProbeTarget

CASES = 2000
PROTOCOL_OF = {"dhcp": "dhcp", "dns": "dns", "app-tcp": "app", "app-rudp": "rudp"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    config = StackConfig()
    for section in (config.dhcp, config.dns, config.origin, config.app_tcp, config.app_rudp):
        section.host = "127.0.0.1"
        section.port = 0
    config.dhcp.lease_db = str(tmp_path_factory.mktemp("leases") / "leases.sqlite3")
    config.app_tcp.read_timeout = 1.0
    # Every RUDP case from a new port that starts with a SYN opens a session,
    # and commands that reach a transfer leave sessions resending to a probe
    # that never ACKs.  With the defaults (1024 sessions, 30 s idle timeout) a
    # run of thousands of cases fills the table and new clients are turned
    # away for up to 30 s (the probe's end-of-run new-client check warns about
    # it).  Short timeouts here keep the table from filling during the run.
    for name, value in (
        ("max_timeouts", 2),
        ("initial_rto", 0.2),
        ("max_rto", 0.4),
        ("idle_timeout", 2.0),
    ):
        if hasattr(config.app_rudp, name):
            setattr(config.app_rudp, name, value)
    names = ["origin", "dhcp", "dns", "app-tcp"]
    if importlib.util.find_spec("stacklab.services.app_rudp") is not None:
        names.append("app-rudp")
    running = Stack(config, tuple(names))
    running.start()
    yield running
    running.stop()


def _service(stack: Stack, name: str) -> tuple[str, int]:
    for service in stack.services:
        if service.name == name:
            return service.address
    pytest.skip(f"{name} is not available")


def _context(stack: Stack) -> ProbeContext:
    return ProbeContext(url=f"http://127.0.0.1:{stack.config.origin.port}/test_file.txt")


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("service", list(PROTOCOL_OF))
def test_stacklab_servers_survive_thousands_of_cases(stack: Stack, service: str) -> None:
    host, port = _service(stack, service)
    protocol = PROTOCOL_OF[service]
    context = _context(stack)
    count = max(CASES, systematic_count(protocol, context) + 500)
    target = ProbeTarget(
        host, port, protocol, timeout=1.0, reply_window=0.001, recover_timeout=2.0, context=context
    )
    with ProbeRunner(target) as runner:
        runner.check_target()
        summary = runner.run(generate_cases(protocol, 2024, count, context))
    info = RunInfo(f"{host}:{port}", protocol, 2024, 1.0, context)
    failing = [
        f"{r.case.detail}: {r.detail}\n  {info.replay_command(r.case.index)}"
        for r in summary.failures
    ]
    assert not failing, "\n".join(failing)
    assert summary.cases_run == count
    assert summary.warnings == []  # a brand-new client is still served after the run
    # The cases reached the server's deeper paths, not only its drop counter.
    assert summary.results["answered"] > 0 and summary.results["ignored"] > 0
    if protocol != "dhcp":
        assert summary.results["error-reply"] > 0


@pytest.mark.timeout(60)
def test_cli_json_junit_and_clean_exit(stack: Stack, tmp_path: Path) -> None:
    host, port = _service(stack, "dns")
    junit = tmp_path / "probe.xml"
    result = CliRunner().invoke(
        cli,
        [
            "probe",
            f"{host}:{port}",
            "--protocol",
            "dns",
            "--cases",
            "150",
            "--seed",
            "5",
            "--timeout",
            "1",
            "--json",
            "--junit",
            str(junit),
            "--pcap-dir",
            str(tmp_path / "pcaps"),
        ],
    )
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["target"] == f"{host}:{port}" and document["protocol"] == "dns"
    assert document["seed"] == 5 and document["cases"] == 150 and document["failures"] == []
    assert sum(document["results"].values()) == 150
    assert set(document["results"]) == {"answered", "error-reply", "ignored", "reset", "failure"}
    assert junit.read_text().count("<testcase ") == 150
    assert not (tmp_path / "pcaps").exists() or not any((tmp_path / "pcaps").iterdir())


@pytest.mark.timeout(60)
def test_cli_human_output_has_a_summary_table(stack: Stack) -> None:
    host, port = _service(stack, "app-tcp")
    result = CliRunner().invoke(
        cli,
        [
            "probe",
            f"{host}:{port}",
            "--protocol",
            "app",
            "--cases",
            "60",
            "--url",
            _context(stack).url,
            "--timeout",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "answered" in result.stdout and "error-reply" in result.stdout
    assert "no failure" in result.stdout
