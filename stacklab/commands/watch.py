"""``stacklab watch -i IFACE [-w FILE] [--duration S]``: verify the stack's traffic live.

dumpcap writes its pcapng stream into a pipe; every frame, as soon as it is
whole, goes to the verifier's trackers (:mod:`stacklab.analysis.live`), and a
table of the RUDP sessions (chunks, retransmissions, window, go-backs, the
checks so far) is redrawn a few times a second.  Ctrl-C (exit 130) or the end
of ``--duration`` stops dumpcap; the frames it still holds are read to the
end of the stream, and the final verdicts are printed as ``stacklab verify``
prints them (the same trackers, the same rules: equal to ``verify`` on the
file that ``-w`` keeps, byte for byte what dumpcap wrote).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from types import FrameType
from typing import IO, Any, BinaryIO, Final, cast

import click

from stacklab.analysis.live import LiveRow, StreamAnalysis, live_rows
from stacklab.analysis.pcapio import CaptureError, CaptureReader, Frame
from stacklab.analysis.sessions import CaptureAnalysis, VerifyOptions, report_json
from stacklab.errors import UserError
from stacklab.tools.capture import SYNC_ADDR, SYNC_MAGIC, SYNC_PORT, capture_filter
from stacklab.wire import ORIGINAL_MAX_WINDOW, Ports

_PORT = click.IntRange(1, 65535)
_DEFAULT: Final = Ports()
REFRESH_S: Final = 0.25
"""Shortest interval between two redraws of the live table."""
_STATE_STYLE: Final = {"fail": "bold red", "ok so far": "green"}
EXIT_INTERRUPTED: Final = 130
STOP_GRACE_S: Final = 3.0
"""Longest wait, after a stop is asked for, for the packets dumpcap still holds."""
MARKER_EVERY_S: Final = 0.25


class _Stopper:
    """Stop dumpcap without losing the packets it has not handed over yet.

    On Linux, packets reach dumpcap in blocks, so an interrupt sent at once
    would drop the last moments of traffic.  Instead a marker datagram goes
    to the discard port on 127.0.0.1 (which the capture filter also matches,
    as in ``stacklab capture``) every quarter second; dumpcap is interrupted
    when the marker comes out of the stream, that is once every earlier
    packet has.  On an interface that never sees the marker, after
    :data:`STOP_GRACE_S` anyway.
    """

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.marker = SYNC_MAGIC + b"watch-end:" + os.urandom(6).hex().encode()
        self.requested = threading.Event()
        self.interrupted = False  # by Ctrl-C, rather than by --duration
        self._done = threading.Event()

    def request(self, *, interrupted: bool) -> None:
        """Ask for the end (Ctrl-C or the end of --duration); a second Ctrl-C stops at once."""
        if self.requested.is_set():
            if interrupted:
                self.interrupted = True
                self.now()
            return
        self.interrupted = interrupted
        self.requested.set()
        threading.Thread(target=self._send_markers, name="stacklab-watch-stop", daemon=True).start()

    def seen(self, data: bytes) -> bool:
        """True when ``data`` (a frame) is the marker: everything before it has arrived."""
        if self.marker in data:
            self.now()
            return True
        return False

    def now(self) -> None:
        """Interrupt dumpcap (it then writes what it holds and closes the stream)."""
        self._done.set()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)

    def _send_markers(self) -> None:
        deadline = time.monotonic() + STOP_GRACE_S
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            while not self._done.is_set() and time.monotonic() < deadline:
                with contextlib.suppress(OSError):
                    sock.sendto(self.marker, (SYNC_ADDR, SYNC_PORT))
                self._done.wait(MARKER_EVERY_S)
        self.now()


class _Tee:
    """dumpcap's stream, with every byte read also written to the ``-w`` file."""

    def __init__(self, stream: BinaryIO, copy: IO[bytes] | None) -> None:
        self.stream = stream
        self.copy = copy

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        if self.copy is not None and data:
            self.copy.write(data)
        return data

    def read1(self, size: int = -1) -> bytes:
        data = self.stream.read1(size)  # type: ignore[attr-defined]
        if self.copy is not None and data:
            self.copy.write(data)
        return bytes(data)


def live_table(rows: list[LiveRow], frames: int, interface: str) -> Any:
    """The rich table of the sessions seen so far."""
    from rich.table import Table

    table = Table(
        title=f"stacklab watch on {interface}: {frames} frames (Ctrl-C for the verdicts)",
        header_style="bold",
    )
    for name in ("client", "state", "packets", "chunks", "retx", "window", "go-backs"):
        table.add_column(name, justify="left" if name in ("client", "state") else "right")
    table.add_column("checks so far")
    for row in rows[-20:]:
        failed = [check for check, state in row.checks.items() if state == "fail"]
        checks = "[bold red]FAIL " + ", ".join(failed) + "[/]" if failed else "[green]ok so far[/]"
        table.add_row(
            row.session.split("->")[0],
            row.state,
            str(row.packets),
            str(row.chunks),
            str(row.retransmissions),
            str(row.window),
            str(row.go_backs),
            checks,
        )
    if len(rows) > 20:
        table.caption = f"{len(rows) - 20} earlier sessions not shown"
    return table


@click.command("watch")
@click.option(
    "-i",
    "--interface",
    default=None,
    help="Interface to capture on (default: the loopback interface).",
)
@click.option(
    "-w",
    "--write",
    "out_path",
    type=click.Path(dir_okay=False),
    help="Keep the capture in this pcapng file (written whole when the watch ends).",
)
@click.option(
    "--duration",
    type=click.FloatRange(0.0, min_open=True),
    default=None,
    help="Stop after this many seconds (default: run until Ctrl-C).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the final verdicts as JSON.")
@click.option(
    "--max-window", type=click.IntRange(1, 1 << 20), default=ORIGINAL_MAX_WINDOW, show_default=True
)
@click.option("--rudp-port", type=_PORT, default=_DEFAULT.rudp, show_default=True)
@click.option("--dns-port", type=_PORT, default=_DEFAULT.dns, show_default=True)
@click.option("--dhcp-port", type=_PORT, default=_DEFAULT.dhcp, show_default=True)
@click.option("--app-port", type=_PORT, default=_DEFAULT.app, show_default=True)
def watch(
    interface: str | None,
    out_path: str | None,
    duration: float | None,
    as_json: bool,
    max_window: int,
    rudp_port: int,
    dns_port: int,
    dhcp_port: int,
    app_port: int,
) -> None:
    """Verify the stack's traffic live: a table of sessions, the verdicts at the end.

    Exit 0 when every check passes, 1 when one fails, 130 after Ctrl-C
    (verdicts printed first), 2 when capturing is impossible.
    """
    from stacklab.tools.capture import (
        CaptureToolError,
        default_interface,
        find_tool,
        permission_problem,
    )

    ports = (rudp_port, dns_port, dhcp_port, app_port)
    if len(set(ports)) != len(ports):
        raise UserError("--rudp-port, --dns-port, --dhcp-port and --app-port must all differ")
    options = VerifyOptions(
        ports=Ports(rudp=rudp_port, dns=dns_port, dhcp=dhcp_port, app=app_port),
        max_window=max_window,
    )
    interface = interface or default_interface()
    try:
        dumpcap = find_tool("dumpcap")
    except CaptureToolError as exc:
        raise UserError(str(exc)) from None
    problem = permission_problem(dumpcap)
    if problem is not None:
        raise UserError(problem)
    bpf = capture_filter(
        (("udp", rudp_port), ("udp", dns_port), ("udp", dhcp_port), ("tcp", app_port))
    )
    argv = [dumpcap, "-i", interface, "-f", bpf, "-w", "-", "-q"]
    name = out_path or f"<live {interface}>"
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # Ctrl-C is ours: we stop dumpcap once, cleanly
        )
    except OSError as exc:
        raise UserError(f"cannot run dumpcap: {exc.strerror}") from None
    errors = bytearray()
    drain = threading.Thread(target=lambda: errors.extend(proc.stderr.read()), daemon=True)  # type: ignore[union-attr]
    drain.start()
    stopper = _Stopper(proc)

    def on_sigint(_signum: int, _frame: FrameType | None) -> None:
        stopper.request(interrupted=True)

    previous = signal.signal(signal.SIGINT, on_sigint)
    timer = None
    if duration is not None:
        timer = threading.Timer(duration, stopper.request, kwargs={"interrupted": False})
        timer.daemon = True
    try:
        if timer is not None:
            timer.start()
        analysis = _run(proc, stopper, options, name, interface, out_path)
    finally:
        if timer is not None:
            timer.cancel()
        stopper.now()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        signal.signal(signal.SIGINT, previous)
    drain.join(timeout=5)
    if analysis is None:
        message = _dumpcap_error(bytes(errors)) or f"dumpcap exited with status {proc.returncode}"
        raise UserError(f"cannot capture on {interface}: {message}")
    for warning in analysis.warnings:
        click.echo(f"stacklab: warning: {warning}", err=True)
    if as_json:
        sys.stdout.write(json.dumps(report_json([analysis]), indent=2) + "\n")
    else:
        from stacklab.commands.verify import _print_human

        _print_human([analysis], options.ports)
    if out_path is not None:
        click.echo(f"capture kept in {out_path}", err=True)
    if stopper.interrupted:
        sys.exit(EXIT_INTERRUPTED)
    sys.exit(0 if analysis.passed else 1)


def _dumpcap_error(text: bytes) -> str:
    lines = [
        line.strip()
        for line in text.decode("utf-8", "replace").splitlines()
        if line.strip()
        and not line.startswith(("Capturing on", "File:", "Packets"))
        and "Running as user" not in line
    ]
    return " ".join(line.removeprefix("dumpcap: ") for line in lines)


def _run(
    proc: subprocess.Popen[bytes],
    stopper: _Stopper,
    options: VerifyOptions,
    name: str,
    interface: str,
    out_path: str | None,
) -> CaptureAnalysis | None:
    """Read the stream to its end; None when dumpcap wrote no capture at all."""
    from stacklab.files import write_atomically

    assert proc.stdout is not None
    result: list[CaptureAnalysis | None] = [None]

    def follow(copy: IO[bytes] | None) -> None:
        assert proc.stdout is not None
        stream = cast(BinaryIO, _Tee(cast(BinaryIO, proc.stdout), copy))
        result[0] = _follow(stream, stopper, options, name, interface)

    try:
        if out_path is None:
            follow(None)
        else:
            write_atomically(out_path, follow)  # no capture, no file
    except _NoCapture:
        return None
    except OSError as exc:
        raise UserError(f"cannot write {out_path}: {exc.strerror}") from None
    return result[0]


class _NoCapture(Exception):
    """dumpcap ended before writing a capture (its own message says why)."""


def _follow(
    stream: BinaryIO, stopper: _Stopper, options: VerifyOptions, name: str, interface: str
) -> CaptureAnalysis:
    from rich.console import Console
    from rich.live import Live

    console = Console(stderr=True, width=None if sys.stderr.isatty() else 100)
    try:
        reader = CaptureReader.from_stream(stream, name)
    except CaptureError:
        raise _NoCapture from None
    analysis = StreamAnalysis(options)
    last = 0.0
    announced = False
    with Live(
        live_table([], 0, interface), console=console, auto_refresh=False, transient=False
    ) as live:
        frame: Frame
        for frame in reader:
            analysis.feed(frame)
            if stopper.requested.is_set():
                stopper.seen(frame.data)
            if not announced and not console.is_terminal:
                console.print(f"stacklab watch: first frame captured on {interface}")
                announced = True
            now = time.monotonic()
            if now - last >= REFRESH_S:
                last = now
                live.update(
                    live_table(live_rows(analysis.rudp), analysis.frames, interface), refresh=True
                )
        live.update(live_table(live_rows(analysis.rudp), analysis.frames, interface), refresh=True)
    if not console.is_terminal:
        console.line()
    return analysis.finish(name, link_type=reader.linktype_name, truncated=reader.truncated)
