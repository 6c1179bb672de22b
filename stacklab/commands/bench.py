"""``stacklab bench``: RUDP against raw UDP ceilings, TCP, aioquic and the original programs.

The measuring lives in :mod:`stacklab.tools.bench` and its siblings; this
module parses the options, shows progress, and prints the report as tables,
Markdown (pasted as is into the README) or JSON.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource
from rich.console import Console
from rich.table import Table as RichTable

from stacklab import wire
from stacklab.errors import UserError

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgG]?)(i?)[bB]?\s*$")

QUICK = {
    "size": "5M",
    "repeat": 1,
    "loss_size": "50K",
    "original_size": "5K",
    "original_repeat": 1,
}
"""What ``--quick`` changes (options given explicitly still win)."""


class BenchFailed(UserError):
    """A transfer delivered wrong bytes or a process of the benchmark failed: exit 1."""

    exit_code = 1


def parse_size(text: str, option: str = "--size") -> int:
    """``20M``, ``100KiB``, ``5000000``: bytes (K/M/G are 10^3.., KiB/MiB/GiB are 2^10..)."""
    match = _SIZE.match(text)
    if not match:
        raise UserError(f"{option} {text!r}: expected bytes such as 20M, 100KiB or 5000000")
    number, unit, binary = match.groups()
    power = " kmg".index(unit.lower() or " ")
    value = int(float(number) * (1024 if binary else 1000) ** power)
    if not 1 <= value <= 2 * 1024**3:
        raise UserError(f"{option} {text!r}: must be between 1 byte and 2 GiB")
    return value


def parse_rates(text: str) -> list[float]:
    """``0.05,0.3`` -> [0.05, 0.3]; ``none`` -> [] (no loss runs)."""
    if text.strip().lower() in ("", "none", "0"):
        return []
    rates = []
    for part in text.split(","):
        try:
            rate = float(part)
        except ValueError:
            raise UserError(f"--loss {text!r}: expected rates such as 0.05,0.3 or none") from None
        if not 0.0 < rate <= 0.9:
            raise UserError(f"--loss {text!r}: each rate must be in (0, 0.9]")
        rates.append(rate)
    return sorted(set(rates))


@click.command("bench")
@click.option("--quick", is_flag=True, help="A short run: 5 MB, one round, small loss files.")
@click.option(
    "--size", default="100M", show_default=True, help="Bytes per transfer (20M, 100KiB...)."
)
@click.option(
    "--repeat",
    type=click.IntRange(1, 100),
    default=5,
    show_default=True,
    help="Interleaved rounds; medians are taken over them.",
)
@click.option(
    "--loss",
    default="0.05,0.3",
    show_default=True,
    help="Loss rates for the runs through the chaos proxy (both ways), or 'none'.",
)
@click.option(
    "--loss-size", default="200K", show_default=True, help="Bytes per lossy stacklab transfer."
)
@click.option(
    "--original-size",
    default="20K",
    show_default=True,
    help="Bytes per transfer involving the original programs (the original client sleeps "
    "0.1-0.4 s per datagram).",
)
@click.option(
    "--original-repeat",
    type=click.IntRange(1, 100),
    default=3,
    show_default=True,
    help="Rounds of the original programs.",
)
@click.option(
    "--originals",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder of the original programs (default: ../shared/original next to the repository).",
)
@click.option(
    "--chunk",
    type=click.IntRange(1, wire.MAX_STACKLAB_CHUNK),
    default=None,
    help="RUDP chunk (default: the client's own default).",
)
@click.option(
    "--window",
    type=click.IntRange(1, 4096),
    default=None,
    help="RUDP window to ask for (default: the client's own default).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of content and loss.")
@click.option("--no-end-to-end", is_flag=True, help="Skip the whole-process runs and loss runs.")
@click.option("--no-in-process", is_flag=True, help="Skip the in-process runs.")
@click.option("--no-originals", is_flag=True, help="Skip the original programs.")
@click.option("--no-aioquic", is_flag=True, help="Skip the aioquic comparison.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--markdown", is_flag=True, help="Print the report as Markdown tables.")
def bench(
    quick: bool,
    size: str,
    repeat: int,
    loss: str,
    loss_size: str,
    original_size: str,
    original_repeat: int,
    originals: Path | None,
    chunk: int | None,
    window: int | None,
    seed: int,
    no_end_to_end: bool,
    no_in_process: bool,
    no_originals: bool,
    no_aioquic: bool,
    as_json: bool,
    markdown: bool,
) -> None:
    """Measure RUDP end to end and in process against raw UDP ceilings; print medians, ratios
    and targets.

    End to end: whole processes (`stacklab fetch --transport rudp` against a
    real origin and app server, and raw UDP receivers that write the file),
    timed from spawn to exit.  In process: servers in this process, clients
    in a worker.  The original programs run in a private network namespace
    (root). A missed target is printed; it does not fail the command.
    """
    from stacklab.tools.bench import BenchConfig, run_bench
    from stacklab.tools.bench_procs import BenchProcessError

    if as_json and markdown:
        raise UserError("--json and --markdown: choose one")
    values: dict[str, Any] = {
        "size": size,
        "repeat": repeat,
        "loss_size": loss_size,
        "original_size": original_size,
        "original_repeat": original_repeat,
    }
    if quick:
        ctx = click.get_current_context()
        for name, value in QUICK.items():
            if ctx.get_parameter_source(name) is ParameterSource.DEFAULT:
                values[name] = value
    config = BenchConfig(
        size=parse_size(values["size"]),
        repeat=values["repeat"],
        loss_rates=parse_rates(loss),
        loss_size=parse_size(values["loss_size"], "--loss-size"),
        original_size=parse_size(values["original_size"], "--original-size"),
        original_repeat=values["original_repeat"],
        originals=originals,
        chunk=chunk,
        window=window,
        seed=seed,
        end_to_end=not no_end_to_end,
        in_process=not no_in_process,
        with_originals=not no_originals,
        with_aioquic=not no_aioquic,
    )
    err = Console(stderr=True)
    try:
        with err.status("benchmarking...") as status:
            report = run_bench(config, step=status.update)
    except (RuntimeError, BenchProcessError) as exc:
        raise BenchFailed(str(exc)) from None
    console = Console()
    if as_json:
        console.out(json.dumps(report.to_dict(), indent=2), highlight=False)
    elif markdown:
        console.out(render_markdown(report), highlight=False)
    else:
        render_rich(report, console)


def _cells(table: Any, row: Any) -> list[str]:
    from stacklab.tools.bench_model import ratio

    median_s, median_mb = row.median_seconds, row.median_goodput
    vs = ratio(row, table.baseline) if table.baseline is not None else None
    notes = []
    if row.lost:
        delivered = min(row.received) / row.size
        notes.append(f"datagrams lost (worst run {delivered:.1%} delivered)")
    if row.failures:
        notes.append(f"{len(row.failures)} failed: {row.failures[0]}")
    if row.note and row.note not in "; ".join(notes):
        notes.append(row.note)
    return [
        row.name,
        "-" if median_s is None else f"{median_s:.3f}",
        "-" if median_mb is None else f"{median_mb:.1f}" if median_mb >= 1 else f"{median_mb:.3f}",
        " ".join(f"{s:.2f}" for s in row.seconds) or "-",
        *([("-" if vs is None else f"{vs:.2f}x")] if table.baseline is not None else []),
        "; ".join(notes),
    ]


def _header(table: Any) -> list[str]:
    vs = [f"vs {table.baseline.name.split(' (')[0].split(',')[0]}"] if table.baseline else []
    return ["row", "median s", "median MB/s", "runs (s)", *vs, "notes"]


def _settings_line(report: Any) -> str:
    d = report.settings["rudp_defaults"]
    return (
        f"RUDP defaults read from the code: chunk {d['chunk']}, window {d['window']}, "
        f"integrity {'on' if d['integrity'] else 'off'}, ack every {d['ack_every']}, "
        f"server GSO {'on' if d['server_gso'] else 'off'}; datagrams of "
        f"{report.settings['datagram']} bytes; seed {report.settings['seed']}"
    )


def render_rich(report: Any, console: Console) -> None:
    console.print(_settings_line(report), highlight=False)
    for table in report.tables:
        if table.skipped:
            console.print(
                f"{table.title}: not measured: {table.skipped}", highlight=False, markup=False
            )
            continue
        rich_table = RichTable(title=table.title)
        for i, name in enumerate(_header(table)):
            rich_table.add_column(
                name, justify="left" if i in (0, len(_header(table)) - 1) else "right"
            )
        for row in table.rows:
            rich_table.add_row(*_cells(table, row))
        console.print(rich_table)
        for note in table.notes:
            console.print(f"  {note}", highlight=False, markup=False)
    for target in report.targets:
        value = "-" if target.value is None else f"{target.value:.2f}x"
        console.print(
            f"target {target.verdict}: {target.name} = {value} (goal >= {target.goal:g}x)",
            highlight=False,
        )
    for note in report.notes:
        console.print(note, highlight=False, markup=False)


def render_markdown(report: Any) -> str:
    """The report as Markdown: what the README's Benchmarks section shows."""
    lines = [_settings_line(report) + ".", ""]
    for table in report.tables:
        lines.append(f"**{table.title}**")
        lines.append("")
        if table.skipped:
            lines += [f"Not measured: {table.skipped}.", ""]
            continue
        header = _header(table)
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join("---" for _ in header) + "|")
        for row in table.rows:
            lines.append(
                "| " + " | ".join(c.replace("|", "\\|") for c in _cells(table, row)) + " |"
            )
        lines.append("")
        for note in table.notes:
            lines += [note, ""]
    if report.targets:
        lines.append("| target | ratio | goal | verdict |")
        lines.append("|---|---|---|---|")
        for target in report.targets:
            value = "-" if target.value is None else f"{target.value:.2f}x"
            lines.append(f"| {target.name} | {value} | >= {target.goal:g}x | {target.verdict} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
