"""``stacklab verify CAPTURE...``: check captures automatically, for people and for CI.

Exit status: 0 when every check passes, 1 when any fails (an unfinished
transfer included) or some of several captures cannot be read, 2 when no
capture can be read (one line on stderr each).  An unreadable capture is a
result of its own (a line, a JSON entry, a JUnit error) and the others are
still verified.  A truncated capture is not an input error: the frames before
the cut are verified and a warning is printed, and whatever the cut leaves
unfinished fails on its own.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

import click

from stacklab.analysis.checks import parse_expect
from stacklab.analysis.pcapio import (
    LINKTYPE_NAMES,
    CaptureError,
    link_type_problem,
)
from stacklab.analysis.sessions import CaptureAnalysis, VerifyOptions
from stacklab.analysis.unreadable import Unreadable, write_results_json
from stacklab.cli import is_quiet
from stacklab.errors import UserError
from stacklab.params import FiniteFloatRange
from stacklab.wire import ORIGINAL_MAX_WINDOW, Ports

if TYPE_CHECKING:
    from stacklab.files import Output

_PORT = click.IntRange(1, 65535)
_DEFAULT: Final = Ports()
_MAX_FRAMES_SHOWN: Final = 8
_MAX_SESSIONS_SHOWN: Final = 10
_MAX_ROWS: Final = 40
_STATUS_STYLE: Final = {"fail": "bold red", "pass": "green", "skip": "dim"}


@click.command("verify")
@click.argument("captures", nargs=-1, type=click.Path(dir_okay=True))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of tables.")
@click.option(
    "--junit",
    "junit_path",
    type=click.Path(dir_okay=False, allow_dash=True),
    help="Also write JUnit XML here (replaced if it exists, never a capture; '-': stdout).",
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
    type=FiniteFloatRange(0.0, 60.0),
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
    "--annotate",
    "annotate_path",
    type=click.Path(dir_okay=False, allow_dash=True),
    help="Also write the capture (pcapng, one only) with the findings as packet comments.",
)
@click.option("--force", is_flag=True, help="Replace the --annotate file if it exists.")
@click.option(
    "--engine",
    type=click.Choice(["native", "tshark"]),
    default="native",
    show_default=True,
    help="native: stacklab's streaming reader; tshark: tshark with the generated Lua dissector.",
)
@click.option(
    "--checks",
    "checks_path",
    type=click.Path(dir_okay=False),
    help="Judge the captures by this expectation file (YAML or TOML); with no CAPTURES, all "
    "the captures it names.",
)
@click.option(
    "--init",
    is_flag=True,
    help="Print an expectation file drafted from CAPTURES instead of verifying them.",
)
@click.option(
    "--baseline",
    "baseline_dir",
    type=click.Path(file_okay=False),
    help="Compare each capture with its stored baseline in this folder (capture.baseline).",
)
@click.option(
    "--update-baseline",
    is_flag=True,
    help="Write (or rewrite) the baselines of --baseline from these captures.",
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
    annotate_path: str | None,
    force: bool,
    engine: str,
    checks_path: str | None,
    init: bool,
    baseline_dir: str | None,
    update_baseline: bool,
) -> None:
    """Check captures: handshake, delivery, Go-Back-N, AIMD, teardown, DHCP, DNS, framing.

    Exit 0 when every check passes, 1 when any fails or one of several
    captures cannot be read, 2 when none can.  A truncated capture is verified
    up to the cut, with a warning.
    """
    if not captures and checks_path is None:
        raise click.UsageError("Missing argument 'CAPTURES...'.")
    if init and checks_path is not None:
        raise UserError("--init drafts an expectation file; --checks reads one: not both")
    ports = (rudp_port, dns_port, dhcp_port, app_port)
    if len(set(ports)) != len(ports):
        raise UserError("--rudp-port, --dns-port, --dhcp-port and --app-port must all differ")
    try:
        expected = parse_expect(expect)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if events_path is not None and not os.access(events_path, os.R_OK):
        raise UserError(f"{events_path}: cannot read the events file")
    junit = None
    if checks_path is not None:
        from stacklab.commands.verify_checks import check_file

        check_file(checks_path)
    if update_baseline and baseline_dir is None:
        raise UserError("--update-baseline needs --baseline DIR")
    if baseline_dir is not None:
        from stacklab.commands.verify_baseline import check_folder

        check_folder(baseline_dir, captures, update_baseline)
    if junit_path is not None:  # decided before the work: a refusal must not come after it
        from stacklab.files import resolve_output  # here: tempfile and shutil cost start-up

        junit = resolve_output(
            junit_path, inputs=(*captures, events_path, checks_path), replace_by_default=True
        )
    annotated = _annotate_target(annotate_path, captures, events_path, force, engine)
    options = VerifyOptions(
        ports=Ports(rudp=rudp_port, dns=dns_port, dhcp=dhcp_port, app=app_port),
        max_window=max_window,
        expect=expected,
        min_rto=min_rto,
        events_path=events_path,
        keep_series=as_json,
        keep_notes=annotated is not None,
        jobs=jobs,
    )
    if baseline_dir is not None:
        from stacklab.analysis.semantic import event_options

        options = event_options(options)
    analyze: Callable[[str, VerifyOptions], CaptureAnalysis]
    errors: tuple[type[Exception], ...] = (CaptureError,)
    if engine == "tshark":
        from stacklab.analysis import tshark_engine

        analyze = _with_progress(tshark_engine.analyze_capture)
        errors = (CaptureError, tshark_engine.TsharkError)
    else:
        from stacklab.analysis.verify import analyze_capture

        analyze = analyze_capture
    if checks_path is not None or init:
        from stacklab.commands import verify_checks

        if init:
            sys.exit(verify_checks.run_init(captures, options, analyze, errors))
        sys.exit(
            verify_checks.run_checks(
                checks_path or "", captures, options, analyze, errors, as_json, junit
            )
        )
    analyses: list[CaptureAnalysis] = []
    unreadable: list[Unreadable] = []
    for path in captures:
        try:
            analysis = analyze(path, options)
        except errors as exc:
            unreadable.append(Unreadable(path, str(exc)))
            click.echo(f"stacklab: error: {exc}", err=True)
            continue
        problem = link_type_problem(analysis.link_type)
        if problem is not None and not unsupported_only_frames(analysis):
            analysis.warnings.append(problem)
        elif problem is not None:  # nothing it could read: not "no project traffic"
            unreadable.append(Unreadable(path, f"{path}: {problem}"))
            click.echo(f"stacklab: error: {path}: {problem}", err=True)
            continue
        analyses.append(analysis)
    for analysis in analyses:
        for warning in analysis.warnings:
            click.echo(f"stacklab: warning: {analysis.path}: {warning}", err=True)
    if baseline_dir is not None:
        from stacklab.commands.verify_baseline import apply_baseline

        apply_baseline(analyses, baseline_dir, update_baseline)
    if junit is not None:
        from stacklab.analysis.junit import write_junit

        try:
            write_junit(analyses, junit, unreadable)
        except OSError as exc:
            raise UserError(f"cannot write {junit}: {exc.strerror or exc}") from None
    if annotated is not None and analyses:
        from stacklab.commands.annotate import write_annotated

        line = write_annotated(analyses[0].path, annotated, analyses[0])
        if not is_quiet():
            click.echo(line, err=True)
    if as_json:
        from stacklab.analysis.verify import no_cycle_collector

        with no_cycle_collector():
            write_results_json(analyses, unreadable, sys.stdout)
    elif is_quiet():
        _print_failures(analyses)
    else:
        _print_human(analyses, options.ports)
    if len(captures) > 1:
        click.echo(_summary_line(analyses, unreadable), err=as_json)
    if not analyses:
        sys.exit(2)
    sys.exit(0 if not unreadable and all(a.passed for a in analyses) else 1)


def _annotate_target(
    path: str | None, captures: tuple[str, ...], events: str | None, force: bool, engine: str
) -> Output | None:
    """Where ``--annotate`` writes, decided (and refused) before any work."""
    if path is None:
        return None
    if len(captures) != 1:
        raise UserError("--annotate takes one capture")
    if engine != "native":
        raise UserError("--annotate needs --engine native (the findings are its notes)")
    if path == "-":
        raise UserError("--annotate -: standard output is the report's; name a file")
    from stacklab.commands.annotate import require_pcapng

    if os.path.isfile(captures[0]):
        require_pcapng(captures[0])
    from stacklab.files import resolve_output

    return resolve_output(path, inputs=(*captures, events), force=force)


def unsupported_only_frames(analysis: CaptureAnalysis) -> bool:
    """Whether every interface of the capture has a link type the reader cannot parse."""
    known = set(LINKTYPE_NAMES.values())
    return not any(name in known for name in analysis.link_type.split(","))


def _with_progress(
    analyze: Callable[..., CaptureAnalysis],
) -> Callable[[str, VerifyOptions], CaptureAnalysis]:
    """tshark takes long on big captures: a progress bar on a terminal's stderr meanwhile."""

    def run(path: str, options: VerifyOptions) -> CaptureAnalysis:
        if not sys.stderr.isatty() or is_quiet():
            return analyze(path, options)
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        with Progress(
            TextColumn(f"tshark {os.path.basename(path)}"),
            BarColumn(),
            MofNCompleteColumn(),
            console=Console(stderr=True),
            transient=True,
        ) as bar:
            task = bar.add_task("frames", total=None)

            def update(frame: int, frames: int) -> None:
                bar.update(task, completed=frame, total=frames)

            return analyze(path, options, update)

    return run


def _summary_line(analyses: list[CaptureAnalysis], unreadable: list[Unreadable]) -> str:
    """``3 captures: 1 passed, 1 failed, 1 unreadable``: the verdict of a multi-file run."""
    passed = sum(1 for a in analyses if a.passed)
    total = len(analyses) + len(unreadable)
    verdict = "PASS" if passed == total else "FAIL"
    return (
        f"{verdict}: {total} captures: {passed} passed, {len(analyses) - passed} failed, "
        f"{len(unreadable)} unreadable"
    )


def _print_failures(analyses: list[CaptureAnalysis]) -> None:
    """``-q``: one line per failed check, nothing for a capture that passes."""
    for analysis in analyses:
        for check in analysis.checks:
            if check.status == "fail":
                click.echo(f"FAIL {analysis.path}: {check.id} {check.session}: {check.detail}")


def _frames(frames: list[int]) -> str:
    shown = ", ".join(str(f) for f in frames[:_MAX_FRAMES_SHOWN])
    return shown + (f", ... ({len(frames)})" if len(frames) > _MAX_FRAMES_SHOWN else "")


def _print_human(analyses: list[CaptureAnalysis], ports: Ports) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from stacklab.analysis.explain import explain_failure

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
        if not analysis.passed:
            try:
                lines = explain_failure(analysis.path, analysis, ports)
            except CaptureError:
                lines = []  # the capture was readable once; a cut or changed file is no news
            for line in lines:
                console.print(line, markup=False)
        counts = {s: sum(1 for c in analysis.checks if c.status == s) for s in _STATUS_STYLE}
        verdict = "[bold green]PASS[/]" if analysis.passed else "[bold red]FAIL[/]"
        console.print(
            f"{verdict}: {counts['pass']} passed, {counts['fail']} failed, "
            f"{counts['skip']} skipped\n"
        )
