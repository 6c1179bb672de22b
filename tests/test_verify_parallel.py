"""Sharing the RUDP sessions between processes must not change a single fact."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest

from stacklab.analysis.sessions import VerifyOptions
from stacklab.analysis.synth import CaptureWriter, benchmark_stream
from stacklab.analysis.verify import analyze_capture

pytestmark = pytest.mark.skipif(
    "fork" not in multiprocessing.get_all_start_methods(), reason="needs fork"
)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
def test_shared_analysis_equals_single_process(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"many.{fmt}"
    with CaptureWriter(path, fmt=fmt) as writer:  # type: ignore[arg-type]
        writer.write_all(benchmark_stream(20_000, seed=3, concurrent=12, file_size=20_000))
    single = analyze_capture(path, VerifyOptions(jobs=1))
    shared = analyze_capture(path, VerifyOptions(jobs=2))
    assert len(single.rudp_sessions) > 20
    assert json.dumps(shared.to_json()) == json.dumps(single.to_json())
    assert single.passed


def test_truncated_capture_shared(tmp_path: Path) -> None:
    path = tmp_path / "cut.pcap"
    with CaptureWriter(path) as writer:
        writer.write_all(benchmark_stream(3_000, seed=4, concurrent=6, file_size=8_000))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2 + 3])
    single = analyze_capture(path, VerifyOptions(jobs=1))
    shared = analyze_capture(path, VerifyOptions(jobs=3))
    assert single.truncated and json.dumps(shared.to_json()) == json.dumps(single.to_json())


def test_corrupt_capture_shared_raises_once(tmp_path: Path) -> None:
    from stacklab.analysis.pcapio import CaptureError

    path = tmp_path / "bad.pcap"
    with CaptureWriter(path) as writer:
        writer.write_all(benchmark_stream(2_000, seed=5, concurrent=4, file_size=8_000))
    data = bytearray(path.read_bytes())
    data[24 + 8 : 24 + 12] = (0x7FFFFFFF).to_bytes(4, "little")  # first record: absurd length
    path.write_bytes(bytes(data))
    with pytest.raises(CaptureError, match="corrupt pcap record"):
        analyze_capture(path, VerifyOptions(jobs=2))
