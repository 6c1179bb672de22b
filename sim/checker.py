"""The simulator's invariants: a mirror of what the engine may do, fed its events.

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
  expiry, which never comes sooner than the minimum RTO after the base's
  last transmission; an RTT sample only ever comes from a chunk sent once,
  and measures exactly from its transmission;
* the third duplicate ACK — and only it — triggers one go-back, at most once
  per recovery episode; a loss probe sends the base alone, at most twice
  without progress;
* every failure to advance (timeout, probe, fast retransmit) counts, and the
  sender gives up exactly at ``max_timeouts`` of them at a timeout; since the
  base last moved, at most ``3 W + 3 + 2 max_timeouts`` DATA/FIN datagrams
  leave (a vanished peer costs about three windows and three probes), and a
  give-up comes at most ``max_timeouts`` maximum RTOs after the last progress;
* a legacy session (an original client) never sends the same datagram twice
  in a row: only negotiated sessions double the base after a timeout;
* with integrity negotiated, a corrupted datagram never reaches the
  delivered bytes.

The end-of-run rules (blackholes, peers that vanish) are in
:mod:`stacklab.sim.runner`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Final

from stacklab.sim.scenarios import Scenario
from stacklab.transport.client import ClientSession
from stacklab.transport.events import (
    AckReceived,
    DataDelivered,
    Event,
    FastRetransmit,
    GaveUp,
    GoBack,
    IntegrityFailure,
    LossProbe,
    PacketSent,
    RtoChanged,
    RttSample,
    Timeout,
    TransferComplete,
    WindowChanged,
)
from stacklab.transport.recovery import LEGACY_MAX_RTO, MAX_PROBES
from stacklab.transport.server import ServerSession
from stacklab.wire import RUDP_HEADER, RUDP_HEADER_LEN, Flag

_ACK: Final = Flag.ACK.value
_EPS: Final = 1e-9


class InvariantViolation(Exception):
    """Raised inside a run at the first broken invariant; becomes a :class:`Violation`."""

    def __init__(self, invariant: str, detail: str) -> None:
        super().__init__(f"{invariant}: {detail}")
        self.invariant = invariant
        self.detail = detail


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


class Checker:
    """Mirrors what the engine may do and raises :class:`InvariantViolation` when it does not.

    The checker keeps its own account from the events (it never trusts the
    engine's private counters).  Duplicate ACKs: the third duplicate at one
    base triggers exactly one go-back unless a recovery episode is running;
    an episode starts at a fast retransmit or a timeout and ends when an ACK
    covers the highest chunk sent when it started.  A loss probe sends the
    base alone and changes nothing else.  No chunk ever leaves beyond the
    window.
    """

    def __init__(self, scenario: Scenario, content: bytes) -> None:
        self.scenario = scenario
        self.content = content
        self.view = memoryview(content)
        self.min_rto = scenario.min_rto
        self.max_rto = scenario.max_rto
        self.legacy = scenario.options is None  # an original client: exactly the original sender
        # The sender backs off less towards an original client (it gives up after 5 s).
        self.sender_max_rto = min(self.max_rto, LEGACY_MAX_RTO) if self.legacy else self.max_rto
        # server / sender side
        self.sent_count: dict[int, int] = {}
        self.first_sent: dict[int, float] = {}
        self.base = 1
        self.window = 1
        self.max_window = 1
        self.dup = 0  # duplicates at the current base
        self.recovery_point: int | None = None  # a recovery episode runs until this is ACKed
        self.max_sent = 0
        self.fin_seq: int | None = None
        self.base_sent_at = 0.0  # the base's last transmission
        self.probe_pending: int | None = None  # a probe's datagram (the base) is due
        self.failures = 0  # timeouts, probes, fast retransmits since the base last moved
        self.sent_since_progress = 0  # DATA/FIN datagrams since the base last moved
        self.progress_at = 0.0
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
                if self.probe_pending is not None:
                    if seq != self.probe_pending or not ev.retransmission:
                        self.fail(
                            "a loss probe sends the base alone",
                            f"probe of {self.probe_pending} sent chunk {seq} first",
                        )
                    self.probe_pending = None
                self.max_sent = max(self.max_sent, seq)
                if ev.flag == "F":
                    self.fin_seq = seq
                if seq == self.base:
                    self.base_sent_at = ev.time
                self.sent_since_progress += 1
                self._bounded_cost()
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
                # Our own account of which duplicates count (see the docstring);
                # the engine's ``counted`` flag must agree with it.
                counted = self.recovery_point is None
                self.dup += 1
                if self.dup == 3 and counted:
                    self.expect_fast_retransmit = True
                if ev.counted != counted:
                    self.fail(
                        "duplicate ACK accounting",
                        f"duplicate ACK {ev.ack} counted={ev.counted}, expected {counted} "
                        f"(recovery episode until {self.recovery_point})",
                    )
            else:
                if ev.ack < self.base:
                    self.fail("ACKs never go backwards", f"ACK {ev.ack} advanced base {self.base}")
                sender = server.sender
                if sender is not None and ev.ack < sender.fin_seq:
                    self.expect_increase = self.window < self.max_window
                self.base = ev.ack + 1
                self.dup = 0
                self.consecutive = 0
                self.failures = 0
                self.probes = 0
                self.sent_since_progress = 0
                self.progress_at = ev.time
                self.probe_pending = None
                if self.recovery_point is not None and ev.ack >= self.recovery_point:
                    self.recovery_point = None
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
            self.failures += 1
        elif isinstance(ev, GoBack):
            if ev.to_seq != self.base:
                self.fail("go-back to base", f"go-back to {ev.to_seq} with base {self.base}")
            halving_due = ev.reason == "timeout" or self.advanced_since_loss
            if halving_due and not self.halved_for_loss and self.window > 1:
                self.fail(
                    "window halves on loss",
                    f"go-back on {ev.reason} left the window at {self.window}",
                )
            if ev.reason not in ("timeout", "dupack"):
                self.fail(
                    "go-back only on a timeout or a fast retransmit", f"go-back on {ev.reason}"
                )
            self.halved_for_loss = False
            self.go_backs += 1
            if self.recovery_point is None or self.max_sent > self.recovery_point:
                self.recovery_point = self.max_sent
            self.probe_pending = None
            self.last_goback_to = ev.to_seq
            self.advanced_since_loss = False
        elif isinstance(ev, LossProbe):
            self.probes += 1
            self.failures += 1
            if self.probes > MAX_PROBES:
                self.fail(
                    "at most two probes without progress", f"probe {self.probes} at {self.base}"
                )
            if ev.base != self.base:
                self.fail(
                    "a loss probe sends the base alone", f"probe of {ev.base}, base {self.base}"
                )
            self.probe_pending = ev.base
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
            self._rto_in_bounds(ev.rto, "fired RTO", self.sender_max_rto)
            if ev.time - self.base_sent_at < self.min_rto - _EPS:
                self.fail(
                    "timeout no sooner than the minimum RTO after the base's last transmission",
                    f"timeout at {ev.time:.6f} s, base {self.base} last sent at {self.base_sent_at:.6f} s",
                )
            self.failures += 1
            self.pending_backoff = (ev.rto, self.failures >= self.scenario.max_timeouts)
            self.timeout_this_step = True
        elif isinstance(ev, RtoChanged):
            self._rto_in_bounds(ev.rto, "RTO", self.sender_max_rto)
            self.current_rto = ev.rto
            self.srtt = ev.srtt
            if self.pending_backoff is not None:
                fired, should = self.pending_backoff
                if should and not self.base_is_fin():
                    self.fail(
                        "give-up limit",
                        f"still going after {self.failures} consecutive failures to advance",
                    )
                expected = min(self.sender_max_rto, fired * 2)
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
                    self.fail("give-up limit", "the sender gave up before max_timeouts failures")
                self.pending_backoff = None
            self._bounded_give_up(ev.time)

    def base_is_fin(self) -> bool:
        """Only the FIN is unacknowledged (the sender then ends quietly instead)."""
        return self.fin_seq is not None and self.base >= self.fin_seq

    def _bounded_cost(self) -> None:
        """A peer that stops answering costs at most about three windows and three probes:
        the window in flight, its halvings (less than another window), two probes, and the
        base per later timeout (twice in a negotiated session)."""
        limit = 3 * self.max_window + 3 + 2 * self.scenario.max_timeouts
        if self.sent_since_progress > limit:
            self.fail(
                "datagrams per delivered chunk",
                f"{self.sent_since_progress} DATA/FIN datagrams since the base last moved "
                f"(at {self.progress_at:.3f} s), limit {limit}",
            )

    def _bounded_give_up(self, now: float) -> None:
        """Giving up takes at most max_timeouts maximum RTOs after the last progress."""
        limit = self.scenario.max_timeouts * self.sender_max_rto + self.scenario.initial_rto
        if now - self.progress_at > limit + _EPS:
            self.fail(
                "time to give up",
                f"gave up {now - self.progress_at:.3f} s after the last progress, limit {limit:g} s",
            )

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

    def _rto_in_bounds(self, rto: float, what: str, upper: float | None = None) -> None:
        upper = self.max_rto if upper is None else upper
        if not self.min_rto - _EPS <= rto <= upper + _EPS:
            self.fail("RTO within bounds", f"{what} {rto} outside [{self.min_rto}, {upper}]")

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

    def client_datagram(self, data: bytes, server: ServerSession | None) -> None:
        if len(data) < RUDP_HEADER_LEN or data[8:9] != _ACK:
            return
        _, ack, _, _ = RUDP_HEADER.unpack_from(data, 0)
        sender = server.sender if server is not None else None
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

    def after_step(self, client: ClientSession, server: ServerSession | None) -> None:
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
        sender = server.sender if server is not None else None
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
                self._rto_in_bounds(sender.rto, "sender RTO", self.sender_max_rto)
        receiver = client.receiver
        if receiver is not None:
            delivered = receiver.delivered_bytes
            if delivered != self.delivered:
                self.fail(
                    "delivery events", f"{delivered} bytes delivered, events say {self.delivered}"
                )
            buffer = getattr(receiver.sink, "buffer", None)  # a memory sink: check the bytes
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


__all__ = ["Checker", "InvariantViolation", "Violation"]
