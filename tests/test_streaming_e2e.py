"""Streamed RUDP fetches end to end over loopback: the origin, the app server, the client, the CLI.

Memory is judged on the objects: how far the origin's reads run ahead of
what the client has written must stay under a bound that does not grow with
the size.  Everything binds to port 0 and waits on conditions.
"""

from __future__ import annotations

import hashlib
import os
import random
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from stacklab.cli import cli
from stacklab.config import RudpSettings
from stacklab.services.app_rudp import RudpAppServer
from stacklab.services.body_stream import BLOCK, READ_AHEAD
from stacklab.services.client import ServerError
from stacklab.services.fetcher import FetchError, FetchPolicy
from stacklab.services.origin import OriginServer
from stacklab.services.rudp_client import (
    RudpTransferError,
    fetch_rudp,
    fetch_rudp_stream,
)
from stacklab.transport.options import STACKLAB_DEFAULT
from stacklab.transport.sink import BATCH
from stacklab.wire import pack_rudp

from conftest import wait_for

pytestmark = pytest.mark.timeout(120)

BIG = random.Random(11).randbytes(3 * 1024 * 1024)  # larger than the read-ahead and a window


@pytest.fixture(scope="module")
def origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OriginServer]:
    root = tmp_path_factory.mktemp("www")
    (root / "big.bin").write_bytes(BIG)
    (root / "small.txt").write_bytes(b"small file\n")
    with OriginServer("127.0.0.1", 0, root) as server:
        assert isinstance(server, OriginServer)
        yield server


@pytest.fixture(scope="module")
def app(origin: OriginServer) -> Iterator[RudpAppServer]:
    host, port = origin.address
    server = RudpAppServer(
        RudpSettings(host="127.0.0.1", port=0), FetchPolicy(allow=(f"{host}:{port}",))
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


def url(origin: OriginServer, name: str) -> str:
    host, port = origin.address
    return f"http://{host}:{port}/{name}"


def test_streamed_fetch_through_the_origin(origin: OriginServer, app: RudpAppServer) -> None:
    got = hashlib.sha256()
    writes: list[int] = []

    def write(view: memoryview) -> None:
        got.update(view)
        writes.append(len(view))

    received = fetch_rudp_stream(app.address, url(origin, "big.bin"), write)
    assert received.size == len(BIG) == sum(writes)
    assert received.sha256 == hashlib.sha256(BIG).hexdigest() == got.hexdigest()
    assert max(writes) <= BATCH and len(writes) >= len(BIG) // BATCH  # batched, never whole
    # The bytes API is built on the same path, and the legacy session streams too.
    assert fetch_rudp(app.address, url(origin, "small.txt")) == b"small file\n"
    assert fetch_rudp(app.address, url(origin, "big.bin"), legacy=True, linger=0) == BIG


def test_cli_writes_the_file_as_it_arrives_and_renames_it(
    origin: OriginServer, app: RudpAppServer, tmp_path: Path
) -> None:
    out = tmp_path / "big.bin"
    server = f"{app.address[0]}:{app.address[1]}"
    args = ["fetch", url(origin, "big.bin"), "--transport", "rudp", "--server", server]
    result = CliRunner().invoke(cli, [*args, "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_bytes() == BIG and os.listdir(tmp_path) == ["big.bin"]
    assert f"saved {len(BIG)} bytes" in result.output
    result = CliRunner().invoke(cli, [*args, "-o", "-"])
    assert result.exit_code == 0
    assert result.stdout_bytes == BIG


def test_no_progress_bar_when_standard_error_is_not_a_terminal(
    origin: OriginServer, app: RudpAppServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bar drawn on a pipe leaves stray lines in logs: a slow transfer on one says only its result."""
    from stacklab.commands import fetch as fetch_command

    monkeypatch.setattr(fetch_command, "PROGRESS_AFTER_S", 0.0)  # every transfer is "slow"
    out = tmp_path / "big.bin"
    server = f"{app.address[0]}:{app.address[1]}"
    args = ["fetch", url(origin, "big.bin"), "--transport", "rudp", "--server", server]
    result = CliRunner().invoke(cli, [*args, "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert result.stderr == ""


def test_an_origin_error_before_the_body_is_still_the_error_text(
    origin: OriginServer, app: RudpAppServer, tmp_path: Path
) -> None:
    missing = url(origin, "missing.bin")
    with pytest.raises(ServerError, match=r"Could not fetch .* HTTP 404"):
        fetch_rudp_stream(app.address, missing, lambda view: pytest.fail("nothing to write"))
    server = f"{app.address[0]}:{app.address[1]}"
    out = tmp_path / "missing.bin"
    result = CliRunner().invoke(
        cli, ["fetch", missing, "--transport", "rudp", "--server", server, "-o", str(out)]
    )
    assert result.exit_code == 1 and "HTTP 404" in result.output
    assert os.listdir(tmp_path) == []  # no file, no temporary file


class LazyBody:
    """A fake origin body of ``size`` bytes, made on demand; it may fail at ``fail_at``."""

    def __init__(self, size: int, written: list[int], fail_at: int | None = None) -> None:
        self.size = size
        self.length = size if fail_at is None else None
        self.read = 0
        self.fail_at = fail_at
        self.written = written  # what the client has written so far (same process)
        self.ahead = 0  # the most bytes ever read and not yet written by the client
        self.closed = False

    def readinto(self, view: memoryview) -> int:
        if self.fail_at is not None and self.read >= self.fail_at:
            raise FetchError("connection reset by the origin")
        n = min(len(view), self.size - self.read, 64 * 1024)
        view[:n] = bytes([self.read // 65536 % 251]) * n
        self.read += n
        self.ahead = max(self.ahead, self.read - self.written[0])
        return n

    def close(self) -> None:
        self.closed = True


def lazy_server(bodies: list[LazyBody], make: object) -> RudpAppServer:
    def opener(target: str, policy: FetchPolicy) -> LazyBody:
        body = make(target)  # type: ignore[operator]
        bodies.append(body)
        return body  # type: ignore[no-any-return]

    server = RudpAppServer(
        RudpSettings(host="127.0.0.1", port=0),
        FetchPolicy(allow=("origin.test:80",)),
        opener=opener,
    )
    server.start()
    return server


@pytest.mark.parametrize("size", [4 * 1024 * 1024, 16 * 1024 * 1024])
def test_server_and_client_memory_is_flat_in_the_size(size: int) -> None:
    """Read-ahead of the origin over the client's file: a bound independent of the size."""
    written = [0]
    bodies: list[LazyBody] = []
    server = lazy_server(bodies, lambda target: LazyBody(size, written))
    try:

        def write(view: memoryview) -> None:
            written[0] += len(view)

        received = fetch_rudp_stream(server.address, "http://origin.test/lazy", write)
    finally:
        server.stop()
    assert received.size == size == written[0] == bodies[0].read
    window = STACKLAB_DEFAULT.max_window * STACKLAB_DEFAULT.chunk_size
    # queued blocks + the block being cut + the block being filled + the unacknowledged
    # window + the client's unwritten batch: nothing proportional to the size.
    bound = READ_AHEAD + 2 * BLOCK + window + BATCH
    assert bodies[0].ahead <= bound, (bodies[0].ahead, bound)
    assert bodies[0].closed


def test_origin_failure_mid_body_is_a_failed_transfer(tmp_path: Path) -> None:
    written = [0]
    bodies: list[LazyBody] = []

    def make(target: str) -> LazyBody:
        fail_at = 20_000 if target.endswith("/early") else 2 << 20
        return LazyBody(8 << 20, written, fail_at=fail_at)

    server = lazy_server(bodies, make)
    try:
        with pytest.raises(RudpTransferError, match=r"aborted.*connection reset by the origin"):
            fetch_rudp_stream(server.address, "http://origin.test/x", lambda view: None)
        # The CLI keeps nothing, not even a partial temporary file.
        out = tmp_path / "x.bin"
        where = f"{server.address[0]}:{server.address[1]}"
        result = CliRunner().invoke(
            cli,
            [
                "fetch",
                "http://origin.test/x",
                "--transport",
                "rudp",
                "--server",
                where,
                "-o",
                str(out),
            ],
        )
        assert result.exit_code == 1 and "connection reset by the origin" in result.output
        assert os.listdir(tmp_path) == []
        # An original-style client cannot hear an abort: it gets no FIN, so never a
        # complete file; stacklab's legacy mode reports the silence.
        with pytest.raises(RudpTransferError, match="silent"):
            fetch_rudp(server.address, "http://origin.test/early", legacy=True, answer_timeout=2)
        wait_for(lambda: server.stats.get("failed", 0) >= 3, what="three failed sessions")
        assert server.stats.get("completed", 0) == 0
    finally:
        server.stop()


def test_stop_releases_a_worker_held_by_back_pressure() -> None:
    """A client that never ACKs: the worker blocks on a full stream; stop() lets it go."""
    bodies: list[LazyBody] = []
    server = lazy_server(bodies, lambda target: LazyBody(1 << 30, [0]))
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.connect(server.address)
        sock.send(pack_rudp(100, 0, b"S"))
        sock.send(pack_rudp(101, 0, b"D", b"FETCH http://origin.test/huge"))
        wait_for(lambda: bool(bodies) and bodies[0].read >= READ_AHEAD, what="a full stream")
        assert bodies[0].read <= READ_AHEAD + 2 * BLOCK  # held by back-pressure, not reading on
    finally:
        server.stop()
        sock.close()
    wait_for(lambda: bodies[0].closed, what="the worker to close the origin body")


def test_stream_limit_refuses_a_long_body_before_its_first_byte(origin: OriginServer) -> None:
    host, port = origin.address
    policy = FetchPolicy(allow=(f"{host}:{port}",), max_stream_bytes=1 << 20)
    server = RudpAppServer(RudpSettings(host="127.0.0.1", port=0), policy)
    server.start()
    try:
        with pytest.raises(ServerError, match=r"exceeds the limit of 1048576 bytes"):
            fetch_rudp(server.address, url(origin, "big.bin"))
        assert fetch_rudp(server.address, url(origin, "small.txt")) == b"small file\n"
    finally:
        server.stop()
