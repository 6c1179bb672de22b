"""Hypothesis on every parser: bad input gives the documented error, never a crash or state.

Parsers and their documented failure: ``unpack_rudp`` -> ``RudpDecodeError``;
the RUDP server session and the stateless handshake -> dropped and counted;
DHCP/DNS JSON handlers -> no reply or the documented error reply, no lease;
``FrameDecoder`` -> ``FramingError``; ``CaptureReader``/``parse_packet`` ->
``CaptureError`` (or a packet / None).
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stacklab.analysis.pcapio import CaptureError, CaptureReader, parse_packet
from stacklab.config import DhcpSettings, DnsSettings, RudpSettings
from stacklab.framing import FrameDecoder, FramingError
from stacklab.services.app_rudp import RudpAppServer
from stacklab.services.dhcp import DhcpServer
from stacklab.services.dns import DnsServer
from stacklab.services.fetcher import FetchPolicy
from stacklab.transport.client import ClientSession
from stacklab.transport.handshake import Handshake, SynCookies
from stacklab.transport.options import ORIGINAL, OptionLimits
from stacklab.transport.server import ServerSession
from stacklab.wire import RUDP_HEADER, RudpDecodeError, pack_rudp, rudp_length_ok, unpack_rudp

from conftest import SEED_NAMES, seed_capture, wait_for

pytestmark = pytest.mark.timeout(120)

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CLIENT = ("192.0.2.1", 5000)


def malformed_rudp() -> st.SearchStrategy[bytes]:
    """A datagram whose header is short or whose length field lies."""
    short = st.binary(max_size=10)
    lying = st.tuples(
        st.integers(0, 2**32 - 1),
        st.integers(0, 2**32 - 1),
        st.sampled_from([b"S", b"A", b"D", b"F", b"X", b"\x00"]),
        st.integers(0, 65535),
        st.binary(max_size=64),
    ).map(lambda t: RUDP_HEADER.pack(*t[:4]) + t[4])
    return st.one_of(short, lying.filter(lambda d: not rudp_length_ok(d)))


# -- RUDP --------------------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=80))
def test_unpack_rudp_raises_only_its_documented_error(data: bytes) -> None:
    try:
        header, payload = unpack_rudp(data)
    except RudpDecodeError:
        assert len(data) < 11
    else:
        assert len(payload) == min(header.length, len(data) - 11)


def sessions_in_every_state() -> list[ServerSession]:
    listen = ServerSession(trace=False)
    hs = Handshake(OptionLimits(), ORIGINAL, SynCookies(b"s" * 32))
    adopted = hs.accept_command(pack_rudp(101, 0, b"D", b"FETCH x"), CLIENT, 0.0, ServerSession)
    assert adopted is not None
    sending = hs.accept_command(pack_rudp(101, 0, b"D", b"FETCH x"), CLIENT, 0.0, ServerSession)
    assert sending is not None
    sending.receive_datagram(pack_rudp(101, 0, b"D", b"FETCH x"), 0.0)
    sending.provide_content(b"y" * 5000, 0.0)
    sending.datagrams_to_send(0.0)
    return [listen, adopted, sending]


@FUZZ
@given(st.lists(malformed_rudp(), max_size=20))
def test_malformed_datagrams_are_counted_and_change_nothing(datagrams: list[bytes]) -> None:
    for session in sessions_in_every_state():
        before = (session.state, session.client_isn, session.command, session.sender)
        for data in datagrams:
            session.receive_datagram(data, 1.0)
        assert (session.state, session.client_isn, session.command, session.sender) == before
        assert session.stats["malformed"] == len(datagrams)


@FUZZ
@given(st.lists(st.binary(max_size=60), max_size=20), st.floats(0, 1e6))
def test_any_datagram_in_any_state_never_raises(datagrams: list[bytes], now: float) -> None:
    for session in sessions_in_every_state():
        for data in datagrams:
            session.receive_datagram(data, now)
            session.datagrams_to_send(now)
            timer = session.get_timer()
            if timer is not None:
                session.handle_timer(max(now, timer))
    client = ClientSession("FETCH x", None)
    client.start(0.0)
    for data in datagrams:
        client.receive_datagram(data, now)
        client.datagrams_to_send(now)


@FUZZ
@given(malformed_rudp())
def test_the_stateless_handshake_allocates_nothing_for_malformed_input(data: bytes) -> None:
    hs = Handshake(OptionLimits(), ORIGINAL, SynCookies(b"s" * 32))
    made: list[ServerSession] = []

    def factory() -> ServerSession:
        made.append(ServerSession(trace=False))
        return made[-1]

    assert hs.answer_syn(data, CLIENT, 0.0) is None
    assert hs.accept_command(data, CLIENT, 0.0, factory) is None
    assert made == [] and hs.profiles == [ORIGINAL]


def test_the_rudp_server_loop_survives_garbage_and_allocates_no_session() -> None:
    server = RudpAppServer(
        RudpSettings(host="127.0.0.1", port=0),
        FetchPolicy(allow=("origin.test:80",)),
        fetcher=lambda url, policy: b"ok",
    )
    server.start()
    try:
        rng = random.Random(21)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as junk:
            sent = 0
            for _ in range(2000):
                size = rng.randrange(0, 64)
                data = rng.randbytes(size)
                if size >= 11 and rudp_length_ok(data):
                    continue  # well formed by chance: not what this test is about
                junk.sendto(data, server.address)
                sent += 1
            for flag in (b"S", b"D", b"A", b"F"):  # well-formed but for no session
                junk.sendto(pack_rudp(1, 0, flag, length=3) + b"abcdef", server.address)
                sent += 1
        wait_for(lambda: sum(server.stats.values()) >= sent, what="every junk datagram counted")
        assert not server.sessions
        assert server.stats["errors"] == 0 and server.stats["sessions"] == 0
    finally:
        server.stop()


# -- DHCP and DNS JSON --------------------------------------------------------------------


@pytest.fixture(scope="module")
def dhcp() -> Iterator[DhcpServer]:
    server = DhcpServer(DhcpSettings(host="127.0.0.1", port=0, lease_db=":memory:"))
    server.start()
    yield server
    server.stop()


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(["type", "client_id", "requested_ip", "domain", "x"]),
            children,
            max_size=4,
        )
    ),
    max_leaves=10,
)


@FUZZ
@given(st.one_of(st.binary(max_size=200), JSONISH.map(lambda v: repr(v).encode())))
def test_dhcp_drops_what_it_cannot_parse_and_leases_nothing(dhcp: DhcpServer, data: bytes) -> None:
    assert dhcp.table is not None
    before = len(dhcp.table.leases())
    if data == b"DISCOVER":
        return
    assert dhcp.handle_datagram(data, CLIENT) is None or data.lstrip()[:1] == b"{"
    if not data.lstrip().startswith(b"{"):
        assert len(dhcp.table.leases()) == before


@FUZZ
@given(JSONISH)
def test_dhcp_json_messages_never_raise(dhcp: DhcpServer, value: object) -> None:
    import json

    data = json.dumps(value).encode()
    before = len(dhcp.table.leases()) if dhcp.table is not None else 0
    reply = dhcp.handle_datagram(data, CLIENT)
    if not (isinstance(value, dict) and value.get("type") in ("DISCOVER", "REQUEST", "RELEASE")):
        assert reply is None  # not a message it knows: dropped, no lease
        assert dhcp.table is not None and len(dhcp.table.leases()) == before


@FUZZ
@given(st.one_of(st.binary(max_size=300), JSONISH.map(lambda v: repr(v).encode())))
def test_dns_never_raises_and_answers_json_with_a_documented_status(data: bytes) -> None:
    import json

    server = DnsServer(DnsSettings(host="127.0.0.1", port=0), {"a.local": "127.0.0.3"})
    reply = server.handle_datagram(data, CLIENT)
    if reply is not None and reply[:1] == b"{":
        assert json.loads(reply)["status"] in ("SUCCESS", "NOT_FOUND", "ERROR")


# -- framing -------------------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=400), st.integers(1, 50), st.integers(0, 1000))
def test_frame_decoder_gives_frames_or_framing_error(data: bytes, step: int, limit: int) -> None:
    decoder = FrameDecoder(limit)
    got = b""
    try:
        for i in range(0, len(data), step):
            for frame in decoder.feed(data[i : i + step]):
                assert len(frame.body) <= limit
                got += frame.body
    except FramingError:
        with pytest.raises(FramingError):
            decoder.feed(b"0")  # a broken decoder stays broken
    assert len(got) <= len(data)


# -- captures ------------------------------------------------------------------------------


def read_all(path: str) -> int:
    """Every frame and packet of a capture; the count, or CaptureError (documented)."""
    n = 0
    with CaptureReader(path) as reader:
        for frame in reader:
            parse_packet(frame)
            n += 1
    return n


@pytest.fixture(scope="module")
def scratch() -> Iterator[str]:
    fd, path = tempfile.mkstemp(suffix=".pcapng")
    os.close(fd)
    yield path
    os.unlink(path)


@FUZZ
@given(st.binary(max_size=600))
def test_capture_reader_on_random_bytes(scratch: str, data: bytes) -> None:
    Path(scratch).write_bytes(data)
    with contextlib.suppress(CaptureError):
        read_all(scratch)


@FUZZ
@given(
    st.sampled_from(SEED_NAMES),
    st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), max_size=8),
    st.floats(0, 1),
)
def test_capture_reader_on_mutated_seed_captures(
    scratch: str, name: str, flips: list[tuple[float, int]], cut: float
) -> None:
    original = seed_capture(name).read_bytes()
    data = bytearray(original)
    for where, value in flips:
        data[int(where * len(data))] = value
    data = data[: max(1, int(cut * len(data)))] if cut < 1 else data
    Path(scratch).write_bytes(bytes(data))
    with contextlib.suppress(CaptureError):
        read_all(scratch)
