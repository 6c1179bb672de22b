"""``stacklab simulate``: the RUDP engine over a simulated network, invariants checked.

Three ways to run it:

* ``--scenarios N --seed S``: draw N random settings (network, file size,
  options) from the seed and run them on ``--workers`` processes;
* ``--seed S --scenario I``: replay the I-th drawn scenario of seed S in
  detail (what a violation report tells you to run);
* network options (same as ``stacklab chaos``: ``--loss``, ``--delay``, ...)
  without ``--scenarios``: run that one setting and show what happened.

Exit status 1 when any invariant was violated.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from stacklab.commands.chaos import build_impairments, impairment_options
from stacklab.errors import UserError
from stacklab.params import FINITE_FLOAT
from stacklab.sim.scenarios import PEERS
from stacklab.transport.recovery import INITIAL_RTO, MAX_FAILURES, MAX_RTO, MIN_RTO, SILENCE_TIMEOUT


@click.command("simulate")
@click.option(
    "--scenarios", type=int, default=None, help="Draw and run this many random scenarios."
)
@click.option(
    "--scenario", "index", type=int, default=None, help="Replay one drawn scenario of --seed."
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of every random draw.")
@click.option(
    "--workers", type=int, default=2, show_default=True, help="Processes for --scenarios."
)
@impairment_options
@click.option("--size", type=int, default=100_000, show_default=True, help="File size in bytes.")
@click.option(
    "--chunk", type=int, default=1400, show_default=True, help="Chunk size the client asks for."
)
@click.option("--window", type=int, default=64, show_default=True, help="Maximum window asked for.")
@click.option("--ack-every", type=int, default=1, show_default=True, help="ACK every N chunks.")
@click.option(
    "--integrity/--no-integrity", default=True, show_default=True, help="CRC32C + SHA-256."
)
@click.option(
    "--original", is_flag=True, help="Behave as the original client (no options in the SYN)."
)
@click.option("--initial-rto", type=FINITE_FLOAT, default=INITIAL_RTO, show_default=True)
@click.option("--min-rto", type=FINITE_FLOAT, default=MIN_RTO, show_default=True)
@click.option("--max-rto", type=FINITE_FLOAT, default=MAX_RTO, show_default=True)
@click.option(
    "--max-timeouts",
    type=int,
    default=MAX_FAILURES,
    show_default=True,
    help="Consecutive failures to advance (timeouts, probes, fast retransmits) before giving up.",
)
@click.option(
    "--peer",
    type=click.Choice(PEERS),
    default="normal",
    show_default=True,
    help="The client's behaviour: vanish or repeat its ACK (after 0.1 s), forge ACKs, be slow.",
)
@click.option(
    "--silence-timeout",
    type=FINITE_FLOAT,
    default=SILENCE_TIMEOUT,
    show_default=True,
    help="Seconds without data before the client gives up.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON summary.")
def simulate(
    scenarios: int | None,
    index: int | None,
    seed: int,
    workers: int,
    size: int,
    chunk: int,
    window: int,
    ack_every: int,
    integrity: bool,
    original: bool,
    initial_rto: float,
    min_rto: float,
    max_rto: float,
    max_timeouts: int,
    peer: str,
    silence_timeout: float,
    as_json: bool,
    **impairment: tuple[str, ...],
) -> None:
    """Run the RUDP engine over a simulated network in virtual time, checking invariants."""
    from rich.console import Console

    from stacklab.sim.runner import (
        MAX_SIZE,
        Scenario,
        Summary,
        draw_scenario,
        run_many,
        run_scenario,
    )

    console = Console(highlight=False)
    if scenarios is not None and index is not None:
        raise UserError("use either --scenarios N or --scenario I, not both")
    if scenarios is not None:
        if not 1 <= scenarios <= 10_000_000:
            raise UserError("--scenarios must be at least 1")
        if workers < 1:
            raise UserError("--workers must be at least 1")
        summary = Summary()
        outcomes = run_many(seed, scenarios, workers=workers)
        if as_json or not sys.stdout.isatty():
            for outcome in outcomes:
                summary.add(outcome)
        else:
            from rich.progress import Progress

            with Progress(console=console, transient=True) as progress:
                task = progress.add_task(f"{scenarios} scenarios", total=scenarios)
                for outcome in outcomes:
                    summary.add(outcome)
                    progress.advance(task)
        summary.violations.sort(key=lambda v: v["scenario"])
        if as_json:
            click.echo(summary.to_json())
        else:
            _print_summary(console, seed, summary)
        if summary.violations:
            sys.exit(1)
        return

    if index is not None:
        if index < 0:
            raise UserError("--scenario must be >= 0")
        scenario = draw_scenario(seed, index)
    else:
        from stacklab.transport.options import TransferOptions

        if not 0 <= size <= MAX_SIZE * 100:
            raise UserError(f"--size must be between 0 and {MAX_SIZE * 100}")
        if not 0 < min_rto <= max_rto or initial_rto <= 0:
            raise UserError("need 0 < --min-rto <= --max-rto and a positive --initial-rto")
        if silence_timeout <= 0:
            raise UserError("--silence-timeout must be positive")
        if max_timeouts < 1:
            raise UserError("--max-timeouts must be at least 1")
        imps = build_impairments(**impairment)
        try:
            options = None if original else TransferOptions(chunk, window, integrity, ack_every)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        scenario = Scenario(
            seed,
            None,
            size,
            options,
            imps["up"],
            imps["down"],
            initial_rto=initial_rto,
            min_rto=min_rto,
            max_rto=max_rto,
            max_timeouts=max_timeouts,
            silence_timeout=silence_timeout,
            peer=peer,
            peer_at={"normal": 0.0, "bogus": 50.0, "slow": 0.0}.get(peer, 0.1),
        )
    outcome = run_scenario(scenario, keep_trace=True)
    if as_json:
        summary = Summary()
        summary.add(outcome)
        click.echo(summary.to_json())
    else:
        _print_outcome(console, outcome)
    if outcome.violation is not None:
        sys.exit(1)


def _print_summary(console: Any, seed: int, summary: Any) -> None:
    from rich.table import Table

    table = Table(title=f"{summary.scenarios} simulated transfers, seed {seed}", show_header=False)
    table.add_column("")
    table.add_column("", justify="right")
    table.add_row("completed", str(summary.completed))
    table.add_row("aborted cleanly (gave up)", str(summary.aborted))
    table.add_row("invariant violations", str(len(summary.violations)))
    table.add_row("virtual time", f"{summary.virtual_time:.1f} s")
    table.add_row("bytes delivered", f"{summary.bytes_delivered:,}")
    table.add_row("retransmissions", f"{summary.retransmissions:,}")
    table.add_row("go-backs", f"{summary.go_backs:,}")
    table.add_row("timeouts", f"{summary.timeouts:,}")
    console.print(table)
    for v in summary.violations[:20]:
        _print_violation(console, v)
    if len(summary.violations) > 20:
        console.print(f"... and {len(summary.violations) - 20} more (see --json)")


def _print_violation(console: Any, v: dict[str, Any]) -> None:
    where = "a chosen setting" if v["scenario"] is None else f"scenario {v['scenario']}"
    console.print(
        f"[bold red]VIOLATION[/] seed {v['seed']} {where} at {v['time']:.6f} s: "
        f"{v['invariant']}: {v['detail']}\n  setting: {v['setting']}\n  replay:  {v['replay']}"
    )


def _print_outcome(console: Any, outcome: Any) -> None:
    from rich.table import Table

    s = outcome.scenario
    console.print(f"setting: {s.describe()}")
    table = Table(title="simulated transfer", show_header=False)
    table.add_column("")
    table.add_column("", justify="right")
    table.add_row("outcome", outcome.status)
    table.add_row("virtual transfer time", f"{outcome.virtual_time:.3f} s")
    table.add_row("bytes delivered", f"{outcome.delivered:,} of {s.size:,}")
    net = outcome.network
    for direction, label in (("c2s", "client -> server"), ("s2c", "server -> client")):
        drops = sum(
            v
            for k, v in net.items()
            if k.startswith(f"{direction}.")
            and k.split(".")[1] in ("loss", "burst", "blackhole", "queue")
        )
        table.add_row(f"datagrams {label}", f"{net.get(direction, 0):,} sent, {drops:,} dropped")
    table.add_row("retransmissions", str(outcome.retransmissions))
    table.add_row("go-backs", str(outcome.go_backs))
    table.add_row("fast retransmits", str(outcome.fast_retransmits))
    table.add_row("timeouts", str(outcome.timeouts))
    if outcome.client_error:
        table.add_row("client error", outcome.client_error)
    if outcome.server_error:
        table.add_row("server error", outcome.server_error)
    console.print(table)
    trace = outcome.window_trace
    if trace:
        shown = " ".join(f"{t:.3f}s:{w}" for t, w in trace[:40])
        more = f" ... ({len(trace) - 40} more changes)" if len(trace) > 40 else ""
        console.print(f"window trace (time:window): 0.000s:1 {shown}{more}")
        console.print(f"largest window {max(w for _, w in trace)}, final window {trace[-1][1]}")
    if outcome.violation is not None:
        _print_violation(console, outcome.violation.to_dict())
