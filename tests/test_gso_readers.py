"""Every capture reader splits GSO batches alike, and reports a batch that is not one.

The batched captures here are made from the reference captures by merging
runs of consecutive, equal-size server datagrams into one UDP datagram, as a
loopback capture records a GSO send.  Then: decode, verify (both engines),
the Scapy layer and the Lua dissector must read the batched capture as the
original one; a batch whose length fields disagree, or one in a session of
the original protocol, is malformed and said so.
"""

from __future__ import annotations

import errno
import os
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner
from scapy.layers.inet import IP, UDP
from scapy.packet import Packet
from scapy.utils import rdpcap, wrpcap

from stacklab.analysis import tshark_engine
from stacklab.analysis.decode import decode_capture
from stacklab.analysis.sessions import CaptureAnalysis
from stacklab.analysis.verify import analyze_capture
from stacklab.cli import cli
from stacklab.commands.up import config_from_options
from stacklab.config import RudpSettings
from stacklab.layers import RUDP
from stacklab.layers.lua import generate_dissector
from stacklab.services.app_rudp import RudpAppServer
from stacklab.services.fetcher import FetchPolicy
from stacklab.services.rudp_io import DatagramSender, gso_supported
from stacklab.transport.client import ClientSession
from stacklab.transport.options import STACKLAB_DEFAULT
from stacklab.wire import APP_RUDP_PORT, RUDP_HEADER_LEN

from conftest import REPO, requires_tshark, wait_for

NEGOTIATED = REPO / "captures" / "rudp-negotiated.pcapng"
LEGACY = REPO / "captures" / "rudp-clean.pcapng"


def _is_server_data(pkt: Packet) -> bool:
    return UDP in pkt and pkt[UDP].sport == APP_RUDP_PORT and bytes(pkt[UDP].payload)[8:9] == b"D"


def batch_capture(
    source: Path,
    target: Path,
    damage: Callable[[list[bytes]], list[bytes]] | None = None,
    most: int = 4,
) -> int:
    """Write ``source`` with runs of equal server DATA merged, as GSO; return the batch count."""
    packets = list(rdpcap(str(source)))
    out: list[Packet] = []
    batches = 0
    i = 0
    while i < len(packets):
        pkt = packets[i]
        j = i + 1
        if _is_server_data(pkt):
            size = len(bytes(pkt[UDP].payload))
            while (
                j < len(packets)
                and j - i < most
                and _is_server_data(packets[j])
                and len(bytes(packets[j][UDP].payload)) == size
            ):
                j += 1
        if j - i > 1:
            segments = [bytes(p[UDP].payload) for p in packets[i:j]]
            if damage is not None and batches == 0:
                segments = damage(segments)
            merged = pkt.copy()
            merged[UDP].remove_payload()
            merged[UDP].add_payload(b"".join(segments))
            del merged[IP].len, merged[IP].chksum, merged[UDP].len, merged[UDP].chksum
            merged.time = pkt.time
            out.append(merged.__class__(bytes(merged)))
            out[-1].time = pkt.time
            batches += 1
        else:
            out.append(pkt)
        i = j
    wrpcap(str(target), out)
    return batches


def _rudp_rows(path: Path) -> list[tuple[str, int, int, str, int]]:
    return [
        (r.src, r.info["seq"], r.info["ack"], r.info["flag"], r.info["len"])
        for r in decode_capture(path, only={"rudp"})
        if r.info is not None
    ]


def _verdicts(analysis: CaptureAnalysis) -> list[tuple[str, str]]:
    return [(c.id, c.status) for c in analysis.checks]


def test_a_batched_capture_decodes_and_verifies_as_the_original(tmp_path: Path) -> None:
    batched = tmp_path / "batched.pcap"
    batches = batch_capture(NEGOTIATED, batched)
    assert batches > 3
    assert _rudp_rows(batched) == _rudp_rows(NEGOTIATED)
    records = [r for r in decode_capture(batched, only={"rudp"}) if r.info and "gso" in r.info]
    assert len({r.frame for r in records}) == batches
    assert (
        records[0].summary().endswith("crc32c=ok [GSO 1/" + str(records[0].info["gso"]["of"]) + "]")
    )
    original, split = analyze_capture(NEGOTIATED), analyze_capture(batched)
    assert split.passed and _verdicts(split) == _verdicts(original)
    (a,), (b,) = split.rudp_sessions, original.rudp_sessions
    assert (a.gso_batches, b.gso_batches) == (batches, 0)
    for fact in ("chunks", "bytes", "sha256", "data_packets", "retransmissions", "go_backs"):
        assert getattr(a, fact) == getattr(b, fact), fact
    assert a.packets == b.packets and a.malformed == 0


def _grow_second(segments: list[bytes]) -> list[bytes]:
    """The second segment's length field claims one byte more: the walk disagrees."""
    second = bytearray(segments[1])
    length = int.from_bytes(second[9:11], "big") + 1
    second[9:11] = length.to_bytes(2, "big")
    return [segments[0], bytes(second), *segments[2:]]


def test_an_inconsistent_batch_is_malformed_not_split(tmp_path: Path) -> None:
    batched = tmp_path / "bad.pcap"
    batch_capture(NEGOTIATED, batched, damage=_grow_second)
    bad = [r for r in decode_capture(batched, only={"rudp"}) if r.info and "gso_error" in r.info]
    assert len(bad) == 1
    assert "not a GSO batch: GSO segment 2 has length field 1405" in bad[0].summary()
    analysis = analyze_capture(batched)
    (session,) = analysis.rudp_sessions
    assert session.malformed >= 1 and session.bad_chunks >= 1


def test_the_original_protocol_never_batches(tmp_path: Path) -> None:
    batched = tmp_path / "legacy.pcap"
    assert batch_capture(LEGACY, batched) > 0
    bad = [r for r in decode_capture(batched, only={"rudp"}) if r.info and "gso_error" in r.info]
    assert bad and all("original protocol never sends GSO batches" in r.summary() for r in bad)
    (session,) = analyze_capture(batched).rudp_sessions
    assert session.gso_batches == 0 and session.malformed == len(bad)


def test_the_scapy_layer_dissects_each_segment(tmp_path: Path) -> None:
    batched = tmp_path / "batched.pcap"
    batch_capture(NEGOTIATED, batched)
    for pkt in rdpcap(str(batched)):
        if RUDP not in pkt or pkt[RUDP].gso_position is None:
            continue
        count = pkt[RUDP].gso_position[1]
        layers = [pkt.getlayer(RUDP, i) for i in range(1, count + 1)]
        assert [layer.gso_position for layer in layers] == [(i, count) for i in range(1, count + 1)]
        assert [layer.seq for layer in layers] == list(range(layers[0].seq, layers[0].seq + count))
        assert all(layer.crc32c is not None for layer in layers)  # each trailer is found
        assert bytes(pkt) == bytes(pkt.original)  # and rebuilt in place
        assert layers[1].mysummary().endswith(f"crc32c=ok [GSO 2/{count}]")
        return
    pytest.fail("no batch in the capture")


@requires_tshark
def test_tshark_engine_and_dissector_on_good_and_bad_batches(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.pcap", tmp_path / "bad.pcap"
    batch_capture(NEGOTIATED, good)
    batch_capture(NEGOTIATED, bad, damage=_grow_second)
    for path in (good, bad):
        native, other = analyze_capture(path), tshark_engine.analyze_capture(path)
        assert [(c.id, c.status) for c in native.checks] == [(c.id, c.status) for c in other.checks]
        assert native.to_json()["rudp_sessions"] == other.to_json()["rudp_sessions"]
    script = tmp_path / "stacklab.lua"
    script.write_text(generate_dissector())
    env = dict(os.environ, WIRESHARK_CONFIG_DIR=str(tmp_path))
    cmd = ["tshark", "-n", "-r", str(bad), "-X", f"lua_script:{script}", "-z", "expert,warn"]
    cmd += ["-q"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout
    assert "Not a GSO batch: GSO segment 2 has length field 1405" in out


def test_a_receiver_without_gro_gets_one_datagram_per_segment() -> None:
    """Negotiated sessions are batched; the kernel segments them for a plain socket."""
    content = bytes(range(256)) * 800
    server = RudpAppServer(
        RudpSettings(host="127.0.0.1", port=0, gso=True),
        FetchPolicy(allow=("origin.test:80",)),
        fetcher=lambda url, policy: content,
    )
    server.start()
    try:
        sender = server.sender
        assert sender is not None
        if not sender.gso:
            pytest.skip("this kernel has no UDP GSO (UDP_SEGMENT)")
        session = ClientSession("FETCH http://origin.test/x", STACKLAB_DEFAULT, 100)
        limit = RUDP_HEADER_LEN + STACKLAB_DEFAULT.chunk_size + 4
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as plain:  # no UDP_GRO
            plain.connect(server.address)
            plain.settimeout(5)
            session.start(0.0)
            now = 0.0
            while not session.done and session.failed is None:
                for datagram in session.datagrams_to_send(now):
                    plain.send(datagram)
                data = plain.recv(65535)
                assert len(data) <= limit  # never a merged datagram
                now += 0.001
                session.receive_datagram(data, now)
            for datagram in session.datagrams_to_send(now):
                plain.send(datagram)
        assert session.failed is None and session.content == content
        wait_for(lambda: not server.sessions, what="the session freed")
        assert sender.batches > 0  # batched on the way out, one datagram each on the way in
    finally:
        server.stop()


class _FakeSocket:
    """Records sends; ``sendmsg`` fails with ``errno`` (a kernel or device without GSO)."""

    def __init__(self, errno_value: int) -> None:
        self.errno_value = errno_value
        self.sent: list[bytes] = []
        self.sendmsg_calls = 0

    def sendmsg(self, buffers: list[bytes], *args: object) -> int:
        self.sendmsg_calls += 1
        raise OSError(self.errno_value, os.strerror(self.errno_value))

    def sendto(self, data: bytes, addr: object) -> int:
        self.sent.append(data)
        return len(data)


@pytest.mark.parametrize("code", [errno.EIO, errno.EINVAL, errno.EOPNOTSUPP])
def test_a_failing_gso_send_falls_back_for_good(code: int) -> None:
    fake = _FakeSocket(code)
    sender = DatagramSender(fake, gso=True)  # type: ignore[arg-type]
    run = [bytes([i]) * 20 for i in range(5)]
    assert sender.send(run, ("127.0.0.1", 9)) == 5
    assert fake.sent == run and not sender.gso and sender.batches == 0
    assert sender.send(run, ("127.0.0.1", 9)) == 5
    assert fake.sendmsg_calls == 1  # never tried again
    assert sender.datagrams == 10


def test_an_unreachable_peer_is_an_error_not_a_fallback() -> None:
    fake = _FakeSocket(errno.ECONNREFUSED)
    sender = DatagramSender(fake, gso=True)  # type: ignore[arg-type]
    with pytest.raises(ConnectionRefusedError):
        sender.send([b"a" * 20, b"b" * 20], ("127.0.0.1", 9))
    assert sender.gso


def test_gso_by_default_follows_the_kernel_and_can_be_switched_off() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        assert DatagramSender(sock).gso == gso_supported()
        assert not DatagramSender(sock, gso=False).gso
    assert RudpSettings().gso  # on by default; --no-gso or gso = false turns it off
    result = CliRunner().invoke(cli, ["serve", "--help"])
    assert "--gso / --no-gso" in result.output
    assert not config_from_options(None, None, {"cfg__app_rudp__gso": False}).app_rudp.gso
