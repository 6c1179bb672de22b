"""Show a failure where it happened: a short ASCII ladder of the frames around it.

A failing check names its frames; a person still has to open the capture to
see what led up to them.  :func:`failure_slice` reads the capture again (only
as far as the slice), keeps the frames of the failing session around the
first frame the check names, and :func:`ladder_lines` draws them as a ladder
diagram, client on the left, server on the right, the failing frame marked::

    frame   time (s)  127.0.0.1:50000                    127.0.0.3:2122
       14   0.014000                          <--  DATA 5 len=500
       15   0.015000  ACK 4  -->
    >> 16   0.016000                          <--  DATA 5 len=500 (resent)  << rudp.gbn

The HTML report highlights the same frames (:func:`failure_frames`).
"""

from __future__ import annotations

import os
from collections import deque
from dataclasses import dataclass

from stacklab.analysis.decode import decode_capture
from stacklab.analysis.sessions import CaptureAnalysis, Check
from stacklab.wire import Ports

CONTEXT = 6
"""Frames of the failing session shown before and after the failing frame."""


@dataclass(frozen=True)
class LadderRow:
    """One frame of the slice: who sent what."""

    frame: int
    time: float
    from_client: bool
    text: str


def first_rudp_failure(analysis: CaptureAnalysis) -> Check | None:
    """The first failing RUDP check that names a frame (failures come first)."""
    for check in analysis.checks:
        rudp_failure = check.status == "fail" and check.id.startswith("rudp.")
        if rudp_failure and check.frames and check.session != "-":
            return check
    return None


def failure_frames(analysis: CaptureAnalysis) -> set[int]:
    """The frames every failing check names (the report highlights them)."""
    return {f for c in analysis.checks if c.status == "fail" for f in c.frames}


def failure_slice(
    path: str | os.PathLike[str],
    check: Check,
    ports: Ports = Ports(),  # noqa: B008 - frozen dataclass, immutable default
    context: int = CONTEXT,
) -> list[LadderRow]:
    """The failing session's frames around ``check.frames[0]``, read streaming."""
    client, _, server = check.session.partition("->")
    target = check.frames[0]
    before: deque[LadderRow] = deque(maxlen=context + 1)
    after: list[LadderRow] = []
    for packet in decode_capture(path, ports, only=("rudp",)):
        if {packet.src, packet.dst} != {client, server}:
            continue
        info = packet.info or {}
        flag = info.get("flag", "?")
        if flag == "D":
            text = f"DATA {info.get('seq')} len={info.get('len')}"
        elif flag == "A":
            text = f"ACK {info.get('ack')}"
        elif flag == "S":
            text = f"SYN {info.get('seq')}"
        elif flag == "F":
            text = f"FIN {info.get('seq')}"
        else:
            text = packet.summary()
        row = LadderRow(packet.frame, packet.time, packet.src == client, text)
        if packet.frame <= target:
            before.append(row)
        else:
            after.append(row)
            if len(after) >= context:
                break
    return [*before, *after]


def ladder_lines(rows: list[LadderRow], check: Check, width: int = 34) -> list[str]:
    """The slice as text: client actions on the left, server's on the right."""
    client, _, server = check.session.partition("->")
    marked = set(check.frames)
    seen: set[str] = set()
    out = [f"   frame    time (s)  {client:<{width}}{server}"]
    for row in rows:
        resent = ""
        if row.text.startswith("DATA") and row.text in seen:
            resent = " (resent)"
        seen.add(row.text)
        if row.from_client:
            arrow = f"{row.text}  -->"
            body = f"{arrow:<{width}}"
        else:
            body = " " * width + f"<--  {row.text}{resent}"
        mark = ">> " if row.frame in marked else "   "
        tail = f"  << {check.id}" if row.frame == check.frames[0] else ""
        out.append(f"{mark}{row.frame:>5}  {row.time:>10.6f}  {body}{tail}".rstrip())
    return out


def explain_failure(
    path: str | os.PathLike[str],
    analysis: CaptureAnalysis,
    ports: Ports = Ports(),  # noqa: B008 - frozen dataclass, immutable default
) -> list[str]:
    """The ladder of the first RUDP failure of ``analysis``, or nothing to show."""
    check = first_rudp_failure(analysis)
    if check is None:
        return []
    rows = failure_slice(path, check, ports)
    if not rows:
        return []
    head = f"first failure, {check.id} at frame {check.frames[0]}: {check.detail}"
    return [head, *ladder_lines(rows, check)]
