"""ClientSession.receive_batch (a GRO batch in one call) behaves exactly as its datagrams fed one by one."""

from __future__ import annotations

import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st

from stacklab.transport.client import ClientSession
from stacklab.transport.integrity import add_trailer
from stacklab.transport.options import TransferOptions, encode_options
from stacklab.wire import RUDP_HEADER

PAYLOAD = 24  # content bytes per DATA chunk in these batches


def _receiving(integrity: bool, max_bytes: int | None) -> ClientSession:
    options = TransferOptions(chunk_size=PAYLOAD, integrity=integrity, ack_every=2)
    client = ClientSession("FETCH x", options, max_bytes=max_bytes)
    client.start(0.0)
    body = encode_options(options)
    syn_ack = RUDP_HEADER.pack(0, 101, b"A", len(body) + 4) + body
    client.receive_datagram(add_trailer(syn_ack) if integrity else syn_ack, 0.1)
    client.datagrams_to_send(0.1)  # the command
    return client


def _datagram(seq: int, flag: bytes, payload: bytes, integrity: bool) -> bytes:
    if integrity:
        return add_trailer(RUDP_HEADER.pack(seq, 0, flag, len(payload) + 4) + payload)
    return RUDP_HEADER.pack(seq, 0, flag, len(payload)) + payload


CONTENT = bytes(range(256)) * 2


@st.composite
def batches(draw: st.DrawFn) -> tuple[bool, int | None, list[bytes]]:
    integrity = draw(st.booleans())
    size = PAYLOAD + 11 + (4 if integrity else 0)
    out: list[bytes] = []
    for _ in range(draw(st.integers(1, 14))):
        kind = draw(st.sampled_from(["data", "data", "data", "flip", "junk", "fin", "ack"]))
        seq = draw(st.integers(0, 12))
        chunk = CONTENT[(seq - 1) * PAYLOAD : seq * PAYLOAD].ljust(PAYLOAD, b"z")
        if kind == "data":
            out.append(_datagram(seq, b"D", chunk, integrity))
        elif kind == "flip":
            good = bytearray(_datagram(seq, b"D", chunk, integrity))
            good[draw(st.integers(0, len(good) - 1))] ^= 1 << draw(st.integers(0, 7))
            out.append(bytes(good))
        elif kind == "junk":
            out.append(draw(st.binary(min_size=size, max_size=size)))
        elif kind == "fin":
            digest = hashlib.sha256(CONTENT[: (seq - 1) * PAYLOAD]).digest()
            out.append(_datagram(seq, b"F", digest[:PAYLOAD], integrity))
        else:
            out.append(_datagram(seq, b"A", b"\0" * PAYLOAD, integrity))
    if draw(st.booleans()):  # a shorter last one, as GRO allows
        out.append(_datagram(draw(st.integers(0, 12)), b"D", b"tail", integrity))
    max_bytes = draw(st.sampled_from([None, 100]))
    return integrity, max_bytes, out


def _observe(client: ClientSession) -> tuple[object, ...]:
    receiver = client.receiver
    return (
        client.state,
        client.failed,
        dict(client.stats),
        client.get_timer(),
        client.datagrams_to_send(9.0),
        None if receiver is None else (receiver.expected, receiver.delivered_bytes),
    )


@settings(max_examples=400, deadline=None)
@given(batches())
def test_a_batch_is_its_datagrams_one_by_one(case: tuple[bool, int | None, list[bytes]]) -> None:
    integrity, max_bytes, datagrams = case
    one_by_one = _receiving(integrity, max_bytes)
    # The first DATA also acknowledges the command: both sessions get it first.
    for client in (one_by_one, batched := _receiving(integrity, max_bytes)):
        client.receive_datagram(_datagram(1, b"D", CONTENT[:PAYLOAD], integrity), 0.2)
    for datagram in datagrams:
        one_by_one.receive_datagram(datagram, 0.5)
    segment = len(datagrams[0])
    batched.receive_batch(memoryview(b"".join(datagrams)), segment, 0.5)
    assert _observe(batched) == _observe(one_by_one)


def test_a_clean_batch_takes_the_fast_path_and_delivers_in_order() -> None:
    client = _receiving(True, None)
    datagrams = [
        _datagram(seq, b"D", CONTENT[(seq - 1) * PAYLOAD : seq * PAYLOAD], True)
        for seq in (1, 2, 3)
    ]
    client.receive_batch(memoryview(b"".join(datagrams)), len(datagrams[0]), 0.3)
    assert client.receiver is not None and client.receiver.delivered_bytes == 3 * PAYLOAD
    assert client.stats["datagrams_in"] >= 3 and client.get_timer() == 0.3 + client.silence_timeout
