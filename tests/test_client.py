"""The client and `stacklab fetch`: the original sequence, clear failures, atomic saves."""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from stacklab.cli import cli
from stacklab.config import load_config
from stacklab.services import client
from stacklab.services.client import ClientError, ServerError
from stacklab.services.stack import Stack

TEST_FILE = b"Hello! This is a test file for the Computer Networks FTP project."


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    state = tmp_path_factory.mktemp("state")
    config = load_config(
        None,
        {
            "dhcp": {"host": "127.0.0.1", "port": 0, "lease_db": str(state / "leases.sqlite3")},
            "dns": {"host": "127.0.0.1", "port": 0},
            "origin": {"host": "127.0.0.1", "port": 0},
            "app_tcp": {"host": "127.0.0.3", "port": 0},
        },
    )
    with Stack(config, ("origin", "dhcp", "dns", "app-tcp")) as running:
        yield running


def hostport(stack: Stack, name: str) -> str:
    host, port = stack.get(name).address
    return f"{host}:{port}"


def origin_url(stack: Stack, name: str = "test_file.txt") -> str:
    return f"http://{hostport(stack, 'origin')}/{name}"


def test_original_client_sequence_byte_for_byte(stack: Stack) -> None:
    """A minimal client written from WIRE.md, against stacklab's servers."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.settimeout(2)
        udp.sendto(b"DISCOVER", stack.get("dhcp").address)
        assert udp.recvfrom(2048)[0] == b'{"type": "OFFER", "assigned_ip": "127.0.0.2"}'
        udp.sendto(b'{"domain": "my-app-server.local"}', stack.get("dns").address)
        assert udp.recvfrom(2048)[0] == b'{"status": "SUCCESS", "ip": "127.0.0.3"}'
    url = origin_url(stack).encode()
    with socket.create_connection(stack.get("app-tcp").address, timeout=5) as tcp:
        tcp.sendall(str(len(b"FETCH " + url)).zfill(10).encode() + b"FETCH " + url)
        reply = b""
        while chunk := tcp.recv(4096):
            reply += chunk
    assert reply == b"0000000065" + TEST_FILE


def test_client_steps(stack: Stack) -> None:
    assert client.discover(stack.get("dhcp").address, timeout=2) == "127.0.0.2"
    assert client.resolve(stack.get("dns").address, "my-app-server.local", timeout=2) == "127.0.0.3"
    with pytest.raises(ClientError, match=r"DNS: nope\.local not found \(NOT_FOUND\)"):
        client.resolve(stack.get("dns").address, "nope.local", timeout=2)
    assert client.fetch_tcp(stack.get("app-tcp").address, origin_url(stack), timeout=5) == TEST_FILE
    with pytest.raises(ServerError, match="HTTP 404"):
        client.fetch_tcp(stack.get("app-tcp").address, origin_url(stack, "nope"), timeout=5)


def unused_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_client_failures_are_one_sentence() -> None:
    port = unused_port()
    with pytest.raises(
        ClientError, match=f"connection refused by the app server at 127.0.0.1:{port}"
    ):
        client.fetch_tcp(("127.0.0.1", port), "http://x/", timeout=2)
    with pytest.raises(ClientError, match="no DHCP server"):
        client.discover(("127.0.0.1", unused_port(socket.SOCK_DGRAM)), timeout=1, retries=0)


@pytest.mark.timeout(20)
def test_silent_dhcp_server_times_out_after_retries() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        with pytest.raises(
            ClientError, match=r"no answer from the DHCP server .* after 2 attempts"
        ):
            client.discover(silent.getsockname(), timeout=0.2, retries=1)
        assert silent.recv(100) == b"DISCOVER"
        assert silent.recv(100) == b"DISCOVER"


def serve_once(reply: bytes, close_early: bool = False) -> tuple[tuple[str, int], threading.Thread]:
    """A one-shot fake app server that sends ``reply`` then closes."""
    listener = socket.create_server(("127.0.0.1", 0))

    def run() -> None:
        with listener:
            conn, _ = listener.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(reply)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return listener.getsockname(), thread


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (b"", "closed the connection without answering"),
        (b"00000", "closed the connection without answering"),
        (b"abcdefghij", "malformed frame prefix"),
        (b"0000000100" + b"x" * 50, "closed the connection after 50 of 100 bytes"),
        (b"9999999999", "above the limit"),
    ],
)
def test_broken_app_server_replies(reply: bytes, message: str) -> None:
    addr, thread = serve_once(reply)
    with pytest.raises(ClientError, match=message):
        client.fetch_tcp(addr, "http://x/", timeout=5, max_bytes=10**9)
    thread.join(5)


def test_a_file_that_merely_starts_with_error_is_not_an_error() -> None:
    body = b"ERROR: this is a log file\nline two\n"
    addr, thread = serve_once(str(len(body)).zfill(10).encode() + body)
    assert client.fetch_tcp(addr, "http://x/", timeout=5) == body
    thread.join(5)


# --- the `stacklab fetch` command -------------------------------------------


def run_fetch(args: list[str], cwd: Path) -> tuple[int, str, str]:
    runner = CliRunner()
    old = os.getcwd()
    os.chdir(cwd)
    try:
        result = runner.invoke(cli, ["fetch", *args], catch_exceptions=False)
    finally:
        os.chdir(old)
    return result.exit_code, result.stdout, result.stderr


def test_fetch_command_full_sequence(stack: Stack, tmp_path: Path) -> None:
    app_port = stack.get("app-tcp").address[1]
    code, out, err = run_fetch(
        [
            origin_url(stack),
            "--dhcp", hostport(stack, "dhcp"),
            "--dns", hostport(stack, "dns"),
            "--port", str(app_port),
            "--json",
        ],
        tmp_path,
    )  # fmt: skip
    assert code == 0, err
    summary = json.loads(out)
    assert summary["bytes"] == 65 and summary["assigned_ip"] == "127.0.0.2"
    assert summary["server"] == f"127.0.0.3:{app_port}"
    assert summary["sha256"] == "6ed72f8e821f15bc27d0efe98f14596ca97a88f6512619b9512bd8c72631ee89"
    assert set(summary["timings"]) == {"dhcp", "dns", "transfer", "save"}
    assert (tmp_path / "test_file.txt").read_bytes() == TEST_FILE


def test_fetch_command_with_server_and_output(stack: Stack, tmp_path: Path) -> None:
    code, out, _ = run_fetch(
        [origin_url(stack), "--server", hostport(stack, "app-tcp"), "-o", "copy.html"], tmp_path
    )
    assert code == 0
    assert "saved 65 bytes to copy.html" in out
    assert (tmp_path / "copy.html").read_bytes() == TEST_FILE


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--name", "nope.local"], "DNS: nope.local not found (NOT_FOUND)"),
        (["--url-path", "missing.txt"], "the app server answered: ERROR: Could not fetch"),
        (["--refused"], "connection refused by the app server"),
    ],
)
def test_fetch_command_failures_exit_1_and_leave_no_file(
    stack: Stack, tmp_path: Path, args: list[str], message: str
) -> None:
    url = origin_url(stack)
    cli_args = ["--dhcp", hostport(stack, "dhcp"), "--dns", hostport(stack, "dns"),
                "--port", str(stack.get("app-tcp").address[1])]  # fmt: skip
    if args[0] == "--url-path":
        url = origin_url(stack, args[1])
    elif args[0] == "--refused":
        cli_args = ["--server", f"127.0.0.1:{unused_port()}"]
    else:
        cli_args += args
    code, _, err = run_fetch([url, *cli_args], tmp_path)
    assert code == 1
    assert err.strip().splitlines() == [
        f"stacklab: error: {err.strip().removeprefix('stacklab: error: ')}"
    ]
    assert message in err
    assert list(tmp_path.iterdir()) == []


def test_fetch_command_bad_arguments_exit_2(tmp_path: Path) -> None:
    code, _, err = run_fetch(["--server", "nonsense"], tmp_path)
    assert code == 2 and "expected HOST:PORT" in err
    code, _, err = run_fetch(["-o", "no/such/dir/file"], tmp_path)
    assert code == 2 and "does not exist" in err


def test_default_output_name() -> None:
    from stacklab.commands.fetch import default_output

    assert default_output("http://h:1/dir/file%20name.txt?x=1") == "file name.txt"
    assert default_output("http://h:1/") == "index.html"
    assert default_output("http://h:1/..") == "index.html"


def test_rudp_transport_calls_fetch_rudp_stream(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The contract with the RUDP client: fetch_rudp_stream(server, url, write, progress=...)."""
    import hashlib
    import types

    from stacklab.services.rudp_client import Received

    calls: list[tuple[tuple[str, int], str]] = []

    def fake_fetch_rudp_stream(
        server: tuple[str, int], url: str, write: Any, *, progress: object = None
    ) -> Received:
        calls.append((server, url))
        assert callable(progress)
        write(memoryview(b"over "))
        write(memoryview(b"rudp"))
        return Received(9, hashlib.sha256(b"over rudp").hexdigest())

    module = types.ModuleType("stacklab.services.rudp_client")
    module.fetch_rudp_stream = fake_fetch_rudp_stream  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "stacklab.services.rudp_client", module)
    url = origin_url(stack)
    code, _, err = run_fetch(
        [
            url,
            "--transport",
            "rudp",
            "--dhcp",
            hostport(stack, "dhcp"),
            "--dns",
            hostport(stack, "dns"),
        ],
        tmp_path,
    )
    assert code == 0, err
    assert calls == [(("127.0.0.3", 2122), url)]
    assert (tmp_path / "test_file.txt").read_bytes() == b"over rudp"


def test_progress_bar_appears_only_for_slow_transfers(monkeypatch: pytest.MonkeyPatch) -> None:
    from stacklab.commands import fetch as fetch_command

    now = [100.0]
    monkeypatch.setattr(fetch_command.time, "monotonic", lambda: now[0])
    quick = fetch_command.LazyProgress(True, "x")
    quick(10, 100)
    quick(100, 100)
    assert quick._progress is None  # done within the grace period: no bar
    slow = fetch_command.LazyProgress(True, "x")
    slow(10, 100)
    now[0] += fetch_command.PROGRESS_AFTER_S
    slow(50, 100)
    assert slow._progress is not None
    slow.close()
    disabled = fetch_command.LazyProgress(False, "x")
    now[0] += 10
    disabled(1, 2)
    assert disabled._progress is None
