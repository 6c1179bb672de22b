"""Shared fixtures: where the seed captures live, and tool availability."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from stacklab.tools.netns import unavailable_reason

from fragile_servers import FragileAppServer, FragileRudpServer

REPO = Path(__file__).resolve().parent.parent
SEED_DIR = REPO.parent / "shared" / "captures" / "seed"
SEED_NAMES = (
    "part1_flow",
    "part2_flow",
    "part3_rudp_clean_flow",
    "part4_rudp_loss_flow",
    "part5_rudp_advanced_flow",
)


def seed_capture(name: str) -> Path:
    """Path of a capture of the original programs (read in place, never copied)."""
    path = SEED_DIR / f"{name}.pcapng"
    if not path.exists():
        pytest.skip(f"seed capture {path} is not present")
    return path


@pytest.fixture(params=SEED_NAMES)
def any_seed(request: pytest.FixtureRequest) -> Path:
    return seed_capture(request.param)


requires_tshark = pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")


def _netns_capture_problem() -> str | None:
    """Why a capture in a private network namespace cannot run here, or None."""
    problem = unavailable_reason()  # Linux, root, ip: what --netns itself needs
    if problem is None and (shutil.which("dumpcap") is None or shutil.which("editcap") is None):
        problem = "dumpcap and editcap are not installed"
    return problem


requires_netns_capture = pytest.mark.skipif(
    _netns_capture_problem() is not None, reason=_netns_capture_problem() or ""
)


def wait_for(condition: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Wait until ``condition()`` holds, re-checking every few milliseconds.

    Tests wait on state (a counter reached, a session freed), never for a fixed
    time; ``timeout`` only bounds a wait that would otherwise hang.
    """
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s")
        pause.wait(0.002)


@pytest.fixture
def fragile_app() -> Iterator[FragileAppServer]:
    server = FragileAppServer()
    yield server
    server.close()


@pytest.fixture
def fragile_rudp() -> Iterator[FragileRudpServer]:
    server = FragileRudpServer()
    yield server
    server.close()
