"""``stacklab report CAPTURE``: one self-contained HTML page about a capture.

The verdict and the checks (failures first, with frame numbers), per RUDP
session the time-sequence and window graphs, the ladder diagram and the
decoded packet table, in one file that opens offline.  The exit status is
that of the report being written (0), not of the checks: ``stacklab verify``
is the command that fails a build.

The output follows :mod:`stacklab.files`: never the capture or the events log
themselves, an existing file only with ``--force``, ``-o -`` for standard
output (the one-line summary then goes to standard error).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

import click

from stacklab.cli import is_quiet
from stacklab.commands.plot import capture_options, capture_stem, check_capture, make_ports
from stacklab.errors import UserError
from stacklab.files import resolve_output, write_output

if TYPE_CHECKING:
    from stacklab.analysis.report import Report, ReportOptions


@click.command("report")
@click.argument("capture", type=click.Path())
@click.option(
    "-o",
    "--output",
    "out",
    type=click.Path(dir_okay=False),
    help="The HTML file to write (default: CAPTURE's name with .html, in the current folder; "
    "'-' for standard output).",
)
@click.option("--force", is_flag=True, help="Replace the output file if it exists.")
@click.option(
    "--expect",
    help="Comma-separated checks that must be present, as for verify (e.g. 'handshake').",
)
@click.option(
    "--max-rows",
    type=click.IntRange(0, 1_000_000),
    default=2000,
    show_default=True,
    help="Rows of the packet table.",
)
@click.option(
    "--max-sessions",
    type=click.IntRange(0, 1000),
    default=12,
    show_default=True,
    help="RUDP sessions charted (the page says how many there were).",
)
@capture_options
def report(
    capture: str,
    out: str | None,
    force: bool,
    expect: str | None,
    max_rows: int,
    max_sessions: int,
    rudp_port: int,
    dns_port: int,
    dhcp_port: int,
    app_port: int,
    origin_port: int,
    max_window: int,
    min_rto: float,
    events_path: str | None,
) -> None:
    """Write one self-contained HTML report of CAPTURE: checks, charts, ladder, packets."""
    from stacklab.analysis.checks import parse_expect
    from stacklab.analysis.pcapio import CaptureError
    from stacklab.analysis.report import ReportOptions, build_report

    ports = make_ports(rudp_port, dns_port, dhcp_port, app_port, origin_port)
    check_capture(capture)
    if events_path is not None and not os.path.isfile(events_path):
        raise UserError(f"{events_path}: no such events log")
    try:
        expected = parse_expect(expect)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    target = out if out is not None else f"{capture_stem(capture)}.html"
    output = resolve_output(target, inputs=(capture, events_path), force=force)
    options = ReportOptions(
        ports=ports,
        max_window=max_window,
        min_rto=min_rto,
        events_path=events_path,
        max_rows=max_rows,
        max_sessions=max_sessions,
        expect=expected,
    )
    try:
        result = _build_with_status(build_report, capture, options)
    except CaptureError as exc:
        raise UserError(str(exc)) from None
    try:
        write_output(output, result.html.encode("utf-8"))
    except OSError as exc:
        raise UserError(f"cannot write {output}: {exc.strerror or exc}") from None
    analysis = result.analysis
    failed = sum(1 for c in analysis.checks if c.status == "fail")
    verdict = "PASS" if analysis.passed else f"FAIL ({failed} failed)"
    if is_quiet():
        return
    click.echo(
        f"wrote {output}: {len(result.html):,} bytes, {analysis.packets:,} frames, "
        f"{len(analysis.checks)} checks {verdict}, {result.sessions_drawn} session(s) charted, "
        f"{result.rows:,} table rows",
        err=not output.is_file,
    )


def _build_with_status(
    build: Callable[..., Report], capture: str, options: ReportOptions
) -> Report:
    """Each pass of a large report takes a while: say which one runs, on a terminal's stderr."""
    if not sys.stderr.isatty() or is_quiet():
        return build(capture, options)
    from rich.console import Console

    with Console(stderr=True).status(f"report of {os.path.basename(capture)}") as status:

        def update(step: str) -> None:
            status.update(f"report of {os.path.basename(capture)}: {step}")

        return build(capture, options, update)
