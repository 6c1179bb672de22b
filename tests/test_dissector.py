"""The generated Lua dissector: derived from the wire tables, and run in real tshark."""

from __future__ import annotations

import os
import re
import stat
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from scapy.compat import raw
from scapy.layers.dns import DNS, DNSQR
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Packet
from scapy.utils import rdpcap, wrpcap

from stacklab.analysis.decode import decode_capture
from stacklab.cli import cli
from stacklab.layers import RUDP
from stacklab.layers.lua import generate_dissector
from stacklab.wire import RUDP_HEADER_FIELDS, Flag, Ports, pack_rudp

from conftest import SEED_NAMES, requires_tshark, seed_capture

RUDP_FIELDS = ("slrudp.seq", "slrudp.ack", "slrudp.flag", "slrudp.len")
Row = tuple[int, int, bytes, int]


def test_fields_come_from_the_wire_table() -> None:
    lua = generate_dissector()
    for spec in RUDP_HEADER_FIELDS:
        assert f'"slrudp.{spec.name}"' in lua
        assert spec.description in lua
    for flag in Flag:
        assert f'[{flag.value[0]:#04x}] = "{flag.name}"' in lua
    assert 'Proto("slrudp"' in lua and 'Proto("rudp"' not in lua
    assert "dissect_tcp_pdus" in lua
    assert '"slframe.len"' in lua and '"slframe.body"' in lua


def test_ports_become_preference_defaults() -> None:
    lua = generate_dissector(Ports(rudp=9122, dns=9353, dhcp=9767, app=9121))
    assert 'Pref.uint("UDP port", 9122,' in lua
    assert 'Pref.uint("UDP port", 9353,' in lua
    assert 'Pref.uint("UDP port", 9767,' in lua
    assert 'Pref.uint("TCP port", 9121,' in lua
    assert "2122" not in lua


def test_cli_stdout_and_atomic_file(tmp_path: Path) -> None:
    runner = CliRunner()
    shown = runner.invoke(cli, ["dissector"])
    assert shown.exit_code == 0
    assert shown.output == generate_dissector()
    target = tmp_path / "stacklab.lua"
    target.write_text("old")
    os.chmod(target, 0o640)
    written = runner.invoke(cli, ["dissector", "-o", str(target), "--force", "--rudp-port", "9000"])
    assert written.exit_code == 0
    assert target.read_text() == generate_dissector(Ports(rudp=9000))
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["stacklab.lua"]  # no temporary left
    bad = runner.invoke(cli, ["dissector", "-o", str(tmp_path / "missing" / "x.lua")])
    assert bad.exit_code == 2
    assert "cannot write" in bad.output


# -- tshark differential tests ---------------------------------------------------------


@pytest.fixture(scope="module")
def lua_script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("lua") / "stacklab.lua"
    path.write_text(generate_dissector())
    return path


def _tshark(
    capture: Path, fields: list[str], *extra: str, script: Path | None = None
) -> list[list[str]]:
    """Run tshark -T fields; one list of column strings per frame (stderr ignored: root warns)."""
    cmd = ["tshark", "-n", "-r", str(capture)]
    if script is not None:
        cmd += ["-X", f"lua_script:{script}"]
    cmd += [*extra, "-T", "fields", "-E", "occurrence=a"]
    for field in fields:
        cmd += ["-e", field]
    result = subprocess.run(
        cmd, capture_output=True, text=True, timeout=60, check=True, errors="replace"
    )
    return [line.split("\t") for line in result.stdout.splitlines()]


def _char(text: str) -> bytes:
    """The flag is a one-character string: the letter, or ``\\xNN`` for an unprintable byte."""
    if len(text) == 1:
        return text.encode("latin-1")
    match = re.fullmatch(r"\\{1,2}x([0-9a-f]{2})", text)
    assert match is not None, text
    return bytes([int(match[1], 16)])


def _tshark_rudp(capture: Path, script: Path, *extra: str) -> dict[int, Row]:
    rows = {}
    for number, seq, ack, flag, length in _tshark(
        capture, ["frame.number", *RUDP_FIELDS], *extra, script=script
    ):
        if seq:
            rows[int(number)] = (int(seq), int(ack), _char(flag), int(length))
    return rows


def _scapy_rudp(capture: Path) -> dict[int, Row]:
    return {
        number: (p[RUDP].seq, p[RUDP].ack, p[RUDP].flag, p[RUDP].len)
        for number, p in enumerate(rdpcap(str(capture)), start=1)
        if RUDP in p
    }


def _fast_rudp(capture: Path, **kwargs: object) -> dict[int, Row]:
    rows = {}
    for record in decode_capture(capture, only={"rudp"}, **kwargs):  # type: ignore[arg-type]
        info = record.to_json()["rudp"]
        letter = info["flag"]  # one printable character, or \xNN
        flag = letter.encode("ascii") if len(letter) == 1 else bytes([int(letter[2:], 16)])
        rows[record.frame] = (info["seq"], info["ack"], flag, info["len"])
    return rows


@requires_tshark
@pytest.mark.tshark
@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", SEED_NAMES)
def test_tshark_scapy_and_fast_path_agree_on_every_rudp_field(name: str, lua_script: Path) -> None:
    capture = seed_capture(name)
    tshark = _tshark_rudp(capture, lua_script)
    assert tshark == _scapy_rudp(capture)
    assert tshark == _fast_rudp(capture)
    if name != "part1_flow":
        assert tshark, "the RUDP seed captures must show RUDP"


@requires_tshark
@pytest.mark.tshark
@pytest.mark.timeout(120)
def test_part1_is_no_longer_malformed_and_shows_json(lua_script: Path) -> None:
    capture = seed_capture("part1_flow")
    fields = [
        "frame.number",
        "_ws.malformed",
        "json.member_with_value",
        "slframe.len",
        "slframe.body",
    ]
    without = _tshark(capture, ["frame.number", "_ws.malformed"], "-Y", "_ws.malformed")
    assert len(without) >= 2  # mDNS calls the JSON on 5353 malformed
    rows = {int(r[0]): r[1:] for r in _tshark(capture, fields, script=lua_script)}
    assert not any(r[0] for r in rows.values())
    assert rows[1][1] == ""  # DISCOVER is not JSON
    assert rows[2][1] == "type:OFFER,assigned_ip:127.0.0.2"
    assert rows[3][1] == "domain:my-app-server.local"
    assert rows[4][1] == "status:SUCCESS,ip:127.0.0.3"
    frames = {n: (r[2], r[3]) for n, r in rows.items() if r[2]}
    assert frames[8] == ("41", "FETCH http://127.0.0.1:8080/test_file.txt")
    assert frames[21][0] == "65"
    assert frames[21][1].startswith("Hello! This is a test file")
    assert sorted(frames) == [8, 21]


def _udp(sport: int, dport: int, payload: bytes) -> Packet:
    return Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=sport, dport=dport) / payload


def _tcp(seq: int, payload: bytes, flags: str = "PA") -> Packet:
    return (
        Ether()
        / IP(src="10.0.0.1", dst="10.0.0.2")
        / TCP(sport=40000, dport=2121, seq=seq, flags=flags)
        / payload
    )


@requires_tshark
@pytest.mark.tshark
@pytest.mark.timeout(120)
def test_odd_packets_ports_and_heuristic(tmp_path: Path, lua_script: Path) -> None:
    stream = b"0000000041FETCH http://127.0.0.1:8080/test_file.txt0000000002ok"
    packets = [
        _udp(4000, 2122, pack_rudp(1, 2, b"\x07", b"abc", length=9)),  # unknown flag, short
        _udp(4000, 2122, pack_rudp(3, 4, b"D", b"abcdef", length=2)),  # padding
        *[_udp(4000, 2122, pack_rudp(i, 0, bytes([i]))) for i in (0, 0x27, 0x5C, 0x80, 0xFF)],
        _udp(5353, 5353, raw(DNS(qd=DNSQR(qname="printer.local")))),  # real mDNS
        _udp(4000, 9000, pack_rudp(5, 0, b"S")),
        _udp(4000, 9001, pack_rudp(6, 0, b"A")),
        _tcp(999, b"", "S"),
        _tcp(1000, stream[:4]),
        _tcp(1004, stream[4:30]),
        _tcp(1030, stream[30:]),
        _udp(4000, 9002, pack_rudp(7, 0, b"S") + b"x"),  # the heuristic wants an exact length
    ]
    capture = tmp_path / "odd.pcap"
    wrpcap(str(capture), packets)
    tshark = _tshark_rudp(capture, lua_script)
    assert tshark == _scapy_rudp(capture) == _fast_rudp(capture)
    assert tshark[1] == (1, 2, b"\x07", 9)
    assert sorted(tshark) == [1, 2, 3, 4, 5, 6, 7]
    moved = _tshark_rudp(
        capture, lua_script, "-o", "slrudp.port:9000", "-o", "slrudp.heuristic:TRUE"
    )
    assert moved == {9: (5, 0, b"S", 0), 10: (6, 0, b"A", 0)}
    assert moved == _fast_rudp(capture, ports=Ports(rudp=9000), heuristic=True)
    protocols = _tshark(
        capture,
        ["frame.number", "_ws.col.Protocol", "slframe.len", "slframe.body"],
        script=lua_script,
    )
    assert protocols[7][1] == "MDNS"
    assert protocols[13][2:] == ["41,2", "FETCH http://127.0.0.1:8080/test_file.txt,ok"]
