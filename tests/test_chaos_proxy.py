"""The chaos relay on real loopback sockets (ephemeral ports only) and its command line."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from stacklab.cli import cli
from stacklab.commands.chaos import build_impairments, parse_hostport, split_direction
from stacklab.errors import UserError
from stacklab.services.base import BindError
from stacklab.sim.impairment import Blackhole, Impairment
from stacklab.tools.chaos import ChaosProxy

from conftest import wait_for

pytestmark = pytest.mark.timeout(60)


class EchoServer:
    """A UDP echo server on an ephemeral port, for relaying through the proxy."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.address = self.sock.getsockname()
        self.peers: set[tuple[str, int]] = set()
        self.received = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            self.received += 1
            self.peers.add(addr)
            self.sock.sendto(data, addr)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    yield server
    server.close()


def client_socket(timeout: float = 2.0) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(timeout)
    return s


def test_clean_relay_echoes_and_counts(echo: EchoServer) -> None:
    with ChaosProxy(("127.0.0.1", 0), echo.address) as proxy:
        assert isinstance(proxy, ChaosProxy)
        port = proxy.address[1]
        assert port != 0
        c = client_socket()
        try:
            for i in range(20):
                c.sendto(b"ping %d" % i, proxy.address)
                data, src = c.recvfrom(65535)
                assert data == b"ping %d" % i
                assert src == proxy.address
        finally:
            c.close()
        assert proxy.stats["up.received"] == proxy.stats["up.delivered"] == 20
        assert proxy.stats["down.received"] == proxy.stats["down.delivered"] == 20
        assert proxy.stats["clients"] == 1


def test_many_clients_get_their_own_upstream_mapping(echo: EchoServer) -> None:
    with ChaosProxy(("127.0.0.1", 0), echo.address) as proxy:
        assert isinstance(proxy, ChaosProxy)
        clients = [client_socket() for _ in range(5)]
        try:
            for i, c in enumerate(clients):
                c.sendto(f"client {i}".encode(), proxy.address)
            for i, c in enumerate(clients):
                assert c.recvfrom(100)[0] == f"client {i}".encode()
        finally:
            for c in clients:
                c.close()
        assert proxy.stats["clients"] == 5
        assert proxy.clients == 5
        assert len(echo.peers) == 5  # the server sees one peer per client


def _send_and_collect(proxy: ChaosProxy, n: int) -> None:
    """Send ``n`` datagrams in small batches (so no kernel buffer overflows) and wait for echoes."""
    c = client_socket(timeout=0.05)
    try:
        for i in range(n):
            c.sendto(b"%05d" % i + bytes(200), proxy.address)
            if i % 20 == 19 or i == n - 1:
                wait_for(
                    lambda: (
                        proxy.stats["up.received"] == i + 1  # noqa: B023
                        and proxy.stats["down.received"] == proxy.stats["up.delivered"]
                    )
                )
    finally:
        c.close()


def test_same_seed_gives_the_same_decision_log(echo: EchoServer, tmp_path: Path) -> None:
    imp = Impairment(loss=0.3, duplicate=0.1, corrupt=0.1)
    logs = []
    for run in range(2):
        path = tmp_path / f"decisions{run}.jsonl"
        proxy = ChaosProxy(
            ("127.0.0.1", 0), echo.address, imp, Impairment(), seed=42, log_path=path
        )
        proxy.start()
        try:
            # One datagram at a time so the down-direction order is fixed too.
            c = client_socket(timeout=0.05)
            for i in range(150):
                before = proxy.stats["down.received"]
                c.sendto(b"%05d" % i, proxy.address)
                wait_for(lambda: proxy.stats["up.received"] == i + 1)  # noqa: B023
                delivered = proxy.stats["up.delivered"]
                wait_for(lambda: proxy.stats["down.received"] == delivered)  # noqa: B023
                assert proxy.stats["down.received"] >= before
            c.close()
        finally:
            proxy.stop()
        records = [json.loads(line) for line in path.read_text().splitlines()]
        logs.append(
            [{k: v for k, v in r.items() if k not in ("t", "client", "via")} for r in records]
        )
        assert proxy.stats["up.loss"] > 20
    assert logs[0] == logs[1]
    assert {r["verdict"] for r in logs[0]} == {"deliver", "loss"}
    assert any(r.get("duplicate") for r in logs[0])
    assert any(r.get("corrupt") for r in logs[0])


def test_loss_through_the_relay_matches_the_probability(echo: EchoServer) -> None:
    with ChaosProxy(("127.0.0.1", 0), echo.address, Impairment(loss=0.2), seed=1) as proxy:
        assert isinstance(proxy, ChaosProxy)
        _send_and_collect(proxy, 1000)
        lost = proxy.stats["up.loss"]
        assert 150 < lost < 250  # Binomial(1000, 0.2): sd 12.6
        assert proxy.stats["up.delivered"] == 1000 - lost
        assert proxy.stats["down.received"] == 1000 - lost


def test_delay_is_applied_both_ways(echo: EchoServer) -> None:
    delayed = Impairment(delay_min=0.05, delay_max=0.05)
    with ChaosProxy(("127.0.0.1", 0), echo.address, delayed, delayed) as proxy:
        assert isinstance(proxy, ChaosProxy)
        c = client_socket()
        try:
            start = time.monotonic()
            c.sendto(b"slow", proxy.address)
            assert c.recvfrom(100)[0] == b"slow"
            assert time.monotonic() - start >= 0.1
        finally:
            c.close()


def test_delayed_datagrams_keep_their_order_without_jitter(echo: EchoServer) -> None:
    delayed = Impairment(delay_min=0.02, delay_max=0.02)
    with ChaosProxy(("127.0.0.1", 0), echo.address, delayed) as proxy:
        assert isinstance(proxy, ChaosProxy)
        c = client_socket()
        try:
            for i in range(50):
                c.sendto(b"%03d" % i, proxy.address)
            got = [c.recvfrom(100)[0] for _ in range(50)]
        finally:
            c.close()
        assert got == [b"%03d" % i for i in range(50)]


def test_duplication_and_corruption_reach_the_client(echo: EchoServer) -> None:
    with ChaosProxy(
        ("127.0.0.1", 0), echo.address, Impairment(duplicate=1.0), Impairment(corrupt=1.0)
    ) as proxy:
        assert isinstance(proxy, ChaosProxy)
        c = client_socket()
        try:
            payload = bytes(range(64))
            c.sendto(payload, proxy.address)
            first, second = c.recvfrom(100)[0], c.recvfrom(100)[0]
        finally:
            c.close()
        assert echo.received == 2  # duplicated on the way up
        for echoed in (first, second):
            assert len(echoed) == len(payload) and echoed != payload  # corrupted on the way down


def test_blackhole_drops_everything_inside_the_window(echo: EchoServer) -> None:
    hole = Impairment(blackholes=(Blackhole(0.0, 3600.0),))
    with ChaosProxy(("127.0.0.1", 0), echo.address, hole) as proxy:
        assert isinstance(proxy, ChaosProxy)
        c = client_socket(timeout=0.05)
        try:
            for _ in range(10):
                c.sendto(b"x", proxy.address)
            wait_for(lambda: proxy.stats["up.received"] == 10)
        finally:
            c.close()
        assert proxy.stats["up.blackhole"] == 10
        assert echo.received == 0


def test_rate_limit_queue_drops_the_excess(echo: EchoServer) -> None:
    slow = Impairment(rate_bps=80_000, queue_limit=5)  # 1000 bytes take 0.1 s
    with ChaosProxy(("127.0.0.1", 0), echo.address, slow) as proxy:
        assert isinstance(proxy, ChaosProxy)
        c = client_socket()
        try:
            for _ in range(20):
                c.sendto(bytes(1000), proxy.address)
            wait_for(lambda: proxy.stats["up.received"] == 20)
            # A burst of 20 arrives faster than 0.1 s per datagram: most overflow the queue.
            assert proxy.stats["up.queue"] >= 10
            wait_for(lambda: echo.received == proxy.stats["up.delivered"])
        finally:
            c.close()


def test_idle_mappings_expire(echo: EchoServer) -> None:
    with ChaosProxy(("127.0.0.1", 0), echo.address, idle_timeout=0.1) as proxy:
        assert isinstance(proxy, ChaosProxy)
        c = client_socket()
        try:
            c.sendto(b"hi", proxy.address)
            assert c.recvfrom(10)[0] == b"hi"
            wait_for(lambda: proxy.stats["expired"] == 1)
            assert proxy.clients == 0
            c.sendto(b"again", proxy.address)  # a new mapping opens transparently
            assert c.recvfrom(10)[0] == b"again"
            assert proxy.stats["clients"] == 2
        finally:
            c.close()


def test_stop_is_idempotent_and_frees_the_port(echo: EchoServer) -> None:
    # An hour of delay: a stop() that waited for the pending datagram would hit the test timeout.
    proxy = ChaosProxy(("127.0.0.1", 0), echo.address, Impairment(delay_min=3600, delay_max=3600))
    proxy.start()
    addr = proxy.address
    c = client_socket()
    c.sendto(b"pending", addr)  # leaves a datagram waiting in the scheduler
    wait_for(lambda: proxy.stats["up.received"] == 1)
    c.close()
    proxy.stop()
    proxy.stop()
    rebound = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rebound.bind(addr)
    rebound.close()


def test_bind_error_names_the_address(echo: EchoServer) -> None:
    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    taken.bind(("127.0.0.1", 0))
    try:
        proxy = ChaosProxy(taken.getsockname(), echo.address)
        with pytest.raises(BindError, match="address in use"):
            proxy.start()
        proxy.stop()
    finally:
        taken.close()


def test_unreachable_upstream_is_counted_not_fatal() -> None:
    closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    closed.bind(("127.0.0.1", 0))
    dead = closed.getsockname()
    closed.close()
    with ChaosProxy(("127.0.0.1", 0), dead) as proxy:
        assert isinstance(proxy, ChaosProxy)
        c = client_socket()
        try:
            for _ in range(3):
                c.sendto(b"anyone?", proxy.address)
            wait_for(lambda: proxy.stats["up.received"] == 3)
        finally:
            c.close()
        assert proxy.stats["errors"] == 0


# -- command line ------------------------------------------------------------


def test_direction_prefixes() -> None:
    assert split_direction("0.1") == (("up", "down"), "0.1")
    assert split_direction("up=0.1") == (("up",), "0.1")
    assert split_direction("both=5:10") == (("up", "down"), "5:10")
    with pytest.raises(UserError):
        split_direction("sideways=0.1")


def test_build_impairments_per_direction() -> None:
    imps = build_impairments(
        loss=["0.1", "down=0.3"],
        delay=["5:20"],
        burst=["up=0.01:0.2"],
        rate=["down=1000"],
        blackhole=["2:1", "up=10:5"],
    )
    up, down = imps["up"], imps["down"]
    assert up.loss == 0.1 and down.loss == 0.3
    assert up.delay_min == down.delay_min == 0.005 and up.delay_max == 0.02
    assert up.burst is not None and up.burst.p_exit == 0.2 and down.burst is None
    assert down.rate_bps == 1e6 and up.rate_bps is None
    assert up.blackholes == (Blackhole(2, 1), Blackhole(10, 5))
    assert down.blackholes == (Blackhole(2, 1),)


@pytest.mark.parametrize(
    "args",
    [
        ["--loss", "2"],
        ["--loss", "abc"],
        ["--delay", "20:5"],
        ["--delay", "1:2:3"],
        ["--burst", "0.5"],
        ["--rate", "0"],
        ["--queue", "1.5"],
        ["--blackhole", "3"],
        ["--listen", "nowhere"],
        ["--upstream", "127.0.0.1:99999"],
        ["--loss", "left=0.1"],
    ],
)
def test_bad_options_exit_2_with_one_line(args: list[str]) -> None:
    result = CliRunner().invoke(cli, ["chaos", *args, "--duration", "0"])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output


def test_parse_hostport_ipv6() -> None:
    assert parse_hostport("[::1]:53", "x") == ("::1", 53)


def test_cli_relays_and_prints_counters(echo: EchoServer, tmp_path: Path) -> None:
    # Find a free port for the CLI's proxy by binding and releasing it: the CLI
    # prints its port too, but the test needs it before the command returns.
    log_path = tmp_path / "log.jsonl"
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    got: list[bytes] = []

    def talk() -> None:
        c = client_socket(timeout=0.2)
        try:
            deadline = time.monotonic() + 5
            while not got and time.monotonic() < deadline:
                c.sendto(b"cli", ("127.0.0.1", port))
                try:
                    got.append(c.recvfrom(10)[0])
                except TimeoutError:
                    continue
        finally:
            c.close()

    talker = threading.Thread(target=talk)
    talker.start()
    result = CliRunner().invoke(
        cli,
        [
            "chaos",
            "--listen",
            f"127.0.0.1:{port}",
            "--upstream",
            f"{echo.address[0]}:{echo.address[1]}",
            "--delay",
            "1:2",
            "--seed",
            "3",
            "--log",
            str(log_path),
            "--duration",
            "1.5",
        ],
    )
    talker.join()
    assert result.exit_code == 0, result.output
    assert got == [b"cli"]
    assert "chaos counters" in result.output and "received" in result.output
    assert "delay 1-2 ms" in result.output
    first = json.loads(log_path.read_text().splitlines()[0])
    assert first["dir"] == "up" and first["verdict"] == "deliver"


def test_cli_process_stops_cleanly_on_sigterm(echo: EchoServer) -> None:
    import re
    import signal
    import subprocess
    import sys

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "stacklab",
            "chaos",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            f"{echo.address[0]}:{echo.address[1]}",
            "--loss",
            "down=0.0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        match = re.search(r"chaos: 127\.0\.0\.1:(\d+) ->", first)
        assert match, first
        port = int(match.group(1))
        c = client_socket()
        try:
            c.sendto(b"through a process", ("127.0.0.1", port))
            assert c.recvfrom(100)[0] == b"through a process"
        finally:
            c.close()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "chaos counters" in out
    assert re.search(r"received\s+│\s+1\s+│\s+1", out), out
    assert "Traceback" not in err


def test_log_names_rudp_packets(echo: EchoServer, tmp_path: Path) -> None:
    from stacklab.wire import pack_rudp

    path = tmp_path / "log.jsonl"
    proxy = ChaosProxy(("127.0.0.1", 0), echo.address, log_path=path)
    proxy.start()
    try:
        c = client_socket()
        try:
            c.sendto(pack_rudp(100, 0, b"S"), proxy.address)
            assert c.recvfrom(100)[0] == pack_rudp(100, 0, b"S")
            c.sendto(b"not rudp", proxy.address)
            c.recvfrom(100)
        finally:
            c.close()
    finally:
        proxy.stop()
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert records[0]["rudp"] == {"seq": 100, "ack": 0, "flag": "S", "len": 0}
    assert records[1]["rudp"]["flag"] == "S" and records[1]["dir"] == "down"
    assert "rudp" not in records[2]


def test_a_drop_rule_drops_its_target_and_keeps_the_random_draws(
    echo: EchoServer, tmp_path: Path
) -> None:
    """A targeted drop is logged with its rule; the seed's other decisions do not move."""
    imp = Impairment(loss=0.3)
    logs = []
    for rule in (None, lambda direction, data: "second" if data == b"00002" else None):
        path = tmp_path / f"rule-{rule is None}.jsonl"
        proxy = ChaosProxy(
            ("127.0.0.1", 0), echo.address, imp, Impairment(), seed=5, log_path=path, drop_rule=rule
        )
        proxy.start()
        try:
            c = client_socket(timeout=0.05)
            for i in range(40):
                c.sendto(b"%05d" % i, proxy.address)
                wait_for(lambda: proxy.stats["up.received"] == i + 1)  # noqa: B023
            c.close()
        finally:
            proxy.stop()
        logs.append([json.loads(line) for line in path.read_text().splitlines()])
    plain, ruled = ([r for r in log if r["dir"] == "up"] for log in logs)
    assert plain[2]["verdict"] == "deliver"  # seed 5 delivers the third datagram...
    assert (ruled[2]["verdict"], ruled[2]["rule"]) == ("rule", "second")  # ...the rule drops it
    assert [r["verdict"] for r in plain[3:]] == [r["verdict"] for r in ruled[3:]]
    assert all("rule" not in r for i, r in enumerate(ruled) if i != 2)
