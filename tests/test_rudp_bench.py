"""stacklab bench and the socket helpers it relies on (GSO sends, GRO receives)."""

from __future__ import annotations

import json
import socket

import pytest
from click.testing import CliRunner

from stacklab.cli import cli
from stacklab.commands.bench import parse_size
from stacklab.errors import UserError
from stacklab.services.rudp_io import DatagramSender, enable_gro, gro_segment_size, tune_socket


@pytest.mark.parametrize(
    "text,value",
    [
        ("20M", 20_000_000),
        ("100KiB", 102_400),
        ("5000000", 5_000_000),
        ("1.5k", 1500),
        ("2MiB", 2 * 1024**2),
    ],
)
def test_parse_size(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "abc", "10X", "0", "3G"])
def test_parse_size_refuses(text: str) -> None:
    with pytest.raises(UserError):
        parse_size(text)


def _pair() -> tuple[socket.socket, socket.socket]:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    tune_socket(rx)  # the default buffer holds fewer than 100 such datagrams
    rx.settimeout(2)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    return tx, rx


@pytest.mark.parametrize("gso", [False, True])
def test_datagram_sender_keeps_every_datagram_boundary(gso: bool) -> None:
    tx, rx = _pair()
    with tx, rx:
        datagrams = [bytes([i]) * 1415 for i in range(100)] + [b"short", b"x" * 1415, b"tail"]
        sender = DatagramSender(tx, gso=gso)
        assert sender.send(datagrams, rx.getsockname()) == len(datagrams)
        got = [rx.recv(65535) for _ in datagrams]
        assert got == datagrams


def test_gro_receive_splits_back_into_the_sent_datagrams() -> None:
    tx, rx = _pair()
    with tx, rx:
        if not enable_gro(rx):
            pytest.skip("no UDP GRO on this kernel")
        datagrams = [bytes([i]) * 1000 for i in range(40)]
        DatagramSender(tx, gso=True).send(datagrams, rx.getsockname())
        buf = bytearray(1 << 17)
        got: list[bytes] = []
        while len(got) < len(datagrams):
            n, anc, _, _ = rx.recvmsg_into([buf], socket.CMSG_SPACE(4))
            size = gro_segment_size(anc) or n
            got += [bytes(buf[o : min(n, o + size)]) for o in range(0, n, size)]
        assert got == datagrams


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_bench_command_json() -> None:
    result = CliRunner().invoke(
        cli,
        [
            "bench",
            "--size",
            "300K",
            "--repeat",
            "1",
            "--loss-size",
            "20K",
            "--no-aioquic",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    names = [t["name"] for t in data["transports"]]
    assert names[0] == "raw UDP sendto loop" and "TCP app path" in names
    rudp = data["transports"][1]
    assert rudp["delivered"] == [300_000] and rudp["median_mb_s"] > 0
    assert data["loss"]["bytes"] == 20_000 and len(data["loss"]["runs_s"]) == 1


@pytest.mark.timeout(60)
def test_a_gso_server_serves_original_and_stacklab_clients() -> None:
    import random

    from stacklab.config import RudpSettings
    from stacklab.services.app_rudp import RudpAppServer
    from stacklab.services.fetcher import FetchPolicy
    from stacklab.services.rudp_client import fetch_rudp
    from stacklab.transport.options import ORIGINAL
    from stacklab.wire import RUDP_HEADER

    content = random.Random(2).randbytes(200_000)
    server = RudpAppServer(
        RudpSettings(host="127.0.0.1", port=0, gso=True),
        FetchPolicy(allow=("origin.test:80",)),
        fetcher=lambda url, policy: content,
    )
    server.start()
    try:
        assert fetch_rudp(server.address, "http://origin.test/f") == content
        stats: dict[str, object] = {}
        assert (
            fetch_rudp(server.address, "http://origin.test/f", legacy=True, stats=stats) == content
        )
        assert stats["options"] == ORIGINAL
        # a plain socket (no GRO) still sees one datagram per chunk, as the original client would
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as plain:
            plain.settimeout(2)
            plain.sendto(RUDP_HEADER.pack(100, 0, b"S", 0), server.address)
            plain.recv(2048)
            cmd = b"FETCH http://origin.test/f"
            plain.sendto(RUDP_HEADER.pack(101, 0, b"D", len(cmd)) + cmd, server.address)
            plain.recv(2048)
            for expected in range(1, 30):
                data = plain.recv(2048)
                seq, _, flag, length = RUDP_HEADER.unpack_from(data)
                assert (seq, flag, length, len(data)) == (expected, b"D", 500, 511)
                plain.sendto(RUDP_HEADER.pack(0, seq, b"A", 0), server.address)
    finally:
        server.stop()
