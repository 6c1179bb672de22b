"""IP fragment reassembly: any order, duplicates, overlaps, losses, bounds, cut fragments."""

from __future__ import annotations

import dataclasses
import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stacklab.analysis.ipfrag import (
    MAX_DATAGRAM,
    MAX_FRAGMENTS,
    Datagram,
    Fragment,
    Reassembler,
)
from stacklab.analysis.pcapio import LINKTYPE_RAW, Frame, parse_packet
from stacklab.analysis.synth import (
    IPPROTO_FRAGMENT,
    ipv4_fragments,
    ipv6,
    ipv6_fragments,
    udp6_segment,
    udp_segment,
)

V4 = ("10.0.0.1", "10.0.0.2")
V6 = ("2001:db8::1", "2001:db8::2")


def _cut(
    data: bytes, step: int, version: int = 4, ident: int = 7, proto: int = 17
) -> list[Fragment]:
    """``data`` as fragments of ``step`` bytes (a multiple of 8), as a sender cuts it."""
    src, dst = V4 if version == 4 else V6
    out = []
    for start in range(0, len(data), step):
        piece = data[start : start + step]
        out.append(
            Fragment(version, src, dst, ident, proto, start, start + step < len(data), piece)
        )
    return out or [Fragment(version, src, dst, ident, proto, 0, False, b"")]


def _feed(
    reassembler: Reassembler, fragments: list[Fragment], first_frame: int = 1, time: float = 0.0
) -> list[tuple[int, Datagram]]:
    out = []
    for number, fragment in enumerate(fragments, first_frame):
        datagram = reassembler.add(fragment, number, time)
        if datagram is not None:
            out.append((number, datagram))
    return out


@settings(max_examples=150, deadline=None)
@given(
    data=st.binary(min_size=1, max_size=5000),
    step8=st.integers(8, 200),  # at most 79 fragments, and 6 duplicates
    version=st.sampled_from([4, 6]),
    seed=st.integers(0, 2**32),
    duplicates=st.integers(0, 6),
)
def test_any_order_with_duplicates_gives_back_the_datagram_once(
    data: bytes, step8: int, version: int, seed: int, duplicates: int
) -> None:
    rng = random.Random(seed)
    fragments = _cut(data, step8 * 8, version)
    wire = fragments + [rng.choice(fragments) for _ in range(duplicates)]
    rng.shuffle(wire)
    reassembler = Reassembler()
    out = _feed(reassembler, wire)
    # Handed over exactly once, whole, by the fragment that completes it.
    assert len(out) >= 1
    number, datagram = out[0]
    assert datagram.data == data and datagram.proto == 17 and datagram.version == version
    assert all(f in wire[:number] for f in fragments)  # nothing handed over early
    assert datagram.frames == tuple(range(1, number + 1))
    # A duplicate after completion starts a new datagram, as in Wireshark; it
    # completes again only if every fragment comes again.
    for later_number, later in out[1:]:
        assert later.data == data and later_number > number
    assert reassembler.stats.reassembled == len(out)
    assert reassembler.stats.conflicts == 0


@settings(max_examples=100, deadline=None)
@given(
    data=st.binary(min_size=9, max_size=3000),
    step8=st.integers(1, 100),
    seed=st.integers(0, 2**32),
)
def test_a_lost_fragment_means_a_lost_datagram(data: bytes, step8: int, seed: int) -> None:
    rng = random.Random(seed)
    fragments = _cut(data, step8 * 8)
    if len(fragments) < 2:
        fragments = _cut(data, 8)
    lost = rng.randrange(len(fragments))
    wire = [f for i, f in enumerate(fragments) if i != lost]
    rng.shuffle(wire)
    reassembler = Reassembler()
    assert _feed(reassembler, wire) == []
    assert reassembler.finish().incomplete == 1


def test_overlaps_keep_the_lower_offset_then_the_first_copy_as_wireshark() -> None:
    data = bytes(range(256)) * 12  # 3072 bytes
    head = Fragment(4, *V4, 9, 17, 0, True, data[:1480])
    tail = Fragment(4, *V4, 9, 17, 1480, False, data[1480:])
    liar = Fragment(4, *V4, 9, 17, 1472, True, b"Z" * 528)  # overlaps both, other bytes
    reassembler = Reassembler()
    # The liar comes after the true tail but has the lower offset: its bytes win
    # over the tail's, and the head's win over its first 8 (tshark gives the same).
    out = _feed(reassembler, [tail, liar, head])
    ((number, datagram),) = out
    assert number == 3 and datagram.frames == (1, 2, 3)
    assert datagram.data == data[:1480] + b"Z" * 520 + data[2000:]
    assert reassembler.stats.overlaps == 2 and reassembler.stats.conflicts == 2
    assert reassembler.stats.problems() == [
        "2 overlapping IP fragment(s) with different bytes (frames 2, 3)"
    ]


def test_at_the_same_offset_the_first_copy_wins() -> None:
    first = Fragment(4, *V4, 3, 17, 0, True, b"A" * 16)
    again = Fragment(4, *V4, 3, 17, 0, True, b"B" * 16)
    tail = Fragment(4, *V4, 3, 17, 16, False, b"C" * 8)
    reassembler = Reassembler()
    ((_, datagram),) = _feed(reassembler, [first, again, tail])
    assert datagram.data == b"A" * 16 + b"C" * 8
    assert reassembler.stats.conflicts == 1


def test_a_second_different_end_is_invalid_and_ignored() -> None:
    reassembler = Reassembler()
    fragments = [
        Fragment(4, *V4, 5, 17, 16, False, b"t" * 8),
        Fragment(4, *V4, 5, 17, 8, False, b"x" * 8),  # says the datagram ends at 16
        Fragment(4, *V4, 5, 17, 0, True, b"h" * 16),
    ]
    ((_, datagram),) = _feed(reassembler, fragments)
    assert datagram.data == b"h" * 16 + b"t" * 8
    assert reassembler.stats.invalid == 1


def test_the_key_is_source_destination_identification_and_protocol() -> None:
    reassembler = Reassembler()
    head = Fragment(4, *V4, 1, 17, 0, True, b"u" * 8)
    other_proto = Fragment(4, *V4, 1, 6, 8, False, b"t" * 8)
    other_dst = Fragment(4, V4[0], "10.0.0.3", 1, 17, 8, False, b"d" * 8)
    other_id = Fragment(4, *V4, 2, 17, 8, False, b"i" * 8)
    assert _feed(reassembler, [head, other_proto, other_dst, other_id]) == []
    assert reassembler.pending == 4
    ((_, datagram),) = _feed(reassembler, [Fragment(4, *V4, 1, 17, 8, False, b"e" * 8)], 5)
    assert datagram.data == b"u" * 8 + b"e" * 8


def test_protocols_stay_apart_where_wireshark_would_splice_them() -> None:
    # Wireshark keys on protocol XOR identification: 6 ^ 0x0a == 17 ^ 0x1d.  A
    # receiving host keeps a waiting TCP fragment out of the UDP datagram.
    reassembler = Reassembler()
    lone_tcp = Fragment(4, *V4, 0x0A, 6, 0, True, b"T" * 16)
    udp = _cut(b"U" * 40, 16, ident=0x1D)
    assert reassembler.add(lone_tcp, 1, 0.0) is None
    ((_, datagram),) = _feed(reassembler, udp, 2)
    assert datagram.data == b"U" * 40 and datagram.frames == (2, 3, 4)
    assert reassembler.stats.conflicts == 0


def test_ipv6_takes_the_protocol_from_the_fragment_at_offset_zero() -> None:
    # RFC 8200: the Next Header values of later fragments may differ; only the
    # first fragment's counts, and it is not part of the key.
    reassembler = Reassembler()
    tail = Fragment(6, *V6, 0xDEADBEEF, 59, 8, False, b"t" * 8)
    head = Fragment(6, *V6, 0xDEADBEEF, 17, 0, True, b"h" * 8)
    ((_, datagram),) = _feed(reassembler, [tail, head])
    assert datagram.proto == 17 and datagram.data == b"h" * 8 + b"t" * 8


def test_timeout_in_capture_time_drops_and_counts() -> None:
    reassembler = Reassembler(timeout=30.0)
    head, tail = _cut(b"x" * 16, 8)
    assert reassembler.add(head, 1, 100.0) is None
    assert reassembler.add(tail, 2, 130.5) is None  # too late: the head was dropped
    assert reassembler.stats.timed_out == 1
    assert reassembler.add(head, 3, 131.0) is not None  # a fresh copy completes it
    assert reassembler.stats.problems() == [
        "1 IP datagram(s) still incomplete after the timeout (frames 1)"
    ]


def test_default_timeouts_are_the_hosts() -> None:
    for version, alive, dead in ((4, 29.0, 31.0), (6, 59.0, 61.0)):
        for gap, expect in ((alive, True), (dead, False)):
            reassembler = Reassembler()
            head, tail = _cut(b"y" * 16, 8, version)
            reassembler.add(head, 1, 0.0)
            assert (reassembler.add(tail, 2, gap) is not None) is expect


def test_memory_is_bounded_by_datagrams_and_bytes() -> None:
    reassembler = Reassembler(max_datagrams=10, max_bytes=10_000)
    for ident in range(100):
        reassembler.add(Fragment(4, *V4, ident, 17, 0, True, b"z" * 800), ident + 1, 0.0)
        assert reassembler.pending <= 10 and reassembler.pending_bytes <= 10_000
    assert reassembler.stats.evicted == 90
    # The newest datagrams survive the bounds and still complete.
    done = reassembler.add(Fragment(4, *V4, 99, 17, 800, False, b"e"), 101, 0.0)
    assert done is not None and len(done.data) == 801
    big = Reassembler(max_bytes=1000)
    assert big.add(Fragment(4, *V4, 1, 17, 0, True, b"q" * 1500), 1, 0.0) is None
    assert big.pending == 0 and big.stats.evicted == 1


def test_a_datagram_of_too_many_fragments_is_dropped() -> None:
    reassembler = Reassembler()
    pieces = _cut(b"m" * 8 * (MAX_FRAGMENTS + 1), 8)
    assert _feed(reassembler, pieces) == []
    assert reassembler.stats.excess == 1 and reassembler.pending == 0
    assert reassembler.stats.problems() == [
        f"1 IP datagram(s) dropped after {MAX_FRAGMENTS} fragments (frames 1)"
    ]
    just_enough = _cut(b"m" * 8 * MAX_FRAGMENTS, 8)
    ((number, _),) = _feed(Reassembler(), just_enough)
    assert number == MAX_FRAGMENTS


def test_nothing_past_64_kib() -> None:
    reassembler = Reassembler()
    head = Fragment(4, *V4, 1, 17, 0, True, b"h" * 8)
    death = Fragment(4, *V4, 1, 17, 65528, False, b"p" * 100)  # ends past 65,535
    assert _feed(reassembler, [head, death]) == []
    assert reassembler.stats.invalid == 1 and MAX_DATAGRAM == 65535


def test_a_fragment_cut_by_the_snapshot_length_is_reported_not_guessed() -> None:
    reassembler = Reassembler()
    head, tail = _cut(b"c" * 24, 16)
    cut_tail = dataclasses.replace(tail, data=tail.data[:2], cut=6)
    assert _feed(reassembler, [head, cut_tail]) == []
    assert reassembler.stats.truncated == 1
    # A whole copy of the same fragment, later, completes the datagram.
    ((number, datagram),) = _feed(reassembler, [tail], 3)
    assert number == 3 and datagram.data == b"c" * 24 and datagram.frames == (1, 3)
    assert reassembler.stats.problems() == [
        "1 IP fragment(s) cut by the snapshot length, not used (frames 2)"
    ]


# -- the capture reader's side ---------------------------------------------------------


def _frames(packets: list[bytes]) -> list[Frame]:
    return [Frame(i, 1.0 + i, LINKTYPE_RAW, p) for i, p in enumerate(packets, 1)]


@pytest.mark.parametrize("version", [4, 6])
def test_parse_packet_reassembles_and_numbers_with_the_last_fragment(version: int) -> None:
    payload = bytes(range(256)) * 16
    if version == 4:
        packets = ipv4_fragments(*V4, 17, udp_segment(40000, 2122, payload), 77, 1500)
    else:
        l4 = udp6_segment(V6[0], 40000, V6[1], 2122, payload)
        packets = ipv6_fragments(*V6, 17, l4, 0x01020304, 1500)
    assert len(packets) == 3
    frames = _frames([packets[2], packets[0], packets[1]])
    reassembler = Reassembler()
    parsed = [parse_packet(f, reassembler) for f in frames]
    assert [p.proto for p in parsed if p] == ["fragment", "fragment", "udp"]
    whole = parsed[2]
    assert whole is not None and whole.payload == payload
    assert (whole.number, whole.time, whole.fragments) == (3, 4.0, (1, 2, 3))
    assert (whole.sport, whole.dport) == (40000, 2122)
    # Without a reassembler, no fragment is ever a (partial) datagram.
    assert {p.proto for f in frames if (p := parse_packet(f))} == {"fragment"}


def test_ipv6_extension_headers_before_and_after_the_fragment_header() -> None:
    payload = b"rudp" * 500
    udp = udp6_segment(V6[0], 40000, V6[1], 2122, payload)
    dest_opts = bytes([17, 0]) + bytes(6)  # next header UDP, 8 bytes of padding options
    fragmentable = dest_opts + udp
    hop_by_hop = bytes([IPPROTO_FRAGMENT, 0]) + bytes(6)
    packets = []
    step = 1200
    for start in range(0, len(fragmentable), step):
        piece = fragmentable[start : start + step]
        more = 1 if start + step < len(fragmentable) else 0
        frag = struct.pack("!BBHI", 60, 0, start | more, 99)  # first header after it: dest opts
        packets.append(ipv6(*V6, 0, hop_by_hop + frag + piece))
    reassembler = Reassembler()
    parsed = [parse_packet(f, reassembler) for f in _frames(packets)]
    whole = parsed[-1]
    assert whole is not None and whole.proto == "udp" and whole.payload == payload
    assert all(p is not None and p.proto == "fragment" for p in parsed[:-1])


def test_an_atomic_ipv6_fragment_is_a_whole_datagram() -> None:
    udp = udp6_segment(V6[0], 40000, V6[1], 2122, b"whole")
    packet = ipv6(*V6, IPPROTO_FRAGMENT, struct.pack("!BBHI", 17, 0, 0, 5) + udp)
    (frame,) = _frames([packet])
    parsed = parse_packet(frame, Reassembler())
    assert parsed is not None and parsed.proto == "udp" and parsed.payload == b"whole"
    assert parsed.fragments == ()
