"""``stacklab grade (--server CMD | --client CMD)``: judge any RUDP implementation.

Each (scenario, seed) is one run: a fresh subject in a private network
namespace, stacklab's services and impairing proxy around it, a capture, and
the verifier's checks on the subject's side of the proxy
(:mod:`stacklab.tools.grade_run`).  The verdicts are grouped per scenario with
a Wilson interval and a weighted score (:mod:`stacklab.tools.grade_score`) and
written as JSON, JUnit, Gradescope results and an HTML matrix
(:mod:`stacklab.tools.grade_outputs`).

Exit status: 0 when every run passed, 1 when any failed, 2 for bad input or
when the runs cannot be carried out here (no root for the namespaces, no
dumpcap), 130 on Ctrl-C.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import click

from stacklab.errors import UserError

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from stacklab.tools.grade_run import RunResult
    from stacklab.tools.grade_score import ScenarioVerdict


def _preflight(role: str, command: str) -> bool:
    """Whether runs get private namespaces (True) or free loopback addresses (False).

    Without root there is no namespace: a server that takes ``{host}`` and
    ``{port}`` still runs, on free loopback addresses; anything that needs the
    original addresses (a client, a server without them) cannot, and the one
    line says so.  Capturing needs dumpcap and the permission to use it.
    """
    from stacklab.tools.capture import CaptureToolError, preflight
    from stacklab.tools.netns import unavailable_reason

    for tool in ("dumpcap", "editcap"):
        if shutil.which(tool) is None:
            raise UserError(f"{tool} is not installed: run 'make setup' (apt-get install tshark)")
    reason = unavailable_reason()
    if reason is not None:
        reason = reason.replace(" (run with sudo, or drop --netns)", "")
        takes_address = "{host}" in command and "{port}" in command
        if role != "server" or not takes_address:
            what = (
                "a client"
                if role != "server"
                else "a server whose command has no {host} and {port}"
            )
            raise UserError(
                f"grading {what} needs the original addresses, which only a private network "
                f"namespace gives: {reason} (run it with sudo)"
            )
    try:
        preflight()
    except CaptureToolError as exc:
        raise UserError(str(exc)) from None
    if reason is not None:
        click.echo(
            f"stacklab grade: {reason}: running on free loopback addresses instead "
            "({host}, {port} and {origin} say which)",
            err=True,
        )
        return False
    return True


@click.command("grade")
@click.option("--server", "server_cmd", metavar="CMD", help="Command that starts an RUDP server.")
@click.option(
    "--client", "client_cmd", metavar="CMD", help="Command that runs a client (writes {output})."
)
@click.option("--only", metavar="ID,...", help="Only these scenarios.")
@click.option(
    "--seeds",
    type=click.IntRange(1, 1000),
    default=None,
    help="Seeds per scenario [default: 3, or 1 with --seed].",
)
@click.option(
    "--seed",
    type=click.IntRange(0, 2**31),
    default=None,
    help="First seed [default: 1]; alone, replays that one run.",
)
@click.option(
    "--jobs", type=click.IntRange(1, 64), default=1, show_default=True, help="Runs at once."
)
@click.option("--scheduler", metavar="ADDRESS", help="Run on this Dask scheduler instead.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write the JSON here.")
@click.option("--junit", "junit_path", type=click.Path(dir_okay=False), help="JUnit XML here.")
@click.option(
    "--gradescope", "gradescope_path", type=click.Path(dir_okay=False), help="results.json here."
)
@click.option("--html", "html_path", type=click.Path(dir_okay=False), help="HTML matrix here.")
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default="grade-out",
    show_default=True,
    help="Folder for each run's capture, subject log and report.",
)
def grade(
    server_cmd: str | None,
    client_cmd: str | None,
    only: str | None,
    seeds: int | None,
    seed: int | None,
    jobs: int,
    scheduler: str | None,
    json_path: str | None,
    junit_path: str | None,
    gradescope_path: str | None,
    html_path: str | None,
    out: str,
) -> None:
    """Grade an RUDP server or client over a matrix of impaired-network scenarios.

    CMD is split like a shell command; {host} and {port} become the address a
    server must listen on (127.0.0.3 2122), {origin} the HOST:PORT of the web
    server it fetches from, {output} the file a client must write (without
    it, downloaded_rudp.html in its working folder, as the original client
    does).  As root every run is a private network namespace on the original
    addresses; without root, only servers taking {host} and {port} can be
    graded, on free loopback addresses.
    """
    from rich.console import Console

    from stacklab.tools import grade_outputs as outputs
    from stacklab.tools.grade_matrix import plan, run_local, seed_list
    from stacklab.tools.grade_scenarios import CLIENT, SERVER, select
    from stacklab.tools.grade_score import verdicts

    if (server_cmd is None) == (client_cmd is None):
        raise UserError("give exactly one of --server CMD and --client CMD")
    role = SERVER if server_cmd is not None else CLIENT
    command = (server_cmd or client_cmd or "").strip()
    if not command:
        raise UserError(f"--{role} needs a command")
    try:
        scenarios = select(role, only)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    try:
        Path(out).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create {out}: {exc.strerror or exc}") from None
    for path in (json_path, junit_path, gradescope_path, html_path):
        if path is not None:
            folder = os.path.dirname(path) or "."
            if not os.path.isdir(folder):
                raise UserError(f"{folder}: no such folder for {path}")
    private = _preflight(role, command) if scheduler is None else True
    the_seeds = seed_list(seeds if seeds is not None else (3 if seed is None else 1), seed)
    specs = plan(role, command, scenarios, the_seeds, out, private=private)

    console = Console(stderr=True)
    results: list[RunResult] = []
    try:
        with _progress(console) as progress:
            task = progress.add_task(f"grade {role}", total=len(specs))

            def done(result: RunResult) -> None:
                mark = "[green]pass[/]" if result.passed else "[red]FAIL[/]"
                progress.console.print(
                    f"  {mark} {result.scenario} seed {result.seed} ({result.seconds:.1f} s)"
                )
                progress.advance(task)

            if scheduler is not None:
                from stacklab.tools.grade_dask import run_dask

                results = run_dask(specs, scheduler, done)
            else:
                results = run_local(specs, jobs, done)
    except KeyboardInterrupt:
        console.print("stacklab grade: interrupted")
        raise SystemExit(130) from None

    def relative(path: str) -> str:
        return outputs.relative_to(path, out)

    items = verdicts(role, command, scenarios, results, relative)
    document = outputs.grade_json(command, role, items, the_seeds)
    reports: dict[tuple[str, int], str] = {}
    if html_path is not None:
        reports = _run_reports(results, html_path, console)
        for v in items:
            for f in v.failures:
                f.report = reports.get((v.scenario.id, f.seed))
        document = outputs.grade_json(command, role, items, the_seeds)
    try:
        outputs.write_json(Path(out) / "grade.json", document)
        if json_path is not None:
            outputs.write_json(json_path, document)
        if junit_path is not None:
            outputs.write_junit(junit_path, command, role, items)
        if gradescope_path is not None:
            outputs.write_json(gradescope_path, outputs.gradescope(command, role, items))
        if html_path is not None:
            outputs.write_html(html_path, command, role, items, reports)
    except OSError as exc:
        raise UserError(f"cannot write the results: {exc.strerror or exc}") from None
    Console().print(_table(items, document["score"], role, command))
    for v in items:
        for f in v.failures:
            click.echo(f"FAIL {v.scenario.id} seed {f.seed}: {'; '.join(f.details)}")
            click.echo(f"  capture   {f.capture}")
            click.echo(f"  reproduce {f.reproduce}")
    if any(v.failures for v in items):
        raise SystemExit(1)


def _progress(console: Console) -> Progress:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


def _run_reports(
    results: list[RunResult], html_path: str, console: Console
) -> dict[tuple[str, int], str]:
    """Write each run's HTML report next to its capture; links relative to the matrix page."""
    from stacklab.analysis.pcapio import CaptureError
    from stacklab.analysis.report import write_report
    from stacklab.tools.grade_outputs import relative_to

    links: dict[tuple[str, int], str] = {}
    page_dir = os.path.dirname(os.path.abspath(html_path))
    for result in results:
        if result.capture is None or not os.path.exists(result.capture):
            continue
        target = os.path.join(os.path.dirname(result.capture), "report.html")
        try:
            write_report(result.capture, target)
        except (CaptureError, OSError) as exc:
            console.print(f"no report for {result.scenario} seed {result.seed}: {exc}")
            continue
        links[(result.scenario, result.seed)] = relative_to(target, page_dir)
    return links


def _table(items: list[ScenarioVerdict], total: float, role: str, command: str) -> Table:
    from rich.table import Table

    table = Table(title=f"stacklab grade --{role} {command}: score {total} / 100")
    for name in ("scenario", "passed", "rate", "Wilson 95 %", "failing checks"):
        table.add_column(name)
    for v in items:
        lo, hi = v.interval
        failing = ", ".join(sorted({c for f in v.failures for c in f.checks}))
        style = "green" if not v.failures else "red"
        table.add_row(
            v.scenario.id,
            f"{v.passed}/{v.runs}",
            f"{v.pass_rate:.0%}",
            f"{lo:.2f}-{hi:.2f}",
            failing,
            style=style,
        )
    return table
