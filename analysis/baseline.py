"""Stored baselines: what a capture's verification looked like once, to compare runs against.

A baseline is one JSON file per capture (``<capture name>.json`` in the
baseline folder): the status of each check, and the capture's protocol events
(:mod:`stacklab.analysis.semantic`), so that a new run is compared as a
story, not as bytes: ports, ISNs and absolute times never count, times since
a session's start only beyond the stored ``time_tolerance`` (editable).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass
from typing import Any, Final

from stacklab.analysis.semantic import Event, describe, first_divergence
from stacklab.analysis.sessions import CaptureAnalysis

FORMAT: Final = "stacklab-baseline"
VERSION: Final = 1
DEFAULT_TOLERANCE: Final = 0.1


@dataclass(frozen=True)
class Baseline:
    checks: Counter[tuple[str, str]]
    events: list[Event]
    time_tolerance: float


def baseline_path(folder: str, capture: str) -> str:
    return os.path.join(folder, os.path.basename(capture) + ".json")


def _check_counts(analysis: CaptureAnalysis) -> Counter[tuple[str, str]]:
    return Counter((c.id, c.status) for c in analysis.checks if c.id != "capture.baseline")


def document(analysis: CaptureAnalysis, events: list[Event], tolerance: float) -> dict[str, Any]:
    """The JSON a baseline file holds."""
    checks = sorted(_check_counts(analysis).items())
    return {
        "format": FORMAT,
        "version": VERSION,
        "capture": os.path.basename(analysis.path),
        "time_tolerance": tolerance,
        "checks": [[check, status, count] for (check, status), count in checks],
        "events": [event.to_json() for event in events],
    }


def read_baseline(path: str) -> Baseline:
    """Read a baseline file; raises OSError, or ValueError saying what is wrong with it."""
    with open(path, encoding="utf-8") as handle:
        try:
            data = json.load(handle)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path}: not a baseline (not JSON: {exc})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{path}: not a stacklab baseline")
    if data.get("version") != VERSION:
        raise ValueError(f"{path}: baseline version {data.get('version')!r}, expected {VERSION}")
    tolerance = data.get("time_tolerance", DEFAULT_TOLERANCE)
    checks = data.get("checks")
    events = data.get("events")
    if not isinstance(tolerance, int | float) or tolerance < 0:
        raise ValueError(f"{path}: time_tolerance must be a number of seconds >= 0")
    if not isinstance(checks, list) or not isinstance(events, list):
        raise ValueError(f"{path}: 'checks' and 'events' must be lists")
    counted: Counter[tuple[str, str]] = Counter()
    for item in checks:
        if not (isinstance(item, list) and len(item) == 3 and isinstance(item[2], int)):
            raise ValueError(f"{path}: not a check entry: {item!r}")
        counted[(str(item[0]), str(item[1]))] = item[2]
    try:
        story = [Event.from_json(item) for item in events]
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    return Baseline(counted, story, float(tolerance))


def compare(
    analysis: CaptureAnalysis, events: list[Event], baseline: Baseline
) -> tuple[list[str], list[int]]:
    """What differs from the baseline (lines; empty when nothing) and the frames it points at."""
    lines = []
    now = _check_counts(analysis)
    for key in sorted(set(now) | set(baseline.checks)):
        if now.get(key, 0) != baseline.checks.get(key, 0):
            check, status = key
            lines.append(
                f"{check} {status}: {baseline.checks.get(key, 0)} in the baseline, "
                f"{now.get(key, 0)} now"
            )
    frames: list[int] = []
    divergence = first_divergence(baseline.events, events, baseline.time_tolerance)
    if divergence is not None:
        sides = describe(divergence, baseline.events, ("baseline", "now"), context=0)
        lines.append(
            sides[0].removeprefix("first divergence at ")
            + ": "
            + "; ".join(" ".join(side.split()) for side in sides[1:])
        )
        if divergence.b is not None:
            frames.append(divergence.b.frame)
    return lines, frames
