"""The GSO splitter: a capture's oversized datagram back into the segments the kernel sent."""

from __future__ import annotations

import itertools

from hypothesis import assume, given
from hypothesis import strategies as st

from stacklab.gso import LEGACY, UNKNOWN, is_batch, segment_limit, split_batch
from stacklab.wire import RUDP_HEADER_LEN, pack_rudp


def _segment(seq: int, payload: bytes, flag: bytes = b"D") -> bytes:
    return pack_rudp(seq, 0, flag, payload)


@st.composite
def batches(draw: st.DrawFn) -> tuple[list[bytes], int]:
    """Two or more valid segments: equal sizes, the last one possibly shorter."""
    chunk = draw(st.integers(min_value=0, max_value=300))
    count = draw(st.integers(min_value=2, max_value=20))
    last = draw(st.integers(min_value=0, max_value=chunk))
    segments = []
    for i in range(count):
        size = chunk if i < count - 1 else last
        flag = draw(st.sampled_from([b"D", b"A", b"F", b"S"]))
        segments.append(_segment(i + 1, draw(st.binary(min_size=size, max_size=size)), flag))
    return segments, chunk


@given(batches(), st.binary(max_size=8), st.booleans())
def test_concatenated_segments_split_back_exactly(
    drawn: tuple[list[bytes], int], prefix: bytes, negotiated: bool
) -> None:
    segments, chunk = drawn
    joined = b"".join(segments)
    buf = prefix + joined + b"tail"
    start, stop = len(prefix), len(prefix) + len(joined)
    assert is_batch(buf, start, stop)
    limit = segment_limit({"chunk": chunk or 1}, True) if negotiated else UNKNOWN
    bounds = split_batch(buf, start, stop, limit)
    assert isinstance(bounds, list)
    assert [buf[a:b] for a, b in itertools.pairwise(bounds)] == segments


@given(batches(), st.integers(min_value=1, max_value=400))
def test_a_truncated_batch_is_malformed(drawn: tuple[list[bytes], int], cut: int) -> None:
    segments, _ = drawn
    joined = b"".join(segments)
    cut = cut % (len(segments[-1])) or 1  # cut inside the last segment
    data = joined[:-cut]
    if not is_batch(data, 0, len(data)):
        return  # the cut left only the first segment: an exact datagram, not a batch
    reason = split_batch(data, 0, len(data))
    assert isinstance(reason, str)
    assert "GSO segment" in reason


@given(batches(), st.integers(min_value=1, max_value=50), st.data())
def test_a_length_field_that_disagrees_is_malformed(
    drawn: tuple[list[bytes], int], extra: int, data: st.DataObject
) -> None:
    segments, _ = drawn
    # One segment other than the last grows: its length field still walks, sizes disagree.
    index = data.draw(st.integers(min_value=0, max_value=len(segments) - 2))
    # (The first of two growing is still a batch: a big segment, then a shorter last one.)
    assume(not (index == 0 and len(segments) == 2))
    grown = list(segments)
    old = grown[index]
    grown[index] = _segment(index + 1, old[RUDP_HEADER_LEN:] + bytes(extra), old[8:9])
    joined = b"".join(grown)
    reason = split_batch(joined, 0, len(joined))
    assert isinstance(reason, str)
    assert "disagree" in reason


def test_legacy_sessions_never_batch_and_limits_come_from_the_synack() -> None:
    joined = _segment(1, b"x" * 500) + _segment(2, b"y" * 500)
    assert is_batch(joined, 0, len(joined))
    assert "original protocol" in str(split_batch(joined, 0, len(joined), LEGACY))
    assert segment_limit(None, True) == LEGACY
    assert segment_limit(None, False) == UNKNOWN
    assert segment_limit({"chunk": 1400, "integrity": True}, True) == 11 + 1400 + 4
    assert segment_limit({"chunk": 500}, True) == 511
    assert segment_limit({"chunk": "big"}, True) == UNKNOWN
    # Segments bigger than the negotiated chunk allows: malformed.
    reason = split_batch(joined, 0, len(joined), segment_limit({"chunk": 400}, True))
    assert isinstance(reason, str) and "negotiated" in reason
    # A shorter batch (the last chunk sent twice) is within the limit.
    assert split_batch(joined, 0, len(joined), segment_limit({"chunk": 600}, True)) == [
        0,
        511,
        1022,
    ]


def test_exact_datagrams_and_short_ones_are_not_batches() -> None:
    one = _segment(1, b"abc")
    assert not is_batch(one, 0, len(one))
    assert not is_batch(one[:5], 0, 5)
    short = one + b"\x00" * 4  # padding shorter than a header
    assert is_batch(short, 0, len(short))
    assert "shorter than the 11-byte RUDP header" in str(split_batch(short, 0, len(short)))
