"""``stacklab up``: start the whole stack and run until Ctrl-C or SIGTERM.

Every setting of :class:`stacklab.config.StackConfig` is also an option,
generated from the config dataclasses (``--dns-port``, ``--app-tcp-read-timeout``,
``--fetch-allow HOST:PORT`` repeated, ``--dns-record NAME=IP`` repeated...),
so the command line, the TOML file and the code cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import signal
import threading
import types
import typing
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from stacklab.config import SECTIONS, ConfigError, StackConfig, load_config
from stacklab.errors import UserError
from stacklab.params import FINITE_FLOAT

F = typing.TypeVar("F", bound=Callable[..., Any])

# Options whose generated name would be clumsy get a friendlier one.
_RENAMED = {
    ("dns", "records"): "dns-record",
    ("fetch", "allow"): "fetch-allow",
    ("app_rudp", "gso"): "gso",
}


def _option_name(section: str, field: str) -> str:
    return _RENAMED.get((section, field), f"{section}-{field}".replace("_", "-"))


def _param_name(section: str, field: str) -> str:
    return f"cfg__{section}__{field}"


def config_options(func: F) -> F:
    """Add ``--config``, ``--root`` and one option per setting to a click command."""
    for section, cls in reversed(list(SECTIONS.items())):
        hints = typing.get_type_hints(cls)
        for f in reversed(dataclasses.fields(cls)):
            hint = hints[f.name]
            origin = typing.get_origin(hint)
            args = [a for a in typing.get_args(hint) if a is not type(None)]
            base = args[0] if origin in (typing.Union, types.UnionType) else hint
            opt = f"--{_option_name(section, f.name)}"
            dest = _param_name(section, f.name)
            doc = f"[{section}] {f.name}"
            if base is bool:
                decl = f"{opt}/--no-{opt[2:]}"
                func = click.option(decl, dest, default=None, help=doc)(func)
            elif typing.get_origin(base) is list:
                func = click.option(opt, dest, multiple=True, help=f"{doc} (repeat)")(func)
            elif typing.get_origin(base) is dict:
                func = click.option(
                    opt, dest, multiple=True, metavar="NAME=IP", help=f"{doc} (repeat)"
                )(func)
            else:
                click_type = {int: click.INT, float: FINITE_FLOAT}.get(base, click.STRING)
                func = click.option(opt, dest, type=click_type, default=None, help=doc)(func)
    func = click.option(
        "--root",
        type=click.Path(file_okay=False),
        default=None,
        help="Folder the origin serves (default: the sample folder shipped with stacklab).",
    )(func)
    func = click.option(
        "--config",
        "config_file",
        type=click.Path(dir_okay=False),
        default=None,
        help="TOML file with [dhcp] [dns] [origin] [app_tcp] [app_rudp] [fetch] sections.",
    )(func)
    return func


def config_from_options(
    config_file: str | None, root: str | None, params: dict[str, Any]
) -> StackConfig:
    """Build the config from ``--config`` and the generated options (options win)."""
    overrides: dict[str, Any] = {}
    for key, value in params.items():
        if not key.startswith("cfg__") or value is None:
            continue
        _, section, field = key.split("__")
        converted: Any = value
        if isinstance(value, tuple):
            if not value:
                continue
            if section == "dns" and field == "records":
                converted = dict(_parse_record(item) for item in value)
            else:
                converted = list(value)
        overrides[f"{section}.{field}"] = converted
    if root is not None:
        overrides["origin.root"] = root
    return load_config(config_file, overrides)


def _parse_record(item: str) -> tuple[str, str]:
    name, sep, ip = item.partition("=")
    if not sep or not name or not ip:
        raise ConfigError(f"--dns-record {item!r}: expected NAME=IP")
    return name, ip


@contextmanager
def until_signalled() -> Iterator[threading.Event]:
    """An event set by SIGINT or SIGTERM, with the previous handlers restored afterwards."""
    stop = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def start_or_explain(start: Callable[[], None]) -> None:
    """Run a start function; turn bind and setup failures into one-line user errors."""
    from stacklab.services.dns import ZoneError

    try:
        start()
    except (OSError, ZoneError, LookupError) as exc:
        raise UserError(str(exc)) from None


def listen_table(rows: list[tuple[str, str, str]], title: str) -> Table:
    table = Table(title=title)
    table.add_column("service")
    table.add_column("transport")
    table.add_column("listening on")
    for row in rows:
        table.add_row(*row)
    return table


def stats_table(stats: dict[str, dict[str, int]]) -> Table:
    table = Table(title="served")
    table.add_column("service")
    table.add_column("counters")
    for name, counters in stats.items():
        table.add_row(name, ", ".join(f"{k} {v}" for k, v in sorted(counters.items())) or "-")
    return table


@click.command("up")
@config_options
def up(config_file: str | None, root: str | None, **params: Any) -> None:
    """Start the whole stack (origin, DHCP, DNS, app servers) until Ctrl-C or SIGTERM."""
    from stacklab.services.stack import Stack

    config = config_from_options(config_file, root, params)
    console = Console()
    stack = Stack(config)
    with until_signalled() as stop:
        start_or_explain(stack.start)
        try:
            console.print(listen_table(stack.rows(), "stacklab is up (Ctrl-C to stop)"))
            while not stop.wait(0.5):  # a timeout keeps the main thread responsive
                pass
        finally:
            stats = {s.name: dict(s.stats) for s in stack.services}
            stack.stop()
    console.print(stats_table(stats))
    console.print("stacklab: stopped cleanly")
