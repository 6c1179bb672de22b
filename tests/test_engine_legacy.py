"""An original client (SYN without payload) gets exactly the original sender, also under loss.

The server is watched from the outside, datagram by datagram, on a seeded
lossy network in virtual time: every DATA chunk it sends lies within five of
the highest ACK it has received (never more than the original window in
flight), no resend burst carries the same chunk twice (the doubled base after
a timeout is for negotiated sessions only), chunks are at most 500 bytes and
numbered from 1, and the FIN is N+1.
"""

from __future__ import annotations

import itertools
import random

import pytest

from stacklab.sim.impairment import Impairment
from stacklab.sim.network import C2S, S2C, SimNetwork
from stacklab.transport.client import ClientSession
from stacklab.transport.events import CommandReceived, Timeout
from stacklab.transport.options import ORIGINAL, OptionLimits, TransferOptions
from stacklab.transport.recovery import LEGACY_MAX_RTO
from stacklab.transport.server import ServerSession
from stacklab.wire import ORIGINAL_CHUNK_SIZE, ORIGINAL_MAX_WINDOW, RUDP_HEADER, RUDP_HEADER_LEN

pytestmark = pytest.mark.timeout(120)

COMMAND = "FETCH http://127.0.0.1:8080/test_file.txt"
SIZE = 30_123  # 61 chunks, the last one short


class Watch:
    """What the server sent, checked against the original's rules as it happens."""

    def __init__(self) -> None:
        self.acked = 0  # highest cumulative ACK of data the server has received
        self.max_in_flight = 0
        self.data_sent = 0
        self.resends = 0
        self.seen: set[int] = set()
        self.fin: int | None = None
        self.timeouts = 0

    def client_ack(self, data: bytes) -> None:
        _, ack, flag, _ = RUDP_HEADER.unpack_from(data, 0)
        if flag == b"A" and self.seen:  # an ACK of data (the client sends none before)
            self.acked = max(self.acked, ack)

    def server_burst(self, burst: list[bytes]) -> None:
        in_burst: set[int] = set()
        for data in burst:
            seq, _, flag, length = RUDP_HEADER.unpack_from(data, 0)
            if flag == b"D":
                assert 1 <= length <= ORIGINAL_CHUNK_SIZE
                assert seq not in in_burst, f"chunk {seq} sent twice in one burst"
                in_burst.add(seq)
                # chunks acked+1 .. seq are outstanding at least
                in_flight = seq - self.acked
                assert 1 <= in_flight <= ORIGINAL_MAX_WINDOW, (seq, self.acked)
                self.max_in_flight = max(self.max_in_flight, in_flight)
                self.data_sent += 1
                self.resends += seq in self.seen
                self.seen.add(seq)
            elif flag == b"F":
                assert length == len(data) - RUDP_HEADER_LEN == 0
                self.resends += seq in self.seen
                self.seen.add(seq)
                self.fin = seq


def run_legacy(seed: int, loss: float) -> tuple[Watch, ServerSession, ClientSession, bytes]:
    """One original-client transfer over ``loss`` each way, driven to its end in virtual time."""
    rng = random.Random(seed)
    content = rng.randbytes(SIZE)
    link = Impairment(loss=loss, delay_min=0.005, delay_max=0.02)
    net = SimNetwork(link, link, random.Random(seed * 2), random.Random(seed * 2 + 1))
    server = ServerSession(OptionLimits(), 8, min_rto=0.2)
    client = ClientSession(COMMAND, None, min_rto=0.2)  # None: an empty SYN, the original client
    watch = Watch()
    now = 0.0
    client.start(now)
    for _ in range(200_000):
        while (ev := server.next_event()) is not None:
            if isinstance(ev, CommandReceived):
                server.provide_content(content, now)
            watch.timeouts += isinstance(ev, Timeout)
        while client.next_event() is not None:
            pass
        for data in client.datagrams_to_send(now):
            net.send(C2S, data, now)
        burst = server.datagrams_to_send(now)
        watch.server_burst(burst)
        for data in burst:
            net.send(S2C, data, now)
        if (server.done or server.failed) and (client.done or client.failed):
            break
        candidates = [
            t
            for t in (
                net.next_delivery_time(),
                None if client.done or client.failed else client.get_timer(),
                None if server.done or server.failed else server.get_timer(),
            )
            if t is not None
        ]
        if not candidates:
            break
        now = max(now, min(candidates))
        t_net = net.next_delivery_time()
        if t_net is not None and t_net <= now:
            _, direction, data = net.pop_delivery()
            if direction == C2S:
                watch.client_ack(data)
                server.receive_datagram(data, now)
            else:
                client.receive_datagram(data, now)
        elif client.get_timer() is not None and client.get_timer() <= now:  # type: ignore[operator]
            client.handle_timer(now)
        else:
            server.handle_timer(now)
    else:
        pytest.fail("the transfer did not end")
    return watch, server, client, content


@pytest.mark.parametrize("seed", range(6))
def test_an_original_client_never_sees_more_than_five_in_flight_nor_a_doubled_base(
    seed: int,
) -> None:
    watch, server, client, content = run_legacy(seed, loss=0.2)
    assert server.options == ORIGINAL and not server.negotiated
    assert not server.options.duplicate_base_on_timeout
    sender = server.sender
    assert sender is not None
    # the run went through losses and timeouts, so the rules were exercised
    assert watch.resends > 0 and watch.timeouts > 0
    assert watch.max_in_flight == ORIGINAL_MAX_WINDOW  # the window did reach 5, never more
    assert sender.retransmissions == watch.resends  # each resend went out once
    if client.done:
        assert client.content == content
        assert watch.fin == -(-SIZE // ORIGINAL_CHUNK_SIZE) + 1  # FIN N+1
    else:
        assert client.failed is not None or server.failed is not None


def test_a_negotiated_session_does_double_the_base_after_a_timeout() -> None:
    """The same watch on a negotiated session sees the doubled base: the check can fail."""
    server = ServerSession(OptionLimits())
    server.adopt(
        100,
        TransferOptions(duplicate_base_on_timeout=True),
        True,
        0,
        b"",
        proven=True,
        now=0.0,
    )
    server.receive_datagram(RUDP_HEADER.pack(101, 0, b"D", len(COMMAND)) + COMMAND.encode(), 0.0)
    server.provide_content(b"x" * 2000, 0.0)
    server.datagrams_to_send(0.0)
    timer = server.get_timer()
    assert timer is not None
    server.handle_timer(timer)
    watch = Watch()
    with pytest.raises(AssertionError, match="sent twice in one burst"):
        watch.server_burst(server.datagrams_to_send(timer))


def _send_gaps(negotiated: bool) -> list[float]:
    """Seconds between the server's sends to a client that never acknowledges data."""
    server = ServerSession(OptionLimits())
    options = TransferOptions() if negotiated else ORIGINAL
    server.adopt(100, options, negotiated, 0, b"", proven=True, now=0.0)
    server.receive_datagram(RUDP_HEADER.pack(101, 0, b"D", len(COMMAND)) + COMMAND.encode(), 0.0)
    server.provide_content(b"x" * 2000, 0.0)
    sends = [0.0] if server.datagrams_to_send(0.0) else []
    now = 0.0
    while not server.failed and (timer := server.get_timer()) is not None:
        now = timer
        server.handle_timer(now)
        if server.datagrams_to_send(now):
            sends.append(now)
    assert server.failed, "a client that never answers must end the transfer"
    return [b - a for a, b in itertools.pairwise(sends)]


def test_an_original_client_never_waits_past_its_five_seconds() -> None:
    """The original client saves a partial file after 5 s of silence: legacy backoff stops at 3 s."""
    legacy = _send_gaps(negotiated=False)
    assert max(legacy) <= LEGACY_MAX_RTO < 5.0
    assert legacy.count(LEGACY_MAX_RTO) >= 2  # the backoff did reach the cap
    # A stacklab client has no such limit: its sender backs off further.
    assert max(_send_gaps(negotiated=True)) > LEGACY_MAX_RTO
