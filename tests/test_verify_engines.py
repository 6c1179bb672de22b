"""The native engine and ``--engine tshark`` must agree on every session fact and check.

Over the whole capture corpus (the reference captures, the original
programs' captures) and over synthetic ones: mixed traffic on every link
type, a truncated file, and transfers whose 4000-byte chunks were
IP-fragmented (Wireshark reassembles before the generated dissector sees a
datagram; the native engine reassembles in its general path).
"""

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

import fragmented
from conftest import REPO, SEED_DIR, requires_tshark, seed_capture

pytestmark = [requires_tshark, pytest.mark.tshark, pytest.mark.timeout(120)]


def _facts(analysis: CaptureAnalysis) -> dict[str, object]:
    doc = analysis.to_json()
    return {
        k: doc[k]
        for k in ("packets", "truncated", "checks", "rudp_sessions", "tcp_sessions", "dhcp", "dns")
    }


def _verdicts(analysis: CaptureAnalysis) -> list[tuple[str, str, str]]:
    return [(c.id, c.session, c.status) for c in analysis.checks]


def _assert_same(path: Path, options: VerifyOptions | None = None) -> CaptureAnalysis:
    native = analyze_capture(path, options)
    other = tshark_engine.analyze_capture(path, options)
    assert other.engine == "tshark"
    assert _verdicts(native) == _verdicts(other)  # the checks first: the clearest difference
    assert _facts(native) == _facts(other)
    return native


def _corpus() -> list[Path]:
    """Every capture on disk: the reference captures and the original programs' captures."""
    return sorted((REPO / "captures").glob("*.pcapng")) + sorted(SEED_DIR.glob("*.pcapng"))


@pytest.mark.parametrize("path", _corpus(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_engines_agree_on_the_capture_corpus(path: Path) -> None:
    _assert_same(path)


def test_the_corpus_is_there() -> None:
    own = sorted((REPO / "captures").glob("*.pcapng"))
    assert len(own) >= 6, "the reference captures are missing (make captures)"
    seed_capture("part1_flow")  # skips with its reason when the original captures are absent
    assert len(_corpus()) >= len(own) + 5


@pytest.mark.parametrize(("version", "order"), fragmented.VARIANTS)
def test_engines_agree_on_fragmented_transfers(tmp_path: Path, version: int, order: str) -> None:
    path = fragmented.write(tmp_path / f"frag{version}-{order}.pcapng", version, order)
    analysis = _assert_same(path)
    assert analysis.passed and len(analysis.rudp_sessions) == 1


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("whole", [False, True], ids=["one-fragment", "all-fragments"])
def test_engines_agree_when_a_fragment_is_lost(tmp_path: Path, version: int, whole: bool) -> None:
    _assert_same(fragmented.write_lossy(tmp_path / "lost.pcapng", version, whole))


def test_engines_agree_on_fragments_cut_by_the_snapshot_length(tmp_path: Path) -> None:
    analysis = _assert_same(fragmented.write(tmp_path / "cut.pcapng", 4, snaplen=1000))
    assert not analysis.passed


@pytest.mark.parametrize("name", sorted(fragmented.ADVERSARIAL))
def test_engines_agree_on_unusual_fragment_sequences(tmp_path: Path, name: str) -> None:
    _assert_same(fragmented.write_adversarial(tmp_path / f"{name}.pcapng", name))


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
