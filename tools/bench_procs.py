"""Processes of the whole-process benchmark: servers started and awaited, clients timed.

A server is ready when its log shows the line it prints once it listens
(its stdout goes to a file, unbuffered, and is read back); a client is timed
from spawn to exit, which is what a person running the command waits for.
Every wait is bounded, and every process started here is stopped here.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

READY_TIMEOUT_S = 30.0
STOP_GRACE_S = 5.0


class BenchProcessError(RuntimeError):
    """A process of the benchmark did not start, or misbehaved; ``str()`` is one line."""


def stacklab_argv(*args: str) -> list[str]:
    """``stacklab ARGS`` with the interpreter running this benchmark."""
    return [sys.executable, "-m", "stacklab", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


@dataclass
class Server:
    """A started server process, the match of its ready line, and where its output goes."""

    proc: subprocess.Popen[bytes]
    match: re.Match[str]
    log: Path

    def address(self) -> tuple[str, int]:
        host, port = self.match.group("host"), self.match.group("port")
        return host, int(port)


def describe(argv: Sequence[str]) -> str:
    """``stacklab serve dns`` or ``app_server_rudp.py``: the command without namespace and
    interpreter, for messages."""
    words = list(argv)
    if words[:3] == ["ip", "netns", "exec"]:
        words = words[4:]
    if words and words[0] == sys.executable:
        words = words[1:]
    while words and words[0] in ("-m", "-u"):
        words = words[1:]
    return " ".join(Path(w).name if w.endswith(".py") else w for w in words[:3])


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text("utf-8", "replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text[-lines:])


@contextlib.contextmanager
def server(
    argv: Sequence[str],
    log: Path,
    ready: str,
    *,
    cwd: str | Path | None = None,
    timeout: float = READY_TIMEOUT_S,
) -> Iterator[Server]:
    """Start ``argv``, wait for the regex ``ready`` (groups ``host``, ``port``) in its output."""
    pattern = re.compile(ready)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            list(argv), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=cwd, env=_env(),
        )  # fmt: skip
    try:
        deadline = time.monotonic() + timeout
        pause = threading.Event()
        while True:
            try:
                match = pattern.search(log.read_text("utf-8", "replace"))
            except OSError:
                match = None
            if match is not None:
                break
            if proc.poll() is not None:
                raise BenchProcessError(
                    f"{describe(argv)} exited with {proc.returncode} before it listened: "
                    f"{_tail(log)}"
                )
            if time.monotonic() > deadline:
                raise BenchProcessError(f"{describe(argv)} not ready after {timeout:g} s")
            pause.wait(0.02)
        yield Server(proc, match, log)
    finally:
        stop(proc)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, a grace period, then SIGKILL."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass(frozen=True)
class Timed:
    """One client run: wall seconds from spawn to exit, exit code, its standard output."""

    seconds: float
    returncode: int | None
    stdout: str

    @property
    def timed_out(self) -> bool:
        return self.returncode is None


def timed(
    argv: Sequence[str], *, timeout: float, cwd: str | Path | None = None, quiet: bool = False
) -> Timed:
    """Run a client and time it from spawn to exit; ``returncode`` None when it ran too long.

    ``quiet`` sends its output to /dev/null (the original client prints a
    line per datagram; a pipe nobody reads while it runs would stall it).
    """
    start = time.perf_counter()
    proc = subprocess.Popen(
        list(argv),
        stdout=subprocess.DEVNULL if quiet else subprocess.PIPE,
        stderr=subprocess.DEVNULL if quiet else subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        cwd=cwd,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop(proc)
        proc.communicate()
        return Timed(time.perf_counter() - start, None, "")
    except BaseException:
        stop(proc)
        raise
    elapsed = time.perf_counter() - start
    return Timed(elapsed, proc.returncode, (out or b"").decode("utf-8", "replace"))
