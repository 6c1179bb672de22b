"""stacklab bench, its ceilings and report, and the socket helpers it relies on (GSO, GRO)."""

from __future__ import annotations

import json
import random
import socket
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from stacklab.cli import cli
from stacklab.commands.bench import parse_rates, parse_size, render_markdown
from stacklab.errors import UserError
from stacklab.services.rudp_io import DatagramSender, enable_gro, gro_segment_size, tune_socket
from stacklab.tools.bench_model import (
    TARGET_BATCHED,
    TARGET_PER_DATAGRAM,
    BenchReport,
    Series,
    Table,
    Target,
    ratio,
    rudp_defaults,
)
from stacklab.tools.bench_udp import (
    GRO_SPAN,
    MODES,
    CeilingUnavailable,
    open_receiver,
    receive_content,
    send_content,
)
from stacklab.transport.options import STACKLAB_DEFAULT


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


@pytest.mark.parametrize(
    "text,rates",
    [("0.05,0.3", [0.05, 0.3]), ("0.3", [0.3]), ("none", []), ("0.3,0.05", [0.05, 0.3])],
)
def test_parse_rates(text: str, rates: list[float]) -> None:
    assert parse_rates(text) == rates


@pytest.mark.parametrize("text", ["abc", "1.5", "-0.1", "0.05,x"])
def test_parse_rates_refuses(text: str) -> None:
    with pytest.raises(UserError):
        parse_rates(text)


@pytest.mark.parametrize("mode", MODES)
def test_ceiling_loops_deliver_the_content_in_order(mode: str) -> None:
    content = random.Random(3).randbytes(300_000)
    try:
        rx = open_receiver(mode)
    except CeilingUnavailable as exc:
        pytest.skip(str(exc))
    with rx, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        tx.bind(("127.0.0.1", 0))
        rx.connect(tx.getsockname())
        send_content(tx, memoryview(content), 1415, mode, rx.getsockname())
        buf = bytearray(len(content) + GRO_SPAN)
        got, idle = receive_content(rx, buf, len(content), 1415, mode)
    assert (got, idle) == (len(content), 0.0)
    assert buf[:got] == content


def _report(rudp_mb_s: float) -> BenchReport:
    def series(name: str, mb_s: float) -> Series:
        row = Series(name, 10_000_000)
        row.add(10 / mb_s, 10_000_000)
        return row

    udp, batched, rudp = series("raw UDP", 100), series("batched", 200), series("RUDP", rudp_mb_s)
    table = Table("end_to_end", "End to end", [udp, batched, rudp], baseline=udp)
    targets = [
        Target("per datagram", TARGET_PER_DATAGRAM, ratio(rudp, udp)),
        Target("batched", TARGET_BATCHED, ratio(rudp, batched)),
    ]
    skipped = Table("originals", "The original programs", skipped="no namespace here")
    return BenchReport({"rudp_defaults": rudp_defaults(), "datagram": 1415, "seed": 0},
                       [table, skipped], targets)  # fmt: skip


def test_markdown_shows_ratios_targets_and_skipped_tables() -> None:
    text = render_markdown(_report(90))
    assert "| RUDP | 0.111 | 90.0 | 0.11 | 0.90x |  |" in text
    assert "| per datagram | 0.90x | >= 0.8x | PASS |" in text
    assert "| batched | 0.45x | >= 0.5x | MISS |" in text
    assert "Not measured: no namespace here." in text
    assert f"chunk {rudp_defaults()['chunk']}," in text


@pytest.mark.timeout(60)
def test_bench_quick_smoke_json() -> None:
    """A tiny run of every part but the originals: the report's shape, and intact transfers."""
    result = CliRunner().invoke(
        cli,
        [
            "bench", "--quick", "--size", "300K", "--loss", "0.05", "--loss-size", "20K",
            "--no-originals", "--no-aioquic", "--json",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["settings"]["rudp_defaults"]["chunk"] == STACKLAB_DEFAULT.chunk_size
    tables = data["tables"]
    assert list(tables) == ["end_to_end", "loss", "in_process"]
    e2e = tables["end_to_end"]["rows"]
    assert [r["name"].split(",")[0] for r in e2e] == [
        "raw UDP",
        "raw UDP",
        "RUDP stacklab fetch",
    ]
    rudp = e2e[2]
    # a run is counted only when the file's SHA-256 matched the content's
    assert rudp["delivered"] == [300_000] and rudp["failures"] == []
    assert rudp["ratio_to_baseline"] is not None and rudp["median_mb_s"] > 0
    assert tables["loss"]["rows"][0]["delivered"] == [20_000]
    in_process = {r["name"].split(" (")[0]: r for r in tables["in_process"]["rows"]}
    assert in_process["TCP app path"]["delivered"] == [300_000]
    assert [t["verdict"] in ("PASS", "MISS") for t in data["targets"]] == [True, True]


def test_bench_without_the_originals_says_why(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli,
        ["bench", "--no-end-to-end", "--no-in-process", "--originals", str(tmp_path), "--json"],
    )
    assert result.exit_code == 0, result.output
    originals = json.loads(result.stdout)["tables"]["originals"]
    assert "app_server_rudp.py" in originals["skipped"] and originals["rows"][0]["runs_s"] == []


@pytest.mark.timeout(120)
def test_bench_originals_smoke() -> None:
    """The original programs on a 1 KB file: each pair ran once, stacklab's client got it intact."""
    from stacklab.tools.bench_originals import default_originals_dir, unavailable

    reason = unavailable(default_originals_dir())
    if reason is not None:
        pytest.skip(reason)
    result = CliRunner().invoke(
        cli,
        [
            "bench", "--no-end-to-end", "--no-in-process", "--original-size", "1K",
            "--original-repeat", "1", "--loss", "none", "--json",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.stdout)["tables"]["originals"]["rows"]}
    assert len(rows) == 4
    for row in rows.values():  # a run either delivered the file intact or says why not
        assert len(row["runs_s"]) + len(row["failures"]) == 1
    assert rows["original server - stacklab client"]["delivered"] == [1000]
    assert rows["stacklab server - stacklab client"]["delivered"] == [1000]


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


def test_a_server_that_exits_before_listening_is_one_clear_error(tmp_path: Path) -> None:
    from stacklab.tools.bench_procs import BenchProcessError, server

    argv = [sys.executable, "-c", "import sys; print('cannot bind'); sys.exit(3)"]
    started = server(argv, tmp_path / "log", r"(?P<host>)(?P<port>)listening")
    with pytest.raises(BenchProcessError, match=r"exited with 3 before it listened: cannot bind"):
        started.__enter__()


def test_a_client_over_its_time_is_stopped_and_reported() -> None:
    from stacklab.tools.bench_procs import timed

    run = timed([sys.executable, "-c", "import select; select.select([], [], [], 30)"], timeout=0.5)
    assert run.timed_out and run.returncode is None and run.seconds < 10
