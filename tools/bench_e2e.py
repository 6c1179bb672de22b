"""Whole processes, as a person runs them: ``stacklab fetch`` over RUDP against its ceilings.

The arrangement:

* a real origin (``stacklab serve origin``) serves the content from a
  temporary folder, and the RUDP app server (``stacklab serve app-rudp``)
  runs as its own process with its default settings, fetching from it;
* each RUDP run is the whole ``stacklab fetch --transport rudp --server
  HOST:PORT URL -o FILE`` process, timed from spawn to exit, its file checked
  by SHA-256 afterwards;
* each ceiling run is a whole receiving process (``python -m
  stacklab.tools.bench_udp receive``) that asks a sending process (started
  once, like the servers) for the same bytes in datagrams of RUDP's size,
  writes them to a file atomically as ``fetch`` does, and exits; timed from
  spawn to exit too (minus the idle wait that ends a run missing datagrams).

Rounds are interleaved and the order rotates from round to round, so a
machine that slows down for a while slows every row alike.  Loss runs go
through the chaos proxy (:mod:`stacklab.tools.chaos`) with loss in both
directions, one seed per run.
"""

from __future__ import annotations

import hashlib
import json
import random
import tempfile
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

from stacklab.sim.impairment import Impairment
from stacklab.tools.bench_model import Series, Table, chunk_datagram_size, rudp_defaults
from stacklab.tools.bench_procs import BenchProcessError, Server, server, stacklab_argv, timed
from stacklab.tools.bench_udp import BATCHED, PER_DATAGRAM
from stacklab.tools.chaos import ChaosProxy

Step = Callable[[str], None]

LISTEN = r"(?P<host>\d+\.\d+\.\d+\.\d+):(?P<port>\d+)"
FETCH_TIMEOUT_S = 300.0
LOSS_TIMEOUT_S = 120.0
"""A lossy run longer than this counts as failed (it is reported, not waited for)."""

PER_DATAGRAM_ROW = "raw UDP, one sendto / recv_into per datagram (ceiling)"
BATCHED_ROW = "raw UDP, GSO send / GRO receive (ceiling)"


def rudp_row_name(defaults: dict[str, object], extra: tuple[str, ...] = ()) -> str:
    integrity = "integrity on" if defaults["integrity"] else "integrity off"
    gso = "server GSO on" if defaults["server_gso"] else "server GSO off"
    given = " ".join(extra)
    return f"RUDP stacklab fetch, {given or 'defaults'} ({integrity}, {gso})"


def _digest(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            sha.update(block)
    return sha.hexdigest()


def _fetch(
    series: Series,
    app: tuple[str, int],
    url: str,
    out: Path,
    digest: str,
    *,
    timeout: float,
    extra: tuple[str, ...] = (),
) -> None:
    """One whole ``stacklab fetch`` process; a failed or wrong run is recorded, not timed."""
    out.unlink(missing_ok=True)
    argv = stacklab_argv(
        "fetch", "--transport", "rudp", "--server", f"{app[0]}:{app[1]}", url, "-o", str(out),
        *extra,
    )  # fmt: skip
    run = timed(argv, timeout=timeout)
    if run.timed_out:
        series.failures.append(f"no file after {timeout:g} s")
    elif run.returncode != 0:
        series.failures.append(f"exit {run.returncode}: {run.stdout.strip()[-200:]}")
    elif not out.exists() or _digest(out) != digest:
        series.failures.append("SHA-256 of the file differs from the content's")
    else:
        series.add(run.seconds, out.stat().st_size)
    out.unlink(missing_ok=True)


def _ceiling(
    series: Series, sender: tuple[str, int], mode: str, size: int, datagram: int, out: Path,
    digest: str,
) -> None:  # fmt: skip
    """One whole receiving process; bytes lost (no recovery) count as not delivered."""
    out.unlink(missing_ok=True)
    argv = [
        *stacklab_argv()[:2], "stacklab.tools.bench_udp", "receive",
        "--sender", f"{sender[0]}:{sender[1]}", "--size", str(size),
        "--datagram", str(datagram), "--mode", mode, "--output", str(out),
    ]  # fmt: skip
    run = timed(argv, timeout=FETCH_TIMEOUT_S)
    try:
        summary = json.loads(run.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        summary = {"error": f"exit {run.returncode}: {run.stdout.strip()[-200:]}"}
    if "error" in summary:
        series.failures.append(str(summary["error"]))
        series.note = str(summary["error"])
        return
    received = int(summary["received"])
    if received == size and _digest(out) != digest:
        series.failures.append("SHA-256 of the file differs from the content's")
    else:
        series.add(run.seconds - float(summary["idle_tail_s"]), received)
    out.unlink(missing_ok=True)


def run_e2e(
    size: int,
    repeat: int,
    loss_rates: list[float],
    loss_size: int,
    seed: int,
    step: Step,
    *,
    chunk: int | None = None,
    window: int | None = None,
) -> list[Table]:
    """The end-to-end table (RUDP and its two ceilings) and the stacklab loss table.

    ``chunk`` and ``window``, when given, are passed to ``stacklab fetch``;
    otherwise it runs with its defaults.
    """
    defaults = rudp_defaults()
    extra: tuple[str, ...] = ()
    if chunk is not None:
        extra += ("--chunk", str(chunk))
    if window is not None:
        extra += ("--window", str(window))
    datagram = chunk_datagram_size(chunk or int(defaults["chunk"]), bool(defaults["integrity"]))
    rudp = Series(rudp_row_name(defaults, extra), size)
    per_datagram = Series(PER_DATAGRAM_ROW, size)
    batched = Series(BATCHED_ROW, size)
    e2e = Table(
        "end_to_end",
        f"End to end, whole processes: {size / 1e6:g} MB from a real origin, "
        f"datagrams of {datagram} bytes, median of {repeat}",
        [per_datagram, batched, rudp],
        baseline=per_datagram,
    )
    lossy = [
        Series(f"RUDP stacklab - stacklab, {rate:.0%} loss each way", loss_size)
        for rate in loss_rates
    ]
    loss = Table(
        "loss",
        f"Loss both ways (chaos proxy, one seed per run): {loss_size / 1e3:g} kB, median of {repeat}",
        lossy,
    )
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="stacklab-bench-") as tmp, ExitStack() as stack:
        root = Path(tmp)
        www = root / "www"
        www.mkdir()
        content = www / "content.bin"
        content.write_bytes(rng.randbytes(size))
        small = www / "small.bin"
        small.write_bytes(rng.randbytes(loss_size))
        digest, small_digest = _digest(content), _digest(small)
        step("end to end: starting the origin, the RUDP app server and the raw UDP sender")
        origin = stack.enter_context(
            server(
                stacklab_argv("serve", "origin", "--root", str(www), "--origin-host",
                              "127.0.0.1", "--origin-port", "0"),
                root / "origin.log", r"origin\s.*?" + LISTEN,
            )
        )  # fmt: skip
        ohost, oport = origin.address()
        app = stack.enter_context(
            server(
                stacklab_argv("serve", "app-rudp", "--app-rudp-host", "127.0.0.1",
                              "--app-rudp-port", "0", "--fetch-allow", f"{ohost}:{oport}"),
                root / "app-rudp.log", r"app-rudp\s.*?" + LISTEN,
            )
        )  # fmt: skip
        sender: Server = stack.enter_context(
            server(
                [*stacklab_argv()[:2], "stacklab.tools.bench_udp", "send", "--file", str(content)],
                root / "udp-sender.log", r"listening on " + LISTEN,
            )
        )  # fmt: skip
        url = f"http://{ohost}:{oport}/content.bin"
        out = root / "out.bin"
        jobs: list[tuple[str, Callable[[], None]]] = [
            ("RUDP fetch", lambda: _fetch(rudp, app.address(), url, out, digest,
                                          timeout=FETCH_TIMEOUT_S, extra=extra)),
            ("raw UDP per datagram", lambda: _ceiling(per_datagram, sender.address(),
                                                       PER_DATAGRAM, size, datagram, out, digest)),
            ("raw UDP batched", lambda: _ceiling(batched, sender.address(), BATCHED, size,
                                                 datagram, out, digest)),
        ]  # fmt: skip
        for r in range(repeat):
            for i in range(len(jobs)):
                label, job = jobs[(i + r) % len(jobs)]
                step(f"end to end, round {r + 1}/{repeat}: {label}")
                job()
            small_url = f"http://{ohost}:{oport}/small.bin"
            for rate, series in zip(loss_rates, lossy, strict=True):
                step(f"loss, round {r + 1}/{repeat}: RUDP with {rate:.0%} loss each way")
                impairment = Impairment(loss=rate)
                with ChaosProxy(
                    ("127.0.0.1", 0), app.address(), impairment, impairment, seed=seed + r
                ) as proxy:
                    _fetch(series, proxy.address, small_url, out, small_digest,
                           timeout=LOSS_TIMEOUT_S)  # fmt: skip
    e2e.notes.append(
        "Each run is a whole process timed from spawn to exit; the RUDP file is checked by "
        "SHA-256, the ceilings' files too when every datagram arrived."
    )
    return [e2e, loss]


__all__ = ["BenchProcessError", "run_e2e"]
