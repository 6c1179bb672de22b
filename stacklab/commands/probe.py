"""``stacklab probe``: throw numbered, reproducible malformed cases at a server.

The work is in :mod:`stacklab.tools.probe_cases` (what to send),
:mod:`stacklab.tools.probe_runner` (sending, liveness, classification) and
:mod:`stacklab.tools.probe_report` (JSON, JUnit, pcapng); this module only
parses options, shows progress and chooses the exit code: 0 without failure,
1 with at least one, 2 on bad arguments or a target that does not answer a
valid request before the first case (130 after Ctrl-C, once the partial
report is printed).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from stacklab import wire
from stacklab.errors import UserError
from stacklab.files import Output, resolve_output
from stacklab.params import FiniteFloatRange


def parse_target(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (IPv6 as ``[::1]:PORT``) -> (host, port); UserError when malformed."""
    host, sep, port_text = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise UserError(f"target must be HOST:PORT with a port from 1 to 65535, not {text!r}")
    return host, int(port_text)


@click.command("probe")
@click.argument("target", metavar="HOST:PORT")
@click.option(
    "--protocol",
    "-p",
    type=click.Choice(["rudp", "dns", "dhcp", "app"]),
    required=True,
    help="What the server speaks: RUDP, JSON DNS, DHCP, or the framed TCP app protocol.",
)
@click.option(
    "--cases",
    "count",
    type=click.IntRange(min=1),
    default=500,
    show_default=True,
    help="How many cases to send (numbered from 0).",
)
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Seed of the case generator: the same seed gives the same cases.",
)
@click.option(
    "--replay",
    type=click.IntRange(min=0),
    default=None,
    metavar="K",
    help="Send case K alone (as numbered under --seed).",
)
@click.option(
    "--timeout",
    type=FiniteFloatRange(min=0.01, max=60),
    default=0.5,
    show_default=True,
    help="Seconds a valid request may take to be answered.",
)
@click.option(
    "--recover",
    type=FiniteFloatRange(min=0, max=600),
    default=3.0,
    show_default=True,
    help="Seconds to wait for a server to come back after a failure.",
)
@click.option(
    "--url",
    default=wire.DEFAULT_URL,
    show_default=True,
    help="The URL of a valid FETCH: the app liveness check, and the FETCH cases.",
)
@click.option(
    "--name", default=wire.APP_DOMAIN, show_default=True, help="The DNS name of the valid query."
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of tables.")
@click.option(
    "--junit",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write JUnit XML (one test case per probe case).",
)
@click.option(
    "--pcap-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Write one pcapng per failing case (sent packets and replies).",
)
def probe(
    target: str,
    protocol: str,
    count: int,
    seed: int,
    replay: int | None,
    timeout: float,
    recover: float,
    url: str,
    name: str,
    as_json: bool,
    junit: Path | None,
    pcap_dir: Path | None,
) -> None:
    """Throw malformed packets at HOST:PORT and see which ones hurt.

    Cases come from the protocol definitions (boundary values of every field,
    lying lengths, truncations, out-of-order handshakes, hostile FETCH
    commands, broken JSON and framing) and Scapy fuzz() mutations.  After each
    case a valid request must still get its proper answer; a case after which
    it does not is a failure, printed with the command that replays it.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from stacklab.tools.probe_cases import ProbeContext, generate_case
    from stacklab.tools.probe_report import (
        RunInfo,
        dumps,
        to_json,
        write_failure_pcaps,
        write_junit,
    )
    from stacklab.tools.probe_runner import (
        CaseResult,
        ProbeRunner,
        ProbeTarget,
        TargetUnreachable,
    )

    host, port = parse_target(target)
    # The JUnit file is replaced when it exists (one per run, for CI); a missing
    # folder is created at the end, a FIFO or a device is written into.
    junit_out: Path | Output | None = junit
    if junit is not None and (junit.parent.is_dir() or str(junit) == "-"):
        junit_out = resolve_output(junit, replace_by_default=True)
    context = ProbeContext(url=url, name=name)
    info = RunInfo(target, protocol, seed, timeout, context)
    indexes = [replay] if replay is not None else list(range(count))
    err = Console(stderr=True)
    try:
        runner = ProbeRunner(
            ProbeTarget(
                host, port, protocol, timeout=timeout, recover_timeout=recover, context=context
            )
        )
        with runner:
            runner.check_target()
            results: list[CaseResult] = []
            progress = Progress(
                TextColumn(f"probe {protocol}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[failures]} failed"),
                TimeElapsedColumn(),
                console=err,
                transient=True,
                disable=not err.is_terminal,
            )
            with progress:
                task = progress.add_task("cases", total=len(indexes), failures=0)

                def on_result(result: CaseResult) -> None:
                    if not result.failed:
                        result.exchanges = []  # only failures need their packets again
                    results.append(result)
                    failed = sum(1 for r in results if r.failed)
                    progress.update(task, advance=1, failures=failed)

                cases = (generate_case(protocol, seed, i, context) for i in indexes)
                summary = runner.run(cases, on_result)
    except TargetUnreachable as exc:
        raise UserError(str(exc)) from None

    try:
        if junit_out is not None:
            write_junit(junit_out, results, info)
        pcaps = write_failure_pcaps(pcap_dir, summary.failures, info) if pcap_dir else []
    except OSError as exc:
        raise UserError(f"cannot write the report: {exc}") from None
    document = to_json(summary, info)
    if as_json:
        click.echo(dumps(document))
    else:
        _show(Console(), document, pcaps)
    if summary.interrupted:
        sys.exit(130)  # the shell's code for Ctrl-C: the run is incomplete either way
    sys.exit(1 if summary.failures else 0)


def _show(console: object, document: dict[str, Any], pcaps: list[Path]) -> None:
    """The human summary: counts per case kind and class, then each failure with its replay."""
    from rich.console import Console
    from rich.table import Table

    assert isinstance(console, Console)
    results: dict[str, int] = document["results"]
    console.print(
        f"probe [bold]{document['protocol']}[/] {document['target']}: {document['cases']} cases "
        f"in {document['seconds']} s (seed {document['seed']})",
        highlight=False,
    )
    table = Table()
    table.add_column("case kind")
    for name in results:
        table.add_column(name, justify="right")
    by_kind: dict[str, dict[str, int]] = document["by_kind"]
    for kind, counts in by_kind.items():
        table.add_row(
            kind,
            *(str(counts.get(name, "")) for name in results),
            style="bold red" if counts.get("failure") else None,
        )
    table.add_section()
    table.add_row(
        "total",
        *(str(n) for n in results.values()),
        style="bold red" if results.get("failure") else "bold",
    )
    console.print(table)

    def plain(text: str) -> None:  # never wrapped: hex and replay lines must stay copy-pasteable
        console.print(text, markup=False, highlight=False, soft_wrap=True)

    for failure in document["failures"]:
        console.print(
            f"[bold red]FAIL[/] case {failure['case']} ({failure['case_kind']}: "
            f"{failure['description']})",
            highlight=False,
        )
        for sent in failure["sent"]:
            plain(f"  sent    {sent['decoded']}")
            plain(f"          hex {sent['hex'] or '(empty)'}")
        plain(f"  result  {failure['detail']}")
        plain(f"  replay  {failure['replay']}")
    for warning in document["warnings"]:
        console.print(f"[bold yellow]warning:[/] {warning}", highlight=False)
    if document["stopped"]:
        console.print(f"[bold red]stopped:[/] {document['stopped']}", highlight=False)
    for path in pcaps:
        plain(f"wrote {path}")
    if not document["failures"]:
        console.print("[green]no failure[/]")
