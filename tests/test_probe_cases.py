"""The probe's case generator: reproducible by index, field-aware, sendable."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stacklab import wire
from stacklab.tools.probe_cases import (
    MAX_UDP_PAYLOAD,
    PROTOCOLS,
    ProbeContext,
    generate_case,
    generate_cases,
    int_boundaries,
    mutate,
    rudp_fields,
    seeded_global_random,
    systematic_count,
)


@settings(max_examples=200, deadline=None)
@given(
    protocol=st.sampled_from(PROTOCOLS),
    seed=st.integers(min_value=0, max_value=2**32),
    index=st.integers(min_value=0, max_value=5000),
)
def test_a_case_depends_only_on_protocol_seed_and_index(
    protocol: str, seed: int, index: int
) -> None:
    # Generating other cases first (and disturbing the global random) changes nothing.
    first = generate_case(protocol, seed, index)
    random.seed(12345)
    list(generate_cases(protocol, seed + 1, 3, start=index))
    assert generate_case(protocol, seed, index) == first
    assert first.index == index and first.protocol == protocol
    if protocol != "app":
        assert all(len(p) <= MAX_UDP_PAYLOAD for p in first.packets)


def test_different_seeds_give_different_random_cases() -> None:
    start = systematic_count("rudp")
    a = [c.packets for c in generate_cases("rudp", 1, 50, start=start)]
    b = [c.packets for c in generate_cases("rudp", 2, 50, start=start)]
    assert a != b
    # The systematic part does not depend on the seed.
    assert generate_case("dns", 1, 0).packets == generate_case("dns", 2, 0).packets


def test_fuzz_leaves_the_global_random_state_alone() -> None:
    random.seed(99)
    expected = random.random()
    random.seed(99)
    with seeded_global_random(random.Random(1)):
        random.random()
    assert random.random() == expected


def _systematic(protocol: str) -> list:
    return list(generate_cases(protocol, 0, systematic_count(protocol)))


def test_rudp_boundaries_cover_every_header_field_of_the_layer() -> None:
    cases = _systematic("rudp")
    names = [f.name for f in rudp_fields()]
    assert names == [f.name for f in wire.RUDP_HEADER_FIELDS]
    for spec in rudp_fields():
        values = set()
        for case in cases:
            if case.kind == f"rudp.boundary.{spec.name}":
                head = wire.RUDP_HEADER.unpack_from(case.packets[0])
                values.add(head[names.index(spec.name)])
        if spec.integer:
            assert set(int_boundaries(spec.size)) <= values
        else:  # unknown flag bytes and every known flag
            assert {b"\x00", b"\xff", b"s"} | {f.value for f in wire.Flag} <= values


def test_rudp_truncations_at_every_header_offset() -> None:
    cuts = {
        len(c.packets[0])
        for c in _systematic("rudp")
        if c.kind == "rudp.truncated" and c.detail.startswith("SYN")
    }
    assert cuts == set(range(wire.RUDP_HEADER_LEN))


def test_rudp_lying_lengths_and_oversized() -> None:
    cases = _systematic("rudp")
    lies = [c for c in cases if c.kind == "rudp.lying-length"]
    lengths = {wire.unpack_rudp(c.packets[-1])[0].length for c in lies}
    assert {0, wire.RUDP_MAX_LEN} <= lengths
    assert any(not wire.rudp_length_ok(c.packets[-1]) for c in lies)
    assert (
        max(len(p) for c in cases if c.kind == "rudp.oversized" for p in c.packets)
        == MAX_UDP_PAYLOAD
    )


def test_fetch_commands_include_non_utf8_and_forbidden_targets() -> None:
    bodies = [
        c.packets[0][wire.FRAME_PREFIX_LEN :] for c in _systematic("app") if c.kind == "app.command"
    ]
    assert any(_not_utf8(b) for b in bodies)
    assert b"FETCH file:///etc/passwd" in bodies
    assert b"FETCH http://169.254.169.254/latest/meta-data/" in bodies
    assert f"FETCH {wire.DEFAULT_URL}".encode() in bodies


def _not_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def test_app_frame_split_at_every_byte_and_stalls() -> None:
    cases = _systematic("app")
    frame = wire.encode_frame(f"FETCH {wire.DEFAULT_URL}".encode())
    splits = [c for c in cases if c.kind == "app.split"]
    assert sorted(len(c.packets[0]) for c in splits) == list(range(1, len(frame)))
    assert all(b"".join(c.packets) == frame and c.gap > 0 for c in splits)
    stalls = [c for c in cases if c.stall]
    assert stalls and all(not c.half_close for c in stalls)
    prefixes = [c.packets[0][:10] for c in cases if c.kind == "app.prefix"]
    assert all(not p.isdigit() for p in prefixes)


@pytest.mark.parametrize("protocol", ["dns", "dhcp"])
def test_json_cases_cover_invalid_nested_wrong_types_and_bad_utf8(protocol: str) -> None:
    cases = _systematic(protocol)
    payloads = [c.packets[0] for c in cases]
    assert any(p.startswith(b'{"domain": [[[[') for p in payloads)  # deeply nested
    assert any(_not_utf8(p) for p in payloads)
    assert b"[]" in payloads and b"{" in payloads
    typed = [json.loads(c.packets[0]) for c in cases if c.kind == f"{protocol}.types"]
    for key in wire.JSON_WELL_KNOWN_KEYS:
        assert any(isinstance(w.get(key), list) for w in typed), key
        assert any(w.get(key) is None for w in typed), key


def test_context_changes_the_valid_requests() -> None:
    ctx = ProbeContext(url="http://10.0.0.1:9/x", name="other.test")
    assert b"FETCH http://10.0.0.1:9/x" in generate_case("app", 0, 0, ctx).packets[0]
    assert b"other.test" in generate_case("dns", 0, 0, ctx).packets[0]


@given(data=st.binary(max_size=64), seed=st.integers(0, 1000))
def test_mutate_is_deterministic(data: bytes, seed: int) -> None:
    assert mutate(data, random.Random(seed)) == mutate(data, random.Random(seed))


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown protocol"):
        generate_case("smtp", 0, 0)
    with pytest.raises(ValueError, match=">= 0"):
        generate_case("rudp", 0, -1)
