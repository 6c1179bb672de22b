"""The report's step-through: RUDP sessions replayed frame by frame, with each side's state.

At every DATA, ACK or FIN of the session the verifier traced, the page shows
what Go-Back-N keeps in its head: the sender's base (lowest unacknowledged
chunk) and next chunk, the window the verifier's AIMD model allows there (an
interval: ``lo..hi``), the chunk the receiver expects next, and what the
verifier concluded at that frame (its notes).  Everything is computed here
and embedded as JSON; the page's script only moves a cursor over it, so the
page works offline and the arithmetic is tested in Python.

What a capture cannot show is inferred the way the rules say: the base slides
to ``ack + 1`` on a cumulative ACK at or above it, the next chunk follows the
last DATA sent (a go-back moves it back), the receiver expects one past the
last chunk it acknowledged.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from typing import Any, Final

from stacklab.analysis.sessions import CaptureAnalysis, RudpSessionFacts

MAX_STEPS: Final = 5000
"""Steps embedded per session; a longer session is cut there (and the page says so)."""
MAX_TOTAL_STEPS: Final = 20_000
"""Steps embedded in all: the page stays a few megabytes at most."""
MAX_SESSIONS: Final = 12
"""Sessions offered in the step-through (the first ones the verifier traced)."""
_KIND: Final = ("DATA", "ACK", "FIN")


@dataclass(frozen=True)
class Step:
    """The state after one frame of the session."""

    frame: int
    time: float  # seconds since the session's first frame
    packet: str  # "DATA 3", "ACK 2", "FIN"
    to_client: bool  # direction of the arrow: server -> client (DATA, FIN) or back
    base: int
    next: int
    window: tuple[int, int]  # (lo, hi) of the AIMD model
    expected: int
    notes: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "frame": self.frame,
            "time": round(self.time, 6),
            "packet": self.packet,
            "down": self.to_client,
            "base": self.base,
            "next": self.next,
            "lo": self.window[0],
            "hi": self.window[1],
            "expected": self.expected,
            "notes": list(self.notes),
        }


def session_steps(facts: RudpSessionFacts, limit: int = MAX_STEPS) -> list[Step]:
    """Replay the session's trace (``VerifyOptions.trace_sessions``; notes with ``keep_notes``)."""
    notes: dict[int, list[str]] = {}
    for note in facts.notes:
        notes.setdefault(note.frame, []).append(note.text)
    base = next_chunk = expected = 1
    steps = []
    for frame, time, kind, value, hi, lo in facts.trace[:limit]:
        if kind == 0:
            next_chunk = value + 1
            packet = f"DATA {value}"
        elif kind == 1:
            if value >= base:
                base = value + 1
            expected = max(expected, value + 1)
            packet = f"ACK {value}"
        else:
            packet = "FIN"
        steps.append(
            Step(
                frame,
                time - facts.start,
                packet,
                kind != 1,
                base,
                next_chunk,
                (lo, hi),
                expected,
                tuple(notes.get(frame, ())),
            )
        )
    return steps


def stepper_section(analysis: CaptureAnalysis) -> str:
    """The HTML of the step-through (empty when no RUDP session was traced)."""
    traced = [s for s in analysis.rudp_sessions if s.trace][:MAX_SESSIONS]
    if not traced:
        return ""
    budget = MAX_TOTAL_STEPS
    sessions = []
    clipped = []
    for number, facts in enumerate(traced, 1):
        steps = session_steps(facts, max(1, min(MAX_STEPS, budget)))
        budget -= len(steps)
        if len(steps) < facts.trace_points:
            clipped.append(f"session {number}: the first {len(steps):,} of {facts.trace_points:,}")
        sessions.append(
            {
                "name": f"session {number}: {facts.key}",
                "client": facts.client,
                "server": facts.server,
                "steps": [step.to_json() for step in steps],
            }
        )
    # No "<" at all: nothing in a note can end the script element; the JSON stays JSON.
    payload = json.dumps({"sessions": sessions}, separators=(",", ":")).replace("<", "\\u003c")
    cut = f" (DATA and ACKs stepped: {'; '.join(clipped)})" if clipped else ""
    others = len(analysis.rudp_sessions) - len(traced)
    more = f"; {others:,} later RUDP session(s) are not stepped" if others else ""
    e = html.escape
    options = "".join(
        f'<option value="{i}">{e(str(session["name"]))}</option>'
        for i, session in enumerate(sessions)
    )
    hidden = " hidden" if len(sessions) == 1 else ""
    return (
        '<div id="stepper" class="stepper">'
        f'<p class="note">Step through the RUDP sessions frame by frame{e(cut)}{e(more)}: '
        "buttons, or the keys ← → (Home, End). The sender's base, next chunk and window are as "
        "the verifier's model infers them from the capture; the receiver's expected chunk is one "
        "past its last cumulative ACK.</p>"
        '<div class="step-controls">'
        f'<select id="step-session" aria-label="session"{hidden}>{options}</select>'
        '<button type="button" id="step-first" title="first (Home)">⏮ first</button>'
        '<button type="button" id="step-prev" title="previous (←)">◀ previous</button>'
        '<button type="button" id="step-next" title="next (→)">next ▶</button>'
        '<button type="button" id="step-last" title="last (End)">last ⏭</button>'
        '<span id="step-label"></span></div>'
        '<div class="step-body"><table class="step-ladder"><thead><tr><th>frame</th>'
        '<th id="step-client">client</th><th></th><th id="step-server">server</th></tr></thead>'
        '<tbody id="step-rows"></tbody></table>'
        '<dl id="step-state">'
        '<dt>frame</dt><dd id="step-frame">-</dd>'
        '<dt>time</dt><dd id="step-time">-</dd>'
        '<dt>packet</dt><dd id="step-packet">-</dd>'
        '<dt>sender base</dt><dd id="step-base">-</dd>'
        '<dt>sender next chunk</dt><dd id="step-next-chunk">-</dd>'
        '<dt>window (AIMD model)</dt><dd id="step-window">-</dd>'
        '<dt>receiver expects</dt><dd id="step-expected">-</dd>'
        '<dt>verify concluded</dt><dd id="step-notes">-</dd>'
        "</dl></div>"
        f'<script type="application/json" id="step-data">{payload}</script></div>'
    )
