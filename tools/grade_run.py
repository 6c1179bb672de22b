"""One run of ``stacklab grade``: one scenario, one seed, one fresh subject, one capture.

Inside a private network namespace (so the original addresses are free and
the capture sees this run alone) the run starts stacklab's origin, DHCP and
DNS on their default addresses, the impairing proxy, and the subject:

* ``--server CMD``: the subject listens on 127.0.0.3:2122; DNS answers
  ``my-app-server.local`` with the proxy (127.0.0.4:2122), and stacklab's
  client fetches through it.  The subject is judged on its side of the
  proxy: the frames between the proxy and 127.0.0.3 are what it really sent
  and received, so a datagram the network lost is never blamed on it.
* ``--client CMD``: DNS answers with the proxy on the original address
  (127.0.0.3:2122), stacklab's server runs behind it on 127.0.0.5:2122, and
  the subject is judged on the frames between itself and the proxy, plus
  the SHA-256 of the file it wrote.

The proxy's decisions (which datagram was dropped, delayed, duplicated or
corrupted, by which rule, under which seed) become packet comments of the
capture (:mod:`stacklab.analysis.pcapng_comments`), so Wireshark and the
report show "dropped by the network" on the frames concerned.

Run as a program (``python -m stacklab.tools.grade_run SPEC``, what
:func:`run_in_namespace` does through ``ip netns exec``) it prints one JSON
:class:`RunResult` on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import selectors
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

from stacklab import wire
from stacklab.tools.grade_scenarios import (
    BUDGET,
    CONTENT,
    PROBE_ALIVE,
    PROBE_GIVES_UP,
    SCENARIOS,
    SERVER,
    SUBJECT,
    GradeScenario,
    drop_rule,
)

log = logging.getLogger(__name__)

SUBJECT_ADDR: Final = (wire.APP_ADDR, wire.APP_RUDP_PORT)
"""Where a server subject listens: the original's address."""
PROXY_FOR_SERVER: Final = ("127.0.0.4", wire.APP_RUDP_PORT)
REFERENCE_SERVER: Final = ("127.0.0.5", wire.APP_RUDP_PORT)
"""stacklab's server behind the proxy when a client is graded."""
FILE_NAME: Final = "test_file.txt"
"""The original client asks for this name: every scenario serves its content under it."""
OUTPUT_DEFAULT: Final = "downloaded_rudp.html"
"""Where the original client writes the file (in its working directory) without ``{output}``."""
LISTEN_TIMEOUT_S: Final = 10.0
PROBE_RANDOM_CASES: Final = 25
SILENT_MAX_DATAGRAMS: Final = 30
"""A server may resend to a silent client this many times (after the grace) before it must
have given up."""
SILENT_GRACE_S: Final = 1.0
"""Datagrams in the first second of silence are not counted: a burst of loss probes before
the first timeout is aggressive but not endless."""
SILENT_WATCH_S: Final = 90.0
NS_MARGIN_S: Final = 60.0
LINGER_LOSSY_S: Final = 3.0
"""How long the driving client stays to re-ACK a resent FIN when ACKs may be lost."""


Address = tuple[str, int]


@dataclass(frozen=True)
class Topology:
    """Where everything of one run listens.

    In a private namespace: the original addresses (:data:`ORIGINAL`).  Without
    root: a random 127.x.y.0/24 of this machine's loopback and free ports
    (:func:`free_loopback`), for servers that take ``{host}`` and ``{port}``.
    """

    subject: Address  # the graded server; for a graded client, where the proxy waits
    proxy: Address  # the proxy in front of a graded server
    reference: Address  # stacklab's server behind the proxy for a graded client
    dhcp: Address
    dns: Address
    origin: Address

    @property
    def ports(self) -> Any:
        from stacklab.wire import Ports

        return Ports(
            rudp=self.subject[1], dns=self.dns[1], dhcp=self.dhcp[1], origin=self.origin[1]
        )

    def placeholders(self) -> dict[str, str]:
        """What ``{host}``, ``{port}`` and ``{origin}`` in a command become."""
        return {
            "host": self.subject[0],
            "port": str(self.subject[1]),
            "origin": f"{self.origin[0]}:{self.origin[1]}",
        }


ORIGINAL: Final = Topology(
    SUBJECT_ADDR,
    PROXY_FOR_SERVER,
    REFERENCE_SERVER,
    (wire.DHCP_ADDR, wire.DHCP_PORT),
    (wire.DNS_ADDR, wire.DNS_PORT),
    (wire.ORIGIN_ADDR, wire.ORIGIN_PORT),
)


def _free_port(host: str, kind: int, port: int = 0) -> int | None:
    with socket.socket(socket.AF_INET, kind) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return None
        return int(sock.getsockname()[1])


def free_loopback(attempts: int = 50) -> Topology:
    """A topology on a random 127.x.y.0/24 with free ports (no root needed).

    The RUDP port is the same number on the subject, the proxy and the
    reference server, so that one ``Ports.rudp`` covers both sides of the
    proxy for the verifier.
    """
    import random

    rng = random.SystemRandom()  # unique addresses per run, not a behaviour: no seed
    for _ in range(attempts):
        net = f"127.{rng.randint(16, 250)}.{rng.randint(0, 255)}"
        hosts = {n: f"{net}.{n}" for n in (1, 3, 4, 5)}
        rudp = _free_port(hosts[3], socket.SOCK_DGRAM)
        if rudp is None or any(
            _free_port(hosts[n], socket.SOCK_DGRAM, rudp) is None for n in (4, 5)
        ):
            continue
        dhcp = _free_port(hosts[1], socket.SOCK_DGRAM)
        dns = _free_port(hosts[1], socket.SOCK_DGRAM)
        origin = _free_port(hosts[1], socket.SOCK_STREAM)
        if dhcp is None or dns is None or origin is None or dhcp == dns:
            continue
        return Topology(
            (hosts[3], rudp),
            (hosts[4], rudp),
            (hosts[5], rudp),
            (hosts[1], dhcp),
            (hosts[1], dns),
            (hosts[1], origin),
        )
    raise GradeError("no free loopback addresses and ports for a run")


class GradeError(Exception):
    """A run could not be carried out (not a verdict on the subject); one line for the user."""


@dataclass(frozen=True)
class RunSpec:
    """Everything one run needs; JSON-friendly, it crosses the namespace boundary."""

    role: str
    command: str
    scenario: str
    seed: int
    run_dir: str
    workdir: str  # where grade was started: relative paths in the command are from here
    private: bool = True  # in a namespace on the original addresses; else free loopback ones

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class CheckResult:
    """One required check of a run: ``pass``, ``fail`` or ``skip`` (nothing to judge)."""

    id: str
    status: str
    detail: str
    frames: list[int] = field(default_factory=list)


@dataclass
class RunResult:
    """The verdict of one run; ``capture`` and ``report`` are relative to the output folder."""

    scenario: str
    seed: int
    passed: bool
    seconds: float
    capture: str | None
    checks: list[CheckResult]
    network: dict[str, int] = field(default_factory=dict)
    error: str | None = None

    @property
    def failing(self) -> list[CheckResult]:
        return [c for c in self.checks if c.status == "fail"]

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunResult:
        checks = [CheckResult(**c) for c in data.get("checks", [])]
        return cls(
            scenario=data["scenario"],
            seed=int(data["seed"]),
            passed=bool(data["passed"]),
            seconds=float(data["seconds"]),
            capture=data.get("capture"),
            checks=checks,
            network=dict(data.get("network", {})),
            error=data.get("error"),
        )


def content_for(scenario: GradeScenario) -> bytes:
    """The file a scenario serves: numbered lines, the same bytes on every run."""
    from stacklab.tools.scenarios import scenario_content

    return scenario_content(f"grade {scenario.id}", scenario.size)


# ---------------------------------------------------------------------------
# The subject process
# ---------------------------------------------------------------------------


def subject_argv(command: str, workdir: str, values: dict[str, str]) -> list[str]:
    """``command`` split like a shell would, placeholders filled, relative paths made absolute.

    The subject runs in its run's folder (the original client writes its file
    there), so a word of ``command`` naming an existing file relative to
    ``workdir`` becomes that file's absolute path.
    """
    try:
        words = shlex.split(command)
    except ValueError as exc:
        raise GradeError(f"cannot split the command {command!r}: {exc}") from None
    if not words:
        raise GradeError("the command is empty")
    out: list[str] = []
    for raw in words:
        word = raw
        for key, value in values.items():
            word = word.replace("{" + key + "}", value)
        if "/" in word and not os.path.isabs(word) and os.path.exists(os.path.join(workdir, word)):
            word = os.path.join(workdir, word)
        out.append(word)
    return out


class Subject:
    """The graded program: started fresh for each run, its output kept in ``subject.log``."""

    def __init__(self, argv: list[str], run_dir: Path) -> None:
        self.argv = argv
        self.run_dir = run_dir
        self.log_path = run_dir / "subject.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None

    def start(self) -> None:
        with self.log_path.open("wb") as out:
            try:
                self.proc = subprocess.Popen(
                    self.argv,
                    cwd=self.run_dir,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            except OSError as exc:
                raise GradeError(f"cannot start {self.argv[0]!r}: {exc.strerror or exc}") from None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait(self, timeout: float) -> bool:
        """True when the subject exited within ``timeout``."""
        assert self.proc is not None
        try:
            self.returncode = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        return True

    def stop(self) -> None:
        """SIGTERM the subject's process group, SIGKILL it if it lingers."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(3.0)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if self.returncode is None:
            self.returncode = proc.returncode

    def tail(self, lines: int = 3) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(text[-lines:])


def udp_listening(addr: tuple[str, int]) -> bool:
    """True when some socket of this namespace is bound to ``addr`` (read from /proc/net/udp)."""
    host = socket.inet_aton(addr[0])[::-1].hex().upper()
    needle = f"{host}:{addr[1]:04X}"
    try:
        with open("/proc/net/udp", encoding="ascii") as fh:
            next(fh, None)
            return any(line.split()[1] == needle for line in fh if len(line.split()) > 1)
    except OSError:
        return False


def wait_listening(subject: Subject, addr: tuple[str, int], timeout: float) -> str | None:
    """``None`` once the subject listens on ``addr``, else why not."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not udp_listening(addr):
        if not subject.alive():
            return f"the subject exited (status {subject.proc and subject.proc.returncode}) " + (
                f"before listening on {addr[0]}:{addr[1]}: {subject.tail()}"
            )
        if time.monotonic() > deadline:
            return f"the subject did not listen on {addr[0]}:{addr[1]} within {timeout:g} s"
        pause.wait(0.02)
    return None


# ---------------------------------------------------------------------------
# Network decisions -> packet comments
# ---------------------------------------------------------------------------


def describe_decision(record: dict[str, Any], seed: int) -> str | None:
    """The packet comment for one proxy decision, or ``None`` for a clean delivery."""
    verdict = record.get("verdict")
    where = f"seed {seed}, {record.get('dir')}"
    if verdict != "deliver":
        rule = record.get("rule")
        why = f"rule {rule}" if rule else str(verdict)
        return f"dropped by the network: {why} ({where})"
    parts = [name for name in ("corrupt", "duplicate", "reorder") if record.get(name)]
    if not parts:
        return None
    words = {"corrupt": "corrupted", "duplicate": "duplicated", "reorder": "held back"}
    return (
        f"{', '.join(words[p] for p in parts)} by the network "
        f"(delay {record.get('delay_ms', 0)} ms; {where})"
    )


def network_comments(
    capture: Path, decisions: Path, listen: tuple[str, int], upstream: tuple[str, int], seed: int
) -> tuple[dict[int, list[str]], dict[str, int]]:
    """Match the proxy's decision log to the capture's frames; return comments and counts.

    The proxy decides on datagrams in the order they reach it, one direction
    at a time, so the k-th datagram a client sent to the proxy is the k-th
    "up" decision for that client, and the k-th datagram the upstream sent to
    one of the proxy's sockets is the k-th "down" decision for that socket.
    A length that does not match stops the matching for that flow (logged).
    """
    from stacklab.analysis.pcapio import CaptureReader, parse_packet

    queues: dict[tuple[str, str], deque[dict[str, Any]]] = defaultdict(deque)
    counts: dict[str, int] = defaultdict(int)
    try:
        with decisions.open(encoding="utf-8") as fh:
            for line in fh:
                record = json.loads(line)
                flow = record["client"] if record["dir"] == "up" else record["via"]
                queues[(record["dir"], flow)].append(record)
                counts[f"{record['dir']}.{record['verdict']}"] += 1
    except FileNotFoundError:
        return {}, {}
    listen_ep = f"{listen[0]}:{listen[1]}"
    upstream_ep = f"{upstream[0]}:{upstream[1]}"
    comments: dict[int, list[str]] = {}
    broken: set[tuple[str, str]] = set()
    with CaptureReader(capture) as reader:
        for frame in reader:
            packet = parse_packet(frame)
            if packet is None or packet.proto != "udp":
                continue
            if packet.dst_ep == listen_ep:
                key = ("up", packet.src_ep)
            elif packet.src_ep == upstream_ep:
                key = ("down", packet.dst_ep)
            else:
                continue
            queue = queues.get(key)
            if not queue or key in broken:
                continue
            record = queue.popleft()
            if record.get("bytes") != len(packet.payload):
                log.warning("decision log and capture disagree at frame %d", frame.number)
                broken.add(key)
                continue
            text = describe_decision(record, seed)
            if text is not None:
                comments[frame.number] = [text]
    return comments, dict(counts)


# ---------------------------------------------------------------------------
# Judging
# ---------------------------------------------------------------------------


def judge_sessions(
    analysis: Any, wanted: tuple[str, ...], belongs: Callable[[str, str], bool]
) -> list[CheckResult]:
    """The RUDP checks in ``wanted`` over the sessions ``belongs(client, server)`` picks.

    A check fails when it fails in any of those sessions; with no session at
    all every wanted check fails, saying so.
    """
    sessions = [s for s in analysis.rudp_sessions if belongs(s.client, s.server)]
    keys = {s.key for s in sessions}
    out: list[CheckResult] = []
    for check_id in wanted:
        if not sessions:
            out.append(
                CheckResult(check_id, "fail", "no RUDP session of the subject in the capture")
            )
            continue
        found = [c for c in analysis.checks if c.id == check_id and c.session in keys]
        failed = [c for c in found if c.status == "fail"]
        passed = [c for c in found if c.status == "pass"]
        if failed:
            first = failed[0]
            out.append(CheckResult(check_id, "fail", first.detail, list(first.frames)))
        elif passed:
            out.append(CheckResult(check_id, "pass", passed[0].detail, list(passed[0].frames)))
        else:
            detail = found[0].detail if found else "not judged"
            out.append(CheckResult(check_id, "skip", detail))
    return out


# ---------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------


@contextlib.contextmanager
def _services(root: Path, app_ip: str, reference: bool, topo: Topology) -> Iterator[Any]:
    """Origin, DHCP and DNS (and stacklab's server when asked) where ``topo`` says."""
    from stacklab.config import load_config
    from stacklab.services.stack import Stack

    overrides: dict[str, Any] = {
        "dhcp": {"lease_db": ":memory:", "host": topo.dhcp[0], "port": topo.dhcp[1]},
        "origin": {"root": str(root), "host": topo.origin[0], "port": topo.origin[1]},
        "dns": {"records": {wire.APP_DOMAIN: app_ip}, "host": topo.dns[0], "port": topo.dns[1]},
        "app_rudp": {"host": topo.reference[0], "port": topo.reference[1]},
    }
    config = load_config(None, overrides)
    names = ("origin", "dhcp", "dns", "app-rudp") if reference else ("origin", "dhcp", "dns")
    stack = Stack(config, names)
    try:
        stack.start()
    except OSError as exc:
        raise GradeError(f"cannot start stacklab's services: {exc}") from None
    try:
        yield config
    finally:
        stack.stop()


def _capture_filter(topo: Topology) -> str:
    from stacklab.tools.capture import capture_filter

    return capture_filter(
        [
            ("udp", topo.dhcp[1]),
            ("udp", topo.dns[1]),
            ("udp", topo.subject[1]),
            ("tcp", topo.origin[1]),
        ]
    )


class _Outcome:
    """What the driving side of a run observed, filled in as it goes."""

    def __init__(self) -> None:
        self.checks: list[CheckResult] = []
        self.body: bytes | None = None
        self.error: str | None = None

    def add(self, check_id: str, ok: bool, detail: str) -> None:
        self.checks.append(CheckResult(check_id, "pass" if ok else "fail", detail))


def _discover_and_resolve(topo: Topology) -> str:
    from stacklab.services import client

    client.discover(topo.dhcp)
    return client.resolve(topo.dns, wire.APP_DOMAIN)


def _drive_server(
    scenario: GradeScenario, url: str, budget: float, outcome: _Outcome, topo: Topology
) -> None:
    """stacklab's client against the subject, through the proxy."""
    from stacklab.services import client
    from stacklab.services.rudp_client import fetch_rudp
    from stacklab.tools.scenarios import handshake_only

    try:
        ip = _discover_and_resolve(topo)
        if scenario.kind == "handshake":
            handshake_only((ip, topo.proxy[1]), url, timeout=budget)
            outcome.body = b""
            return
        outcome.body = fetch_rudp(
            (ip, topo.proxy[1]),
            url,
            legacy=not scenario.integrity,
            integrity=scenario.integrity,
            silence_timeout=min(30.0, budget),
            max_timeouts=12,
            linger=LINGER_LOSSY_S if scenario.lossy else 0.5,
        )
    except client.ClientError as exc:
        outcome.error = str(exc)


def _run_probe(url: str, seed: int, outcome: _Outcome, subject: Address) -> None:
    """The probe catalogue straight at the subject; ``probe.alive`` from its verdicts."""
    from stacklab.tools.probe_cases import ProbeContext, generate_cases, systematic_count
    from stacklab.tools.probe_runner import ProbeRunner, ProbeTarget, TargetUnreachable

    context = ProbeContext(url=url)
    count = systematic_count("rudp", context) + PROBE_RANDOM_CASES
    target = ProbeTarget(subject[0], subject[1], "rudp", context=context)
    with ProbeRunner(target) as runner:
        try:
            runner.check_target()
        except TargetUnreachable as exc:
            outcome.add(PROBE_ALIVE, False, f"before any case: {exc}")
            return
        summary = runner.run(generate_cases("rudp", seed, count, context))
    if summary.failures:
        first = summary.failures[0]
        more = f" (+{len(summary.failures) - 1} more)" if len(summary.failures) > 1 else ""
        outcome.add(
            PROBE_ALIVE,
            False,
            f"case {first.case.index} ({first.case.kind}: {first.case.detail}): "
            f"{first.detail}{more}; replay: stacklab probe "
            f"{subject[0]}:{subject[1]} --protocol rudp --seed {seed} "
            f"--replay {first.case.index}",
        )
    else:
        outcome.add(PROBE_ALIVE, True, f"{summary.cases_run} cases, no failure")


def silent_client(
    url: str, subject: Address = SUBJECT_ADDR, watch: float = SILENT_WATCH_S
) -> tuple[bool, str]:
    """A client that ACKs the first chunk and then goes silent: does the server give up?

    Passes once the server has been quiet for three times its longest gap
    between resends (at least 2 s, at most 15 s); fails when, after the first
    :data:`SILENT_GRACE_S`, it sends more than :data:`SILENT_MAX_DATAGRAMS`
    datagrams, or still sends after ``watch`` s.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sel = selectors.DefaultSelector()
    try:
        sock.connect(subject)
        sel.register(sock, selectors.EVENT_READ)
        isn = wire.ORIGINAL_ISN
        command = f"{wire.FETCH_COMMAND} {url}".encode()
        sock.send(wire.pack_rudp(isn, 0, wire.Flag.SYN.value))
        started = time.monotonic()
        acked = False
        sent_command = False
        silent_since: float | None = None
        count = late = 0
        last = time.monotonic()
        gap = 0.0
        while True:
            now = time.monotonic()
            if silent_since is not None:
                quiet = min(15.0, max(2.0, 3 * gap))
                if now - last >= quiet:
                    return True, (
                        f"gave up: {count} datagram(s) after the client went silent, then quiet "
                        f"for {quiet:.3g} s"
                    )
                if late > SILENT_MAX_DATAGRAMS:
                    return False, (
                        f"never gives up: {count} datagrams to a client silent for "
                        f"{now - silent_since:.1f} s"
                    )
                if now - started > watch:
                    return False, f"still sending to a client silent for {now - silent_since:.1f} s"
            elif now - started > 20.0:
                return True, "not judged: the server sent no DATA to the client within 20 s"
            if not sel.select(0.25):
                if not sent_command and now - started > 1.0:
                    sock.send(wire.pack_rudp(isn, 0, wire.Flag.SYN.value))
                continue
            try:
                data = sock.recv(65535)
            except OSError:
                continue
            if not wire.looks_like_rudp(data):
                continue
            head, _ = wire.unpack_rudp(data)
            now = time.monotonic()
            if silent_since is not None:
                count += 1
                late += now - silent_since > SILENT_GRACE_S
                gap = max(gap, now - last)
                last = now
                continue
            if head.flag_letter == "A" and not sent_command:
                sock.send(wire.pack_rudp(isn + 1, 0, wire.Flag.DATA.value, command))
                sent_command = True
            elif head.flag_letter == "D" and head.seq == 1 and not acked:
                sock.send(wire.pack_rudp(0, 1, wire.Flag.ACK.value))
                acked = True
                silent_since = now
                last = now
    finally:
        sel.close()
        sock.close()


def _within(budget: float, started: float) -> float:
    return max(0.0, budget - (time.monotonic() - started))


def run(spec: RunSpec) -> RunResult:
    """Carry out one run (inside a private network namespace); see the module docstring."""
    from stacklab.analysis.pcapng_comments import copy_with_comments
    from stacklab.analysis.sessions import VerifyOptions
    from stacklab.analysis.verify import analyze_capture
    from stacklab.tools.capture import DumpcapCapture
    from stacklab.tools.chaos import ChaosProxy

    scenario = SCENARIOS[spec.scenario]
    run_dir = Path(spec.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    content = content_for(scenario)
    expected = hashlib.sha256(content).hexdigest()
    server_role = spec.role == SERVER
    topo = ORIGINAL if spec.private else free_loopback()
    listen = topo.proxy if server_role else topo.subject
    upstream = topo.subject if server_role else topo.reference
    raw = run_dir / ".capture.raw.pcapng"
    capture_path = run_dir / "capture.pcapng"
    decisions = run_dir / "network.jsonl"
    output = run_dir / "output.bin"
    outcome = _Outcome()
    started = time.monotonic()
    budget = scenario.budget
    values = {**topo.placeholders(), "output": str(output)}
    argv = subject_argv(spec.command, spec.workdir, values)
    if not server_role and "{output}" not in spec.command:
        output = run_dir / OUTPUT_DEFAULT
    url = f"http://{topo.origin[0]}:{topo.origin[1]}/{FILE_NAME}"
    with tempfile.TemporaryDirectory(prefix="stacklab-grade-origin-") as tmp:
        root = Path(tmp)
        (root / FILE_NAME).write_bytes(content)
        with _services(root, listen[0], not server_role, topo):
            subject = Subject(argv, run_dir)
            proxy = ChaosProxy(
                listen,
                upstream,
                scenario.up,
                scenario.down,
                seed=spec.seed,
                log_path=decisions,
                drop_rule=drop_rule(scenario.drops, scenario.outage),
            )
            comment = (
                f"stacklab grade {spec.role} {spec.command!r}: scenario {scenario.id} "
                f"(seed {spec.seed}): {scenario.shows}\npasses when: {scenario.passes}"
            )
            capture = DumpcapCapture(
                raw, _capture_filter(topo), comment, cut_after_end=scenario.kind == "handshake"
            )
            capture.start()
            try:
                proxy.start()
                try:
                    subject.start()
                    if server_role:
                        problem = wait_listening(subject, topo.subject, LISTEN_TIMEOUT_S)
                        if problem is not None:
                            outcome.add(SUBJECT, False, problem)
                        else:
                            _server_run(
                                scenario, spec, url, budget, started, subject, outcome, topo
                            )
                    else:
                        _client_run(budget, started, subject, outcome)
                finally:
                    subject.stop()
                    proxy.stop()
            except BaseException:
                capture.abort()
                raise
            capture.stop()
    comments, counts = network_comments(raw, decisions, listen, upstream, spec.seed)
    copy_with_comments(raw, capture_path, comments)
    raw.unlink()
    seconds = round(time.monotonic() - started, 3)
    checks = list(outcome.checks)
    if not any(c.id == SUBJECT for c in checks):
        checks.insert(0, CheckResult(SUBJECT, "pass", f"{spec.role} ran"))
    if not any(c.id == BUDGET for c in checks):
        ok = seconds <= budget
        checks.append(
            CheckResult(BUDGET, "pass" if ok else "fail", f"{seconds:.1f} s of {budget:g} s")
        )
    checks.append(_content_check(scenario, spec, outcome, output, expected))
    analysis = analyze_capture(capture_path, VerifyOptions(ports=topo.ports))
    if server_role:
        vias = _proxy_peers(decisions)
        belongs: Callable[[str, str], bool] = lambda client, server: (  # noqa: E731
            server == f"{topo.subject[0]}:{topo.subject[1]}" and client in vias
        )
    else:
        belongs = lambda client, server: server == f"{listen[0]}:{listen[1]}"  # noqa: E731
    rudp_ids = tuple(c for c in scenario.checks(spec.role) if c.startswith("rudp."))
    checks += excuse_network(judge_sessions(analysis, rudp_ids, belongs), decisions, spec.role)
    wanted = scenario.checks(spec.role)
    checks = [c for c in checks if c.id in wanted]
    passed = all(c.status != "fail" for c in checks) and {c.id for c in checks} >= set(wanted)
    return RunResult(
        scenario=scenario.id,
        seed=spec.seed,
        passed=passed,
        seconds=seconds,
        capture=str(capture_path),
        checks=checks,
        network=counts,
        error=outcome.error,
    )


CONTENT_FROM_CAPTURE: Final = (
    "missing from the capture",
    "resent with different bytes",
    "the chunks hash to",
)
"""How ``rudp.delivery`` says that the content seen on the wire is not the file."""


def excuse_network(
    checks: list[CheckResult], decisions: Path, role: str = SERVER
) -> list[CheckResult]:
    """Turn failures the network caused into skips that say so.

    * A server cannot see an ACK of its FIN that the network dropped: when
      ``rudp.teardown`` fails with "never acknowledged" and the proxy dropped
      the client's ACK of that FIN, the check is skipped with the reason.
    * A client is judged on the frames between itself and the proxy: what the
      network dropped, corrupted, held back or duplicated before it (DATA, or
      a SYN-ACK whose options the content is rebuilt with) makes the sender
      on that side of the capture look like no real sender, and the content
      rebuilt from it incomplete or wrong.  When ``rudp.delivery`` fails only
      because of that and the proxy did touch datagrams on the way down,
      the check is skipped: the file's SHA-256 (``grade.content``) judges the
      bytes the client kept.  (A server's side of the proxy shows what it
      sent, before any harm: there a delivery failure is always its own.)
    """
    records = list(_records(decisions))
    harmed_data = [
        r
        for r in records
        if r["dir"] == "down"
        and (
            r["verdict"] != "deliver" or any(r.get(k) for k in ("corrupt", "reorder", "duplicate"))
        )
    ]
    out: list[CheckResult] = []
    for check in checks:
        if (
            role != SERVER
            and check.id == "rudp.delivery"
            and check.status == "fail"
            and harmed_data
            and any(words in check.detail for words in CONTENT_FROM_CAPTURE)
        ):
            out.append(
                CheckResult(
                    check.id,
                    "skip",
                    f"{check.detail}: the network dropped, corrupted, held back or duplicated "
                    f"{len(harmed_data)} datagram(s) on the way to the client (the file's SHA-256 judges the bytes)",
                    check.frames,
                )
            )
            continue
        if (
            check.id == "rudp.teardown"
            and check.status == "fail"
            and "never acknowledged" in (check.detail)
        ):
            words = check.detail.split()
            fin = int(words[1]) if len(words) > 1 and words[1].isdigit() else None
            dropped = [
                r
                for r in records
                if r["dir"] == "up"
                and r["verdict"] != "deliver"
                and r.get("rudp", {}).get("flag") == "A"
                and r.get("rudp", {}).get("ack") == fin
            ]
            if fin is not None and dropped:
                out.append(
                    CheckResult(
                        check.id,
                        "skip",
                        f"FIN {fin}: {len(dropped)} ACK(s) of it dropped by the network "
                        "before reaching the server",
                        check.frames,
                    )
                )
                continue
        out.append(check)
    return out


def _records(decisions: Path) -> Iterator[dict[str, Any]]:
    with contextlib.suppress(FileNotFoundError), decisions.open(encoding="utf-8") as fh:
        for line in fh:
            yield json.loads(line)


def _proxy_peers(decisions: Path) -> set[str]:
    """The addresses of the proxy's upstream sockets: the subject's peers."""
    vias: set[str] = set()
    with contextlib.suppress(FileNotFoundError), decisions.open(encoding="utf-8") as fh:
        for line in fh:
            vias.add(json.loads(line)["via"])
    return vias


def _server_run(
    scenario: GradeScenario,
    spec: RunSpec,
    url: str,
    budget: float,
    started: float,
    subject: Subject,
    outcome: _Outcome,
    topo: Topology,
) -> None:
    if scenario.kind == "probe":
        _run_probe(url, spec.seed, outcome, topo.subject)
        if not subject.alive():
            outcome.add(SUBJECT, False, _exited(subject, "during the probe catalogue"))
            outcome.error = "the server died"
            return
    driver = threading.Thread(
        target=_drive_server,
        args=(scenario, url, _within(budget, started), outcome, topo),
        daemon=True,
    )
    driver.start()
    driver.join(_within(budget, started))
    if driver.is_alive():
        outcome.add(BUDGET, False, f"the transfer did not end within {budget:g} s")
        outcome.error = outcome.error or "over budget"
    elif scenario.lossy and scenario.kind == "transfer":
        # The client re-ACKs resent FINs in the background: keep capturing meanwhile.
        threading.Event().wait(LINGER_LOSSY_S)
    if scenario.kind == "probe":
        ok, detail = silent_client(url, topo.subject)
        outcome.add(PROBE_GIVES_UP, ok, detail)
    if not subject.alive():
        outcome.add(SUBJECT, False, _exited(subject, "during the run"))


def _exited(subject: Subject, when: str) -> str:
    status = subject.proc.returncode if subject.proc is not None else None
    tail = subject.tail()
    return f"the server exited {when} (status {status})" + (f": {tail}" if tail else "")


def _client_run(budget: float, started: float, subject: Subject, outcome: _Outcome) -> None:
    if not subject.wait(_within(budget, started)):
        outcome.add(BUDGET, False, f"the client did not finish within {budget:g} s")
    else:
        outcome.add(SUBJECT, True, f"the client exited with status {subject.returncode}")


def _content_check(
    scenario: GradeScenario, spec: RunSpec, outcome: _Outcome, output: Path, expected: str
) -> CheckResult:
    if spec.role == SERVER:
        if outcome.body is None:
            return CheckResult(CONTENT, "fail", f"stacklab's client got no file: {outcome.error}")
        body = outcome.body
        if scenario.kind == "handshake":
            return CheckResult(CONTENT, "skip", "the handshake scenario transfers nothing")
    else:
        try:
            body = output.read_bytes()
        except OSError:
            return CheckResult(CONTENT, "fail", f"the client wrote no file ({output.name})")
    digest = hashlib.sha256(body).hexdigest()
    if digest == expected:
        return CheckResult(CONTENT, "pass", f"{len(body)} bytes, sha256 {digest[:16]}...")
    return CheckResult(
        CONTENT,
        "fail",
        f"wrong bytes: {len(body)} bytes with sha256 {digest[:16]}..., expected "
        f"{scenario.size} bytes with sha256 {expected[:16]}...",
    )


# ---------------------------------------------------------------------------
# Across the namespace boundary
# ---------------------------------------------------------------------------


def run_in_namespace(spec: RunSpec) -> RunResult:
    """Run ``spec`` in a child process, the verdict coming back as JSON: in a fresh private
    network namespace, or (``spec.private`` false) on this machine's free loopback addresses.
    """
    from stacklab.tools.netns import NetnsError, private_netns, run_in_netns

    scenario = SCENARIOS[spec.scenario]
    level = logging.getLogger().getEffectiveLevel()
    argv = [
        sys.executable,
        "-m",
        "stacklab.tools.grade_run",
        "--log-level",
        str(level),
        json.dumps(spec.to_json()),
    ]
    timeout = scenario.budget + SILENT_WATCH_S + NS_MARGIN_S
    started = time.monotonic()
    try:
        if spec.private:
            with private_netns("stacklab-grade") as name:
                proc = run_in_netns(name, argv, timeout=timeout)
        else:
            proc = subprocess.run(
                argv, stdout=subprocess.PIPE, text=True, timeout=timeout, check=False
            )
    except NetnsError as exc:
        return _errored(spec, str(exc), started)
    except subprocess.TimeoutExpired:
        return _errored(spec, f"the run did not finish within {timeout:g} s", started)
    try:
        report = json.loads(proc.stdout)
    except ValueError:
        return _errored(
            spec, f"the run ended with status {proc.returncode} and no verdict", started
        )
    if report.get("error_only"):
        return _errored(spec, str(report["error_only"]), started)
    return RunResult.from_json(report)


def _errored(spec: RunSpec, message: str, started: float) -> RunResult:
    return RunResult(
        scenario=spec.scenario,
        seed=spec.seed,
        passed=False,
        seconds=round(time.monotonic() - started, 3),
        capture=None,
        checks=[CheckResult("grade.run", "fail", message)],
        error=message,
    )


def main(argv: list[str] | None = None) -> int:
    """The in-namespace entry: one JSON spec in, one JSON verdict out."""
    from stacklab.analysis.pcapio import CaptureError
    from stacklab.tools.capture import CaptureToolError

    parser = argparse.ArgumentParser(prog="python -m stacklab.tools.grade_run")
    parser.add_argument("--log-level", type=int, default=logging.WARNING)
    parser.add_argument("spec")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(name)s: %(message)s")
    spec = RunSpec(**json.loads(args.spec))
    try:
        result = run(spec)
    except (GradeError, CaptureToolError, CaptureError, OSError) as exc:
        json.dump({"error_only": str(exc)}, sys.stdout)
        return 1
    except Exception as exc:  # the verdict must come back as JSON, never as a traceback
        log.debug("grade run failed", exc_info=True)
        json.dump({"error_only": f"internal error: {type(exc).__name__}: {exc}"}, sys.stdout)
        return 1
    json.dump(result.to_json(), sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
