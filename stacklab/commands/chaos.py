"""``stacklab chaos``: an impairing UDP relay (loss, bursts, delay, reorder, ...).

Every impairment option applies to both directions unless its value starts
with a direction: ``--loss 0.1`` loses 10% each way, ``--loss up=0.3`` only
client -> server, ``--loss down=0.05`` only server -> client.  Options can be
repeated; a later value overrides an earlier one for the direction it names.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import types
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from stacklab import wire
from stacklab.errors import UserError
from stacklab.params import FINITE_FLOAT
from stacklab.sim.impairment import Blackhole, GilbertElliott, Impairment

DIRECTIONS = ("up", "down")


def parse_hostport(text: str, what: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) -> (host, port), with a clear error."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise UserError(f"{what} must be HOST:PORT, got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port_text)


def split_direction(value: str) -> tuple[tuple[str, ...], str]:
    """``up=0.1`` -> (("up",), "0.1"); ``0.1`` -> (("up", "down"), "0.1")."""
    prefix, sep, rest = value.partition("=")
    if not sep:
        return DIRECTIONS, value
    prefix = prefix.strip().lower()
    if prefix == "both":
        return DIRECTIONS, rest
    if prefix in DIRECTIONS:
        return (prefix,), rest
    raise UserError(f"direction must be up, down or both, got {prefix!r} in {value!r}")


def _probability(text: str, option: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"{option} needs a probability between 0 and 1, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise UserError(f"{option} needs a probability between 0 and 1, got {text!r}")
    return value


def _numbers(text: str, option: str, count: tuple[int, int]) -> list[float]:
    parts = text.split(":")
    if not count[0] <= len(parts) <= count[1]:
        raise UserError(f"{option}: cannot read {text!r}")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise UserError(f"{option}: cannot read {text!r} as numbers") from None
    if any(not math.isfinite(v) or v < 0 for v in values):
        raise UserError(f"{option}: values must be finite and non-negative, got {text!r}")
    return values


def build_impairments(
    *,
    loss: Iterable[str] = (),
    burst: Iterable[str] = (),
    delay: Iterable[str] = (),
    reorder: Iterable[str] = (),
    reorder_gap: Iterable[str] = (),
    duplicate: Iterable[str] = (),
    corrupt: Iterable[str] = (),
    corrupt_bytes: Iterable[str] = (),
    rate: Iterable[str] = (),
    queue: Iterable[str] = (),
    blackhole: Iterable[str] = (),
) -> dict[str, Impairment]:
    """Turn the option values into one :class:`Impairment` per direction (``up``, ``down``)."""
    fields: dict[str, dict[str, Any]] = {d: {} for d in DIRECTIONS}
    holes: dict[str, list[Blackhole]] = {d: [] for d in DIRECTIONS}

    def each(values: Iterable[str]) -> Iterable[tuple[tuple[str, ...], str]]:
        for value in values:
            yield split_direction(value)

    for dirs, text in each(loss):
        for d in dirs:
            fields[d]["loss"] = _probability(text, "--loss")
    for dirs, text in each(burst):
        nums = _numbers(text, "--burst ENTER:EXIT[:LOSS_BAD[:LOSS_GOOD]]", (2, 4))
        if any(n > 1 for n in nums):
            raise UserError(f"--burst values are probabilities in [0, 1], got {text!r}")
        for d in dirs:
            fields[d]["burst"] = GilbertElliott(*nums)
    for dirs, text in each(delay):
        nums = _numbers(text, "--delay MIN[:MAX] (ms)", (1, 2))
        low, high = nums[0], nums[-1]
        if high < low:
            raise UserError(f"--delay MIN:MAX needs MIN <= MAX, got {text!r}")
        for d in dirs:
            fields[d]["delay_min"] = low / 1e3
            fields[d]["delay_max"] = high / 1e3
    for dirs, text in each(reorder):
        for d in dirs:
            fields[d]["reorder"] = _probability(text, "--reorder")
    for dirs, text in each(reorder_gap):
        (gap,) = _numbers(text, "--reorder-gap MS", (1, 1))
        for d in dirs:
            fields[d]["reorder_gap"] = gap / 1e3
    for dirs, text in each(duplicate):
        for d in dirs:
            fields[d]["duplicate"] = _probability(text, "--duplicate")
    for dirs, text in each(corrupt):
        for d in dirs:
            fields[d]["corrupt"] = _probability(text, "--corrupt")
    for dirs, text in each(corrupt_bytes):
        (n,) = _numbers(text, "--corrupt-bytes N", (1, 1))
        if n < 1 or n != int(n):
            raise UserError(f"--corrupt-bytes needs a whole number >= 1, got {text!r}")
        for d in dirs:
            fields[d]["corrupt_max_bytes"] = int(n)
    for dirs, text in each(rate):
        (kbit,) = _numbers(text, "--rate KBIT", (1, 1))
        if kbit <= 0:
            raise UserError(f"--rate needs a positive number of kbit/s, got {text!r}")
        for d in dirs:
            fields[d]["rate_bps"] = kbit * 1e3
    for dirs, text in each(queue):
        (n,) = _numbers(text, "--queue N", (1, 1))
        if n < 1 or n != int(n):
            raise UserError(f"--queue needs a whole number of datagrams >= 1, got {text!r}")
        for d in dirs:
            fields[d]["queue_limit"] = int(n)
    for dirs, text in each(blackhole):
        after, length = _numbers(text, "--blackhole AFTER:FOR (seconds)", (2, 2))
        for d in dirs:
            holes[d].append(Blackhole(after, length))

    result: dict[str, Impairment] = {}
    for d in DIRECTIONS:
        try:
            imp = Impairment(**fields[d])
        except ValueError as exc:
            raise UserError(f"{d}: {exc}") from None
        result[d] = replace(imp, blackholes=tuple(holes[d]))
    return result


_DIRECTED = "Prefix with up= or down= for one direction only; repeatable."


def impairment_options(func: Any) -> Any:
    """The impairment options shared by ``stacklab chaos`` and ``stacklab simulate``."""
    decorators = [
        click.option(
            "--loss", multiple=True, metavar="P", help=f"Independent loss probability. {_DIRECTED}"
        ),
        click.option(
            "--burst",
            multiple=True,
            metavar="ENTER:EXIT[:BAD[:GOOD]]",
            help="Gilbert-Elliott burst loss: P(good->bad), P(bad->good), loss in bad (1), loss in good (0).",
        ),
        click.option(
            "--delay", multiple=True, metavar="MIN[:MAX]", help="Delay in ms, uniform jitter."
        ),
        click.option(
            "--reorder", multiple=True, metavar="P", help="Hold back this share of datagrams."
        ),
        click.option(
            "--reorder-gap",
            multiple=True,
            metavar="MS",
            help="How long reordered datagrams are held (10).",
        ),
        click.option("--duplicate", multiple=True, metavar="P", help="Deliver this share twice."),
        click.option("--corrupt", multiple=True, metavar="P", help="Flip bytes in this share."),
        click.option(
            "--corrupt-bytes",
            multiple=True,
            metavar="N",
            help="Flip 1..N bytes per corrupted datagram (1).",
        ),
        click.option("--rate", multiple=True, metavar="KBIT", help="Bandwidth limit in kbit/s."),
        click.option(
            "--queue", multiple=True, metavar="N", help="Rate-limit queue length in datagrams (64)."
        ),
        click.option(
            "--blackhole",
            multiple=True,
            metavar="AFTER:FOR",
            help="Drop everything for FOR seconds starting AFTER seconds after start; repeatable.",
        ),
    ]
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


@click.command("chaos")
@click.option(
    "--listen",
    default="127.0.0.1:0",
    show_default=True,
    help="Where clients send (port 0: pick a free port, printed at start).",
)
@click.option(
    "--upstream",
    default=f"{wire.APP_ADDR}:{wire.APP_RUDP_PORT}",
    show_default=True,
    help="The real server, HOST:PORT.",
)
@impairment_options
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Makes every decision reproducible."
)
@click.option(
    "--log",
    "log_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write each decision as a JSON line.",
)
@click.option(
    "--idle-timeout",
    type=FINITE_FLOAT,
    default=60.0,
    show_default=True,
    help="Seconds before an idle client's mapping closes.",
)
@click.option(
    "--duration",
    type=FINITE_FLOAT,
    default=None,
    help="Stop after this many seconds (default: until Ctrl-C).",
)
def chaos(
    listen: str,
    upstream: str,
    seed: int,
    log_path: Path | None,
    idle_timeout: float,
    duration: float | None,
    **impairment_options: tuple[str, ...],
) -> None:
    """Relay UDP between clients and a server, impairing it like tc netem (no root needed).

    Each impairment applies both ways unless its value starts with up= (client
    to server) or down= (server to client), e.g. --loss up=0.3 --loss down=0.05.

    Example: stacklab chaos --listen 127.0.0.1:9122 --upstream 127.0.0.3:2122
    --loss 0.3 --delay 5:20 --duplicate 0.02 --reorder 0.02 --corrupt 0.01
    """
    from rich.console import Console

    from stacklab.services.base import BindError
    from stacklab.tools.chaos import ChaosProxy

    listen_addr = parse_hostport(listen, "--listen")
    upstream_addr = parse_hostport(upstream, "--upstream")
    if idle_timeout <= 0:
        raise UserError("--idle-timeout must be positive")
    if duration is not None and duration < 0:
        raise UserError("--duration must not be negative")
    impairments = build_impairments(**impairment_options)
    proxy = ChaosProxy(
        listen_addr,
        upstream_addr,
        impairments["up"],
        impairments["down"],
        seed=seed,
        log_path=log_path,
        idle_timeout=idle_timeout,
    )
    console = Console()
    try:
        proxy.start()
    except BindError as exc:
        raise UserError(str(exc)) from None
    except OSError as exc:
        raise UserError(f"cannot start the chaos proxy: {exc}") from None

    done = threading.Event()
    previous = _install_stop_handlers(done)
    try:
        host, port = proxy.address
        console.print(
            f"chaos: {host}:{port} -> {upstream_addr[0]}:{upstream_addr[1]}  seed {seed}\n"
            f"  up   (client -> server): {impairments['up'].describe()}\n"
            f"  down (server -> client): {impairments['down'].describe()}",
            highlight=False,
        )
        console.file.flush()  # scripts read the port from the first line while we run
        with contextlib.suppress(KeyboardInterrupt):
            done.wait(duration)
    finally:
        proxy.stop()
        _restore_handlers(previous)
    console.print(counters_table(proxy.stats))


def counters_table(stats: Any) -> Any:
    """A rich table of the proxy's counters: one row per counter, one column per direction."""
    from rich.table import Table

    table = Table(title="chaos counters")
    table.add_column("counter")
    table.add_column("up", justify="right")
    table.add_column("down", justify="right")
    names = ["received", "delivered", "loss", "burst", "blackhole", "queue"]
    names += ["corrupt", "duplicate", "reorder"]
    for name in names:
        up, down = stats.get(f"up.{name}", 0), stats.get(f"down.{name}", 0)
        if name in ("received", "delivered") or up or down:
            table.add_row(name, str(up), str(down))
    for key in ("clients", "expired", "evicted", "up.unreachable", "send_errors", "errors"):
        if stats.get(key, 0) or key == "clients":
            table.add_row(key, str(stats[key]), "")
    return table


def _install_stop_handlers(done: threading.Event) -> dict[int, Any]:
    """SIGTERM and SIGINT end the relay cleanly (only possible from the main thread)."""
    previous: dict[int, Any] = {}
    if threading.current_thread() is not threading.main_thread():
        return previous

    def handler(signum: int, frame: types.FrameType | None) -> None:
        done.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        previous[sig] = signal.signal(sig, handler)
    return previous


def _restore_handlers(previous: dict[int, Any]) -> None:
    for sig, old in previous.items():
        signal.signal(sig, old)
