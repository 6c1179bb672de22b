"""The stream hasher gives hashlib's digests, threaded or not, however the pieces interleave."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stacklab.analysis.hashing import BLOCK, BackgroundHasher

pieces = st.lists(
    st.tuples(st.integers(0, 2), st.binary(max_size=3000)),
    max_size=60,
)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("threaded", [True, False])
@settings(max_examples=40, deadline=None)
@given(pieces=pieces)
def test_interleaved_streams_hash_like_hashlib(
    threaded: bool, pieces: list[tuple[int, bytes]]
) -> None:
    hasher = BackgroundHasher(threaded=threaded)
    streams = [hasher.stream() for _ in range(3)]
    expected = [hashlib.sha256() for _ in range(3)]
    for which, data in pieces:
        streams[which].update(data)
        expected[which].update(data)
    for stream in streams:
        stream.close()
    hasher.wait()
    hasher.close()
    assert [s.sha.hexdigest() for s in streams] == [e.hexdigest() for e in expected]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("threaded", [True, False])
def test_blocks_are_handed_over_as_they_fill(threaded: bool) -> None:
    hasher = BackgroundHasher(threaded=threaded)
    stream = hasher.stream()
    data = bytes(range(256)) * (BLOCK // 256 + 1)
    stream.update(data)
    assert stream.parts == [] and stream.size == 0  # a full block leaves nothing gathered
    stream.update(b"tail")
    assert stream.size == 4
    stream.close()
    hasher.wait()
    hasher.close()
    assert stream.sha.digest() == hashlib.sha256(data + b"tail").digest()
