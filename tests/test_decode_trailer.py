"""``stacklab decode`` recognises the CRC32C trailer of sessions that negotiated integrity.

With integrity on, every datagram ends with CRC32C of all the bytes before it
and the header's length field counts those 4 bytes (the sender writes
``len(payload) + 4``; the receiver drops a datagram whose length is not
exact).  The decoder and the Scapy layer say ``crc32c=ok`` for such a
datagram and stay silent about everything else, and captures of the
original programs (no trailer) decode exactly as before.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from crc32c import crc32c
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Packet
from scapy.utils import wrpcap

from stacklab.analysis.decode import decode_capture, decode_rudp, rudp_info
from stacklab.cli import cli
from stacklab.layers import RUDP
from stacklab.transport.client import ClientSession
from stacklab.transport.events import CommandReceived
from stacklab.transport.integrity import add_trailer
from stacklab.transport.options import STACKLAB_DEFAULT, TransferOptions
from stacklab.transport.server import ServerSession
from stacklab.wire import (
    APP_RUDP_PORT,
    RUDP_CRC_TRAILER_LEN,
    RUDP_HEADER,
    looks_like_rudp,
    pack_rudp,
    rudp_trailer_ok,
)

from conftest import REPO, SEED_NAMES, seed_capture

OLD_KEYS = {"seq", "ack", "flag", "len", "payload_len"}
CONTENT_1200 = bytes(range(256)) * 4 + bytes(176)


def negotiated(seq: int, ack: int, flag: bytes, payload: bytes) -> bytes:
    """A datagram as a session with integrity sends it: length counts the trailer."""
    return add_trailer(
        RUDP_HEADER.pack(seq, ack, flag, len(payload) + RUDP_CRC_TRAILER_LEN) + payload
    )


def scapy_summary(datagram: bytes) -> str:
    return RUDP(datagram).mysummary()


def flip(datagram: bytes, bit: int) -> bytes:
    b = bytearray(datagram)
    b[bit // 8] ^= 1 << (bit % 8)
    return bytes(b)


# -- single datagrams ---------------------------------------------------------------


def test_negotiated_data_datagram_shows_crc32c_ok() -> None:
    datagram = negotiated(3, 0, b"D", CONTENT_1200)
    assert len(datagram) == 11 + 1200 + 4
    decoded = decode_rudp(datagram)
    assert decoded is not None
    info, summary = decoded
    assert summary == "RUDP D seq=3 ack=0 len=1204 crc32c=ok"
    assert info == {
        "seq": 3,
        "ack": 0,
        "flag": "D",
        "len": 1204,
        "payload_len": 1204,
        "crc32c": "ok",
    }
    assert scapy_summary(datagram) == summary
    assert rudp_trailer_ok(datagram) and looks_like_rudp(datagram)


def test_bare_trailer_ack_shows_crc32c_ok() -> None:
    ack = negotiated(0, 101, b"A", b"")
    decoded = decode_rudp(ack)
    assert decoded is not None
    assert decoded[1] == "RUDP A seq=0 ack=101 len=4 crc32c=ok"
    assert scapy_summary(ack) == decoded[1]


@pytest.mark.parametrize("bit", [0, 8 * (11 + 1200) - 1, 8 * (11 + 1200), 8 * (11 + 1204) - 1])
def test_a_flipped_bit_is_no_trailer_claim(bit: int) -> None:
    datagram = flip(negotiated(3, 0, b"D", CONTENT_1200), bit)
    assert not rudp_trailer_ok(datagram)
    decoded = decode_rudp(datagram)
    assert decoded is not None
    info, summary = decoded
    assert set(info) == OLD_KEYS
    assert "crc32c" not in summary
    assert summary == scapy_summary(datagram)
    if bit >= 8 * (11 + 1200):  # the trailer itself: an exact datagram, nothing to say
        assert summary == "RUDP D seq=3 ack=0 len=1204"


def test_trailer_not_counted_by_length_is_padding() -> None:
    """No stacklab program sends this (and a stacklab receiver drops it): it stays padding."""
    body = RUDP_HEADER.pack(3, 0, b"D", 1200) + CONTENT_1200
    datagram = add_trailer(body)
    assert not rudp_trailer_ok(datagram) and not looks_like_rudp(datagram)
    decoded = decode_rudp(datagram)
    assert decoded is not None
    assert decoded[1] == "RUDP D seq=3 ack=0 len=1200 (+4 bytes padding)"
    assert "crc32c" not in decoded[0]
    assert scapy_summary(datagram) == decoded[1]


def test_short_and_lying_datagrams_claim_nothing() -> None:
    assert not rudp_trailer_ok(b"")
    assert not rudp_trailer_ok(pack_rudp(1, 0, b"A"))  # exact, but no room for a trailer
    good = negotiated(5, 0, b"D", b"abc")
    assert rudp_trailer_ok(memoryview(good))
    assert not rudp_trailer_ok(good[:-1])  # length now claims a byte that is missing
    assert not rudp_trailer_ok(good + b"\x00")  # padding after the trailer
    info = rudp_info(good[:-1])
    assert info is not None and "crc32c" not in info


# -- properties -----------------------------------------------------------------------

header_fields = st.tuples(
    st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.binary(min_size=1, max_size=1)
)


@settings(max_examples=300, deadline=None)
@given(header_fields, st.binary(max_size=1600))
def test_any_valid_trailer_is_recognised(fields: tuple[int, int, bytes], payload: bytes) -> None:
    seq, ack, flag = fields
    datagram = negotiated(seq, ack, flag, payload)
    assert rudp_trailer_ok(datagram)
    info = rudp_info(datagram)
    assert info is not None and info["crc32c"] == "ok"
    assert info["len"] == info["payload_len"] == len(payload) + 4
    decoded = decode_rudp(datagram)
    assert decoded is not None and decoded[1].endswith(" crc32c=ok")
    assert scapy_summary(datagram) == decoded[1]
    assert looks_like_rudp(datagram) == (flag in (b"S", b"A", b"D", b"F"))


@settings(max_examples=300, deadline=None)
@given(header_fields, st.binary(max_size=1600))
def test_a_plain_exact_datagram_never_claims_a_trailer(
    fields: tuple[int, int, bytes], payload: bytes
) -> None:
    seq, ack, flag = fields
    datagram = pack_rudp(seq, ack, flag, payload)
    # Only a CRC32C match by chance (1 in 2**32) could make a trailer.
    assume(len(payload) < 4 or crc32c(datagram[:-4]) != int.from_bytes(datagram[-4:], "big"))
    assert not rudp_trailer_ok(datagram)
    info = rudp_info(datagram)
    assert info is not None and set(info) == OLD_KEYS
    decoded = decode_rudp(datagram)
    assert decoded is not None and "crc32c" not in decoded[1]
    assert scapy_summary(datagram) == decoded[1]


@settings(max_examples=200, deadline=None)
@given(header_fields, st.binary(max_size=300), st.data())
def test_every_single_bit_error_loses_the_claim(
    fields: tuple[int, int, bytes], payload: bytes, data: st.DataObject
) -> None:
    datagram = negotiated(*fields, payload)
    bit = data.draw(st.integers(0, 8 * len(datagram) - 1))
    assert not rudp_trailer_ok(flip(datagram, bit))


# -- whole captures -------------------------------------------------------------------


def _session_datagrams(options: TransferOptions | None, content: bytes) -> list[tuple[str, bytes]]:
    """Every datagram of one lossless transfer between the real sans-I/O sessions."""
    server = ServerSession()
    client = ClientSession("FETCH http://127.0.0.1:8080/big.bin", options)
    now = 0.0
    client.start(now)
    sent: list[tuple[str, bytes]] = []
    for _ in range(10_000):
        out = [("c2s", d) for d in client.datagrams_to_send(now)]
        out += [("s2c", d) for d in server.datagrams_to_send(now)]
        while (event := server.next_event()) is not None:
            if isinstance(event, CommandReceived):
                server.provide_content(content, now)
        while client.next_event() is not None:
            pass
        if not out and client.done:
            break
        now += 0.001
        for direction, d in out:
            (server if direction == "c2s" else client).receive_datagram(d, now)
        sent += out
        server.handle_timer(now)
        client.handle_timer(now)
    assert client.done and client.content == content
    return sent


def _write_capture(path: Path, datagrams: list[tuple[str, bytes]], port: int) -> Path:
    packets: list[Packet] = []
    for direction, d in datagrams:
        sport, dport = (40000, port) if direction == "c2s" else (port, 40000)
        src, dst = ("127.0.0.1", "127.0.0.3") if direction == "c2s" else ("127.0.0.3", "127.0.0.1")
        packets.append(Ether() / IP(src=src, dst=dst) / UDP(sport=sport, dport=dport) / d)
    wrpcap(str(path), packets)
    return path


CONTENT = bytes(range(251)) * 40  # 10,040 bytes: several full chunks and a short last one


@pytest.mark.timeout(60)
def test_negotiated_transfer_decodes_crc32c_ok_on_every_line(tmp_path: Path) -> None:
    datagrams = _session_datagrams(STACKLAB_DEFAULT, CONTENT)
    path = _write_capture(tmp_path / "negotiated.pcap", datagrams, APP_RUDP_PORT)
    result = CliRunner().invoke(cli, ["decode", str(path)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert len(lines) == len(datagrams)
    assert all("RUDP" in line and line.endswith(" crc32c=ok") for line in lines)
    assert not any("padding" in line for line in lines)
    assert any(" D seq=1 ack=0 len=1404 crc32c=ok" in line for line in lines)
    as_json = CliRunner().invoke(cli, ["decode", "--json", str(path)])
    assert as_json.exit_code == 0
    records = [json.loads(line)["rudp"] for line in as_json.output.splitlines()]
    assert all(r["crc32c"] == "ok" and set(r) == OLD_KEYS | {"crc32c"} for r in records)


def _damage_trailer(datagram: bytes) -> bytes:
    """The same datagram with its last byte (part of the trailer) flipped."""
    return datagram[:-1] + bytes([datagram[-1] ^ 0xFF])


@pytest.mark.timeout(60)
def test_negotiated_transfer_with_wrong_trailers_decodes_crc32c_bad(tmp_path: Path) -> None:
    """Once the SYN-ACK accepted integrity, a datagram whose trailer does not match is BAD."""
    datagrams = _session_datagrams(STACKLAB_DEFAULT, CONTENT)
    damaged = [(direction, _damage_trailer(d)) for direction, d in datagrams]
    path = _write_capture(tmp_path / "damaged.pcap", damaged, APP_RUDP_PORT)
    result = CliRunner().invoke(cli, ["decode", str(path)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert len(lines) == len(datagrams)
    # The SYN comes before any answer, so nothing is known about it yet.
    assert "crc32c" not in lines[0]
    assert all(line.endswith(" crc32c=BAD") for line in lines[1:]), lines[:4]
    as_json = CliRunner().invoke(cli, ["decode", "--json", str(path)])
    records = [json.loads(line)["rudp"] for line in as_json.output.splitlines()]
    assert [r.get("crc32c") for r in records[1:]] == ["BAD"] * (len(records) - 1)


@pytest.mark.timeout(60)
def test_one_wrong_trailer_among_good_ones_is_the_only_bad_one(tmp_path: Path) -> None:
    datagrams = _session_datagrams(STACKLAB_DEFAULT, CONTENT)
    middle = len(datagrams) // 2
    datagrams[middle] = (datagrams[middle][0], _damage_trailer(datagrams[middle][1]))
    path = _write_capture(tmp_path / "one.pcap", datagrams, APP_RUDP_PORT)
    verdicts = [r.to_json()["rudp"].get("crc32c") for r in decode_capture(path)]
    assert verdicts.count("BAD") == 1 and verdicts[middle] == "BAD"
    assert verdicts.count("ok") == len(datagrams) - 1


@pytest.mark.timeout(60)
def test_original_mode_transfer_is_never_bad(tmp_path: Path) -> None:
    datagrams = _session_datagrams(None, CONTENT)
    path = _write_capture(tmp_path / "original.pcap", datagrams, APP_RUDP_PORT)
    assert not any("crc32c" in r.summary() for r in decode_capture(path))


@pytest.mark.timeout(60)
def test_negotiated_transfer_is_spotted_on_another_port(tmp_path: Path) -> None:
    datagrams = _session_datagrams(STACKLAB_DEFAULT, CONTENT)
    path = _write_capture(tmp_path / "elsewhere.pcap", datagrams, 9100)
    guessed = list(decode_capture(path, heuristic=True))
    assert [r.proto for r in guessed] == ["rudp"] * len(datagrams)
    assert all(r.summary().endswith(" crc32c=ok") for r in guessed)


@pytest.mark.timeout(60)
def test_original_mode_transfer_has_no_trailer(tmp_path: Path) -> None:
    datagrams = _session_datagrams(None, CONTENT)
    path = _write_capture(tmp_path / "original.pcap", datagrams, APP_RUDP_PORT)
    records = list(decode_capture(path))
    assert len(records) == len(datagrams)
    assert all(r.proto == "rudp" and set(r.to_json()["rudp"]) == OLD_KEYS for r in records)
    assert not any("crc32c" in r.summary() or "padding" in r.summary() for r in records)


@pytest.mark.parametrize("name", ["rudp-clean", "rudp-advanced"])
def test_committed_captures_use_the_original_protocol(name: str) -> None:
    """These reference captures are made with the original client: no trailer to find."""
    records = [r for r in decode_capture(REPO / "captures" / f"{name}.pcapng") if r.proto == "rudp"]
    assert len(records) > 40
    assert not any("padding" in r.summary() or "crc32c" in r.summary() for r in records)
    assert all(set(r.to_json()["rudp"]) == OLD_KEYS for r in records)


@pytest.mark.parametrize("name", SEED_NAMES)
def test_seed_captures_decode_as_before(name: str) -> None:
    records = list(decode_capture(seed_capture(name)))
    rudp = [r for r in records if r.proto == "rudp"]
    assert all(set(r.to_json()["rudp"]) == OLD_KEYS for r in rudp)
    assert not any("crc32c" in r.summary() for r in records)


def test_seed_part4_lines_are_unchanged() -> None:
    records = {r.frame: r for r in decode_capture(seed_capture("part4_rudp_loss_flow"))}
    assert records[5].summary() == "RUDP S seq=100 ack=0 len=0"
    assert records[7].summary() == "RUDP D seq=101 ack=0 len=41"
    assert records[20].summary() == "RUDP D seq=1 ack=0 len=65"
    assert records[27].summary() == "RUDP F seq=2 ack=0 len=0"
