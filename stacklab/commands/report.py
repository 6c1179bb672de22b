"""``stacklab report CAPTURE``: one self-contained HTML page about a capture.

The verdict and the checks (failures first, with frame numbers), per RUDP
session the time-sequence and window graphs, the ladder diagram and the
decoded packet table, in one file that opens offline.  The exit status is
that of the report being written (0), not of the checks: ``stacklab verify``
is the command that fails a build.
"""

from __future__ import annotations

import os

import click

from stacklab.commands.plot import capture_options, capture_stem, check_capture, make_ports
from stacklab.errors import UserError


@click.command("report")
@click.argument("capture", type=click.Path())
@click.option(
    "-o",
    "--output",
    "out",
    type=click.Path(dir_okay=False),
    help="The HTML file to write (default: CAPTURE's name with .html, in the current folder).",
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
    from stacklab.analysis.pcapio import CaptureError
    from stacklab.analysis.report import ReportOptions, write_report

    ports = make_ports(rudp_port, dns_port, dhcp_port, app_port, origin_port)
    check_capture(capture)
    if events_path is not None and not os.path.isfile(events_path):
        raise UserError(f"{events_path}: no such events log")
    target = out if out is not None else f"{capture_stem(capture)}.html"
    folder = os.path.dirname(target) or "."
    if not os.path.isdir(folder):
        raise UserError(f"{folder}: no such folder for the report")
    options = ReportOptions(
        ports=ports,
        max_window=max_window,
        min_rto=min_rto,
        events_path=events_path,
        max_rows=max_rows,
        max_sessions=max_sessions,
    )
    try:
        result = write_report(capture, target, options)
    except CaptureError as exc:
        raise UserError(str(exc)) from None
    except OSError as exc:
        raise UserError(f"cannot write {target}: {exc.strerror}") from None
    analysis = result.analysis
    failed = sum(1 for c in analysis.checks if c.status == "fail")
    verdict = "PASS" if analysis.passed else f"FAIL ({failed} failed)"
    click.echo(
        f"wrote {target}: {len(result.html):,} bytes, {analysis.packets:,} frames, "
        f"{len(analysis.checks)} checks {verdict}, {result.sessions_drawn} session(s) charted, "
        f"{result.rows:,} table rows"
    )
