"""Expectation files: what a CI run asserts about each capture, judged from the verifier's facts.

A file (YAML or TOML) maps each capture to what must hold for it::

    captures:
      rudp-loss.pcapng:            # relative to the file's folder
        checks:                    # check id: pass, fail, skip or absent
          rudp.handshake: pass
          rudp.gbn: fail
        facts:                     # a number, or a comparison: ">= 3", "< 5", "2..4"
          sessions: 1
          retransmissions: ">= 3"
        events:                    # per-packet notes of the verifier, counted
          go_back.timeout: 3
          window_exceeded: false   # false: never; true: at least once
        frames:                    # what the verifier saw at one frame
          - {frame: 24, retransmits: 1}
          - {frame: 42, note: duplicate_ack, ack: 5}

Each entry of ``checks``, ``facts``, ``events`` and ``frames`` is one
expectation and one JUnit test case.  Checks a file does not name are not
judged: ``stacklab verify --init`` drafts a file naming all of them.  Every
fact comes from :meth:`CaptureAnalysis.to_json`'s per-session facts (summed,
or the largest, over the capture's RUDP sessions); events and frames from the
verifier's notes (:class:`~stacklab.analysis.sessions.PacketNote`) and its
trace of DATA and ACKs.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from stacklab.analysis.expectfile import ExpectationError, Lined, LinedList, load
from stacklab.analysis.sessions import ALL_CHECKS, CaptureAnalysis

NOTE_KINDS: Final = (
    "retransmission",
    "go_back.timeout",
    "go_back.dupack",
    "go_back.unexplained",
    "loss_probe",
    "duplicate_ack",
    "duplicate",
    "window_exceeded",
    "malformed",
    "bad_crc32c",
    "failed",
)
CHECK_STATES: Final = ("pass", "fail", "skip", "absent")
_TRACE_KIND: Final = {0: "DATA", 1: "ACK", 2: "FIN"}


def _sum(name: str) -> Callable[[CaptureAnalysis], float]:
    return lambda a: sum(getattr(s, name) for s in a.rudp_sessions)


def _max(name: str) -> Callable[[CaptureAnalysis], float]:
    return lambda a: max((getattr(s, name) for s in a.rudp_sessions), default=0)


def _kind(name: str) -> Callable[[CaptureAnalysis], float]:
    return lambda a: sum(s.go_back_kinds.get(name, 0) for s in a.rudp_sessions)


FACTS: Final[dict[str, Callable[[CaptureAnalysis], float]]] = {
    "frames": lambda a: a.packets,
    "sessions": lambda a: len(a.rudp_sessions),
    "complete_sessions": lambda a: sum(1 for s in a.rudp_sessions if s.complete),
    "chunks": _sum("chunks"),
    "bytes": _sum("bytes"),
    "data_packets": _sum("data_packets"),
    "retransmissions": _sum("retransmissions"),
    "go_backs": _sum("go_backs"),
    "go_backs_timeout": _kind("timeout"),
    "go_backs_dupack": _kind("dupack"),
    "go_backs_unexplained": _kind("unexplained"),
    "probes": _sum("probes"),
    "duplicate_acks": _sum("duplicate_acks"),
    "malformed": _sum("malformed"),
    "bad_chunks": _sum("bad_chunks"),
    "network_duplicates": _sum("network_duplicates"),
    "max_flight": _max("max_flight"),
    "window_max": _max("max_window"),
    "window_reached": _max("min_window"),
    "max_ack_delay": _max("max_ack_delay"),
    "tcp_sessions": lambda a: len(a.tcp_sessions),
    "dhcp_exchanges": lambda a: len(a.dhcp),
    "dns_exchanges": lambda a: len(a.dns),
    "failed_checks": lambda a: sum(1 for c in a.checks if c.status == "fail"),
}
"""Fact name -> its value for a capture (sums or maxima over the RUDP sessions)."""

FLOAT_FACTS: Final = frozenset({"max_ack_delay"})
CAPTURE_KEYS: Final = ("checks", "facts", "events", "frames", "max_window", "min_rto")
FRAME_KEYS: Final = ("frame", "note", "no_note", "retransmits", "data", "ack", "fin")

_COMPARISON = re.compile(
    r"^\s*(?:(==|!=|>=|<=|>|<)\s*)?(-?\d+(?:\.\d+)?)\s*(?:\.\.\s*(-?\d+(?:\.\d+)?)\s*)?$"
)


@dataclass(frozen=True)
class Comparison:
    """``op value`` (``==`` by default), or an inclusive range ``low..high``."""

    op: str
    value: float
    high: float | None = None

    def holds(self, actual: float) -> bool:
        if self.high is not None:
            return self.value <= actual <= self.high
        return {
            "==": actual == self.value,
            "!=": actual != self.value,
            ">=": actual >= self.value,
            "<=": actual <= self.value,
            ">": actual > self.value,
            "<": actual < self.value,
        }[self.op]

    def __str__(self) -> str:
        if self.high is not None:
            return f"in {_num(self.value)}..{_num(self.high)}"
        return f"{self.op} {_num(self.value)}"


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def parse_comparison(value: object, where: str, *, boolean: bool = False) -> Comparison:
    """A number, ``">= 3"``, ``"2..4"`` (or, for counts of events, ``true``/``false``)."""
    if isinstance(value, bool):
        if not boolean:
            raise ExpectationError(f"{where}: expected a number or a comparison, not {value}")
        return Comparison(">=", 1) if value else Comparison("==", 0)
    if isinstance(value, int | float) and math.isfinite(value):
        return Comparison("==", float(value))
    if isinstance(value, str):
        match = _COMPARISON.match(value)
        if match and not (match.group(1) and match.group(3)):
            op, low, high = match.groups()
            if high is not None and float(high) < float(low):
                raise ExpectationError(f"{where}: empty range {value!r}")
            return Comparison(op or "==", float(low), None if high is None else float(high))
    raise ExpectationError(
        f"{where}: {value!r} is not a number or a comparison such as '>= 3', '< 5' or '2..4'"
    )


@dataclass(frozen=True)
class FrameExpectation:
    """What the verifier must have concluded (or seen) at one frame."""

    frame: int
    notes: tuple[str, ...] = ()
    no_note: bool = False
    data: int | None = None
    ack: int | None = None
    fin: bool = False

    def describe(self) -> str:
        parts = []
        if self.data is not None:
            parts.append(f"DATA chunk {self.data}")
        if self.ack is not None:
            parts.append(f"ACK {self.ack}")
        if self.fin:
            parts.append("FIN")
        parts += list(self.notes)
        if self.no_note:
            parts.append("nothing noted")
        return f"{self.frame}: " + ", ".join(parts)


@dataclass
class CaptureExpectations:
    """Everything a file expects of one capture."""

    name: str  # as written in the file
    path: str  # resolved
    line: int
    checks: list[tuple[str, str, int]] = field(default_factory=list)
    facts: list[tuple[str, Comparison, int]] = field(default_factory=list)
    events: list[tuple[str, Comparison, int]] = field(default_factory=list)
    frames: list[tuple[FrameExpectation, int]] = field(default_factory=list)
    max_window: int | None = None
    min_rto: float | None = None

    @property
    def needs_trace(self) -> bool:
        return any(f.data is not None or f.ack is not None or f.fin for f, _ in self.frames)


@dataclass(frozen=True)
class Outcome:
    """One expectation judged: a line of output and a JUnit test case."""

    kind: str  # check, fact, event, frame
    name: str
    ok: bool
    detail: str
    line: int

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "ok": self.ok,
            "detail": self.detail,
            "line": self.line,
        }


# ---------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------


def _mapping(value: object, where: str, what: str) -> Lined:
    if not isinstance(value, Lined):
        raise ExpectationError(f"{where}: {what} must be a mapping")
    return value


def _unknown(mapping: Lined, allowed: tuple[str, ...], file: str, what: str) -> None:
    for key in mapping:
        if key not in allowed:
            raise ExpectationError(
                f"{file}:{mapping.line_of(key)}: unknown key {key!r} in {what} "
                f"(one of: {', '.join(allowed)})"
            )


def _int(value: object, where: str, low: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ExpectationError(f"{where}: expected a whole number >= {low}, not {value!r}")
    return value


def read_expectations(path: str | os.PathLike[str]) -> list[CaptureExpectations]:
    """Read and check a whole file; raises :class:`ExpectationError` naming file and line."""
    file = os.fspath(path)
    data = load(file)
    _unknown(data, ("captures",), file, "the file")
    if "captures" not in data:
        raise ExpectationError(f"{file}:{data.line}: no 'captures' mapping")
    captures = _mapping(data["captures"], f"{file}:{data.line_of('captures')}", "'captures'")
    if not captures:
        raise ExpectationError(f"{file}:{captures.line}: 'captures' names no capture")
    folder = os.path.dirname(file)
    out = []
    for name, body in captures.items():
        line = captures.line_of(name)
        spec = _mapping(body, f"{file}:{line}", f"the entry of {name!r}")
        _unknown(spec, CAPTURE_KEYS, file, f"the entry of {name!r}")
        exp = CaptureExpectations(name, _resolve(name, folder), line)
        _read_entry(exp, spec, file)
        out.append(exp)
    return out


def _resolve(name: str, folder: str) -> str:
    """Relative to the file's folder; a path that is not there is taken from the working folder."""
    beside = os.path.join(folder, name)
    if os.path.isabs(name) or os.path.exists(beside) or not os.path.exists(name):
        return beside if not os.path.isabs(name) else name
    return name


def _read_entry(exp: CaptureExpectations, spec: Lined, file: str) -> None:
    if "max_window" in spec:
        exp.max_window = _int(spec["max_window"], f"{file}:{spec.line_of('max_window')}", 1)
    if "min_rto" in spec:
        value = spec["min_rto"]
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 60:
            raise ExpectationError(f"{file}:{spec.line_of('min_rto')}: min_rto must be 0..60 s")
        exp.min_rto = float(value)
    if "checks" in spec:
        checks = _mapping(spec["checks"], f"{file}:{spec.line_of('checks')}", "'checks'")
        _unknown(checks, ALL_CHECKS, file, "'checks'")
        for check, state in checks.items():
            where = f"{file}:{checks.line_of(check)}"
            if state not in CHECK_STATES:
                raise ExpectationError(
                    f"{where}: {check}: {state!r} is not one of {', '.join(CHECK_STATES)}"
                )
            exp.checks.append((check, state, checks.line_of(check)))
    if "facts" in spec:
        facts = _mapping(spec["facts"], f"{file}:{spec.line_of('facts')}", "'facts'")
        _unknown(facts, tuple(FACTS), file, "'facts'")
        for fact, value in facts.items():
            line = facts.line_of(fact)
            exp.facts.append((fact, parse_comparison(value, f"{file}:{line}: {fact}"), line))
    if "events" in spec:
        events = _mapping(spec["events"], f"{file}:{spec.line_of('events')}", "'events'")
        _unknown(events, NOTE_KINDS, file, "'events'")
        for kind, value in events.items():
            line = events.line_of(kind)
            comparison = parse_comparison(value, f"{file}:{line}: {kind}", boolean=True)
            exp.events.append((kind, comparison, line))
    if "frames" in spec:
        frames = spec["frames"]
        if not isinstance(frames, LinedList):
            raise ExpectationError(f"{file}:{spec.line_of('frames')}: 'frames' must be a list")
        for item, line in zip(frames, frames.lines, strict=True):
            exp.frames.append((_frame(item, f"{file}:{line}", file), line))


def _frame(item: object, where: str, file: str) -> FrameExpectation:
    spec = _mapping(item, where, "each item of 'frames'")
    _unknown(spec, FRAME_KEYS, file, "a frame expectation")
    if "frame" not in spec:
        raise ExpectationError(f"{where}: a frame expectation needs 'frame'")
    frame = _int(spec["frame"], f"{file}:{spec.line_of('frame')}", 1)
    notes: list[str] = []
    raw = spec.get("note", [])
    for kind in [raw] if isinstance(raw, str) else raw:
        if kind not in NOTE_KINDS:
            raise ExpectationError(
                f"{file}:{spec.line_of('note')}: unknown note {kind!r} (one of: "
                f"{', '.join(NOTE_KINDS)})"
            )
        notes.append(kind)
    data = None
    if "retransmits" in spec:
        data = _int(spec["retransmits"], f"{file}:{spec.line_of('retransmits')}", 1)
        if "retransmission" not in notes:
            notes.insert(0, "retransmission")
    if "data" in spec:
        if data is not None and spec["data"] != data:
            raise ExpectationError(
                f"{file}:{spec.line_of('data')}: 'data' and 'retransmits' differ"
            )
        data = _int(spec["data"], f"{file}:{spec.line_of('data')}", 0)
    ack = _int(spec["ack"], f"{file}:{spec.line_of('ack')}", 0) if "ack" in spec else None
    fin = spec.get("fin", False)
    no_note = spec.get("no_note", False)
    for key, value in (("fin", fin), ("no_note", no_note)):
        if not isinstance(value, bool):
            raise ExpectationError(f"{file}:{spec.line_of(key)}: {key} must be true or false")
    if no_note and notes:
        raise ExpectationError(f"{where}: 'no_note' with a note to expect")
    if sum(x is not None and x is not False for x in (data, ack, fin or None)) > 1:
        raise ExpectationError(f"{where}: a frame is one DATA, ACK or FIN")
    expectation = FrameExpectation(frame, tuple(notes), no_note, data, ack, fin)
    if not (notes or no_note or data is not None or ack is not None or fin):
        raise ExpectationError(f"{where}: frame {frame}: nothing expected of it")
    return expectation


# ---------------------------------------------------------------------------
# Judging
# ---------------------------------------------------------------------------


def judge(exp: CaptureExpectations, analysis: CaptureAnalysis) -> list[Outcome]:
    """Every expectation of ``exp`` against the verifier's analysis (with notes)."""
    out = [_judge_check(analysis, check, state, line) for check, state, line in exp.checks]
    for fact, comparison, line in exp.facts:
        actual = FACTS[fact](analysis)
        shown = f"{actual:.6f}".rstrip("0").rstrip(".") if fact in FLOAT_FACTS else _num(actual)
        out.append(
            Outcome("fact", f"{fact} {comparison}", comparison.holds(actual), f"is {shown}", line)
        )
    counts = note_counts(analysis)
    for kind, comparison, line in exp.events:
        count = counts.get(kind, 0)
        out.append(
            Outcome(
                "event",
                f"{kind} {comparison}",
                comparison.holds(count),
                f"noted at {count} frame(s)",
                line,
            )
        )
    if exp.frames:
        notes = frame_notes(analysis)
        trace = frame_trace(analysis)
        for frame, line in exp.frames:
            out.append(_judge_frame(frame, notes.get(frame.frame, []), trace, line))
    return out


def note_counts(analysis: CaptureAnalysis) -> dict[str, int]:
    """How many frames carry each kind of note."""
    counts: dict[str, int] = {}
    for session in analysis.rudp_sessions:
        for note in session.notes:
            counts[note.kind] = counts.get(note.kind, 0) + 1
    return counts


def frame_notes(analysis: CaptureAnalysis) -> dict[int, list[tuple[str, str]]]:
    notes: dict[int, list[tuple[str, str]]] = {}
    for session in analysis.rudp_sessions:
        for note in session.notes:
            notes.setdefault(note.frame, []).append((note.kind, note.text))
    return notes


def frame_trace(analysis: CaptureAnalysis) -> dict[int, tuple[int, int]]:
    """Frame -> (0 DATA / 1 ACK / 2 FIN, chunk or ack number) from the traced sessions."""
    out: dict[int, tuple[int, int]] = {}
    for session in analysis.rudp_sessions:
        for frame, _time, kind, value, _hi, _lo in session.trace:
            out[frame] = (kind, value)
    return out


def _judge_check(analysis: CaptureAnalysis, check: str, state: str, line: int) -> Outcome:
    found = [c for c in analysis.checks if c.id == check]
    name = f"{check} {state}"
    if state == "absent":
        return Outcome("check", name, not found, f"{len(found)} result(s)", line)
    if not found:
        return Outcome("check", name, False, "the verifier did not apply this check", line)
    statuses = [c.status for c in found]
    failed = [c for c in found if c.status == "fail"]
    detail = ", ".join(
        f"{s} {statuses.count(s)}" for s in ("pass", "fail", "skip") if s in statuses
    )
    if failed:
        detail += f"; first failure: {failed[0].detail}"
    if state == "pass":
        ok = not failed and "pass" in statuses
    elif state == "fail":
        ok = bool(failed)
    else:
        ok = all(s == "skip" for s in statuses)
    return Outcome("check", name, ok, detail, line)


def _judge_frame(
    exp: FrameExpectation,
    notes: list[tuple[str, str]],
    trace: dict[int, tuple[int, int]],
    line: int,
) -> Outcome:
    problems = []
    kinds = [kind for kind, _text in notes]
    for kind in exp.notes:
        if kind not in kinds:
            problems.append(f"no {kind} noted")
    if exp.no_note and notes:
        problems.append("noted: " + "; ".join(text for _kind, text in notes))
    seen = trace.get(exp.frame)
    wanted = None
    if exp.data is not None:
        wanted = (0, exp.data)
    elif exp.ack is not None:
        wanted = (1, exp.ack)
    elif exp.fin:
        wanted = (2, seen[1] if seen is not None and seen[0] == 2 else -1)
    if wanted is not None and seen != wanted:
        problems.append(
            "the verifier traced no DATA, ACK or FIN of a session there"
            if seen is None
            else f"it is {_TRACE_KIND[seen[0]]} {seen[1]}"
        )
    said = "; ".join(text for _kind, text in notes) or "nothing noted"
    detail = ", ".join(problems) if problems else said
    return Outcome("frame", exp.describe(), not problems, detail, line)
