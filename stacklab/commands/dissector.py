"""``stacklab dissector [-o FILE]``: the generated Wireshark Lua dissector."""

from __future__ import annotations

import os
import sys
from typing import Final

import click

from stacklab.errors import UserError
from stacklab.files import write_atomically
from stacklab.wire import Ports

_PORT = click.IntRange(0, 65535)
DEFAULT_PORTS: Final = Ports()


@click.command("dissector")
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False), help="Write to FILE instead of stdout."
)
@click.option("--rudp-port", type=_PORT, default=DEFAULT_PORTS.rudp, show_default=True)
@click.option("--dns-port", type=_PORT, default=DEFAULT_PORTS.dns, show_default=True)
@click.option("--dhcp-port", type=_PORT, default=DEFAULT_PORTS.dhcp, show_default=True)
@click.option("--app-port", type=_PORT, default=DEFAULT_PORTS.app, show_default=True)
def dissector(
    output: str | None, rudp_port: int, dns_port: int, dhcp_port: int, app_port: int
) -> None:
    """Write the Wireshark Lua dissector generated from the wire definitions.

    Protocols slrudp, slframe, sldhcp and sldns; load it with
    `wireshark -X lua_script:FILE` or copy it into the Lua plugins folder.
    The ports given here are the preference defaults (changeable in Wireshark).
    """
    from stacklab.layers.lua import generate_dissector

    text = generate_dissector(Ports(rudp=rudp_port, dns=dns_port, dhcp=dhcp_port, app=app_port))
    if output is None:
        try:
            sys.stdout.write(text)
            sys.stdout.flush()
        except BrokenPipeError:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return
    try:
        write_atomically(output, text.encode("utf-8"))  # Wireshark may be reading the folder
    except OSError as exc:
        raise UserError(f"{output}: cannot write: {exc.strerror}") from None
    click.echo(f"wrote {output}", err=True)
