"""Shared fixtures: where the seed captures live, and tool availability."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

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
