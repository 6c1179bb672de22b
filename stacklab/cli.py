"""The ``stacklab`` command line.

Subcommands live in :mod:`stacklab.commands`, one module each, and are
imported only when they run: ``stacklab verify`` must not pay for importing
Scapy or matplotlib, and ``stacklab --help`` must answer at once.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import signal
import sys
from types import FrameType
from typing import Any

import click

from stacklab import __version__

# name -> (module under stacklab.commands, attribute, one-line help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "decode": ("decode", "decode", "Decode a capture into one readable line per packet."),
    "verify": ("verify", "verify", "Check captures automatically: handshake, Go-Back-N, AIMD."),
    "diff": ("diff", "diff", "Compare two captures as protocol events, ignoring ports and ISNs."),
    "dissector": ("dissector", "dissector", "Write the generated Wireshark Lua dissector."),
    "annotate": (
        "annotate",
        "annotate",
        "Copy a pcapng capture with the verifier's findings as packet comments.",
    ),
    "up": ("up", "up", "Start the whole stack on its default addresses."),
    "serve": ("serve", "serve", "Run one service alone (dhcp, dns, origin, app-tcp, app-rudp)."),
    "fetch": ("fetch", "fetch", "Run the client: DHCP -> DNS -> app server -> save the file."),
    "chaos": ("chaos", "chaos", "Relay UDP through an impairing proxy (loss, delay, reorder...)."),
    "capture": ("capture", "capture", "Record a scenario of the original project as pcapng."),
    "demo": ("demo", "demo", "Boot the stack, capture every flow, verify it, report."),
    "plot": ("plot", "plot", "Draw time-sequence, window and ladder diagrams of a capture."),
    "report": ("report", "report", "Write one self-contained HTML report of a capture."),
    "probe": ("probe", "probe", "Throw malformed packets at a server and see which ones hurt."),
    "simulate": (
        "simulate",
        "simulate",
        "Run the RUDP engine over a simulated network, checking invariants.",
    ),
    "bench": ("bench", "bench", "Measure transfer goodput: RUDP vs TCP app path vs raw UDP."),
    "watch": ("watch", "watch", "Verify the stack's traffic live, verdicts on Ctrl-C."),
    "grade": ("grade", "grade", "Judge an RUDP server or client over impaired-network scenarios."),
}


class LazyGroup(click.Group):
    """A click group that imports a subcommand's module only when it is used."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(name for name in COMMANDS if _available(name))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS or not _available(cmd_name):
            return None
        module_name, attr, _ = COMMANDS[cmd_name]
        module = importlib.import_module(f"stacklab.commands.{module_name}")
        command: click.Command = getattr(module, attr)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][2]) for name in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def _available(name: str) -> bool:
    """A command is listed once its module exists (parts of stacklab land one by one)."""
    return importlib.util.find_spec(f"stacklab.commands.{COMMANDS[name][0]}") is not None


def setup_logging(verbosity: int, quiet: bool = False) -> None:
    """Route library logging to stderr through rich: WARNING by default, -v INFO, -vv DEBUG."""
    level = (
        logging.ERROR
        if quiet
        else [logging.WARNING, logging.INFO, logging.DEBUG][min(verbosity, 2)]
    )
    handler = _LazyRichHandler()
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


class _LazyRichHandler(logging.Handler):
    """A rich handler made at the first record: a command that logs nothing never loads rich."""

    def __init__(self) -> None:
        super().__init__()
        self._rich: logging.Handler | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if self._rich is None:
            from rich.console import Console
            from rich.logging import RichHandler

            # Standard error: standard output belongs to the command (JSON, a report on '-').
            self._rich = RichHandler(
                console=Console(stderr=True), show_path=False, rich_tracebacks=False, markup=False
            )
            self._rich.setFormatter(self.formatter)
        self._rich.emit(record)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="stacklab")
@click.option("-v", "--verbose", count=True, help="More logging: -v for INFO, -vv for DEBUG.")
@click.option("-q", "--quiet", is_flag=True, help="Only errors.")
def cli(verbose: int, quiet: bool) -> None:
    """stacklab: craft, run, capture and verify a small educational network stack.

    DHCP and DNS speak JSON over UDP, the app server fetches URLs over TCP with
    10-byte length-prefix framing or over RUDP (Go-Back-N with an AIMD window on
    UDP). stacklab runs them, decodes their captures and checks them.
    """
    setup_logging(verbose, quiet)


def is_quiet() -> bool:
    """Whether ``-q`` was given before the command (commands then print only problems)."""
    ctx = click.get_current_context(silent=True)
    return bool(ctx is not None and ctx.find_root().params.get("quiet"))


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every ``finally`` cleans up on the way out."""


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> Any:
    """Console-script entry point.

    Ctrl-C exits 130 (and SIGTERM 143) with one line, after the ``finally``
    blocks have run: a capture stops dumpcap and deletes its raw file and its
    network namespace on the way out.  Commands that wait for a signal
    (``up``, ``serve``, ``chaos``) install their own handlers while they run.
    """
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _terminate)
    args = argv if argv is not None else sys.argv[1:]
    try:
        return cli.main(args=args, prog_name="stacklab", standalone_mode=False)
    except click.exceptions.Abort as exc:
        terminated = isinstance(exc.__context__, Terminated)
        click.echo("stacklab: " + ("terminated" if terminated else "interrupted"), err=True)
        sys.exit(128 + (signal.SIGTERM if terminated else signal.SIGINT))
    except KeyboardInterrupt as exc:  # raised outside click's own handling
        terminated = isinstance(exc, Terminated)
        click.echo("stacklab: " + ("terminated" if terminated else "interrupted"), err=True)
        sys.exit(128 + (signal.SIGTERM if terminated else signal.SIGINT))
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except BrokenPipeError:  # the reader went away (``| head``): stop quietly
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
