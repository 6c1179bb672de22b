"""The app servers' fetch: policy (SSRF), limits, redirects, and the FETCH command."""

from __future__ import annotations

import contextlib
import http.server
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stacklab.services import fetcher
from stacklab.services.fetcher import (
    FetchError,
    FetchPolicy,
    canonical_host,
    check_url,
    fetch,
    handle_command,
    parse_allow_entry,
)
from stacklab.services.origin import OriginServer
from stacklab.wire import ERROR_UNKNOWN_COMMAND, fetch_error_text

TEST_FILE = b"Hello! This is a test file for the Computer Networks FTP project."


@pytest.fixture
def origin(tmp_path: Path) -> Iterator[OriginServer]:
    (tmp_path / "test_file.txt").write_bytes(TEST_FILE)
    (tmp_path / "big.bin").write_bytes(bytes(range(256)) * 4096)  # 1 MiB
    server = OriginServer("127.0.0.1", 0, tmp_path)
    server.start()
    yield server
    server.stop()


def policy_for(server: OriginServer, **kwargs: object) -> FetchPolicy:
    host, port = server.address
    return FetchPolicy(allow=(f"{host}:{port}",), **kwargs)  # type: ignore[arg-type]


class _Scripted(http.server.BaseHTTPRequestHandler):
    """Redirects and bodies without Content-Length, scripted by path."""

    target = ""

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        if self.path.startswith("/redirect-to/"):
            self.send_response(302)
            self.send_header("Location", self.path.removeprefix("/redirect-to/"))
            self.end_headers()
        elif self.path == "/loop":
            self.send_response(301)
            self.send_header("Location", "/loop")
            self.end_headers()
        elif self.path.startswith("/unsized/"):
            n = int(self.path.removeprefix("/unsized/"))
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"u" * n)
        else:
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")


@pytest.fixture
def scripted() -> Iterator[tuple[str, int]]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Scripted)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield server.server_address[0], server.server_address[1]  # type: ignore[misc]
    server.shutdown()
    server.server_close()
    thread.join()


def test_fetches_from_the_allowed_origin(origin: OriginServer) -> None:
    host, port = origin.address
    assert fetch(f"http://{host}:{port}/test_file.txt", policy_for(origin)) == TEST_FILE


def test_large_body_is_intact(origin: OriginServer) -> None:
    host, port = origin.address
    body = fetch(f"http://{host}:{port}/big.bin", policy_for(origin))
    assert body == bytes(range(256)) * 4096


def test_body_above_the_cap_is_refused(origin: OriginServer) -> None:
    host, port = origin.address
    with pytest.raises(FetchError, match="exceeds the limit of 1000 bytes"):
        fetch(f"http://{host}:{port}/big.bin", policy_for(origin, max_bytes=1000))


def test_http_error_status_is_a_fetch_error(origin: OriginServer) -> None:
    host, port = origin.address
    with pytest.raises(FetchError, match="HTTP 404"):
        fetch(f"http://{host}:{port}/missing.txt", policy_for(origin))


def test_connection_refused_is_reported() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    with pytest.raises(FetchError, match="refused"):
        fetch(f"http://127.0.0.1:{port}/", FetchPolicy(allow=(f"127.0.0.1:{port}",)))


@pytest.mark.timeout(10)
def test_silent_server_times_out() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    try:
        with pytest.raises(FetchError, match="timed out"):
            fetch(
                f"http://127.0.0.1:{port}/", FetchPolicy(allow=(f"127.0.0.1:{port}",), timeout=0.3)
            )
    finally:
        listener.close()


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("file:///etc/passwd", "scheme 'file' is not allowed"),
        ("gopher://127.0.0.1:8080/", "scheme 'gopher' is not allowed"),
        ("http://127.1:8080/", "non-canonical IP address '127.1'"),
        ("http://0x7f000001:8080/", "non-canonical IP address '0x7f000001'"),
        ("http://2130706433:8080/", "non-canonical IP address '2130706433'"),
        ("http://0177.0.0.1:8080/", "non-canonical IP address '0177.0.0.1'"),
        ("http://127.0.0.01:8080/", "non-canonical IP address '127.0.0.01'"),
        ("http://[::1]:8080/", "host [::1]:8080 is not on the allowlist"),
        ("http://[::ffff:127.0.0.1]:8080/", "non-canonical IPv6 address"),
        (
            "http://169.254.169.254/latest/meta-data/",
            "host 169.254.169.254:80 is not on the allowlist",
        ),
        ("http://localhost:8080/", "host localhost:8080 is not on the allowlist"),
        ("http://127.0.0.1:8081/", "host 127.0.0.1:8081 is not on the allowlist"),
        ("http://127.0.0.1/", "host 127.0.0.1:80 is not on the allowlist"),
        ("http://evil@127.0.0.1:8080/", "user info"),
        ("http://127.0.0.1:99999/", "malformed URL"),
        ("http:// 127.0.0.1:8080/", "whitespace"),
        ("http://127.0.0.1:8080/\r\nX: y", "whitespace"),
        ("", "scheme '(none)' is not allowed"),
    ],
)
def test_refused_urls_never_connect(url: str, reason: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_connection(*args: object, **kwargs: object) -> None:
        raise AssertionError("a refused URL must not open a connection")

    monkeypatch.setattr(fetcher.socket, "create_connection", no_connection)
    with pytest.raises(FetchError) as info:
        fetch(url, FetchPolicy(), resolver=lambda h, p: pytest.fail("no lookup expected"))
    assert reason in info.value.reason


def test_name_resolving_to_a_private_address_is_refused() -> None:
    policy = FetchPolicy(allow=("files.example",))
    with pytest.raises(FetchError, match=r"non-public address 10\.1\.2\.3"):
        check_url(
            "http://files.example/x", policy, resolver=lambda h, p: ["93.184.216.34", "10.1.2.3"]
        )
    target = check_url(
        "http://files.example/x?y=1", policy, resolver=lambda h, p: ["93.184.216.34"]
    )
    assert (target.address, target.port, target.path) == ("93.184.216.34", 80, "/x?y=1")


def test_name_resolving_to_an_allowlisted_private_address_is_accepted() -> None:
    policy = FetchPolicy(allow=("origin.lan:8080", "10.1.2.3:8080"))
    target = check_url("http://ORIGIN.lan:8080/", policy, resolver=lambda h, p: ["10.1.2.3"])
    assert target.host == "origin.lan" and target.address == "10.1.2.3"


def test_redirect_within_the_allowlist_is_followed(scripted: tuple[str, int]) -> None:
    host, port = scripted
    policy = FetchPolicy(allow=(f"{host}:{port}",))
    assert fetch(f"http://{host}:{port}/redirect-to//ok", policy) == b"ok"


def test_redirect_to_another_host_is_refused(scripted: tuple[str, int]) -> None:
    host, port = scripted
    policy = FetchPolicy(allow=(f"{host}:{port}",))
    with pytest.raises(FetchError, match=r"redirect refused: host 169\.254\.169\.254:80"):
        fetch(f"http://{host}:{port}/redirect-to/http://169.254.169.254/", policy)


def test_redirect_loops_are_bounded(scripted: tuple[str, int]) -> None:
    host, port = scripted
    with pytest.raises(FetchError, match="more than 3 redirects"):
        fetch(f"http://{host}:{port}/loop", FetchPolicy(allow=(f"{host}:{port}",), max_redirects=3))


def test_unsized_body_is_read_and_capped(scripted: tuple[str, int]) -> None:
    host, port = scripted
    policy = FetchPolicy(allow=(f"{host}:{port}",), max_bytes=600_000)
    assert fetch(f"http://{host}:{port}/unsized/500000", policy) == b"u" * 500_000
    with pytest.raises(FetchError, match="exceeds the limit"):
        fetch(f"http://{host}:{port}/unsized/700000", policy)


@given(st.text(max_size=80))
def test_check_url_only_ever_raises_fetch_error(url: str) -> None:
    with contextlib.suppress(FetchError):
        check_url(url, FetchPolicy(), resolver=lambda h, p: ["127.0.0.1"])


@given(st.text(max_size=40))
def test_canonical_host_is_a_fixed_point(host: str) -> None:
    try:
        canonical = canonical_host(host)
    except FetchError:
        return
    assert canonical_host(canonical) == canonical


def test_allow_entries_parse() -> None:
    assert parse_allow_entry("127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert parse_allow_entry("Example.COM") == ("example.com", None)
    assert parse_allow_entry("[::1]:80") == ("::1", 80)
    for bad in ("127.1:80", "host:port", "[::1", "a:0", "a:70000"):
        with pytest.raises(ValueError):
            parse_allow_entry(bad)


def test_handle_command_answers_like_the_original(origin: OriginServer) -> None:
    host, port = origin.address
    policy = policy_for(origin)
    url = f"http://{host}:{port}/test_file.txt"
    assert handle_command(f"FETCH {url}".encode(), policy) == TEST_FILE
    assert handle_command(b"GET /", policy) == ERROR_UNKNOWN_COMMAND.encode()
    assert handle_command(b"\xff\xfe", policy) == ERROR_UNKNOWN_COMMAND.encode()
    refused = handle_command(b"FETCH file:///etc/passwd", policy)
    assert (
        refused == fetch_error_text("file:///etc/passwd", "scheme 'file' is not allowed").encode()
    )
    assert (
        refused
        == b"ERROR: Could not fetch 'file:///etc/passwd'. Reason: scheme 'file' is not allowed"
    )
