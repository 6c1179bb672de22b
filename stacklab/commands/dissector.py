"""``stacklab dissector [-o FILE]``: the generated Wireshark Lua dissector."""

from __future__ import annotations

import os
import sys
from typing import Final

import click

from stacklab.errors import UserError
from stacklab.files import resolve_output, write_output
from stacklab.wire import Ports

_PORT = click.IntRange(0, 65535)
DEFAULT_PORTS: Final = Ports()


@click.command("dissector")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, allow_dash=True),
    help="Write to FILE instead of stdout (an existing file only with --force).",
)
@click.option("--force", is_flag=True, help="Replace the output file if it exists.")
@click.option("--rudp-port", type=_PORT, default=DEFAULT_PORTS.rudp, show_default=True)
@click.option("--dns-port", type=_PORT, default=DEFAULT_PORTS.dns, show_default=True)
@click.option("--dhcp-port", type=_PORT, default=DEFAULT_PORTS.dhcp, show_default=True)
@click.option("--app-port", type=_PORT, default=DEFAULT_PORTS.app, show_default=True)
def dissector(
    output: str | None, force: bool, rudp_port: int, dns_port: int, dhcp_port: int, app_port: int
) -> None:
    """Write the Wireshark Lua dissector generated from the wire definitions.

    Protocols slrudp, slframe, sldhcp and sldns; load it with
    `wireshark -X lua_script:FILE` or copy it into the Lua plugins folder.
    The ports given here are the preference defaults (changeable in Wireshark).
    """
    from stacklab.layers.lua import generate_dissector

    target = resolve_output(output, force=force) if output is not None else None
    text = generate_dissector(Ports(rudp=rudp_port, dns=dns_port, dhcp=dhcp_port, app=app_port))
    if target is None or not target.is_file:
        try:
            if target is None or target.kind == "stdout":
                sys.stdout.write(text)
                sys.stdout.flush()
            else:
                write_output(target, text.encode("utf-8"))
        except BrokenPipeError:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except OSError as exc:
            raise UserError(f"{target}: cannot write: {exc.strerror}") from None
        return
    try:
        write_output(target, text.encode("utf-8"))  # atomic: Wireshark may be reading the folder
    except OSError as exc:
        raise UserError(f"{output}: cannot write: {exc.strerror}") from None
    click.echo(f"wrote {output}", err=True)
