"""The TCP app server: byte-exact original exchange, framing edge cases, concurrency, limits."""

from __future__ import annotations

import hashlib
import random
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from stacklab.config import AppTcpSettings
from stacklab.services.app_tcp import TcpAppServer
from stacklab.services.client import fetch_tcp
from stacklab.services.fetcher import FetchPolicy
from stacklab.services.origin import OriginServer
from stacklab.wire import ERROR_UNKNOWN_COMMAND, encode_frame

TEST_FILE = b"Hello! This is a test file for the Computer Networks FTP project."
BIG_SIZE = 20 * 1024 * 1024


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("www")
    (root / "test_file.txt").write_bytes(TEST_FILE)
    (root / "big.bin").write_bytes(random.Random(7).randbytes(BIG_SIZE))
    (root / "medium.bin").write_bytes(random.Random(8).randbytes(300_000))
    return root


@pytest.fixture(scope="module")
def origin(root: Path) -> Iterator[OriginServer]:
    with OriginServer("127.0.0.1", 0, root) as server:
        assert isinstance(server, OriginServer)
        yield server


def start_app(origin: OriginServer, **kwargs: object) -> TcpAppServer:
    host, port = origin.address
    settings = AppTcpSettings(host="127.0.0.3", port=0, **kwargs)  # type: ignore[arg-type]
    server = TcpAppServer(settings, FetchPolicy(allow=(f"{host}:{port}",)))
    server.start()
    return server


@pytest.fixture
def app(origin: OriginServer) -> Iterator[TcpAppServer]:
    server = start_app(origin, read_timeout=5.0)
    yield server
    server.stop()


def url_of(origin: OriginServer, name: str) -> str:
    host, port = origin.address
    return f"http://{host}:{port}/{name}"


def recv_all(sock: socket.socket) -> bytes:
    """What the original client did: read until the server closes."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def original_fetch(
    addr: tuple[str, int], request: bytes, pieces: list[bytes] | None = None
) -> bytes:
    with socket.create_connection(addr, timeout=5) as sock:
        for piece in pieces if pieces is not None else [request]:
            sock.sendall(piece)
        return recv_all(sock)


def test_original_exchange_byte_for_byte(app: TcpAppServer, origin: OriginServer) -> None:
    url = url_of(origin, "test_file.txt")
    request = encode_frame(f"FETCH {url}".encode())
    assert original_fetch(app.address, request) == b"0000000065" + TEST_FILE


@pytest.mark.timeout(60)
def test_request_split_at_every_byte_boundary(app: TcpAppServer, origin: OriginServer) -> None:
    request = encode_frame(f"FETCH {url_of(origin, 'test_file.txt')}".encode())
    for cut in range(1, len(request)):
        with socket.create_connection(app.address, timeout=5) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(request[:cut])
            sock.sendall(request[cut:])
            assert recv_all(sock) == b"0000000065" + TEST_FILE, cut


def test_request_byte_by_byte(app: TcpAppServer, origin: OriginServer) -> None:
    request = encode_frame(f"FETCH {url_of(origin, 'test_file.txt')}".encode())
    pieces = [request[i : i + 1] for i in range(len(request))]
    assert original_fetch(app.address, request, pieces) == b"0000000065" + TEST_FILE


def test_error_texts_are_the_original_ones(app: TcpAppServer, origin: OriginServer) -> None:
    unknown = original_fetch(app.address, encode_frame(b"GET /"))
    assert unknown == b"0000000040" + ERROR_UNKNOWN_COMMAND.encode()
    assert ERROR_UNKNOWN_COMMAND == "ERROR: Unknown command. Use: FETCH <url>"
    missing = url_of(origin, "missing.txt")
    body = original_fetch(app.address, encode_frame(f"FETCH {missing}".encode()))[10:]
    assert body == f"ERROR: Could not fetch '{missing}'. Reason: HTTP 404 File not found".encode()
    ssrf = original_fetch(app.address, encode_frame(b"FETCH http://169.254.169.254/latest/"))[10:]
    assert ssrf == (
        b"ERROR: Could not fetch 'http://169.254.169.254/latest/'. "
        b"Reason: host 169.254.169.254:80 is not on the allowlist"
    )


@pytest.mark.parametrize(
    ("request_bytes", "expected"),
    [
        (b"00000abc41FETCH x", b"Malformed request frame: bad frame prefix"),
        (b"-000000041FETCH x", b"Malformed request frame: bad frame prefix"),
        (b"9999999999FETCH x", b"frame length 9999999999 exceeds the limit of 65536 bytes"),
        (b"\xff\xfe\xfd\xfc\xfb\xfa\xf9\xf8\xf7\xf6", b"Malformed request frame"),
    ],
)
def test_malformed_prefix_gets_an_error_frame_then_close(
    app: TcpAppServer, request_bytes: bytes, expected: bytes
) -> None:
    reply = original_fetch(app.address, request_bytes)
    assert int(reply[:10]) == len(reply) - 10
    assert reply[10:].startswith(b"ERROR: ") and expected in reply
    assert app.stats["malformed"] == 1


@pytest.mark.timeout(30)
def test_stalled_and_silent_clients_do_not_block_others(origin: OriginServer) -> None:
    server = start_app(origin, read_timeout=0.5)
    try:
        silent = socket.create_connection(server.address, timeout=5)
        stalled = socket.create_connection(server.address, timeout=5)
        stalled.sendall(b"0000000041FETCH http://")  # stops mid-frame
        # meanwhile a normal client is served at once
        assert fetch_tcp(server.address, url_of(origin, "test_file.txt"), timeout=5) == TEST_FILE
        for sock in (silent, stalled):
            with sock:
                reply = recv_all(sock)  # the server times the client out and closes
                assert reply[10:] == b"ERROR: Timed out waiting for the request"
        assert server.stats["timeouts"] == 2
    finally:
        server.stop()


@pytest.mark.timeout(60)
def test_fifty_concurrent_fetches_are_all_intact(
    app: TcpAppServer, origin: OriginServer, root: Path
) -> None:
    expected = (root / "medium.bin").read_bytes()
    url = url_of(origin, "medium.bin")
    barrier = threading.Barrier(50)

    def one(_: int) -> str:
        barrier.wait(timeout=20)
        return hashlib.sha256(fetch_tcp(app.address, url, timeout=20)).hexdigest()

    with ThreadPoolExecutor(max_workers=50) as pool:
        digests = list(pool.map(one, range(50)))
    assert digests == [hashlib.sha256(expected).hexdigest()] * 50
    assert app.stats["replies"] == 50


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_big_transfer_is_intact(app: TcpAppServer, origin: OriginServer, root: Path) -> None:
    seen: list[tuple[int, int]] = []
    data = fetch_tcp(
        app.address,
        url_of(origin, "big.bin"),
        timeout=20,
        progress=lambda d, t: seen.append((d, t)),
    )
    assert len(data) == BIG_SIZE
    assert hashlib.sha256(data).digest() == hashlib.sha256((root / "big.bin").read_bytes()).digest()
    assert seen[0] == (0, BIG_SIZE) and seen[-1] == (BIG_SIZE, BIG_SIZE)


def test_connections_above_the_limit_get_busy(origin: OriginServer) -> None:
    server = start_app(origin, max_connections=1, read_timeout=5.0)
    try:
        holder = socket.create_connection(server.address, timeout=5)
        with holder, socket.create_connection(server.address, timeout=5) as second:
            assert recv_all(second)[10:] == b"ERROR: Server busy, try again later"
        assert server.stats["busy"] == 1
    finally:
        server.stop()


def test_response_cap_and_stop_frees_the_port(origin: OriginServer) -> None:
    host, port = origin.address
    settings = AppTcpSettings(host="127.0.0.1", port=0)
    server = TcpAppServer(settings, FetchPolicy(allow=(f"{host}:{port}",), max_bytes=1000))
    with server:
        body = original_fetch(
            server.address, encode_frame(f"FETCH {url_of(origin, 'medium.bin')}".encode())
        )
        assert body.endswith(b"Reason: response exceeds the limit of 1000 bytes")
        addr = server.address
    with socket.create_server(addr):
        pass  # the port is free again after stop()


@pytest.mark.parametrize(
    ("request_bytes", "expected"),
    [
        (encode_frame(b"\xff\xfe\xfdFETCH"), ERROR_UNKNOWN_COMMAND.encode()),
        (
            encode_frame(b"FETCH"),
            b"ERROR: Could not fetch ''. Reason: scheme '(none)' is not allowed",
        ),
        (encode_frame(b"fetch http://x/"), ERROR_UNKNOWN_COMMAND.encode()),
        (
            encode_frame(b"FETCH http://127.0.0.1:9/" + b"a" * 60_000),
            b"Reason: host 127.0.0.1:9 is not on the allowlist",
        ),
        (encode_frame(b"FETCH " + b"http://[" * 3000), b"Reason: malformed URL: Invalid IPv6 URL"),
    ],
)
def test_odd_commands_get_the_documented_error(
    app: TcpAppServer, request_bytes: bytes, expected: bytes
) -> None:
    reply = original_fetch(app.address, request_bytes)
    assert int(reply[:10]) == len(reply) - 10
    assert reply[10:].startswith(b"ERROR: ") and reply.endswith(expected)


def test_truncated_request_is_dropped_and_the_server_keeps_serving(
    app: TcpAppServer, origin: OriginServer
) -> None:
    with socket.create_connection(app.address, timeout=5) as sock:
        sock.sendall(b"0000000041FETCH http")
        sock.shutdown(socket.SHUT_WR)  # the client gives up mid-frame
        assert recv_all(sock) == b""
    assert fetch_tcp(app.address, url_of(origin, "test_file.txt"), timeout=5) == TEST_FILE
    assert app.stats["incomplete"] == 1 and app.stats["errors"] == 0


def test_a_fetcher_given_to_the_server_answers_its_fetches() -> None:
    asked: list[str] = []

    def from_memory(url: str, policy: FetchPolicy) -> bytes:
        asked.append(url)
        return b"from memory: " + url.encode()

    server = TcpAppServer(
        AppTcpSettings(host="127.0.0.3", port=0),
        FetchPolicy(allow=("example.invalid:80",)),
        fetcher=from_memory,
    )
    server.start()
    try:
        body = fetch_tcp(server.address, "http://example.invalid/x", timeout=5)
    finally:
        server.stop()
    assert body == b"from memory: http://example.invalid/x"
    assert asked == ["http://example.invalid/x"]
