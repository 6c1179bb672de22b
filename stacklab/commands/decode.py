"""``stacklab decode CAPTURE``: one readable line (or JSON object) per packet."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable
from typing import IO, Final

import click

from stacklab.analysis.decode import PROTOCOLS, DecodedPacket, decode_capture
from stacklab.analysis.pcapio import CaptureError
from stacklab.errors import UserError
from stacklab.wire import Ports

STYLES: Final = {
    "rudp": "bold cyan",
    "dhcp": "green",
    "dns": "magenta",
    "app": "bold yellow",
    "udp": "white",
    "tcp": "dim",
    "ipfrag": "dim",
    "other": "dim",
}

_PORT = click.IntRange(0, 65535)
DEFAULT_PORTS: Final = Ports()


def _parse_only(value: str | None) -> frozenset[str] | None:
    if value is None:
        return None
    wanted = frozenset(part.strip().lower() for part in value.split(",") if part.strip())
    unknown = wanted - set(PROTOCOLS)
    if unknown or not wanted:
        raise UserError(
            f"--only: unknown protocol(s) {', '.join(sorted(unknown)) or '(none given)'}; "
            f"choose from {','.join(PROTOCOLS)}"
        )
    return wanted


def _write_plain(records: Iterable[DecodedPacket], out: IO[str], as_json: bool) -> None:
    write = out.write
    if as_json:
        dumps = json.JSONEncoder(ensure_ascii=False, separators=(", ", ": ")).encode
        for record in records:
            write(dumps(record.to_json()) + "\n")
    else:
        for record in records:
            write(record.line() + "\n")
    out.flush()


def _write_rich(records: Iterable[DecodedPacket], force: bool) -> None:
    from rich.console import Console
    from rich.text import Text

    console = Console(highlight=False, soft_wrap=True, force_terminal=force or None)
    for record in records:
        line = Text()
        line.append(f"{record.frame:>6} ", style="bold")
        line.append(f"{record.time:>11.6f}  ", style="dim")
        route = f"{record.src} -> {record.dst}" if record.src else "-"
        line.append(f"{route:<45} ", style="blue")
        line.append(record.summary(), style=STYLES.get(record.proto, ""))
        console.print(line)


def _limited(records: Iterable[DecodedPacket], limit: int | None) -> Iterable[DecodedPacket]:
    if limit is None:
        yield from records
        return
    for count, record in enumerate(records):
        if count >= limit:
            return
        yield record


@click.command("decode")
@click.argument("capture", type=click.Path(dir_okay=True, path_type=str))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option(
    "--only",
    metavar="PROTOS",
    help=f"Comma-separated protocols to show ({','.join(PROTOCOLS)}).",
)
@click.option("--rudp-port", type=_PORT, default=DEFAULT_PORTS.rudp, show_default=True)
@click.option("--dns-port", type=_PORT, default=DEFAULT_PORTS.dns, show_default=True)
@click.option("--dhcp-port", type=_PORT, default=DEFAULT_PORTS.dhcp, show_default=True)
@click.option("--app-port", type=_PORT, default=DEFAULT_PORTS.app, show_default=True)
@click.option(
    "--heuristic",
    is_flag=True,
    help="Also recognise RUDP on any UDP port (known flag and exact length).",
)
@click.option("--limit", type=click.IntRange(min=0), help="Stop after N records.")
@click.option(
    "--color/--no-color",
    default=None,
    help="Colours (default: when stdout is a terminal; never with --json).",
)
def decode(
    capture: str,
    as_json: bool,
    only: str | None,
    rudp_port: int,
    dns_port: int,
    dhcp_port: int,
    app_port: int,
    heuristic: bool,
    limit: int | None,
    color: bool | None,
) -> None:
    """Decode CAPTURE (pcap or pcapng) into one line per packet.

    RUDP headers, the DHCP/DNS JSON messages and the app frames (reassembled
    from TCP, reported at the segment that completes them) are decoded; other
    traffic is shown as plain UDP/TCP.  Time is relative to the first frame.
    """
    ports = Ports(rudp=rudp_port, dns=dns_port, dhcp=dhcp_port, app=app_port)
    wanted = _parse_only(only)
    try:
        records = _limited(decode_capture(capture, ports, wanted, heuristic), limit)
        use_color = color if color is not None else sys.stdout.isatty()
        if use_color and not as_json:
            _write_rich(records, force=bool(color))
        else:
            _write_plain(records, sys.stdout, as_json)
    except CaptureError as exc:
        raise UserError(str(exc)) from None
    except BrokenPipeError:
        # The reader went away (``| head``): stop quietly, and keep Python's
        # shutdown flush from complaining about the closed pipe.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(0)
