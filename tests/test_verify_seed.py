"""``stacklab verify`` on the captures of the original programs: the expected facts, exactly."""

from __future__ import annotations

import hashlib

import pytest

from stacklab.analysis.checks import parse_expect
from stacklab.analysis.sessions import CaptureAnalysis, VerifyOptions
from stacklab.analysis.verify import analyze_capture

from conftest import seed_capture

CONTENT = b"Hello! This is a test file for the Computer Networks FTP project."
COMMAND = "FETCH http://127.0.0.1:8080/test_file.txt"


def _status(analysis: CaptureAnalysis) -> dict[str, str]:
    return {c.id: c.status for c in analysis.checks}


def test_part4_loss_flow() -> None:
    analysis = analyze_capture(seed_capture("part4_rudp_loss_flow"))
    (s,) = analysis.rudp_sessions
    assert (s.client, s.server, s.isn, s.command) == (
        "127.0.0.1:58314",
        "127.0.0.3:2122",
        100,
        COMMAND,
    )
    assert (s.chunks, s.bytes, s.data_packets, s.retransmissions, s.go_backs) == (1, 65, 4, 3, 3)
    assert s.go_back_kinds == {"timeout": 3, "dupack": 0}
    assert len(s.timeouts) == 3 and all(0.99 < t < 1.02 for t in s.timeouts)
    assert s.complete and s.max_flight == 1
    assert s.sha256 == hashlib.sha256(CONTENT).hexdigest()
    assert s.frames == {
        "syn": 5,
        "synack": 6,
        "command": 7,
        "command_ack": 8,
        "last_ack": 26,
        "fin": 27,
        "fin_ack": 28,
    }
    assert analysis.passed
    assert all(c.status == "pass" for c in analysis.checks if c.id != "rudp.integrity")
    assert {c.id for c in analysis.checks} == {
        "rudp.handshake",
        "rudp.delivery",
        "rudp.integrity",
        "rudp.gbn",
        "rudp.aimd",
        "rudp.teardown",
        "dhcp.offer",
        "dns.answer",
    }


@pytest.mark.parametrize("name", ["part3_rudp_clean_flow", "part5_rudp_advanced_flow"])
def test_clean_single_chunk_flows(name: str) -> None:
    analysis = analyze_capture(seed_capture(name))
    (s,) = analysis.rudp_sessions
    assert (s.chunks, s.bytes, s.data_packets, s.retransmissions, s.go_backs) == (1, 65, 1, 0, 0)
    assert s.complete and s.command_ack == "seq"
    assert s.sha256 == hashlib.sha256(CONTENT).hexdigest()
    assert analysis.passed


def test_part5_shows_the_receiver_latency() -> None:
    (s,) = analyze_capture(seed_capture("part5_rudp_advanced_flow")).rudp_sessions
    assert 0.27 < s.max_ack_delay < 0.30
    (clean,) = analyze_capture(seed_capture("part3_rudp_clean_flow")).rudp_sessions
    assert clean.max_ack_delay < 0.01


def test_part2_is_a_handshake_only() -> None:
    path = seed_capture("part2_flow")
    full = analyze_capture(path)
    assert not full.passed
    assert _status(full)["rudp.handshake"] == "pass"
    assert _status(full)["rudp.delivery"] == "fail"
    (s,) = full.rudp_sessions
    assert s.command_ack == "bytes" and s.handshake and not s.complete and s.data_packets == 0
    narrowed = analyze_capture(path, VerifyOptions(expect=parse_expect("handshake")))
    assert narrowed.passed
    assert _status(narrowed)["rudp.handshake"] == "pass"
    assert _status(narrowed)["rudp.delivery"] == "skip"


def test_part1_dhcp_dns_and_framed_fetch() -> None:
    analysis = analyze_capture(seed_capture("part1_flow"))
    assert analysis.rudp_sessions == []
    assert _status(analysis) == {"dhcp.offer": "pass", "dns.answer": "pass", "app.framing": "pass"}
    (app,) = analysis.tcp_sessions
    assert (app.client, app.server) == ("127.0.0.1:52304", "127.0.0.3:2121")
    assert (app.request, app.request_length, app.response_length) == (COMMAND, 41, 65)
    assert app.response_sha256 == hashlib.sha256(CONTENT).hexdigest()
    assert analysis.dhcp[0].reply == {"type": "OFFER", "assigned_ip": "127.0.0.2"}
    assert analysis.dns[0].reply == {"status": "SUCCESS", "ip": "127.0.0.3"}


def test_expecting_rudp_in_part1_fails() -> None:
    analysis = analyze_capture(
        seed_capture("part1_flow"), VerifyOptions(expect=parse_expect("rudp"))
    )
    assert not analysis.passed
    assert {c.id for c in analysis.checks if c.status == "fail"} == {
        "rudp.handshake",
        "rudp.delivery",
        "rudp.integrity",
        "rudp.gbn",
        "rudp.aimd",
        "rudp.teardown",
    }


def test_every_seed_reads_as_null_link(any_seed: object) -> None:
    analysis = analyze_capture(any_seed)  # type: ignore[arg-type]
    assert analysis.link_type == "null" and not analysis.truncated and analysis.packets > 0
