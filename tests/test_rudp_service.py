"""The RUDP app server and client end to end over loopback.

Peers written here from WIRE.md alone (an original-format client and an
original-format server) prove compatibility in both directions; everything
binds to port 0 and waits on conditions, never on fixed sleeps.
"""

from __future__ import annotations

import json
import random
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from stacklab.config import RudpSettings
from stacklab.services.app_rudp import RudpAppServer
from stacklab.services.client import ClientError, ServerError
from stacklab.services.fetcher import FetchError, FetchPolicy
from stacklab.services.rudp_client import RudpTransferError, fetch_rudp
from stacklab.sim.impairment import Impairment
from stacklab.tools.chaos import ChaosProxy
from stacklab.transport.options import ORIGINAL, STACKLAB_DEFAULT
from stacklab.wire import ERROR_UNKNOWN_COMMAND, RUDP_HEADER, fetch_error_text, pack_rudp

from conftest import wait_for

pytestmark = pytest.mark.timeout(60)

FILES = {
    "http://origin.test/small": b"Hello! This is a test file for the Computer Networks FTP project.",
    "http://origin.test/big": random.Random(5).randbytes(300_000),
    "http://origin.test/odd": random.Random(6).randbytes(500 * 7),  # exact multiple of 500
    "http://origin.test/empty": b"",
}
BIG = FILES["http://origin.test/big"]


def fake_fetch(url: str, policy: FetchPolicy) -> bytes:
    if url in FILES:
        return FILES[url]
    raise FetchError("HTTP Error 404: File not found")


def start_server(**settings: object) -> RudpAppServer:
    defaults: dict[str, object] = {"host": "127.0.0.1", "port": 0}
    defaults.update(settings)
    server = RudpAppServer(
        RudpSettings(**defaults),  # type: ignore[arg-type]
        FetchPolicy(allow=("origin.test:80",)),
        fetcher=fake_fetch,
    )
    server.start()
    return server


@pytest.fixture(scope="module")
def server() -> Iterator[RudpAppServer]:
    srv = start_server()
    yield srv
    srv.stop()


# -- the original client, from WIRE.md --------------------------------------------------


def original_client(addr: tuple[str, int], command: bytes, timeout: float = 5.0) -> bytes:
    """ISN 100, a 2048-byte buffer, ACK = seq in order, expected - 1 otherwise; returns the file."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(RUDP_HEADER.pack(100, 0, b"S", 0), addr)
        data, _ = sock.recvfrom(2048)
        assert data == RUDP_HEADER.pack(0, 101, b"A", 0)
        sock.sendto(RUDP_HEADER.pack(101, 0, b"D", len(command)) + command, addr)
        data, _ = sock.recvfrom(2048)
        assert data == RUDP_HEADER.pack(0, 101, b"A", 0)
        expected, chunks = 1, []
        while True:
            data, _ = sock.recvfrom(2048)
            seq, _, flag, length = RUDP_HEADER.unpack_from(data)
            assert length == len(data) - 11 and length <= 500
            if flag == b"F":
                assert seq == expected  # FIN N + 1
                sock.sendto(RUDP_HEADER.pack(0, seq, b"A", 0), addr)
                return b"".join(chunks)
            assert flag == b"D"
            if seq == expected:
                chunks.append(data[11:])
                expected += 1
                sock.sendto(RUDP_HEADER.pack(0, seq, b"A", 0), addr)
            else:
                sock.sendto(RUDP_HEADER.pack(0, expected - 1, b"A", 0), addr)


@pytest.mark.parametrize("url", ["small", "big", "odd", "empty"])
def test_original_client_gets_files_intact(server: RudpAppServer, url: str) -> None:
    full = f"http://origin.test/{url}"
    assert original_client(server.address, f"FETCH {full}".encode()) == FILES[full]


def test_original_client_gets_the_error_texts(server: RudpAppServer) -> None:
    url = "http://origin.test/missing"
    assert (
        original_client(server.address, f"FETCH {url}".encode())
        == fetch_error_text(url, "HTTP Error 404: File not found").encode()
    )
    assert original_client(server.address, b"GET /") == ERROR_UNKNOWN_COMMAND.encode()


# -- stacklab's client against stacklab's server ---------------------------------------------


def test_stacklab_client_negotiates_and_gets_the_file(server: RudpAppServer) -> None:
    stats: dict[str, object] = {}
    assert fetch_rudp(server.address, "http://origin.test/big", stats=stats) == BIG
    assert stats["options"] == STACKLAB_DEFAULT


def test_legacy_mode_uses_the_original_options(server: RudpAppServer) -> None:
    stats: dict[str, object] = {}
    data = fetch_rudp(server.address, "http://origin.test/odd", legacy=True, stats=stats)
    assert data == FILES["http://origin.test/odd"]
    assert stats["options"] == ORIGINAL


@pytest.mark.parametrize("chunk,window", [(1457, 128), (100, 3), (1, 1)])
def test_chunk_and_window_options(server: RudpAppServer, chunk: int, window: int) -> None:
    stats: dict[str, object] = {}
    data = fetch_rudp(
        server.address, "http://origin.test/small", chunk=chunk, window=window, stats=stats
    )
    assert data == FILES["http://origin.test/small"]
    options = stats["options"]
    assert options.chunk_size == chunk and options.max_window == window


def test_server_error_text_becomes_a_server_error(server: RudpAppServer) -> None:
    with pytest.raises(ServerError, match=r"Could not fetch 'http://origin\.test/nope'"):
        fetch_rudp(server.address, "http://origin.test/nope")


@pytest.mark.slow
def test_drop_and_delay_are_seeded_and_the_file_still_arrives(server: RudpAppServer) -> None:
    url = "http://origin.test/big"
    data = fetch_rudp(server.address, url, drop=0.3, seed=11, chunk=1400)
    assert data == BIG
    small = "http://origin.test/small"
    assert fetch_rudp(server.address, small, delay=(0.01, 0.03), seed=3) == FILES[small]


def test_many_clients_at_once(server: RudpAppServer) -> None:
    results: dict[int, bytes | Exception] = {}

    def one(i: int) -> None:
        try:
            results[i] = fetch_rudp(server.address, "http://origin.test/big", legacy=i % 2 == 0)
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == dict.fromkeys(range(8), BIG)
    wait_for(lambda: not server.sessions)


def test_no_server_is_a_clean_error() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        addr = s.getsockname()
    with pytest.raises(ClientError, match=r"port unreachable|no answer"):
        fetch_rudp(addr, "http://origin.test/small", initial_rto=0.05, max_timeouts=3)


def test_a_silent_server_makes_the_client_give_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        with pytest.raises(RudpTransferError, match="no answer to the SYN after 3 attempts"):
            fetch_rudp(
                silent.getsockname(),
                "http://origin.test/small",
                initial_rto=0.05,
                min_rto=0.01,
                max_timeouts=3,
            )


def test_session_table_is_bounded_and_idle_sessions_are_freed() -> None:
    srv = start_server(max_sessions=1, idle_timeout=1.0)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a:
            a.settimeout(2)
            a.sendto(pack_rudp(100, 0, b"S"), srv.address)
            assert a.recvfrom(2048)[0] == pack_rudp(0, 101, b"A")
            # SYNs are answered without state: the command takes the one slot.
            command = b"FETCH http://origin.test/big"
            a.sendto(pack_rudp(101, 0, b"D", command), srv.address)
            assert a.recvfrom(2048)[0] == pack_rudp(0, 101, b"A")
            with pytest.raises(RudpTransferError):  # the table is full: 0.35 s of tries
                fetch_rudp(
                    srv.address,
                    "http://origin.test/small",
                    initial_rto=0.05,
                    min_rto=0.01,
                    max_timeouts=3,
                )
            assert srv.stats["busy"] >= 1
            wait_for(lambda: not srv.sessions)  # the silent session was freed
            assert (
                fetch_rudp(srv.address, "http://origin.test/small")
                == FILES["http://origin.test/small"]
            )
    finally:
        srv.stop()


def test_garbage_datagrams_do_not_hurt_the_server(server: RudpAppServer) -> None:
    rng = random.Random(9)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as junk:
        for _ in range(200):
            junk.sendto(rng.randbytes(rng.randrange(0, 80)), server.address)
        for flag in (b"D", b"A", b"F", b"S"):
            junk.sendto(pack_rudp(7, 7, flag, b"x" * 5, length=99), server.address)
    assert (
        fetch_rudp(server.address, "http://origin.test/small") == FILES["http://origin.test/small"]
    )
    assert server.stats["errors"] == 0


def test_events_logs_on_both_ends(tmp_path: Path) -> None:
    server_log, client_log = tmp_path / "server.jsonl", tmp_path / "client.jsonl"
    srv = start_server(events_path=str(server_log))
    try:
        before = time.time()
        fetch_rudp(srv.address, "http://origin.test/big", events=str(client_log), drop=0.05, seed=2)
        wait_for(lambda: srv.stats["completed"] == 1)
    finally:
        srv.stop()
    server_events = [json.loads(line) for line in server_log.read_text().splitlines()]
    client_events = [json.loads(line) for line in client_log.read_text().splitlines()]
    names = {e["name"] for e in server_events}
    assert {"rudp:packet_sent", "rudp:ack_received", "recovery:window_changed"} <= names
    assert "rudp:connection_closed" in names
    assert {"rudp:transfer_complete", "rudp:data_delivered"} <= {e["name"] for e in client_events}
    times = [e["time"] for e in server_events]
    assert before - 1 < times[0] <= times[-1] < time.time() + 1  # wall clock, monotonic
    assert all(e["peer"].startswith("127.0.0.1:") for e in server_events)


# -- stacklab's client against an original-format server, from WIRE.md -------------------------


class OriginalServer:
    """Window 5, 500-byte chunks, fixed timeout, ignores SYN payloads (as the original)."""

    def __init__(self, content: bytes, timeout: float = 0.2) -> None:
        self.content = content
        self.timeout = timeout
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.address = self.sock.getsockname()
        self.syn_payloads: list[bytes] = []
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        sock = self.sock
        sock.settimeout(5)
        data, client = sock.recvfrom(2048)
        seq, _, flag, _ = RUDP_HEADER.unpack_from(data)
        self.syn_payloads.append(data[11:])
        sock.sendto(RUDP_HEADER.pack(0, seq + 1, b"A", 0), client)
        data, client = sock.recvfrom(2048)
        cmd_seq = RUDP_HEADER.unpack_from(data)[0]
        sock.sendto(RUDP_HEADER.pack(0, cmd_seq, b"A", 0), client)
        chunks = [self.content[i : i + 500] for i in range(0, len(self.content), 500)]
        base, next_seq, window, n = 1, 1, 1, len(chunks)
        sock.settimeout(self.timeout)
        while base <= n:
            while next_seq < base + window and next_seq <= n:
                c = chunks[next_seq - 1]
                sock.sendto(RUDP_HEADER.pack(next_seq, 0, b"D", len(c)) + c, client)
                next_seq += 1
            try:
                data, _ = sock.recvfrom(2048)
            except TimeoutError:
                window = max(1, window // 2)
                next_seq = base
                continue
            _, ack, flag, _ = RUDP_HEADER.unpack_from(data)
            if flag == b"A" and ack >= base:
                base = ack + 1
                window = min(5, window + 1)
        sock.sendto(RUDP_HEADER.pack(n + 1, 0, b"F", 0), client)
        self.sock.settimeout(2)
        try:
            self.fin_ack = sock.recvfrom(2048)[0]
        except TimeoutError:
            self.fin_ack = b""
        sock.close()


@pytest.mark.parametrize("drop", [0.0, 0.3])
def test_stacklab_client_falls_back_against_an_original_server(drop: float) -> None:
    content = random.Random(4).randbytes(20_000)
    original = OriginalServer(content)
    stats: dict[str, object] = {}
    data = fetch_rudp(original.address, "http://x/", stats=stats, drop=drop, seed=1, linger=0)
    assert data == content
    assert stats["options"] == ORIGINAL
    assert original.syn_payloads and original.syn_payloads[0].startswith(b"{")  # it asked
    original.thread.join(5)
    assert original.fin_ack == RUDP_HEADER.pack(0, 41, b"A", 0)


def test_a_downgrade_is_reported_or_refused_when_integrity_is_required(
    caplog: pytest.LogCaptureFixture,
) -> None:
    content = random.Random(5).randbytes(3_000)
    original = OriginalServer(content)
    with caplog.at_level("WARNING", logger="stacklab.services.rudp_client"):
        assert fetch_rudp(original.address, "http://x/", linger=0) == content
    assert "original options" in caplog.text and "--integrity required" in caplog.text
    original.thread.join(5)
    # an original server's empty SYN-ACK, and nothing more: the strict client stops there
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as strict:
        strict.bind(("127.0.0.1", 0))

        def answer_syn() -> None:
            strict.settimeout(5)
            data, client = strict.recvfrom(2048)
            strict.sendto(
                RUDP_HEADER.pack(0, RUDP_HEADER.unpack_from(data)[0] + 1, b"A", 0), client
            )

        thread = threading.Thread(target=answer_syn, daemon=True)
        thread.start()
        with pytest.raises(RudpTransferError, match="integrity is required"):
            fetch_rudp(strict.getsockname(), "http://x/", require_integrity=True, linger=0)
        thread.join(5)


# -- through the chaos proxy ----------------------------------------------------------------


@pytest.fixture
def chaos(server: RudpAppServer, request: pytest.FixtureRequest) -> Iterator[ChaosProxy]:
    imp = Impairment(**request.param)
    proxy = ChaosProxy(("127.0.0.1", 0), server.address, imp, imp, seed=7)
    proxy.start()
    yield proxy
    proxy.stop()


@pytest.mark.slow
@pytest.mark.parametrize(
    "chaos",
    [
        {"loss": 0.1, "duplicate": 0.05, "reorder": 0.05, "corrupt": 0.02},
        {"corrupt": 0.2, "corrupt_max_bytes": 3},
    ],
    indirect=True,
    ids=["mixed", "corrupt"],
)
def test_through_chaos_every_file_is_intact(chaos: ChaosProxy) -> None:
    assert fetch_rudp(chaos.address, "http://origin.test/big", seed=1) == BIG
    assert chaos.stats["down.corrupt"] + chaos.stats["down.loss"] > 0


@pytest.mark.slow
def test_without_integrity_corruption_is_visible(server: RudpAppServer) -> None:
    """The reason integrity exists: the bare header has no checksum."""
    proxy = ChaosProxy(("127.0.0.1", 0), server.address, None, Impairment(corrupt=0.05), seed=7)
    proxy.start()
    try:
        try:
            data = fetch_rudp(
                proxy.address, "http://origin.test/big", integrity=False, silence_timeout=5
            )
        except ClientError:
            return  # a corrupted header can also derail the transfer: also visible
        assert proxy.stats["down.corrupt"] > 0
        assert data != BIG
    finally:
        proxy.stop()
