"""Running the simulator: the real client and the production server path in virtual time.

A :class:`~stacklab.transport.client.ClientSession` talks through a
:class:`~stacklab.sim.network.SimNetwork` (the ``stacklab chaos``
impairment model, one link per direction) to the server exactly as the RUDP
app server runs it: a SYN is answered without state by
:meth:`~stacklab.transport.handshake.Handshake.answer_syn` (cookies, the
original SYN-ACK for a plain SYN), the command creates the session with
:meth:`~stacklab.transport.handshake.Handshake.accept_command` and
``adopt`` (proven by its cookie, or an unproven legacy session with its
budget), sessions are built as the server builds them (``handshake_timeout``
is the server's idle limit), and a session is freed when it ends.  The loop
jumps to the next deadline (a delivery, either session's timer, a slow
receiver's next datagram, a hostile peer's next forgery), feeds it to the
engine, drains what the engine wants to send, and then checks every
invariant (:mod:`stacklab.sim.checker`).  There is no socket, no sleep and
no clock, so a scenario replays exactly from ``(seed, index)``.

End-of-run rules checked here: a blackhole shorter than the give-up limit
ends in a complete transfer, a longer one in a clean error; a peer that
vanishes or only sends duplicate ACKs makes the server give up (or finish,
when everything was already acknowledged); the run ends, in bounded steps
and virtual time, without a retransmission storm.  Where the simulator parts
from the server: after a session ends, the client's datagrams are dropped
(the server would answer a SYN and could start a new session; one run checks
one session's life), and the server's idle sweep is not simulated (the
engine must end every session by itself).
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Final

from stacklab.config import RudpSettings
from stacklab.sim.checker import Checker, InvariantViolation, Violation
from stacklab.sim.impairment import derive_rng
from stacklab.sim.network import C2S, S2C, SimNetwork
from stacklab.sim.scenarios import (
    DUPACK_INTERVAL,
    MAX_SIZE,
    SLOW_SLEEP,
    Scenario,
    content_for,
    draw_scenario,
)
from stacklab.transport.client import ClientSession
from stacklab.transport.events import CommandReceived
from stacklab.transport.handshake import Handshake, SynCookies
from stacklab.transport.integrity import add_trailer
from stacklab.transport.options import ORIGINAL, OptionLimits, TransferOptions
from stacklab.transport.server import ServerSession
from stacklab.wire import DEFAULT_URL, RUDP_HEADER, RUDP_HEADER_LEN, Flag

COMMAND: Final = f"FETCH {DEFAULT_URL}"
CLIENT: Final = ("127.0.0.2", 40000)
"""The simulated client's address (the cookies are bound to it)."""
MAX_STEPS: Final = 400_000
STEPS_PER_CHUNK: Final = 1_000
"""Steps a scenario may take: 20,000 plus this per chunk (legitimate runs stay under ~400)."""
MAX_STEPS_AT_ONE_INSTANT: Final = 20_000
BASE_TIME_LIMIT: Final = 300.0
PER_CHUNK_TIME_LIMIT: Final = 10.0
"""Virtual seconds a scenario may take: the base, plus this per chunk, plus its blackholes.

Generous on purpose: at 30% loss each way with a window of 1, each chunk
costs a few backed-off RTOs; exceeding it means the engine stopped making progress."""
LIMITS: Final = OptionLimits(max_chunk=1457, max_window=64, max_ack_every=8)
_SECRET: Final = b"stacklab-simulated-cookie-key!!!"
_ACK: Final = Flag.ACK.value
_SYN: Final = Flag.SYN.value
_DATA: Final = Flag.DATA.value


@dataclass(slots=True)
class Outcome:
    """What happened in one run."""

    scenario: Scenario
    status: str  # "completed", "aborted" or "violation"
    virtual_time: float = 0.0
    steps: int = 0
    retransmissions: int = 0
    go_backs: int = 0
    fast_retransmits: int = 0
    timeouts: int = 0
    delivered: int = 0
    client_error: str | None = None
    server_error: str | None = None
    violation: Violation | None = None
    window_trace: list[tuple[float, int]] = field(default_factory=list)
    network: dict[str, int] = field(default_factory=dict)
    server_stats: dict[str, int] = field(default_factory=dict)


class _Server:
    """The app server's datagram path for one client address, as ``app_rudp`` runs it."""

    def __init__(self, scenario: Scenario, check: Checker) -> None:
        self.scenario = scenario
        self.check = check
        self.handshake = Handshake(LIMITS, ORIGINAL, SynCookies(_SECRET))
        self.session: ServerSession | None = None
        self.freed = False
        self.stats: dict[str, int] = {"syn_answered": 0, "bad_cookie": 0, "no_session": 0}

    def make_session(self) -> ServerSession:
        s = self.scenario
        return ServerSession(
            LIMITS,
            s.max_timeouts,
            original_options=ORIGINAL,
            initial_rto=s.initial_rto,
            min_rto=s.min_rto,
            max_rto=s.max_rto,
            handshake_timeout=RudpSettings().idle_timeout,
            trace=True,
        )

    @property
    def terminal(self) -> bool:
        return self.freed

    def receive(self, data: bytes, now: float, out: list[bytes]) -> None:
        session = self.session
        if session is None:
            if self.freed:
                self.stats["no_session"] += 1
                return
            flag = data[8:9] if len(data) >= RUDP_HEADER_LEN else b""
            if flag == _SYN:
                answer = self.handshake.answer_syn(data, CLIENT, now)
                if answer is not None:
                    self.stats["syn_answered"] += 1
                    out.append(answer)
                return
            if flag != _DATA:
                self.stats["no_session"] += 1
                return
            session = self.handshake.accept_command(data, CLIENT, now, self.make_session)
            if session is None:
                self.stats["bad_cookie"] += 1
                return
            self.session = session
        was_proven = session.proven
        before = session.sender.max_sent if session.sender is not None else 0
        session.receive_datagram(data, now)
        if not was_proven and session.proven:
            ack = RUDP_HEADER.unpack_from(data, 0)[1] if len(data) >= RUDP_HEADER_LEN else -1
            if not 1 <= ack <= before:
                self.check.fail(
                    "only an ACK of a chunk sent proves an address",
                    f"ACK {ack} proved the address with chunks 1..{before} sent",
                )

    def get_timer(self) -> float | None:
        return None if self.session is None or self.freed else self.session.get_timer()

    def handle_timer(self, now: float) -> None:
        if self.session is not None and not self.freed:
            self.session.handle_timer(now)

    def free_if_done(self) -> None:
        session = self.session
        if session is not None and (session.done or session.failed is not None):
            self.freed = True


class _Client:
    """The client end: the real session, behind a slow receiver or a hostile peer."""

    def __init__(self, scenario: Scenario, session: ClientSession) -> None:
        self.scenario = scenario
        self.session = session
        self.rng = derive_rng(scenario.seed, f"peer:{scenario.index}")
        self.inbox: deque[bytes] = deque()
        self.free_at = 0.0
        self.head_due: float | None = None
        self.gone = False  # vanished or turned into a duplicate-ACK stream
        self.last_ack: bytes | None = None
        self.next_forgery: float | None = None
        peer = scenario.peer
        if peer in ("vanish", "dupacks"):
            self.next_forgery = scenario.peer_at
        elif peer == "bogus":
            self.next_forgery = self.rng.expovariate(scenario.peer_at)

    @property
    def terminal(self) -> bool:
        s = self.session
        return self.gone or s.done or s.failed is not None

    def deliver(self, data: bytes, now: float) -> None:
        if self.gone:
            return
        if self.scenario.peer != "slow":
            self.session.receive_datagram(data, now)
            return
        self.inbox.append(data)

    def next_time(self) -> float | None:
        """The earliest of: the slow receiver's next datagram, the peer's next move."""
        t: float | None = None
        if self.inbox and not self.gone:
            if self.head_due is None:
                head = self.inbox[0]
                sleep = self.rng.uniform(*SLOW_SLEEP) if head[8:9] == _DATA else 0.0
                self.head_due = self.free_at + sleep
            t = self.head_due
        if self.next_forgery is not None:
            f = self.next_forgery
            t = f if t is None or f < t else t
        return t

    def run(self, now: float, net: SimNetwork, server: _Server) -> None:
        """Whatever is due at ``now`` on this side (see :meth:`next_time`)."""
        if self.head_due is not None and self.head_due <= now and self.inbox:
            self.head_due = None
            self.free_at = now
            self.session.receive_datagram(self.inbox.popleft(), now)
            return
        forgery = self.next_forgery
        if forgery is None or forgery > now:
            return
        peer = self.scenario.peer
        if server.terminal:
            self.next_forgery = None
        elif peer == "vanish":
            self.gone = True
            self.next_forgery = None
        elif peer == "dupacks":
            self.gone = True
            if self.last_ack is not None:
                net.send(C2S, self.last_ack, now)
                self.next_forgery = now + DUPACK_INTERVAL
            else:
                self.next_forgery = None  # nothing to repeat yet: the peer simply vanished
        else:  # bogus
            session = server.session
            top = session.sender.max_sent if session is not None and session.sender else 0
            ack = self.rng.choice((0xFFFFFFFF, top + 1 + self.rng.randrange(1000)))
            if self.scenario.integrity:
                datagram = add_trailer(RUDP_HEADER.pack(0, ack, _ACK, 4))
            else:
                datagram = RUDP_HEADER.pack(0, ack, _ACK, 0)
            net.send(C2S, datagram, now)
            self.next_forgery = now + self.rng.expovariate(self.scenario.peer_at)
            if self.terminal:
                self.next_forgery = None

    def sent(self, data: bytes) -> None:
        if data[8:9] == _ACK:
            self.last_ack = data


# -- running one scenario --------------------------------------------------------


def run_scenario(scenario: Scenario, *, keep_trace: bool = False) -> Outcome:
    """Run one scenario to its end and check every invariant on the way."""
    content = content_for(scenario)
    net = SimNetwork(
        scenario.up,
        scenario.down,
        derive_rng(scenario.seed, f"net:{scenario.index}:up"),
        derive_rng(scenario.seed, f"net:{scenario.index}:down"),
    )
    session = ClientSession(
        COMMAND,
        scenario.options,
        initial_rto=scenario.initial_rto,
        min_rto=scenario.min_rto,
        max_rto=scenario.max_rto,
        max_timeouts=scenario.max_timeouts,
        silence_timeout=scenario.silence_timeout,
        max_bytes=max(scenario.size, 1),
        trace=True,
    )
    check = Checker(scenario, content)
    check.max_window = (scenario.options or TransferOptions()).max_window
    client = _Client(scenario, session)
    server = _Server(scenario, check)
    outcome = Outcome(scenario, "violation")
    chunk = (scenario.options or TransferOptions()).chunk_size
    chunks = -(-scenario.size // chunk)
    limit = (
        BASE_TIME_LIMIT
        + PER_CHUNK_TIME_LIMIT * chunks
        + sum(h.duration for h in scenario.up.blackholes)
    )
    max_steps = min(MAX_STEPS, 20_000 + STEPS_PER_CHUNK * chunks)
    if scenario.peer == "bogus":
        max_steps += int(scenario.peer_at * limit)
    elif scenario.peer == "dupacks":
        max_steps += int(scenario.max_timeouts * scenario.max_rto / DUPACK_INTERVAL) * 2
    # Both directions together: a window of data (and a little slack: a FIN, the
    # base sent twice after a timeout in a negotiated session), an ACK
    # for each, every one possibly duplicated, and stragglers held back by
    # reordering or a queue.  Far beyond that, the engine is feeding a storm.
    window = (scenario.options or TransferOptions()).max_window
    max_in_flight = 20 * (window + 2) + 200
    now = 0.0
    steps = 0
    same_instant = 0
    try:
        session.start(now)
        _drain(check, client, server, net, now)
        while True:
            if client.terminal and server.terminal:
                break
            if client.terminal and server.session is None:
                break  # the client ended before any session existed (a lost handshake)
            t_net = net.next_delivery_time()
            t_client = None if client.terminal else session.get_timer()
            t_peer = client.next_time()
            t_server = server.get_timer()
            t = t_net
            for candidate in (t_client, t_peer, t_server):
                if candidate is not None and (t is None or candidate < t):
                    t = candidate
            if t is None:
                break
            if t > limit:
                check.fail(
                    "ends in bounded virtual time",
                    f"still running at {t:.3f} s (limit {limit:.0f} s)",
                )
            steps += 1
            if steps > max_steps:
                check.fail("ends in bounded steps", f"{steps} steps at {now:.3f} s")
            if net.in_flight > max_in_flight:
                check.fail(
                    "datagrams in flight stay bounded",
                    f"{net.in_flight} datagrams in the network at {now:.3f} s "
                    "(a retransmission storm)",
                )
            if t > now:
                now = t
                same_instant = 0
            else:
                same_instant += 1
                if same_instant > MAX_STEPS_AT_ONE_INSTANT:
                    check.fail(
                        "time advances", f"{same_instant} steps at {now:.6f} s without progress"
                    )
            if t_net is not None and t_net <= now:
                _, direction, data = net.pop_delivery()
                if direction == C2S:
                    out: list[bytes] = []
                    server.receive(data, now, out)
                    for answer in out:
                        net.send(S2C, answer, now)
                else:
                    client.deliver(data, now)
            elif t_peer is not None and t_peer <= now:
                client.run(now, net, server)
            elif t_client is not None and t_client <= now:
                session.handle_timer(now)
            else:
                server.handle_timer(now)
            _drain(check, client, server, net, now)
        _final_checks(check, scenario, client, server, content, now)
        outcome.status = "completed" if session.done else "aborted"
    except InvariantViolation as exc:
        outcome.violation = Violation(
            scenario.seed,
            scenario.index,
            round(now, 6),
            exc.invariant,
            exc.detail,
            scenario.replay,
            scenario.describe(),
        )
    outcome.virtual_time = now
    outcome.steps = steps
    outcome.retransmissions = check.retransmissions
    outcome.go_backs = check.go_backs
    outcome.fast_retransmits = check.fast_retransmits
    outcome.timeouts = check.timeouts
    outcome.delivered = check.delivered
    outcome.client_error = session.failed
    outcome.server_error = server.session.failed if server.session is not None else None
    outcome.network = dict(net.stats)
    outcome.server_stats = dict(server.stats)
    if server.session is not None:
        outcome.server_stats.update(server.session.stats)
    if keep_trace:
        outcome.window_trace = check.window_trace
    return outcome


def _drain(check: Checker, client: _Client, server: _Server, net: SimNetwork, now: float) -> None:
    """Take every event and datagram out of both sessions, checking as we go."""
    session = client.session
    _server_events(check, server, now)
    client_event = check.client_event
    ev = session.next_event()
    while ev is not None:
        client_event(ev, session)
        ev = session.next_event()
    send = net.send
    if not client.gone:
        for data in session.datagrams_to_send(now):
            check.client_datagram(data, server.session)
            client.sent(data)
            send(C2S, data, now)
    if server.session is not None and not server.freed:
        previous = b""
        for data in server.session.datagrams_to_send(now):
            if check.legacy and data == previous:
                check.fail(
                    "a legacy session sends each resend once",
                    f"the same {len(data)}-byte datagram twice in a row at {now:.3f} s",
                )
            previous = data
            send(S2C, data, now)
    _server_events(check, server, now)
    ev = session.next_event()
    while ev is not None:
        client_event(ev, session)
        ev = session.next_event()
    check.after_step(session, server.session)
    server.free_if_done()


def _server_events(check: Checker, server: _Server, now: float) -> None:
    session = server.session
    if session is None:
        return
    server_event = check.server_event
    ev = session.next_event()
    while ev is not None:
        server_event(ev, session)
        if type(ev) is CommandReceived:
            if ev.command != COMMAND:
                check.fail("command intact", f"server received {ev.command!r}")
            session.provide_content(check.content, now)
            check.max_window = session.options.max_window
        ev = session.next_event()


def _final_checks(
    check: Checker,
    scenario: Scenario,
    client: _Client,
    server: _Server,
    content: bytes,
    now: float,
) -> None:
    session = client.session
    if scenario.peer in ("vanish", "dupacks") and client.gone:
        if server.session is not None and not server.terminal:
            check.fail(
                "a vanished peer is given up",
                f"the server session is still {server.session.state.value} at {now:.3f} s",
            )
        return
    if session.done:
        if session.content != content:
            check.fail(
                "delivered bytes equal the sent bytes", "the transfer completed with wrong bytes"
            )
        if scenario.expect == "abort" and scenario.up.blackholes:
            hole = scenario.up.blackholes[0]
            if check.completed_at is not None and check.completed_at > hole.start + hole.duration:
                check.fail(
                    "long blackhole ends in a clean error",
                    f"completed at {check.completed_at:.3f} s after a {hole.duration:.1f} s outage",
                )
    elif session.failed is not None:
        if not check.client_gave_up:
            check.fail("clean give-up", f"client failed without a GaveUp event: {session.failed}")
        if scenario.expect == "complete":
            check.fail(
                "short blackhole is survived",
                f"client gave up ({session.failed}) although the outage was shorter than the give-up limit",
            )
    else:
        check.fail(
            "the transfer ends",
            f"nothing left to do at {now:.3f} s but the client is {session.state.value}",
        )


# -- many scenarios --------------------------------------------------------------


@dataclass(slots=True)
class Summary:
    """Totals over many runs (what ``--json`` prints)."""

    scenarios: int = 0
    completed: int = 0
    aborted: int = 0
    violations: list[dict[str, Any]] = field(default_factory=list)
    virtual_time: float = 0.0
    retransmissions: int = 0
    go_backs: int = 0
    timeouts: int = 0
    bytes_delivered: int = 0

    def add(self, outcome: Outcome) -> None:
        self.scenarios += 1
        if outcome.status == "completed":
            self.completed += 1
        elif outcome.status == "aborted":
            self.aborted += 1
        if outcome.violation is not None:
            self.violations.append(outcome.violation.to_dict())
        self.virtual_time += outcome.virtual_time
        self.retransmissions += outcome.retransmissions
        self.go_backs += outcome.go_backs
        self.timeouts += outcome.timeouts
        self.bytes_delivered += outcome.delivered

    def to_json(self) -> str:
        return json.dumps(
            {
                "scenarios": self.scenarios,
                "completed": self.completed,
                "aborted": self.aborted,
                "violations": self.violations,
            }
        )


def _run_index(args: tuple[int, int]) -> Outcome:
    seed, index = args
    outcome = run_scenario(draw_scenario(seed, index))
    outcome.window_trace = []
    return outcome


def run_many(seed: int, count: int, workers: int = 2, start: int = 0) -> Iterator[Outcome]:
    """Run scenarios ``start .. start+count-1`` of ``seed``, on ``workers`` processes.

    Outcomes come back in an arbitrary order (use ``outcome.scenario.index``).
    """
    jobs = [(seed, i) for i in range(start, start + count)]
    if workers <= 1 or count < 50:
        for job in jobs:
            yield _run_index(job)
        return
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(workers) as pool:
        yield from pool.imap_unordered(
            _run_index, jobs, chunksize=max(1, min(50, count // (workers * 8)))
        )


__all__ = [
    "CLIENT",
    "COMMAND",
    "MAX_SIZE",
    "InvariantViolation",
    "Outcome",
    "Scenario",
    "Summary",
    "Violation",
    "draw_scenario",
    "run_many",
    "run_scenario",
]
