"""``stacklab verify CAPTURE...``: check captures automatically, for people and for CI.

Exit status: 0 when every check passes, 1 when any fails (an unfinished
transfer included), 2 when an input cannot be read (one line on stderr).  A
truncated capture is not an input error: the frames before the cut are
verified and a warning is printed, and whatever the cut leaves unfinished
fails on its own.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import Final

import click

from stacklab.analysis.checks import parse_expect
from stacklab.analysis.pcapio import CaptureError
from stacklab.analysis.sessions import CaptureAnalysis, VerifyOptions, report_json
from stacklab.errors import UserError
from stacklab.wire import ORIGINAL_MAX_WINDOW, Ports

_PORT = click.IntRange(1, 65535)
_DEFAULT: Final = Ports()
_MAX_FRAMES_SHOWN: Final = 8
_MAX_SESSIONS_SHOWN: Final = 10
_MAX_ROWS: Final = 40
_STATUS_STYLE: Final = {"fail": "bold red", "pass": "green", "skip": "dim"}


@click.command("verify")
@click.argument("captures", nargs=-1, required=True, type=click.Path(dir_okay=True))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of tables.")
@click.option(
    "--junit", "junit_path", type=click.Path(dir_okay=False), help="Also write JUnit XML here."
)
@click.option(
    "--max-window",
    type=click.IntRange(1, 1 << 20),
    default=ORIGINAL_MAX_WINDOW,
    show_default=True,
    help="Largest window the sender may use (a window negotiated in the SYN-ACK replaces it).",
)
@click.option("--rudp-port", type=_PORT, default=_DEFAULT.rudp, show_default=True)
@click.option("--dns-port", type=_PORT, default=_DEFAULT.dns, show_default=True)
@click.option("--dhcp-port", type=_PORT, default=_DEFAULT.dhcp, show_default=True)
@click.option("--app-port", type=_PORT, default=_DEFAULT.app, show_default=True)
@click.option(
    "--events",
    "events_path",
    type=click.Path(dir_okay=False),
    help="The RUDP engine's JSON-lines events log, to cross-check.",
)
@click.option(
    "--expect",
    help="Comma-separated checks that must be present, e.g. 'handshake' for a capture of only "
    "a handshake (handshake, delivery, gbn, aimd, teardown, rudp, dhcp, dns, app).",
)
@click.option(
    "--min-rto",
    type=click.FloatRange(0.0, 60.0),
    default=0.2,
    show_default=True,
    help="Shortest retransmission timeout the sender may use, in seconds.",
)
@click.option(
    "--jobs",
    type=click.IntRange(1, 64),
    default=None,
    help="Processes sharing the RUDP sessions (default: 2 for captures of 32 MB or more on 4+ cores).",
)
@click.option(
    "--engine",
    type=click.Choice(["native", "tshark"]),
    default="native",
    show_default=True,
    help="native: stacklab's streaming reader; tshark: tshark with the generated Lua dissector.",
)
def verify(
    captures: tuple[str, ...],
    as_json: bool,
    junit_path: str | None,
    max_window: int,
    rudp_port: int,
    dns_port: int,
    dhcp_port: int,
    app_port: int,
    events_path: str | None,
    expect: str | None,
    min_rto: float,
    jobs: int | None,
    engine: str,
) -> None:
    """Check captures: handshake, delivery, Go-Back-N, AIMD, teardown, DHCP, DNS, framing.

    Exit 0 when every check passes, 1 when any fails, 2 when a capture cannot
    be read.  A truncated capture is verified up to the cut, with a warning.
    """
    ports = (rudp_port, dns_port, dhcp_port, app_port)
    if len(set(ports)) != len(ports):
        raise UserError("--rudp-port, --dns-port, --dhcp-port and --app-port must all differ")
    try:
        expected = parse_expect(expect)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if events_path is not None and not os.access(events_path, os.R_OK):
        raise UserError(f"{events_path}: cannot read the events file")
    options = VerifyOptions(
        ports=Ports(rudp=rudp_port, dns=dns_port, dhcp=dhcp_port, app=app_port),
        max_window=max_window,
        expect=expected,
        min_rto=min_rto,
        events_path=events_path,
        keep_series=as_json,
        jobs=jobs,
    )
    analyze: Callable[[str, VerifyOptions], CaptureAnalysis]
    errors: tuple[type[Exception], ...] = (CaptureError,)
    if engine == "tshark":
        from stacklab.analysis import tshark_engine

        analyze = tshark_engine.analyze_capture
        errors = (CaptureError, tshark_engine.TsharkError)
    else:
        from stacklab.analysis.verify import analyze_capture

        analyze = analyze_capture
    analyses: list[CaptureAnalysis] = []
    for path in captures:
        try:
            analyses.append(analyze(path, options))
        except errors as exc:
            raise UserError(str(exc)) from None
    for analysis in analyses:
        for warning in analysis.warnings:
            click.echo(f"stacklab: warning: {analysis.path}: {warning}", err=True)
    if junit_path is not None:
        from stacklab.analysis.junit import write_junit

        try:
            write_junit(analyses, junit_path)
        except OSError as exc:
            raise UserError(f"cannot write {junit_path}: {exc.strerror}") from None
    if as_json:
        sys.stdout.write(json.dumps(report_json(analyses), indent=2) + "\n")
    else:
        _print_human(analyses)
    sys.exit(0 if all(analysis.passed for analysis in analyses) else 1)


def _frames(frames: list[int]) -> str:
    shown = ", ".join(str(f) for f in frames[:_MAX_FRAMES_SHOWN])
    return shown + (f", ... ({len(frames)})" if len(frames) > _MAX_FRAMES_SHOWN else "")


def _print_human(analyses: list[CaptureAnalysis]) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    # Text from the capture is escaped: "[fd00::1]:41000" would read as markup.
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 140)
    for analysis in analyses:
        trunc = " [yellow](truncated)[/]" if analysis.truncated else ""
        console.print(
            f"[bold]{analysis.path}[/]: {analysis.packets} frames, link type "
            f"{analysis.link_type}{trunc}"
        )
        sessions = analysis.rudp_sessions
        for s in sessions[:_MAX_SESSIONS_SHOWN]:
            state = "[green]complete[/]" if s.complete else "[red]incomplete[/]"
            timeouts = ", ".join(f"{t:.3f}" for t in s.timeouts[:6])
            if len(s.timeouts) > 6:
                timeouts += ", ..."
            console.print(
                f"  RUDP {escape(s.client)} -> {escape(s.server)}: {state}, ISN {s.isn}, {s.chunks} chunk(s), "
                f"{s.bytes} bytes, {s.data_packets} DATA, {s.retransmissions} retransmitted, "
                f"{s.go_backs} go-back(s)" + (f" after {timeouts} s" if timeouts else "") + ", "
                f"max in flight {s.max_flight}, longest ACK wait {s.max_ack_delay:.3f} s"
            )
            if s.command:
                console.print(f"       command {escape(repr(s.command))}, sha256 {s.sha256 or '-'}")
        if len(sessions) > _MAX_SESSIONS_SHOWN:
            done = sum(1 for s in sessions if s.complete)
            console.print(
                f"  ... {len(sessions) - _MAX_SESSIONS_SHOWN} more RUDP sessions "
                f"({done} of {len(sessions)} complete; --json lists them all)"
            )
        for t in analysis.tcp_sessions[:_MAX_SESSIONS_SHOWN]:
            console.print(
                f"  app {escape(t.client)} -> {escape(t.server)}: request {escape(repr(t.request))}, "
                f"response {t.response_length} bytes"
            )
        exchanges = [ex for ex in (*analysis.dhcp, *analysis.dns) if ex.problem != "ignored"]
        for ex in exchanges[:_MAX_SESSIONS_SHOWN]:
            console.print(f"  {ex.kind} {ex.client} -> {ex.server}: {ex.reply}", markup=False)
        table = Table(show_header=True, header_style="bold", expand=False)
        table.add_column("status")
        table.add_column("check")
        table.add_column("client")
        table.add_column("detail", overflow="fold")
        table.add_column("frames", overflow="fold")
        failures = [c for c in analysis.checks if c.status == "fail"]
        others = [c for c in analysis.checks if c.status != "fail"]
        for check in failures[:_MAX_ROWS]:
            table.add_row(
                "[bold red]FAIL[/]",
                check.id,
                escape(check.session.split("->")[0]),
                escape(check.detail),
                _frames(check.frames),
            )
        if len(failures) > _MAX_ROWS:
            table.add_row(
                "[bold red]FAIL[/]", "...", "", f"{len(failures) - _MAX_ROWS} more failures", ""
            )
        if len(analysis.checks) <= _MAX_ROWS:
            for check in others:
                style = _STATUS_STYLE[check.status]
                table.add_row(
                    f"[{style}]{check.status.upper()}[/]",
                    check.id,
                    escape(check.session.split("->")[0]),
                    escape(check.detail),
                    _frames(check.frames),
                )
        else:  # many sessions: one row per check and status
            groups: dict[tuple[str, str], int] = {}
            for check in others:
                groups[(check.status, check.id)] = groups.get((check.status, check.id), 0) + 1
            for (status, check_id), count in groups.items():
                style = _STATUS_STYLE[status]
                table.add_row(
                    f"[{style}]{status.upper()}[/]", check_id, f"{count} sessions", "", ""
                )
        console.print(table)
        counts = {s: sum(1 for c in analysis.checks if c.status == s) for s in _STATUS_STYLE}
        verdict = "[bold green]PASS[/]" if analysis.passed else "[bold red]FAIL[/]"
        console.print(
            f"{verdict}: {counts['pass']} passed, {counts['fail']} failed, "
            f"{counts['skip']} skipped\n"
        )
