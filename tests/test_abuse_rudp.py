"""Stateless SYN handling, SYN cookies and the anti-amplification bound of the RUDP server.

The sans-I/O part steps a virtual clock; the end-to-end part measures, over
loopback, what an address that proves nothing can draw from the server:
bytes sent to it divided by bytes received from it.
"""

from __future__ import annotations

import random
import socket
from collections.abc import Iterator
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stacklab.config import RudpSettings
from stacklab.services.app_rudp import RudpAppServer
from stacklab.services.fetcher import FetchError, FetchPolicy
from stacklab.services.rudp_client import fetch_rudp
from stacklab.transport.handshake import (
    AMPLIFICATION_FACTOR,
    COOKIE_SLOT_S,
    UNPROVEN_DATA_DATAGRAMS,
    Handshake,
    SynCookies,
)
from stacklab.transport.integrity import add_trailer
from stacklab.transport.options import (
    NEGOTIATED_BASE,
    ORIGINAL,
    STACKLAB_DEFAULT,
    OptionLimits,
    TransferOptions,
    encode_options,
)
from stacklab.transport.server import ServerSession, ServerState
from stacklab.wire import RUDP_CRC_TRAILER_LEN, RUDP_HEADER, pack_rudp

from conftest import wait_for

pytestmark = pytest.mark.timeout(60)

SECRET = bytes(range(32))
CLIENT = ("192.0.2.7", 40000)
BIG = random.Random(11).randbytes(200_000)


def make_handshake() -> Handshake:
    return Handshake(OptionLimits(), ORIGINAL, SynCookies(SECRET))


def negotiated_syn(isn: int, options: TransferOptions = STACKLAB_DEFAULT) -> bytes:
    body = encode_options(options)
    return add_trailer(RUDP_HEADER.pack(isn, 0, b"S", len(body) + RUDP_CRC_TRAILER_LEN) + body)


def command(isn: int, cookie: int, text: bytes = b"FETCH http://origin.test/big") -> bytes:
    return pack_rudp((isn + 1) & 0xFFFFFFFF, cookie, b"D", text)


def factory() -> ServerSession:
    return ServerSession(OptionLimits(), trace=False)


# -- sans-I/O: the handshake ----------------------------------------------------------


def test_a_plain_syn_gets_the_wire_md_syn_ack_and_no_state() -> None:
    hs = make_handshake()
    assert hs.answer_syn(pack_rudp(100, 0, b"S"), CLIENT, 0.0) == pack_rudp(0, 101, b"A")
    assert hs.answer_syn(pack_rudp(0xFFFFFFFF, 0, b"S"), CLIENT, 0.0) == pack_rudp(0, 0, b"A")
    assert hs.profiles == [ORIGINAL]  # nothing remembered for a plain SYN


def test_a_negotiated_syn_gets_a_cookie_the_command_must_echo() -> None:
    hs = make_handshake()
    answer = hs.answer_syn(negotiated_syn(7), CLIENT, 10.0)
    assert answer is not None
    cookie, ack, flag, _ = RUDP_HEADER.unpack_from(answer)
    assert flag == b"A" and ack == 8 and cookie != 0
    session = hs.accept_command(command(7, cookie), CLIENT, 11.0, factory)
    assert session is not None and session.proven and session.negotiated
    assert session.options == OptionLimits().clamp(STACKLAB_DEFAULT)
    assert session.state is ServerState.SYN_RECEIVED and session.client_isn == 7


@pytest.mark.parametrize(
    ("addr", "isn", "delta", "why"),
    [
        (("192.0.2.8", 40000), 7, 1.0, "another address"),
        (("192.0.2.7", 40001), 7, 1.0, "another port"),
        (CLIENT, 8, 1.0, "another ISN"),
        (CLIENT, 7, 2 * COOKIE_SLOT_S + 1, "expired"),
    ],
)
def test_a_cookie_is_bound_to_address_isn_and_time(
    addr: tuple[str, int], isn: int, delta: float, why: str
) -> None:
    hs = make_handshake()
    answer = hs.answer_syn(negotiated_syn(7), CLIENT, 0.0)
    assert answer is not None
    cookie = RUDP_HEADER.unpack_from(answer)[0]
    assert hs.accept_command(command(isn, cookie), addr, delta, factory) is None, why
    assert hs.stats.bad_cookies == 1
    # ... while the right one, in time, is accepted (so the refusal was for the reason given)
    assert hs.accept_command(command(7, cookie), CLIENT, COOKIE_SLOT_S - 1, factory) is not None


def test_a_cookie_from_another_server_key_is_refused() -> None:
    answer = Handshake(OptionLimits(), ORIGINAL, SynCookies(b"k" * 32)).answer_syn(
        negotiated_syn(7), CLIENT, 0.0
    )
    assert answer is not None
    cookie = RUDP_HEADER.unpack_from(answer)[0]
    assert make_handshake().accept_command(command(7, cookie), CLIENT, 0.0, factory) is None


def test_a_command_without_cookie_is_a_legacy_unproven_session() -> None:
    hs = make_handshake()
    session = hs.accept_command(command(100, 0), CLIENT, 0.0, factory)
    assert session is not None and not session.proven and not session.negotiated
    assert session.options == ORIGINAL and session.unproven_budget == UNPROVEN_DATA_DATAGRAMS


def test_a_syn_ack_never_exceeds_the_factor() -> None:
    hs = make_handshake()
    tiny = add_trailer(RUDP_HEADER.pack(5, 0, b"S", 2 + RUDP_CRC_TRAILER_LEN) + b"{}")
    answer = hs.answer_syn(tiny, CLIENT, 0.0)
    assert answer is not None
    # {} asks for the original options: the empty SYN-ACK (with a cookie) answers it
    assert len(answer) == 11 and len(answer) <= AMPLIFICATION_FACTOR * len(tiny)
    assert RUDP_HEADER.unpack_from(answer)[0] != 0
    small = add_trailer(RUDP_HEADER.pack(5, 0, b"S", 14 + 4) + b'{"integrity":1}'[:14])
    assert hs.answer_syn(small, CLIENT, 0.0) is None  # not JSON: dropped, not answered


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120), st.integers(0, 2**32 - 1))
def test_any_datagram_gets_at_most_three_times_its_size(data: bytes, now: int) -> None:
    hs = make_handshake()
    answer = hs.answer_syn(data, CLIENT, float(now))
    assert answer is None or len(answer) <= AMPLIFICATION_FACTOR * len(data)
    assert len(hs.profiles) <= 2


@settings(max_examples=200, deadline=None)
@given(
    chunk=st.integers(1, 2037),
    window=st.integers(1, 4096),
    integrity=st.booleans(),
    ack_every=st.integers(1, 64),
)
def test_negotiated_answers_stay_within_the_factor(
    chunk: int, window: int, integrity: bool, ack_every: int
) -> None:
    hs = make_handshake()
    syn = negotiated_syn(3, TransferOptions(chunk, window, integrity, ack_every))
    answer = hs.answer_syn(syn, CLIENT, 0.0)
    assert answer is not None and len(answer) <= AMPLIFICATION_FACTOR * len(syn)


def test_the_profile_table_is_bounded_and_falls_back_to_the_original_options() -> None:
    hs = make_handshake()
    for chunk in range(1, 400):
        hs.answer_syn(negotiated_syn(1, TransferOptions(chunk, 5, False, 1)), CLIENT, 0.0)
    assert len(hs.profiles) == 256
    assert hs.stats.table_full == 399 - 255
    answer = hs.answer_syn(negotiated_syn(1, TransferOptions(1999, 5, False, 1)), CLIENT, 0.0)
    assert answer is not None and len(answer) == 11  # empty: the client falls back
    cookie = RUDP_HEADER.unpack_from(answer)[0]
    session = hs.accept_command(command(1, cookie), CLIENT, 0.0, factory)
    assert session is not None and session.proven and session.options == ORIGINAL


def test_profiles_unused_for_two_cookie_slots_are_evicted() -> None:
    """255 distinct offers used to fill the table for good: every later client lost its
    options, integrity included.  Now a profile no valid cookie can name is reused."""
    hs = make_handshake()
    for chunk in range(1, 256):
        hs.answer_syn(negotiated_syn(1, TransferOptions(chunk, 5, False, 1)), CLIENT, 0.0)
    assert len(hs.profiles) == 256
    # still within the cookies' lifetime: nothing may be evicted, the newcomer falls back
    wanted = TransferOptions(1400, 64, True, 8)
    early = hs.answer_syn(negotiated_syn(7, wanted), CLIENT, 59.0)
    assert early is not None and len(early) == 11 and hs.stats.evicted == 0
    # two cookie slots later no valid cookie can name them: the least recently used goes
    late = hs.answer_syn(negotiated_syn(7, wanted), CLIENT, 61.0)
    assert late is not None and len(late) > 11 and hs.stats.evicted == 1
    cookie = RUDP_HEADER.unpack_from(late)[0]
    session = hs.accept_command(command(7, cookie), CLIENT, 61.0, factory)
    assert (
        session is not None
        and session.proven
        and session.options
        == replace(NEGOTIATED_BASE, chunk_size=1400, max_window=64, integrity=True, ack_every=8)
    )
    assert len(hs.profiles) == 256  # still bounded


def test_a_cookie_is_bound_to_the_option_set_its_profile_names() -> None:
    cookies = SynCookies(SECRET)
    cookie = cookies.make(CLIENT, 5, 3, 0.0, b"options A")
    assert cookies.check(cookie, CLIENT, 5, 1.0, b"options A") == 3
    assert cookies.check(cookie, CLIENT, 5, 1.0, b"options B") is None


def run_legacy_victim(session: ServerSession, content: bytes) -> tuple[int, int]:
    """Drive a legacy session nobody answers on a virtual clock; (DATA/FIN sent, bytes sent)."""
    now = 0.0
    session.receive_datagram(command(100, 0), now)
    sent = session.datagrams_to_send(now)
    session.provide_content(content, now)
    data_sent = 0
    total = sum(map(len, sent))
    for _ in range(100):
        for datagram in session.datagrams_to_send(now):
            total += len(datagram)
            data_sent += datagram[8:9] in (b"D", b"F")
        timer = session.get_timer()
        if timer is None:
            break
        now = max(now, timer)
        session.handle_timer(now)
    return data_sent, total


@pytest.mark.parametrize("content", [BIG, b"", b"x" * 10])
def test_an_unproven_legacy_session_spends_its_budget_then_gives_up(content: bytes) -> None:
    session = make_handshake().accept_command(command(100, 0), CLIENT, 0.0, factory)
    assert session is not None
    data_sent, total = run_legacy_victim(session, content)
    assert data_sent == UNPROVEN_DATA_DATAGRAMS
    assert session.failed is not None and "unproven" in session.failed
    assert total <= 11 + UNPROVEN_DATA_DATAGRAMS * 511


def test_an_ack_of_data_lifts_the_budget() -> None:
    session = make_handshake().accept_command(command(100, 0), CLIENT, 0.0, factory)
    assert session is not None
    session.receive_datagram(command(100, 0), 0.0)
    session.datagrams_to_send(0.0)
    session.provide_content(BIG, 0.0)
    now, chunks = 0.0, 0
    while not session.done:
        out = session.datagrams_to_send(now)
        for datagram in out:
            seq, _, flag, _ = RUDP_HEADER.unpack_from(datagram)
            chunks += flag == b"D"
            session.receive_datagram(pack_rudp(0, seq, b"A"), now)
        now += 0.001
        assert chunks < 2000
    assert session.proven and chunks == -(-len(BIG) // 500)


# -- end to end: what an unproven address can draw --------------------------------------


def fake_fetch(url: str, policy: FetchPolicy) -> bytes:
    if url == "http://origin.test/big":
        return BIG
    raise FetchError("HTTP Error 404: File not found")


@pytest.fixture
def server() -> Iterator[RudpAppServer]:
    srv = RudpAppServer(
        RudpSettings(host="127.0.0.1", port=0, initial_rto=0.05, min_rto=0.02),
        FetchPolicy(allow=("origin.test:80",)),
        fetcher=fake_fetch,
    )
    srv.start()
    yield srv
    srv.stop()


def drain(sock: socket.socket) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(sock.recv(65535))
        except BlockingIOError:
            return out


def test_measured_amplification_of_a_legacy_client_that_never_acks(server: RudpAppServer) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as victim:
        victim.bind(("127.0.0.1", 0))
        sent = [pack_rudp(100, 0, b"S"), command(100, 0)]
        for datagram in sent:
            victim.sendto(datagram, server.address)
        wait_for(lambda: server.stats["failed"] >= 1)
        victim.setblocking(False)
        got = drain(victim)
    data = [d for d in got if d[8:9] in (b"D", b"F")]
    assert len(data) == UNPROVEN_DATA_DATAGRAMS
    assert all(d[:4] == (1).to_bytes(4, "big") for d in data)  # one chunk and its resends
    bound = 2 * 11 + UNPROVEN_DATA_DATAGRAMS * 511  # SYN-ACK, command ACK, 6 copies of chunk 1
    assert sum(map(len, got)) <= bound
    # The factor for this 50-byte handshake; whatever the file size, it stays this bounded.
    assert sum(map(len, got)) / sum(map(len, sent)) <= bound / 50
    assert not server.sessions


def test_spoofed_commands_with_bad_cookies_allocate_nothing(server: RudpAppServer) -> None:
    rng = random.Random(3)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as attacker:
        attacker.bind(("127.0.0.1", 0))
        for _ in range(200):
            attacker.sendto(command(rng.randrange(2**32), rng.randrange(1, 2**32)), server.address)
        attacker.sendto(negotiated_syn(9), server.address)
        wait_for(lambda: server.stats["syn_answered"] >= 1)
        wait_for(lambda: server.stats["bad_cookie"] >= 200)
        assert not server.sessions
        attacker.setblocking(False)
        replies = drain(attacker)
    assert len(replies) == 1 and len(replies[0]) <= AMPLIFICATION_FACTOR * len(negotiated_syn(9))


def test_a_flood_of_syns_allocates_no_session_and_clients_are_served(
    server: RudpAppServer,
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as flood:
        for isn in range(3000):
            flood.sendto(pack_rudp(isn, 0, b"S"), server.address)
            if isn % 500 == 0:
                flood.sendto(negotiated_syn(isn), server.address)
        assert fetch_rudp(server.address, "http://origin.test/big") == BIG
        assert fetch_rudp(server.address, "http://origin.test/big", legacy=True) == BIG
    wait_for(lambda: not server.sessions)
    assert server.stats["sessions"] == 2 and server.handshake.stats.proven == 1
    assert server.stats["syn_answered"] >= 2
