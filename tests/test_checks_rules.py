"""Captures that break one rule on purpose must fail exactly the check for that rule."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pytest

from stacklab.analysis.sessions import CaptureAnalysis, VerifyOptions
from stacklab.analysis.synth import (
    Conversation,
    Packet,
    SenderFaults,
    UdpPacket,
    app_fetch,
    dhcp_exchange,
    dns_exchange,
    simulate_transfer,
    write_capture,
)
from stacklab.analysis.verify import analyze_capture
from stacklab.wire import encode_frame

CONTENT = bytes(range(256)) * 40  # 10240 bytes: 21 chunks of 500


def _verify(tmp_path: Path, packets: list[Packet], **options: object) -> CaptureAnalysis:
    path = tmp_path / "capture.pcapng"
    write_capture(path, packets, fmt="pcapng")
    return analyze_capture(path, VerifyOptions(**options))  # type: ignore[arg-type]


def _failing(analysis: CaptureAnalysis) -> set[str]:
    return {c.id for c in analysis.checks if c.status == "fail"}


def _fail_frames(analysis: CaptureAnalysis, check_id: str) -> list[int]:
    (check,) = [c for c in analysis.checks if c.id == check_id]
    return check.frames


def _loss_seed(faults: SenderFaults, loss: float = 0.15) -> list[UdpPacket]:
    return simulate_transfer(CONTENT, rng=random.Random(7), loss=loss, faults=faults)


def test_a_correct_lossy_transfer_passes(tmp_path: Path) -> None:
    analysis = _verify(tmp_path, _loss_seed(SenderFaults()))
    assert _failing(analysis) == set()
    (s,) = analysis.rudp_sessions
    assert s.retransmissions > 0 and s.go_backs > 0 and s.complete
    assert s.sha256 == hashlib.sha256(CONTENT).hexdigest()
    assert s.chunks == 21 and s.bytes == len(CONTENT)
    assert s.max_window == 5


def test_window_growing_by_two_fails_aimd_only(tmp_path: Path) -> None:
    analysis = _verify(tmp_path, _loss_seed(SenderFaults(growth=2), loss=0.0))
    assert _failing(analysis) == {"rudp.aimd"}
    detail = next(c.detail for c in analysis.checks if c.id == "rudp.aimd")
    assert "AIMD window was at most 2" in detail


def test_no_halving_after_a_loss_fails_aimd_only(tmp_path: Path) -> None:
    analysis = _verify(tmp_path, _loss_seed(SenderFaults(halve="none")))
    assert _failing(analysis) == {"rudp.aimd"}


def test_selective_resend_fails_gbn_only(tmp_path: Path) -> None:
    analysis = _verify(tmp_path, _loss_seed(SenderFaults(selective=True)))
    assert _failing(analysis) == {"rudp.gbn"}
    detail = next(c.detail for c in analysis.checks if c.id == "rudp.gbn")
    assert detail.startswith("selective repeat: chunk 2 resent alone after 1.000 s of silence")


def test_wrong_handshake_ack_fails_handshake_only(tmp_path: Path) -> None:
    conv = Conversation()
    conv.handshake(synack=102)
    conv.data(1, b"x" * 10)
    conv.ack(1)
    conv.fin(2)
    conv.ack(2)
    analysis = _verify(tmp_path, conv.packets)
    assert _failing(analysis) == {"rudp.handshake"}
    assert _fail_frames(analysis, "rudp.handshake") == [2]


def _window_ramp(conv: Conversation) -> None:
    """Chunks 1..7 with the window growing 1, 2, 3... as AIMD allows; leaves base 5, window 5."""
    conv.handshake()
    conv.data(1, b"a")
    conv.ack(1)  # window 2
    conv.data(2, b"b")
    conv.data(3, b"c")
    conv.ack(2)  # 3
    conv.ack(3)  # 4
    for chunk in (4, 5, 6, 7):
        conv.data(chunk, bytes([chunk]))
    conv.ack(4)  # 5: base 5, chunks up to 9 allowed


def test_chunk_beyond_the_window_fails_gbn_only(tmp_path: Path) -> None:
    conv = Conversation()
    _window_ramp(conv)
    conv.data(8, b"h")
    conv.data(9, b"i")
    bad = conv.data(10, b"j")  # base 5 + window 5 - 1 = 9
    for ack in (5, 6, 7, 8, 9, 10):
        conv.ack(ack)
    conv.fin(11)
    conv.ack(11)
    analysis = _verify(tmp_path, conv.packets)
    assert _failing(analysis) == {"rudp.gbn"}
    assert _fail_frames(analysis, "rudp.gbn") == [conv.packets.index(bad) + 1]


def test_max_window_option_moves_the_bound(tmp_path: Path) -> None:
    conv = Conversation()
    _window_ramp(conv)
    for ack in (5, 6, 7):
        conv.ack(ack)
    conv.fin(8)
    conv.ack(8)
    assert _failing(_verify(tmp_path, conv.packets)) == set()
    assert _failing(_verify(tmp_path, conv.packets, max_window=3)) == {"rudp.gbn"}


def test_fin_before_the_last_ack_fails_teardown_only(tmp_path: Path) -> None:
    conv = Conversation()
    conv.handshake()
    conv.data(1, b"first")
    conv.ack(1)
    conv.data(2, b"second")
    conv.data(3, b"third")
    conv.ack(2)
    fin = conv.fin(4)
    conv.ack(3)
    conv.ack(4)
    analysis = _verify(tmp_path, conv.packets)
    assert _failing(analysis) == {"rudp.teardown"}
    assert _fail_frames(analysis, "rudp.teardown") == [conv.packets.index(fin) + 1]
    assert analysis.rudp_sessions[0].complete


def test_go_back_without_timeout_or_dupack_fails_gbn(tmp_path: Path) -> None:
    conv = Conversation()
    _window_ramp(conv)  # chunks 5, 6, 7 outstanding
    conv.data(5, bytes([5]), dt=0.01)  # went back 10 ms later: no timeout, no duplicate ACK
    conv.data(6, bytes([6]))
    for ack in (5, 6, 7):
        conv.ack(ack)
    conv.fin(8)
    conv.ack(8)
    analysis = _verify(tmp_path, conv.packets)
    assert _failing(analysis) == {"rudp.gbn"}
    detail = next(c.detail for c in analysis.checks if c.id == "rudp.gbn")
    assert "after sending it, with no duplicate ACK: sooner than any timeout" in detail


def test_lone_resend_of_the_only_chunk_soon_is_a_probe(tmp_path: Path) -> None:
    conv = Conversation()
    conv.handshake()
    conv.data(1, b"a")
    conv.data(1, b"a", dt=0.01)  # the base alone, 10 ms later: a loss probe (rule S7)
    conv.ack(1)
    conv.fin(2)
    conv.ack(2)
    analysis = _verify(tmp_path, conv.packets)
    assert _failing(analysis) == set()
    assert analysis.rudp_sessions[0].probes == 1


def test_duplicate_ack_go_back_is_explained(tmp_path: Path) -> None:
    conv = Conversation()
    _window_ramp(conv)  # chunks 5, 6, 7 outstanding, window 5
    conv.ack(4)
    conv.ack(4)
    conv.ack(4)
    for chunk in (5, 6):  # fast retransmit: window halves to 2
        conv.data(chunk, bytes([chunk]))
    for ack in (5, 6, 7):
        conv.ack(ack)
    conv.fin(8)
    conv.ack(8)
    analysis = _verify(tmp_path, conv.packets)
    assert _failing(analysis) == set()
    (s,) = analysis.rudp_sessions
    assert s.go_back_kinds == {"timeout": 0, "dupack": 1}
    assert s.duplicate_acks == 3


def test_resending_different_bytes_fails_delivery(tmp_path: Path) -> None:
    conv = Conversation()
    conv.handshake()
    conv.data(1, b"original")
    conv.data(1, b"changed!", dt=1.0)
    conv.ack(1)
    conv.fin(2)
    conv.ack(2)
    assert _failing(_verify(tmp_path, conv.packets)) == {"rudp.delivery"}


def test_unfinished_transfer_fails_delivery_and_teardown(tmp_path: Path) -> None:
    packets = simulate_transfer(CONTENT, rng=random.Random(1))
    cut = [p for p in packets if p.payload[8:9] != b"F"][:-10]
    analysis = _verify(tmp_path, cut)
    assert _failing(analysis) == {"rudp.delivery", "rudp.teardown"}
    assert analysis.rudp_sessions[0].sha256 is None


@pytest.mark.parametrize("byte_ack", [False, True])
def test_both_command_ack_conventions_and_any_isn(tmp_path: Path, byte_ack: bool) -> None:
    packets = simulate_transfer(CONTENT, rng=random.Random(3), isn=4_000_000_000, byte_ack=byte_ack)
    analysis = _verify(tmp_path, packets)
    assert _failing(analysis) == set()
    (s,) = analysis.rudp_sessions
    assert s.isn == 4_000_000_000
    assert s.command_ack == ("bytes" if byte_ack else "seq")


def test_interleaved_sessions_are_kept_apart(tmp_path: Path) -> None:
    contents = [CONTENT, CONTENT[:3000], b"tiny"]
    streams = [
        simulate_transfer(
            content,
            rng=random.Random(i),
            client=("127.0.0.1", 40000 + i),
            start=1_700_000_000.0 + i * 0.0003,
            loss=0.1,
            isn=100 * (i + 1),
        )
        for i, content in enumerate(contents)
    ]
    packets = sorted((p for s in streams for p in s), key=lambda p: p.time)
    noise = [UdpPacket(p.time, "10.1.1.1", 999, "10.1.1.2", 53, b"noise") for p in packets[::7]]
    analysis = _verify(tmp_path, sorted(packets + noise, key=lambda p: p.time))
    assert _failing(analysis) == set()
    by_client = {s.client: s for s in analysis.rudp_sessions}
    assert set(by_client) == {"127.0.0.1:40000", "127.0.0.1:40001", "127.0.0.1:40002"}
    for i, content in enumerate(contents):
        s = by_client[f"127.0.0.1:{40000 + i}"]
        assert s.sha256 == hashlib.sha256(content).hexdigest()
        assert s.isn == 100 * (i + 1) and s.bytes == len(content)


def test_client_port_reuse_starts_a_new_session(tmp_path: Path) -> None:
    first = simulate_transfer(b"one", rng=random.Random(1))
    second = simulate_transfer(b"two", rng=random.Random(2), start=first[-1].time + 1)
    analysis = _verify(tmp_path, first + second)
    assert [s.sha256 for s in analysis.rudp_sessions] == [
        hashlib.sha256(b"one").hexdigest(),
        hashlib.sha256(b"two").hexdigest(),
    ]
    assert _failing(analysis) == set()


def test_wrong_frame_prefix_fails_app_framing_only(tmp_path: Path) -> None:
    body = b"x" * 65
    good = app_fetch(1_700_000_000.0, body, client_port=52000)
    bad = app_fetch(1_700_000_001.0, body, client_port=52001, response=b"0000000070" + body)
    analysis = _verify(tmp_path, good + bad)
    checks = [(c.id, c.session, c.status) for c in analysis.checks]
    assert checks == [
        ("app.framing", "127.0.0.1:52001->127.0.0.3:2121", "fail"),
        ("app.framing", "127.0.0.1:52000->127.0.0.3:2121", "pass"),
    ]
    detail = analysis.checks[0].detail
    assert "prefix says 70 bytes but only 65 arrived" in detail


def test_request_that_is_not_fetch_fails_app_framing(tmp_path: Path) -> None:
    packets = app_fetch(1_700_000_000.0, b"ERROR", request=encode_frame(b"GET /"))
    analysis = _verify(tmp_path, packets)
    assert _failing(analysis) == {"app.framing"}


def test_frames_split_across_segments_pass(tmp_path: Path) -> None:
    packets = app_fetch(1_700_000_000.0, bytes(5000), segment=7)
    analysis = _verify(tmp_path, packets)
    assert _failing(analysis) == set()
    assert analysis.tcp_sessions[0].response_length == 5000


def test_bad_dhcp_and_dns_replies(tmp_path: Path) -> None:
    t = 1_700_000_000.0
    packets: list[Packet] = [
        *dhcp_exchange(t, 61000),
        *dhcp_exchange(t + 1, 61001, offer=b'{"type": "NAK"}'),
        *dns_exchange(t + 2, 61002),
        *dns_exchange(t + 3, 61003, answer=b'{"status": "SUCCESS", "ip": null}'),
        *dns_exchange(t + 4, 61004, answer=b'{"status": "NOT_FOUND", "ip": null}'),
        dns_exchange(t + 5, 61005)[0],  # never answered
    ]
    analysis = _verify(tmp_path, packets)
    status = {(c.id, c.session.split("->")[0]): c.status for c in analysis.checks}
    assert status == {
        ("dhcp.offer", "127.0.0.1:61000"): "pass",
        ("dhcp.offer", "127.0.0.1:61001"): "fail",
        ("dns.answer", "127.0.0.1:61002"): "pass",
        ("dns.answer", "127.0.0.1:61003"): "fail",
        ("dns.answer", "127.0.0.1:61004"): "pass",
        ("dns.answer", "127.0.0.1:61005"): "fail",
    }


def test_capture_with_nothing_to_verify_fails(tmp_path: Path) -> None:
    noise = [UdpPacket(1.0 + i, "10.0.0.1", 1000, "10.0.0.2", 2000, b"hello") for i in range(3)]
    analysis = _verify(tmp_path, noise)
    assert _failing(analysis) == {"capture.traffic"}


def test_loss_probe_is_not_a_go_back(tmp_path: Path) -> None:
    conv = Conversation()
    _window_ramp(conv)  # chunks 5, 6, 7 outstanding (base 5, window 5)
    conv.data(5, bytes([5]), dt=0.05)  # the base alone, sooner than any timeout
    conv.data(8, b"h")  # ... and the sender carries on
    for ack in (5, 6, 7, 8):
        conv.ack(ack)
    conv.fin(9)
    conv.ack(9)
    analysis = _verify(tmp_path, conv.packets)
    assert _failing(analysis) == set()
    (s,) = analysis.rudp_sessions
    assert (s.probes, s.go_backs, s.retransmissions) == (1, 0, 1)


def test_lone_resend_after_a_timeout_is_selective(tmp_path: Path) -> None:
    conv = Conversation()
    _window_ramp(conv)
    conv.data(5, bytes([5]), dt=1.0)  # a timeout...
    conv.data(8, b"h")  # ... but 6 and 7 are not resent
    for ack in (5, 6, 7, 8):
        conv.ack(ack)
    conv.fin(9)
    conv.ack(9)
    analysis = _verify(tmp_path, conv.packets)
    # gbn: 6 and 7 not resent; aimd too: after the timeout the window is 2, 8 makes 4 in flight
    assert _failing(analysis) == {"rudp.gbn", "rudp.aimd"}
    detail = next(c.detail for c in analysis.checks if c.id == "rudp.gbn")
    assert detail.startswith("selective repeat: chunk 5 resent alone after 1.0")
    assert "chunks 6..7 were unacknowledged" in detail


@pytest.mark.parametrize(
    ("dup_acks", "extra_chunks", "failing"),
    [(2, 0, set()), (2, 1, {"rudp.gbn"}), (2, 2, {"rudp.gbn"})],
)
def test_no_chunk_beyond_the_window_even_on_duplicate_acks(
    tmp_path: Path, dup_acks: int, extra_chunks: int, failing: set[str]
) -> None:
    conv = Conversation()
    _window_ramp(conv)  # base 5, window 5: chunks up to 9 allowed
    conv.data(8, b"h")
    conv.data(9, b"i")
    for _ in range(dup_acks):
        conv.ack(4)  # duplicates: still no new chunk beyond base + window - 1
    for chunk in range(10, 10 + extra_chunks):
        conv.data(chunk, bytes([chunk]))
    for ack in range(5, 10 + extra_chunks):
        conv.ack(ack)
    conv.fin(10 + extra_chunks)
    conv.ack(10 + extra_chunks)
    assert _failing(_verify(tmp_path, conv.packets)) == failing
