"""The native engine and ``--engine tshark`` must agree on every session fact and check."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from click.testing import CliRunner

from stacklab.analysis import tshark_engine
from stacklab.analysis.sessions import CaptureAnalysis, VerifyOptions
from stacklab.analysis.synth import (
    LINK_ETHERNET,
    LINK_NULL,
    LINK_RAW,
    Packet,
    app_fetch,
    dhcp_exchange,
    dns_exchange,
    merge,
    simulate_transfer,
    write_capture,
)
from stacklab.analysis.verify import analyze_capture
from stacklab.cli import cli

from conftest import REPO, SEED_NAMES, requires_tshark, seed_capture

pytestmark = [requires_tshark, pytest.mark.tshark, pytest.mark.timeout(120)]


def _facts(analysis: CaptureAnalysis) -> dict[str, object]:
    doc = analysis.to_json()
    return {
        k: doc[k]
        for k in ("packets", "truncated", "checks", "rudp_sessions", "tcp_sessions", "dhcp", "dns")
    }


def _assert_same(path: Path, options: VerifyOptions | None = None) -> CaptureAnalysis:
    native = analyze_capture(path, options)
    other = tshark_engine.analyze_capture(path, options)
    assert other.engine == "tshark"
    assert _facts(native) == _facts(other)
    return native


@pytest.mark.parametrize("name", SEED_NAMES)
def test_engines_agree_on_the_seed_captures(name: str) -> None:
    _assert_same(seed_capture(name))


def _mixed_traffic() -> list[Packet]:
    t = 1_700_000_000.0
    streams: list[list[Packet]] = [
        [*dhcp_exchange(t), *dns_exchange(t + 0.001)],
        app_fetch(t + 0.002, bytes(range(256)) * 20, segment=700),
    ]
    for i in range(4):
        streams.append(
            list(
                simulate_transfer(
                    random.Random(i).randbytes(4000 + 997 * i),
                    rng=random.Random(100 + i),
                    client=("127.0.0.1", 41000 + i),
                    start=t + 0.003 + i * 0.0007,
                    loss=0.2,
                    isn=1000 * i + 7,
                    byte_ack=i % 2 == 1,
                )
            )
        )
    return list(merge(streams))


@pytest.mark.parametrize(
    ("fmt", "link"),
    [("pcap", LINK_ETHERNET), ("pcapng", LINK_NULL), ("pcap", LINK_RAW), ("pcapng", LINK_ETHERNET)],
)
def test_engines_agree_on_synthetic_captures(tmp_path: Path, fmt: str, link: int) -> None:
    path = tmp_path / f"mixed.{fmt}"
    write_capture(path, _mixed_traffic(), fmt=fmt, link=link)  # type: ignore[arg-type]
    analysis = _assert_same(path)
    assert len(analysis.rudp_sessions) == 4 and analysis.passed


def test_engines_agree_on_stacklabs_own_captures() -> None:
    own = sorted((REPO / "captures").glob("*.pcap*"))
    if not own:
        pytest.skip("no reference captures generated yet (make captures)")
    for path in own:
        _assert_same(path)


def test_engines_agree_on_a_truncated_capture(tmp_path: Path) -> None:
    path = tmp_path / "cut.pcapng"
    write_capture(path, _mixed_traffic(), fmt="pcapng")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3 + 5])
    analysis = _assert_same(path)
    assert analysis.truncated


def test_cli_engine_option() -> None:
    result = CliRunner().invoke(
        cli, ["verify", "--engine", "tshark", str(seed_capture("part4_rudp_loss_flow"))]
    )
    assert result.exit_code == 0, result.output
    assert "3 go-back(s)" in result.stdout
