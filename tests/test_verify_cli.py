"""``stacklab verify`` as a command: exit codes, JSON shape, JUnit XML, bad input."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from click.testing import CliRunner

from stacklab.analysis.synth import Conversation, simulate_transfer, write_capture
from stacklab.cli import cli

from conftest import seed_capture


def _run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["verify", *args])
    return result.exit_code, result.stdout, result.stderr


def test_exit_codes_on_seeds() -> None:
    assert _run(str(seed_capture("part4_rudp_loss_flow")))[0] == 0
    assert _run(str(seed_capture("part2_flow")))[0] == 1
    assert _run(str(seed_capture("part2_flow")), "--expect", "handshake")[0] == 0
    # several captures: one failing is enough for exit 1
    assert _run(str(seed_capture("part3_rudp_clean_flow")), str(seed_capture("part2_flow")))[0] == 1


def test_json_contract() -> None:
    code, out, _ = _run(str(seed_capture("part4_rudp_loss_flow")), "--json")
    assert code == 0
    doc = json.loads(out)
    assert set(doc) == {"captures", "unreadable", "passed"} and doc["passed"] is True
    assert doc["unreadable"] == []
    (cap,) = doc["captures"]
    assert {
        "path",
        "packets",
        "link_type",
        "checks",
        "rudp_sessions",
        "tcp_sessions",
        "dhcp",
        "dns",
    } <= set(cap)
    assert cap["packets"] == 28 and cap["link_type"] == "null"
    for check in cap["checks"]:
        assert set(check) == {"id", "session", "status", "detail", "frames"}
        assert check["status"] in ("pass", "fail", "skip")
    (s,) = cap["rudp_sessions"]
    for key in (
        "client",
        "server",
        "isn",
        "command",
        "chunks",
        "bytes",
        "sha256",
        "data_packets",
        "retransmissions",
        "go_backs",
        "max_flight",
        "flights",
        "complete",
        "timeouts",
    ):
        assert key in s
    assert (s["data_packets"], s["retransmissions"], s["go_backs"]) == (4, 3, 3)
    assert [f[1] for f in s["flights"]] == [1, 1, 1, 1]


def test_human_output_lists_failures_first_with_frames(tmp_path: Path) -> None:
    conv = Conversation()
    conv.handshake(synack=555)
    conv.data(1, b"abc")
    conv.ack(1)
    conv.fin(2)
    conv.ack(2)
    path = tmp_path / "bad.pcap"
    write_capture(path, conv.packets)
    code, out, _ = _run(str(path))
    assert code == 1
    lines = [line for line in out.splitlines() if "rudp." in line]
    assert "FAIL" in lines[0] and "rudp.handshake" in lines[0] and "SYN-ACK acknowledges 555" in out
    assert "FAIL: 4 passed, 1 failed, 1 skipped" in out  # rudp.integrity: no trailers negotiated
    # The first failure, drawn: the frames around it, the failing one marked.
    assert "first failure, rudp.handshake at frame 2: SYN-ACK acknowledges 555" in out
    assert any(line.startswith(">>") and "<< rudp.handshake" in line for line in out.splitlines())


def test_junit_has_one_case_per_check(tmp_path: Path) -> None:
    junit = tmp_path / "out" / "verify.xml"
    junit.parent.mkdir()
    code, _, _ = _run(str(seed_capture("part2_flow")), "--junit", str(junit))
    assert code == 1
    root = ET.parse(junit).getroot()
    (suite,) = root.findall("testsuite")
    cases = suite.findall("testcase")
    assert len(cases) == int(suite.get("tests", "0")) == 8
    failed = [c.get("classname") for c in cases if c.find("failure") is not None]
    assert sorted(failed) == ["rudp.delivery", "rudp.teardown"]
    assert root.get("failures") == "2" and root.get("skipped") == "3"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "not a pcap or pcapng capture file"),
        (b"hello, this is text\n" * 3, "not a pcap or pcapng capture file"),
        (b"\xd4\xc3\xb2\xa1\x02\x00", "truncated pcap header"),
        (
            b"\xd4\xc3\xb2\xa1"
            + bytes(16)
            + b"\x01\x00\x00\x00"
            + bytes(8)
            + b"\xff\xff\xff\x7f" * 2,
            "corrupt pcap record",
        ),
        (b"\x0a\x0d\x0d\x0a\x1c\x00\x00\x00\x00\x00\x00\x00", "corrupt pcapng"),
    ],
)
def test_unreadable_input_exits_2_with_one_line(
    tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "input.pcap"
    path.write_bytes(content)
    code, out, err = _run(str(path))
    assert code == 2
    assert err.startswith("stacklab: error: ") and message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err + out


def test_missing_file_and_directory_exit_2(tmp_path: Path) -> None:
    for target, text in ((tmp_path / "nope.pcap", "no such file"), (tmp_path, "is a directory")):
        code, _, err = _run(str(target))
        assert code == 2 and text in err


def test_bad_options_exit_2(tmp_path: Path) -> None:
    code, _, err = _run(str(seed_capture("part3_rudp_clean_flow")), "--expect", "handshake,bogus")
    assert code == 2 and "unknown check 'bogus'" in err
    code, _, err = _run(str(seed_capture("part3_rudp_clean_flow")), "--rudp-port", "5353")
    assert code == 2 and "must all differ" in err
    code, _, err = _run(
        str(seed_capture("part3_rudp_clean_flow")), "--junit", str(tmp_path / "no" / "x.xml")
    )
    assert code == 2 and "cannot write" in err


@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
def test_truncated_capture_is_verified_up_to_the_cut(tmp_path: Path, fmt: str) -> None:
    packets = simulate_transfer(bytes(3000), rng=random.Random(5))
    whole = tmp_path / f"whole.{fmt}"
    write_capture(whole, packets, fmt=fmt)  # type: ignore[arg-type]
    data = whole.read_bytes()
    assert _run(str(whole))[0] == 0
    cut = tmp_path / f"cut.{fmt}"
    cut.write_bytes(data[: len(data) - 20])
    code, out, err = _run(str(cut), "--json")
    assert code == 1
    assert "warning" in err and "truncated" in err
    (cap,) = json.loads(out)["captures"]
    assert cap["truncated"] is True and cap["packets"] == len(packets) - 1
    failing = {c["id"] for c in cap["checks"] if c["status"] == "fail"}
    assert failing == {"rudp.teardown"}  # the cut removed the FIN's ACK


def test_custom_ports(tmp_path: Path) -> None:
    conv = Conversation(server=("127.0.0.3", 9999))
    conv.handshake()
    conv.data(1, b"x")
    conv.ack(1)
    conv.fin(2)
    conv.ack(2)
    path = tmp_path / "port.pcap"
    write_capture(path, conv.packets)
    assert _run(str(path))[0] == 1  # nothing on the default ports
    assert _run(str(path), "--rudp-port", "9999")[0] == 0


@pytest.mark.timeout(30)
def test_small_file_imports_nothing_heavy() -> None:
    code = (
        "import sys\n"
        "from stacklab.cli import main\n"
        "try:\n"
        f"    main(['-q', 'verify', {str(seed_capture('part4_rudp_loss_flow'))!r}])\n"
        "except SystemExit as e:\n"
        "    assert e.code == 0, e.code\n"
        "heavy = [m for m in ('scapy', 'matplotlib', 'pyshark', 'numpy') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    # Speed itself is measured by bench/verify_bench.py, not asserted here: what keeps a
    # small verify fast is importing nothing heavy, and that is what this test checks.
    assert done.returncode == 0, done.stderr
