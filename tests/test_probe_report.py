"""Probe outputs: the failure report, JUnit XML, pcapng per failure, exit codes."""

from __future__ import annotations

import json
import shlex
import socket
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from click.testing import CliRunner

from stacklab import wire
from stacklab.analysis.pcapio import read_packets
from stacklab.cli import cli
from stacklab.tools.probe_cases import Case, ProbeContext, generate_case
from stacklab.tools.probe_report import RunInfo, decode_packet, exchanges_to_packets
from stacklab.tools.probe_runner import (
    ANSWERED,
    BAD_REPLY,
    ERROR_REPLY,
    FAILURE,
    IGNORED,
    Exchange,
    ProbeRunner,
    check_liveness_reply,
    classify_replies,
    wrong_handshake_answer,
)

from conftest import requires_tshark
from fragile_servers import FragileAppServer, FragileRudpServer

pytestmark = pytest.mark.timeout(60)


def _fail_run(port: int, protocol: str, tmp_path: Path, *extra: str) -> tuple[int, str]:
    result = CliRunner().invoke(
        cli,
        [
            "probe",
            f"127.0.0.1:{port}",
            "--protocol",
            protocol,
            "--timeout",
            "0.5",
            "--recover",
            "0.3",
            "--pcap-dir",
            str(tmp_path / "pcaps"),
            "--junit",
            str(tmp_path / "junit.xml"),
            *extra,
        ],
    )
    return result.exit_code, result.stdout


def test_human_failure_report_names_case_bytes_result_and_replay(
    fragile_app: FragileAppServer, tmp_path: Path
) -> None:
    code, out = _fail_run(fragile_app.port, "app", tmp_path, "--cases", "20", "--seed", "11")
    assert code == 1
    assert "FAIL case 1 (app.command: command not-utf8)" in out
    case = generate_case("app", 11, 1)
    assert case.packets[0].hex()[:64] in out.replace("\n", "")
    assert "crashed" in out
    replay = (
        next(line for line in out.splitlines() if "replay" in line).split("replay", 1)[1].strip()
    )
    assert shlex.split(replay) == [
        "stacklab",
        "probe",
        f"127.0.0.1:{fragile_app.port}",
        "--protocol",
        "app",
        "--seed",
        "11",
        "--replay",
        "1",
        "--timeout",
        "0.5",
    ]
    assert "stopped" in out

    suite = ET.parse(tmp_path / "junit.xml").getroot().find("testsuite")
    assert suite is not None and suite.get("tests") == "2" and suite.get("failures") == "1"
    failed = [tc for tc in suite.iter("testcase") if tc.find("failure") is not None]
    assert len(failed) == 1 and "replay: stacklab probe" in (failed[0].findtext("failure") or "")


def test_failure_pcapng_holds_the_tcp_case_and_the_liveness_attempts(
    fragile_app: FragileAppServer, tmp_path: Path
) -> None:
    code, _ = _fail_run(fragile_app.port, "app", tmp_path, "--cases", "5", "--seed", "1")
    assert code == 1
    (pcap,) = (tmp_path / "pcaps").iterdir()
    assert pcap.name == "probe-app-seed1-case1.pcapng"
    packets = list(read_packets(pcap))
    assert all(p.proto == "tcp" for p in packets)
    sent = b"".join(p.payload for p in packets if p.dport == fragile_app.port)
    assert generate_case("app", 1, 1).packets[0] in sent


@requires_tshark
def test_failure_pcapng_opens_in_tshark(fragile_rudp: FragileRudpServer, tmp_path: Path) -> None:
    code, _ = _fail_run(fragile_rudp.port, "rudp", tmp_path, "--cases", "300")
    assert code == 1
    (pcap,) = (tmp_path / "pcaps").iterdir()
    out = subprocess.run(
        ["tshark", "-r", str(pcap), "-T", "fields", "-e", "udp.length"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout.split()
    assert "8" in out  # the empty datagram that hangs the server: a bare 8-byte UDP header


def test_udp_exchanges_become_one_packet_each() -> None:
    ex = [
        Exchange(1.0, True, b"DISCOVER", ("127.0.0.1", 40000), ("127.0.0.1", 6767), "case"),
        Exchange(
            1.1, False, b'{"type": "OFFER"}', ("127.0.0.1", 40000), ("127.0.0.1", 6767), "case"
        ),
    ]
    first, second = exchanges_to_packets(ex, tcp=False)
    assert bytes(first["UDP"].payload) == b"DISCOVER" and first["UDP"].dport == 6767
    assert second["UDP"].sport == 6767 and float(second.time) == pytest.approx(1.1)


def test_decode_packet_is_readable() -> None:
    assert decode_packet("rudp", wire.pack_rudp(100, 0, b"S")) == "RUDP S seq=100 ack=0 len=0"
    assert "actual payload 3" in decode_packet("rudp", wire.pack_rudp(1, 0, b"D", b"abc", 9))
    assert "shorter than" in decode_packet("rudp", b"\x00\x01")
    assert decode_packet("app", wire.encode_frame(b"FETCH x")).startswith("frame len=7")
    assert "\\xff" in decode_packet("dns", b"\xff\xfe")


def test_classification_of_replies() -> None:
    offer = b'{"type": "OFFER", "assigned_ip": "127.0.0.2"}'
    assert check_liveness_reply("dhcp", offer) is None
    assert check_liveness_reply("dhcp", b'{"type": "NAK"}') is not None
    assert check_liveness_reply("rudp", wire.pack_rudp(0, 101, b"A")) is None
    assert "ack=102" in (check_liveness_reply("rudp", wire.pack_rudp(0, 102, b"A")) or "")
    assert check_liveness_reply("dns", b'{"status": "NOT_FOUND", "ip": null}') is None
    assert check_liveness_reply("app", wire.encode_frame(b"ok")) is None
    assert check_liveness_reply("app", b"0000000009short") is not None

    assert classify_replies("dns", []) == (IGNORED, "no reply")
    assert classify_replies("dns", [b'{"status": "SUCCESS", "ip": "127.0.0.3"}'])[0] == ANSWERED
    assert classify_replies("dns", [b'{"status": "ERROR", "ip": null}'])[0] == ERROR_REPLY
    outcome, detail = classify_replies("dns", [b"not json, not dns"])
    assert outcome == FAILURE and detail.startswith(BAD_REPLY)
    assert classify_replies("rudp", [wire.pack_rudp(1, 0, b"D", b"ERROR: nope")])[0] == ERROR_REPLY
    assert classify_replies("rudp", [b"short"])[0] == FAILURE
    assert (
        classify_replies("app", [wire.encode_frame(wire.ERROR_UNKNOWN_COMMAND.encode())])[0]
        == ERROR_REPLY
    )
    assert classify_replies("app", [b"00000000"])[0] == FAILURE


def test_replay_command_carries_non_default_url_and_name() -> None:
    info = RunInfo("h:1", "dns", 3, 0.5, ProbeContext(url="http://a b/", name="x.test"))
    argv = shlex.split(info.replay_command(42))
    assert argv[argv.index("--url") + 1] == "http://a b/"
    assert argv[argv.index("--name") + 1] == "x.test"
    assert argv[argv.index("--replay") + 1] == "42"


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    "args",
    [
        ["nohostport", "--protocol", "dns"],
        ["127.0.0.1:99999", "--protocol", "dns"],
        ["127.0.0.1:53", "--protocol", "smtp"],
        ["127.0.0.1:53", "--protocol", "dns", "--cases", "0"],
        ["127.0.0.1:53", "--protocol", "dns", "--timeout", "-1"],
    ],
)
def test_bad_arguments_exit_2_with_one_line(args: list[str]) -> None:
    result = CliRunner().invoke(cli, ["probe", *args])
    assert result.exit_code == 2
    assert "Traceback" not in result.output


@pytest.mark.parametrize("protocol", ["dns", "rudp", "app"])
def test_unreachable_target_exits_2(protocol: str) -> None:
    port = _free_udp_port()
    result = CliRunner().invoke(
        cli, ["probe", f"127.0.0.1:{port}", "--protocol", protocol, "--timeout", "0.2", "--json"]
    )
    assert result.exit_code == 2
    assert "does not answer a valid" in result.stderr
    assert result.stdout == ""


def test_replay_of_a_surviving_case_exits_0(fragile_app: FragileAppServer) -> None:
    result = CliRunner().invoke(
        cli,
        ["probe", f"127.0.0.1:{fragile_app.port}", "--protocol", "app", "--replay", "0", "--json"],
    )
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["cases"] == 1 and document["results"][ANSWERED] == 1


def test_ctrl_c_prints_the_partial_report_and_exits_130(
    fragile_rudp: FragileRudpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = ProbeRunner.run_case
    calls = []

    def interrupted(self: ProbeRunner, case: object, recover: bool = True) -> object:
        calls.append(case)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(self, case, recover)  # type: ignore[arg-type]

    monkeypatch.setattr(ProbeRunner, "run_case", interrupted)
    result = CliRunner().invoke(
        cli, ["probe", f"127.0.0.1:{fragile_rudp.port}", "--protocol", "rudp", "--json"]
    )
    assert result.exit_code == 130
    document = json.loads(result.stdout)
    assert document["cases"] == 2 and "interrupted during case 2" in document["stopped"]


def test_a_plain_syn_must_get_the_wire_syn_ack() -> None:
    syn_case = generate_case("rudp", 0, 0)  # SYN with seq=0: the first boundary case
    assert syn_case.packets == (wire.pack_rudp(0, 0, b"S"),)
    assert wrong_handshake_answer(syn_case, [wire.pack_rudp(0, 1, b"A")]) is None
    assert wrong_handshake_answer(syn_case, []) is None
    problem = wrong_handshake_answer(syn_case, [wire.pack_rudp(0, 2, b"A")])
    assert problem is not None and "expected A seq=0 ack=1" in problem
    wrapping = Case(0, "rudp", "t", "t", (wire.pack_rudp(wire.RUDP_MAX_SEQ, 0, b"S"),))
    assert wrong_handshake_answer(wrapping, [wire.pack_rudp(0, 0, b"A")]) is None
    not_plain = Case(0, "rudp", "t", "t", (wire.pack_rudp(100, 0, b"S", b"{}"),))
    assert wrong_handshake_answer(not_plain, [wire.pack_rudp(0, 7, b"A")]) is None
