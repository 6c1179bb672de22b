"""The fast capture decoder and ``stacklab decode``: exact fields of the seed captures."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from scapy.compat import raw
from scapy.layers.dns import DNS, DNSQR
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Packet
from scapy.utils import rdpcap, wrpcap

from stacklab.analysis.decode import DecodedPacket, decode_capture
from stacklab.analysis.pcapio import CaptureError
from stacklab.cli import cli
from stacklab.layers import RUDP, DHCPJson, DNSJson
from stacklab.wire import Ports, pack_rudp

from conftest import SEED_NAMES, seed_capture

COMMAND = "FETCH http://127.0.0.1:8080/test_file.txt"


def _rudp_rows(records: list[DecodedPacket]) -> list[tuple[int, str, int, int, int]]:
    rows = []
    for r in records:
        info = r.to_json()["rudp"]
        rows.append((r.frame, info["flag"], info["seq"], info["ack"], info["len"]))
    return rows


def test_part4_matches_the_wire_table() -> None:
    records = list(decode_capture(seed_capture("part4_rudp_loss_flow"), only={"rudp"}))
    assert _rudp_rows(records) == [
        (5, "S", 100, 0, 0),
        (6, "A", 0, 101, 0),
        (7, "D", 101, 0, 41),
        (8, "A", 0, 101, 0),
        (20, "D", 1, 0, 65),
        (23, "D", 1, 0, 65),
        (24, "D", 1, 0, 65),
        (25, "D", 1, 0, 65),
        (26, "A", 0, 1, 0),
        (27, "F", 2, 0, 0),
        (28, "A", 0, 2, 0),
    ]
    client = records[0].src
    assert client.startswith("127.0.0.1:")
    assert records[0].dst == "127.0.0.3:2122"
    assert [r.src == client for r in records] == [
        True,
        False,
        True,
        False,
        False,
        False,
        False,
        False,
        True,
        False,
        True,
    ]
    assert records[2].summary() == "RUDP D seq=101 ack=0 len=41"
    # chunk 1 is resent at ~1 s intervals (Go-Back-N timeouts)
    gaps = [b.time - a.time for a, b in itertools.pairwise(records[4:8])]
    assert all(0.9 < gap < 1.1 for gap in gaps)


def test_part1_dhcp_dns_and_app_frames() -> None:
    records = list(decode_capture(seed_capture("part1_flow"), only={"dhcp", "dns", "app"}))
    out = [r.to_json() for r in records]
    assert out[0]["frame"] == 1 and out[0]["time"] == 0.0
    assert out[0]["proto"] == "dhcp" and out[0]["dhcp"] == {"text": "DISCOVER"}
    assert out[0]["dst"] == "127.0.0.1:6767"
    assert out[1]["dhcp"] == {"json": {"type": "OFFER", "assigned_ip": "127.0.0.2"}}
    assert out[2]["dns"] == {"json": {"domain": "my-app-server.local"}}
    assert out[3]["dns"] == {"json": {"status": "SUCCESS", "ip": "127.0.0.3"}}
    assert [r.summary() for r in records[:4]] == [
        "DHCP DISCOVER",
        "DHCP OFFER 127.0.0.2",
        "DNS-JSON query my-app-server.local",
        "DNS-JSON answer SUCCESS 127.0.0.3",
    ]
    request, response = out[4], out[5]
    assert (request["frame"], request["proto"], request["dst"]) == (8, "app", "127.0.0.3:2121")
    assert request["app"] == {"length": 41, "body": COMMAND}
    assert records[4].summary() == f"APP frame len=41 {COMMAND}"
    assert (response["frame"], response["src"]) == (21, "127.0.0.3:2121")
    assert response["app"]["length"] == 65
    assert response["app"]["body"].startswith("Hello! This is a test file")
    assert len(out) == 6


def test_part2_byte_counting_ack() -> None:
    records = list(decode_capture(seed_capture("part2_flow"), only={"rudp"}))
    assert _rudp_rows(records) == [
        (5, "S", 100, 0, 0),
        (6, "A", 0, 101, 0),
        (7, "D", 101, 0, 41),
        (8, "A", 0, 142, 0),
    ]


def test_every_packet_gets_a_record() -> None:
    for name in SEED_NAMES:
        path = seed_capture(name)
        frames = {r.frame for r in decode_capture(path)}
        assert frames == set(range(1, len(rdpcap(str(path))) + 1)), name


@pytest.mark.parametrize("name", SEED_NAMES)
def test_fast_path_agrees_with_scapy(name: str) -> None:
    path = seed_capture(name)
    fast = {r.frame: r for r in decode_capture(path) if r.proto in ("rudp", "dhcp", "dns")}
    scapy_seen = 0
    for number, pkt in enumerate(rdpcap(str(path)), start=1):
        for layer, proto in ((RUDP, "rudp"), (DHCPJson, "dhcp"), (DNSJson, "dns")):
            if layer not in pkt:
                continue
            scapy_seen += 1
            record = fast[number]
            assert record.proto == proto
            assert record.summary() == pkt[layer].mysummary()
            if layer is RUDP:
                info = record.to_json()["rudp"]
                rudp = pkt[RUDP]
                assert (info["seq"], info["ack"], info["len"]) == (rudp.seq, rudp.ack, rudp.len)
                assert info["flag"].encode() == rudp.flag
            else:
                assert record.info == pkt[layer].info
    assert scapy_seen == len(fast)


# -- synthetic captures -----------------------------------------------------------


def _write(tmp_path: Path, packets: list[Packet], name: str = "t.pcap") -> Path:
    path = tmp_path / name
    wrpcap(str(path), packets)
    return path


def _udp(sport: int, dport: int, payload: bytes) -> Packet:
    return Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=sport, dport=dport) / payload


def _tcp(seq: int, payload: bytes, flags: str = "PA", sport: int = 40000) -> Packet:
    return (
        Ether()
        / IP(src="10.0.0.1", dst="10.0.0.2")
        / TCP(sport=sport, dport=2121, seq=seq, flags=flags)
        / payload
    )


def test_ethernet_pcap_custom_ports_and_heuristic(tmp_path: Path) -> None:
    syn = pack_rudp(7, 0, b"S")
    path = _write(
        tmp_path,
        [
            _udp(40000, 9000, syn),
            _udp(40000, 9001, syn),
            _udp(40000, 9002, syn + b"extra"),
            _udp(40000, 9767, b"DISCOVER"),
        ],
    )
    plain = [r.proto for r in decode_capture(path)]
    assert plain == ["udp", "udp", "udp", "udp"]
    ports = Ports(rudp=9000, dhcp=9767)
    custom = [r.proto for r in decode_capture(path, ports)]
    assert custom == ["rudp", "udp", "udp", "dhcp"]
    guessed = list(decode_capture(path, ports, heuristic=True))
    assert [r.proto for r in guessed] == ["rudp", "rudp", "udp", "dhcp"]
    assert guessed[1].summary() == "RUDP S seq=7 ack=0 len=0"


def test_malformed_udp_never_raises(tmp_path: Path) -> None:
    mdns = raw(DNS(qd=DNSQR(qname="printer.local")))
    path = _write(
        tmp_path,
        [
            _udp(40000, 2122, b"short"),
            _udp(40000, 2122, pack_rudp(1, 0, b"\x07", b"abc", length=9)),
            _udp(5353, 5353, mdns),
            _udp(40000, 5353, b'{"domain": '),
            _udp(40000, 5353, b"\xff\xfe garbage"),
            _udp(40000, 6767, b"[1, 2]"),
        ],
    )
    out = [r.to_json() for r in decode_capture(path)]
    assert out[0]["proto"] == "udp" and "too short for RUDP" in out[0]["udp"]["error"]
    assert out[1]["rudp"] == {"seq": 1, "ack": 0, "flag": "\\x07", "len": 9, "payload_len": 3}
    assert out[2]["proto"] == "dns" and out[2]["dns"]["binary"].startswith("query")
    assert "printer.local" in out[2]["dns"]["binary"]
    assert out[3]["dns"]["text"] == '{"domain": ' and "invalid JSON" in out[3]["dns"]["error"]
    assert out[4]["proto"] == "dns" and "json" not in out[4]["dns"]
    assert out[5]["dhcp"] == {"text": "[1, 2]"}


def test_app_frames_split_joined_and_broken(tmp_path: Path) -> None:
    body = "x" * 250
    stream = b"0000000250" + body.encode() + b"0000000002ok0000000003\xff\xfe\xfd"
    packets = [
        _tcp(999, b"", "S"),
        _tcp(1000, stream[:5]),
        _tcp(1005, stream[5:200]),
        _tcp(1200, stream[200:]),
        _tcp(5000, b"", "S", sport=40001),
        _tcp(5001, b"notdigits!rest", sport=40001),
    ]
    records = list(decode_capture(_write(tmp_path, packets)))
    assert [(r.frame, r.proto) for r in records] == [
        (1, "tcp"),
        (2, "tcp"),
        (3, "tcp"),
        (4, "app"),
        (4, "app"),
        (4, "app"),
        (5, "tcp"),
        (6, "app"),
    ]
    long_frame, ok, binary, broken = (r.to_json()["app"] for r in records[3:6] + records[7:])
    assert long_frame == {"length": 250, "body": "x" * 200, "truncated": True}
    assert ok == {"length": 2, "body": "ok"}
    assert binary == {"length": 3, "hex": "fffefd"}
    assert "bad frame prefix" in broken["error"]


def test_non_capture_raises_capture_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pcap"
    junk.write_bytes(b"hello, not a capture")
    with pytest.raises(CaptureError, match="not a pcap"):
        decode_capture(junk)
    with pytest.raises(ValueError, match="unknown protocol"):
        decode_capture(seed_capture("part2_flow"), only={"rudp", "smtp"})


# -- the command ------------------------------------------------------------------


def test_cli_text_and_json() -> None:
    path = str(seed_capture("part4_rudp_loss_flow"))
    runner = CliRunner()
    text = runner.invoke(cli, ["decode", path])
    assert text.exit_code == 0, text.output
    lines = text.output.splitlines()
    assert len(lines) == 28
    assert lines[4].split()[0] == "5"
    assert lines[4].endswith("RUDP S seq=100 ack=0 len=0")
    assert "\x1b[" not in text.output  # no colours when not a terminal
    js = runner.invoke(cli, ["decode", "--json", "--only", "rudp,dns", path])
    assert js.exit_code == 0
    objs = [json.loads(line) for line in js.output.splitlines()]
    assert [o["proto"] for o in objs] == ["dns"] * 2 + ["rudp"] * 11
    assert objs[-1]["rudp"] == {"seq": 0, "ack": 2, "flag": "A", "len": 0, "payload_len": 0}
    assert set(objs[0]) == {"frame", "time", "src", "dst", "proto", "dns"}
    limited = runner.invoke(cli, ["decode", "--limit", "3", path])
    assert len(limited.output.splitlines()) == 3


def test_cli_colours_when_asked() -> None:
    result = CliRunner().invoke(
        cli, ["decode", "--color", "--limit", "2", str(seed_capture("part2_flow"))]
    )
    assert result.exit_code == 0
    assert "\x1b[" in result.output and "DHCP DISCOVER" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["/nonexistent/x.pcap"], "no such file"),
        (["--only", "smtp", "CAPTURE"], "--only: unknown protocol"),
        (["--rudp-port", "70000", "CAPTURE"], "70000"),
    ],
)
def test_cli_bad_input_is_one_line(args: list[str], message: str) -> None:
    args = [str(seed_capture("part2_flow")) if a == "CAPTURE" else a for a in args]
    result = CliRunner().invoke(cli, ["decode", *args])
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


def test_cli_directory_and_junk(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pcapng"
    junk.write_bytes(b"\x00" * 64)
    for target, message in ((tmp_path, "is a directory"), (junk, "not a pcap")):
        result = CliRunner().invoke(cli, ["decode", str(target)])
        assert result.exit_code == 2
        assert result.output.strip() == f"stacklab: error: {target}: {message}" + (
            ", not a capture file" if message == "is a directory" else " or pcapng capture file"
        )


@pytest.mark.timeout(60)
def test_closed_pipe_is_quiet(tmp_path: Path) -> None:
    packets = [_udp(40000, 2122, pack_rudp(i, 0, b"D", b"x" * 20)) for i in range(3000)]
    path = _write(tmp_path, packets, "many.pcap")
    proc = subprocess.Popen(
        [sys.executable, "-m", "stacklab", "decode", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read()
    proc.stderr.close()
    assert proc.wait(timeout=30) == 0
    assert b"RUDP D seq=0" in first
    assert b"Traceback" not in err and b"BrokenPipe" not in err
