"""Goodput benchmark: RUDP against raw UDP ceilings, the TCP app path and aioquic.

:func:`run_bench` runs every part of ``stacklab bench`` and returns one
:class:`~stacklab.tools.bench_model.BenchReport`:

* **end to end** (:mod:`stacklab.tools.bench_e2e`): whole processes, the
  ``stacklab fetch`` a person runs against a real origin and app server, and
  two raw UDP ceilings measured the same way; plus loss runs through the
  chaos proxy;
* **in process** (this module): servers in this process on ephemeral
  loopback ports, every client in one worker process, so interpreter
  start-up and disk writes are left out and the transports themselves are
  compared;
* **the original programs** (:mod:`stacklab.tools.bench_originals`).

Rows run interleaved, round after round, and ratios are taken between
medians of the same run.  Each client returns a SHA-256 of what it received,
so a fast but wrong transfer cannot count.

In process, the rows are:

* **raw UDP, per datagram** and **raw UDP, batched**: the ceilings
  (:mod:`stacklab.tools.bench_udp`): a blaster thread sends the content in
  datagrams of RUDP's size, the worker receives them;
* **RUDP**: stacklab's client with its default options against stacklab's
  RUDP app server with its default settings, then the same server with its
  UDP GSO setting flipped;
* **TCP app path**: stacklab's TCP client against the TCP app server;
* **aioquic**: one QUIC stream, TLS-encrypted (RUDP does not encrypt).

Both app servers answer from memory (the benchmark's fetcher), so the HTTP
fetch from an origin is not part of the in-process measurement.
"""

from __future__ import annotations

import contextlib
import hashlib
import multiprocessing
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from stacklab.config import AppTcpSettings, RudpSettings
from stacklab.services.fetcher import FetchPolicy
from stacklab.services.rudp_io import tune_socket
from stacklab.tools.bench_model import (
    TARGET_BATCHED,
    TARGET_PER_DATAGRAM,
    BenchReport,
    Series,
    Table,
    Target,
    chunk_datagram_size,
    ratio,
    rudp_defaults,
)
from stacklab.tools.bench_udp import (
    BATCHED,
    GO,
    GRO_SPAN,
    PER_DATAGRAM,
    CeilingUnavailable,
    open_receiver,
    receive_content,
    send_content,
)

URL = "http://bench.invalid/content"
Step = Callable[[str], None]


@dataclass
class BenchConfig:
    """What one ``stacklab bench`` run measures (sizes in bytes)."""

    size: int = 100_000_000
    repeat: int = 5
    loss_rates: list[float] = field(default_factory=lambda: [0.05, 0.3])
    loss_size: int = 200_000
    original_size: int = 20_000
    original_repeat: int = 3
    originals: Path | None = None
    chunk: int | None = None
    window: int | None = None
    seed: int = 0
    end_to_end: bool = True
    in_process: bool = True
    with_originals: bool = True
    with_aioquic: bool = True


# -- servers in this process -------------------------------------------------------------


class _Blaster:
    """Sends the content as raw UDP datagrams when a worker asks (``go MODE DATAGRAM``)."""

    def __init__(self, content: bytes) -> None:
        self.content = memoryview(content)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        tune_socket(self.sock)  # as the RUDP app server's socket
        self.address: tuple[str, int] = self.sock.getsockname()
        self._thread = threading.Thread(target=self._run, name="stacklab-bench-udp", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        sock = self.sock
        while True:
            try:
                data, addr = sock.recvfrom(256)
            except OSError:
                return
            if not data.startswith(GO):
                return
            mode, _, datagram = data[len(GO) :].decode("ascii").partition(" ")
            try:
                send_content(sock, self.content, int(datagram), mode, addr)
            except CeilingUnavailable as exc:
                sock.sendto(f"error {exc}".encode(), addr)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendto(b"stop", self.address)
        self._thread.join(2)
        self.sock.close()


@contextlib.contextmanager
def _servers(content: bytes) -> Iterator[dict[str, Any]]:
    from stacklab.services.app_rudp import RudpAppServer
    from stacklab.services.app_tcp import TcpAppServer

    def fetcher(url: str, policy: FetchPolicy) -> bytes:
        return content

    policy = FetchPolicy(allow=("bench.invalid:80",))
    settings = RudpSettings(host="127.0.0.1", port=0)
    rudp = RudpAppServer(settings, policy, fetcher=fetcher)
    flipped = RudpAppServer(replace(settings, gso=not settings.gso), policy, fetcher=fetcher)
    tcp = TcpAppServer(AppTcpSettings(host="127.0.0.1", port=0), policy, fetcher=fetcher)
    blaster = _Blaster(content)
    try:
        rudp.start()
        flipped.start()
        tcp.start()
        yield {
            "rudp": rudp.address,
            "rudp-flipped": flipped.address,
            "tcp": tcp.address,
            "udp": blaster.address,
        }
    finally:
        blaster.close()
        tcp.stop()
        flipped.stop()
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
        data = fetch_rudp(addr, URL, linger=0, **params.get("options", {}))
        elapsed = time.perf_counter() - start
        return elapsed, len(data), hashlib.sha256(data).hexdigest()
    if kind == "tcp":
        from stacklab.services.client import fetch_tcp

        start = time.perf_counter()
        data = fetch_tcp(addr, URL, timeout=30)
        elapsed = time.perf_counter() - start
        return elapsed, len(data), hashlib.sha256(data).hexdigest()
    if kind == "udp":
        return _receive_blast(addr, params["size"], params["datagram"], params["mode"])
    if kind == "aioquic":
        from stacklab.tools.bench_quic import fetch_quic

        return fetch_quic(addr, params["size"])
    raise ValueError(f"unknown task {kind}")


def _receive_blast(
    addr: tuple[str, int], size: int, datagram: int, mode: str
) -> tuple[float, int, str]:
    buf = bytearray(size + GRO_SPAN)
    with open_receiver(mode) as sock:
        sock.connect(addr)
        start = time.perf_counter()
        sock.send(GO + f"{mode} {datagram}".encode())
        got, idle = receive_content(sock, buf, size, datagram, mode)
        elapsed = time.perf_counter() - start - idle
    if got < datagram and bytes(buf[:6]) == b"error ":
        raise CeilingUnavailable(bytes(buf[6:got]).decode("utf-8", "replace"))
    digest = hashlib.sha256(memoryview(buf)[:got]).hexdigest() if got == size else ""
    return elapsed, got, digest


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


# -- the in-process run ---------------------------------------------------------------------


def run_in_process(config: BenchConfig, step: Step) -> Table:
    """Every in-process row ``config.repeat`` times, interleaved (see the module docstring)."""
    size, repeat = config.size, config.repeat
    defaults = rudp_defaults()
    options = {
        k: v for k, v in (("chunk", config.chunk), ("window", config.window)) if v is not None
    }
    chunk = config.chunk or int(defaults["chunk"])
    datagram = chunk_datagram_size(chunk, bool(defaults["integrity"]))
    content = random.Random(config.seed).randbytes(size)
    digest = hashlib.sha256(content).hexdigest()
    per_datagram = Series("raw UDP, one sendto / recv_into per datagram (ceiling)", size)
    batched = Series("raw UDP, GSO send / GRO receive (ceiling)", size)
    shown = ", ".join(f"{k} {v}" for k, v in options.items())
    rudp = Series(
        f"RUDP ({shown or 'defaults'}; server GSO {_onoff(defaults['server_gso'])})", size
    )
    flipped = Series(
        f"RUDP ({shown or 'defaults'}; server GSO {_onoff(not defaults['server_gso'])})", size
    )
    tcp = Series("TCP app path", size)
    rows = [per_datagram, batched, rudp, flipped, tcp]
    quic: Series | None = None
    table = Table(
        "in_process",
        f"In process: {size / 1e6:g} MB over loopback, servers in one process, clients in "
        f"another, datagrams of {datagram} bytes, median of {repeat}",
        rows,
        baseline=per_datagram,
    )
    if config.with_aioquic:
        quic_note = _aioquic_status()
        if quic_note:
            table.notes.append(quic_note)
        else:
            quic = Series("aioquic, one QUIC stream (TLS-encrypted; RUDP is not)", size)
            rows.append(quic)
    worker = _Worker()
    try:
        with _servers(content) as addr, _quic_server(quic, content) as quic_addr:
            jobs: list[tuple[Series, Callable[[], None]]] = [
                (per_datagram, lambda: _ceiling(worker, per_datagram, addr["udp"], PER_DATAGRAM,
                                                size, datagram, digest)),
                (batched, lambda: _ceiling(worker, batched, addr["udp"], BATCHED, size,
                                           datagram, digest)),
                (rudp, lambda: _measure(worker, rudp, "rudp", addr["rudp"], digest,
                                        options=options)),
                (flipped, lambda: _measure(worker, flipped, "rudp", addr["rudp-flipped"],
                                           digest, options=options)),
                (tcp, lambda: _measure(worker, tcp, "tcp", addr["tcp"], digest)),
            ]  # fmt: skip
            if quic is not None and quic_addr is not None:
                series = quic
                jobs.append(
                    (series, lambda: _measure(worker, series, "aioquic", quic_addr, digest,
                                              size=size))
                )  # fmt: skip
            for r in range(repeat):
                for i in range(len(jobs)):
                    series, job = jobs[(i + r) % len(jobs)]
                    step(f"in process, round {r + 1}/{repeat}: {series.name}")
                    job()
    finally:
        worker.close()
    return table


def _onoff(value: object) -> str:
    return "on" if value else "off"


def _ceiling(
    worker: _Worker, series: Series, addr: tuple[str, int], mode: str, size: int, datagram: int,
    digest: str,
) -> None:  # fmt: skip
    try:
        secs, got, sha = worker.run("udp", addr, size=size, datagram=datagram, mode=mode)
    except RuntimeError as exc:
        series.failures.append(str(exc))
        series.note = str(exc)
        return
    if got == size and sha != digest:
        series.failures.append("received content differs from what was sent")
        return
    series.add(secs, got)


def _measure(
    worker: _Worker, series: Series, kind: str, addr: tuple[str, int], digest: str, **params: Any
) -> None:
    secs, got, sha = worker.run(kind, addr, **params)
    if sha != digest:
        raise RuntimeError(f"{series.name}: received content differs from what was sent")
    series.add(secs, got)


def _aioquic_status() -> str:
    """Empty when aioquic can be measured, else why not."""
    try:
        import aioquic  # noqa: F401
    except ImportError:
        return "aioquic not installed (`pip install -e '.[bench]'`): its row is left out"
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


# -- everything -------------------------------------------------------------------------------


def run_bench(config: BenchConfig, step: Step | None = None) -> BenchReport:
    """Run the parts ``config`` asks for; raise RuntimeError when a transfer is wrong."""
    from stacklab.tools.bench_e2e import run_e2e
    from stacklab.tools.bench_originals import default_originals_dir, run_originals

    say: Step = step or (lambda text: None)
    defaults = rudp_defaults()
    settings: dict[str, Any] = {
        "size": config.size,
        "repeat": config.repeat,
        "loss_rates": config.loss_rates,
        "loss_size": config.loss_size,
        "original_size": config.original_size,
        "original_repeat": config.original_repeat,
        "seed": config.seed,
        "rudp_defaults": defaults,
        "datagram": chunk_datagram_size(int(defaults["chunk"]), bool(defaults["integrity"])),
    }
    report = BenchReport(settings)
    if config.end_to_end:
        report.tables += run_e2e(
            config.size,
            config.repeat,
            config.loss_rates,
            config.loss_size,
            config.seed,
            say,
            chunk=config.chunk,
            window=config.window,
        )
        e2e = report.table("end_to_end")
        if e2e is not None:
            per_datagram, batched, rudp = e2e.rows
            report.targets = [
                Target(
                    "RUDP end to end / raw UDP per datagram end to end",
                    TARGET_PER_DATAGRAM,
                    ratio(rudp, per_datagram),
                ),
                Target(
                    "RUDP end to end / raw UDP batched end to end",
                    TARGET_BATCHED,
                    ratio(rudp, batched),
                ),
            ]
    if config.in_process:
        report.tables.append(run_in_process(config, say))
    if config.with_originals:
        folder = config.originals or default_originals_dir()
        report.tables += run_originals(
            folder,
            config.original_size,
            config.original_repeat,
            config.loss_rates,
            config.seed,
            say,
        )
    return report
