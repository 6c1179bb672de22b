"""The FETCH proxy refuses everything outside its allowlist, tricks included.

Each request goes through a real TCP app server over loopback; each refusal
must be one framed ``ERROR:`` reply, and no outbound connection may be made:
``socket.create_connection`` (what the fetcher connects with) is wrapped to
record every address, and a listener stands on the internal target of the
redirect case and must never see a connection.
"""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from stacklab.config import AppTcpSettings
from stacklab.services import fetcher
from stacklab.services.app_tcp import TcpAppServer
from stacklab.services.fetcher import FetchPolicy
from stacklab.wire import encode_frame, parse_frame_prefix

pytestmark = pytest.mark.timeout(30)


class _Redirector(http.server.BaseHTTPRequestHandler):
    target = ""

    def do_GET(self) -> None:
        if self.path == "/ok":
            body = b"fine"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_response(302)
        self.send_header("Location", self.target)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def internal() -> Iterator[socket.socket]:
    """An 'internal service' on loopback that nobody may reach through the proxy."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        sock.setblocking(False)
        yield sock


@pytest.fixture(scope="module")
def origin(internal: socket.socket) -> Iterator[tuple[str, int]]:
    port = internal.getsockname()[1]
    handler = type("H", (_Redirector,), {"target": f"http://127.0.0.1:{port}/secret"})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield ("127.0.0.1", server.server_address[1])
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def app(origin: tuple[str, int], internal: socket.socket) -> Iterator[TcpAppServer]:
    port, hidden = origin[1], internal.getsockname()[1]
    # The origin, plus a name on the allowlist that resolves to a private address
    # (localhost -> 127.0.0.1) which is not itself allowed on that port.
    policy = FetchPolicy(allow=(f"127.0.0.1:{port}", f"localhost:{hidden}"), timeout=5.0)
    server = TcpAppServer(AppTcpSettings(host="127.0.0.1", port=0), policy)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def connections(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Every address the fetcher connects to (the test's own client uses connect())."""
    seen: list[tuple[str, int]] = []
    real = socket.create_connection

    def spy(address: tuple[str, int], *args: Any, **kwargs: Any) -> socket.socket:
        seen.append((str(address[0]), int(address[1])))
        return real(address, *args, **kwargs)

    monkeypatch.setattr(fetcher.socket, "create_connection", spy)
    return seen


def ask(app: TcpAppServer, url: str) -> bytes:
    """Send one framed FETCH, return the one framed reply's body (and check nothing follows)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(app.address)
        sock.sendall(encode_frame(f"FETCH {url}".encode()))
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    length = parse_frame_prefix(data[:10])
    assert len(data) == 10 + length, "exactly one frame"
    return data[10:]


TRICKS = [
    "http://127.1:{port}/ok",
    "http://0x7f000001:{port}/ok",
    "http://2130706433:{port}/ok",
    "http://0177.0.0.1:{port}/ok",
    "http://[::1]:{port}/ok",
    "http://[::ffff:127.0.0.1]:{port}/ok",
    "http://169.254.169.254/latest/meta-data/",
    "http://169.254.169.254:{port}/ok",
    "http://localhost:{internal}/secret",  # allowed by name, resolves to a private address
    "http://127.0.0.1:22/",
    "http://127.0.0.1.:{port}/ok",
    "http://user@127.0.0.1:{port}/ok",
    "file:///etc/passwd",
    "gopher://127.0.0.1:{port}/_GET",
    "ftp://127.0.0.1:{port}/ok",
    "dict://127.0.0.1:{port}/",
    "//127.0.0.1:{port}/ok",
    "http://127.0.0.1:{port}/ok\r\nHost: evil",
    "http://127.0.0.1:0/ok",
]


@pytest.mark.parametrize("template", TRICKS)
def test_each_trick_is_refused_with_a_framed_error_and_no_connection(
    app: TcpAppServer,
    origin: tuple[str, int],
    internal: socket.socket,
    connections: list[tuple[str, int]],
    template: str,
) -> None:
    url = template.format(port=origin[1], internal=internal.getsockname()[1])
    body = ask(app, url)
    assert body.startswith(b"ERROR: "), body
    assert connections == []


def test_a_redirect_to_an_internal_host_is_refused_before_connecting(
    app: TcpAppServer,
    origin: tuple[str, int],
    internal: socket.socket,
    connections: list[tuple[str, int]],
) -> None:
    body = ask(app, f"http://127.0.0.1:{origin[1]}/go")
    assert body.startswith(b"ERROR: Could not fetch") and b"redirect refused" in body, body
    assert connections == [origin]  # only the allowed origin was contacted
    with pytest.raises(BlockingIOError):
        internal.accept()  # the internal service saw no connection


def test_the_allowed_origin_is_still_served(
    app: TcpAppServer, origin: tuple[str, int], connections: list[tuple[str, int]]
) -> None:
    """The control: the same path through the same proxy works when it is allowed."""
    assert ask(app, f"http://127.0.0.1:{origin[1]}/ok") == b"fine"
    assert connections == [origin]


def test_a_name_resolving_to_a_private_address_is_refused_for_that_reason(
    app: TcpAppServer, internal: socket.socket, connections: list[tuple[str, int]]
) -> None:
    body = ask(app, f"http://localhost:{internal.getsockname()[1]}/secret")
    assert b"resolves to non-public address" in body, body
    assert connections == []
