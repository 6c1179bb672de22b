"""Fresh captures of every scenario, each in its own private network namespace, verified.

This is the project's own use of ``stacklab verify`` on what ``stacklab
capture`` records: a behaviour change in the stack shows up here as a failed
check.  Each run uses a uniquely named namespace, so two copies of the suite
(and a ``stacklab up`` on the default ports) never clash.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from stacklab.analysis.checks import parse_expect
from stacklab.analysis.pcapio import CaptureReader, read_packets
from stacklab.analysis.sessions import CaptureAnalysis, VerifyOptions
from stacklab.analysis.verify import analyze_capture
from stacklab.cli import cli
from stacklab.tools.scenarios import SCENARIOS
from stacklab.wire import APP_RUDP_PORT, STACKLAB_DEFAULT_CHUNK, unpack_rudp

from conftest import requires_netns_capture

pytestmark = [
    pytest.mark.netns,
    pytest.mark.slow,
    pytest.mark.timeout(120),
    requires_netns_capture,
]


def capture(name: str, out: Path) -> CaptureAnalysis:
    result = CliRunner().invoke(cli, ["capture", name, "--netns", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert out.is_file()
    return analyze_capture(out, VerifyOptions(expect=parse_expect(SCENARIOS[name].expect)))


def failures(analysis: CaptureAnalysis) -> list[str]:
    return [f"{c.id} {c.session}: {c.detail}" for c in analysis.checks if c.status == "fail"]


def rudp_headers(path: Path, direction: str) -> list[tuple[int, int, bytes, int]]:
    out = []
    for p in read_packets(path):
        wanted = p.dport if direction == "c2s" else p.sport
        if p.proto == "udp" and wanted == APP_RUDP_PORT:
            h, _ = unpack_rudp(p.payload)
            out.append((h.seq, h.ack, h.flag, h.length))
    return out


def check_tcp_flow(a: CaptureAnalysis) -> None:
    assert [e.reply["assigned_ip"] for e in a.dhcp] == ["127.0.0.2"]
    assert [e.reply["ip"] for e in a.dns] == ["127.0.0.3"]
    (app,) = a.tcp_sessions
    assert app.request == "FETCH http://127.0.0.1:8080/test_file.txt"
    assert app.response_length == 65 and app.error is None
    assert not a.rudp_sessions


def check_handshake(a: CaptureAnalysis) -> None:
    (s,) = a.rudp_sessions
    assert s.handshake and s.isn == 100 and s.command_ack == "seq"
    assert s.data_packets == 0 and s.packets == 4  # SYN, SYN-ACK, command, command ACK


def check_clean(a: CaptureAnalysis) -> None:
    (s,) = a.rudp_sessions
    assert s.complete and s.chunks == 40 and s.bytes == 20_000
    assert s.retransmissions == 0 and s.go_backs == 0
    assert s.max_window == 5


def check_loss(a: CaptureAnalysis) -> None:
    (s,) = a.rudp_sessions
    assert s.complete and s.bytes == 8_000
    assert s.retransmissions > 0 and s.go_backs > 0
    assert s.go_back_kinds["timeout"] > 0, s.go_back_kinds


def check_advanced(a: CaptureAnalysis) -> None:
    (s,) = a.rudp_sessions
    assert s.complete and s.bytes == 30_000
    assert s.max_window == 5 and s.go_backs > 0
    assert s.max_ack_delay > 0.005  # the receiver's delay is on the wire
    flights = [int(f[1]) for f in s.flights]
    at_max = flights.index(5)
    back = next(i for i in range(at_max, len(flights)) if flights[i] < 5)
    assert 5 in flights[back:], flights  # up to the maximum, down after the loss, up again


def check_negotiated(a: CaptureAnalysis) -> None:
    (s,) = a.rudp_sessions
    assert s.complete and s.bytes == 120_000
    assert s.command == "FETCH http://127.0.0.1:8080/rudp-negotiated.txt"  # no CRC32C trailer
    assert s.options["integrity"] is True and s.options["chunk"] == STACKLAB_DEFAULT_CHUNK
    assert s.chunks == -(-120_000 // STACKLAB_DEFAULT_CHUNK)
    assert s.max_window > 5  # past the original's limit: the negotiated window applies
    assert s.sha256 is not None


CHECKS: dict[str, Callable[[CaptureAnalysis], None]] = {
    "tcp-flow": check_tcp_flow,
    "rudp-handshake": check_handshake,
    "rudp-clean": check_clean,
    "rudp-loss": check_loss,
    "rudp-advanced": check_advanced,
    "rudp-negotiated": check_negotiated,
}


@pytest.mark.parametrize("name", list(CHECKS))
def test_fresh_capture_passes_verify(name: str, tmp_path: Path) -> None:
    out = tmp_path / f"{name}.pcapng"
    analysis = capture(name, out)
    assert analysis.passed, failures(analysis)
    assert not analysis.truncated and analysis.link_type == "ethernet"
    CHECKS[name](analysis)
    with CaptureReader(out) as reader:
        frames = list(reader)
        comments = reader.comments
    assert any(f"stacklab capture {name}:" in c for c in comments), comments
    # the sync markers are gone: every frame belongs to the stack's ports
    ports = {6767, 5353, 2121, 2122, 8080}
    for p in read_packets(out):
        assert ports & {p.sport, p.dport}, p
    assert len(frames) == analysis.packets


def _first_copies(headers: list[tuple[int, int, bytes, int]]) -> list[tuple[int, int, bytes, int]]:
    seen: set[tuple[int, int, bytes, int]] = set()
    out = []
    for header in headers:
        if header[2] in (b"D", b"F") and header in seen:
            continue  # a resend of a DATA or the FIN
        seen.add(header)
        out.append(header)
    return out


def test_same_scenario_same_packets(tmp_path: Path) -> None:
    """Two runs of rudp-clean send the same RUDP packets (ports and timing aside).

    The server's side is identical header for header.  The client ACKs each
    batch of DATA it reads, so how many cumulative ACKs it sends depends on
    scheduling: its side is compared as the handshake plus rising ACKs.
    """
    first, second = tmp_path / "a.pcapng", tmp_path / "b.pcapng"
    assert capture("rudp-clean", first).passed
    assert capture("rudp-clean", second).passed
    # A loss probe may fire on a loaded machine (a timer of 10 ms or so): the
    # first copy of each datagram is what the scenario fixes.
    a, b = _first_copies(rudp_headers(first, "s2c")), _first_copies(rudp_headers(second, "s2c"))
    assert a == b and len(a) == 1 + 1 + 40 + 1  # SYN-ACK, command ACK, 40 DATA, FIN
    for path in (first, second):
        c2s = rudp_headers(path, "c2s")
        assert c2s[:2] == [(100, 0, b"S", 0), (101, 0, b"D", 42)]
        acks = [ack for _, ack, flag, _ in c2s[2:]]
        assert acks == sorted(set(acks)) and acks[-2:] == [40, 41]


def test_all_into_a_folder_and_verify_flag(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli,
        ["capture", "rudp-handshake", "--netns", "-o", str(tmp_path) + os.sep, "--verify"],
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "rudp-handshake.pcapng").is_file()
    assert "PASS" in result.output
    # the private namespace is gone afterwards
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    names = listing.stdout
    assert f"stacklab-{os.getpid()}-" not in names
