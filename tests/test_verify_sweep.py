"""stacklab's own engine, swept over many seeds, never gets a failing verdict from verify.

The engine (sans-I/O, virtual time) runs transfers over a simulated network
that loses datagrams in both directions (ACKs too), delays them with jitter
(so they reorder) and duplicates some.  The capture is taken where the
server sits: what the server sent, and what reached it, duplicates
included (the vantage point ``stacklab grade`` uses to judge a server).  A
correct engine must pass every check of every transfer it completes; a
transfer the engine gives up on may fail delivery and teardown, never the
rules of the sender.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass
from pathlib import Path

import pytest

from stacklab.analysis.sessions import VerifyOptions
from stacklab.analysis.synth import UdpPacket, write_capture
from stacklab.analysis.verify import analyze_capture
from stacklab.transport.client import ClientSession
from stacklab.transport.events import CommandReceived
from stacklab.transport.options import OptionLimits, TransferOptions
from stacklab.transport.server import ServerSession

COMMAND = "FETCH http://127.0.0.1:8080/test_file.txt"
CLIENT = ("127.0.0.1", 45000)
SERVER = ("127.0.0.3", 2122)
T0 = 1_700_000_000.0
SEEDS = 1000
SENDER_CHECKS = {"rudp.handshake", "rudp.gbn", "rudp.aimd", "rudp.integrity"}


@dataclass(frozen=True)
class Path_:
    """One direction of the simulated network."""

    loss: float
    duplicate: float
    delay: float
    jitter: float  # each datagram takes delay * (1 +- jitter): reordering when large


def _draw(seed: int) -> tuple[TransferOptions | None, bytes, Path_, Path_]:
    rng = random.Random(seed)
    options = rng.choice(
        [
            None,
            None,
            TransferOptions(chunk_size=1000, max_window=64, integrity=True, ack_every=8),
            TransferOptions(chunk_size=700, max_window=16, integrity=False, ack_every=1),
            TransferOptions(chunk_size=1200, max_window=8, integrity=True, ack_every=2),
        ]
    )
    content = rng.randbytes(rng.choice([300, 4_000, 12_000, 30_000]))
    loss = rng.choice([0.0, 0.02, 0.05, 0.1, 0.2, 0.3])
    down = Path_(
        loss=loss,
        duplicate=rng.choice([0.0, 0.0, 0.02, 0.05]),
        delay=rng.choice([0.0005, 0.002, 0.01]),
        jitter=rng.choice([0.0, 0.2, 0.5, 0.9]),
    )
    up = Path_(
        loss=rng.choice([0.0, loss, 0.1]),
        duplicate=rng.choice([0.0, 0.0, 0.05]),
        delay=down.delay,
        jitter=down.jitter,
    )
    return options, content, down, up


def run_transfer(
    seed: int,
) -> tuple[list[UdpPacket], ClientSession, ServerSession, TransferOptions | None]:
    """One transfer; the capture as the server's side of the network sees it."""
    options, content, down, up = _draw(seed)
    rng = random.Random(seed * 7919 + 1)
    server = ServerSession(OptionLimits(max_window=64, max_ack_every=8))
    client = ClientSession(COMMAND, options)
    wire: list[tuple[float, int, bool, bytes]] = []
    captured: list[UdpPacket] = []
    counter = 0
    now = 0.0

    def send(data: bytes, to_server: bool) -> None:
        nonlocal counter
        path = up if to_server else down
        if not to_server:
            captured.append(UdpPacket(T0 + now, SERVER[0], SERVER[1], CLIENT[0], CLIENT[1], data))
        copies = 2 if rng.random() < path.duplicate else 1
        for _ in range(copies):
            if rng.random() < path.loss:
                continue
            counter += 1
            spread = 1.0 + path.jitter * (2 * rng.random() - 1)
            heapq.heappush(wire, (now + path.delay * spread, counter, to_server, data))

    client.start(now)
    for _ in range(400_000):
        for data in client.datagrams_to_send(now):
            send(data, True)
        ev = server.next_event()
        while ev is not None:
            if isinstance(ev, CommandReceived):
                server.provide_content(content, now)
            ev = server.next_event()
        for data in server.datagrams_to_send(now):
            send(data, False)
        while client.next_event() is not None:
            pass
        if (client.done or client.failed is not None) and (
            server.done or server.failed is not None
        ):
            break
        times = [t for t in (client.get_timer(), server.get_timer()) if t is not None]
        if wire:
            times.append(wire[0][0])
        if not times:
            break
        now = max(now, min(times))
        while wire and wire[0][0] <= now:
            _, _, to_server, data = heapq.heappop(wire)
            if to_server:  # captured as it reaches the server
                captured.append(
                    UdpPacket(T0 + now, CLIENT[0], CLIENT[1], SERVER[0], SERVER[1], data)
                )
                server.receive_datagram(data, now)
            else:
                client.receive_datagram(data, now)
        client.handle_timer(now)
        server.handle_timer(now)
    return captured, client, server, options


def _chunk(seeds: range, parts: int) -> list[range]:
    step = len(seeds) // parts
    return [seeds[i * step : (i + 1) * step] for i in range(parts)]


@pytest.mark.parametrize("seeds", _chunk(range(SEEDS), 10), ids=lambda r: f"{r.start}-{r.stop - 1}")
@pytest.mark.timeout(300)
def test_engine_sweep_has_no_failing_verdict(tmp_path: Path, seeds: range) -> None:
    wrong: list[str] = []
    completed = 0
    for seed in seeds:
        packets, client, _server, _options = run_transfer(seed)
        path = tmp_path / f"{seed}.pcapng"
        write_capture(path, packets, fmt="pcapng")
        analysis = analyze_capture(path, VerifyOptions())
        path.unlink()
        failing = {c.id: c.detail for c in analysis.checks if c.status == "fail"}
        if client.done:
            completed += 1
        else:
            # Given up: delivery and teardown may fail, the sender's rules may not.
            failing = {k: v for k, v in failing.items() if k in SENDER_CHECKS}
        wrong += [f"seed {seed}: {check}: {detail}" for check, detail in failing.items()]
    assert wrong == [], "\n".join(wrong[:20])
    assert completed >= len(seeds) * 0.9  # the sweep is about verdicts on finished transfers
