"""The dissector's view of stacklab's extensions, checked in real tshark.

The flag as a one-character string, the CRC32C trailer with a Wireshark-style
status (good, or bad in a session that negotiated integrity), the SYN options
as fields, datagrams too short for the header flagged with Expert Info, and
no stray ``data`` layer: on the seed captures, the reference captures and
crafted edge cases, each count compared with stacklab's own decode.
"""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Packet
from scapy.utils import wrpcap

import stacklab
from stacklab.layers import RUDP
from stacklab.layers.lua import generate_dissector

from conftest import REPO, SEED_NAMES, requires_tshark, seed_capture

pytestmark = [requires_tshark, pytest.mark.tshark, pytest.mark.timeout(120)]

REFERENCE = sorted((REPO / "captures").glob("rudp-*.pcapng"))


@pytest.fixture(scope="module")
def lua(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("lua") / "stacklab.lua"
    path.write_text(generate_dissector())
    return path


def _fields(capture: Path, lua: Path, fields: list[str], display: str = "") -> list[list[str]]:
    cmd = ["tshark", "-n", "-r", str(capture), "-X", f"lua_script:{lua}"]
    if display:
        cmd += ["-Y", display]
    cmd += ["-T", "fields", "-E", "occurrence=a"]
    for field in fields:
        cmd += ["-e", field]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True)
    return [line.split("\t") for line in done.stdout.splitlines()]


def _captures() -> list[Path]:
    return [seed_capture(name) for name in SEED_NAMES] + REFERENCE


def test_flag_crc_and_layers_agree_with_decode_on_every_capture(lua: Path) -> None:
    for path in _captures():
        rows = _fields(
            path,
            lua,
            ["frame.number", "slrudp.flag", "slrudp.crc32c.status", "frame.protocols"],
            "slrudp",
        )
        decoded = {p.frame: p.info for p in stacklab.decode(path, only="rudp")}
        assert [int(r[0]) for r in rows] == sorted(decoded), path
        for number, flag, status, protocols in rows:
            info = decoded[int(number)]
            assert info is not None
            assert flag == info["flag"], (path, number)
            assert (status == "1") == (info.get("crc32c") == "ok"), (path, number)
            assert protocols.endswith(":slrudp"), (path, number, protocols)  # no data layer


def test_filtering_on_the_flag_letter_counts_what_decode_counts(lua: Path) -> None:
    for path in (seed_capture("part4_rudp_loss_flow"), REPO / "captures" / "rudp-loss.pcapng"):
        decoded = [p.info for p in stacklab.decode(path, only="rudp") if p.info]
        for letter, count in Counter(info["flag"] for info in decoded).items():
            shown = _fields(path, lua, ["frame.number"], f'slrudp.flag == "{letter}"')
            assert len(shown) == count, (path, letter)


def test_options_of_the_negotiated_handshake_are_fields(lua: Path) -> None:
    path = REPO / "captures" / "rudp-negotiated.pcapng"
    rows = _fields(
        path,
        lua,
        [
            "slrudp.flag",
            "slrudp.options.window",
            "slrudp.options.chunk",
            "slrudp.options.integrity",
            "slrudp.options.ack_every",
            "slrudp.options",
        ],
        "slrudp.options",
    )
    analysis = stacklab.verify(path)
    accepted = analysis.sessions[0].options
    assert accepted is not None
    assert [r[0] for r in rows] == ["S", "A"]  # the SYN and the SYN-ACK
    synack = rows[1]
    assert json.loads(synack[5]) == accepted
    assert int(synack[1]) == accepted["window"] and int(synack[2]) == accepted["chunk"]
    assert int(synack[4]) == accepted["ack_every"] and synack[3] in ("1", "True")
    # every datagram of the session carries a good trailer
    good = _fields(path, lua, ["frame.number"], "slrudp.crc32c.status == 1")
    assert len(good) == analysis.sessions[0].packets


def _udp(sport: int, dport: int, payload: bytes) -> Packet:
    return Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=sport, dport=dport) / payload


def test_bad_trailer_only_where_integrity_was_negotiated(tmp_path: Path, lua: Path) -> None:
    offer = b'{"ack_every":1,"chunk":500,"integrity":true,"v":1,"window":8}'
    plain = b'{"v":1}'
    packets = [
        _udp(4000, 2122, bytes(RUDP(seq=100, flag="S", options=offer).seal())),
        _udp(2122, 4000, bytes(RUDP(seq=77, ack=101, flag="A", options=offer).seal())),
        _udp(2122, 4000, bytes((RUDP(seq=1, flag="D") / b"chunk one").seal())),
        _udp(2122, 4000, bytes(RUDP(seq=2, flag="D", crc32c=0xDEADBEEF) / b"chunk two")),
        # a session without integrity: the same bytes are ordinary content there
        _udp(4001, 2122, bytes(RUDP(seq=100, flag="S", options=plain))),
        _udp(2122, 4001, bytes(RUDP(seq=2, flag="D", crc32c=0xDEADBEEF) / b"chunk two")),
    ]
    capture = tmp_path / "integrity.pcap"
    wrpcap(str(capture), packets)
    rows = _fields(
        capture, lua, ["frame.number", "slrudp.crc32c.status", "_ws.expert.message"], "slrudp"
    )
    status = {int(r[0]): r[1] for r in rows}
    assert status == {1: "1", 2: "1", 3: "1", 4: "0", 5: "", 6: ""}
    experts = {int(r[0]): r[2] for r in rows}
    assert experts[4] == "Bad CRC32C trailer" and experts[3] == ""
    assert len(_fields(capture, lua, ["frame.number"], 'slrudp.crc32c.status == "Bad"')) == 1


def test_datagrams_shorter_than_the_header_are_flagged(tmp_path: Path, lua: Path) -> None:
    packets = [
        _udp(4000, 2122, b""),
        _udp(4000, 2122, b"\x00\x01\x02"),
        _udp(2122, 4000, b"0123456789"),  # one byte short
        _udp(4000, 2122, bytes(RUDP(seq=1, flag="S"))),  # a whole header: no warning
    ]
    capture = tmp_path / "short.pcap"
    wrpcap(str(capture), packets)
    rows = _fields(
        capture,
        lua,
        ["frame.number", "frame.protocols", "slrudp.truncated", "_ws.expert.message"],
    )
    # UDP hands an empty datagram to no dissector at all; every other one is slrudp's
    assert [r[1].split(":")[-1] for r in rows] == ["udp", "slrudp", "slrudp", "slrudp"]
    short = "Datagram shorter than the 11-byte RUDP header"
    assert [r[3] for r in rows] == ["", short, short, ""]
    assert [r[2] for r in rows][1:] == ["000102", "30313233343536373839", ""]
    assert len(_fields(capture, lua, ["frame.number"], "_ws.expert.severity == error")) == 2
