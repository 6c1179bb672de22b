"""Server and client sessions: the original exchange byte for byte, negotiation, and transfers
over a seeded in-memory network with a virtual clock."""

from __future__ import annotations

import hashlib
import random
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stacklab.transport.client import ClientSession, ClientState
from stacklab.transport.events import (
    CommandReceived,
    ConnectionClosed,
    Event,
    GaveUp,
    IntegrityFailure,
    TransferComplete,
)
from stacklab.transport.integrity import add_trailer
from stacklab.transport.options import (
    NEGOTIATED_BASE,
    ORIGINAL,
    STACKLAB_DEFAULT,
    OptionLimits,
    TransferOptions,
    decode_options,
    encode_options,
)
from stacklab.transport.server import ServerSession, ServerState
from stacklab.wire import RUDP_HEADER, pack_rudp

CMD = b"FETCH http://127.0.0.1:8080/test_file.txt"


def drain(session: ServerSession | ClientSession) -> list[Event]:
    out = []
    while (e := session.next_event()) is not None:
        out.append(e)
    return out


# -- server, original client ---------------------------------------------------


def test_server_speaks_the_original_exchange_byte_for_byte() -> None:
    s = ServerSession()
    s.receive_datagram(pack_rudp(100, 0, b"S"), 0.0)
    assert s.datagrams_to_send(0.0) == [pack_rudp(0, 101, b"A")]
    s.receive_datagram(pack_rudp(101, 0, b"D", CMD), 0.1)
    assert s.datagrams_to_send(0.1) == [pack_rudp(0, 101, b"A")]
    assert [e for e in drain(s) if isinstance(e, CommandReceived)] == [
        CommandReceived(0.1, CMD.decode())
    ]
    content = bytes(i % 251 for i in range(1200))
    s.provide_content(content, 0.2)
    assert s.datagrams_to_send(0.2) == [pack_rudp(1, 0, b"D", content[:500])]
    s.receive_datagram(pack_rudp(0, 1, b"A"), 0.3)
    assert s.datagrams_to_send(0.3) == [
        pack_rudp(2, 0, b"D", content[500:1000]),
        pack_rudp(3, 0, b"D", content[1000:]),
    ]
    s.receive_datagram(pack_rudp(0, 3, b"A"), 0.4)
    assert s.datagrams_to_send(0.4) == [pack_rudp(4, 0, b"F")]
    s.receive_datagram(pack_rudp(0, 4, b"A"), 0.5)
    assert s.done and s.state is ServerState.CLOSED
    assert isinstance(drain(s)[-1], ConnectionClosed)


def test_original_client_window_is_capped_at_five() -> None:
    s = ServerSession()
    s.receive_datagram(pack_rudp(100, 0, b"S"), 0.0)
    s.receive_datagram(pack_rudp(101, 0, b"D", CMD), 0.0)
    s.provide_content(bytes(500 * 30), 0.0)
    s.datagrams_to_send(0.0)
    for ack in range(1, 12):
        s.receive_datagram(pack_rudp(0, ack, b"A"), ack / 10)
        s.datagrams_to_send(ack / 10)
    assert s.window == 5


def test_duplicate_syn_and_command_are_answered_again_but_run_once() -> None:
    s = ServerSession()
    s.receive_datagram(pack_rudp(100, 0, b"S"), 0.0)
    s.receive_datagram(pack_rudp(100, 0, b"S"), 0.5)
    assert s.datagrams_to_send(0.5) == [pack_rudp(0, 101, b"A")] * 2
    s.receive_datagram(pack_rudp(101, 0, b"D", CMD), 1.0)
    s.receive_datagram(pack_rudp(101, 0, b"D", CMD), 1.5)
    assert s.datagrams_to_send(1.5) == [pack_rudp(0, 101, b"A")] * 2
    assert len([e for e in drain(s) if isinstance(e, CommandReceived)]) == 1
    s.provide_content(b"x", 2.0)
    s.receive_datagram(pack_rudp(101, 0, b"D", CMD), 2.1)  # still re-ACKed while sending
    assert pack_rudp(0, 101, b"A") in s.datagrams_to_send(2.1)


def test_command_without_syn_and_malformed_input_are_dropped_and_counted() -> None:
    s = ServerSession()
    s.receive_datagram(pack_rudp(101, 0, b"D", CMD), 0.0)
    s.receive_datagram(b"short", 0.0)
    s.receive_datagram(pack_rudp(100, 0, b"S", length=9), 0.0)  # length lies
    assert s.datagrams_to_send(0.0) == []
    assert s.stats["unexpected"] == 1
    assert s.stats["malformed"] == 2
    assert s.state is ServerState.LISTEN


def test_server_gives_up_on_a_client_that_never_sends_its_command() -> None:
    s = ServerSession(handshake_timeout=5.0)
    s.receive_datagram(pack_rudp(100, 0, b"S"), 1.0)
    assert s.get_timer() == 6.0
    s.handle_timer(5.9)
    assert s.failed is None
    s.handle_timer(6.0)
    assert s.failed is not None and "no command" in s.failed
    assert isinstance(drain(s)[-1], GaveUp)


# -- negotiation -----------------------------------------------------------------


def syn_with(options: TransferOptions, isn: int = 100) -> bytes:
    body = encode_options(options)
    return add_trailer(RUDP_HEADER.pack(isn, 0, b"S", len(body) + 4) + body)


def test_options_are_clamped_and_answered_in_the_syn_ack() -> None:
    s = ServerSession(OptionLimits(max_chunk=1000, max_window=32))
    s.receive_datagram(
        syn_with(TransferOptions(chunk_size=1400, max_window=500, integrity=True, ack_every=4)),
        0.0,
    )
    (syn_ack,) = s.datagrams_to_send(0.0)
    seq, ack, flag, _length = RUDP_HEADER.unpack_from(syn_ack)
    assert (seq, ack, flag) == (0, 101, b"A")
    assert decode_options(syn_ack[11:-4]) == TransferOptions(1000, 32, True, 4, True)
    # a negotiated session doubles the base after a timeout; a legacy one never does
    assert s.options.duplicate_base_on_timeout and not ORIGINAL.duplicate_base_on_timeout
    assert syn_ack == add_trailer(syn_ack[:-4])


def test_corrupted_options_get_no_answer() -> None:
    s = ServerSession()
    syn = bytearray(syn_with(STACKLAB_DEFAULT))
    syn[15] ^= 0x20
    s.receive_datagram(bytes(syn), 0.0)
    assert s.datagrams_to_send(0.0) == []
    assert s.stats["bad_crc"] == 1


@pytest.mark.parametrize(
    "body",
    [b"[]", b"{not json", b'{"chunk": true}', b'{"window": 0}', b'{"chunk": 99999}', b"\xff"],
)
def test_bad_option_bodies_are_refused(body: bytes) -> None:
    s = ServerSession()
    s.receive_datagram(add_trailer(RUDP_HEADER.pack(100, 0, b"S", len(body) + 4) + body), 0.0)
    assert s.datagrams_to_send(0.0) == []
    assert s.stats["malformed"] == 1


def test_options_round_trip_and_ignore_unknown_keys() -> None:
    assert decode_options(encode_options(STACKLAB_DEFAULT)) == STACKLAB_DEFAULT
    # missing keys take the original values, but a decoded offer is a negotiated session
    assert decode_options(b'{"v": 9, "future": [1]}') == NEGOTIATED_BASE
    assert replace(ORIGINAL, duplicate_base_on_timeout=True) == NEGOTIATED_BASE
    # the sender policy is never on the wire: both encode the same
    assert encode_options(NEGOTIATED_BASE) == encode_options(ORIGINAL)


# -- client ------------------------------------------------------------------------


def test_client_in_original_mode_speaks_the_original_exchange() -> None:
    c = ClientSession(CMD.decode(), None)
    c.start(0.0)
    assert c.datagrams_to_send(0.0) == [pack_rudp(100, 0, b"S")]
    c.receive_datagram(pack_rudp(0, 101, b"A"), 0.1)
    assert c.datagrams_to_send(0.1) == [pack_rudp(101, 0, b"D", CMD)]
    c.receive_datagram(pack_rudp(0, 101, b"A"), 0.2)
    assert c.state is ClientState.RECEIVING
    c.receive_datagram(pack_rudp(1, 0, b"D", b"hello "), 0.3)
    c.receive_datagram(pack_rudp(3, 0, b"D", b"!"), 0.3)  # out of order: discarded
    c.receive_datagram(pack_rudp(2, 0, b"D", b"world"), 0.3)
    assert c.datagrams_to_send(0.3) == [
        pack_rudp(0, 1, b"A"),
        pack_rudp(0, 1, b"A"),
        pack_rudp(0, 2, b"A"),
    ]
    c.receive_datagram(pack_rudp(3, 0, b"F"), 0.4)
    assert c.datagrams_to_send(0.4) == [pack_rudp(0, 3, b"A")]
    assert c.done and c.content == b"hello world"
    done = [e for e in drain(c) if isinstance(e, TransferComplete)]
    assert done == [TransferComplete(0.4, 11, hashlib.sha256(b"hello world").hexdigest())]
    c.receive_datagram(pack_rudp(3, 0, b"F"), 0.9)  # our FIN ACK was lost: ACK again
    assert c.datagrams_to_send(0.9) == [pack_rudp(0, 3, b"A")]


def test_client_accepts_the_byte_counting_command_ack() -> None:
    c = ClientSession(CMD.decode(), None)
    c.start(0.0)
    c.receive_datagram(pack_rudp(0, 101, b"A"), 0.1)
    c.receive_datagram(pack_rudp(0, 101 + len(CMD), b"A"), 0.2)
    assert c.state is ClientState.RECEIVING


def test_client_falls_back_when_the_server_ignores_its_options() -> None:
    c = ClientSession("FETCH x", STACKLAB_DEFAULT)
    c.start(0.0)
    (syn,) = c.datagrams_to_send(0.0)
    assert decode_options(syn[11:-4]) == STACKLAB_DEFAULT
    c.receive_datagram(pack_rudp(0, 101, b"A"), 0.1)  # an original server: empty SYN-ACK
    assert c.options == ORIGINAL
    assert c.datagrams_to_send(0.1) == [pack_rudp(101, 0, b"D", b"FETCH x")]
    # ... and says so: it asked for integrity and will not get it
    assert c.downgraded is not None and "original options" in c.downgraded
    assert c.stats["downgraded"] == 1


def test_client_that_requires_integrity_refuses_a_downgrade() -> None:
    c = ClientSession("FETCH x", STACKLAB_DEFAULT, require_integrity=True)
    c.start(0.0)
    c.datagrams_to_send(0.0)
    c.receive_datagram(pack_rudp(0, 101, b"A"), 0.1)  # original options: no integrity
    assert c.failed is not None and "integrity is required" in c.failed
    assert c.datagrams_to_send(0.1) == []  # no command goes out
    assert any(isinstance(e, GaveUp) for e in drain(c))
    # a server that grants integrity is fine
    ok = ClientSession("FETCH x", STACKLAB_DEFAULT, require_integrity=True)
    ok.start(0.0)
    ok.datagrams_to_send(0.0)
    body = encode_options(STACKLAB_DEFAULT)
    ok.receive_datagram(add_trailer(RUDP_HEADER.pack(9, 101, b"A", len(body) + 4) + body), 0.1)
    assert ok.failed is None and ok.downgraded is None and ok.state is ClientState.CMD_SENT
    with pytest.raises(ValueError, match="integrity"):
        ClientSession("FETCH x", None, require_integrity=True)


def test_client_retransmits_its_syn_with_backoff_then_gives_up() -> None:
    c = ClientSession("FETCH x", None, max_timeouts=3)
    c.start(0.0)
    c.datagrams_to_send(0.0)
    times = []
    while c.failed is None:
        t = c.get_timer()
        assert t is not None
        c.handle_timer(t)
        times.append(t)
        if c.failed is None:
            assert c.datagrams_to_send(t) == [pack_rudp(100, 0, b"S")]
    assert times == [1.0, 3.0, 7.0]
    assert "no answer to the SYN" in c.failed


def test_client_handshake_timeout_bounds_the_wait_for_each_answer() -> None:
    c = ClientSession("FETCH x", None, handshake_timeout=2.5)
    c.start(0.0)
    assert c.datagrams_to_send(0.0) == [pack_rudp(100, 0, b"S")]
    assert c.get_timer() == 1.0
    c.handle_timer(1.0)
    assert c.datagrams_to_send(1.0) == [pack_rudp(100, 0, b"S")]  # resent after one RTO
    assert c.get_timer() == 2.5  # the next RTO (3.0) would pass the deadline
    c.handle_timer(2.4)  # early wake-up: nothing happens
    assert c.failed is None and c.datagrams_to_send(2.4) == []
    c.receive_datagram(pack_rudp(0, 101, b"A"), 2.4)  # the answer restarts the wait
    assert c.datagrams_to_send(2.4) == [pack_rudp(101, 0, b"D", b"FETCH x")]
    times = []
    while c.failed is None:
        t = c.get_timer()
        assert t is not None
        times.append(t)
        c.handle_timer(t)
        c.datagrams_to_send(t)
    assert times[-1] == pytest.approx(2.4 + 2.5)
    assert all(t < 4.9 for t in times[:-1])
    assert c.failed == "no answer to the command within 2.5 s"


def test_client_gives_up_after_silence() -> None:
    c = ClientSession("FETCH x", None, silence_timeout=2.0)
    c.start(0.0)
    c.receive_datagram(pack_rudp(0, 101, b"A"), 0.1)
    c.receive_datagram(pack_rudp(1, 0, b"D", b"a"), 0.2)  # also acknowledges the command
    assert c.get_timer() == pytest.approx(2.2)
    c.handle_timer(2.2)
    assert c.failed is not None and "silent" in c.failed


def test_client_refuses_content_whose_digest_differs() -> None:
    c = ClientSession("FETCH x", TransferOptions(integrity=True))
    c.start(0.0)
    body = encode_options(TransferOptions(integrity=True))
    c.receive_datagram(add_trailer(RUDP_HEADER.pack(0, 101, b"A", len(body) + 4) + body), 0.1)
    c.receive_datagram(add_trailer(RUDP_HEADER.pack(1, 0, b"D", 5 + 4) + b"hello"), 0.2)
    wrong = hashlib.sha256(b"other").digest()
    c.receive_datagram(add_trailer(RUDP_HEADER.pack(2, 0, b"F", 36) + wrong), 0.3)
    assert c.failed is not None and not c.done
    assert any(isinstance(e, IntegrityFailure) for e in drain(c))


def test_client_drops_a_chunk_with_a_bad_crc() -> None:
    c = ClientSession("FETCH x", TransferOptions(integrity=True))
    c.start(0.0)
    body = encode_options(TransferOptions(integrity=True))
    c.receive_datagram(add_trailer(RUDP_HEADER.pack(0, 101, b"A", len(body) + 4) + body), 0.1)
    good = add_trailer(RUDP_HEADER.pack(1, 0, b"D", 5 + 4) + b"hello")
    c.receive_datagram(good[:-5] + b"J" + good[-4:], 0.2)
    assert c.stats["bad_crc"] == 1 and c.content == b""


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 5), st.lists(st.binary(max_size=60), max_size=8))
def test_garbage_never_raises_in_any_state(stage: int, junk: list[bytes]) -> None:
    s = ServerSession()
    c = ClientSession("FETCH x", STACKLAB_DEFAULT if stage % 2 else None)
    c.start(0.0)
    script = [
        lambda: s.receive_datagram(c.datagrams_to_send(0.0)[0], 0.0),
        lambda: c.receive_datagram(s.datagrams_to_send(0.0)[0], 0.0),
        lambda: s.receive_datagram(c.datagrams_to_send(0.0)[0], 0.0),
        lambda: drain(s) and s.provide_content(b"abc" * 400, 0.0),
        lambda: [c.receive_datagram(d, 0.0) for d in s.datagrams_to_send(0.0)],
    ]
    for step in script[:stage]:
        step()
    for j in junk:
        s.receive_datagram(j, 1.0)
        c.receive_datagram(j, 1.0)
        for framed in (
            pack_rudp(j[0] if j else 0, len(j), b"DASF"[len(j) % 4 : len(j) % 4 + 1], j),
        ):
            s.receive_datagram(framed, 1.0)
            c.receive_datagram(framed, 1.0)
    s.datagrams_to_send(1.0)
    c.datagrams_to_send(1.0)


# -- two sessions over a seeded lossy network in virtual time -----------------------


def transfer(
    content: bytes,
    options: TransferOptions | None,
    seed: int,
    loss: float = 0.0,
    duplicate: float = 0.0,
    reorder: float = 0.0,
    corrupt: float = 0.0,
    delay: float = 0.01,
    limit: float = 600.0,
) -> tuple[ClientSession, ServerSession, float]:
    rng = random.Random(seed)
    s = ServerSession()
    c = ClientSession("FETCH x", options)
    now = 0.0
    c.start(now)
    wire: list[tuple[float, int, str, bytes]] = []
    n = 0

    def put(dst: str, datagram: bytes) -> None:
        nonlocal n
        if rng.random() < loss:
            return
        copies = 2 if rng.random() < duplicate else 1
        for _ in range(copies):
            if rng.random() < corrupt:
                b = bytearray(datagram)
                b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
                datagram = bytes(b)
            extra = rng.uniform(0, 5 * delay) if rng.random() < reorder else 0.0
            n += 1
            wire.append((now + delay + extra, n, dst, datagram))

    while now < limit:  # until both ends are idle: no timer, nothing on the wire
        for d in c.datagrams_to_send(now):
            put("s", d)
        for d in s.datagrams_to_send(now):
            put("c", d)
        for e in drain(s):
            if isinstance(e, CommandReceived):
                s.provide_content(content, now)
        drain(c)
        deadlines = [t for t in (s.get_timer(), c.get_timer()) if t is not None]
        deadlines += [w[0] for w in wire]
        if not deadlines:
            break
        now = max(now, min(deadlines))
        wire.sort()
        while wire and wire[0][0] <= now:
            _, _, dst, d = wire.pop(0)
            (s if dst == "s" else c).receive_datagram(d, now)
        s.handle_timer(now)
        c.handle_timer(now)
    return c, s, now


CONTENT = random.Random(7).randbytes(30_000)


@pytest.mark.parametrize("options", [None, STACKLAB_DEFAULT], ids=["original", "stacklab"])
def test_clean_transfer(options: TransferOptions | None) -> None:
    c, s, now = transfer(CONTENT, options, seed=1)
    assert c.done and c.content == CONTENT
    assert s.done and s.sender is not None and s.sender.retransmissions == 0
    assert now < 2.0


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), loss=st.sampled_from([0.0, 0.1, 0.3]))
def test_lossy_duplicating_reordering_transfer_is_intact_or_a_clean_failure(
    seed: int, loss: float
) -> None:
    c, _s, _ = transfer(
        CONTENT, STACKLAB_DEFAULT, seed, loss=loss, duplicate=0.05, reorder=0.05, corrupt=0.02
    )
    if c.done:
        assert c.failed is None and c.content == CONTENT
    else:
        assert c.failed  # a reason, and no content handed out as complete
        assert c.state is ClientState.FAILED
    if loss == 0.0:
        assert c.done


def test_most_transfers_survive_thirty_percent_loss_both_ways() -> None:
    results = [
        transfer(CONTENT, STACKLAB_DEFAULT, seed, loss=0.3, duplicate=0.02, corrupt=0.01)
        for seed in range(20)
    ]
    intact = [c.done and c.content == CONTENT for c, _, _ in results]
    assert sum(intact) >= 18
    assert all(c.done or c.failed for c, _, _ in results)


def test_legacy_sessions_survive_thirty_percent_loss_both_ways() -> None:
    """The original options (window 5, each resend once) at 30% loss each way: every one of
    30 transfers completes (with the old limits, 4 of these 30 gave up: 8 timeouts, a 30 s
    silence limit under a 10 s RTO cap, a 30 s wait for the command)."""
    results = [transfer(CONTENT, None, seed, loss=0.3, limit=3000) for seed in range(30)]
    failed = [(seed, c.failed) for seed, (c, _, _) in enumerate(results) if not c.done]
    assert failed == []
    assert all(c.content == CONTENT for c, _, _ in results)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_original_mode_without_integrity_survives_loss_and_reordering(seed: int) -> None:
    c, _, _ = transfer(CONTENT[:8000], None, seed, loss=0.2, duplicate=0.05, reorder=0.05)
    assert c.done and c.content == CONTENT[:8000]


def test_dead_network_ends_in_a_clean_failure_on_both_ends() -> None:
    c, _s, _now = transfer(CONTENT, STACKLAB_DEFAULT, seed=3, loss=1.0, limit=10_000)
    assert c.failed is not None and "SYN" in c.failed
    assert not c.done


# -- hostile or slow peers -------------------------------------------------------------


def test_a_slow_origin_keeps_the_client_waiting_while_the_server_answers() -> None:
    """The fetch takes 40 s; the client keeps resending its command on its backed-off RTO
    and the server re-ACKs each one.  Those answers restart the client's silence limit, so
    it waits for the content instead of failing at 30 s with "the server was silent"."""
    s = ServerSession()
    c = ClientSession("FETCH x", None, silence_timeout=30.0)
    content = b"z" * 1200
    now = 0.0
    c.start(now)
    provided = False
    for _ in range(10_000):
        for d in c.datagrams_to_send(now):
            s.receive_datagram(d, now)
        drain(s)
        for d in s.datagrams_to_send(now):
            c.receive_datagram(d, now)
        drain(c)
        if c.done or c.failed:
            break
        if not provided and now >= 40.0 and s.state is ServerState.AWAIT_CONTENT:
            s.provide_content(content, now)
            provided = True
            continue
        deadlines = [t for t in (c.get_timer(), s.get_timer()) if t is not None]
        if not provided:
            deadlines.append(40.0)
        now = max(now, min(deadlines))
        c.handle_timer(now)
        s.handle_timer(now)
    assert c.failed is None, c.failed
    assert c.done and c.content == content
    assert c.stats["unexpected"] == 0 and c.stats["command_reacks"] >= 3


def _integrity_client_at_fin() -> tuple[ClientSession, ServerSession, float]:
    """A negotiated transfer whose FIN carries the wrong SHA-256 (the content was altered)."""
    s = ServerSession()
    c = ClientSession("FETCH x", TransferOptions(integrity=True))
    now = 0.0
    c.start(now)
    for _ in range(200):
        for d in c.datagrams_to_send(now):
            s.receive_datagram(d, now)
        for e in drain(s):
            if isinstance(e, CommandReceived):
                s.provide_content(b"hello", now)
                assert s.sender is not None
                s.sender._fin_payload = hashlib.sha256(b"other").digest()  # a lying server
        for d in s.datagrams_to_send(now):
            c.receive_datagram(d, now)
        drain(c)
        if c.failed or s.failed or s.done:
            break
        now += 0.01
    return c, s, now


def test_a_client_that_rejects_the_content_tells_the_server() -> None:
    c, s, now = _integrity_client_at_fin()
    assert c.failed is not None and "SHA-256" in c.failed
    # the client answered the FIN with its refusal, never with an ACK of it
    for _ in range(3):
        for d in c.datagrams_to_send(now):
            s.receive_datagram(d, now)
    assert not s.done
    assert s.failed is not None and "rejected the content" in s.failed
    assert s.state is ServerState.FAILED and s.stats["rejected"] == 1
    assert any(isinstance(e, GaveUp) and "rejected" in e.reason for e in drain(s))


def test_a_lost_refusal_is_repeated_when_the_fin_comes_again() -> None:
    c, s, now = _integrity_client_at_fin()
    refusal = c.datagrams_to_send(now)  # lost on the way
    assert [RUDP_HEADER.unpack_from(d)[2] for d in refusal] == [b"F"]
    assert s.sender is not None
    timer = s.get_timer()
    assert timer is not None
    s.handle_timer(timer)
    for d in s.datagrams_to_send(timer):  # the FIN again
        c.receive_datagram(d, timer)
    assert c.datagrams_to_send(timer) == refusal


def test_only_an_ack_of_a_chunk_sent_proves_a_legacy_address() -> None:
    """One blind spoofed ACK (0xFFFFFFFF) used to lift the anti-amplification budget."""
    s = ServerSession()
    s.adopt(100, ORIGINAL, False, 0, b"", proven=False, now=0.0)
    s.unproven_budget = 6
    s.receive_datagram(RUDP_HEADER.pack(101, 0, b"D", len(CMD)) + CMD, 0.0)
    drain(s)
    s.provide_content(b"q" * 5000, 0.0)
    s.datagrams_to_send(0.0)
    for bogus in (0xFFFFFFFF, 2, 5000, 0):
        s.receive_datagram(RUDP_HEADER.pack(0, bogus, b"A", 0), 0.1)
        assert not s.proven
    assert s.stats["ignored_acks"] == 3  # 0 is base - 1: a duplicate, not out of range
    s.receive_datagram(RUDP_HEADER.pack(0, 1, b"A", 0), 0.2)
    assert s.proven
