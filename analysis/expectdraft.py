"""``stacklab verify --init``: an expectation file drafted from what a capture shows today.

The draft states everything: each check's status, each fact's exact value,
the count of each kind of note, and the first frames the verifier noted
something at.  Judged against the capture it came from it passes; the person
keeping it deletes what should be free to change and loosens the rest
(``retransmissions: ">= 3"``).
"""

from __future__ import annotations

import json
import math
from typing import Final

from stacklab.analysis.expectations import (
    FACTS,
    FLOAT_FACTS,
    NOTE_KINDS,
    frame_notes,
    frame_trace,
    note_counts,
)
from stacklab.analysis.sessions import CaptureAnalysis

MAX_FRAMES: Final = 10
"""Frames anchored in a draft: enough to pin the story down, few enough to read."""


def draft(items: list[tuple[str, CaptureAnalysis]]) -> str:
    """YAML text for ``(name as written in the file, analysis with notes and trace)`` pairs."""
    lines = [
        "# stacklab expectations, drafted by `stacklab verify --init`: each capture (relative",
        "# to this file's folder), the checks that must pass or fail, facts (a number or a",
        '# comparison such as ">= 3" or "2..4"), counts of the verifier\'s notes and frames.',
        "captures:",
    ]
    for name, analysis in items:
        lines += _capture(name, analysis)
    return "\n".join(lines) + "\n"


def _capture(name: str, analysis: CaptureAnalysis) -> list[str]:
    out = [f"  {json.dumps(name)}:"]
    statuses: dict[str, str] = {}
    for check in analysis.checks:
        previous = statuses.get(check.id)
        if check.status == "fail" or previous is None or (previous == "skip"):
            statuses[check.id] = check.status
    if statuses:
        out.append("    checks:")
        out += [f"      {check}: {status}" for check, status in statuses.items()]
    out.append("    facts:")
    for fact, value_of in FACTS.items():
        value = value_of(analysis)
        if fact in FLOAT_FACTS:
            out.append(f'      {fact}: "<= {math.ceil(value * 1000) / 1000:.3f}"')
        else:
            out.append(f"      {fact}: {int(value)}")
    counts = note_counts(analysis)
    out.append("    events:")
    out += [f"      {kind}: {counts.get(kind, 0)}" for kind in NOTE_KINDS]
    notes = frame_notes(analysis)
    if notes:
        trace = frame_trace(analysis)
        out.append("    frames:")
        for frame in sorted(notes)[:MAX_FRAMES]:
            out.append("      - " + _frame(frame, [k for k, _ in notes[frame]], trace))
    return out


def _frame(frame: int, kinds: list[str], trace: dict[int, tuple[int, int]]) -> str:
    parts = [f"frame: {frame}"]
    seen = trace.get(frame)
    rest = list(dict.fromkeys(kinds))
    if seen is not None and seen[0] == 0 and "retransmission" in rest:
        rest.remove("retransmission")
        parts.append(f"retransmits: {seen[1]}")
    elif seen is not None and seen[0] == 0:
        parts.append(f"data: {seen[1]}")
    elif seen is not None and seen[0] == 1:
        parts.append(f"ack: {seen[1]}")
    elif seen is not None:
        parts.append("fin: true")
    if len(rest) == 1:
        parts.append(f"note: {rest[0]}")
    elif rest:
        parts.append(f"note: [{', '.join(rest)}]")
    return "{" + ", ".join(parts) + "}"
