"""The chart points: what the time-sequence and window graphs are drawn from."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from stacklab.analysis.series import (
    SenderWindow,
    align_sender_window,
    collect_series,
    read_sender_window,
)
from stacklab.analysis.synth import Conversation, simulate_transfer, write_capture
from stacklab.analysis.verify import analyze_capture

from conftest import seed_capture


def test_part4_three_timeouts_about_a_second_apart() -> None:
    series = collect_series(seed_capture("part4_rudp_loss_flow"))
    assert series.total_sessions == 1
    (s,) = series.sessions
    assert s.key == "127.0.0.1:58314->127.0.0.3:2122"
    assert [c for _t, c, _r in s.data] == [1, 1, 1, 1]
    assert [r for _t, _c, r in s.data] == [False, True, True, True]
    assert [k for _t, _c, k in s.go_backs] == ["timeout"] * 3
    gaps = [b[0] - a[0] for a, b in zip(s.data, s.data[1:], strict=False)]
    assert all(0.95 < g < 1.1 for g in gaps), gaps
    assert s.acks[-1][1] == 1  # the single chunk, acknowledged after the third resend
    assert s.fin is not None and s.fin > s.data[-1][0]
    assert not s.clipped


def test_clean_seed_has_no_retransmission() -> None:
    (s,) = collect_series(seed_capture("part3_rudp_clean_flow")).sessions
    assert s.data and s.retransmissions == 0 and s.go_backs == []


def _lossy(tmp_path: Path, seed: int = 3, loss: float = 0.08) -> Path:
    content = random.Random(seed).randbytes(40_000)
    packets = simulate_transfer(
        content, rng=random.Random(seed), loss=loss, rto=0.2, delay=0.02, max_window=8
    )
    path = tmp_path / "lossy.pcapng"
    write_capture(path, packets, fmt="pcapng")
    return path


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_series_agree_with_the_verifier(tmp_path: Path, seed: int) -> None:
    path = _lossy(tmp_path, seed)
    (facts,) = analyze_capture(path).rudp_sessions
    (s,) = collect_series(path, max_window=8).sessions
    assert s.key == facts.key and s.first_frame == facts.first_frame
    assert len(s.data) == facts.data_packets
    assert s.retransmissions == facts.retransmissions > 0
    assert len(s.go_backs) == facts.go_backs > 0
    # Chunks in flight: up to the maximum window, back to 1 at every go-back
    # (Go-Back-N resends from the base), then growing again: the sawtooth.
    flights = dict(s.flight)
    assert max(flights.values()) == 8
    assert [flights[t] for t, _c, _k in s.go_backs] == [1] * len(s.go_backs)
    # The verifier's AIMD bound never exceeds the maximum window.
    assert min(w for _t, w in s.window) >= 1 and max(w for _t, w in s.window) <= 8
    times = [t for t, _c, _r in s.data]
    assert times == sorted(times) and times[0] >= 0.0


def test_points_are_capped(tmp_path: Path) -> None:
    (s,) = collect_series(_lossy(tmp_path), max_points=10).sessions
    assert s.clipped and s.points > 10
    assert len(s.data) + len(s.acks) == 10


def test_sessions_beyond_the_cap_are_counted_not_kept(tmp_path: Path) -> None:
    packets = []
    for i in range(4):
        conv = Conversation(client=("127.0.0.1", 50000 + i), start=1_700_000_000.0 + i)
        conv.handshake()
        conv.data(1, b"x")
        conv.ack(1)
        conv.fin(2)
        conv.ack(2)
        packets += conv.packets
    path = tmp_path / "four.pcap"
    write_capture(path, packets)
    out = collect_series(path, max_sessions=2)
    assert [s.key.split("->")[0] for s in out.sessions] == ["127.0.0.1:50000", "127.0.0.1:50001"]
    assert out.total_sessions == 4
    assert len(collect_series(path).sessions) == 4


def test_sender_window_read_tolerantly_and_aligned(tmp_path: Path) -> None:
    log = tmp_path / "events.jsonl"
    lines = [
        json.dumps({"time": 50.0, "name": "rudp:packet_sent", "data": {"flag": "D", "seq": 1}}),
        "not json",
        "[1, 2]",
        json.dumps({"time": 50.1, "name": "recovery:window_changed", "data": {"old": 1, "new": 2}}),
        json.dumps({"time": "late", "name": "recovery:window_changed", "data": {"new": 9}}),
        json.dumps({"time": 50.3, "name": "recovery:window_changed", "data": {"old": 2, "new": 1}}),
    ]
    log.write_text("\n".join(lines) + "\n")
    sender = read_sender_window(log)
    assert sender.first_data == 50.0
    assert sender.points == [(50.1, 1), (50.1, 2), (50.3, 1)]
    (s,) = collect_series(seed_capture("part4_rudp_loss_flow")).sessions
    aligned = align_sender_window(sender, s)
    first_data = s.data[0][0]
    assert aligned[0][0] == pytest.approx(first_data + 0.1)
    assert aligned[-1][0] == pytest.approx(first_data + 0.3)
    # Times on the capture's own clock are used as they are.
    own = SenderWindow(points=[(s.start + 0.5, 3)])
    assert align_sender_window(own, s) == [(0.5, 3)]
    assert align_sender_window(SenderWindow(), s) == []


def test_missing_events_log_raises_oserror(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        read_sender_window(tmp_path / "missing.jsonl")


def test_events_log_picks_its_session_by_data_count(tmp_path: Path) -> None:
    packets = []
    for i, chunks in enumerate((1, 3)):
        conv = Conversation(client=("127.0.0.1", 52000 + i), start=1_700_000_000.0 + i)
        conv.handshake()
        for n in range(1, chunks + 1):
            conv.data(n, b"x")
            conv.ack(n)
        conv.fin(chunks + 1)
        conv.ack(chunks + 1)
        packets += conv.packets
    path = tmp_path / "two.pcap"
    write_capture(path, packets)
    sessions = collect_series(path).sessions
    sent = SenderWindow(data_sent=3)
    assert sent.pick(sessions) is sessions[1]
    assert SenderWindow(data_sent=7).pick(sessions) is sessions[0]
    assert SenderWindow().pick([]) is None
    log = tmp_path / "e.jsonl"
    log.write_text(
        "\n".join(
            json.dumps({"time": 5.0 + i, "name": "rudp:packet_sent", "data": {"flag": f}})
            for i, f in enumerate("DDAD")
        )
    )
    assert read_sender_window(log).data_sent == 3
