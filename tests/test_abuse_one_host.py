"""One host cannot deny the services to the others.

Each attack comes from one address (127.0.0.9) while a legitimate client on
another address (127.0.0.1) must still be served, inside a private network
namespace (the whole of 127.0.0.0/8 is local there, and nothing else runs):

- app-tcp: 300 idle connections; every fetch from elsewhere succeeds, the
  attacker's connections over its share get the framed busy error, and the
  refusals make a handful of log lines, not one per connection;
- origin: 300 idle connections; the thread count stays bounded, a request
  from elsewhere is served, and the idle connections are closed after the
  idle timeout;
- app-rudp: 200 original-style sessions that never ACK; the attacker holds
  no more than its share (each new session of its replaces its oldest), new
  clients from elsewhere (original-style and stacklab's) are served at once,
  and a full table gets the documented busy answer, not silence.

This file is also the script the namespace runs (``python test_abuse_one_host.py
PHASE``), which prints one JSON line of results.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import socket
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from stacklab.tools.netns import unavailable_reason

ATTACKER = "127.0.0.9"
SERVER = "127.0.0.3"
CONTENT = bytes(range(256)) * 40  # 10 KiB
URL = "http://origin.test/file"


def until(condition: Callable[[], bool], timeout: float) -> bool:
    """Wait for ``condition`` (re-checked every few milliseconds); whether it came true."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not condition():
        if time.monotonic() > deadline:
            return False
        pause.wait(0.005)
    return True


class WarningCounter(logging.Handler):
    """Counts the WARNING records the services emit during an attack."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


def attacker_tcp(address: tuple[str, int]) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((ATTACKER, 0))
    sock.connect(address)
    return sock


# -- the namespace side ------------------------------------------------------------------


def tcp_phase(warnings: WarningCounter) -> dict[str, object]:
    from stacklab.config import AppTcpSettings
    from stacklab.services.app_tcp import TcpAppServer
    from stacklab.services.client import fetch_tcp
    from stacklab.services.fetcher import FetchPolicy

    server = TcpAppServer(
        AppTcpSettings(host=SERVER, port=0, read_timeout=30.0),
        FetchPolicy(allow=("origin.test:80",)),
        fetcher=lambda url, policy: CONTENT,
    )
    server.start()
    idle: list[socket.socket] = []
    try:
        for _ in range(300):
            idle.append(attacker_tcp(server.address))
        share = server.settings.max_connections_per_client
        until(lambda: server.stats["busy_client"] >= 300 - share, 10)
        busy_replies = 0
        for sock in idle[share:]:
            sock.settimeout(5)
            data = b""
            while chunk := sock.recv(4096):
                data += chunk
            busy_replies += data.endswith(b"ERROR: Server busy, try again later")
        started = time.monotonic()
        fetched = [fetch_tcp(server.address, URL, timeout=5) == CONTENT for _ in range(19)]
        return {
            "fetched": fetched,
            "fetch_seconds": time.monotonic() - started,
            "busy_replies": busy_replies,
            "busy_client": server.stats["busy_client"],
            "share": share,
            "warnings": warnings.count,
        }
    finally:
        for sock in idle:
            sock.close()
        server.stop()


def origin_phase(warnings: WarningCounter) -> dict[str, object]:
    import tempfile

    from stacklab.services.origin import OriginServer

    with tempfile.TemporaryDirectory() as root:
        (Path(root) / "file").write_bytes(CONTENT)
        server = OriginServer(SERVER, 0, root, idle_timeout=1.0)
        server.start()
        baseline = threading.active_count()
        idle: list[socket.socket] = []
        try:
            for _ in range(300):
                idle.append(attacker_tcp(server.address))
            until(
                lambda: server.stats["busy_client"] >= 300 - server.max_connections_per_client, 10
            )
            peak_threads = threading.active_count() - baseline
            host, port = server.address
            with urllib.request.urlopen(f"http://{host}:{port}/file", timeout=5) as answer:
                served = answer.read() == CONTENT

            def closed(sock: socket.socket) -> bool:
                sock.settimeout(10)
                try:
                    while sock.recv(4096):
                        pass
                except OSError:
                    pass
                return True

            started = time.monotonic()
            all_closed = all(closed(sock) for sock in idle)  # the server hung up on each
            closed_after = time.monotonic() - started
            threads_back = until(lambda: threading.active_count() <= baseline + 1, 10)
            return {
                "served": served,
                "peak_threads": peak_threads,
                "all_closed": all_closed,
                "closed_after": closed_after,
                "threads_back": threads_back,
                "busy_client": server.stats["busy_client"],
                "warnings": warnings.count,
            }
        finally:
            for sock in idle:
                sock.close()
            server.stop()


def rudp_phase(warnings: WarningCounter) -> dict[str, object]:
    from stacklab.config import RudpSettings
    from stacklab.services.app_rudp import RudpAppServer
    from stacklab.services.fetcher import FetchPolicy
    from stacklab.services.rudp_client import ServerBusy, fetch_rudp
    from stacklab.wire import is_busy_answer, pack_rudp

    server = RudpAppServer(
        RudpSettings(host=SERVER, port=0, max_sessions=300),
        FetchPolicy(allow=("origin.test:80",)),
        fetcher=lambda url, policy: CONTENT,
    )
    server.start()
    attackers: list[socket.socket] = []
    try:
        busy = 0
        for _ in range(200):  # the original client's handshake and command, then silence
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((ATTACKER, 0))
            sock.settimeout(5)
            attackers.append(sock)
            sock.sendto(pack_rudp(100, 0, b"S"), server.address)
            busy += is_busy_answer(sock.recv(2048))
            sock.sendto(pack_rudp(101, 0, b"D", f"FETCH {URL}".encode()), server.address)
            busy += is_busy_answer(sock.recv(2048))  # the command's ACK, or busy
        share = server.settings.max_sessions_per_client
        until(lambda: server.stats["sessions"] >= 200, 10)
        held = len(server.sessions)
        evicted = server.stats["evicted"]
        started = time.monotonic()
        legacy = fetch_rudp(server.address, URL, legacy=True, answer_timeout=5) == CONTENT
        stacklab = fetch_rudp(server.address, URL, answer_timeout=5) == CONTENT
        legit_seconds = time.monotonic() - started
        # A full table: another host's client gets the busy answer, not silence.
        server.settings.max_sessions = len(server.sessions)
        started = time.monotonic()
        try:
            fetch_rudp(server.address, URL, answer_timeout=5)
            full_answer = "served"
        except ServerBusy:
            full_answer = "busy"
        busy_seconds = time.monotonic() - started
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as original:
            original.settimeout(5)
            original.sendto(pack_rudp(100, 0, b"S"), server.address)
            original_busy = original.recv(2048) == pack_rudp(0, 101, b"F")
        return {
            "attacker_busy": busy,
            "evicted": evicted,
            "share": share,
            "held": held,
            "legacy": legacy,
            "stacklab": stacklab,
            "legit_seconds": legit_seconds,
            "full_answer": full_answer,
            "busy_seconds": busy_seconds,
            "original_busy": original_busy,
            "warnings": warnings.count,
        }
    finally:
        for sock in attackers:
            sock.close()
        server.stop()


PHASES = {"tcp": tcp_phase, "origin": origin_phase, "rudp": rudp_phase}


def main(phase: str) -> dict[str, object]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))
    warnings = WarningCounter()
    logging.getLogger().addHandler(warnings)
    logging.getLogger().setLevel(logging.WARNING)
    return PHASES[phase](warnings)


# -- the test side -----------------------------------------------------------------------


def run_phase(phase: str) -> dict[str, object]:
    from stacklab.tools.netns import private_netns, run_in_netns

    with private_netns("stacklab-dos") as ns:
        result = run_in_netns(ns, [sys.executable, __file__, phase], timeout=90)
    assert result.returncode == 0, result.stdout
    report: dict[str, object] = json.loads(result.stdout.strip().splitlines()[-1])
    print("\n" + json.dumps(report))
    return report


needs_netns = pytest.mark.skipif(
    unavailable_reason() is not None, reason=unavailable_reason() or ""
)


@needs_netns
@pytest.mark.timeout(120)
def test_idle_tcp_connections_from_one_host_do_not_block_the_others() -> None:
    report = run_phase("tcp")
    assert report["fetched"] == [True] * 19
    assert float(report["fetch_seconds"]) < 10  # type: ignore[arg-type]
    beyond = 300 - int(report["share"])  # type: ignore[call-overload]
    assert report["busy_client"] == beyond and report["busy_replies"] == beyond
    assert int(report["warnings"]) <= 3  # type: ignore[call-overload]


@needs_netns
@pytest.mark.timeout(120)
def test_idle_origin_connections_are_bounded_and_timed_out() -> None:
    report = run_phase("origin")
    assert report["served"] is True
    assert int(report["peak_threads"]) <= 70  # type: ignore[call-overload]
    assert report["all_closed"] is True and report["threads_back"] is True
    assert float(report["closed_after"]) < 8  # type: ignore[arg-type]
    assert int(report["busy_client"]) >= 300 - 64  # type: ignore[call-overload]
    assert int(report["warnings"]) <= 3  # type: ignore[call-overload]


@needs_netns
@pytest.mark.timeout(120)
def test_rudp_sessions_that_never_ack_from_one_host_leave_others_served() -> None:
    report = run_phase("rudp")
    share = int(report["share"])  # type: ignore[call-overload]
    assert report["held"] == share
    assert report["attacker_busy"] == 0 and report["evicted"] == 200 - share
    assert report["legacy"] is True and report["stacklab"] is True
    assert float(report["legit_seconds"]) < 5  # type: ignore[arg-type]
    assert report["full_answer"] == "busy" and float(report["busy_seconds"]) < 2  # type: ignore[arg-type]
    assert report["original_busy"] is True
    assert int(report["warnings"]) <= 3  # type: ignore[call-overload]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="one-host denial-of-service attacks")
    parser.add_argument("phase", choices=sorted(PHASES))
    args = parser.parse_args()
    print(json.dumps(main(args.phase)))
