"""The five capture scenarios: the flows of the original captures, made reproducible.

Each :class:`Scenario` fixes everything that can be fixed: the file served
(generated from the scenario's name, the same bytes on every run), the
client's fault-injection seed, and the RUDP server's timer settings.  Two
runs of one scenario give the same packet sequence apart from timing,
ephemeral ports and TCP sequence numbers.

:func:`run_scenario` starts a private stack on the default addresses (or
uses one already running), starts the capture, runs the original client's
steps (DHCP -> DNS -> app server), stops the capture once every packet is on
disk, and stops the stack.  :func:`run_scenarios` does that for several
scenarios, inside a private network namespace when asked: the whole run is
then this module executed as a program by ``ip netns exec``, reporting its
results as JSON on stdout.

The RUDP scenarios use the original protocol (an empty SYN, ISN 100, 500-byte
chunks, a window of at most 5), so their captures look like the original
programs' and ``stacklab verify`` judges them with its default settings.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import selectors
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from stacklab import __version__, wire
from stacklab.config import StackConfig, load_config
from stacklab.services import client
from stacklab.services.fetcher import FetchPolicy, fetch
from stacklab.services.origin import sample_root
from stacklab.tools.capture import DumpcapCapture, capture_filter, default_interface
from stacklab.tools.netns import NetnsError, private_netns, run_in_netns
from stacklab.transport.options import STACKLAB_DEFAULT

log = logging.getLogger(__name__)

ORIGINAL_FILE = "test_file.txt"
RUN_TIMEOUT_S = 300.0
"""Upper bound for one run of every scenario inside a namespace (a hang is reported, not waited)."""


@dataclass(frozen=True)
class Scenario:
    """One reproducible flow: what the client does, with which faults, against which server."""

    name: str
    shows: str  # one line: what the capture shows
    transport: str  # "tcp" or "rudp"
    expect: str  # the checks ``stacklab verify --expect`` must find
    file_size: int | None = None  # None: the original 65-byte test_file.txt
    handshake_only: bool = False
    drop: float = 0.0
    delay: tuple[float, float] | None = None
    seed: int = 0
    server: dict[str, float] = field(default_factory=dict)  # [app_rudp] settings
    legacy: bool = True  # RUDP: the original client's empty SYN; False: stacklab's options

    @property
    def file_name(self) -> str:
        return ORIGINAL_FILE if self.file_size is None else f"{self.name}.txt"

    def url(self, config: StackConfig) -> str:
        return f"http://{config.origin.host}:{config.origin.port}/{self.file_name}"

    def client_settings(self) -> str:
        if self.transport == "tcp":
            return "framed TCP fetch"
        if self.legacy:
            parts = ["original RUDP (empty SYN, ISN 100)"]
        else:
            o = STACKLAB_DEFAULT
            parts = [
                f"stacklab RUDP (asks for {o.chunk_size}-byte chunks, a window of {o.max_window}, "
                f"an ACK every {o.ack_every} chunks and integrity)"
            ]
        if self.handshake_only:
            parts.append("stops after the command ACK")
        if self.drop:
            parts.append(f"drops {self.drop:.0%} of DATA (seed {self.seed})")
        if self.delay is not None:
            parts.append(
                f"waits {self.delay[0] * 1000:g}-{self.delay[1] * 1000:g} ms before each DATA "
                f"(seed {self.seed})"
            )
        return ", ".join(parts)


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "tcp-flow",
            "DHCP, DNS, the framed TCP app fetch and the app server's HTTP fetch from the origin",
            "tcp",
            "dhcp,dns,app",
        ),
        Scenario(
            "rudp-handshake",
            "DHCP, DNS, then RUDP SYN, SYN-ACK, the FETCH command and its ACK; nothing more",
            "rudp",
            "dhcp,dns,handshake",
            handshake_only=True,
        ),
        Scenario(
            "rudp-clean",
            "a full RUDP transfer of 40 chunks without loss: the window grows 1 -> 5, FIN",
            "rudp",
            "dhcp,dns,rudp",
            file_size=20_000,
        ),
        Scenario(
            "rudp-loss",
            "the client ignores 30% of DATA (seeded): timeouts and duplicate-ACK go-backs, "
            "Go-Back-N resends, the window halving",
            "rudp",
            "dhcp,dns,rudp",
            file_size=8_000,
            drop=0.3,
            seed=4,
            server={"initial_rto": 0.3, "min_rto": 0.25},
        ),
        Scenario(
            "rudp-advanced",
            "5-25 ms of receiver delay on every DATA; the window grows to 5, one loss halves it, "
            "it grows back",
            "rudp",
            "dhcp,dns,rudp",
            file_size=30_000,
            drop=0.04,
            delay=(0.005, 0.025),
            seed=19,
            server={"initial_rto": 0.3, "min_rto": 0.25},
        ),
        Scenario(
            "rudp-negotiated",
            "stacklab's own client: options in the SYN, bigger chunks and window, a CRC32C on "
            "every datagram, the content's SHA-256 in the FIN; the client ignores 5% of DATA "
            "(seeded), so loss probes and go-backs show too",
            "rudp",
            "dhcp,dns,rudp",
            file_size=120_000,
            drop=0.05,
            seed=7,
            server={"initial_rto": 0.3, "min_rto": 0.25},
            legacy=False,
        ),
    )
}
ALL = tuple(SCENARIOS)


class ScenarioError(Exception):
    """A scenario could not run; ``str()`` is one line for the user."""


@dataclass
class ScenarioResult:
    """What one run produced (JSON-friendly: it crosses the namespace boundary)."""

    name: str
    path: str
    frames: int
    seconds: float
    url: str
    bytes: int
    sha256: str
    comment: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def scenario_content(name: str, size: int) -> bytes:
    """Readable, numbered text lines: the same ``size`` bytes for ``name`` on every run."""
    out = bytearray()
    line = 0
    while len(out) < size:
        out += (
            f"{name} line {line:05d}: stacklab reference content, identical on every run.\n"
        ).encode()
        line += 1
    return bytes(out[:size])


def _write_origin_files(root: Path) -> None:
    shutil.copyfile(sample_root() / ORIGINAL_FILE, root / ORIGINAL_FILE)
    for scenario in SCENARIOS.values():
        if scenario.file_size is not None:
            (root / scenario.file_name).write_bytes(
                scenario_content(scenario.name, scenario.file_size)
            )


def scenario_config(scenario: Scenario, root: Path) -> StackConfig:
    """Default addresses and ports; leases in memory (always 127.0.0.2); the scenario's timers."""
    overrides: dict[str, Any] = {"dhcp.lease_db": ":memory:", "origin.root": str(root)}
    for key, value in scenario.server.items():
        overrides[f"app_rudp.{key}"] = value
    return load_config(None, overrides)


def _filter(config: StackConfig) -> str:
    return capture_filter(
        [
            ("udp", config.dhcp.port),
            ("udp", config.dns.port),
            ("tcp", config.app_tcp.port),
            ("udp", config.app_rudp.port),
            ("tcp", config.origin.port),
        ]
    )


def _comment(scenario: Scenario, url: str, running: bool, bpf: str, config: StackConfig) -> str:
    if running:
        server = "the stack already running on the default addresses (its own settings)"
    else:
        r = config.app_rudp
        server = (
            f"stacklab {__version__} on the default addresses; app-rudp chunk {r.chunk_size}, "
            f"max window {r.max_window} for original clients (negotiated: chunks up to "
            f"{r.max_chunk}, window up to {r.negotiated_max_window}), "
            f"initial RTO {r.initial_rto:g} s, min RTO {r.min_rto:g} s"
        )
    return "\n".join(
        (
            f"stacklab capture {scenario.name}: {scenario.shows}",
            f"client: DHCP -> DNS -> {scenario.client_settings()}: FETCH {url}",
            f"server: {server}",
            f"verify: stacklab verify --expect {scenario.expect}",
            f"filter: {bpf}",
        )
    )


class _Gate:
    """A fetcher held until released: the handshake capture ends before any DATA exists."""

    def __init__(self, policy_fetch: Any = fetch) -> None:
        self._open = threading.Event()
        self._fetch = policy_fetch

    def __call__(self, url: str, policy: FetchPolicy) -> bytes:
        self._open.wait(RUN_TIMEOUT_S)
        result: bytes = self._fetch(url, policy)
        return result

    def release(self) -> None:
        self._open.set()


@contextlib.contextmanager
def _private_stack(scenario: Scenario, config: StackConfig) -> Iterator[_Gate | None]:
    """The stack on the default addresses, the RUDP server built here (for the gate)."""
    from stacklab.services.app_rudp import RudpAppServer
    from stacklab.services.stack import Stack

    gate = _Gate() if scenario.handshake_only else None
    stack = Stack(config, ("origin", "dhcp", "dns", "app-tcp"))
    rudp = RudpAppServer(config.app_rudp, config.fetch_policy(), fetcher=gate or fetch)
    try:
        try:
            stack.start()
            rudp.start()
        except OSError as exc:
            raise ScenarioError(
                f"{exc} (use --netns as root for a private network, or --running to use the "
                "stack that is already up)"
            ) from None
        yield gate
    finally:
        if gate is not None:
            gate.release()
        rudp.stop()
        stack.stop()


def handshake_only(server: tuple[str, int], url: str, timeout: float = 10.0) -> None:
    """The original client up to the command ACK: SYN, SYN-ACK, command, ACK, then stop.

    Uses the sans-I/O :class:`~stacklab.transport.client.ClientSession` with the
    original (empty) SYN; returns once the session has seen the command ACK.
    """
    from stacklab.transport.client import ClientSession, ClientState

    session = ClientSession(f"{wire.FETCH_COMMAND} {url}", None, trace=False)
    where = f"{server[0]}:{server[1]}"
    deadline = time.monotonic() + timeout
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock,
        selectors.DefaultSelector() as sel,
    ):
        sock.connect(server)
        sock.setblocking(False)
        sel.register(sock, selectors.EVENT_READ)
        session.start(time.monotonic())
        while session.state is not ClientState.RECEIVING:
            for datagram in session.datagrams_to_send(time.monotonic()):
                sock.send(datagram)
            if session.failed is not None:
                raise client.ClientError(f"RUDP handshake with {where} failed: {session.failed}")
            now = time.monotonic()
            if now >= deadline:
                raise client.ClientError(f"no RUDP command ACK from {where} within {timeout:g} s")
            timer = session.get_timer()
            wait = deadline - now if timer is None else min(deadline, timer) - now
            if sel.select(max(0.0, wait)):
                try:
                    data = sock.recv(wire.ORIGINAL_RECV_BUFFER)
                except ConnectionRefusedError:
                    raise client.ClientError(f"no RUDP app server at {where}") from None
                session.receive_datagram(data, time.monotonic())
            session.handle_timer(time.monotonic())


def _run_client(scenario: Scenario, config: StackConfig, url: str) -> bytes:
    """DHCP -> DNS -> the app server, as the original client does; returns the body."""
    client.discover((config.dhcp.host, config.dhcp.port))
    app_host = client.resolve((config.dns.host, config.dns.port), wire.APP_DOMAIN)
    if scenario.transport == "tcp":
        return client.fetch_tcp((app_host, config.app_tcp.port), url)
    server = (app_host, config.app_rudp.port)
    if scenario.handshake_only:
        handshake_only(server, url)
        return b""
    from stacklab.services.rudp_client import fetch_rudp

    return fetch_rudp(
        server,
        url,
        legacy=scenario.legacy,
        drop=scenario.drop,
        delay=scenario.delay,
        seed=scenario.seed,
        silence_timeout=15.0,
        linger=0.5,
    )


def run_scenario(
    scenario: Scenario,
    out_path: str | os.PathLike[str],
    *,
    interface: str | None = None,
    running: bool = False,
    url: str | None = None,
) -> ScenarioResult:
    """Capture one scenario into ``out_path`` (pcapng with a comment describing it).

    ``running``: use the stack already up on the default addresses instead of
    starting one; the scenario's files and server settings are then not
    applied, and the client fetches ``url`` (default: the original test file).
    """
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="stacklab-origin-") as tmp:
        root = Path(tmp)
        _write_origin_files(root)
        config = scenario_config(scenario, root)
        target = url or (wire.DEFAULT_URL if running else scenario.url(config))
        bpf = _filter(config)
        comment = _comment(scenario, target, running, bpf, config)
        stack = contextlib.nullcontext(None) if running else _private_stack(scenario, config)
        with stack:
            capture = DumpcapCapture(
                out_path,
                bpf,
                comment,
                interface=interface or default_interface(),
                cut_after_end=scenario.handshake_only,
            )
            capture.start()
            try:
                body = _run_client(scenario, config, target)
            except client.ClientError as exc:
                capture.stop()
                raise ScenarioError(f"{scenario.name}: the client failed: {exc}") from None
            except BaseException:
                capture.abort()
                raise
            capture.stop()
    return ScenarioResult(
        name=scenario.name,
        path=os.fspath(out_path),
        frames=capture.frames,
        seconds=round(time.monotonic() - started, 3),
        url=target,
        bytes=len(body),
        sha256=hashlib.sha256(body).hexdigest(),
        comment=comment,
    )


def resolve_names(names: Sequence[str]) -> list[Scenario]:
    """Scenario names (``all`` for every one) into scenarios, in the canonical order."""
    wanted: list[str] = []
    for name in names:
        if name == "all":
            wanted.extend(ALL)
        elif name in SCENARIOS:
            wanted.append(name)
        else:
            raise ScenarioError(f"unknown scenario {name!r} (known: {', '.join(ALL)}, all)")
    return [SCENARIOS[n] for n in dict.fromkeys(wanted)]


def run_scenarios(
    jobs: Sequence[tuple[Scenario, Path]],
    *,
    netns: bool = False,
    running: bool = False,
    url: str | None = None,
    interface: str | None = None,
) -> list[ScenarioResult]:
    """Run each (scenario, output) in turn; in a private namespace when ``netns``."""
    if not netns:
        return [
            run_scenario(s, path, interface=interface, running=running, url=url) for s, path in jobs
        ]
    level = logging.getLogger().getEffectiveLevel()
    argv = [sys.executable, "-m", "stacklab.tools.scenarios", "--log-level", str(level)]
    if url is not None:
        argv += ["--url", url]
    if interface is not None:
        argv += ["--interface", interface]
    for s, path in jobs:
        argv += [s.name, os.fspath(Path(path).absolute())]
    try:
        with private_netns() as name:
            proc = run_in_netns(name, argv, timeout=RUN_TIMEOUT_S)
    except NetnsError as exc:
        raise ScenarioError(str(exc)) from None
    try:
        report = json.loads(proc.stdout)
    except ValueError:
        raise ScenarioError(
            f"the run inside the network namespace ended with status {proc.returncode} "
            "and no report"
        ) from None
    if report.get("error"):
        raise ScenarioError(str(report["error"]))
    return [ScenarioResult(**item) for item in report["results"]]


def _interrupted(signum: int, frame: object) -> None:
    """The first SIGINT or SIGTERM interrupts; later ones must not cut the cleanup short."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """The in-namespace helper: ``[options] NAME PATH [NAME PATH ...]``; a JSON report on stdout."""
    from stacklab.tools.capture import CaptureToolError

    parser = argparse.ArgumentParser(prog="python -m stacklab.tools.scenarios")
    parser.add_argument("--log-level", type=int, default=logging.WARNING)
    parser.add_argument("--url")
    parser.add_argument("--interface")
    parser.add_argument("pairs", nargs="+")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(name)s: %(message)s")
    for sig in (signal.SIGINT, signal.SIGTERM):  # cleanup runs in the ``finally`` blocks
        signal.signal(sig, _interrupted)
    pairs = args.pairs
    results: list[dict[str, Any]] = []
    try:
        if len(pairs) % 2:
            raise ScenarioError("expected NAME PATH pairs")
        for name, path in zip(pairs[::2], pairs[1::2], strict=True):
            (scenario,) = resolve_names([name])
            results.append(
                run_scenario(scenario, path, url=args.url, interface=args.interface).to_json()
            )
    except (ScenarioError, CaptureToolError, OSError) as exc:
        json.dump({"error": str(exc), "results": results}, sys.stdout)
        return 1
    except KeyboardInterrupt:
        json.dump({"error": "interrupted", "results": results}, sys.stdout)
        return 130
    json.dump({"error": None, "results": results}, sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
