"""bench/verify_bench.py: the capture it asks for, and how it judges the targets.

The speeds themselves are measured by running the script, never asserted in a test.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from conftest import REPO


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "verify_bench", REPO / "bench" / "verify_bench.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["verify_bench"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("sessions", [40, 120])
def test_the_capture_holds_about_the_transfers_asked_for(
    bench: ModuleType, tmp_path: Path, sessions: int
) -> None:
    packets, transfers = bench.generate(str(tmp_path / "b.pcap"), 12_000, sessions, 1, 500)
    assert packets >= 12_000
    # The transfers running at the end finish, past the packets asked for:
    # what the size controls is how many transfers a number of packets holds.
    expected = sessions * packets / 12_000
    assert 0.8 * expected <= transfers <= 1.2 * expected


def _tool(bench: ModuleType, name: str, wall: float, mb: float = 10.0) -> object:
    return bench.Tool(name, [], [bench.Run(wall, wall, mb, 0)])


def test_each_target_is_judged_on_its_own_ratio(bench: ModuleType) -> None:
    tools = [
        _tool(bench, "json", 0.5, mb=90.0),
        _tool(bench, "quiet", 0.4),
        _tool(bench, "pure", 0.9),
        _tool(bench, "tshark", 12.0),
        _tool(bench, "capinfos", 0.2),
        _tool(bench, "capinfos -c", 0.1),
    ]
    verdicts = {name: (value, met) for name, value, met in bench._targets(tools)}
    assert list(verdicts.values()) == [
        ("24.0x", True),  # 12 / 0.5 >= 20
        ("90 MB", False),  # over 80 MB
        ("2.50x", True),  # 0.5 / 0.2 <= 4
        ("5.00x", False),  # 0.5 / 0.1 > 4
        ("1.80x", True),  # 0.9 / 0.5 <= 2
    ]
    table = bench._targets_table(tools, markdown=True)
    assert table.count("| PASS |") == 3 and table.count("| MISS |") == 2
