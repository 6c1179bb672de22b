"""``stacklab plot CAPTURE``: time-sequence, window and ladder diagrams as image files.

One time-sequence and one window graph per RUDP session (the first
:data:`~stacklab.analysis.series.MAX_SESSIONS` of them) and one ladder
diagram of the whole capture, named after the capture and the session:
``part4.s1-127.0.0.1-58314.timeseq.png``, ``part4.ladder.png``.
matplotlib is imported only when this command runs.

Image files of these names in the output folder are replaced (each run draws
them anew), but never an input of the run: the capture or the events log.
``--session CLIENT`` draws only the sessions of that client (``IP:PORT``, or
an IP for all its ports).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from itertools import takewhile
from typing import Any, TypeVar

import click

from stacklab.errors import UserError
from stacklab.files import resolve_output
from stacklab.params import FiniteFloatRange
from stacklab.wire import ORIGINAL_MAX_WINDOW, Ports

_PORT = click.IntRange(1, 65535)
_DEFAULT = Ports()
F = TypeVar("F", bound=Callable[..., Any])


def capture_options(func: F) -> F:
    """The options ``plot`` and ``report`` share with ``verify``: ports, window, RTO, events."""
    options = [
        click.option("--rudp-port", type=_PORT, default=_DEFAULT.rudp, show_default=True),
        click.option("--dns-port", type=_PORT, default=_DEFAULT.dns, show_default=True),
        click.option("--dhcp-port", type=_PORT, default=_DEFAULT.dhcp, show_default=True),
        click.option("--app-port", type=_PORT, default=_DEFAULT.app, show_default=True),
        click.option("--origin-port", type=_PORT, default=_DEFAULT.origin, show_default=True),
        click.option(
            "--max-window",
            type=click.IntRange(1, 1 << 20),
            default=ORIGINAL_MAX_WINDOW,
            show_default=True,
            help="Largest window the sender may use (drawn as the ceiling).",
        ),
        click.option(
            "--min-rto",
            type=FiniteFloatRange(0.0, 60.0),
            default=0.2,
            show_default=True,
            help="Shortest retransmission timeout, in seconds (classifies go-backs).",
        ),
        click.option(
            "--events",
            "events_path",
            type=click.Path(dir_okay=False),
            help="The RUDP sender's JSON-lines events log: its window is drawn over the inferred one.",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def make_ports(rudp: int, dns: int, dhcp: int, app: int, origin: int) -> Ports:
    """The port table from the options; one port per service."""
    values = (rudp, dns, dhcp, app, origin)
    if len(set(values)) != len(values):
        raise UserError(
            "--rudp-port, --dns-port, --dhcp-port, --app-port and --origin-port must all differ"
        )
    return Ports(rudp=rudp, dns=dns, dhcp=dhcp, app=app, origin=origin)


def check_capture(path: str) -> None:
    """Fail with one line when the capture is not a readable file."""
    if not os.path.exists(path):
        raise UserError(f"{path}: no such file")
    if os.path.isdir(path):
        raise UserError(f"{path}: is a directory, not a capture file")


def slug(text: str) -> str:
    """``127.0.0.1:58314`` -> ``127.0.0.1-58314``: safe in a file name."""
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-")


def _client_matches(client: str, wanted: tuple[str, ...]) -> bool:
    """``127.0.0.1:58314`` matches ``127.0.0.1:58314`` and ``127.0.0.1`` (every port)."""
    host = client.rpartition(":")[0].strip("[]")
    return any(w == client or w.strip("[]") == host for w in wanted)


def capture_stem(path: str) -> str:
    name = os.path.basename(path)
    for ext in (".pcapng", ".pcap", ".cap"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return name


@click.command("plot")
@click.argument("capture", type=click.Path())
@click.option(
    "-o",
    "--output",
    "outdir",
    type=click.Path(),
    default=".",
    show_default=True,
    help="Folder for the image files (created if missing).",
)
@click.option(
    "--format", "fmt", type=click.Choice(["png", "svg"]), default="png", show_default=True
)
@click.option(
    "--session",
    "clients",
    multiple=True,
    metavar="CLIENT",
    help="Only the RUDP sessions of this client, IP:PORT or IP (repeat for several).",
)
@capture_options
def plot(
    capture: str,
    outdir: str,
    fmt: str,
    clients: tuple[str, ...],
    rudp_port: int,
    dns_port: int,
    dhcp_port: int,
    app_port: int,
    origin_port: int,
    max_window: int,
    min_rto: float,
    events_path: str | None,
) -> None:
    """Draw time-sequence and window graphs per RUDP session and a ladder of CAPTURE."""
    from rich.console import Console
    from rich.table import Table

    from stacklab.analysis import plots
    from stacklab.analysis.decode import decode_capture
    from stacklab.analysis.ladder import build_ladder, ladder_figure
    from stacklab.analysis.pcapio import CaptureError
    from stacklab.analysis.report import DECODE_LIMIT
    from stacklab.analysis.series import align_sender_window, collect_series, read_sender_window

    ports = make_ports(rudp_port, dns_port, dhcp_port, app_port, origin_port)
    check_capture(capture)
    sender = None
    if events_path is not None:
        try:
            sender = read_sender_window(events_path)
        except OSError as exc:
            raise UserError(f"{events_path}: cannot read the events log: {exc.strerror}") from None
    try:
        os.makedirs(outdir, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{outdir}: cannot create the folder: {exc.strerror}") from None
    stem = capture_stem(capture)
    inputs = (capture, events_path)

    def output(path: str) -> Any:
        return resolve_output(path, inputs=inputs, replace_by_default=True)

    written: list[tuple[str, str]] = []
    try:
        series = collect_series(capture, ports, max_window=max_window, min_rto=min_rto)
        chosen = [
            (index, s)
            for index, s in enumerate(series.sessions, 1)
            if not clients or _client_matches(s.key.split("->")[0].strip(), clients)
        ]
        if clients and not chosen:
            known = ", ".join(s.key.split("->")[0].strip() for s in series.sessions[:8])
            raise UserError(
                f"--session: no RUDP session of {', '.join(clients)} (sessions: {known or 'none'})"
            )
        target = sender.pick([s for _, s in chosen]) if sender is not None else None
        for index, s in chosen:
            name = f"s{index}-{slug(s.key.split('->')[0])}"
            label = f"{stem} — session {index}: {s.key}"
            fig = plots.time_sequence_figure(s, f"{label}: time-sequence")
            path = os.path.join(outdir, f"{stem}.{name}.timeseq.{fmt}")
            plots.save_figure(fig, output(path), fmt)
            written.append(
                (path, f"time-sequence, {len(s.data)} DATA ({s.retransmissions} retransmitted)")
            )
            overlay = align_sender_window(sender, s) if sender is not None and s is target else None
            limit = s.window_limit or max_window  # a window negotiated in the SYN wins
            fig = plots.window_figure(s, f"{label}: window", limit, overlay)
            path = os.path.join(outdir, f"{stem}.{name}.window.{fmt}")
            plots.save_figure(fig, output(path), fmt)
            written.append((path, f"window, {len(s.go_backs)} go-backs"))
        packets = takewhile(lambda p: p.frame <= DECODE_LIMIT, decode_capture(capture, ports))
        ladder = build_ladder(packets, ports)
        fig = ladder_figure(ladder, f"{stem}: ladder diagram")
        path = os.path.join(outdir, f"{stem}.ladder.{fmt}")
        plots.save_figure(fig, output(path), fmt)
        written.append((path, f"ladder, {len(ladder.arrows)} rows"))
    except CaptureError as exc:
        raise UserError(str(exc)) from None
    except OSError as exc:
        raise UserError(f"cannot write into {outdir}: {exc.strerror}") from None
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
    table = Table(show_header=True, header_style="bold")
    table.add_column("file")
    table.add_column("what")
    for path, what in written:
        table.add_row(path, what)
    console.print(table)
    if clients:
        console.print(f"drawn: {len(chosen)} of {len(series.sessions)} RUDP sessions (--session)")
    elif series.total_sessions > len(series.sessions):
        console.print(
            f"drawn: the first {len(series.sessions)} of {series.total_sessions} RUDP sessions"
        )
