"""Packet comments added to a pcapng copy: tshark sees them, and nothing else changes."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest

from stacklab.analysis.pcapio import CaptureError, CaptureReader
from stacklab.analysis.pcapng_comments import copy_with_comments

from conftest import REPO, requires_tshark, seed_capture

LOSS = REPO / "captures" / "rudp-loss.pcapng"


def _tshark(*args: str) -> str:
    result = subprocess.run(
        ["tshark", *args], capture_output=True, text=True, check=True, timeout=60
    )
    return result.stdout


def _comments(path: Path) -> list[str]:
    """frame.comment of every frame, several comments of one frame joined by '|'."""
    out = _tshark("-r", str(path), "-T", "fields", "-E", "aggregator=|", "-e", "frame.comment")
    return out.splitlines()


def _without_comments(value: Any) -> Any:
    """tshark's JSON of a capture minus what the comments add (the pkt_comment layer)."""
    if isinstance(value, dict):
        return {k: _without_comments(v) for k, v in value.items() if k != "pkt_comment"}
    if isinstance(value, list):
        return [_without_comments(v) for v in value]
    return value


def _fields(path: Path) -> Any:
    return _without_comments(json.loads(_tshark("-r", str(path), "-T", "json", "-x")))


@requires_tshark
@pytest.mark.tshark
def test_tshark_reads_each_comment_and_every_other_field_is_unchanged(tmp_path: Path) -> None:
    out = tmp_path / "annotated.pcapng"
    frames = copy_with_comments(LOSS, out, {1: ["dropped by the network"], 3: ["first", "second"]})
    comments = _comments(out)
    assert frames == len(comments) > 3
    assert comments[0] == "dropped by the network"
    assert comments[1] == ""
    assert comments[2] == "first|second"
    assert all(c == "" for c in comments[3:])
    assert _fields(out) == _fields(LOSS)
    original_info = _tshark("-r", str(LOSS), "-T", "fields", "-e", "frame.time_epoch", "-e", "data")
    copy_info = _tshark("-r", str(out), "-T", "fields", "-e", "frame.time_epoch", "-e", "data")
    assert copy_info == original_info


@requires_tshark
@pytest.mark.tshark
def test_existing_comments_and_the_section_comment_are_kept(tmp_path: Path) -> None:
    once = tmp_path / "once.pcapng"
    twice = tmp_path / "twice.pcapng"
    copy_with_comments(LOSS, once, {2: ["one"]})
    copy_with_comments(once, twice, {2: ["two"], 5: ["three"]})
    comments = _comments(twice)
    assert comments[1] == "one|two"
    assert comments[4] == "three"
    capinfos = shutil.which("capinfos")
    assert capinfos is not None
    before = subprocess.run(
        [capinfos, "-k", str(LOSS)], check=True, capture_output=True, text=True
    ).stdout
    after = subprocess.run(
        [capinfos, "-k", str(twice)], check=True, capture_output=True, text=True
    ).stdout
    assert "stacklab capture" in before
    # The first line names the file; the section's comments follow, unchanged.
    assert before.split("\n", 1)[1] == after.split("\n", 1)[1]


def test_only_the_commented_blocks_change_size(tmp_path: Path) -> None:
    out = tmp_path / "c.pcapng"
    copy_with_comments(LOSS, out, {4: ["x" * 5]})
    # The block had no options: opt_comment (4 + 5 bytes padded to 8) and opt_endofopt (4).
    assert out.stat().st_size == LOSS.stat().st_size + 16
    original = [(f.number, f.time, f.data) for f in CaptureReader(LOSS)]
    copied = [(f.number, f.time, f.data) for f in CaptureReader(out)]
    assert copied == original


def test_a_seed_capture_from_another_system_keeps_its_packets(tmp_path: Path) -> None:
    seed = seed_capture("part4_rudp_loss_flow")
    out = tmp_path / "seed.pcapng"
    copy_with_comments(seed, out, {5: ["SYN"]})
    original = [(f.number, f.time, f.linktype, f.data) for f in CaptureReader(seed)]
    copied = list(CaptureReader(out))
    assert [(f.number, f.time, f.linktype, f.data) for f in copied] == original
    assert copied[4].comment == "SYN"


def test_big_endian_sections_are_annotated_in_their_own_byte_order(tmp_path: Path) -> None:
    big = tmp_path / "big.pcapng"
    shb_body = struct.pack(">IHHq", 0x1A2B3C4D, 1, 0, -1)
    shb = struct.pack(">II", 0x0A0D0D0A, 12 + len(shb_body)) + shb_body
    shb += struct.pack(">I", 12 + len(shb_body))
    idb_body = struct.pack(">HHI", 1, 0, 65535)
    idb = (
        struct.pack(">II", 1, 12 + len(idb_body)) + idb_body + struct.pack(">I", 12 + len(idb_body))
    )
    payload = bytes(range(42))
    epb_body = struct.pack(">IIIII", 0, 1, 2, len(payload), len(payload)) + payload + b"\0\0"
    epb = (
        struct.pack(">II", 6, 12 + len(epb_body)) + epb_body + struct.pack(">I", 12 + len(epb_body))
    )
    big.write_bytes(shb + idb + epb)
    out = tmp_path / "out.pcapng"
    assert copy_with_comments(big, out, {1: ["big-endian"]}) == 1
    (frame,) = list(CaptureReader(out))
    assert frame.comment == "big-endian"
    assert frame.data == payload


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p.write_bytes(b"\xd4\xc3\xb2\xa1" + bytes(20)), "not a pcapng"),
        (lambda p: p.write_bytes(LOSS.read_bytes()[:-7]), "middle of a block"),
    ],
)
def test_bad_input_is_a_capture_error_and_writes_nothing(
    tmp_path: Path, make: Any, message: str
) -> None:
    src = tmp_path / "in.pcapng"
    make(src)
    out = tmp_path / "out.pcapng"
    with pytest.raises(CaptureError, match=message):
        copy_with_comments(src, out, {1: ["x"]})
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["in.pcapng"]


def test_a_comment_for_a_frame_that_does_not_exist_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out.pcapng"
    with pytest.raises(CaptureError, match=r"frame\(s\) 100000"):
        copy_with_comments(LOSS, out, {100000: ["x"]})
    assert not out.exists()


def test_a_missing_source_is_a_capture_error(tmp_path: Path) -> None:
    with pytest.raises(CaptureError, match="cannot read"):
        copy_with_comments(tmp_path / "nope.pcapng", tmp_path / "out.pcapng", {})
