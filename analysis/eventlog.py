"""Cross-check a capture against the sender's own events log (``--events FILE``).

The RUDP engine can write what it did as JSON lines (``{"time", "name",
"data"}``).  What the sender says it sent, retransmitted and used as its
window must agree with what the capture shows; a disagreement means either
the capture lost packets or the engine's bookkeeping is wrong, and both are
worth a failing check.  The log is read tolerantly: unknown events, blank or
broken lines are skipped (and counted), flat objects without ``data`` work.
A log that is empty, or in which not one line is an engine event, fails the
check: it cannot vouch for anything.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any, Final

from stacklab.analysis.sessions import Check, RudpSessionFacts, VerifyOptions

log = logging.getLogger(__name__)


class EventLogError(ValueError):
    """The events file cannot be read at all."""


@dataclass
class SenderLog:
    """What the sender logged, summed up."""

    lines: int = 0
    skipped: int = 0
    recognised: int = 0
    data_sent: int = 0
    data_retransmitted: int = 0
    traced: bool = False
    windows: list[int] = field(default_factory=list)
    timeouts: int = 0
    fast_retransmits: int = 0
    go_backs: int = 0

    @property
    def max_window(self) -> int:
        return max(self.windows, default=1)


def read_events(path: str) -> SenderLog:
    """Summarise a JSON-lines events file; raise EventLogError if it cannot be opened."""
    out = SenderLog()
    try:
        handle = open(path, encoding="utf-8", errors="replace")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise EventLogError(f"{path}: cannot read the events file: {exc.strerror}") from None
    with handle:
        for raw in handle:
            line = raw.strip()
            if not line:
                continue
            out.lines += 1
            try:
                obj = json.loads(line)
            except ValueError:
                out.skipped += 1
                continue
            if not isinstance(obj, dict):
                out.skipped += 1
                continue
            _apply(out, obj)
    return out


_OTHER_ENGINE_EVENTS: Final = frozenset(
    {
        "event",
        "ack_received",
        "rto_changed",
        "rtt_sample",
        "loss_probe",
        "options",
        "command_received",
        "data_delivered",
        "transfer_complete",
        "connection_closed",
        "gave_up",
        "integrity_failure",
        "protocol_error",
    }
)
"""Engine events that are not summed up here but show the log is the engine's."""


def _apply(out: SenderLog, obj: dict[str, Any]) -> None:
    name = str(obj.get("name") or obj.get("event") or obj.get("type") or "")
    data = obj.get("data")
    if not isinstance(data, dict):
        data = obj
    short = name.rsplit(":", 1)[-1].lower()
    if short == "packet_sent":
        out.traced = True
        if str(data.get("flag", "")) == "D":
            out.data_sent += 1
            if data.get("retransmission"):
                out.data_retransmitted += 1
    elif short == "window_changed":
        new = data.get("new")
        if isinstance(new, int):
            out.windows.append(new)
    elif short == "timeout":
        out.timeouts += 1
    elif short == "fast_retransmit":
        out.fast_retransmits += 1
    elif short == "go_back":
        out.go_backs += 1
    elif short not in _OTHER_ENGINE_EVENTS:
        return
    out.recognised += 1


def cross_check(path: str, sessions: list[RudpSessionFacts], options: VerifyOptions) -> list[Check]:
    """The ``rudp.events`` check: the logged sender against the capture's session."""
    try:
        logged = read_events(path)
    except EventLogError as exc:
        return [Check("rudp.events", "-", "fail", str(exc))]
    if logged.lines == 0:
        return [Check("rudp.events", "-", "fail", f"{path}: the events log is empty")]
    if logged.recognised == 0:
        return [
            Check(
                "rudp.events",
                "-",
                "fail",
                f"{path}: not one RUDP engine event in {logged.lines} line(s) "
                f"({logged.skipped} not JSON objects): not an events log",
            )
        ]
    if not sessions:
        return [
            Check(
                "rudp.events",
                "-",
                "fail",
                "an events log was given but the capture has no RUDP session",
            )
        ]
    session = _match(logged, sessions)
    problems: list[str] = []
    if logged.traced:
        if logged.data_sent != session.data_packets:
            problems.append(
                f"sender logged {logged.data_sent} DATA packets, capture shows {session.data_packets}"
            )
        if logged.data_retransmitted != session.retransmissions:
            problems.append(
                f"sender logged {logged.data_retransmitted} retransmissions, capture shows {session.retransmissions}"
            )
    if session.max_flight > logged.max_window:
        problems.append(
            f"capture shows {session.max_flight} chunks in flight, the sender's window never exceeded {logged.max_window}"
        )
    limit = session.window_limit or options.max_window
    if logged.max_window > limit:
        problems.append(f"sender logged a window of {logged.max_window} > max window {limit}")
    summary = (
        f"log: {logged.data_sent} DATA, {logged.data_retransmitted} retransmitted, max window "
        f"{logged.max_window}, {logged.timeouts} timeouts, {logged.fast_retransmits} fast retransmits, "
        f"{logged.go_backs} go-backs (capture: {session.go_backs})"
    )
    if logged.skipped:
        summary += f" ({logged.skipped} unreadable lines skipped)"
    if problems:
        return [
            Check("rudp.events", session.key, "fail", "; ".join(problems), [session.first_frame])
        ]
    if not logged.traced:
        summary += "; no per-packet events (engine not traced): only the window compared"
    return [Check("rudp.events", session.key, "pass", summary, [session.first_frame])]


def _match(logged: SenderLog, sessions: list[RudpSessionFacts]) -> RudpSessionFacts:
    """The session the log describes: the only one, or the one with the same DATA count."""
    if len(sessions) == 1:
        return sessions[0]
    for session in sessions:
        if session.data_packets == logged.data_sent:
            return session
    return max(sessions, key=lambda s: s.data_packets)
