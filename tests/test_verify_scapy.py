"""Captures crafted with stacklab's Scapy layers verify like the synthetic ones."""

from __future__ import annotations

from pathlib import Path

import pytest

from stacklab.analysis.sessions import CaptureAnalysis
from stacklab.analysis.verify import analyze_capture

scapy_all = pytest.importorskip("scapy.all")

COMMAND = b"FETCH http://127.0.0.1:8080/test_file.txt"


def _ladder(synack: int = 101, resend_gap: float = 1.0) -> list[object]:
    """part4's exchange, built from the Scapy RUDP layer: one chunk sent twice."""
    from stacklab.layers import RUDP

    steps: list[tuple[bool, object, bytes, float]] = [
        (True, RUDP(seq=100, ack=0, flag=b"S"), b"", 0.0),
        (False, RUDP(seq=0, ack=synack, flag=b"A"), b"", 0.001),
        (True, RUDP(seq=101, ack=0, flag=b"D"), COMMAND, 0.001),
        (False, RUDP(seq=0, ack=101, flag=b"A"), b"", 0.001),
        (False, RUDP(seq=1, ack=0, flag=b"D"), b"Hello!", 0.05),
        (False, RUDP(seq=1, ack=0, flag=b"D"), b"Hello!", resend_gap),
        (True, RUDP(seq=0, ack=1, flag=b"A"), b"", 0.001),
        (False, RUDP(seq=2, ack=0, flag=b"F"), b"", 0.001),
        (True, RUDP(seq=0, ack=2, flag=b"A"), b"", 0.001),
    ]
    return _frames(steps)


def _frames(steps: list[tuple[bool, object, bytes, float]]) -> list[object]:
    """Ethernet frames of a scripted client/server exchange, timestamped."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether

    c, s = ("127.0.0.1", 58314), ("127.0.0.3", 2122)
    packets = []
    t = 1_700_000_000.0
    for from_client, header, payload, dt in steps:
        t += dt
        src, dst = (c, s) if from_client else (s, c)
        pkt = (
            Ether()
            / IP(src=src[0], dst=dst[0])
            / UDP(sport=src[1], dport=dst[1])
            / header
            / payload
        )
        pkt.time = t
        packets.append(pkt)
    return packets


def _verify(tmp_path: Path, packets: list[object]) -> CaptureAnalysis:
    path = tmp_path / "scapy.pcap"
    scapy_all.wrpcap(str(path), packets)
    return analyze_capture(path)


def test_scapy_crafted_loss_flow_passes(tmp_path: Path) -> None:
    analysis = _verify(tmp_path, _ladder())
    assert [c.id for c in analysis.checks if c.status == "fail"] == []
    (s,) = analysis.rudp_sessions
    assert (s.data_packets, s.retransmissions, s.go_backs, s.bytes) == (2, 1, 1, 6)
    assert s.complete and 0.99 < s.timeouts[0] < 1.01


def test_scapy_crafted_wrong_handshake_ack(tmp_path: Path) -> None:
    analysis = _verify(tmp_path, _ladder(synack=100))
    assert {c.id for c in analysis.checks if c.status == "fail"} == {"rudp.handshake"}


def test_scapy_crafted_premature_resend(tmp_path: Path) -> None:
    # The only chunk resent alone 10 ms later: a loss probe (rule S7), which passes.
    analysis = _verify(tmp_path, _ladder(resend_gap=0.01))
    assert [c.id for c in analysis.checks if c.status == "fail"] == []
    assert analysis.rudp_sessions[0].probes == 1


def test_scapy_crafted_premature_go_back(tmp_path: Path) -> None:
    from stacklab.layers import RUDP

    steps: list[tuple[bool, object, bytes, float]] = [
        (True, RUDP(seq=100, ack=0, flag=b"S"), b"", 0.0),
        (False, RUDP(seq=0, ack=101, flag=b"A"), b"", 0.001),
        (True, RUDP(seq=101, ack=0, flag=b"D"), COMMAND, 0.001),
        (False, RUDP(seq=0, ack=101, flag=b"A"), b"", 0.001),
        (False, RUDP(seq=1, ack=0, flag=b"D"), b"one", 0.001),
        (True, RUDP(seq=0, ack=1, flag=b"A"), b"", 0.001),
        (False, RUDP(seq=2, ack=0, flag=b"D"), b"two", 0.001),
        (False, RUDP(seq=3, ack=0, flag=b"D"), b"six", 0.001),
        (False, RUDP(seq=2, ack=0, flag=b"D"), b"two", 0.01),  # back 10 ms later, no reason
        (False, RUDP(seq=3, ack=0, flag=b"D"), b"six", 0.001),
        (True, RUDP(seq=0, ack=3, flag=b"A"), b"", 0.001),
        (False, RUDP(seq=4, ack=0, flag=b"F"), b"", 0.001),
        (True, RUDP(seq=0, ack=4, flag=b"A"), b"", 0.001),
    ]
    packets = _frames(steps)
    analysis = _verify(tmp_path, packets)
    # gbn: no timeout, no duplicate ACK; aimd: the go-back halved the window to 1,
    # and resending 3 as well makes 2 in flight.
    assert {c.id for c in analysis.checks if c.status == "fail"} == {"rudp.gbn", "rudp.aimd"}
    detail = next(c.detail for c in analysis.checks if c.id == "rudp.gbn")
    assert "sooner than any timeout" in detail
