"""``stacklab fetch URL``: the original client, DHCP -> DNS -> app server -> save.

Every failure is one line and a non-zero exit, and no output file appears
unless the whole body arrived (it is written to a temporary file and renamed).
Over RUDP the body is written to that temporary file as it arrives, so memory
stays flat whatever the size; ``-o -`` streams it to standard output.
Like the original client, an existing file of the same name is replaced
(``--no-clobber`` refuses instead); the events log is never written over an
output of the same run, and ``-o -`` writes the content to standard output.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import posixpath
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import unquote, urlsplit

import click
from click.core import ParameterSource

from stacklab import wire
from stacklab.errors import UserError
from stacklab.files import Output, resolve_output, write_output
from stacklab.params import FINITE_FLOAT, FiniteFloatRange

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

PROGRESS_AFTER_S = 0.5
"""Show a progress bar only for transfers that last longer than this."""


class FetchFailed(UserError):
    """The transfer failed (no answer, NOT_FOUND, refused, server ERROR, timeout): exit 1."""

    exit_code = 1


def parse_hostport(text: str, option: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) into a tuple, or a UserError naming the option."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError(f"{option} {text!r}: expected HOST:PORT")
    return host, int(port)


def default_output(url: str) -> str:
    """The URL's file name (``index.html`` when the path has none)."""
    name = posixpath.basename(unquote(urlsplit(url).path))
    if name in ("", ".", "..") or "\x00" in name:
        return "index.html"
    return name


class LazyProgress:
    """A rich progress bar that appears only once a transfer has lasted a moment.

    rich is imported only then: a quick fetch does not pay for loading it.
    """

    def __init__(self, enabled: bool, label: str) -> None:
        self.enabled = enabled
        self.label = label
        self.started = time.monotonic()
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        if self._progress is None:
            if time.monotonic() - self.started < PROGRESS_AFTER_S:
                return
            from rich.console import Console
            from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

            self._progress = Progress(
                "[progress.description]{task.description}",
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self._progress.start()
            self._task = self._progress.add_task(self.label, total=total or None)
        assert self._task is not None
        self._progress.update(self._task, completed=done, total=total or None)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()


@contextmanager
def phase(timings: dict[str, float], name: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[name] = round(time.perf_counter() - start, 6)


def parse_delay(value: str | None) -> tuple[float, float] | None:
    """``A:B`` (or ``A``) seconds into a (min, max) pair; a UserError otherwise."""
    if value is None:
        return None
    low, _, high = value.partition(":")
    try:
        a, b = float(low), float(high or low)
    except ValueError:
        raise UserError(f"--delay {value!r}: expected A:B in seconds, e.g. 0.1:0.4") from None
    if not 0 <= a <= b or b > 60:
        raise UserError(f"--delay {value!r}: need 0 <= A <= B <= 60")
    return a, b


def _explicit(options: dict[str, Any]) -> dict[str, Any]:
    """The options given on the command line (defaults are left to ``fetch_rudp``)."""
    ctx = click.get_current_context()
    return {
        name: value
        for name, value in options.items()
        if ctx.get_parameter_source(name) is not ParameterSource.DEFAULT
    }


def _load_rudp() -> Callable[..., Any]:
    """The streaming RUDP client, imported only for an RUDP fetch (it loads the whole engine)."""
    module = importlib.import_module("stacklab.services.rudp_client")
    fetch_rudp_stream: Callable[..., Any] = module.fetch_rudp_stream
    return fetch_rudp_stream


@click.command("fetch")
@click.argument("url", default=wire.DEFAULT_URL)
@click.option(
    "--transport",
    type=click.Choice(["tcp", "rudp"]),
    default="tcp",
    show_default=True,
    help="App protocol: framed TCP (2121) or RUDP (2122).",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, allow_dash=True),
    help="File to write (default: URL's name; replaced if it exists, as the original did; "
    "'-' for standard output).",
)
@click.option("--no-clobber", is_flag=True, help="Refuse to replace an existing output file.")
@click.option("--server", help="App server HOST:PORT; skips DHCP and DNS.")
@click.option(
    "--dhcp",
    default=f"{wire.DHCP_ADDR}:{wire.DHCP_PORT}",
    show_default=True,
    help="DHCP server HOST:PORT.",
)
@click.option(
    "--dns",
    default=f"{wire.DNS_ADDR}:{wire.DNS_PORT}",
    show_default=True,
    help="DNS server HOST:PORT.",
)
@click.option(
    "--name", default=wire.APP_DOMAIN, show_default=True, help="App server name to resolve."
)
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=None,
    help="App server port (default: 2121 tcp, 2122 rudp).",
)
@click.option(
    "--timeout",
    type=FINITE_FLOAT,
    default=5.0,
    show_default=True,
    help="Seconds to wait for each answer (DHCP/DNS attempt, connect, each read; over RUDP "
    "the handshake and any silence, 60 s of silence unless given).",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary instead of a sentence.")
@click.option(
    "--chunk",
    type=click.IntRange(1, wire.MAX_STACKLAB_CHUNK),
    default=wire.STACKLAB_DEFAULT_CHUNK,
    show_default=True,
    help="RUDP: content bytes per datagram (the default fits one Ethernet MTU).",
)
@click.option(
    "--window",
    type=click.IntRange(1, 4096),
    default=256,
    show_default=True,
    help="RUDP: largest window to ask for, in chunks (the server may grant less).",
)
@click.option(
    "--no-integrity",
    "integrity",
    flag_value=False,
    default=True,
    help="RUDP: no CRC32C per datagram and no SHA-256 in the FIN.",
)
@click.option(
    "--integrity",
    "require_integrity",
    type=click.Choice(["required"]),
    callback=lambda ctx, param, value: value == "required",
    help="RUDP: `--integrity required` fails instead of falling back when the server "
    "does not grant integrity (by default the fallback is only reported).",
)
@click.option(
    "--legacy",
    is_flag=True,
    help="RUDP: behave exactly like the original client (empty SYN, 500-byte chunks, window 5).",
)
@click.option(
    "--drop",
    type=FiniteFloatRange(0.0, 1.0),
    default=0.0,
    help="RUDP fault injection: ignore this share of DATA datagrams (never ACKed).",
)
@click.option(
    "--delay",
    metavar="A:B",
    callback=lambda ctx, param, value: parse_delay(value),
    help="RUDP fault injection: wait A..B seconds before handling each DATA datagram.",
)
@click.option(
    "--seed", type=int, default=0, show_default=True, help="RUDP: seed of --drop and --delay."
)
@click.option(
    "--events",
    type=click.Path(dir_okay=False),
    help="RUDP: write the engine's events as JSON lines (wall-clock times) to this file.",
)
def fetch(
    url: str,
    transport: str,
    output: str | None,
    no_clobber: bool,
    server: str | None,
    dhcp: str,
    dns: str,
    name: str,
    port: int | None,
    timeout: float,
    as_json: bool,
    **rudp_options: Any,
) -> None:
    """Fetch URL through the app server and save it (default URL: the original test file)."""
    from stacklab.services import client

    if timeout <= 0:
        raise UserError("--timeout must be positive")
    out_path = Path(output or default_output(url))
    if output != "-" and out_path.parent and not out_path.parent.is_dir():
        raise UserError(f"output directory {str(out_path.parent)!r} does not exist")
    out = resolve_output(out_path if output != "-" else "-", replace_by_default=not no_clobber)
    rudp_options = _explicit(rudp_options)
    events = rudp_options.get("events")
    if events is not None:
        if out.kind != "stdout" and os.path.abspath(events) == os.path.abspath(out.target):
            raise UserError(f"--events {events}: is the output file too")
        try:
            rudp_options["events"] = resolve_output(events, replace_by_default=True).target
        except UserError as exc:
            raise UserError(f"cannot write the events file {events!r}: {exc}") from None
    if rudp_options.get("require_integrity") and (
        rudp_options.get("legacy") or rudp_options.get("integrity") is False
    ):
        raise UserError("--integrity required: not with --no-integrity or --legacy")
    if transport != "rudp" and rudp_options:
        names = ", ".join("--" + k.replace("_", "-") for k in sorted(rudp_options))
        raise UserError(f"{names}: only with --transport rudp")
    if transport == "rudp" and _explicit({"timeout": timeout}):
        # RUDP keeps its longer default: a sender backing off under heavy loss
        # may be silent for 10 s and more, well past the 5 s of --timeout.
        rudp_options["answer_timeout"] = timeout
    fetch_rudp = _load_rudp() if transport == "rudp" else None
    timings: dict[str, float] = {}
    summary: dict[str, Any] = {"url": url, "transport": transport}
    # A bar only for a person watching: on a pipe or a file it would leave a blank line.
    progress = LazyProgress(
        not as_json and sys.stderr.isatty(), f"{transport} {default_output(url)}"
    )
    try:
        if server is not None:
            app = parse_hostport(server, "--server")
        else:
            dhcp_addr, dns_addr = parse_hostport(dhcp, "--dhcp"), parse_hostport(dns, "--dns")
            with phase(timings, "dhcp"):
                summary["assigned_ip"] = client.discover(dhcp_addr, timeout=timeout)
            with phase(timings, "dns"):
                resolved = client.resolve(dns_addr, name, timeout=timeout)
            default_port = wire.APP_TCP_PORT if transport == "tcp" else wire.APP_RUDP_PORT
            app = (resolved, port if port is not None else default_port)
        summary["server"] = f"{app[0]}:{app[1]}"
        if fetch_rudp is not None:
            size, digest = _fetch_streamed(
                fetch_rudp, app, url, out, progress, timings, rudp_options
            )
        else:
            with phase(timings, "transfer"):
                data = client.fetch_tcp(app, url, timeout=timeout, progress=progress)
    except client.ClientError as exc:
        raise FetchFailed(str(exc)) from None
    finally:
        progress.close()
    if fetch_rudp is None:
        with phase(timings, "save"):
            try:
                write_output(out, data)
            except OSError as exc:
                raise FetchFailed(
                    f"cannot write {str(out_path)!r}: {exc.strerror or exc}"
                ) from None
        size, digest = len(data), hashlib.sha256(data).hexdigest()
    summary.update(output=str(out), bytes=size, sha256=digest, timings=timings)
    err = out.kind == "stdout"
    if as_json:
        click.echo(json.dumps(summary, indent=2), err=err)
        return
    seconds = timings["transfer"]
    rate = size / seconds / 1e6 if seconds > 0 else float("inf")
    click.echo(
        f"saved {size} bytes to {out} from {summary['server']} over {transport} "
        f"in {seconds:.3f} s ({rate:.1f} MB/s), sha256 {digest[:16]}…",
        err=err,
    )


def _fetch_streamed(
    fetch_rudp_stream: Callable[..., Any],
    app: tuple[str, int],
    url: str,
    out: Output,
    progress: LazyProgress,
    timings: dict[str, float],
    options: dict[str, Any],
) -> tuple[int, str]:
    """Fetch over RUDP straight into the output: a temporary file renamed on success.

    ``transfer`` is timed up to the FIN's check, ``save`` is what follows
    (the last batch, flushing to disk, the rename).
    """
    received: list[Any] = []
    start = time.perf_counter()
    ended = [start]

    def receive(handle: BinaryIO) -> None:
        received.append(fetch_rudp_stream(app, url, handle.write, progress=progress, **options))
        ended[0] = time.perf_counter()

    try:
        write_output(out, receive)
    except OSError as exc:
        raise FetchFailed(f"cannot write {str(out.path)!r}: {exc.strerror or exc}") from None
    timings["transfer"] = round(ended[0] - start, 6)
    timings["save"] = round(time.perf_counter() - ended[0], 6)
    return received[0].size, received[0].sha256
