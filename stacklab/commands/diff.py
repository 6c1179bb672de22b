"""``stacklab diff A B``: two captures compared as protocol events, not as bytes.

Ports, ISNs and absolute times are ignored; times since each session's first
frame are compared within ``--time-tolerance``.  Exit 0 when the two stories
agree, 1 when they part (the first divergence is shown with the frames on
both sides), 2 when a capture cannot be read.
"""

from __future__ import annotations

import json
import sys

import click

from stacklab.commands.plot import capture_options, check_capture, make_ports
from stacklab.errors import UserError
from stacklab.params import FiniteFloatRange


@click.command("diff")
@click.argument("a", type=click.Path())
@click.argument("b", type=click.Path())
@click.option(
    "--time-tolerance",
    type=FiniteFloatRange(0.0, 1e9),
    default=0.1,
    show_default=True,
    help="Seconds by which the same event may move (times count from each session's start).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@capture_options
def diff(
    a: str,
    b: str,
    time_tolerance: float,
    as_json: bool,
    rudp_port: int,
    dns_port: int,
    dhcp_port: int,
    app_port: int,
    origin_port: int,
    max_window: int,
    min_rto: float,
    events_path: str | None,
) -> None:
    """Compare captures A and B as protocol events: handshake, chunks, ACKs, go-backs, window."""
    from stacklab.analysis.pcapio import CaptureError
    from stacklab.analysis.semantic import capture_events, counts, describe, first_divergence
    from stacklab.analysis.semantic import event_options as with_events
    from stacklab.analysis.sessions import VerifyOptions
    from stacklab.analysis.verify import analyze_capture

    for path in (a, b):
        check_capture(path)
    ports = make_ports(rudp_port, dns_port, dhcp_port, app_port, origin_port)
    options = with_events(VerifyOptions(ports=ports, max_window=max_window, min_rto=min_rto))
    stories = []
    for path in (a, b):
        try:
            stories.append(capture_events(analyze_capture(path, options)))
        except CaptureError as exc:
            raise UserError(str(exc)) from None
    left, right = stories
    divergence = first_divergence(left, right, time_tolerance)
    if as_json:
        document = {
            "a": a,
            "b": b,
            "time_tolerance": time_tolerance,
            "events": [len(left), len(right)],
            "same": divergence is None,
            "divergence": None
            if divergence is None
            else {
                "index": divergence.index,
                "reason": divergence.reason,
                "a": None if divergence.a is None else divergence.a.to_json(),
                "b": None if divergence.b is None else divergence.b.to_json(),
            },
        }
        sys.stdout.write(json.dumps(document, indent=2) + "\n")
    elif divergence is None:
        click.echo(f"same: {len(left)} events agree (times within {time_tolerance:g} s)")
    else:
        for line in describe(divergence, left, ("A", "B")):
            click.echo(line)
        tally_a, tally_b = counts(left), counts(right)
        differ = [
            f"{kind} {tally_a.get(kind, 0)} vs {tally_b.get(kind, 0)}"
            for kind in sorted(set(tally_a) | set(tally_b))
            if tally_a.get(kind, 0) != tally_b.get(kind, 0)
        ]
        if differ:
            click.echo("counts differ: " + ", ".join(differ))
        click.echo(f"A: {a} ({len(left)} events)\nB: {b} ({len(right)} events)")
    sys.exit(0 if divergence is None else 1)
