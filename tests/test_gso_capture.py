"""A real loopback capture of UDP GSO batches reads like the same transfer sent without GSO.

In a private network namespace, ``gso_capture_run.py`` records a stacklab
server sending to a stacklab client on ``lo`` twice: GSO on (dumpcap sees each
batch as one oversized datagram) and off.  decode, both verify engines and
the Lua dissector must each see every datagram the server sent, one segment
at a time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from stacklab.analysis import tshark_engine
from stacklab.analysis.decode import decode_capture
from stacklab.analysis.sessions import CaptureAnalysis, VerifyOptions
from stacklab.analysis.verify import analyze_capture
from stacklab.layers.lua import generate_dissector
from stacklab.tools.netns import private_netns, run_in_netns
from stacklab.wire import Ports

from conftest import requires_netns_capture, requires_tshark

pytestmark = [
    pytest.mark.netns,
    pytest.mark.slow,
    pytest.mark.timeout(180),
    requires_netns_capture,
]

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    out = tmp_path_factory.mktemp("gso")
    with private_netns() as name:
        done = run_in_netns(
            name, [sys.executable, str(HERE / "gso_capture_run.py"), str(out)], timeout=150
        )
    assert done.returncode == 0, done.stdout
    result: dict[str, dict[str, Any]] = json.loads(done.stdout)
    for run in result.values():
        assert run["intact"], run
    if not result["gso"]["gso"]:
        pytest.skip("this kernel has no UDP GSO (UDP_SEGMENT)")
    assert result["gso"]["batches"] > 0, result  # else the capture proves nothing
    assert result["plain"]["batches"] == 0
    return result


def _options(run: dict[str, Any]) -> VerifyOptions:
    return VerifyOptions(ports=Ports(rudp=run["port"]))


def _server_records(run: dict[str, Any]) -> list[Any]:
    server = f"127.0.0.1:{run['port']}"
    return [
        r
        for r in decode_capture(run["path"], Ports(rudp=run["port"]), only={"rudp"})
        if r.src == server
    ]


@pytest.mark.parametrize("name", ["gso", "plain"])
def test_decode_shows_every_datagram_the_server_sent(
    runs: dict[str, dict[str, Any]], name: str
) -> None:
    run = runs[name]
    records = _server_records(run)
    # + 1: the SYN-ACK, answered from the SYN alone, before any session (and its sender)
    assert len(records) == run["datagrams"] + 1
    batches = Counter(r.frame for r in records if r.info and "gso" in r.info)
    assert len(batches) == run["batches"]
    for frame, count in batches.items():
        of = {r.info["gso"]["of"] for r in records if r.frame == frame and r.info}
        assert of == {count} and count >= 2
    assert not any(r.info and "gso_error" in r.info for r in records)


def _verdicts(analysis: CaptureAnalysis) -> list[tuple[str, str]]:
    return [(c.id, c.status) for c in analysis.checks]


def test_verify_judges_gso_and_plain_alike(runs: dict[str, dict[str, Any]]) -> None:
    gso = analyze_capture(runs["gso"]["path"], _options(runs["gso"]))
    plain = analyze_capture(runs["plain"]["path"], _options(runs["plain"]))
    assert gso.passed and plain.passed, [c.detail for c in gso.checks if c.status == "fail"]
    assert _verdicts(gso) == _verdicts(plain)
    (a,), (b,) = gso.rudp_sessions, plain.rudp_sessions
    for fact in ("chunks", "bytes", "sha256", "complete", "handshake", "options", "malformed"):
        assert getattr(a, fact) == getattr(b, fact), fact
    assert a.malformed == 0 and a.complete
    assert a.gso_batches == runs["gso"]["batches"] and b.gso_batches == 0


@requires_tshark
def test_the_tshark_engine_agrees_with_the_native_one(runs: dict[str, dict[str, Any]]) -> None:
    run = runs["gso"]
    native = analyze_capture(run["path"], _options(run))
    other = tshark_engine.analyze_capture(run["path"], _options(run))
    assert [(c.id, c.session, c.status) for c in native.checks] == [
        (c.id, c.session, c.status) for c in other.checks
    ]
    assert native.to_json()["rudp_sessions"] == other.to_json()["rudp_sessions"]


@requires_tshark
def test_the_lua_dissector_shows_one_item_per_segment(
    runs: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    run = runs["gso"]
    port = run["port"]
    script = tmp_path / "stacklab.lua"
    script.write_text(generate_dissector(Ports(rudp=port)))
    cmd = ["tshark", "-n", "-r", run["path"], "-X", f"lua_script:{script}"]
    cmd += ["-Y", f"udp.srcport == {port}", "-T", "fields", "-E", "occurrence=a"]
    cmd += ["-e", "frame.number", "-e", "slrudp.seq", "-e", "slrudp.gso.count"]
    env = dict(os.environ, WIRESHARK_CONFIG_DIR=str(tmp_path))
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout
    items = 0
    batches = 0
    for line in out.splitlines():
        _, seqs, counts = line.split("\t")
        items += len(seqs.split(","))
        if counts:
            batches += 1
            assert {int(c) for c in counts.split(",")} == {len(seqs.split(","))}
    assert items == run["datagrams"] + 1  # + the SYN-ACK (see above)
    assert batches == run["batches"]
