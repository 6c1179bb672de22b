"""Properties of the RUDP session tracker over many seeded transfers."""

from __future__ import annotations

import hashlib
import random
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stacklab.analysis.rudp import RudpTracker
from stacklab.analysis.sessions import VerifyOptions
from stacklab.analysis.synth import SenderFaults, simulate_transfer, write_capture
from stacklab.analysis.verify import analyze_capture
from stacklab.wire import APP_RUDP_PORT, Flag, pack_rudp

transfers = st.fixed_dictionaries(
    {
        "seed": st.integers(0, 2**32 - 1),
        "size": st.integers(0, 12_000),
        "chunk": st.sampled_from([100, 500, 1400]),
        "window": st.integers(1, 8),
        "loss": st.sampled_from([0.0, 0.1, 0.3]),
        "isn": st.integers(0, 2**32 - 1),  # wraps around
        "byte_ack": st.booleans(),
    }
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(t=transfers)
def test_correct_transfers_pass_and_hash_right(t: dict[str, int]) -> None:
    rng = random.Random(t["seed"])
    content = rng.randbytes(t["size"])
    packets = simulate_transfer(
        content,
        rng=rng,
        isn=t["isn"],
        chunk_size=t["chunk"],
        max_window=t["window"],
        loss=t["loss"],
        byte_ack=bool(t["byte_ack"]),
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "t.pcap"
        write_capture(path, packets)
        analysis = analyze_capture(path, VerifyOptions(max_window=t["window"]))
    assert [c for c in analysis.checks if c.status == "fail"] == []
    (s,) = analysis.rudp_sessions
    assert s.complete and s.sha256 == hashlib.sha256(content).hexdigest()
    assert s.bytes == len(content) and s.isn == t["isn"]
    assert s.max_flight <= t["window"]
    data = [p for p in packets if p.sport == APP_RUDP_PORT and p.payload[8:9] == b"D"]
    assert s.data_packets == len(data)
    seen: set[int] = set()
    resent = 0
    for p in data:
        seq = int.from_bytes(p.payload[:4], "big")
        resent += seq in seen
        seen.add(seq)
    assert s.retransmissions == resent


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1))
def test_growing_by_two_is_always_caught(seed: int) -> None:
    content = random.Random(seed).randbytes(20 * 500)
    packets = simulate_transfer(
        content, rng=random.Random(seed), faults=SenderFaults(growth=2), loss=0.1
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "t.pcap"
        write_capture(path, packets)
        analysis = analyze_capture(path)
    assert {c.id for c in analysis.checks if c.status == "fail"} == {"rudp.aimd"}


@settings(max_examples=200, deadline=None)
@given(
    datagrams=st.lists(
        st.tuples(
            st.booleans(),
            st.integers(0, 12),
            st.integers(0, 12),
            st.sampled_from([f.value for f in Flag] + [b"X"]),
            st.binary(max_size=8),
        ),
        max_size=60,
    )
)
def test_any_datagram_sequence_is_tracked_without_error(
    datagrams: list[tuple[bool, int, int, bytes, bytes]],
) -> None:
    """Garbage in, facts out: the tracker never raises, whatever the order."""
    tracker = RudpTracker(APP_RUDP_PORT)
    client = ("10.0.0.1", 40000, "10.0.0.2", APP_RUDP_PORT)
    server = ("10.0.0.2", APP_RUDP_PORT, "10.0.0.1", 40000)
    for number, (from_client, seq, ack, flag, payload) in enumerate(datagrams, 1):
        datagram = pack_rudp(seq, ack, flag, payload)
        if number % 7 == 0:
            datagram = datagram[:5]  # too short for a header
        tracker.feed(
            number, number * 0.01, client if from_client else server, from_client, datagram
        )
    sessions = tracker.sessions()
    for s in sessions:
        assert s.data_packets <= len(datagrams)
        assert s.to_json()["client"] == "10.0.0.1:40000"
