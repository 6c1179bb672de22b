"""Positive controls: deliberately fragile servers that the probe must catch and replay.

Two tiny servers live only here: a TCP app server that crashes (closes its
listening socket and stops) on a FETCH command that is not UTF-8, and a RUDP
server that hangs (stops reading its socket) on a datagram shorter than the
11-byte header.  The probe must report each as a failure, stop because the
server stays dead, and print a replay command that reproduces the failure
against a fresh copy of the server.
"""

from __future__ import annotations

import json
import shlex
import socket
import threading
from collections.abc import Iterator

import pytest
from click.testing import CliRunner

from stacklab import wire
from stacklab.cli import cli
from stacklab.services.probe_cases import generate_case
from stacklab.services.probe_runner import FAILURE, ProbeRunner, ProbeTarget

pytestmark = pytest.mark.timeout(60)


class FragileAppServer:
    """Framed FETCH over TCP, one connection at a time; dies on a non-UTF-8 command."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.crashed = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        try:
            while True:
                try:
                    conn, _ = self.sock.accept()
                except OSError:
                    return
                with conn:
                    self._handle(conn)
        except UnicodeDecodeError:
            self.crashed.set()  # the bug under test: the exception ends the server
        finally:
            self.sock.close()

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(0.2)
        data = b""
        try:
            while len(data) < wire.FRAME_PREFIX_LEN:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                data += chunk
            if not data[:10].isdigit():
                return
            length = min(int(data[:10]), 1 << 16)
            while len(data) < 10 + length:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                data += chunk
        except (TimeoutError, ConnectionResetError):
            return
        reply = self._reply(data[10 : 10 + length])
        if reply is not None:
            conn.sendall(wire.encode_frame(reply))

    def _reply(self, body: bytes) -> bytes | None:
        text = body.decode("utf-8")  # strict: raises on bad bytes, ending the server
        return b"hello" if text.startswith("FETCH ") else wire.ERROR_UNKNOWN_COMMAND.encode()

    def close(self) -> None:
        self.sock.close()


class FragileRudpServer:
    """Answers SYN and the command; hangs for good on a datagram shorter than the header."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.hung = threading.Event()
        self._release = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                data, addr = self.sock.recvfrom(65535)
            except OSError:
                return
            if len(data) < wire.RUDP_HEADER_LEN:
                self.hung.set()
                self._release.wait()  # the bug under test: the loop never reads again
                return
            head, _ = wire.unpack_rudp(data)
            if head.flag == b"S":
                self.sock.sendto(wire.pack_rudp(0, (head.seq + 1) & 0xFFFFFFFF, b"A"), addr)
            elif head.flag == b"D":
                self.sock.sendto(wire.pack_rudp(0, head.seq, b"A"), addr)

    def close(self) -> None:
        self._release.set()
        self.sock.close()


@pytest.fixture
def fragile_app() -> Iterator[FragileAppServer]:
    server = FragileAppServer()
    yield server
    server.close()


@pytest.fixture
def fragile_rudp() -> Iterator[FragileRudpServer]:
    server = FragileRudpServer()
    yield server
    server.close()


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
