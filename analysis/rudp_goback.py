"""Go-back classification: what a resend was, by the rulebook's rules S5 to S7.

A chunk sent again is held until the next datagram of the sender shows what
followed it (:class:`Resend`): the base and then base + 1 again is a
go-back (:meth:`GoBackClassifier._settle_go_back`), judged by its trigger (a
timeout, or the third duplicate ACK, once per recovery episode); the base
alone and then new data, the FIN or nothing is a loss probe, a timeout with a
window of one, or a selective repeat (:meth:`GoBackClassifier._settle_lone`).
Where the capture cannot tell two readings apart, the one that keeps the
rules wins (``docs/rulebook.md``, the observer's rules).

:class:`GoBackClassifier` holds the sender's side of a session's state and
is the base of :class:`~stacklab.analysis.rudp.RudpSession`, which adds the
handshake, the content and the teardown.  Compiled with mypyc together with
:mod:`~stacklab.analysis.rudp`.
"""

from __future__ import annotations

from stacklab.analysis.rudp_recovery import DupAcks, RttEstimate
from stacklab.analysis.rudp_window import WindowBounds
from stacklab.analysis.sessions import Finding, PacketNote, RudpSessionFacts

MAX_FINDINGS_PER_CHECK = 20
"""Findings kept per check and session (all of them are counted)."""
MAX_NOTES = 200_000
"""Per-packet notes kept per session when notes are asked for."""
MAX_PROBES_IN_A_ROW = 2
"""Loss probes a sender may send without progress before its timeout takes over."""
TIMER_SLACK = 0.95
"""Timestamps are taken at the capture, not at the sender's timer: 5 % of slack."""


def _r(t: float) -> float:
    return round(t, 6)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def record_finding(f: RudpSessionFacts, check: str, frame: int, detail: str) -> None:
    """Count a rule break; keep the first few with their frames."""
    count = f.finding_counts.get(check, 0) + 1
    f.finding_counts[check] = count
    if count <= MAX_FINDINGS_PER_CHECK:
        f.findings.append(Finding(check, frame, detail))


class Resend:
    """A resend waiting for the next datagram to tell what it was.

    The base resent and then base + 1 again is a go-back; the base alone
    and then new data (or the FIN) is a loss probe, or a selective repeat
    when a timeout had passed.
    """

    __slots__ = (
        "acked",
        "acks_seen",
        "chunk",
        "copy_time",
        "dups",
        "frame",
        "highest",
        "last",
        "silence",
        "time",
        "waited",
    )

    def __init__(
        self,
        frame: int,
        time: float,
        chunk: int,
        last: int,
        highest: int,
        acked: int,
        waited: float,
        silence: float,
        dups: int,
    ) -> None:
        self.frame = frame
        self.time = time
        self.copy_time = time  # of the latest copy of this resend
        self.chunk = chunk
        self.last = last  # the chunk sent just before the resend
        self.highest = highest
        self.acked = acked  # highest ACK in the capture at the resend
        self.waited = waited  # since the chunk's previous copy
        self.silence = silence  # since the sender's previous DATA
        self.dups = dups  # duplicate ACKs of chunk - 1 so far
        self.acks_seen = 0  # client ACKs in the capture before its latest copy


class GoBackClassifier:
    """The sender's side of one session, and how its resends are judged."""

    # Slots: an instance with more than 30 attributes in a dict is read
    # through a slower path by the interpreter (the compiled class has a
    # fixed layout either way).
    __slots__ = (
        "_ack_wait",
        "_acks_seen",
        "_burst_max",
        "_burst_start",
        "_held",
        "_probe_chunk",
        "_probes_in_row",
        "_progress_time",
        "acked_seen",
        "bounds",
        "dups",
        "f",
        "highest_sent",
        "keep_notes",
        "keep_series",
        "keep_trace",
        "last_data_time",
        "last_sent",
        "max_window",
        "min_rto",
        "notes",
        "rtt",
        "series",
    )

    def __init__(
        self,
        facts: RudpSessionFacts,
        *,
        max_window: int,
        min_rto: float,
        keep_series: bool,
        keep_notes: bool,
        keep_trace: bool,
    ) -> None:
        self.f = facts
        self.max_window = max_window
        self.min_rto = min_rto
        self.keep_series = keep_series
        self.keep_notes = keep_notes
        self.keep_trace = keep_trace
        self.bounds = WindowBounds(max_window)
        self.rtt = RttEstimate(min_rto)
        self.dups = DupAcks()
        self.acked_seen = 0  # the highest cumulative ACK in the capture
        self.highest_sent = 0
        self.last_sent = 0
        self.last_data_time = -1.0
        self.notes: list[PacketNote] = []
        self.series: list[tuple[float, int]] = []
        self._held: Resend | None = None
        self._burst_start = -1.0
        self._burst_max = 0
        self._probes_in_row = 0
        self._probe_chunk = 0  # the chunk the current run of probes resends
        self._progress_time = 0.0  # of the last advancing ACK, or the first DATA
        self._acks_seen = 0
        self._ack_wait = 0  # the advancing ACK not acted on yet (the lower bound)

    def find(self, check: str, frame: int, detail: str) -> None:
        """Record a rule break (the first few are kept with their frames)."""
        record_finding(self.f, check, frame, detail)
        if self.keep_notes:
            self.note(frame, "failed", f"{check}: {detail}")

    def note(self, frame: int, kind: str, text: str) -> None:
        """A per-packet observation (kept only when notes are asked for)."""
        if self.keep_notes and len(self.notes) < MAX_NOTES:
            self.notes.append(PacketNote(frame, kind, text))

    # -- resends: go-back, loss probe or selective repeat ---------------------------------

    def _start_resend(
        self, number: int, time: float, chunk: int, last: int, previous_copy: float
    ) -> None:
        """A chunk sent again: judged once the next datagram shows what followed."""
        self._ack_wait = 0
        if self._burst_start >= 0.0:  # a resend starts a new burst
            if self.keep_series:
                self.series.append((self._burst_start, self._burst_max))
            self._burst_start = -1.0
        previous = previous_copy if previous_copy >= 0.0 else self.last_data_time
        silence = time - self.last_data_time if self.last_data_time >= 0.0 else 0.0
        dups = self.dups.counts.get(chunk - 1, 0)  # since the ACK of chunk - 1 first came
        self._held = Resend(
            number,
            time,
            chunk,
            last,
            self.highest_sent,
            self.acked_seen,
            time - previous,
            silence,
            dups,
        )
        self._held.acks_seen = self._acks_seen

    def _trigger(self, held: Resend) -> str:
        """Why the sender went back: "timeout", "dupack", or "" when nothing explains it."""
        if held.dups >= 3:
            return "dupack"
        if held.waited >= self.min_rto * TIMER_SLACK:
            return "timeout"
        return ""

    def _go_back_allowed(self, held: Resend) -> bool:
        """Whether a go-back at ``held`` would keep the rules (S6): a trigger, in its episode."""
        trigger = self._trigger(held)
        if trigger == "dupack":
            bounds = self.bounds
            in_episode = bounds.in_episode and held.chunk <= bounds.recover
            return not in_episode or held.waited >= self.min_rto * TIMER_SLACK
        return trigger != ""

    def _settle_go_back(self, held: Resend) -> None:
        """The resend continued in order: a go-back (rules S5, S6)."""
        f = self.f
        f.go_backs += 1
        chunk = held.chunk
        frame = held.frame
        if chunk > held.acked + 1:
            self.find(
                "rudp.gbn",
                frame,
                f"went back to chunk {chunk}, but the lowest unacknowledged chunk was "
                f"{held.acked + 1}: a go-back starts at the base (selective resend)",
            )
        trigger = self._trigger(held)
        bounds = self.bounds
        episode = bounds.in_episode and chunk <= bounds.recover
        if trigger == "dupack" and episode and held.waited < self.min_rto * TIMER_SLACK:
            self.find(
                "rudp.gbn",
                frame,
                f"a second fast retransmit (to chunk {chunk}) in one recovery episode: "
                "duplicate ACKs after a go-back echo the old flight; only a timeout may "
                "go back again before chunk "
                f"{bounds.recover} is acknowledged",
            )
        if trigger == "":
            if held.dups:
                self.find(
                    "rudp.gbn",
                    frame,
                    f"fast retransmit after {_plural(held.dups, 'duplicate ACK')}: Go-Back-N "
                    f"goes back on the 3rd duplicate ACK, or after a timeout (at least "
                    f"{self.min_rto:g} s; chunk {chunk} had been sent {held.waited:.3f} s before)",
                )
            else:
                self.find(
                    "rudp.gbn",
                    frame,
                    f"went back to chunk {chunk} {held.waited:.3f} s after sending it, with no "
                    f"duplicate ACK: sooner than any timeout (at least {self.min_rto:g} s)",
                )
            f.go_back_kinds["unexplained"] = f.go_back_kinds.get("unexplained", 0) + 1
        else:
            f.go_back_kinds[trigger] += 1
        f.timeouts.append(_r(held.waited))
        self._probes_in_row = 0
        bounds.go_back(chunk, held.highest)
        if self.keep_notes:
            what = {"dupack": "fast retransmit", "timeout": "timeout", "": "unexplained"}[trigger]
            self.note(
                frame, f"go_back.{trigger or 'unexplained'}", f"go-back to chunk {chunk} ({what})"
            )
        if self.keep_trace or len(f.go_back_frames) < MAX_FINDINGS_PER_CHECK:
            f.go_back_frames.append((frame, trigger or "unexplained"))

    def _settle_lone(self, held: Resend, frame: int, carried_on: bool = True) -> None:
        """The resent chunk alone, then the sender carried on (rule S7).

        A loss probe when it came sooner than a timeout; after a timeout,
        carrying on while later chunks are unacknowledged is a selective
        repeat.  Where the resent chunk was the last one sent, or every later
        chunk is acknowledged by now, there is nothing else to resend: a
        go-back of one chunk, or a probe.  A resend followed by nothing but
        itself again (``carried_on`` False) is a timeout with a window of one,
        or a probe.
        """
        f = self.f
        chunk = held.chunk
        if chunk > held.acked + 1:
            self.find(
                "rudp.gbn",
                held.frame,
                f"resent chunk {chunk} alone, but the lowest unacknowledged chunk was "
                f"{held.acked + 1} (selective repeat)",
            )
            return
        nothing_else = (
            chunk >= held.highest
            or chunk >= held.last  # carrying on with chunk + 1 skips nothing
            or self.acked_seen >= held.last
            or not carried_on
        )
        # A probe fires before the sender's own timeout, whose estimate from a
        # capture may be a little off: only a silence of twice the capture's
        # RTO is surely a timeout.
        timeout = 2 * self.rtt.rto()
        if not nothing_else and held.silence >= timeout and held.dups < 3:
            f.go_backs += 1
            self.find(
                "rudp.gbn",
                held.frame,
                f"selective repeat: chunk {chunk} resent alone after {held.silence:.3f} s of "
                f"silence (a timeout: twice the capture's RTO of {self.rtt.rto():.3f} s), then new "
                f"chunk {held.last + 1} (frame {frame}) while chunks {chunk + 1}..{held.last} "
                "were unacknowledged; Go-Back-N resends them all",
            )
            if self.keep_notes:
                self.note(
                    held.frame, "go_back.selective", f"selective repeat of chunk {chunk} (timeout)"
                )
            self.bounds.go_back(chunk, held.highest)
            return
        bounds = self.bounds
        in_episode = bounds.in_episode and chunk <= bounds.recover
        fast = held.dups >= 3 and not in_episode
        if nothing_else and (held.waited >= self.min_rto * TIMER_SLACK or fast):
            # A timeout, or the third duplicate ACK, with nothing after the base
            # to resend (or a window of one): a go-back of one chunk.
            kind = "dupack" if fast else "timeout"
            f.go_backs += 1
            f.go_back_kinds[kind] += 1
            f.timeouts.append(_r(held.waited))
            self.bounds.lone_resend(chunk)
            self._probes_in_row = 0
            if self.keep_notes:
                what = "fast retransmit" if fast else "timeout"
                self.note(held.frame, f"go_back.{kind}", f"go-back to chunk {chunk} ({what})")
            if self.keep_trace or len(f.go_back_frames) < MAX_FINDINGS_PER_CHECK:
                f.go_back_frames.append((held.frame, kind))
            return
        if held.time - self._progress_time >= self.min_rto * TIMER_SLACK:
            # A minimum RTO after the last progress: the timer may have run out
            # (probes do not restart it), and with a window of one a timeout
            # resends the base alone too.  Either way no probe run goes on.
            f.probes += 1
            self._probes_in_row = 0
            self.bounds.lone_resend(chunk)
            if self.keep_notes:
                self.note(held.frame, "loss_probe", f"loss probe or timeout: chunk {chunk} alone")
            return
        f.probes += 1
        # A sender probes its base: a probe of another chunk means the base
        # moved (progress the capture may not show where the sender saw it).
        run = self._probes_in_row + 1 if chunk == self._probe_chunk else 1
        self._probes_in_row = run
        self._probe_chunk = chunk
        self.bounds.lone_resend(chunk)
        if self.keep_notes:
            self.note(held.frame, "loss_probe", f"loss probe: chunk {chunk} alone")
        if run > MAX_PROBES_IN_A_ROW:
            self.find(
                "rudp.gbn",
                held.frame,
                f"{run} loss probes in a row without progress: after "
                f"{MAX_PROBES_IN_A_ROW} the timeout must take over and go back",
            )
