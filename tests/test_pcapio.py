"""The fast capture reader against the seed captures and crafted files."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from stacklab.analysis.pcapio import CaptureError, CaptureReader, parse_packet, read_packets
from stacklab.wire import unpack_rudp

from conftest import seed_capture


def test_part4_frames_and_rudp_fields() -> None:
    packets = [p for p in read_packets(seed_capture("part4_rudp_loss_flow")) if p.proto == "udp"]
    rudp = [
        (p.sport, p.dport, unpack_rudp(p.payload)[0]) for p in packets if 2122 in (p.sport, p.dport)
    ]
    headers = [(h.seq, h.ack, h.flag, h.length) for _, _, h in rudp]
    assert headers[:4] == [
        (100, 0, b"S", 0),
        (0, 101, b"A", 0),
        (101, 0, b"D", 41),
        (0, 101, b"A", 0),
    ]
    assert headers[4:8] == [(1, 0, b"D", 65)] * 4
    assert headers[8:] == [(0, 1, b"A", 0), (2, 0, b"F", 0), (0, 2, b"A", 0)]


def test_null_linktype_reported() -> None:
    with CaptureReader(seed_capture("part3_rudp_clean_flow")) as reader:
        frames = list(reader)
    assert reader.linktype_name == "null"
    assert [f.number for f in frames] == list(range(1, len(frames) + 1))
    assert not reader.truncated


def _pcap(linktype: int, frames: list[bytes], endian: str = "<") -> bytes:
    out = struct.pack(endian + "IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, linktype)
    for i, data in enumerate(frames):
        out += struct.pack(endian + "IIII", 1000 + i, 500, len(data), len(data)) + data
    return out


def _ipv4_udp(payload: bytes, sport: int = 1111, dport: int = 2122) -> bytes:
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    ip = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(udp),
        0,
        0,
        64,
        17,
        0,
        bytes([127, 0, 0, 1]),
        bytes([127, 0, 0, 3]),
    )
    return ip + udp


@pytest.mark.parametrize("endian", ["<", ">"])
@pytest.mark.parametrize(
    ("linktype", "prefix"),
    [
        (1, b"\x00" * 12 + b"\x08\x00"),
        (0, struct.pack("<I", 2)),
        (0, struct.pack(">I", 2)),
        (101, b""),
        (113, b"\x00" * 14 + b"\x08\x00"),
        (276, b"\x08\x00" + b"\x00" * 18),
    ],
)
def test_link_types(tmp_path: Path, linktype: int, prefix: bytes, endian: str) -> None:
    path = tmp_path / "x.pcap"
    path.write_bytes(_pcap(linktype, [prefix + _ipv4_udp(b"hello")], endian))
    (packet,) = list(read_packets(path))
    assert (packet.src, packet.sport, packet.dst, packet.dport) == (
        "127.0.0.1",
        1111,
        "127.0.0.3",
        2122,
    )
    assert packet.payload == b"hello"
    assert packet.time == pytest.approx(1000.0005)


def test_truncated_file_keeps_earlier_frames(tmp_path: Path) -> None:
    data = _pcap(101, [_ipv4_udp(b"a"), _ipv4_udp(b"b")])
    path = tmp_path / "cut.pcap"
    path.write_bytes(data[:-5])
    with CaptureReader(path) as reader:
        frames = list(reader)
    assert len(frames) == 1 and reader.truncated
    assert parse_packet(frames[0]) is not None


@pytest.mark.parametrize(
    "content", [b"", b"hello world, not a capture", b"\x0a\x0d\x0d\x0a\xff\xff"]
)
def test_not_a_capture(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.pcapng"
    path.write_bytes(content)
    with pytest.raises(CaptureError):
        list(CaptureReader(path))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CaptureError, match="no such file"):
        CaptureReader(tmp_path / "nope.pcap")
