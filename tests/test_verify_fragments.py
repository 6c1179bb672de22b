"""decode and the native verify engine on transfers whose 4000-byte chunks were IP-fragmented."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from stacklab.analysis.decode import decode_capture
from stacklab.analysis.synth import write_capture
from stacklab.analysis.tshark_engine import write_dissector
from stacklab.analysis.verify import analyze_capture
from stacklab.cli import cli
from stacklab.wire import Ports

import fragmented
from conftest import requires_tshark
from fragmented import CHUNK, CONTENT, VARIANTS

CHUNKS = -(-len(CONTENT) // CHUNK)


def _unfragmented(tmp_path: Path, version: int) -> Path:
    path = tmp_path / f"whole{version}.pcapng"
    write_capture(path, fragmented.transfer(version), fmt="pcapng")
    return path


@pytest.mark.parametrize(("version", "order"), VARIANTS)
def test_a_fragmented_transfer_decodes_and_verifies_like_the_whole_one(
    tmp_path: Path, version: int, order: str
) -> None:
    path = fragmented.write(tmp_path / f"frag{version}-{order}.pcapng", version, order)
    records = list(decode_capture(path))
    data = [r for r in records if r.proto == "rudp" and r.info and r.info["flag"] == "D"]
    full = [r for r in data if r.info and r.info["len"] == CHUNK]
    assert len(full) >= CHUNKS - 1  # every full chunk (and its resends) came in fragments
    per_datagram = 4 if order == "duplicated" else 3
    for record in full:
        assert len(record.fragments) == per_datagram and record.frame == record.fragments[-1]
        assert record.to_json()["ip_fragments"] == list(record.fragments)
        assert f"[{len(record.fragments)} IP fragments: frames" in record.summary()
    frags = [r for r in records if r.proto == "ipfrag"]
    assert frags and all(r.info and r.info["version"] == version for r in frags)
    assert not any(r.proto == "udp" for r in records)  # no partial datagram anywhere

    analysis = analyze_capture(path)
    whole = analyze_capture(_unfragmented(tmp_path, version))
    assert analysis.passed, [c.to_json() for c in analysis.checks if c.status == "fail"]
    assert not analysis.warnings
    assert [(c.id, c.session, c.status) for c in analysis.checks] == [
        (c.id, c.session, c.status) for c in whole.checks
    ]
    (session,) = analysis.rudp_sessions
    (reference,) = whole.rudp_sessions
    assert (session.chunks, session.bytes, session.sha256) == (
        CHUNKS,
        len(CONTENT),
        reference.sha256,
    )
    assert session.data_packets == reference.data_packets


@pytest.mark.parametrize("version", [4, 6])
def test_a_lost_fragment_is_a_lost_datagram(tmp_path: Path, version: int) -> None:
    one = fragmented.write_lossy(tmp_path / "one.pcapng", version, whole=False)
    gone = fragmented.write_lossy(tmp_path / "gone.pcapng", version, whole=True)
    intact = analyze_capture(fragmented.write(tmp_path / "intact.pcapng", version))
    lost_one, lost_all = analyze_capture(one), analyze_capture(gone)
    # Losing one fragment loses exactly the datagram, never part of it.
    assert lost_one.rudp_sessions[0].data_packets == intact.rudp_sessions[0].data_packets - 1
    assert [(c.id, c.session, c.status) for c in lost_one.checks] == [
        (c.id, c.session, c.status) for c in lost_all.checks
    ]
    assert lost_one.rudp_sessions[0].malformed == 0
    (warning,) = lost_one.warnings
    assert warning.startswith("1 IP datagram(s) missing a fragment, not reassembled (frames ")
    assert not lost_all.warnings
    # decode: the surviving fragments are shown, no datagram is made of them.
    records = list(decode_capture(one))
    orphans = [r for r in records if r.proto == "ipfrag"]
    assert len(orphans) == len([r for r in decode_capture(gone) if r.proto == "ipfrag"]) + 2


def test_fragments_cut_by_the_snapshot_length_are_reported(tmp_path: Path) -> None:
    path = fragmented.write(tmp_path / "cut.pcapng", 4, snaplen=1000)
    analysis = analyze_capture(path)
    (session,) = analysis.rudp_sessions
    records = list(decode_capture(path))
    data = [
        r.info
        for r in records
        if r.proto == "rudp" and r.info and r.info["flag"] == "D" and r.src.endswith(":2122")
    ]
    # Only the last, short chunk fits one frame: no fragmented chunk is guessed at.
    assert {info["len"] for info in data} == {len(CONTENT) % CHUNK}
    assert session.data_packets == len(data) and not analysis.passed
    (warning,) = analysis.warnings
    assert "IP fragment(s) cut by the snapshot length, not used (frames " in warning
    cut = [r for r in records if r.proto == "ipfrag" and r.info and "cut" in r.info]
    assert cut and all("cut by the snapshot length" in r.summary() for r in cut)


def test_cli_decode_and_verify_of_a_fragmented_capture(tmp_path: Path) -> None:
    path = fragmented.write(tmp_path / "cli.pcapng", 6, "shuffled")
    runner = CliRunner()
    decoded = runner.invoke(cli, ["decode", "--json", "--only", "rudp", str(path)])
    assert decoded.exit_code == 0, decoded.output
    lines = [json.loads(line) for line in decoded.stdout.splitlines()]
    assert any(line.get("ip_fragments") for line in lines)
    verified = runner.invoke(cli, ["verify", str(path)])
    assert verified.exit_code == 0, verified.output
    assert "[fd00::1]:41000 -> [fd00::3]:2122: complete" in verified.stdout


@requires_tshark
@pytest.mark.tshark
@pytest.mark.parametrize(("version", "order"), [(4, "shuffled"), (6, "reversed")])
def test_the_lua_dissector_sees_the_datagrams_decode_reassembles(
    tmp_path: Path, version: int, order: str
) -> None:
    path = fragmented.write(tmp_path / "lua.pcapng", version, order)
    script = Path(write_dissector(Ports(), str(tmp_path)))
    fields = ("frame.number", "slrudp.seq", "slrudp.ack", "slrudp.len", "slrudp.payload")
    cmd = ["tshark", "-n", "-r", str(path), "-X", f"lua_script:{script}", "-Y", "slrudp"]
    cmd += ["-T", "fields", "-E", "occurrence=f"]
    for name in fields:
        cmd += ["-e", name]
    env = dict(os.environ, WIRESHARK_CONFIG_DIR=str(tmp_path))
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout
    seen = {}
    for line in out.splitlines():
        number, seq, ack, length, payload = line.split("\t")
        seen[int(number)] = (int(seq), int(ack), int(length), len(bytes.fromhex(payload)))
    expected = {
        r.frame: (r.info["seq"], r.info["ack"], r.info["len"], r.info["payload_len"])
        for r in decode_capture(path)
        if r.proto == "rudp" and r.info
    }
    assert seen == expected
    assert any(value[2] == CHUNK for value in seen.values())
