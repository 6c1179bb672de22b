"""The verifier's fast scan must see exactly what the general decoder sees."""

from __future__ import annotations

import struct
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stacklab.analysis.pcapio import read_packets
from stacklab.analysis.scan import CaptureScan, FlowKey, HotSink, flow_endpoints
from stacklab.analysis.synth import (
    LINK_ETHERNET,
    LINK_NULL,
    LINK_RAW,
    CaptureWriter,
    Packet,
    TcpPacket,
    UdpPacket,
    benchmark_stream,
    ipv4,
    udp_segment,
)
from stacklab.wire import RUDP_HEADER

HOT, WATCHED, TCP_WATCHED = 2122, frozenset({5353, 6767}), frozenset({2121})

udp_packets = st.builds(
    UdpPacket,
    time=st.floats(0, 2e9).map(lambda t: round(t, 6)),
    src=st.sampled_from(["127.0.0.1", "10.0.0.7"]),
    sport=st.sampled_from([2122, 5353, 6767, 40000, 53]),
    dst=st.sampled_from(["127.0.0.3", "192.168.0.1"]),
    dport=st.sampled_from([2122, 5353, 6767, 40001, 443]),
    payload=st.binary(max_size=120),
)
tcp_packets = st.builds(
    TcpPacket,
    time=st.floats(0, 2e9).map(lambda t: round(t, 6)),
    src=st.just("127.0.0.1"),
    sport=st.sampled_from([2121, 50000]),
    dst=st.just("127.0.0.3"),
    dport=st.sampled_from([2121, 80]),
    seq=st.integers(0, 2**32 - 1),
    ack=st.integers(0, 2**32 - 1),
    flags=st.integers(0, 0x3F),
    payload=st.binary(max_size=40),
)


class _Recorder(HotSink):
    """Records what the scan hands over, checking the decoded header against the bytes."""

    def __init__(self) -> None:
        self.hot: list[tuple[object, ...]] = []

    def raw(self, number: int, time: float, key: FlowKey, to_port: bool, datagram: bytes) -> None:
        self.hot.append((number, round(time, 6), flow_endpoints(key), to_port, datagram))

    def fields(
        self,
        number: int,
        time: float,
        key: FlowKey,
        to_port: bool,
        seq: int,
        ack: int,
        flag: int,
        length: int,
        buf: bytes,
        start: int,
        stop: int,
    ) -> None:
        datagram = buf[start:stop]
        assert RUDP_HEADER.unpack_from(datagram) == (seq, ack, bytes([flag]), length)
        self.raw(number, time, key, to_port, datagram)


def _scan(path: Path) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    recorder = _Recorder()
    hot = recorder.hot
    scan = CaptureScan(path, WATCHED, TCP_WATCHED, hot_port=HOT, hot_sink=recorder)
    other: list[tuple[object, ...]] = []
    for item in scan:
        if isinstance(item, tuple):
            number, time, key, sport, dport, payload = item
            other.append(
                ("udp", number, round(time, 6), flow_endpoints(key), sport, dport, payload)
            )
        else:
            other.append(
                (
                    "tcp",
                    item.number,
                    round(item.time, 6),
                    item.src,
                    item.sport,
                    item.tcp_seq,
                    item.payload,
                )
            )
    return hot, other


def _reference(path: Path) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    hot: list[tuple[object, ...]] = []
    other: list[tuple[object, ...]] = []
    for p in read_packets(path):
        ends = (p.src, p.sport, p.dst, p.dport)
        if p.proto == "udp" and HOT in (p.sport, p.dport):
            hot.append((p.number, round(p.time, 6), ends, p.dport == HOT, p.payload))
        elif p.proto == "udp" and (p.sport in WATCHED or p.dport in WATCHED):
            other.append(("udp", p.number, round(p.time, 6), ends, p.sport, p.dport, p.payload))
        elif p.proto == "tcp" and (p.sport in TCP_WATCHED or p.dport in TCP_WATCHED):
            other.append(("tcp", p.number, round(p.time, 6), p.src, p.sport, p.tcp_seq, p.payload))
    return hot, other


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    packets=st.lists(st.one_of(udp_packets, tcp_packets), max_size=30),
    fmt=st.sampled_from(["pcap", "pcapng"]),
    link=st.sampled_from([LINK_ETHERNET, LINK_NULL, LINK_RAW]),
    mtu=st.sampled_from([None, None, 68, 100]),
    reverse=st.booleans(),
)
def test_fast_scan_matches_the_general_decoder(
    packets: list[Packet], fmt: str, link: int, mtu: int | None, reverse: bool
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"x.{fmt}"
        hook = (lambda fragments: fragments[::-1]) if reverse else None
        with CaptureWriter(path, fmt=fmt, link=link, mtu=mtu, fragments=hook) as writer:  # type: ignore[arg-type]
            writer.write_all(packets)
        scan = CaptureScan(path, WATCHED, TCP_WATCHED)
        assert _scan(path) == _reference(path)
        list(scan)
        assert scan.frames == writer.count


def _eth(l3: bytes, ethertype: bytes = b"\x08\x00", vlan: bool = False) -> bytes:
    tag = b"\x81\x00\x00\x05" if vlan else b""
    return b"\x00" * 12 + tag + ethertype + l3


@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
def test_unusual_frames_take_the_general_path(tmp_path: Path, fmt: str) -> None:
    rudp = b"\x00\x00\x00\x01\x00\x00\x00\x00A\x00\x00"
    udp = udp_segment(50000, HOT, rudp)
    ip = ipv4("127.0.0.1", "127.0.0.3", 17, udp)
    with_options = (
        bytes([0x46])
        + ip[1:2]
        + struct.pack("!H", len(ip) + 4)
        + ip[4:20]
        + b"\x01\x01\x01\x00"
        + udp
    )
    ipv6 = (
        struct.pack("!IHBB", 6 << 28, len(udp), 17, 64)
        + bytes(15)
        + b"\x01"
        + bytes(15)
        + b"\x01"
        + udp
    )
    frames = [
        _eth(ip + bytes(60 - 14 - len(ip))),  # padded to the Ethernet minimum
        _eth(ip, vlan=True),
        _eth(with_options),
        _eth(ipv6, ethertype=b"\x86\xdd"),
        _eth(b"\x00" * 28, ethertype=b"\x08\x06"),  # ARP
        _eth(ip[:24]),  # cut inside the UDP header
    ]
    path = tmp_path / f"odd.{fmt}"
    with CaptureWriter(path, fmt=fmt) as writer:  # type: ignore[arg-type]
        for i, frame in enumerate(frames):
            writer.frame(1.0 + i, frame)
    hot, _ = _scan(path)
    assert [h[0] for h in hot] == [1, 2, 3, 4]
    assert all(h[4] == rudp for h in hot)
    assert hot[3][2] == ("::1", 50000, "::1", HOT)
    assert (hot, _scan(path)[1]) == _reference(path)


def test_big_file_crosses_read_buffers(tmp_path: Path) -> None:
    path = tmp_path / "big.pcap"
    payload = bytes(1400)
    count = 4000  # about 5.8 MB: several 4 MiB reads
    with CaptureWriter(path) as writer:
        for i in range(count):
            writer.write(UdpPacket(float(i), "127.0.0.3", HOT, "127.0.0.1", 40000, payload))
    hot, _ = _scan(path)
    assert len(hot) == count and [h[0] for h in hot[-2:]] == [count - 1, count]


def _big_endian_copy(source: Path, target: Path) -> None:
    """The same capture as a big-endian host writes it (the writer's simple layout only)."""
    data = source.read_bytes()
    out = bytearray()
    if data[:4] == b"\xd4\xc3\xb2\xa1":  # pcap
        out += struct.pack(">IHHiIII", *struct.unpack_from("<IHHiIII", data, 0))
        pos = 24
        while pos < len(data):
            sec, frac, incl, orig = struct.unpack_from("<IIII", data, pos)
            out += struct.pack(">IIII", sec, frac, incl, orig) + data[pos + 16 : pos + 16 + incl]
            pos += 16 + incl
    else:  # pcapng: SHB, IDB and EPBs without options
        pos = 0
        while pos < len(data):
            btype, blen = struct.unpack_from("<II", data, pos)
            if btype == 0x0A0D0D0A:
                body = struct.pack(">IHHq", *struct.unpack_from("<IHHq", data, pos + 8))
            elif btype == 1:
                body = struct.pack(">HHI", *struct.unpack_from("<HHI", data, pos + 8))
            else:
                assert btype == 6
                fields = struct.unpack_from("<IIIII", data, pos + 8)
                body = struct.pack(">IIIII", *fields) + data[pos + 28 : pos + blen - 4]
            out += struct.pack(">II", btype, blen) + body + struct.pack(">I", blen)
            pos += blen
    assert len(out) == len(data)
    target.write_bytes(bytes(out))


@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
@pytest.mark.parametrize("link", [LINK_ETHERNET, LINK_NULL, LINK_RAW])
def test_a_big_endian_capture_scans_like_its_little_endian_twin(
    tmp_path: Path, fmt: str, link: int
) -> None:
    little = tmp_path / f"little.{fmt}"
    with CaptureWriter(little, fmt=fmt, link=link) as writer:  # type: ignore[arg-type]
        writer.write_all(benchmark_stream(3_000, seed=5, loss=0.1))
    big = tmp_path / f"big.{fmt}"
    _big_endian_copy(little, big)
    assert big.read_bytes() != little.read_bytes()
    hot, other = _scan(big)
    assert len(hot) > 2_000 and other
    assert (hot, other) == _scan(little)
    assert (hot, other) == _reference(big)


@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
def test_a_record_bigger_than_a_read_block(tmp_path: Path, fmt: str) -> None:
    rudp = b"\x00\x00\x00\x01\x00\x00\x00\x00A\x00\x00"
    small = _eth(ipv4("127.0.0.1", "127.0.0.3", 17, udp_segment(50000, HOT, rudp)))
    huge = _eth(b"\x00" * (9 << 20), ethertype=b"\x88\xb5")  # 9 MiB: two read blocks and more
    path = tmp_path / f"huge.{fmt}"
    with CaptureWriter(path, fmt=fmt) as writer:  # type: ignore[arg-type]
        for i, frame in enumerate([small, huge, small]):
            writer.frame(1.0 + i, frame)
    scan = CaptureScan(path, WATCHED, TCP_WATCHED)
    list(scan)
    assert scan.frames == 3 and not scan.truncated
    hot, _ = _scan(path)
    assert [h[0] for h in hot] == [1, 3] and all(h[4] == rudp for h in hot)
