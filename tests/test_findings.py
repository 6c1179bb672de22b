"""The verifier's findings: one model in Python, as pcapng comments and in the Lua dissector.

What is checked: the findings agree with the verifier's own counts
(retransmissions, go-backs, loss probes, duplicate ACKs); every note kind
the verifier writes has a meaning; ``stacklab annotate`` copies every packet
unchanged and adds one readable comment per finding; and tshark with the
generated dissector filters on ``slrudp.analysis.*`` with exactly the
verifier's counts, on the seed captures, the reference captures and
captures of stacklab's own engine over a lossy network.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from test_verify_sweep import run_transfer

import stacklab
from stacklab.analysis.findings import KINDS, PacketFinding, parse_comment
from stacklab.analysis.pcapio import CaptureReader
from stacklab.analysis.sessions import CaptureAnalysis
from stacklab.analysis.synth import write_capture
from stacklab.cli import cli
from stacklab.layers.lua import generate_dissector

from conftest import REPO, SEED_DIR, requires_tshark

LOSS = REPO / "captures" / "rudp-loss.pcapng"
HANDSHAKE = REPO / "captures" / "rudp-handshake.pcapng"
REFERENCE = sorted((REPO / "captures").glob("*.pcapng"))
SEEDS = sorted(SEED_DIR.glob("*.pcapng"))
ENGINE_SEEDS = (0, 4, 9, 16, 17, 38, 75, 79)
"""Transfers of the engine sweep with timeouts, fast retransmits, probes and duplicate ACKs."""


def _facts(analysis: CaptureAnalysis) -> dict[str, int]:
    """The verifier's counts, as the findings must reproduce them (per frame)."""
    failed = {f.frame for f in analysis.findings if f.kind == "failed"}
    return {
        "retransmission": sum(s.retransmissions for s in analysis.sessions),
        "go_back": sum(s.go_backs for s in analysis.sessions),
        "loss_probe": sum(s.probes for s in analysis.sessions),
        "duplicate_ack": sum(s.duplicate_acks for s in analysis.sessions),
        "duplicate": sum(s.network_duplicates for s in analysis.sessions),
        "fast_retransmission": sum(s.go_back_kinds["dupack"] for s in analysis.sessions),
        "failed": len(failed),
    }


def _frames_with(findings: list[PacketFinding]) -> dict[str, int]:
    """Frames per analysis field, as the dissector would set them from the findings."""
    frames: dict[str, set[int]] = {}
    for finding in findings:
        meaning = KINDS[finding.kind]
        for name in (*meaning.flags, meaning.value_field):
            if name:
                frames.setdefault(name, set()).add(finding.frame)
    return {name: len(found) for name, found in frames.items()}


# -- the model ------------------------------------------------------------------------


def test_findings_of_a_lossy_capture_match_the_verifiers_counts() -> None:
    analysis = stacklab.verify(LOSS)
    findings = analysis.findings
    assert [f.frame for f in findings] == sorted(f.frame for f in findings)
    facts = _facts(analysis)
    counted = _frames_with(findings)
    for name in ("retransmission", "go_back", "loss_probe", "duplicate_ack"):
        assert facts[name] > 0
        assert counted.get(name, 0) == facts[name], name
    first = findings[0]
    assert (first.kind, first.name, first.severity, first.group) == (
        "retransmission",
        "retransmission",
        "note",
        "sequence",
    )
    assert first.session == analysis.sessions[0].key
    assert first.comment == f"stacklab: retransmission: {first.text}"
    assert parse_comment(first.comment) == ("retransmission", first.text)
    assert first.to_json()["severity"] == "note"


def test_severities_and_groups_are_wiresharks() -> None:
    expected = {
        "retransmission": ("note", "sequence"),
        "go_back.dupack": ("note", "sequence"),
        "duplicate_ack": ("note", "sequence"),
        "window_exceeded": ("warn", "sequence"),
        "malformed": ("error", "malformed"),
        "bad_crc32c": ("error", "checksum"),
        "failed": ("error", "protocol"),
    }
    for kind, (severity, group) in expected.items():
        assert (KINDS[kind].severity, KINDS[kind].group) == (severity, group), kind
    assert "fast_retransmission" in KINDS["go_back.dupack"].flags


def test_every_note_kind_the_verifier_writes_has_a_meaning() -> None:
    source = "".join(
        (REPO / "analysis" / name).read_text(encoding="utf-8")
        for name in ("rudp.py", "rudp_goback.py")
    )
    written = set(re.findall(r'self\.note\(\s*[\w.]+,\s*"([a-z0-9_.]+)"', source))
    written |= {f"go_back.{k}" for k in ("timeout", "dupack", "unexplained")}  # f-strings
    written |= {"malformed", "bad_crc32c", "failed"}  # chosen at run time
    assert written >= {"retransmission", "duplicate_ack", "loss_probe", "go_back.selective"}
    assert written <= set(KINDS)


def test_a_failed_check_is_an_error_finding_on_the_frames_it_names() -> None:
    analysis = stacklab.verify(HANDSHAKE)
    failed = [c for c in analysis.checks if c.status == "fail"]
    assert failed
    findings = analysis.findings
    assert {(f.frame, f.check) for f in findings} == {
        (frame, c.id) for c in failed for frame in c.frames
    }
    assert all(f.severity == "error" and f.kind == "failed" for f in findings)
    assert analysis.rule_breaks == []  # judged at the end of the session, not at a packet


def test_comments_that_are_not_stacklabs_are_not_findings() -> None:
    assert parse_comment("dropped by the network") is None
    assert parse_comment("stacklab: failed: rudp.gbn: x: y") == ("failed", "rudp.gbn: x: y")


# -- stacklab annotate ----------------------------------------------------------------


def _run(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args))


def test_annotate_writes_one_comment_per_finding_and_the_same_packets(tmp_path: Path) -> None:
    out = tmp_path / "loss.pcapng"
    result = _run("annotate", str(LOSS), "-o", str(out))
    assert result.exit_code == 0, result.output
    assert "findings on" in result.output
    findings = stacklab.verify(LOSS).findings
    original = list(CaptureReader(LOSS))
    copied = list(CaptureReader(out))
    assert [(f.number, f.time, f.data) for f in copied] == [
        (f.number, f.time, f.data) for f in original
    ]
    first_comment: dict[int, str] = {}
    for finding in findings:
        first_comment.setdefault(finding.frame, finding.comment)
    assert {f.number: f.comment for f in copied if f.comment} == first_comment
    assert len(first_comment) < len(findings)  # some frames carry several (tshark test)


def test_annotate_follows_the_output_policy(tmp_path: Path) -> None:
    out = tmp_path / "a.pcapng"
    assert _run("annotate", str(LOSS), "-o", str(out)).exit_code == 0
    again = _run("annotate", str(LOSS), "-o", str(out))
    assert again.exit_code == 2
    assert "already exists (--force replaces it)" in again.output
    assert _run("annotate", str(LOSS), "-o", str(out), "--force").exit_code == 0
    onto_input = _run("annotate", str(out), "-o", str(out), "--force")
    assert onto_input.exit_code == 2
    assert "is an input of this run" in onto_input.output


def test_annotate_refuses_a_pcap_before_any_work(tmp_path: Path) -> None:
    pcap = tmp_path / "x.pcap"
    write_capture(pcap, [], fmt="pcap")
    out = tmp_path / "x.pcapng"
    result = _run("annotate", str(pcap), "-o", str(out))
    assert result.exit_code == 2
    assert "not a pcapng file" in result.output
    assert not out.exists()
    missing = _run("annotate", str(tmp_path / "nope.pcapng"), "-o", str(out))
    assert missing.exit_code == 2
    assert "no such file" in missing.output


def test_annotate_to_standard_output_is_the_same_file(tmp_path: Path) -> None:
    out = tmp_path / "a.pcapng"
    assert _run("annotate", str(LOSS), "-o", str(out)).exit_code == 0
    piped = subprocess.run(
        [sys.executable, "-m", "stacklab", "annotate", str(LOSS), "-o", "-"],
        capture_output=True,
        check=True,
        timeout=60,
    )
    assert piped.stdout == out.read_bytes()
    assert b"wrote standard output" in piped.stderr


def test_verify_annotate_writes_the_same_file_and_keeps_its_verdict(tmp_path: Path) -> None:
    plain = tmp_path / "plain.pcapng"
    assert _run("annotate", str(HANDSHAKE), "-o", str(plain)).exit_code == 0
    out = tmp_path / "v.pcapng"
    result = _run("verify", str(HANDSHAKE), "--annotate", str(out))
    assert result.exit_code == 1  # the capture fails its checks; the file is written anyway
    assert out.read_bytes() == plain.read_bytes()
    two = _run("verify", str(HANDSHAKE), str(LOSS), "--annotate", str(tmp_path / "t.pcapng"))
    assert two.exit_code == 2
    assert "--annotate takes one capture" in two.output
    exists = _run("verify", str(LOSS), "--annotate", str(out))
    assert exists.exit_code == 2
    assert "already exists" in exists.output


# -- tshark: the comments, the fields, the dissector ----------------------------------


def _tshark(*args: str) -> str:
    result = subprocess.run(
        ["tshark", *args], capture_output=True, text=True, check=True, timeout=120
    )
    return result.stdout


def _without_comments(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_comments(v) for k, v in value.items() if k != "pkt_comment"}
    if isinstance(value, list):
        return [_without_comments(v) for v in value]
    return value


@requires_tshark
@pytest.mark.tshark
@pytest.mark.parametrize(
    "capture",
    [LOSS, REPO / "captures" / "rudp-negotiated.pcapng", SEED_DIR / "part4_rudp_loss_flow.pcapng"],
    ids=lambda p: p.name,
)
def test_tshark_reads_the_comments_and_every_other_field_is_unchanged(
    tmp_path: Path, capture: Path
) -> None:
    out = tmp_path / "annotated.pcapng"
    assert _run("annotate", str(capture), "-o", str(out)).exit_code == 0
    comments = _tshark("-r", str(out), "-T", "fields", "-E", "aggregator=|", "-e", "frame.comment")
    expected: dict[int, list[str]] = {}
    for finding in stacklab.verify(capture).findings:
        expected.setdefault(finding.frame, []).append(finding.comment)
    lines = comments.splitlines()
    assert {n + 1: line.split("|") for n, line in enumerate(lines) if line} == expected
    original = json.loads(_tshark("-r", str(capture), "-T", "json", "-x"))
    annotated = json.loads(_tshark("-r", str(out), "-T", "json", "-x"))
    assert _without_comments(annotated) == _without_comments(original)


_FIELDS = ("retransmission", "go_back", "loss_probe", "duplicate_ack", "duplicate")
_FIELDS += ("fast_retransmission", "failed")


def _dissector(tmp_path: Path) -> Path:
    lua = tmp_path / "stacklab.lua"
    lua.write_text(generate_dissector(), encoding="utf-8")
    return lua


def _analysis_counts(lua: Path, capture: Path) -> dict[str, int]:
    """Frames with each slrudp.analysis field, from one tshark run over the annotated file."""
    args = ["-X", f"lua_script:{lua}", "-r", str(capture), "-Y", "slrudp.analysis"]
    args += ["-T", "fields", "-e", "frame.number"]
    for name in _FIELDS:
        args += ["-e", f"slrudp.analysis.{name}"]
    counts = dict.fromkeys(_FIELDS, 0)
    for line in _tshark(*args).splitlines():
        values = line.split("\t")[1:]
        for name, value in zip(_FIELDS, values, strict=True):
            counts[name] += bool(value)
    return counts


def _assert_tshark_counts_equal_the_facts(tmp_path: Path, captures: list[Path]) -> int:
    lua = _dissector(tmp_path)
    seen = 0
    for capture in captures:
        out = tmp_path / f"annotated-{capture.name}"
        result = _run("annotate", str(capture), "-o", str(out))
        assert result.exit_code == 0, result.output
        facts = _facts(stacklab.verify(capture))
        assert _analysis_counts(lua, out) == facts, capture.name
        seen += sum(facts.values())
    return seen


@requires_tshark
@pytest.mark.tshark
def test_dissector_filter_counts_equal_verify_on_seed_and_reference_captures(
    tmp_path: Path,
) -> None:
    assert len(SEEDS) >= 5
    seen = _assert_tshark_counts_equal_the_facts(tmp_path, [*SEEDS, *REFERENCE])
    assert seen > 100


@requires_tshark
@pytest.mark.tshark
def test_dissector_filter_counts_equal_verify_on_the_engines_lossy_captures(
    tmp_path: Path,
) -> None:
    captures = []
    for seed in ENGINE_SEEDS:
        packets, _client, _server, _options = run_transfer(seed)
        path = tmp_path / f"engine-{seed}.pcapng"
        write_capture(path, packets, fmt="pcapng")
        captures.append(path)
    kinds = Counter(f.kind for path in captures for f in stacklab.verify(path).findings)
    assert {"go_back.timeout", "go_back.dupack", "loss_probe", "duplicate_ack"} <= set(kinds)
    assert _assert_tshark_counts_equal_the_facts(tmp_path, captures) > 500


@requires_tshark
@pytest.mark.tshark
def test_display_filters_and_expert_info_show_the_findings(tmp_path: Path) -> None:
    lua = _dissector(tmp_path)
    out = tmp_path / "loss.pcapng"
    assert _run("annotate", str(LOSS), "-o", str(out)).exit_code == 0
    analysis = stacklab.verify(LOSS)
    session = analysis.sessions[0]
    base = ["-X", f"lua_script:{lua}", "-r", str(out)]
    retransmissions = _tshark(*base, "-Y", "slrudp.analysis.retransmission").splitlines()
    assert len(retransmissions) == session.retransmissions
    assert all("[Retransmission" in line for line in retransmissions)
    timeouts = _tshark(
        *base, "-Y", 'slrudp.analysis.go_back == "timeout"', "-T", "fields", "-e", "frame.number"
    ).split()
    assert [int(n) for n in timeouts] == [
        f.frame for f in analysis.findings if f.kind == "go_back.timeout"
    ]
    experts = _tshark(
        *base,
        "-Y",
        "slrudp.analysis",
        "-T",
        "fields",
        "-E",
        "aggregator=|",
        "-e",
        "_ws.expert.group",
        "-e",
        "_ws.expert.severity",
        "-e",
        "_ws.expert.message",
    )
    rows = [line.split("\t") for line in experts.splitlines()]
    messages = [m for row in rows for m in row[2].split("|")]
    assert "Retransmission: chunk 1 resent" in messages
    assert any(m.startswith("Go-back by timeout: go-back to chunk 1") for m in messages)
    # A retransmission is a note in the sequence group, as tcp.analysis.retransmission.
    assert all(row[0] for row in rows)
    # Without the comments the dissector shows no analysis at all.
    assert _tshark("-X", f"lua_script:{lua}", "-r", str(LOSS), "-Y", "slrudp.analysis") == ""


# -- the rarer kinds: look-alike senders and a bad trailer -----------------------------


def _lookalikes(tmp_path: Path) -> dict[str, Path]:
    """Captures of senders that break a rule, and of a network duplicate, written to disk."""
    import random

    from test_rulebook_lookalikes import CONTENT, _negotiated, _ramp

    from stacklab.analysis.synth import Conversation, SenderFaults, simulate_transfer

    made: dict[str, list[Any]] = {
        "selective": simulate_transfer(
            CONTENT, rng=random.Random(2), loss=0.15, faults=SenderFaults(selective=True)
        ),
        "no halving": simulate_transfer(
            CONTENT, rng=random.Random(1), loss=0.15, faults=SenderFaults(halve="none")
        ),
        "early fast retransmit": simulate_transfer(
            CONTENT, rng=random.Random(1), loss=0.15, faults=SenderFaults(fast_retransmit=1)
        ),
        "malformed": simulate_transfer(
            CONTENT, rng=random.Random(0), faults=SenderFaults(malformed_chunk=3)
        ),
    }
    bad_crc = Conversation()
    _negotiated(bad_crc, bad_chunk=2)
    made["bad crc"] = bad_crc.packets
    duplicate = Conversation()
    _ramp(duplicate)
    duplicate.data(7, b"\x07", dt=0.0001)
    made["duplicate"] = duplicate.packets
    paths = {}
    for name, packets in made.items():
        path = tmp_path / f"{name.replace(' ', '-')}.pcapng"
        write_capture(path, packets, fmt="pcapng")
        paths[name] = path
    return paths


_ALL_FIELDS = (*_FIELDS, "window_exceeded", "malformed", "bad_crc32c")


@requires_tshark
@pytest.mark.tshark
def test_rarer_findings_have_their_severity_and_their_filter(tmp_path: Path) -> None:
    lua = _dissector(tmp_path)
    expected_kinds = {
        "selective": ("go_back.selective", "warn"),
        "no halving": ("window_exceeded", "warn"),
        "early fast retransmit": ("go_back.unexplained", "warn"),
        "malformed": ("malformed", "error"),
        "bad crc": ("bad_crc32c", "error"),
        "duplicate": ("duplicate", "note"),
    }
    for name, capture in _lookalikes(tmp_path).items():
        analysis = stacklab.verify(capture)
        findings = analysis.findings
        kind, severity = expected_kinds[name]
        assert kind in {f.kind for f in findings}, name
        assert {f.severity for f in findings if f.kind == kind} == {severity}, name
        facts = _facts(analysis)
        counted = _frames_with(findings)
        for fact in ("retransmission", "go_back", "loss_probe", "duplicate_ack", "duplicate"):
            assert counted.get(fact, 0) == facts[fact], (name, fact)
        out = tmp_path / f"annotated-{capture.name}"
        assert _run("annotate", str(capture), "-o", str(out)).exit_code == 0
        args = ["-X", f"lua_script:{lua}", "-r", str(out), "-Y", "slrudp.analysis"]
        args += ["-T", "fields"]
        for field in _ALL_FIELDS:
            args += ["-e", f"slrudp.analysis.{field}"]
        shown = dict.fromkeys(_ALL_FIELDS, 0)
        for line in _tshark(*args).splitlines():
            for field, value in zip(_ALL_FIELDS, line.split("\t"), strict=True):
                shown[field] += bool(value)
        assert shown == {field: counted.get(field, 0) for field in _ALL_FIELDS}, name
