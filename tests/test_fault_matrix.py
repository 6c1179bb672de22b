"""The fault matrix: real RUDP transfers on loopback sockets through the chaos proxy.

Origin HTTP server -> RUDP app server <- chaos proxy <- RUDP client, every
port ephemeral, every impairment seeded.  The RTO floor and ceiling are
lowered through settings (loopback RTTs are well under a millisecond) so the
whole matrix runs in seconds; the logic under test is unchanged.

What each test demands: the file arrives byte for byte, or the client raises
a clean :class:`~stacklab.services.client.ClientError` — never wrong bytes.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from stacklab.config import RudpSettings
from stacklab.services.client import ClientError
from stacklab.services.fetcher import FetchPolicy
from stacklab.services.origin import OriginServer
from stacklab.sim.impairment import Blackhole, GilbertElliott, Impairment
from stacklab.tools.chaos import ChaosProxy

app_rudp = pytest.importorskip("stacklab.services.app_rudp")
rudp_client = pytest.importorskip("stacklab.services.rudp_client")

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]

FAST_CLIENT: dict[str, Any] = {"initial_rto": 0.05, "min_rto": 0.005, "max_timeouts": 30}
"""Client timers for loopback: same engine, shorter clocks."""


def fast_settings(**overrides: Any) -> RudpSettings:
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "initial_rto": 0.05,
        "min_rto": 0.005,
        "max_rto": 0.1,
        "max_timeouts": 40,
    }
    values.update(overrides)
    return RudpSettings(**values)


@dataclass
class Origin:
    base_url: str
    files: dict[str, bytes]
    policy: FetchPolicy

    def url(self, name: str) -> str:
        return f"{self.base_url}/{name}"


@pytest.fixture(scope="module")
def origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Origin]:
    root = tmp_path_factory.mktemp("www")
    rng = random.Random(2024)
    files = {
        "tiny.txt": b"stacklab fault matrix: a file that fits one chunk.\n",
        "200k.bin": rng.randbytes(200_000),
        "500k.bin": rng.randbytes(500_000),
        "2m.bin": rng.randbytes(2_000_000),
    }
    for name, data in files.items():
        (root / name).write_bytes(data)
    server = OriginServer("127.0.0.1", 0, root)
    server.start()
    host, port = server.address
    try:
        yield Origin(
            f"http://{host}:{port}", files, FetchPolicy(allow=(f"{host}:{port}",), timeout=10)
        )
    finally:
        server.stop()


@pytest.fixture
def stack(origin: Origin, tmp_path: Path) -> Iterator[Callable[..., tuple[Any, ChaosProxy]]]:
    """Start an app server and a chaos proxy in front of it; both stopped after the test."""
    started: list[Any] = []

    def start(
        up: Impairment,
        down: Impairment,
        seed: int,
        **settings: Any,
    ) -> tuple[Any, ChaosProxy]:
        server = app_rudp.RudpAppServer(fast_settings(**settings), origin.policy)
        server.start()
        started.append(server)
        proxy = ChaosProxy(
            ("127.0.0.1", 0), server.address, up, down, seed=seed, log_path=tmp_path / "chaos.jsonl"
        )
        proxy.start()
        started.append(proxy)
        return server, proxy

    yield start
    for service in reversed(started):
        service.stop()


def fetch(proxy: ChaosProxy, url: str, **options: Any) -> bytes:
    merged = {**FAST_CLIENT, **options}
    data: bytes = rudp_client.fetch_rudp(proxy.address, url, **merged)
    return data


def intact_or_clean_error(proxy: ChaosProxy, url: str, expected: bytes, **options: Any) -> bool:
    """True when the file arrived intact, False on a clean ClientError; wrong bytes fail."""
    try:
        data = fetch(proxy, url, **options)
    except ClientError:
        return False
    assert len(data) == len(expected)
    assert hashlib.sha256(data).hexdigest() == hashlib.sha256(expected).hexdigest()
    return True


def read_events(path: Path) -> list[dict[str, Any]]:
    """The complete lines of a live events log (the server may be writing the last one)."""
    complete = path.read_text().split("\n")[:-1]
    return [json.loads(line) for line in complete if line.strip()]


def both(imp: Impairment) -> tuple[Impairment, Impairment]:
    return imp, imp


# -- the matrix ----------------------------------------------------------------------


def test_handshakes_under_30_percent_loss_each_way(origin: Origin, stack: Any) -> None:
    _, proxy = stack(*both(Impairment(loss=0.3)), seed=11)
    url = origin.url("tiny.txt")
    results: list[bytes | Exception] = []
    lock = threading.Lock()

    def one() -> None:
        try:
            data: bytes | Exception = fetch(proxy, url, linger=0.2)
        except Exception as exc:  # collected and reported below
            data = exc
        with lock:
            results.append(data)

    threads = [threading.Thread(target=one) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 50
    failures = [r for r in results if isinstance(r, Exception)]
    assert not failures, failures[:3]
    assert all(r == origin.files["tiny.txt"] for r in results)
    assert proxy.stats["clients"] == 50
    assert proxy.stats["up.loss"] > 20 and proxy.stats["down.loss"] > 20


def test_2mb_under_2_percent_bursty_loss(origin: Origin, stack: Any) -> None:
    bursty = Impairment(burst=GilbertElliott(p_enter=0.005, p_exit=0.25))
    assert 0.015 < bursty.burst.mean_loss < 0.025  # type: ignore[union-attr]
    _, proxy = stack(*both(bursty), seed=12)
    data = fetch(proxy, origin.url("2m.bin"))
    assert data == origin.files["2m.bin"]
    assert proxy.stats["down.burst"] > 0


def test_30_percent_loss_each_way_never_gives_wrong_bytes(origin: Origin, stack: Any) -> None:
    # Wrong bytes fail inside the helper; a clean give-up would be allowed by the
    # matrix, but with 30+ timeouts allowed it is improbable (0.51^30 per chunk),
    # so here it is asserted away too: it would mean the engine stalls.
    _, proxy = stack(*both(Impairment(loss=0.3)), seed=13)
    assert intact_or_clean_error(proxy, origin.url("200k.bin"), origin.files["200k.bin"])
    assert proxy.stats["down.loss"] > 10


def test_30_percent_loss_with_the_original_client_options(origin: Origin, stack: Any) -> None:
    # An empty SYN: 500-byte chunks, window 5, no integrity (loss does not corrupt).
    _, proxy = stack(*both(Impairment(loss=0.3)), seed=14)
    assert intact_or_clean_error(
        proxy, origin.url("200k.bin"), origin.files["200k.bin"], legacy=True
    )


@pytest.mark.parametrize("share", [0.01, 0.3])
def test_corruption_with_integrity_delivers_no_corrupted_byte(
    origin: Origin, stack: Any, share: float
) -> None:
    bad = Impairment(corrupt=share, corrupt_max_bytes=4)
    _, proxy = stack(*both(bad), seed=15)
    data = fetch(proxy, origin.url("500k.bin"), integrity=True)
    assert data == origin.files["500k.bin"]
    assert proxy.stats["down.corrupt"] > 0 and proxy.stats["up.corrupt"] >= 0


def test_two_second_blackhole_mid_transfer_recovers_with_backoff(
    origin: Origin, stack: Any, tmp_path: Path
) -> None:
    events = tmp_path / "server-events.jsonl"
    # 40 Mbit/s makes 2 MB last ~0.4 s, so the outage at 0.2 s lands mid-transfer.
    hole = Impairment(rate_bps=40e6, queue_limit=200, blackholes=(Blackhole(0.2, 2.0),))
    _, proxy = stack(*both(hole), seed=16, max_rto=1.0, max_timeouts=12, events_path=str(events))
    start = time.monotonic()
    data = fetch(proxy, origin.url("2m.bin"))
    elapsed = time.monotonic() - start
    assert data == origin.files["2m.bin"]
    assert elapsed > 2.0
    assert proxy.stats["down.blackhole"] > 0 and proxy.stats["up.blackhole"] >= 0
    # Backoff: during the outage the timeouts come one after another, each RTO doubled.
    timeouts = [e["data"] for e in read_events(events) if e["name"] == "recovery:timeout"]
    longest: list[dict[str, Any]] = []
    run: list[dict[str, Any]] = []
    for t in timeouts:
        run = [*run, t] if run and t["consecutive"] == run[-1]["consecutive"] + 1 else [t]
        if len(run) > len(longest):
            longest = run
    assert len(longest) >= 4, timeouts
    rtos = [t["rto"] for t in longest]
    assert all(b == pytest.approx(min(1.0, 2 * a)) for a, b in itertools.pairwise(rtos)), rtos


def test_reordering_and_duplication_keep_the_file_and_the_window_honest(
    origin: Origin, stack: Any, tmp_path: Path
) -> None:
    events = tmp_path / "server-events.jsonl"
    messy = Impairment(
        reorder=0.05, reorder_gap=0.002, duplicate=0.2, delay_min=0.0, delay_max=0.001
    )
    _, proxy = stack(*both(messy), seed=17, events_path=str(events))
    data = fetch(proxy, origin.url("500k.bin"), ack_every=1)
    assert data == origin.files["500k.bin"]
    assert proxy.stats["up.duplicate"] > 10 and proxy.stats["up.reorder"] > 0
    log = read_events(events)
    acks = [e for e in log if e["name"] == "rudp:ack_received"]
    assert any(a["data"]["duplicate"] for a in acks)  # duplicated ACKs did reach the server
    advancing = [a["data"]["ack"] for a in acks if not a["data"]["duplicate"]]
    assert advancing == sorted(set(advancing))  # each advancing ACK once, increasing
    previous: dict[str, Any] | None = None
    increases = 0
    for e in log:
        if e["name"] == "recovery:window_changed" and e["data"]["reason"] == "ack":
            increases += 1
            # Only an ACK that advanced the base may grow the window, never a duplicate.
            assert previous is not None and previous["name"] == "rudp:ack_received"
            assert previous["data"]["duplicate"] is False
        if e["name"] in ("rudp:ack_received", "recovery:window_changed"):
            previous = e
    assert 0 < increases <= len(advancing)


def test_acceptance_2mb_through_heavy_chaos(origin: Origin, stack: Any) -> None:
    """The RUDP acceptance: --loss 0.3 --duplicate 0.02 --reorder 0.02 --corrupt 0.01, intact."""
    heavy = Impairment(loss=0.3, duplicate=0.02, reorder=0.02, reorder_gap=0.002, corrupt=0.01)
    _, proxy = stack(*both(heavy), seed=18, max_rto=0.05, max_timeouts=40)
    data = fetch(proxy, origin.url("2m.bin"), integrity=True, max_timeouts=40, silence_timeout=30)
    assert data == origin.files["2m.bin"]
    for key in ("up.loss", "down.loss", "down.duplicate", "down.reorder", "down.corrupt"):
        assert proxy.stats[key] > 0, key


def test_acceptance_with_default_timers(origin: Origin) -> None:
    """The same acceptance with the shipped defaults on both ends (RTO floor 200 ms, 8 timeouts)."""
    heavy = Impairment(loss=0.3, duplicate=0.02, reorder=0.02, corrupt=0.01)
    server = app_rudp.RudpAppServer(RudpSettings(host="127.0.0.1", port=0), origin.policy)
    server.start()
    proxy = ChaosProxy(("127.0.0.1", 0), server.address, heavy, heavy, seed=19)
    proxy.start()
    try:
        data = rudp_client.fetch_rudp(proxy.address, origin.url("2m.bin"))
    finally:
        proxy.stop()
        server.stop()
    assert data == origin.files["2m.bin"]
    assert proxy.stats["down.corrupt"] > 0 and proxy.stats["down.loss"] > 0
