"""Deterministic simulation of the RUDP engine, with invariants checked after every event.

A :class:`~stacklab.transport.client.ClientSession` and a
:class:`~stacklab.transport.server.ServerSession` talk through a
:class:`~stacklab.transport.simnet.SimNetwork` (the ``stacklab chaos``
impairment model, one link per direction) in virtual time: the loop jumps to
the next deadline (a delivery or either session's timer), feeds the event to
the engine, drains what the engine wants to send, and then checks every
invariant of the protocol against the sessions' introspection and events.
There is no socket, no sleep and no clock, so a scenario replays exactly from
``(seed, index)``.

The invariants (each violation names the seed and scenario that replay it):

* delivered bytes are always a prefix of the sent bytes, delivered in order
  and exactly once, and equal them at the end — or the transfer ended with a
  clean give-up (a ``GaveUp`` event, a ``failed`` reason);
* the client's ACK numbers never go backwards nor beyond what the server has
  sent; the sender's base never goes backwards;
* in flight <= window <= negotiated maximum, window >= 1; the window grows by
  one per advancing ACK and halves (floor 1) at most once per loss event (a
  timeout always is one; a fast retransmit only after new data was ACKed);
* the RTO stays within ``[min_rto, max_rto]`` and doubles (capped) on each
  expiry; the sender gives up exactly at ``max_timeouts`` consecutive
  timeouts; an RTT sample only ever comes from a chunk sent once, and
  measures exactly from its transmission;
* the third duplicate ACK — and only it — triggers one go-back; duplicates
  that merely echo chunks sent before the last go-back (or a loss probe) do
  not count;
* a legacy session (an original client) never sends the same datagram twice
  in a row: only negotiated sessions double the base after a timeout;
* a blackhole shorter than the give-up limit ends in a complete transfer; a
  longer one in a clean error, within bounded virtual time;
* with integrity negotiated, a corrupted datagram never reaches the
  delivered bytes;
* the run ends: a stuck engine (no progress in bounded steps or virtual
  time) is a violation, never a hang; so is a retransmission storm (far more
  datagrams in the network than a window and its ACKs can explain).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Final

from stacklab.transport.client import ClientSession
from stacklab.transport.events import (
    AckReceived,
    CommandReceived,
    DataDelivered,
    Event,
    FastRetransmit,
    GaveUp,
    GoBack,
    IntegrityFailure,
    PacketSent,
    RtoChanged,
    RttSample,
    Timeout,
    TransferComplete,
    WindowChanged,
)
from stacklab.transport.impairment import Blackhole, GilbertElliott, Impairment, derive_rng
from stacklab.transport.options import OptionLimits, TransferOptions
from stacklab.transport.server import ServerSession
from stacklab.transport.simnet import C2S, S2C, SimNetwork
from stacklab.wire import DEFAULT_URL, RUDP_HEADER, RUDP_HEADER_LEN, Flag

COMMAND: Final = f"FETCH {DEFAULT_URL}"
MAX_SIZE: Final = 200_000
"""Largest file a drawn scenario transfers (bytes): modest, so 10,000 scenarios stay fast."""
MAX_STEPS: Final = 400_000
STEPS_PER_CHUNK: Final = 1_000
"""Steps a scenario may take: 20,000 plus this per chunk (legitimate runs stay under ~400)."""
MAX_STEPS_AT_ONE_INSTANT: Final = 20_000
BASE_TIME_LIMIT: Final = 300.0
PER_CHUNK_TIME_LIMIT: Final = 10.0
"""Virtual seconds a scenario may take: the base, plus this per chunk, plus its blackholes.

Generous on purpose: at 30% loss each way with a window of 1, each chunk
costs a few backed-off RTOs (seed 1, scenario 5037 legitimately takes 464 s
for 51 chunks); exceeding it means the engine stopped making progress."""
SHORT_HOLE_MAX: Final = 3.0
LONG_HOLE_MIN: Final = 70.0
_ACK: Final = Flag.ACK.value
_EPS: Final = 1e-9


class InvariantViolation(Exception):
    """Raised inside a run at the first broken invariant; becomes a :class:`Violation`."""

    def __init__(self, invariant: str, detail: str) -> None:
        super().__init__(f"{invariant}: {detail}")
        self.invariant = invariant
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Scenario:
    """One network setting, file size and engine configuration: everything a run depends on.

    ``index`` is the position in the seed's stream of drawn scenarios (None
    for a setting chosen by hand); ``(seed, index)`` replays it.
    ``expect`` is what the blackhole rule demands: ``complete`` (a short
    outage, otherwise a mild network), ``abort`` (an outage longer than
    every give-up limit) or ``either``.
    """

    seed: int
    index: int | None
    size: int
    options: TransferOptions | None
    up: Impairment
    down: Impairment
    initial_rto: float = 1.0
    min_rto: float = 0.2
    max_rto: float = 10.0
    max_timeouts: int = 8
    silence_timeout: float = 30.0
    expect: str = "either"

    @property
    def replay(self) -> str:
        """The command line that runs this scenario again."""
        if self.index is not None:
            return f"stacklab simulate --seed {self.seed} --scenario {self.index}"
        return f"stacklab simulate --seed {self.seed} (with the same network options)"

    @property
    def integrity(self) -> bool:
        return self.options is not None and self.options.integrity

    def describe(self) -> str:
        if self.options is None:
            engine = "original client (chunk 500, window 5)"
        else:
            o = self.options
            engine = (
                f"chunk {o.chunk_size}, window {o.max_window}, ack_every {o.ack_every}, "
                f"integrity {'on' if o.integrity else 'off'}"
            )
        return (
            f"{self.size} bytes; {engine}; up: {self.up.describe()}; "
            f"down: {self.down.describe()}; expect {self.expect}"
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["describe"] = self.describe()
        return data


@dataclass(slots=True)
class Violation:
    seed: int
    scenario: int | None
    time: float
    invariant: str
    detail: str
    replay: str
    setting: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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


# -- drawing scenarios ---------------------------------------------------------


def draw_scenario(seed: int, index: int) -> Scenario:
    """The ``index``-th random scenario of ``seed`` (independent of every other index)."""
    r = derive_rng(seed, f"scenario:{index}")
    # Sizes: many small files, some large ones, a few empty or one byte.
    shape = r.random()
    size = r.choice((0, 1)) if shape < 0.05 else int(MAX_SIZE * r.random() ** 2.5)

    if r.random() < 0.2:
        options: TransferOptions | None = None
    else:
        options = TransferOptions(
            chunk_size=r.choice((500, 1000, 1400, 1457))
            if size > 40_000
            else r.choice((200, 500, 1400)),
            max_window=r.choice((1, 2, 5, 16, 32, 64)),
            integrity=r.random() < 0.7,
            ack_every=r.choice((1, 1, 2, 4, 8)),
        )
    integrity = options is not None and options.integrity

    def direction() -> Impairment:
        loss = 0.0 if r.random() < 0.4 else r.uniform(0.0, 0.3)
        burst = None
        if r.random() < 0.2:
            burst = GilbertElliott(r.uniform(0.005, 0.05), r.uniform(0.3, 0.8))
        low = r.uniform(0.0, 0.05)
        high = low + (0.0 if r.random() < 0.3 else r.uniform(0.0, 0.05))
        reorder = 0.0 if r.random() < 0.7 else r.uniform(0.0, 0.1)
        duplicate = 0.0 if r.random() < 0.7 else r.uniform(0.0, 0.2)
        corrupt = 0.0 if not integrity or r.random() < 0.6 else r.uniform(0.0, 0.1)
        rate = None if r.random() < 0.8 else r.uniform(1e6, 50e6)
        return Impairment(
            loss=loss,
            burst=burst,
            delay_min=low,
            delay_max=high,
            reorder=reorder,
            reorder_gap=r.uniform(0.001, 0.03),
            duplicate=duplicate,
            corrupt=corrupt,
            corrupt_max_bytes=r.choice((1, 1, 4)),
            rate_bps=rate,
            queue_limit=r.choice((10, 50, 200)),
        )

    up, down = direction(), direction()
    expect = "either"
    hole_roll = r.random()
    if hole_roll < 0.25:
        start = r.uniform(0.0, 2.0)
        if hole_roll < 0.05:
            hole = Blackhole(start, r.uniform(LONG_HOLE_MIN, LONG_HOLE_MIN + 50))
            expect = "abort"
        else:
            hole = Blackhole(start, r.uniform(0.05, SHORT_HOLE_MAX))
            # A short outage on an otherwise mild network must not end the transfer.
            if r.random() < 0.6:
                up, down = _mild(up), _mild(down)
                expect = "complete"
        up, down = up.with_blackholes(hole), down.with_blackholes(hole)
    return Scenario(seed, index, size, options, up, down, expect=expect)


def _mild(imp: Impairment) -> Impairment:
    """The same setting with at most 2% independent loss and no bursts or corruption."""
    from dataclasses import replace

    return replace(imp, loss=min(imp.loss, 0.02), burst=None, corrupt=min(imp.corrupt, 0.02))


def content_for(scenario: Scenario) -> bytes:
    """The file a scenario transfers: seeded random bytes (repeats would hide reordering bugs)."""
    if scenario.size == 0:
        return b""
    return derive_rng(scenario.seed, f"content:{scenario.index}").randbytes(scenario.size)


# -- the invariant checker -----------------------------------------------------


class _Checker:
    """Mirrors what the engine may do and raises :class:`InvariantViolation` when it does not.

    The checker keeps its own account from the events (it never trusts the
    engine's private counters).  Duplicate ACKs: for one SRTT after a
    go-back (the RTO before any RTT sample), and then for each chunk of the
    old flight above the base (less the duplicates already seen at this base)
    and each loss probe's copy of the base, duplicates echo what was sent
    before and are not counted.  The third *counted*
    duplicate, and only it, triggers exactly one go-back.  No chunk ever
    leaves beyond the window.
    """

    def __init__(self, scenario: Scenario, content: bytes) -> None:
        self.scenario = scenario
        self.content = content
        self.view = memoryview(content)
        self.min_rto = scenario.min_rto
        self.max_rto = scenario.max_rto
        self.legacy = scenario.options is None  # an original client: exactly the original sender
        # server / sender side
        self.sent_count: dict[int, int] = {}
        self.first_sent: dict[int, float] = {}
        self.base = 1
        self.window = 1
        self.max_window = 1
        self.dup = 0  # duplicates counted towards the next fast retransmit
        self.dups_at_base = 0  # every duplicate since the base last moved
        self.old_flight = 0  # duplicates still expected as echoes of a resent flight
        self.quiet_until = 0.0  # duplicates before this time echo the flight before a go-back
        self.current_rto = scenario.initial_rto
        self.srtt: float | None = None
        self.probes = 0
        self.last_goback_to: int | None = None
        self.expect_fast_retransmit = False
        self.advanced_since_loss = True
        self.halved_for_loss = False
        self.expect_increase = False
        self.consecutive = 0
        self.pending_backoff: tuple[float, bool] | None = None  # (fired rto, gave up expected)
        self.timeout_this_step = False
        self.gave_up = False
        # client side
        self.delivered = 0
        self.last_client_ack = -1
        self.client_pending_backoff: float | None = None
        self.client_gave_up = False
        self.completed_at: float | None = None
        self.integrity_failed = False
        # counts for the outcome
        self.retransmissions = 0
        self.go_backs = 0
        self.fast_retransmits = 0
        self.timeouts = 0
        self.window_trace: list[tuple[float, int]] = []

        self._checked = 0  # bytes of the delivered content already compared with the file

    def fail(self, invariant: str, detail: str) -> None:
        raise InvariantViolation(invariant, detail)

    # -- events ----------------------------------------------------------------

    def server_event(self, ev: Event, server: ServerSession) -> None:
        if isinstance(ev, PacketSent):
            if ev.flag in ("D", "F") and server.sender is not None:
                seq = ev.seq
                count = self.sent_count.get(seq, 0)
                if ev.retransmission != (count > 0):
                    self.fail(
                        "retransmission flag",
                        f"chunk {seq} sent {count} times before, flagged retransmission={ev.retransmission}",
                    )
                if count == 0:
                    self.first_sent[seq] = ev.time
                else:
                    self.retransmissions += 1
                if seq >= self.base + self.window and ev.flag == "D":
                    self.fail(
                        "in flight <= window",
                        f"chunk {seq} sent beyond the window "
                        f"(base {self.base}, window {self.window})",
                    )
                self.sent_count[seq] = count + 1
        elif isinstance(ev, AckReceived):
            if ev.duplicate:
                if ev.ack != self.base - 1:
                    self.fail(
                        "duplicate ACK", f"ACK {ev.ack} counted as duplicate with base {self.base}"
                    )
                # Our own account of which duplicates count (see _Checker's docstring);
                # the engine's ``counted`` flag, where it exists, must agree with it.
                self.dups_at_base += 1
                if ev.time < self.quiet_until:  # within one SRTT of a go-back: an echo
                    counted = False
                elif self.old_flight > 0:
                    self.old_flight -= 1
                    counted = False
                else:
                    counted = True
                    self.dup += 1
                    if self.dup == 3:
                        self.expect_fast_retransmit = True
                engine_says = getattr(ev, "counted", counted)
                if engine_says != counted:
                    self.fail(
                        "duplicate ACK accounting",
                        f"duplicate ACK {ev.ack} counted={engine_says}, expected {counted} "
                        f"({self.old_flight} echoes of the old flight still expected)",
                    )
            else:
                if ev.ack < self.base:
                    self.fail("ACKs never go backwards", f"ACK {ev.ack} advanced base {self.base}")
                sender = server.sender
                if sender is not None and ev.ack < sender.fin_seq:
                    self.expect_increase = self.window < self.max_window
                self.base = ev.ack + 1
                self.dup = 0
                self.dups_at_base = 0
                self.old_flight = 0
                self.consecutive = 0
                self.advanced_since_loss = True
        elif isinstance(ev, WindowChanged):
            self._window_changed(ev)
        elif isinstance(ev, FastRetransmit):
            if not self.expect_fast_retransmit or ev.dup_acks != 3:
                self.fail(
                    "fast retransmit on the third duplicate ACK only",
                    f"fast retransmit at base {ev.base} after {self.dup} duplicate ACKs "
                    f"(last go-back to {self.last_goback_to})",
                )
            self.expect_fast_retransmit = False
            self.fast_retransmits += 1
        elif isinstance(ev, GoBack):
            if ev.to_seq != self.base:
                self.fail("go-back to base", f"go-back to {ev.to_seq} with base {self.base}")
            halving_due = ev.reason == "timeout" or self.advanced_since_loss
            if halving_due and not self.halved_for_loss and self.window > 1:
                self.fail(
                    "window halves on loss",
                    f"go-back on {ev.reason} left the window at {self.window}",
                )
            self.halved_for_loss = False
            self.go_backs += 1
            # For one SRTT (the RTO before any sample) duplicates echo the old flight,
            # and each of its chunks above the base may still echo one after that.
            quiet = self.srtt if self.srtt is not None else self.current_rto
            engine_quiet = getattr(ev, "quiet", quiet)
            if abs(engine_quiet - quiet) > 1e-9:
                self.fail(
                    "go-back quiet period", f"quiet {engine_quiet} s, SRTT/RTO says {quiet} s"
                )
            self.quiet_until = ev.time + quiet
            self.old_flight = max(0, ev.from_seq - ev.to_seq - self.dups_at_base)
            self.dups_at_base = 0
            self.dup = 0
            self.last_goback_to = ev.to_seq
            self.advanced_since_loss = False
        elif ev.name == "recovery:loss_probe":
            self.old_flight += 1  # the probe's copy of the base echoes one duplicate
            self.probes += 1
        elif isinstance(ev, Timeout):
            self.timeouts += 1
            self.consecutive += 1
            if ev.consecutive != self.consecutive:
                self.fail(
                    "consecutive timeouts",
                    f"timeout says {ev.consecutive} consecutive, expected {self.consecutive}",
                )
            if ev.base != self.base:
                self.fail("timeout at base", f"timeout for {ev.base} with base {self.base}")
            self._rto_in_bounds(ev.rto, "fired RTO")
            self.pending_backoff = (ev.rto, ev.consecutive >= self.scenario.max_timeouts)
            self.timeout_this_step = True
        elif isinstance(ev, RtoChanged):
            self._rto_in_bounds(ev.rto, "RTO")
            self.current_rto = ev.rto
            self.srtt = ev.srtt
            if self.pending_backoff is not None:
                fired, _ = self.pending_backoff
                expected = min(self.max_rto, fired * 2)
                if abs(ev.rto - expected) > _EPS:
                    self.fail("RTO doubles on expiry", f"RTO {fired} expired, new RTO {ev.rto}")
                self.pending_backoff = None
        elif isinstance(ev, RttSample):
            count = self.sent_count.get(ev.seq, 0)
            if count != 1:
                self.fail("Karn's rule", f"RTT sample from chunk {ev.seq} sent {count} times")
            measured = ev.time - self.first_sent[ev.seq]
            if abs(measured - ev.rtt) > 1e-6:
                self.fail("RTT sample", f"sample {ev.rtt} for chunk {ev.seq}, measured {measured}")
        elif isinstance(ev, GaveUp):
            self.gave_up = True
            if self.pending_backoff is not None:
                _, should = self.pending_backoff
                if not should:
                    self.fail("give-up limit", "the sender gave up before max_timeouts")
                self.pending_backoff = None

    def _window_changed(self, ev: WindowChanged) -> None:
        if ev.old != self.window:
            self.fail("window", f"window changed from {ev.old}, but it was {self.window}")
        if ev.reason == "ack":
            self.expect_increase = False
            if ev.new != ev.old + 1 or ev.new > self.max_window:
                self.fail(
                    "AIMD increase",
                    f"window {ev.old} -> {ev.new} on an ACK (max {self.max_window})",
                )
        else:
            self.halved_for_loss = True
            if ev.new != max(1, ev.old // 2):
                self.fail("AIMD halving", f"window {ev.old} -> {ev.new} on {ev.reason}")
            if ev.reason == "timeout":
                if not self.timeout_this_step:
                    self.fail("AIMD halving", "window halved for a timeout that did not fire")
            elif not self.advanced_since_loss:
                self.fail(
                    "window halved at most once per loss event",
                    f"halved again on {ev.reason} with no new data acknowledged since the last halving",
                )
        if ev.new < 1:
            self.fail("window >= 1", f"window {ev.new}")
        self.window = ev.new
        self.window_trace.append((ev.time, ev.new))

    def _rto_in_bounds(self, rto: float, what: str) -> None:
        if not self.min_rto - _EPS <= rto <= self.max_rto + _EPS:
            self.fail("RTO within bounds", f"{what} {rto} outside [{self.min_rto}, {self.max_rto}]")

    def client_event(self, ev: Event, client: ClientSession) -> None:
        if isinstance(ev, DataDelivered):
            if ev.offset != self.delivered:
                self.fail(
                    "delivery in order, exactly once",
                    f"delivered at offset {ev.offset}, expected {self.delivered}",
                )
            end = ev.offset + ev.length
            if end > len(self.content):
                self.fail(
                    "delivered bytes are a prefix", f"delivered up to {end} of {len(self.content)}"
                )
            self.delivered = end
        elif isinstance(ev, TransferComplete):
            self.completed_at = ev.time
            if ev.bytes != len(self.content):
                self.fail(
                    "complete transfer", f"complete with {ev.bytes} of {len(self.content)} bytes"
                )
        elif isinstance(ev, IntegrityFailure):
            self.integrity_failed = True
            self.fail(
                "corruption never delivered",
                f"SHA-256 mismatch at the FIN: {ev.expected} vs {ev.actual}",
            )
        elif isinstance(ev, Timeout):
            self._rto_in_bounds(ev.rto, "client RTO")
            self.client_pending_backoff = ev.rto
        elif isinstance(ev, RtoChanged):
            self._rto_in_bounds(ev.rto, "client RTO")
            if self.client_pending_backoff is not None:
                expected = min(self.max_rto, self.client_pending_backoff * 2)
                if abs(ev.rto - expected) > _EPS:
                    self.fail(
                        "RTO doubles on expiry",
                        f"client RTO {self.client_pending_backoff} expired, new RTO {ev.rto}",
                    )
                self.client_pending_backoff = None
        elif isinstance(ev, GaveUp):
            self.client_gave_up = True

    # -- state after each step ---------------------------------------------------

    def client_datagram(self, data: bytes, server: ServerSession) -> None:
        if len(data) < RUDP_HEADER_LEN or data[8:9] != _ACK:
            return
        _, ack, _, _ = RUDP_HEADER.unpack_from(data, 0)
        sender = server.sender
        max_sent = sender.max_sent if sender is not None else 0
        if ack > max_sent:
            self.fail(
                "ACKs never beyond what was sent",
                f"client ACKs {ack}, server sent up to {max_sent}",
            )
        if ack < self.last_client_ack:
            self.fail(
                "ACKs never go backwards", f"client ACK {ack} after ACK {self.last_client_ack}"
            )
        self.last_client_ack = ack

    def after_step(self, client: ClientSession, server: ServerSession) -> None:
        if self.pending_backoff is not None and not self.pending_backoff[1]:
            self.fail("RTO doubles on expiry", "a timeout fired without a new RTO")
        if self.expect_increase:
            self.fail(
                "AIMD increase",
                f"an ACK advanced the base to {self.base}, window stayed {self.window}",
            )
        if self.expect_fast_retransmit:
            self.fail("third duplicate ACK triggers a go-back", f"no go-back at base {self.base}")
        self.timeout_this_step = False
        sender = server.sender
        if sender is not None:
            if sender.base != self.base:
                self.fail("sender base", f"sender base {sender.base}, ACKs seen imply {self.base}")
            window = sender.window
            if window != self.window:
                self.fail("window", f"sender window {window}, events imply {self.window}")
            if not 1 <= window <= self.max_window:
                self.fail("1 <= window <= maximum", f"window {window}, maximum {self.max_window}")
            if sender.in_flight > window:
                self.fail("in flight <= window", f"{sender.in_flight} in flight, window {window}")
            if not sender.failed and not sender.done:
                self._rto_in_bounds(sender.rto, "sender RTO")
        receiver = client.receiver
        if receiver is not None:
            delivered = receiver.delivered_bytes
            if delivered != self.delivered:
                self.fail(
                    "delivery events", f"{delivered} bytes delivered, events say {self.delivered}"
                )
            buffer = getattr(receiver, "_buffer", None)
            if buffer is not None and self._checked < delivered:
                if (
                    memoryview(buffer)[self._checked : delivered]
                    != self.view[self._checked : delivered]
                ):
                    self.fail(
                        "delivered bytes are a prefix of the sent bytes",
                        f"bytes {self._checked}..{delivered} differ from the file",
                    )
                self._checked = delivered


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
    server = ServerSession(
        OptionLimits(max_chunk=1457, max_window=64, max_ack_every=8),
        scenario.max_timeouts,
        initial_rto=scenario.initial_rto,
        min_rto=scenario.min_rto,
        max_rto=scenario.max_rto,
        trace=True,
    )
    client = ClientSession(
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
    check = _Checker(scenario, content)
    check.max_window = (scenario.options or TransferOptions()).max_window
    outcome = Outcome(scenario, "violation")
    chunk = (scenario.options or TransferOptions()).chunk_size
    limit = (
        BASE_TIME_LIMIT
        + PER_CHUNK_TIME_LIMIT * -(-scenario.size // chunk)
        + sum(h.duration for h in scenario.up.blackholes)
    )
    chunks = -(-scenario.size // chunk)
    max_steps = min(MAX_STEPS, 20_000 + STEPS_PER_CHUNK * chunks)
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
        client.start(now)
        _drain(check, client, server, net, now)
        while True:
            if _terminal(client) and _terminal(server):
                break
            t_net = net.next_delivery_time()
            t_client = None if _terminal(client) else client.get_timer()
            t_server = None if _terminal(server) else server.get_timer()
            t = t_net
            if t_client is not None and (t is None or t_client < t):
                t = t_client
            if t_server is not None and (t is None or t_server < t):
                t = t_server
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
                    server.receive_datagram(data, now)
                else:
                    client.receive_datagram(data, now)
            elif t_client is not None and t_client <= now:
                client.handle_timer(now)
            else:
                server.handle_timer(now)
            _drain(check, client, server, net, now)
        _final_checks(check, scenario, client, content, now)
        outcome.status = "completed" if client.done else "aborted"
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
    outcome.client_error = client.failed
    outcome.server_error = server.failed
    outcome.network = dict(net.stats)
    if keep_trace:
        outcome.window_trace = check.window_trace
    return outcome


def _terminal(session: ClientSession | ServerSession) -> bool:
    return session.done or session.failed is not None


def _drain(
    check: _Checker, client: ClientSession, server: ServerSession, net: SimNetwork, now: float
) -> None:
    """Take every event and datagram out of both sessions, checking as we go."""
    _server_events(check, server, now)
    client_event = check.client_event
    ev = client.next_event()
    while ev is not None:
        client_event(ev, client)
        ev = client.next_event()
    send = net.send
    for data in client.datagrams_to_send(now):
        check.client_datagram(data, server)
        send(C2S, data, now)
    previous = b""
    for data in server.datagrams_to_send(now):
        if check.legacy and data == previous:
            check.fail(
                "a legacy session sends each resend once",
                f"the same {len(data)}-byte datagram twice in a row at {now:.3f} s",
            )
        previous = data
        send(S2C, data, now)
    _server_events(check, server, now)
    ev = client.next_event()
    while ev is not None:
        client_event(ev, client)
        ev = client.next_event()
    check.after_step(client, server)


def _server_events(check: _Checker, server: ServerSession, now: float) -> None:
    server_event = check.server_event
    ev = server.next_event()
    while ev is not None:
        server_event(ev, server)
        if type(ev) is CommandReceived:
            if ev.command != COMMAND:
                check.fail("command intact", f"server received {ev.command!r}")
            server.provide_content(check.content, now)
            check.max_window = server.options.max_window
        ev = server.next_event()


def _final_checks(
    check: _Checker, scenario: Scenario, client: ClientSession, content: bytes, now: float
) -> None:
    if client.done:
        if client.content != content:
            check.fail(
                "delivered bytes equal the sent bytes", "the transfer completed with wrong bytes"
            )
        if scenario.expect == "abort":
            hole = scenario.up.blackholes[0]
            if check.completed_at is not None and check.completed_at > hole.start + hole.duration:
                check.fail(
                    "long blackhole ends in a clean error",
                    f"completed at {check.completed_at:.3f} s after a {hole.duration:.1f} s outage",
                )
    elif client.failed is not None:
        if not check.client_gave_up:
            check.fail("clean give-up", f"client failed without a GaveUp event: {client.failed}")
        if scenario.expect == "complete":
            check.fail(
                "short blackhole is survived",
                f"client gave up ({client.failed}) although the outage was shorter than the give-up limit",
            )
    else:
        check.fail(
            "the transfer ends",
            f"nothing left to do at {now:.3f} s but the client is {client.state.value}",
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
    "COMMAND",
    "InvariantViolation",
    "Outcome",
    "Scenario",
    "Summary",
    "Violation",
    "draw_scenario",
    "run_many",
    "run_scenario",
]
