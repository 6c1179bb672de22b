"""Damaged captures: ``stacklab verify`` gives facts or a CaptureError, never another exception.

The scan and the tracker run compiled (mypyc), so an index past a buffer or a
wrong type would surface as an exception a user sees as a traceback.  Real
captures with flipped bytes, cuts and inserted bytes must be verified up to
what makes sense or refused with one clear error.
"""

from __future__ import annotations

import tempfile
from functools import cache
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stacklab.analysis.pcapio import CaptureError
from stacklab.analysis.sessions import VerifyOptions
from stacklab.analysis.synth import LINK_ETHERNET, LINK_NULL, CaptureWriter, benchmark_stream
from stacklab.analysis.verify import analyze_capture


@cache
def _original(fmt: str, link: int) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"x.{fmt}"
        with CaptureWriter(path, fmt=fmt, link=link) as writer:  # type: ignore[arg-type]
            writer.write_all(benchmark_stream(400, seed=11, loss=0.1, concurrent=4))
        return path.read_bytes()


edits = st.lists(
    st.one_of(
        st.tuples(st.just("flip"), st.integers(0, 10**6), st.integers(1, 255)),
        st.tuples(st.just("cut"), st.integers(0, 10**6), st.just(0)),
        st.tuples(st.just("insert"), st.integers(0, 10**6), st.integers(0, 255)),
    ),
    min_size=1,
    max_size=6,
)


def _damage(data: bytes, changes: list[tuple[str, int, int]]) -> bytes:
    out = bytearray(data)
    for kind, where, value in changes:
        at = where % (len(out) + 1)
        if kind == "flip" and at < len(out):
            out[at] ^= value
        elif kind == "cut":
            del out[at:]
        elif kind == "insert":
            out[at:at] = bytes([value]) * (1 + value % 7)
    return bytes(out)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    fmt=st.sampled_from(["pcap", "pcapng"]),
    link=st.sampled_from([LINK_ETHERNET, LINK_NULL]),
    changes=edits,
)
def test_damaged_capture_is_verified_or_refused_cleanly(
    fmt: str, link: int, changes: list[tuple[str, int, int]]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"damaged.{fmt}"
        path.write_bytes(_damage(_original(fmt, link), changes))
        for jobs in (1, 2):
            try:
                analysis = analyze_capture(path, VerifyOptions(jobs=jobs))
            except CaptureError as exc:
                assert str(exc).startswith(str(path))  # one line naming the file
                continue
            assert analysis.packets >= 0
            analysis.to_json()  # the facts serialise
