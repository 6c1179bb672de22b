"""Goodput benchmark: RUDP vs the TCP app path vs a raw UDP ``sendto`` loop.

Everything runs on loopback in one invocation, so the ratios compare like
with like on the same machine at the same moment.  The servers run
in-process on ephemeral ports; every client runs in one separate worker
process (so a client and its server do not share an interpreter lock, and
all three transports get the same arrangement).  Each client measures its
own elapsed time, from its first request to the last byte, and returns a
SHA-256 of what it received so a fast but wrong transfer cannot count.

* **raw UDP**: the ceiling of Python UDP I/O here.  The worker asks an
  in-process blaster to send the content in ``chunk``-byte datagrams with a
  plain ``sendto`` loop, and counts what arrives (kernel drops included:
  there is no recovery, so its goodput is what arrived divided by the time).
* **RUDP**: stacklab's client against stacklab's RUDP app server, negotiated
  options (``chunk``, ``window``, CRC32C, SHA-256 in the FIN).
* **RUDP with GSO**: the same, but the server hands runs of equal-size
  datagrams to the kernel in one ``sendmsg`` (UDP segmentation offload); the
  client always receives with UDP GRO when the kernel offers it.
* **TCP app path**: stacklab's TCP client against the TCP app server, 10-digit
  framing.

Both app servers answer from memory (the benchmark's fetcher), so the HTTP
fetch from an origin is not part of the measurement.
"""

from __future__ import annotations

import contextlib
import hashlib
import multiprocessing
import random
import socket
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from stacklab.config import AppTcpSettings, RudpSettings
from stacklab.services.fetcher import FetchPolicy
from stacklab.services.rudp_io import tune_socket

URL = "http://bench.invalid/content"
LOSS_URL = "http://bench.invalid/small"
GO = b"go"
IDLE_END_S = 0.5
"""Raw UDP has no end marker: the receiver stops after this long without a datagram."""


@dataclass
class Series:
    """Repeated measurements of one transport."""

    name: str
    size: int
    seconds: list[float] = field(default_factory=list)
    received: list[int] = field(default_factory=list)
    note: str = ""

    @property
    def median_seconds(self) -> float:
        return statistics.median(self.seconds)

    @property
    def goodputs(self) -> list[float]:
        """MB/s (10^6 bytes) of intact bytes per run."""
        return [r / s / 1e6 for r, s in zip(self.received, self.seconds, strict=True) if s > 0]

    @property
    def median_goodput(self) -> float:
        return statistics.median(self.goodputs)


@dataclass
class BenchReport:
    size: int
    chunk: int
    window: int
    repeat: int
    series: list[Series]
    loss: Series | None
    aioquic: str = ""


# -- servers in this process -------------------------------------------------------------


class _Blaster:
    """Sends the content in ``chunk``-byte datagrams when a worker asks ("go")."""

    def __init__(self, content: bytes, chunk: int) -> None:
        self.content = content
        self.chunk = chunk
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        tune_socket(self.sock)
        self.address: tuple[str, int] = self.sock.getsockname()
        self._thread = threading.Thread(target=self._run, name="stacklab-bench-udp", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        view = memoryview(self.content)
        chunk = self.chunk
        size = len(self.content)
        sock = self.sock
        while True:
            try:
                data, addr = sock.recvfrom(64)
            except OSError:
                return
            if data != GO:
                return
            sendto = sock.sendto  # the plain loop: one sendto per datagram
            for offset in range(0, size, chunk):
                sendto(view[offset : offset + chunk], addr)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendto(b"stop", self.address)
        self._thread.join(2)
        self.sock.close()


@contextlib.contextmanager
def _servers(content: bytes, small: bytes, chunk: int) -> Iterator[dict[str, Any]]:
    from stacklab.services.app_rudp import RudpAppServer
    from stacklab.services.app_tcp import TcpAppServer

    files = {URL: content, LOSS_URL: small}

    def fetcher(url: str, policy: FetchPolicy) -> bytes:
        return files[url]

    policy = FetchPolicy(allow=("bench.invalid:80",))
    rudp = RudpAppServer(RudpSettings(host="127.0.0.1", port=0), policy, fetcher=fetcher)
    rudp_gso = RudpAppServer(
        RudpSettings(host="127.0.0.1", port=0, gso=True), policy, fetcher=fetcher
    )
    tcp = TcpAppServer(AppTcpSettings(host="127.0.0.1", port=0), policy, fetcher=fetcher)
    blaster = _Blaster(content, chunk)
    try:
        rudp.start()
        rudp_gso.start()
        tcp.start()
        yield {
            "rudp": rudp.address,
            "rudp-gso": rudp_gso.address,
            "tcp": tcp.address,
            "udp": blaster.address,
        }
    finally:
        blaster.close()
        tcp.stop()
        rudp_gso.stop()
        rudp.stop()


# -- the client worker process ------------------------------------------------------------


def _worker(conn: Connection) -> None:
    """Runs client tasks sent over ``conn`` until told to quit; returns (seconds, bytes, sha256)."""
    while True:
        task = conn.recv()
        if task[0] == "quit":
            return
        try:
            conn.send(("ok", *_client_task(*task)))
        except Exception as exc:
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


def _client_task(
    kind: str, addr: tuple[str, int], params: dict[str, Any]
) -> tuple[float, int, str]:
    if kind == "rudp":
        from stacklab.services.rudp_client import fetch_rudp

        start = time.perf_counter()
        data = fetch_rudp(addr, params["url"], linger=0, **params.get("options", {}))
        elapsed = time.perf_counter() - start
        return elapsed, len(data), hashlib.sha256(data).hexdigest()
    if kind == "tcp":
        from stacklab.services.client import fetch_tcp

        start = time.perf_counter()
        data = fetch_tcp(addr, params["url"], timeout=30)
        elapsed = time.perf_counter() - start
        return elapsed, len(data), hashlib.sha256(data).hexdigest()
    if kind == "udp":
        return _receive_blast(addr, params["size"], params["chunk"])
    if kind == "aioquic":
        from stacklab.tools.bench_quic import fetch_quic

        return fetch_quic(addr, params["size"])
    raise ValueError(f"unknown task {kind}")


def _receive_blast(addr: tuple[str, int], size: int, chunk: int) -> tuple[float, int, str]:
    buf = bytearray(65536)
    received = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        tune_socket(sock)
        sock.connect(addr)
        start = time.perf_counter()
        last = start
        sock.send(GO)
        sock.settimeout(IDLE_END_S)
        recv_into = sock.recv_into
        while received < size:
            try:
                received += recv_into(buf)
            except TimeoutError:
                break
            last = time.perf_counter()
    return last - start, received, ""


class _Worker:
    def __init__(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker, args=(child,), daemon=True)
        self.proc.start()
        child.close()

    def run(self, kind: str, addr: tuple[str, int], **params: Any) -> tuple[float, int, str]:
        self.conn.send((kind, addr, params))
        status, *result = self.conn.recv()
        if status != "ok":
            raise RuntimeError(f"{kind} client failed: {result[0]}")
        seconds, size, digest = result
        return float(seconds), int(size), str(digest)

    def close(self) -> None:
        with contextlib.suppress(OSError, EOFError):
            self.conn.send(("quit",))
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()


# -- the run ------------------------------------------------------------------------------------


def run_bench(
    size: int = 20_000_000,
    repeat: int = 3,
    chunk: int = 1400,
    window: int = 64,
    loss: float = 0.3,
    loss_size: int = 100 * 1024,
    seed: int = 0,
    with_aioquic: bool = True,
    step: Callable[[str], None] | None = None,
) -> BenchReport:
    """Run every transport ``repeat`` times, interleaved; raise RuntimeError on a wrong result."""
    rng = random.Random(seed)
    content = rng.randbytes(size)
    small = rng.randbytes(loss_size)
    digest = hashlib.sha256(content).hexdigest()
    udp = Series("raw UDP sendto loop", size)
    rudp = Series("RUDP (stacklab)", size)
    rudp_gso = Series("RUDP, server sends with UDP GSO", size)
    tcp = Series("TCP app path", size)
    lossy = Series(f"RUDP, {loss:.0%} of DATA dropped", loss_size)
    quic: Series | None = None
    quic_note = ""
    if with_aioquic:
        quic_note = _aioquic_status()
        if not quic_note:
            quic = Series("aioquic (QUIC stream)", size)
    options = {"chunk": chunk, "window": window}
    worker = _Worker()
    try:
        with _servers(content, small, chunk) as addr, _quic_server(quic, content) as quic_addr:
            for r in range(repeat):
                if step:
                    step(f"round {r + 1}/{repeat}: raw UDP")
                secs, got, _ = worker.run("udp", addr["udp"], size=size, chunk=chunk)
                udp.seconds.append(secs)
                udp.received.append(got)
                if step:
                    step(f"round {r + 1}/{repeat}: RUDP")
                _measure(worker, rudp, "rudp", addr["rudp"], digest, url=URL, options=options)
                if step:
                    step(f"round {r + 1}/{repeat}: RUDP with GSO")
                _measure(
                    worker, rudp_gso, "rudp", addr["rudp-gso"], digest, url=URL, options=options
                )
                if step:
                    step(f"round {r + 1}/{repeat}: TCP")
                _measure(worker, tcp, "tcp", addr["tcp"], digest, url=URL)
                if quic is not None and quic_addr is not None:
                    if step:
                        step(f"round {r + 1}/{repeat}: aioquic")
                    _measure(worker, quic, "aioquic", quic_addr, digest, size=size)
                if step:
                    step(f"round {r + 1}/{repeat}: RUDP with loss")
                small_digest = hashlib.sha256(small).hexdigest()
                lossy_options = {**options, "drop": loss, "seed": seed + r}
                _measure(
                    worker,
                    lossy,
                    "rudp",
                    addr["rudp"],
                    small_digest,
                    url=LOSS_URL,
                    options=lossy_options,
                )
    finally:
        worker.close()
    series = [udp, rudp, rudp_gso, tcp] + ([quic] if quic is not None else [])
    return BenchReport(size, chunk, window, repeat, series, lossy, quic_note)


def _measure(
    worker: _Worker, series: Series, kind: str, addr: tuple[str, int], digest: str, **params: Any
) -> None:
    secs, got, sha = worker.run(kind, addr, **params)
    if digest and sha != digest:
        raise RuntimeError(f"{series.name}: received content differs from what was sent")
    series.seconds.append(secs)
    series.received.append(got)


def _aioquic_status() -> str:
    """Empty when aioquic can be measured, else why not."""
    try:
        import aioquic  # noqa: F401
    except ImportError:
        return "aioquic not installed"
    try:
        from stacklab.tools import bench_quic  # noqa: F401
    except ImportError as exc:
        return f"aioquic benchmark unavailable: {exc}"
    return ""


@contextlib.contextmanager
def _quic_server(series: Series | None, content: bytes) -> Iterator[tuple[str, int] | None]:
    if series is None:
        yield None
        return
    from stacklab.tools.bench_quic import QuicBlobServer

    server = QuicBlobServer(content)
    try:
        yield server.start()
    finally:
        server.stop()
