"""A capture as a list of protocol events, and the first place two such lists part.

Two runs of the same transfer never match byte for byte: the client's port,
the ISN and every timestamp change.  What should match is the story: the
handshake, each chunk sent or resent, each cumulative ACK, each go-back and
how the verifier explained it, each step of the AIMD window bound, the FIN.
:func:`capture_events` tells that story from the verifier's facts (its trace
of DATA and ACKs, its notes); :func:`first_divergence` compares two stories,
ignoring ports and ISNs entirely and times within a tolerance (times are
seconds since the session's first frame).  ``stacklab diff`` and
``stacklab verify --baseline`` both stand on this.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from stacklab.analysis.sessions import CaptureAnalysis, RudpSessionFacts, VerifyOptions

TRACED_SESSIONS: Final = 64
"""RUDP sessions told packet by packet; the rest are compared by their totals."""

_GO_BACK_TEXT: Final = {
    "timeout": "after a timeout",
    "dupack": "on duplicate ACKs",
    "unexplained": "unexplained",
}


@dataclass(frozen=True)
class Event:
    """One protocol event: ``session`` 0 for DHCP/DNS/app exchanges, then 1, 2... per RUDP session."""

    session: int
    kind: str
    value: int | str | None
    time: float | None  # seconds since the session's first frame; None when not known
    frame: int

    @property
    def key(self) -> tuple[int, str, int | str | None]:
        return (self.session, self.kind, self.value)

    def text(self) -> str:
        value = self.value
        words = {
            "handshake": "handshake (SYN, SYN-ACK)",
            "command": f"command {value!r}",
            "data": f"DATA chunk {value}",
            "resend": f"DATA chunk {value} resent",
            "ack": f"ACK {value}",
            "window": f"window bound now {value}",
            "fin": "FIN",
            "fin_ack": "ACK of the FIN",
            "totals": f"session totals {value}",
            "clipped": f"{value} DATA and ACKs, only the first of them compared",
        }
        if self.kind.startswith("go_back."):
            kind = self.kind.removeprefix("go_back.")
            return f"go-back to chunk {value} ({_GO_BACK_TEXT.get(kind, kind)})"
        if self.kind in ("dhcp", "dns", "app"):
            return f"{self.kind.upper()} exchange: {value}"
        return words.get(self.kind, f"{self.kind} {value}")

    def to_json(self) -> list[Any]:
        return [self.session, self.kind, self.value, self.time, self.frame]

    @classmethod
    def from_json(cls, item: object) -> Event:
        """One event as stored in a baseline; raises ValueError for anything else."""
        if not isinstance(item, list) or len(item) != 5:
            raise ValueError(f"not an event: {item!r}")
        session, kind, value, time, frame = item
        if (
            not isinstance(session, int)
            or not isinstance(kind, str)
            or not (value is None or isinstance(value, int | str))
            or not (time is None or isinstance(time, int | float))
            or not isinstance(frame, int)
        ):
            raise ValueError(f"not an event: {item!r}")
        return cls(session, kind, value, None if time is None else float(time), frame)


def event_options(options: VerifyOptions) -> VerifyOptions:
    """What the verifier must keep for :func:`capture_events`."""
    return dataclasses.replace(
        options, keep_notes=True, keep_series=False, trace_sessions=TRACED_SESSIONS
    )


def capture_events(analysis: CaptureAnalysis) -> list[Event]:
    """The capture's story: service exchanges first, then each RUDP session in order."""
    events: list[Event] = []
    services: list[tuple[int, str, str]] = [
        (ex.request_frame, ex.kind, ex.problem or "ok") for ex in (*analysis.dhcp, *analysis.dns)
    ]
    services += [(t.first_frame, "app", t.error or "ok") for t in analysis.tcp_sessions]
    events += [Event(0, kind, value, None, frame) for frame, kind, value in sorted(services)]
    sessions = sorted(analysis.rudp_sessions, key=lambda s: s.first_frame)
    for number, session in enumerate(sessions, 1):
        events += _session_events(number, session)
    return events


def _session_events(number: int, s: RudpSessionFacts) -> list[Event]:
    out: list[Event] = []
    if not s.trace and s.packets:
        summary = f"{s.chunks} chunks, {s.retransmissions} resent, {s.go_backs} go-backs"
        summary += ", complete" if s.complete else ", incomplete"
        return [Event(number, "totals", summary, None, s.first_frame)]
    if s.handshake:
        out.append(Event(number, "handshake", None, 0.0, s.frames.get("syn", s.first_frame)))
    if s.command is not None:
        out.append(Event(number, "command", s.command, None, s.frames.get("command", 0)))
    resent = {note.frame for note in s.notes if note.kind == "retransmission"}
    go_backs = dict(s.go_back_frames)
    window = None
    for frame, time, kind, value, hi, _lo in s.trace:
        at = round(time - s.start, 6)
        if kind == 0:
            if frame in go_backs:
                out.append(Event(number, f"go_back.{go_backs[frame]}", value, at, frame))
            out.append(Event(number, "resend" if frame in resent else "data", value, at, frame))
        elif kind == 1:
            out.append(Event(number, "ack", value, at, frame))
        else:
            out.append(Event(number, "fin", None, at, frame))
        if hi != window:
            window = hi
            out.append(Event(number, "window", hi, at, frame))
    if s.trace_points > len(s.trace):  # the verifier kept its first points only
        out.append(Event(number, "clipped", s.trace_points, None, s.last_frame))
    if s.fin_acked and "fin_ack" in s.frames:
        out.append(Event(number, "fin_ack", None, None, s.frames["fin_ack"]))
    return out


@dataclass(frozen=True)
class Divergence:
    """Where two stories part: the index, and the event on each side (None: that side ended)."""

    index: int
    a: Event | None
    b: Event | None
    reason: str


def stream(event: Event) -> tuple[int, str]:
    """Which ordered stream an event belongs to: the sender's, the receiver's, the window's.

    Within a stream order is the protocol's; across streams it is a race (a
    DATA and an ACK crossing on the wire swap places from one run to the
    next), so streams are compared each in its own order.
    """
    if event.kind in ("ack", "fin_ack"):
        return (event.session, "receiver")
    if event.kind == "window":
        return (event.session, "window")
    return (event.session, "sender")


def first_divergence(a: Sequence[Event], b: Sequence[Event], tolerance: float) -> Divergence | None:
    """The earliest event (by A's frames) that differs in kind, value or time beyond ``tolerance``.

    Each stream (see :func:`stream`) is compared in order; ``index`` is the
    position of A's differing event in ``a`` (``len(a)`` when A has none left).
    """
    left_streams: dict[tuple[int, str], list[int]] = {}
    right_streams: dict[tuple[int, str], list[int]] = {}
    for events, streams in ((a, left_streams), (b, right_streams)):
        for index, event in enumerate(events):
            streams.setdefault(stream(event), []).append(index)
    found: list[Divergence] = []
    for key in set(left_streams) | set(right_streams):
        found += _stream_divergence(
            a, b, left_streams.get(key, []), right_streams.get(key, []), tolerance
        )
    if not found:
        return None
    return min(found, key=lambda d: (d.index, d.b.frame if d.b is not None else 0))


def _stream_divergence(
    a: Sequence[Event], b: Sequence[Event], left: list[int], right: list[int], tolerance: float
) -> list[Divergence]:
    for position in range(max(len(left), len(right))):
        i = left[position] if position < len(left) else None
        j = right[position] if position < len(right) else None
        one = a[i] if i is not None else None
        other = b[j] if j is not None else None
        index = i if i is not None else len(a)
        if one is None or other is None:
            side = "A" if one is None else "B"
            return [Divergence(index, one, other, f"{side} has no more events of this kind")]
        if one.key != other.key:
            return [Divergence(index, one, other, "different events")]
        if one.time is not None and other.time is not None:
            gap = abs(one.time - other.time)
            if gap > tolerance:
                reason = f"times differ by {gap:.3f} s (tolerance {tolerance:g} s)"
                return [Divergence(index, one, other, reason)]
    return []


def describe(
    divergence: Divergence,
    a: Sequence[Event],
    names: tuple[str, str] = ("A", "B"),
    context: int = 3,
) -> list[str]:
    """Lines for a person: the agreeing events just before, then both sides at the divergence."""
    lines = [f"first divergence at event {divergence.index + 1}: {divergence.reason}"]
    for event in a[max(0, divergence.index - context) : divergence.index]:
        lines.append(f"  = {_where(event)}: {event.text()}")
    width = max(len(n) for n in names)
    for name, side in zip(names, (divergence.a, divergence.b), strict=True):
        shown = f"{_where(side)}: {side.text()}" if side is not None else "(no more events)"
        lines.append(f"  {name:<{width}} {shown}")
    return lines


def _where(event: Event) -> str:
    session = "services" if event.session == 0 else f"session {event.session}"
    time = f", t={event.time:.3f} s" if event.time is not None else ""
    return f"{session}, frame {event.frame}{time}"


def counts(events: Sequence[Event]) -> dict[str, int]:
    """Events per kind, for a summary line."""
    out: dict[str, int] = {}
    for event in events:
        out[event.kind] = out.get(event.kind, 0) + 1
    return out


Analyze = Callable[[str, VerifyOptions], CaptureAnalysis]
