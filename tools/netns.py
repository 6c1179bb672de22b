"""A private Linux network namespace for one capture run.

Inside a fresh namespace only ``lo`` exists, so the stack can bind its
default addresses and ports (127.0.0.1:6767, 127.0.0.3:2122, ...) without
clashing with anything on the machine, and a capture on ``lo`` sees nothing
but the scenario.  Two runs at once get two namespaces: the name carries the
process id and random bytes.

Python 3.11 has no ``os.setns``, so the work is done by a child process
started with ``ip netns exec NAME ...``; the namespace is deleted in a
``finally`` whatever happens to the child.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

log = logging.getLogger(__name__)

PREFIX = "stacklab"


class NetnsError(Exception):
    """A namespace could not be created or used; ``str()`` is one line for the user."""


def unavailable_reason() -> str | None:
    """Why ``--netns`` cannot work here, or ``None`` when it can."""
    if not sys.platform.startswith("linux"):
        return "private network namespaces need Linux"
    if os.geteuid() != 0:
        return "private network namespaces need root (run with sudo, or drop --netns)"
    if shutil.which("ip") is None:
        return "the 'ip' command (iproute2) is not installed"
    return None


def unique_name(prefix: str = PREFIX) -> str:
    """``stacklab-<pid>-<6 hex>``: unique across concurrent runs (not a behaviour: no seed)."""
    return f"{prefix}-{os.getpid()}-{os.urandom(3).hex()}"


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        message = (result.stderr or result.stdout).strip().splitlines()
        raise NetnsError(f"ip {' '.join(args)} failed: {message[0] if message else 'no output'}")


@contextmanager
def private_netns(prefix: str = PREFIX) -> Iterator[str]:
    """Create a namespace with ``lo`` up, yield its name, delete it afterwards."""
    reason = unavailable_reason()
    if reason is not None:
        raise NetnsError(reason)
    name = unique_name(prefix)
    _ip("netns", "add", name)
    try:
        _ip("-n", name, "link", "set", "lo", "up")
        log.info("network namespace %s is up", name)
        yield name
    finally:
        try:
            _ip("netns", "delete", name)
        except NetnsError as exc:
            log.warning("could not delete network namespace %s: %s", name, exc)
        else:
            log.info("network namespace %s deleted", name)


def exec_argv(name: str, argv: Sequence[str]) -> list[str]:
    """The command line that runs ``argv`` inside namespace ``name``."""
    return ["ip", "netns", "exec", name, *argv]


CLEANUP_GRACE_S = 10.0
"""How long a child told to stop (SIGTERM) may take to clean up before it is killed."""


def run_in_netns(
    name: str, argv: Sequence[str], *, timeout: float | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` inside the namespace; stdout is captured, stderr passes through.

    When the wait ends early (Ctrl-C or SIGTERM reaching only this process,
    or the timeout), the child gets SIGTERM and some seconds to clean up (stop
    dumpcap, delete its raw file) before it is killed: a SIGKILL at once, as
    ``subprocess.run`` would send, would leave both behind.
    """
    proc = subprocess.Popen(exec_argv(name, argv), stdout=subprocess.PIPE, text=True)
    try:
        stdout, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _stop_child(proc)
        raise NetnsError(
            f"the run inside network namespace {name} did not finish within {timeout:g} s"
        ) from None
    except BaseException:
        _stop_child(proc)
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, None)


def _stop_child(proc: subprocess.Popen[str]) -> None:
    """SIGTERM, a grace period for its cleanup, then SIGKILL."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=CLEANUP_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
        except KeyboardInterrupt:  # a second Ctrl-C: no more patience
            proc.kill()
            proc.wait()
            raise
