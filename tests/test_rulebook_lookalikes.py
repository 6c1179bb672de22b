"""The rulebook's companions: look-alikes each check must reject, and correct oddities it must pass.

Every rule of ``docs/rulebook.md`` gets a sender or receiver that breaks it
in one precise way (``SenderFaults`` in the synthetic transfer, or a scripted
conversation), and each must fail exactly the check that owns the rule, in
that check's words.  Beside them, unusual but correct conversations (loss
probes, fast retransmits, ACKs lost after the capture point, a network
duplicate, the base sent twice) must pass every check.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pytest
from crc32c import crc32c

from stacklab.analysis.sessions import CaptureAnalysis, VerifyOptions
from stacklab.analysis.synth import (
    Conversation,
    Packet,
    SenderFaults,
    simulate_transfer,
    write_capture,
)
from stacklab.analysis.verify import analyze_capture
from stacklab.wire import RUDP_HEADER

CONTENT = bytes(range(256)) * 40  # 21 chunks of 500


def _verify(tmp_path: Path, packets: list[Packet]) -> CaptureAnalysis:
    path = tmp_path / "capture.pcapng"
    write_capture(path, packets, fmt="pcapng")
    return analyze_capture(path, VerifyOptions())


def _failures(analysis: CaptureAnalysis) -> dict[str, str]:
    return {c.id: c.detail for c in analysis.checks if c.status == "fail"}


def _ramp(conv: Conversation) -> None:
    """Handshake, then a clean ramp: window 1..5, chunks 1-4 acknowledged, 5-7 in flight."""
    conv.handshake()
    conv.data(1, b"\x01")
    conv.ack(1)
    conv.data(2, b"\x02")
    conv.data(3, b"\x03")
    conv.ack(2)
    conv.data(4, b"\x04")
    conv.data(5, b"\x05")
    conv.ack(3)
    conv.data(6, b"\x06")
    conv.ack(4)
    conv.data(7, b"\x07")


def _finish(conv: Conversation, last: int) -> None:
    conv.ack(last)
    conv.fin(last + 1)
    conv.ack(last + 1)


# -- look-alikes: (faults, seed, loss, check, words) -----------------------------------

LOOKALIKES = {
    "stop-and-wait": (
        SenderFaults(growth=0),
        0,
        0.0,
        "rudp.aimd",
        "stop-and-wait: never more than 1",
    ),
    "window grows by 2": (
        SenderFaults(growth=2),
        0,
        0.0,
        "rudp.aimd",
        "chunk 4 sent with 3 chunks in flight (base 2), but the AIMD window was at most 2",
    ),
    "no halving": (
        SenderFaults(halve="none"),
        1,
        0.15,
        "rudp.aimd",
        "but the AIMD window was at most",
    ),
    "window capped below the AIMD window": (
        SenderFaults(window_cap=2),
        0,
        0.0,
        "rudp.aimd",
        "sends less than its window allows: never more than 2 chunks outstanding, although the window reached at least 5",
    ),
    "fast retransmit after 1 duplicate ACK": (
        SenderFaults(fast_retransmit=1),
        1,
        0.15,
        "rudp.gbn",
        "fast retransmit after 1 duplicate ACK",
    ),
    "selective repeat sender": (
        SenderFaults(selective=True),
        2,
        0.15,
        "rudp.gbn",
        "selective repeat: chunk 2 resent alone after 1.000 s of silence",
    ),
    "go-back above the base": (
        SenderFaults(resend_from=1),
        1,
        0.15,
        "rudp.gbn",
        "a go-back starts at the base (selective resend)",
    ),
    "malformed DATA acknowledged": (
        SenderFaults(malformed_chunk=3),
        0,
        0.0,
        "rudp.delivery",
        "malformed DATA: chunk 3 (frame 8) has length field 500, 250 bytes present, "
        "and the client acknowledged it",
    ),
    "FIN before the last ACK": (
        SenderFaults(fin_early=True),
        0,
        0.0,
        "rudp.teardown",
        "FIN sent while chunks 20..21 were unacknowledged",
    ),
}


@pytest.mark.parametrize("name", list(LOOKALIKES))
def test_lookalike_fails_its_check_in_its_words(tmp_path: Path, name: str) -> None:
    faults, seed, loss, check, words = LOOKALIKES[name]
    packets = simulate_transfer(CONTENT, rng=random.Random(seed), loss=loss, faults=faults)
    failures = _failures(_verify(tmp_path, packets))
    assert set(failures) == {check}, failures
    assert words in failures[check]


def test_selective_repeat_receiver_fails_gbn(tmp_path: Path) -> None:
    conv = Conversation()
    _ramp(conv)  # 5, 6, 7 in flight; 5 is lost
    conv.ack(4, dt=0.02)  # 6 and 7 arrived out of order: duplicate ACKs
    conv.ack(4)
    conv.data(5, b"\x05", dt=1.0)  # a timeout: the base resent alone...
    conv.ack(7)  # ... and the ACK jumps over 6 and 7, never resent: they were kept
    conv.fin(8)
    conv.ack(8)
    failures = _failures(_verify(tmp_path, conv.packets))
    assert set(failures) == {"rudp.gbn"}
    assert failures["rudp.gbn"].startswith("selective repeat at the receiver: ACK 7 covers chunk 6")


def test_go_back_n_receiver_after_the_same_loss_passes(tmp_path: Path) -> None:
    conv = Conversation()
    _ramp(conv)
    conv.ack(4, dt=0.02)
    conv.ack(4)
    conv.data(5, b"\x05", dt=1.0)  # the timeout's go-back: the window is 2 now
    conv.data(6, b"\x06")
    conv.ack(5)  # the receiver had thrown 6 and 7 away
    conv.ack(6)
    conv.data(7, b"\x07")
    _finish(conv, 7)
    assert _failures(_verify(tmp_path, conv.packets)) == {}


def test_premature_timeout_fails_gbn(tmp_path: Path) -> None:
    conv = Conversation()
    _ramp(conv)  # 5, 6, 7 in flight
    conv.data(5, b"\x05", dt=0.05)  # a timer of 50 ms: four times sooner than any RTO
    conv.data(6, b"\x06")
    _finish(conv, 7)
    failures = _failures(_verify(tmp_path, conv.packets))
    assert set(failures) == {"rudp.gbn"}
    assert "with no duplicate ACK: sooner than any timeout (at least 0.2 s)" in failures["rudp.gbn"]


def test_resent_with_other_bytes_fails_delivery(tmp_path: Path) -> None:
    conv = Conversation()
    _ramp(conv)
    conv.data(5, b"\xff", dt=1.0)  # a timeout, but not the same bytes
    conv.data(6, b"\x06")
    for ack in (5, 6):
        conv.ack(ack)
    conv.data(7, b"\x07")
    _finish(conv, 7)
    failures = _failures(_verify(tmp_path, conv.packets))
    assert failures == {"rudp.delivery": "chunk 5 resent with different bytes"}


def test_ack_of_a_chunk_never_sent_fails_delivery(tmp_path: Path) -> None:
    conv = Conversation()
    conv.handshake()
    conv.data(1, b"a")
    conv.ack(3)
    _finish(conv, 1)
    failures = _failures(_verify(tmp_path, conv.packets))
    assert set(failures) == {"rudp.delivery"}
    assert "ACK 3 acknowledges a chunk never sent (highest 1)" in failures["rudp.delivery"]


def test_second_fast_retransmit_in_one_episode_fails_gbn(tmp_path: Path) -> None:
    conv = Conversation()
    _ramp(conv)  # 5, 6, 7 in flight, window 5
    conv.data(8, b"\x08")
    conv.data(9, b"\x09")
    for _ in range(3):
        conv.ack(4)
    conv.data(5, b"\x05")  # fast retransmit: the window halves to 2
    conv.data(6, b"\x06")
    for _ in range(3):
        conv.ack(4)  # echoes of 7, 8, 9: the same episode
    conv.data(5, b"\x05")  # ... must not go back again
    conv.data(6, b"\x06")
    for ack in (5, 6, 7, 8):
        conv.ack(ack)
    conv.data(7, b"\x07")
    conv.data(8, b"\x08")
    conv.data(9, b"\x09")
    _finish(conv, 9)
    failures = _failures(_verify(tmp_path, conv.packets))
    assert set(failures) == {"rudp.gbn"}
    assert "a second fast retransmit (to chunk 5) in one recovery episode" in failures["rudp.gbn"]


def test_probes_without_end_fail_gbn(tmp_path: Path) -> None:
    conv = Conversation()
    _ramp(conv)
    for _ in range(3):  # the base alone again and again, the sender never going back
        conv.data(5, b"\x05", dt=0.03)
    _finish(conv, 7)
    failures = _failures(_verify(tmp_path, conv.packets))
    assert set(failures) == {"rudp.gbn"}
    assert "3 loss probes in a row without progress" in failures["rudp.gbn"]


def test_two_probes_then_a_timeout_pass(tmp_path: Path) -> None:
    conv = Conversation()
    _ramp(conv)
    conv.data(5, b"\x05", dt=0.03)  # two probes...
    conv.data(5, b"\x05", dt=0.06)
    conv.data(5, b"\x05", dt=0.3)  # ... then the timeout goes back
    conv.data(6, b"\x06")
    for ack in (5, 6):
        conv.ack(ack)
    conv.data(7, b"\x07")
    _finish(conv, 7)
    analysis = _verify(tmp_path, conv.packets)
    assert _failures(analysis) == {}
    (s,) = analysis.rudp_sessions
    assert (s.probes, s.go_backs) == (2, 1)


def _negotiated(conv: Conversation, *, bad_chunk: int | None) -> None:
    """A negotiated session with CRC32C trailers; ``bad_chunk`` carries a wrong one."""

    def sealed(seq: int, ack: int, flag: bytes, body: bytes, good: bool = True) -> bytes:
        header = RUDP_HEADER.pack(seq, ack, flag, len(body) + 4)
        crc = crc32c(header + body) ^ (0 if good else 1)
        return header + body + crc.to_bytes(4, "big")

    from stacklab.analysis.synth import UdpPacket

    def send(from_client: bool, datagram: bytes) -> None:
        conv.now += conv.step
        src, dst = (conv.client, conv.server) if from_client else (conv.server, conv.client)
        conv.packets.append(UdpPacket(conv.now, src[0], src[1], dst[0], dst[1], datagram))

    options = b'{"chunk_size": 1000, "window": 16, "ack_every": 1, "integrity": true}'
    send(True, sealed(7, 0, b"S", options))
    send(False, sealed(1234, 8, b"A", options))
    send(True, sealed(8, 1234, b"D", b"FETCH http://127.0.0.1:8080/x"))
    send(False, sealed(0, 8, b"A", b""))
    for chunk in (1, 2, 3):
        send(False, sealed(chunk, 0, b"D", bytes([chunk]) * 10, good=chunk != bad_chunk))
        send(True, sealed(0, chunk, b"A", b""))
    send(
        False,
        sealed(4, 0, b"F", hashlib.sha256(b"".join(bytes([c]) * 10 for c in (1, 2, 3))).digest()),
    )
    send(True, sealed(0, 4, b"A", b""))


def test_wrong_crc32c_acknowledged_fails_integrity(tmp_path: Path) -> None:
    conv = Conversation()
    _negotiated(conv, bad_chunk=2)
    analysis = _verify(tmp_path, conv.packets)
    failures = _failures(analysis)
    assert set(failures) == {"rudp.integrity"}
    assert (
        "chunk 2 (frame 7) has a wrong CRC32C trailer, and the client acknowledged it"
        in (failures["rudp.integrity"])
    )
    assert analysis.rudp_sessions[0].bad_chunks == 1


def test_sound_crc32c_trailers_pass_integrity(tmp_path: Path) -> None:
    conv = Conversation()
    _negotiated(conv, bad_chunk=None)
    analysis = _verify(tmp_path, conv.packets)
    assert _failures(analysis) == {}
    status = {c.id: c.status for c in analysis.checks}
    assert status["rudp.integrity"] == "pass"


# -- correct but unusual: must pass every check ----------------------------------------

CORRECT = {
    "timeouts only (the original)": (SenderFaults(), 0.15, 0.0),
    "fast retransmit on the third duplicate": (SenderFaults(fast_retransmit=3), 0.15, 0.0),
    "loss probes and fast retransmit": (SenderFaults(probes=True, fast_retransmit=3), 0.15, 0.0),
    "ACKs lost after the capture point": (SenderFaults(fast_retransmit=3), 0.1, 0.2),
    "heavy ACK loss, no DATA loss": (SenderFaults(), 0.0, 0.3),
}


@pytest.mark.parametrize("name", list(CORRECT))
@pytest.mark.parametrize("seed", range(6))
def test_correct_variants_pass_every_check(tmp_path: Path, name: str, seed: int) -> None:
    faults, loss, ack_loss = CORRECT[name]
    packets = simulate_transfer(
        CONTENT, rng=random.Random(seed), loss=loss, ack_loss=ack_loss, faults=faults
    )
    analysis = _verify(tmp_path, packets)
    assert _failures(analysis) == {}
    assert analysis.rudp_sessions[0].complete


def test_network_duplicate_is_not_a_resend(tmp_path: Path) -> None:
    conv = Conversation()
    _ramp(conv)
    conv.data(7, b"\x07", dt=0.0001)  # the network delivered chunk 7 twice
    for ack in (5, 6, 7):
        conv.ack(ack)
    conv.fin(8)
    conv.ack(8)
    analysis = _verify(tmp_path, conv.packets)
    assert _failures(analysis) == {}
    (s,) = analysis.rudp_sessions
    assert (s.network_duplicates, s.retransmissions, s.go_backs) == (1, 0, 0)


def test_base_sent_twice_at_a_timeout_is_a_go_back(tmp_path: Path) -> None:
    conv = Conversation()
    _ramp(conv)
    conv.data(5, b"\x05", dt=1.0)  # timeout: the base twice at once (negotiated sessions do)
    conv.data(5, b"\x05", dt=0.0)
    conv.data(6, b"\x06")
    for ack in (5, 6):
        conv.ack(ack)
    conv.data(7, b"\x07")
    _finish(conv, 7)
    analysis = _verify(tmp_path, conv.packets)
    assert _failures(analysis) == {}
    (s,) = analysis.rudp_sessions
    assert s.go_backs == 1 and s.go_back_kinds["timeout"] == 1


def test_go_back_below_a_captured_ack_is_explained(tmp_path: Path) -> None:
    conv = Conversation()
    _ramp(conv)
    conv.data(8, b"\x08")  # the window of 5 filled: 5..8 outstanding
    conv.ack(5)  # on the wire, lost before the sender
    conv.data(9, b"\x09")  # the sender carries on with its own window (base 5)
    conv.data(5, b"\x05", dt=1.0)  # its timeout: back to its own base, 5
    conv.data(6, b"\x06")
    for ack in (6, 7, 8, 9):
        conv.ack(ack)
    conv.fin(10)
    conv.ack(10)
    analysis = _verify(tmp_path, conv.packets)
    assert _failures(analysis) == {}
