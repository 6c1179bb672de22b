"""``stacklab capture SCENARIO``: record one of the original flows as a commented pcapng.

The scenarios (:mod:`stacklab.tools.scenarios`) are ``tcp-flow``,
``rudp-handshake``, ``rudp-clean``, ``rudp-loss``, ``rudp-advanced`` (the
original programs' flows) and ``rudp-negotiated`` (stacklab's own client), or
``all``.  Each starts a private stack on the default addresses, captures on
the loopback interface with dumpcap, runs the client and stops the capture
once every packet is on disk.  ``--netns`` does it all inside a private
network namespace (Linux, root), so nothing else on the machine can clash
with the default ports; ``--running`` uses a stack that is already up.

Exit status: 0 when every capture was written (and, with ``--verify``,
passed its checks), 1 when a verified capture fails a check, 2 when a
capture cannot be made (no permission, a port in use, a tool missing), 130
on Ctrl-C (143 on SIGTERM), after dumpcap, its raw file and the namespace
are gone.

Outputs follow :mod:`stacklab.files`: an existing file is replaced only with
``--force``; a FIFO, a device or ``-`` (standard output, one scenario) gets
the finished capture written into it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import click
from rich.console import Console
from rich.table import Table

from stacklab.errors import UserError
from stacklab.files import Output, resolve_output, write_output

if TYPE_CHECKING:
    from stacklab.tools.scenarios import ScenarioResult

SCENARIO_CHOICES = (
    "tcp-flow",
    "rudp-handshake",
    "rudp-clean",
    "rudp-loss",
    "rudp-advanced",
    "rudp-negotiated",
    "all",
)


class ChecksFailed(UserError):
    """A capture was written but fails its checks: exit 1."""

    exit_code = 1


def output_paths(names: list[str], output: str | None) -> list[Path]:
    """One file per scenario: ``-o FILE`` for one, ``-o DIR`` (or the current folder) for several."""
    if output is None:
        return [Path(f"{name}.pcapng") for name in names]
    if output == "-":
        if len(names) > 1:
            raise UserError("-o -: standard output takes one scenario, not several")
        return [Path("-")]
    target = Path(output)
    as_dir = len(names) > 1 or target.is_dir() or output.endswith(os.sep)
    if as_dir:
        if target.exists() and not target.is_dir():
            raise UserError(f"{output}: not a folder (several scenarios need a folder for -o)")
        try:
            target.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"{output}: cannot create the folder: {exc.strerror}") from None
        return [target / f"{name}.pcapng" for name in names]
    if not target.parent.is_dir():
        raise UserError(f"{target.parent}: no such folder")
    return [target]


def resolve_outputs(paths: list[Path], force: bool) -> list[Output]:
    """The output policy for each capture file (refusals come before any capture starts)."""
    return [resolve_output(path, force=force) for path in paths]


@contextlib.contextmanager
def capture_targets(outputs: list[Output]) -> Iterator[list[Path]]:
    """The paths dumpcap's pipeline writes to: the file itself, or a temporary one for a stream.

    A FIFO, a device or standard output cannot take the rename that finishes a
    capture file, so the capture is made in a private folder and copied into
    it afterwards (:func:`deliver`).
    """
    with tempfile.TemporaryDirectory(prefix="stacklab-capture-") as folder:
        yield [
            Path(out.target) if out.is_file else Path(folder) / f"{index}.pcapng"
            for index, out in enumerate(outputs)
        ]


def deliver(outputs: list[Output], made: list[Path]) -> None:
    """Copy captures made in a temporary folder into their streams."""
    for out, path in zip(outputs, made, strict=True):
        if out.is_file:
            continue
        try:
            with open(path, "rb") as source:

                def copy(handle: BinaryIO, src: BinaryIO = source) -> None:
                    shutil.copyfileobj(src, handle)

                write_output(out, copy)
        except OSError as exc:
            raise UserError(f"cannot write {out}: {exc.strerror or exc}") from None


def netns_mode(netns: bool | None) -> bool:
    """``--netns`` (must work), ``--no-netns``, or unset (use one when possible)."""
    from stacklab.tools.netns import unavailable_reason

    reason = unavailable_reason()
    if netns is None:
        return reason is None
    if netns and reason is not None:
        raise UserError(f"--netns: {reason}")
    return netns


def run_captures(
    names: list[str],
    paths: list[Path],
    *,
    netns: bool,
    running: bool = False,
    url: str | None = None,
    interface: str | None = None,
) -> list[ScenarioResult]:
    """Run the scenarios; every expected failure becomes one :class:`UserError` line."""
    from stacklab.tools.capture import CaptureToolError, preflight
    from stacklab.tools.scenarios import ScenarioError, resolve_names, run_scenarios

    try:
        scenarios = resolve_names(names)
        if not netns:
            preflight()
        jobs = list(zip(scenarios, paths, strict=True))
        return run_scenarios(jobs, netns=netns, running=running, url=url, interface=interface)
    except (ScenarioError, CaptureToolError) as exc:
        raise UserError(str(exc)) from None


@click.command("capture")
@click.argument("scenario", type=click.Choice(SCENARIO_CHOICES))
@click.option(
    "-o",
    "--output",
    type=click.Path(),
    help="File to write (a folder for 'all'; default: SCENARIO.pcapng here; '-': stdout).",
)
@click.option("--force", is_flag=True, help="Replace capture files that exist.")
@click.option(
    "--netns/--no-netns",
    default=False,
    show_default=True,
    help="Run inside a private network namespace (Linux, root): no clash with anything else.",
)
@click.option(
    "--running",
    is_flag=True,
    help="Use the stack already running (stacklab up) instead of starting one.",
)
@click.option("--url", help="With --running: the URL the client fetches (default: test_file.txt).")
@click.option("--interface", help="Interface to capture on (default: the loopback interface).")
@click.option("--verify", "then_verify", is_flag=True, help="Verify each capture after writing it.")
def capture(
    scenario: str,
    output: str | None,
    force: bool,
    netns: bool,
    running: bool,
    url: str | None,
    interface: str | None,
    then_verify: bool,
) -> None:
    """Record SCENARIO (or all five) as pcapng, with a comment describing it."""
    from stacklab.tools.scenarios import ALL, SCENARIOS

    if running and netns:
        raise UserError("--running and --netns exclude each other: a namespace has no stack yet")
    if url is not None and not running:
        raise UserError("--url needs --running (the scenarios serve their own files)")
    names = list(ALL) if scenario == "all" else [scenario]
    paths = output_paths(names, output)
    outputs = resolve_outputs(paths, force)
    netns = netns_mode(netns)
    with capture_targets(outputs) as made:
        results = run_captures(
            names, made, netns=netns, running=running, url=url, interface=interface
        )
        verdicts = (
            [
                _verify_one(str(path), SCENARIOS[result.name].expect, str(out))
                for result, path, out in zip(results, made, outputs, strict=True)
            ]
            if then_verify
            else []
        )
        deliver(outputs, made)
    console = Console(highlight=False, stderr=any(out.kind == "stdout" for out in outputs))
    table = Table(title="captured" + (" (private network namespace)" if netns else ""))
    for column in ("scenario", "file", "frames", "fetched", "seconds"):
        table.add_column(
            column,
            justify="right" if column in ("frames", "seconds") else "left",
            overflow="fold",
        )
    for result, out in zip(results, outputs, strict=True):
        fetched = f"{result.bytes:,} bytes" if result.bytes else "(handshake only)"
        table.add_row(result.name, str(out), str(result.frames), fetched, f"{result.seconds:.1f}")
    console.print(table)
    for line in verdicts:
        console.print(line, soft_wrap=True)
    if then_verify and any(not v.startswith("PASS") for v in verdicts):
        raise ChecksFailed("a capture failed its checks (see above)")


def _verify_one(path: str, expect: str, shown: str) -> str:
    from stacklab.analysis.checks import parse_expect
    from stacklab.analysis.sessions import VerifyOptions
    from stacklab.analysis.verify import analyze_capture

    analysis = analyze_capture(path, VerifyOptions(expect=parse_expect(expect)))
    passed = sum(1 for c in analysis.checks if c.status == "pass")
    failed = [c for c in analysis.checks if c.status == "fail"]
    if not failed:
        return f"PASS {shown}: {passed} checks passed (--expect {expect})"
    first = failed[0]
    return f"FAIL {shown}: {len(failed)} failed, first {first.id}: {first.detail}"
