"""The compiled hot path (mypyc, see setup.py) must be current and agree with its source.

``stacklab verify`` runs ``analysis/scan.py`` and ``analysis/rudp.py``
compiled when the machine could build them.  Compiled code follows Python's
semantics closely but not everywhere (integer division to float, for one),
so the same captures are verified by both and the results must be equal.
"""

from __future__ import annotations

import importlib
import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from stacklab.analysis.synth import CaptureWriter, benchmark_stream
from stacklab.analysis.verify import analyze_capture

from conftest import REPO, SEED_DIR

HOT_MODULES = (
    "stacklab.analysis.scan",
    "stacklab.analysis.rudp",
    "stacklab.analysis.rudp_window",
    "stacklab.analysis.rudp_recovery",
    "stacklab.analysis.rudp_goback",
)


def _compiled(name: str) -> bool:
    module = importlib.import_module(name)
    return not str(module.__file__).endswith(".py")


def _built_files(name: str) -> list[Path]:
    return sorted((REPO / "analysis").glob(f"{name.rpartition('.')[2]}.*.so"))


@pytest.mark.parametrize("name", HOT_MODULES)
def test_a_compiled_module_is_not_older_than_its_source(name: str) -> None:
    if not _compiled(name):
        pytest.skip(f"{name} runs as Python (not compiled on this machine)")
    source = REPO / "analysis" / f"{name.rpartition('.')[2]}.py"
    for built in _built_files(name):
        assert built.stat().st_mtime >= source.stat().st_mtime, (
            f"{built.name} is older than {source.name}: run `make native` to rebuild it"
        )


# Runs in a child process: imports the hot-path modules from their sources,
# verifies each capture and prints the results as JSON.
_PURE_RUNNER = """
import importlib.util, json, sys
from pathlib import Path

import stacklab.analysis

HOT = {
    "stacklab.analysis.scan",
    "stacklab.analysis.rudp",
    "stacklab.analysis.rudp_window",
    "stacklab.analysis.rudp_recovery",
    "stacklab.analysis.rudp_goback",
}
SOURCES = Path(stacklab.analysis.__path__[0])


class SourceOnly:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name in HOT:
            return importlib.util.spec_from_file_location(
                name, SOURCES / (name.rpartition(".")[2] + ".py")
            )
        return None


sys.meta_path.insert(0, SourceOnly)
from stacklab.analysis import rudp, rudp_goback, rudp_recovery, rudp_window, scan
from stacklab.analysis.verify import analyze_capture

assert all(m.__file__.endswith(".py") for m in (scan, rudp, rudp_window, rudp_recovery, rudp_goback))
print(json.dumps([analyze_capture(path).to_json() for path in sys.argv[1:]]))
"""


def _nanosecond_copy(source: Path, target: Path) -> None:
    """The same little-endian microsecond pcap with nanosecond timestamps."""
    data = bytearray(source.read_bytes())
    assert data[:4] == b"\xd4\xc3\xb2\xa1"
    data[:4] = b"\x4d\x3c\xb2\xa1"
    pos = 24
    while pos + 16 <= len(data):
        frac, incl = struct.unpack_from("<I I", data, pos + 4)
        struct.pack_into("<I", data, pos + 4, frac * 1000 + 999)  # sub-microsecond digits
        pos += 16 + incl
    target.write_bytes(bytes(data))


def test_compiled_and_python_hot_paths_give_identical_results(tmp_path: Path) -> None:
    if not all(_compiled(name) for name in HOT_MODULES):
        pytest.skip("the hot path is not compiled on this machine: nothing to compare")
    mixed = tmp_path / "mixed.pcap"
    with CaptureWriter(mixed) as writer:
        writer.write_all(benchmark_stream(20_000, seed=7, loss=0.08))
    mixed_ng = tmp_path / "mixed.pcapng"
    with CaptureWriter(mixed_ng, fmt="pcapng") as writer:
        writer.write_all(benchmark_stream(5_000, seed=8, loss=0.08))
    nano = tmp_path / "nano.pcap"
    _nanosecond_copy(mixed, nano)
    captures = [mixed, mixed_ng, nano, *sorted((REPO / "captures").glob("*.pcapng"))]
    captures += sorted(SEED_DIR.glob("*.pcapng"))
    child = subprocess.run(
        [sys.executable, "-c", _PURE_RUNNER, *map(str, captures)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert child.returncode == 0, child.stderr
    python_results = json.loads(child.stdout)
    compiled_results = json.loads(json.dumps([analyze_capture(p).to_json() for p in captures]))
    assert len(python_results) == len(captures)
    sessions = sum(len(r["rudp_sessions"]) for r in compiled_results)
    assert sessions > 100  # the comparison covers many sessions, with loss
    for path, ours, theirs in zip(captures, compiled_results, python_results, strict=True):
        assert ours == theirs, f"compiled and Python results differ on {path.name}"
