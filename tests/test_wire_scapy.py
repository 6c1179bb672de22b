"""The struct codec in stacklab.wire and the Scapy layers agree byte for byte."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st
from scapy.compat import raw
from scapy.packet import Padding, Raw

from stacklab.analysis.decode import decode_rudp, parse_json_message
from stacklab.layers import RUDP, AppFrame, DHCPJson, DNSJson
from stacklab.wire import (
    RUDP_HEADER_LEN,
    RUDP_MAX_LEN,
    RUDP_MAX_SEQ,
    encode_frame,
    pack_rudp,
    unpack_rudp,
)

u32 = st.integers(0, RUDP_MAX_SEQ)
flag_bytes = st.binary(min_size=1, max_size=1)
lengths = st.none() | st.integers(0, RUDP_MAX_LEN)


@given(u32, u32, flag_bytes, lengths, st.binary(max_size=600))
def test_pack_equals_scapy_build(
    seq: int, ack: int, flag: bytes, length: int | None, payload: bytes
) -> None:
    scapy_pkt = RUDP(seq=seq, ack=ack, flag=flag, len=length)
    if payload:
        scapy_pkt = scapy_pkt / Raw(payload)
    assert raw(scapy_pkt) == pack_rudp(seq, ack, flag, payload, length)


@given(u32, u32, flag_bytes, lengths, st.binary(max_size=600))
def test_unpack_and_scapy_dissection_agree(
    seq: int, ack: int, flag: bytes, length: int | None, payload: bytes
) -> None:
    datagram = pack_rudp(seq, ack, flag, payload, length)
    header, body = unpack_rudp(datagram)
    pkt = RUDP(datagram)
    assert (pkt.seq, pkt.ack, pkt.flag, pkt.len) == (
        header.seq,
        header.ack,
        header.flag,
        header.length,
    )
    assert (header.seq, header.ack, header.flag) == (seq, ack, flag)
    scapy_body = pkt[Raw].load if Raw in pkt else b""
    scapy_pad = pkt[Padding].load if Padding in pkt else b""
    assert scapy_body == body
    assert scapy_body + scapy_pad == payload
    assert raw(pkt) == datagram
    # The fast decoder reports the same fields and the same summary.
    decoded = decode_rudp(datagram)
    assert decoded is not None
    info, text = decoded
    assert info["seq"] == pkt.seq and info["ack"] == pkt.ack and info["len"] == pkt.len
    assert info["payload_len"] == len(datagram) - RUDP_HEADER_LEN
    assert text == pkt.mysummary()


@given(st.binary(max_size=RUDP_HEADER_LEN - 1))
def test_short_datagrams_are_not_rudp(data: bytes) -> None:
    assert decode_rudp(data) is None


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


@given(st.dictionaries(st.text(max_size=10), json_values, max_size=5))
def test_json_layers_and_fast_path_agree(obj: dict[str, object]) -> None:
    data = json.dumps(obj).encode()
    for layer in (DHCPJson, DNSJson):
        msg = layer(data)
        assert raw(msg) == data
        assert msg.obj == obj
        assert msg.info == parse_json_message(data)
    assert raw(DNSJson(obj=obj)) == data


@given(st.binary(max_size=300))
def test_json_layers_never_raise_on_garbage(data: bytes) -> None:
    msg = DNSJson(data)  # binary DNS dispatches to Scapy's DNS layer instead
    if isinstance(msg, DNSJson):
        assert raw(msg) == data
    msg.mysummary()
    DHCPJson(data).mysummary()


@given(st.binary(max_size=300))
def test_app_frame_build_equals_encode_frame(body: bytes) -> None:
    data = encode_frame(body)
    assert raw(AppFrame(body=body)) == data
    again = AppFrame(data)
    assert (again.len, again.body) == (len(body), body)
