"""Positive controls: deliberately fragile servers that the probe must catch and replay.

The two fragile servers (``tests/fragile_servers.py``): a TCP app server that
crashes on a FETCH command that is not UTF-8, and a RUDP server that hangs on
a datagram shorter than the 11-byte header.  The probe must report each as a
failure, stop because the server stays dead, and print a replay command that
reproduces the failure against a fresh copy of the server.
"""

from __future__ import annotations

import json
import shlex
import socket
import threading

import pytest
from click.testing import CliRunner

from stacklab import wire
from stacklab.cli import cli
from stacklab.tools.probe_cases import generate_case
from stacklab.tools.probe_runner import FAILURE, ProbeRunner, ProbeTarget

from fragile_servers import FragileAppServer, FragileRudpServer

pytestmark = pytest.mark.timeout(60)


def _probe(port: int, protocol: str, *extra: str) -> tuple[int, dict[str, object]]:
    result = CliRunner().invoke(
        cli,
        [
            "probe",
            f"127.0.0.1:{port}",
            "--protocol",
            protocol,
            "--timeout",
            "0.5",
            "--recover",
            "0.5",
            "--json",
            *extra,
        ],
    )
    assert result.exit_code in (0, 1, 2), result.output
    return result.exit_code, json.loads(result.stdout)


def _replay_against(replay: str, port: int) -> list[str]:
    """The printed replay command, retargeted at a fresh server (only the port differs)."""
    argv = shlex.split(replay)
    assert argv[:2] == ["stacklab", "probe"]
    assert argv[2].startswith("127.0.0.1:")
    return ["probe", f"127.0.0.1:{port}", *argv[3:]]


def test_crash_on_non_utf8_command_is_caught_and_replayable(fragile_app: FragileAppServer) -> None:
    code, report = _probe(fragile_app.port, "app", "--cases", "200", "--seed", "7")
    assert code == 1
    assert fragile_app.crashed.is_set()
    failures = report["failures"]
    assert isinstance(failures, list) and len(failures) == 1
    failure = failures[0]
    case = generate_case("app", 7, failure["case"])
    body = case.packets[0][wire.FRAME_PREFIX_LEN :]
    with pytest.raises(UnicodeDecodeError):
        body.decode("utf-8")
    assert failure["kind"] == "crashed"
    assert report["stopped"]  # the server stayed dead, so the probe stopped
    assert failure["sent"][0]["hex"] == case.packets[0].hex()
    assert "--replay" in failure["replay"] and "--seed 7" in failure["replay"]

    fresh = FragileAppServer()
    try:
        result = CliRunner().invoke(
            cli, [*_replay_against(failure["replay"], fresh.port), "--json"]
        )
        assert result.exit_code == 1, result.output
        again = json.loads(result.stdout)
        assert again["cases"] == 1
        assert [f["case"] for f in again["failures"]] == [failure["case"]]
        assert fresh.crashed.is_set()
    finally:
        fresh.close()


def test_hang_on_short_header_is_caught_and_replayable(fragile_rudp: FragileRudpServer) -> None:
    code, report = _probe(fragile_rudp.port, "rudp", "--cases", "400", "--seed", "3")
    assert code == 1
    assert fragile_rudp.hung.is_set()
    failures = report["failures"]
    assert isinstance(failures, list) and len(failures) == 1
    failure = failures[0]
    case = generate_case("rudp", 3, failure["case"])
    assert any(len(p) < wire.RUDP_HEADER_LEN for p in case.packets)
    assert failure["kind"] == "hung"
    assert report["results"] == {**report["results"], FAILURE: 1}

    fresh = FragileRudpServer()
    try:
        result = CliRunner().invoke(
            cli, [*_replay_against(failure["replay"], fresh.port), "--json"]
        )
        assert result.exit_code == 1, result.output
        assert [f["case"] for f in json.loads(result.stdout)["failures"]] == [failure["case"]]
        assert fresh.hung.is_set()
    finally:
        fresh.close()


def test_runner_alone_reports_the_crash_kind(fragile_app: FragileAppServer) -> None:
    target = ProbeTarget("127.0.0.1", fragile_app.port, "app", timeout=0.3, recover_timeout=0.3)
    with ProbeRunner(target) as runner:
        runner.check_target()
        valid = runner.run_case(generate_case("app", 0, 0))
        assert valid.outcome == "answered"
        bad = runner.run_case(generate_case("app", 0, 1))
    assert bad.outcome == FAILURE and bad.failure_kind == "crashed" and bad.server_dead


class FirstClientsDnsServer:
    """Answers DNS JSON queries from its first two client addresses only (a full table)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.known: set[tuple[str, int]] = set()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                data, addr = self.sock.recvfrom(65535)
            except OSError:
                return
            if addr not in self.known and len(self.known) >= 2:
                continue
            self.known.add(addr)
            if data.startswith(b"{"):
                self.sock.sendto(b'{"status": "SUCCESS", "ip": "127.0.0.3"}', addr)


def test_a_server_that_turns_new_clients_away_gets_a_warning() -> None:
    server = FirstClientsDnsServer()
    try:
        target = ProbeTarget("127.0.0.1", server.port, "dns", timeout=0.2)
        with ProbeRunner(target) as runner:
            runner.check_target()
            summary = runner.run(generate_case("dns", 0, i) for i in range(5))
        assert summary.failures == []  # the persistent liveness client is still answered
        assert len(summary.warnings) == 1 and "new client" in summary.warnings[0]
    finally:
        server.sock.close()


class SilentOnNonAsciiAppServer(FragileAppServer):
    """Answers every frame except one whose body is not ASCII: that connection just closes."""

    def _reply(self, body: bytes) -> bytes | None:
        if not body.isascii():
            return None  # the bug under test: no response frame at all
        return b"ERROR: no" if not body.startswith(b"FETCH http://127.0.0.1:8080/test") else b"ok"


def test_a_complete_request_closed_without_a_response_is_a_failure() -> None:
    server = SilentOnNonAsciiAppServer()
    try:
        target = ProbeTarget("127.0.0.1", server.port, "app", timeout=0.3)
        with ProbeRunner(target) as runner:
            runner.check_target()
            summary = runner.run(generate_case("app", 0, i) for i in range(45))
    finally:
        server.close()
    assert summary.failures and summary.stopped is None
    for result in summary.failures:
        assert result.failure_kind == "no-reply"
        assert not result.case.packets[0][10:].isascii()
    assert summary.results["error-reply"] > 0  # the ASCII commands were answered
