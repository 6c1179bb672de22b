"""``stacklab bench``: goodput of RUDP vs the TCP app path vs raw UDP, in one run."""

from __future__ import annotations

import json
import re

import click
from rich.console import Console
from rich.table import Table

from stacklab import wire
from stacklab.errors import UserError
from stacklab.params import FiniteFloatRange

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgG]?)(i?)[bB]?\s*$")


def parse_size(text: str) -> int:
    """``20M``, ``100KiB``, ``5000000``: bytes (K/M/G are 10^3.., KiB/MiB/GiB are 2^10..)."""
    match = _SIZE.match(text)
    if not match:
        raise UserError(f"--size {text!r}: expected bytes such as 20M, 100KiB or 5000000")
    number, unit, binary = match.groups()
    power = " kmg".index(unit.lower() or " ")
    value = int(float(number) * (1024 if binary else 1000) ** power)
    if not 1 <= value <= 2 * 1024**3:
        raise UserError(f"--size {text!r}: must be between 1 byte and 2 GiB")
    return value


@click.command("bench")
@click.option(
    "--size", default="20M", show_default=True, help="Bytes to transfer (20M, 100KiB...)."
)
@click.option(
    "--repeat",
    type=click.IntRange(1, 100),
    default=3,
    show_default=True,
    help="Runs per transport.",
)
@click.option(
    "--chunk",
    type=click.IntRange(1, wire.MAX_STACKLAB_CHUNK),
    default=wire.STACKLAB_DEFAULT_CHUNK,
    show_default=True,
    help="RUDP chunk and raw UDP datagram size.",
)
@click.option(
    "--window", type=click.IntRange(1, 4096), default=256, show_default=True, help="RUDP window."
)
@click.option(
    "--loss",
    type=FiniteFloatRange(0.0, 0.9),
    default=0.3,
    show_default=True,
    help="Share of DATA the client drops in the lossy RUDP case.",
)
@click.option(
    "--loss-size", default="100KiB", show_default=True, help="Bytes for the lossy RUDP case."
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of content and drops.")
@click.option("--no-aioquic", is_flag=True, help="Skip the aioquic comparison.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def bench(
    size: str,
    repeat: int,
    chunk: int,
    window: int,
    loss: float,
    loss_size: str,
    seed: int,
    no_aioquic: bool,
    as_json: bool,
) -> None:
    """Transfer the same bytes over RUDP, the TCP app path and raw UDP; print medians and ratios.

    Servers run in this process on ephemeral loopback ports; the clients run
    in one worker process.  Raw UDP is a plain sendto loop with no recovery:
    the ceiling of Python UDP I/O on this machine.
    """
    from stacklab.tools.bench import run_bench

    nbytes, loss_bytes = parse_size(size), parse_size(loss_size)
    console = Console()
    err = Console(stderr=True)
    try:
        with err.status("benchmarking...") as status:
            report = run_bench(
                nbytes,
                repeat,
                chunk,
                window,
                loss,
                loss_bytes,
                seed,
                with_aioquic=not no_aioquic,
                step=status.update,
            )
    except RuntimeError as exc:
        raise UserError(str(exc)) from None
    ceiling = report.series[0].median_goodput
    if as_json:
        data = {
            "size": report.size,
            "chunk": report.chunk,
            "window": report.window,
            "repeat": report.repeat,
            "transports": [
                {
                    "name": s.name,
                    "median_mb_s": round(s.median_goodput, 2),
                    "runs_mb_s": [round(g, 2) for g in s.goodputs],
                    "ratio_to_raw_udp": round(s.median_goodput / ceiling, 3) if ceiling else None,
                    "delivered": s.received,
                }
                for s in report.series
            ],
            "loss": None
            if report.loss is None
            else {
                "name": report.loss.name,
                "bytes": report.loss.size,
                "median_s": round(report.loss.median_seconds, 3),
                "runs_s": [round(x, 3) for x in report.loss.seconds],
            },
            "aioquic": report.aioquic or "measured",
        }
        console.out(json.dumps(data, indent=2), highlight=False)
        return
    table = Table(
        title=f"{report.size / 1e6:g} MB over loopback, chunk {report.chunk}, "
        f"median of {report.repeat}"
    )
    table.add_column("transport")
    table.add_column("median MB/s", justify="right")
    table.add_column("runs (MB/s)", justify="right")
    table.add_column("vs raw UDP", justify="right")
    for s in report.series:
        runs = " ".join(f"{g:.1f}" for g in s.goodputs)
        lost = sum(s.received) < s.size * len(s.received)
        if lost:
            runs += " (datagrams lost)"
        ratio = f"{s.median_goodput / ceiling:.2f}x" if ceiling else "-"
        table.add_row(s.name, f"{s.median_goodput:.1f}", runs, ratio)
    console.print(table)
    if report.loss is not None:
        runs = ", ".join(f"{x:.2f}" for x in report.loss.seconds)
        console.print(
            f"{report.loss.name}: {report.loss.size} bytes in {report.loss.median_seconds:.2f} s "
            f"(median; runs {runs} s)",
            highlight=False,
        )
    quic = next((s for s in report.series if s.name.startswith("aioquic")), None)
    if quic is not None and quic.median_goodput > 0:
        rudp = report.series[1]
        console.print(
            f"RUDP / aioquic: {rudp.median_goodput / quic.median_goodput:.1f}x", highlight=False
        )
    if report.aioquic:
        console.print(report.aioquic, highlight=False)
