"""The 10-digit framing decoder and TCP stream reassembly."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stacklab.analysis.pcapio import Packet, read_packets
from stacklab.analysis.tcpstream import TcpReassembler
from stacklab.framing import FrameDecoder, FramingError
from stacklab.wire import encode_frame

from conftest import seed_capture

REQUEST = b"0000000041FETCH http://127.0.0.1:8080/test_file.txt"


def test_request_split_at_every_byte() -> None:
    for cut in range(len(REQUEST) + 1):
        decoder = FrameDecoder()
        frames = decoder.feed(REQUEST[:cut]) + decoder.feed(REQUEST[cut:])
        assert [f.body for f in frames] == [b"FETCH http://127.0.0.1:8080/test_file.txt"]
        assert decoder.pending == 0


@given(st.lists(st.binary(max_size=300), max_size=8), st.lists(st.integers(0, 5000), max_size=10))
def test_any_frames_any_split(bodies: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(encode_frame(b) for b in bodies)
    points = sorted({min(c, len(stream)) for c in cuts} | {0, len(stream)})
    decoder = FrameDecoder()
    out = []
    for a, b in itertools.pairwise(points):
        out += decoder.feed(stream[a:b])
    assert [f.body for f in out] == bodies
    offsets = [f.offset for f in out]
    assert offsets == [sum(10 + len(x) for x in bodies[:i]) for i in range(len(bodies))]


@pytest.mark.parametrize("bad", [b"00000000x1abc", b"-000000001a", b"          "])
def test_bad_prefix(bad: bytes) -> None:
    decoder = FrameDecoder()
    with pytest.raises(FramingError):
        decoder.feed(bad)
    with pytest.raises(FramingError):
        decoder.feed(b"0000000001a")  # stays broken


def test_length_cap() -> None:
    with pytest.raises(FramingError, match="exceeds"):
        FrameDecoder(max_body=100).feed(b"0000000101")


def _seg(seq: int, data: bytes, frame: int, flags: int = 0x18) -> Packet:
    return Packet(
        frame, float(frame), "10.0.0.1", "10.0.0.2", 5000, 2121, "tcp", data, seq, 0, flags
    )


def test_reassembly_out_of_order_and_retransmitted() -> None:
    r = TcpReassembler()
    chunks = []
    for p in [
        _seg(999, b"", 1, 0x02),
        _seg(1006, b"world", 3),
        _seg(1000, b"hello ", 2),
        _seg(1000, b"hello ", 4),
    ]:
        chunks += [c for _, _, c in r.feed(p)]
    assert b"".join(c.data for c in chunks) == b"hello world"
    assert [c.frame for c in chunks] == [2, 3]


def test_part1_app_frames_reassembled() -> None:
    r = TcpReassembler()
    streams: dict[tuple[object, str], bytearray] = {}
    for p in read_packets(seed_capture("part1_flow")):
        if p.proto == "tcp" and 2121 in (p.sport, p.dport):
            for key, direction, chunk in r.feed(p):
                streams.setdefault((key, direction), bytearray()).extend(chunk.data)
    requests = [bytes(v) for (_, d), v in streams.items() if d == "c2s"]
    assert REQUEST in requests
    for (_, d), v in streams.items():
        frames = FrameDecoder().feed(bytes(v))
        assert frames, d
