"""``stacklab demo``: everything stacklab does, in about a minute, for a newcomer.

It captures every scenario (each boots the stack, runs the client and
records the flow), verifies each capture with the checks its scenario
expects, draws the plots and writes one HTML report per capture when those
parts are installed, and ends with a summary table and where the files
are.  As root it works inside a private network namespace (the default
ports of the machine stay free), otherwise on plain loopback.

Exit status: 0 only when every capture passes every check; 1 when a check
fails; 2 when the captures cannot be made at all (one line says why).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.table import Table

from stacklab.commands.capture import netns_mode, run_captures
from stacklab.errors import UserError

if TYPE_CHECKING:
    from stacklab.analysis.sessions import CaptureAnalysis
    from stacklab.tools.scenarios import ScenarioResult

log = logging.getLogger(__name__)


class DemoFailed(UserError):
    """A capture failed its checks: exit 1."""

    exit_code = 1


@dataclass
class DemoRow:
    """One scenario's line of the summary (also written to ``summary.json``)."""

    scenario: str
    capture: str
    packets: int
    retransmissions: int
    window_max: int
    passed: int
    failed: int
    skipped: int
    failures: list[str] = field(default_factory=list)
    extras: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.failed == 0


def summarize(result: ScenarioResult, analysis: CaptureAnalysis) -> DemoRow:
    """The facts the summary shows, from a scenario's result and its verification."""
    checks = analysis.checks
    return DemoRow(
        scenario=result.name,
        capture=result.path,
        packets=analysis.packets,
        retransmissions=sum(s.retransmissions for s in analysis.rudp_sessions),
        window_max=max((s.max_window for s in analysis.rudp_sessions), default=0),
        passed=sum(1 for c in checks if c.status == "pass"),
        failed=sum(1 for c in checks if c.status == "fail"),
        skipped=sum(1 for c in checks if c.status == "skip"),
        failures=[f"{c.id} {c.session}: {c.detail}" for c in checks if c.status == "fail"],
    )


def _quietly(func: Any, *args: Any, **kwargs: Any) -> Any:
    """Run a command without letting it print its own tables."""
    with contextlib.redirect_stdout(io.StringIO()):
        return func(*args, **kwargs)


def write_extras(capture: str, out: Path, expect: frozenset[str] | None = None) -> list[str]:
    """Plots and the HTML report of one capture, when those parts are installed.

    ``expect`` is the scenario's: the report judges the capture as ``verify`` did.
    """
    written: list[str] = []
    stem = Path(capture).stem
    if importlib.util.find_spec("stacklab.commands.plot") is not None:
        from stacklab.commands.plot import plot

        plot_dir = out / "plots"
        try:
            _quietly(
                plot.main,
                args=[capture, "-o", str(plot_dir)],
                prog_name="stacklab plot",
                standalone_mode=False,
            )
            written.append(str(plot_dir / f"{stem}.*.png"))
        except (click.ClickException, OSError, RuntimeError, ValueError) as exc:
            log.warning("plots of %s failed: %s", capture, exc)
    if importlib.util.find_spec("stacklab.analysis.report") is not None:
        from stacklab.analysis.report import ReportOptions, write_report

        target = out / "reports" / f"{stem}.html"
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            write_report(capture, str(target), ReportOptions(expect=expect))
            written.append(str(target))
        except (OSError, RuntimeError, ValueError) as exc:
            log.warning("report of %s failed: %s", capture, exc)
    return written


def summary_table(rows: list[DemoRow]) -> Table:
    table = Table(title="stacklab demo: every flow captured and verified")
    table.add_column("scenario")
    table.add_column("packets", justify="right")
    table.add_column("retransmissions", justify="right")
    table.add_column("window max", justify="right")
    table.add_column("checks passed", justify="right")
    for row in rows:
        total = row.passed + row.failed
        style = "green" if row.ok else "bold red"
        table.add_row(
            row.scenario,
            str(row.packets),
            str(row.retransmissions),
            str(row.window_max) if row.window_max else "-",
            f"[{style}]{row.passed}/{total}[/{style}]",
        )
    return table


@click.command("demo")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    default="demo-out",
    show_default=True,
    help="Folder for the captures, plots, reports and summary.json.",
)
@click.option(
    "--netns/--no-netns",
    default=None,
    help="Use a private network namespace (default: when running as root on Linux).",
)
@click.option("--no-extras", is_flag=True, help="Skip the plots and HTML reports (faster).")
def demo(out_dir: str, netns: bool | None, no_extras: bool) -> None:
    """Boot the stack, capture every flow, verify each, draw and report, summarize."""
    from stacklab.analysis.checks import parse_expect
    from stacklab.analysis.pcapio import CaptureError
    from stacklab.analysis.sessions import VerifyOptions
    from stacklab.analysis.verify import analyze_capture
    from stacklab.tools.scenarios import ALL, SCENARIOS

    console = Console(highlight=False)
    out = Path(out_dir)
    try:
        (out / "captures").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{out_dir}: cannot create the folder: {exc.strerror}") from None
    use_netns = netns_mode(netns)
    where = "a private network namespace" if use_netns else "the loopback interface"
    console.print(f"stacklab demo: capturing {len(ALL)} scenarios on {where} ...")
    started = time.monotonic()
    names = list(ALL)
    paths = [out / "captures" / f"{name}.pcapng" for name in names]
    with console.status("capturing: each scenario boots the stack and runs the client"):
        results = run_captures(names, paths, netns=use_netns)
    rows: list[DemoRow] = []
    for result in results:
        scenario = SCENARIOS[result.name]
        expect = parse_expect(scenario.expect)
        try:
            analysis = analyze_capture(result.path, VerifyOptions(expect=expect))
        except CaptureError as exc:
            raise UserError(f"{result.path}: {exc}") from None
        row = summarize(result, analysis)
        if not no_extras:
            with console.status(f"plots and report of {result.name}"):
                row.extras = write_extras(result.path, out, expect)
        rows.append(row)
        mark = "[green]PASS[/green]" if row.ok else "[bold red]FAIL[/bold red]"
        console.print(f"  {mark} {result.name}: {result.frames} frames, {row.passed} checks passed")
        for failure in row.failures:
            console.print(f"       [red]{failure}[/red]")
    summary = out / "summary.json"
    summary.write_text(
        json.dumps(
            {
                "passed": all(r.ok for r in rows),
                "netns": use_netns,
                "scenarios": [{**r.__dict__, "ok": r.ok} for r in rows],
            },
            indent=2,
        )
        + "\n"
    )
    console.print(summary_table(rows))
    console.print(f"captures: {out / 'captures'}")
    if not no_extras:
        console.print(f"plots:    {out / 'plots'}")
        console.print(f"reports:  {out / 'reports'} (open one in a browser)")
    console.print(f"summary:  {summary}")
    elapsed = time.monotonic() - started
    if not all(r.ok for r in rows):
        raise DemoFailed(f"some checks failed ({elapsed:.0f} s): see the table above")
    console.print(f"[green]all checks passed[/green] in {elapsed:.0f} s")
