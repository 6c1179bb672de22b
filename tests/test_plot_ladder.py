"""The ladder diagram's rows: hosts by role, decoded labels, compression of long transfers."""

from __future__ import annotations

import random
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from stacklab.analysis.decode import DecodedPacket, decode_capture
from stacklab.analysis.ladder import HEAD, TAIL, build_ladder
from stacklab.analysis.synth import (
    app_fetch,
    dhcp_exchange,
    dns_exchange,
    simulate_transfer,
    write_capture,
)

from conftest import seed_capture


def _rows(path: Path) -> list[tuple[str, str, str]]:
    return [(a.src, a.dst, a.label) for a in build_ladder(decode_capture(path)).arrows]


def test_part4_rows_read_like_the_flow() -> None:
    ladder = build_ladder(decode_capture(seed_capture("part4_rudp_loss_flow")))
    rows = [(a.src, a.dst, a.label) for a in ladder.arrows]
    assert rows[:8] == [
        ("client", "DHCP server", "DISCOVER"),
        ("DHCP server", "client", "OFFER 127.0.0.2"),
        ("client", "DNS server", "query my-app-server.local"),
        ("DNS server", "client", "answer SUCCESS 127.0.0.3"),
        ("client", "app server", "SYN seq=100"),
        ("app server", "client", "A ack=101"),
        ("client", "app server", "D seq=101 len=41"),
        ("app server", "client", "A ack=101"),
    ]
    # The app server fetches from the origin: those arrows start at the app server.
    origin = [r for r in rows if "origin" in r[:2]]
    assert origin[0] == ("app server", "origin", "SYN")
    assert ("origin", "app server", "SYN-ACK") in origin
    assert all("app server" in r[:2] for r in origin)
    assert rows[-6:] == [
        ("app server", "client", "D seq=1 R"),
        ("app server", "client", "D seq=1 R"),
        ("app server", "client", "D seq=1 R"),
        ("client", "app server", "A ack=1"),
        ("app server", "client", "FIN seq=2"),
        ("client", "app server", "A ack=2"),
    ]
    assert [a.kind for a in ladder.arrows].count("retx") == 3
    assert ladder.skipped_tcp_acks == 6 and ladder.compressed == 0
    assert ladder.hosts == ["client", "DHCP server", "DNS server", "app server", "origin"]


def test_a_negotiated_handshake_shows_its_options_and_cookie() -> None:
    path = Path(__file__).resolve().parent.parent / "captures" / "rudp-negotiated.pcapng"
    ladder = build_ladder(decode_capture(path))
    rudp = [a.label for a in ladder.arrows if "app server" in (a.src, a.dst)]
    assert rudp[0] == "SYN seq=100 +options"
    cookie = rudp[1]
    assert (
        cookie.startswith("A seq=") and cookie.endswith(" ack=101") and cookie != "A seq=0 ack=101"
    )
    assert rudp[2] == "D seq=101 len=51"  # the command, its CRC32C counted in len
    assert rudp[3] == "A ack=101"  # the command ACK carries no cookie


def test_part1_app_frames_over_tcp() -> None:
    rows = _rows(seed_capture("part1_flow"))
    assert ("client", "app server", "len=41 FETCH http://127.0.0.1:8080/test_file.txt") in rows
    assert any(src == "app server" and label.startswith("len=65 Hello!") for src, _d, label in rows)
    assert ("app server", "origin", "data 124 B") in rows


def _long_transfer(tmp_path: Path) -> Path:
    packets = dhcp_exchange(1_699_999_999.0) + dns_exchange(1_699_999_999.1)
    packets += simulate_transfer(
        random.Random(1).randbytes(100_000), rng=random.Random(4), loss=0.05, rto=0.2
    )
    packets += app_fetch(1_700_000_100.0, b"hello")
    path = tmp_path / "long.pcap"
    write_capture(path, sorted(packets, key=lambda p: p.time))
    return path


def test_long_transfer_is_compressed_with_a_gap_row(tmp_path: Path) -> None:
    path = _long_transfer(tmp_path)
    records = list(decode_capture(path))
    ladder = build_ladder(records)
    gaps = [a for a in ladder.arrows if a.kind == "gap"]
    assert len(gaps) == 1
    rudp = [r for r in records if r.proto == "rudp" and r.info is not None]
    first = next(r.frame for r in rudp if r.info["flag"] == "D" and r.src.endswith(":2122"))
    # The run: every DATA and ACK from the first chunk on (the FIN's ACK included).
    run = [r for r in rudp if r.frame >= first and r.info["flag"] in ("D", "A")]
    assert ladder.compressed == len(run) - HEAD - TAIL
    assert f"… {ladder.compressed:,} more DATA/ACK packets" in gaps[0].label
    assert "retransmitted" in gaps[0].label and "chunks 1..200" in gaps[0].label
    # Rows stay in frame order, the gap sits where the dropped packets were.
    frames = [a.frame for a in ladder.arrows]
    assert frames == sorted(frames)
    assert len(ladder.arrows) < 60
    # The app fetch after the transfer is still drawn.
    assert ("client", "app server", "app") in [(a.src, a.dst, a.kind) for a in ladder.arrows]
    assert ("app server", "client", "len=5 hello") in [
        (a.src, a.dst, a.label) for a in ladder.arrows
    ]


def test_other_traffic_is_counted_not_drawn() -> None:
    records = [
        DecodedPacket(1, 0.0, "10.0.0.1:40000", "10.0.0.2:443", "tcp", "TCP", {"flags": "A"}),
        DecodedPacket(2, 0.1, "10.0.0.1:40000", "10.0.0.2:53", "udp", "UDP", {"len": 3}),
    ]
    ladder = build_ladder(records)
    assert ladder.arrows == [] and ladder.skipped_other == 2
    assert ladder.hosts == ["client"]


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from("DA"), st.integers(1, 60), st.booleans()),
        min_size=0,
        max_size=120,
    ),
    st.integers(5, 80),
)
def test_compression_bounds_and_accounting(
    steps: list[tuple[str, int, bool]], max_arrows: int
) -> None:
    """Whatever the run, every packet is drawn, summed into a gap, or cut by the cap."""
    records = [
        DecodedPacket(
            i + 1,
            i * 0.01,
            "127.0.0.3:2122" if flag == "D" else "127.0.0.1:5000",
            "127.0.0.1:5000" if flag == "D" else "127.0.0.3:2122",
            "rudp",
            None,
            {
                "seq": n if flag == "D" else 0,
                "ack": 0 if flag == "D" else n,
                "flag": flag,
                "len": 1,
                "payload_len": 1,
            },
        )
        for i, (flag, n, _x) in enumerate(steps)
    ]
    ladder = build_ladder(records, max_arrows=max_arrows)
    drawn = [a for a in ladder.arrows if a.kind != "gap"]
    assert len(ladder.arrows) <= max_arrows
    assert len([a for a in ladder.arrows if a.kind == "gap"]) <= 1
    if not ladder.capped:
        assert len(drawn) + ladder.compressed == len(records)
        if ladder.compressed:
            leading = next(i for i, (flag, _n, _x) in enumerate(steps) if flag == "D")
            assert len(drawn) == leading + HEAD + TAIL
    frames = [a.frame for a in ladder.arrows]
    assert frames == sorted(frames)
