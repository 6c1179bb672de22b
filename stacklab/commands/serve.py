"""``stacklab serve NAME``: run one service of the stack alone."""

from __future__ import annotations

from typing import Any

import click
from rich.console import Console

from stacklab.commands.up import (
    config_from_options,
    config_options,
    listen_table,
    start_or_explain,
    stats_table,
    until_signalled,
)


@click.command("serve")
@click.argument("name", type=click.Choice(["dhcp", "dns", "origin", "app-tcp", "app-rudp"]))
@config_options
def serve(name: str, config_file: str | None, root: str | None, **params: Any) -> None:
    """Run one service (dhcp, dns, origin, app-tcp, app-rudp) until Ctrl-C or SIGTERM."""
    from stacklab.services.stack import Stack

    config = config_from_options(config_file, root, params)
    console = Console()
    stack = Stack(config, (name,))
    with until_signalled() as stop:
        start_or_explain(stack.start)
        try:
            console.print(listen_table(stack.rows(), f"stacklab {name} is up (Ctrl-C to stop)"))
            while not stop.wait(0.5):
                pass
        finally:
            stats = {s.name: dict(s.stats) for s in stack.services}
            stack.stop()
    console.print(stats_table(stats))
