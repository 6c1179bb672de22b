"""The original programs measured by code, against each other and against stacklab's.

The original RUDP server and client (``app_server_rudp.py``,
``client_rudp.py``) are run in place, from the folder of the original
programs next to the repository (``../shared/original``, or ``--originals``),
never copied.  They use fixed addresses (DHCP 127.0.0.1:6767, DNS
127.0.0.1:5353, the app server at 127.0.0.3:2122, the origin at
127.0.0.1:8080 and the URL ``/test_file.txt``), so everything here runs in a
private network namespace (:mod:`stacklab.tools.netns`), which needs Linux,
root and ``ip``; where that is missing the rows are skipped with the reason.

In the namespace stacklab's DHCP, DNS and origin serve both clients, the
origin's ``test_file.txt`` being the benchmark's small file.  Each client does
what a person runs: the original client its whole DHCP -> DNS -> RUDP
sequence (with its own fault injection: it sleeps 0.1-0.4 s before handling
each DATA and ignores about 30% of them), ``stacklab fetch --transport rudp``
the same sequence.  The original client's ``random`` is seeded per run
(through ``runpy``, the file itself is untouched) so that its drops and sleeps
are reproducible.

Loss: the name ``my-app-server.local`` resolves to 127.0.0.4, where a chaos
proxy (``stacklab chaos``) drops datagrams both ways before relaying to the
server at 127.0.0.3.
"""

from __future__ import annotations

import hashlib
import random
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from stacklab.tools.bench_model import Series, Table
from stacklab.tools.bench_procs import server, stacklab_argv, timed
from stacklab.tools.netns import NetnsError, exec_argv, private_netns, unavailable_reason
from stacklab.wire import APP_ADDR, APP_DOMAIN, APP_RUDP_PORT, DEFAULT_URL

Step = Callable[[str], None]

SERVER_FILE = "app_server_rudp.py"
CLIENT_FILE = "client_rudp.py"
CLIENT_OUTPUT = "downloaded_rudp.html"
PROXY_ADDR = "127.0.0.4"
ORIGINAL_TIMEOUT_S = 180.0
"""A run of an original longer than this counts as failed (reported, not waited for)."""

RUN_SEEDED = (
    "import random, runpy, sys; random.seed(int(sys.argv[1])); path = sys.argv[2]; "
    "sys.argv = [path]; runpy.run_path(path, run_name='__main__')"
)
"""Runs a program with ``random`` seeded first: the original client's drops and sleeps replay."""

PAIRS = (
    ("original", "original"),
    ("original", "stacklab"),
    ("stacklab", "original"),
    ("stacklab", "stacklab"),
)
"""(server, client) pairs, server first."""


def default_originals_dir() -> Path:
    """``../shared/original`` next to the repository this module lives in."""
    return Path(__file__).resolve().parent.parent.parent / "shared" / "original"


def unavailable(folder: Path) -> str | None:
    """Why the originals cannot run here, or None."""
    missing = [n for n in (SERVER_FILE, CLIENT_FILE) if not (folder / n).is_file()]
    if missing:
        return f"the original programs are not in {folder} ({', '.join(missing)} missing)"
    reason = unavailable_reason()
    if reason is not None:
        return f"the originals use fixed ports and need a private network namespace: {reason}"
    return None


def pair_name(server_kind: str, client_kind: str, loss: float = 0.0) -> str:
    name = f"{server_kind} server - {client_kind} client"
    return f"{name}, {loss:.0%} loss each way" if loss else name


class _Namespace:
    """Runs the arrangement's processes inside one private namespace."""

    def __init__(self, name: str, root: Path, folder: Path) -> None:
        self.name = name
        self.root = root
        self.folder = folder
        self._runs = 0

    def argv(self, argv: list[str]) -> list[str]:
        return exec_argv(self.name, argv)

    @contextmanager
    def stacklab(self, service: str, *options: str) -> Iterator[None]:
        log = self.root / f"{service}.log"
        with server(
            self.argv(stacklab_argv("serve", service, *options)), log, r"(?P<host>)(?P<port>)up"
        ):
            yield

    @contextmanager
    def original_server(self) -> Iterator[None]:
        argv = self.argv([*stacklab_argv()[:1], "-u", str(self.folder / SERVER_FILE)])
        with server(
            argv, self.root / "original-server.log", r"(?P<host>)(?P<port>)listening on UDP",
            cwd=self.root,
        ):  # fmt: skip
            yield

    @contextmanager
    def app_server(self, kind: str) -> Iterator[None]:
        if kind == "original":
            with self.original_server():
                yield
        else:
            with self.stacklab("app-rudp"):
                yield

    @contextmanager
    def chaos(self, loss: float, seed: int) -> Iterator[None]:
        argv = stacklab_argv(
            "chaos", "--listen", f"{PROXY_ADDR}:{APP_RUDP_PORT}", "--upstream",
            f"{APP_ADDR}:{APP_RUDP_PORT}", "--loss", str(loss), "--seed", str(seed),
        )  # fmt: skip
        with server(self.argv(argv), self.root / "chaos.log", r"(?P<host>)(?P<port>)chaos: "):
            yield

    def client(self, kind: str, series: Series, digest: str, seed: int, timeout: float) -> None:
        """One whole client process, timed from spawn to exit; its file checked by SHA-256."""
        self._runs += 1
        where = self.root / f"run-{self._runs}"
        where.mkdir()
        if kind == "original":
            out = where / CLIENT_OUTPUT
            argv = [
                *stacklab_argv()[:1],
                "-c",
                RUN_SEEDED,
                str(seed),
                str(self.folder / CLIENT_FILE),
            ]
        else:
            out = where / "test_file.txt"
            argv = stacklab_argv("fetch", "--transport", "rudp", DEFAULT_URL, "-o", str(out))
        # The original client prints a line per datagram: not worth keeping.
        run = timed(self.argv(argv), timeout=timeout, cwd=where, quiet=kind == "original")
        if run.timed_out:
            series.failures.append(f"no file after {timeout:g} s")
        elif not out.exists():
            said = run.stdout.strip().splitlines()
            series.failures.append(
                f"exit {run.returncode}, no file" + (f" ({said[-1]})" if said else "")
            )
        elif hashlib.sha256(out.read_bytes()).hexdigest() != digest:
            size = out.stat().st_size
            series.failures.append(f"a file of {size} bytes whose SHA-256 differs")
        else:
            series.add(run.seconds, out.stat().st_size)


def run_originals(
    folder: Path,
    size: int,
    repeat: int,
    loss_rates: list[float],
    seed: int,
    step: Step,
    *,
    timeout: float = ORIGINAL_TIMEOUT_S,
) -> list[Table]:
    """The originals table (four pairs, no loss) and the originals-under-loss table."""
    clean_rows = {pair: Series(pair_name(*pair), size) for pair in PAIRS}
    lossy_rows = {
        (pair, rate): Series(pair_name(*pair, rate), size)
        for rate in loss_rates
        for pair in PAIRS
        if bearable(pair, rate, loss_rates)
    }
    clean = Table(
        "originals",
        f"The original programs: {size / 1e3:g} kB through DHCP, DNS and RUDP, "
        f"whole client processes, median of {repeat}",
        list(clean_rows.values()),
        baseline=clean_rows[("original", "original")],
    )
    clean.notes.append(
        "The original client sleeps 0.1-0.4 s before handling each DATA datagram and ignores "
        "about 30% of them (its own fault injection, left on: it is part of the original); "
        "its random generator is seeded per run. Hence the small file."
    )
    lossy = Table(
        "originals_loss",
        f"The original programs with loss both ways (chaos proxy): {size / 1e3:g} kB, "
        f"median of {repeat}",
        list(lossy_rows.values()),
    )
    reason = unavailable(folder)
    if reason is not None:
        clean.skipped = lossy.skipped = reason
        return [clean, lossy]
    content = random.Random(seed).randbytes(size)
    digest = hashlib.sha256(content).hexdigest()
    try:
        with (
            tempfile.TemporaryDirectory(prefix="stacklab-bench-orig-") as tmp,
            private_netns("stacklab-bench") as name,
        ):
            root = Path(tmp)
            www = root / "www"
            www.mkdir()
            (www / "test_file.txt").write_bytes(content)
            ns = _Namespace(name, root, folder)
            with ExitStack() as stack:
                step("originals: starting DHCP and the origin in a private namespace")
                stack.enter_context(ns.stacklab("dhcp"))
                stack.enter_context(ns.stacklab("origin", "--root", str(www)))
                for r in range(repeat):
                    with ns.stacklab("dns"):
                        for server_kind in ("original", "stacklab"):
                            with ns.app_server(server_kind):
                                for client_kind in ("original", "stacklab"):
                                    pair = (server_kind, client_kind)
                                    step(f"originals, round {r + 1}/{repeat}: {pair_name(*pair)}")
                                    ns.client(client_kind, clean_rows[pair], digest, seed + r,
                                              timeout)  # fmt: skip
                    if not loss_rates:
                        continue
                    record = f"{APP_DOMAIN}={PROXY_ADDR}"
                    with ns.stacklab("dns", "--dns-record", record):
                        for server_kind in ("original", "stacklab"):
                            with ns.app_server(server_kind):
                                for rate in loss_rates:
                                    for client_kind in ("original", "stacklab"):
                                        pair = (server_kind, client_kind)
                                        if (pair, rate) not in lossy_rows:
                                            continue
                                        step(f"originals, round {r + 1}/{repeat}: "
                                             f"{pair_name(*pair, rate)}")  # fmt: skip
                                        with ns.chaos(rate, seed + r):
                                            ns.client(client_kind, lossy_rows[(pair, rate)],
                                                      digest, seed + r, timeout)  # fmt: skip
    except NetnsError as exc:
        clean.skipped = lossy.skipped = str(exc)
    if len(loss_rates) > 1:
        lossy.notes.append(
            f"The original client's pairs run at {min(loss_rates):.0%} only: each of its runs "
            "takes about a minute without loss."
        )
    return [clean, lossy]


def bearable(pair: tuple[str, str], rate: float, loss_rates: list[float]) -> bool:
    """Whether a pair runs at this loss rate: the original client's pairs only at the lowest."""
    return pair[1] != "original" or rate == min(loss_rates)
