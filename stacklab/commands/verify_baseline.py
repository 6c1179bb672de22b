"""``stacklab verify --baseline DIR [--update-baseline]``: each capture against its stored story.

The outcome joins the capture's checks as ``capture.baseline``, so that the
table, ``--json``, JUnit and the exit status carry it like any other check:
it fails when the checks' statuses or the protocol events differ from the
baseline, or when there is no baseline yet (``--update-baseline`` writes it).
"""

from __future__ import annotations

import contextlib
import json
import os

from stacklab.analysis.baseline import (
    DEFAULT_TOLERANCE,
    baseline_path,
    compare,
    document,
    read_baseline,
)
from stacklab.analysis.semantic import capture_events
from stacklab.analysis.sessions import CaptureAnalysis, Check
from stacklab.errors import UserError
from stacklab.files import write_atomically

CHECK_ID = "capture.baseline"


def check_folder(folder: str, captures: tuple[str, ...], update: bool) -> None:
    """Refuse before any work: a missing folder, or two captures sharing one baseline name."""
    if update and not os.path.exists(folder):
        try:
            os.makedirs(folder)
        except OSError as exc:
            raise UserError(f"cannot create {folder}: {exc.strerror or exc}") from None
    if not os.path.isdir(folder):
        raise UserError(f"{folder}: no such baseline folder (--update-baseline creates it)")
    names = [os.path.basename(c) for c in captures]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UserError(f"captures share a baseline name: {', '.join(twice)}")


def apply_baseline(analyses: list[CaptureAnalysis], folder: str, update: bool) -> None:
    """Compare (or with ``update`` rewrite) each capture's baseline; record it as a check."""
    for analysis in analyses:
        path = baseline_path(folder, analysis.path)
        events = capture_events(analysis)
        if update:
            tolerance = DEFAULT_TOLERANCE
            if os.path.exists(path):
                with contextlib.suppress(OSError, ValueError):  # an edited tolerance stays
                    tolerance = read_baseline(path).time_tolerance
            text = json.dumps(document(analysis, events, tolerance), indent=1) + "\n"
            try:
                write_atomically(path, text.encode("utf-8"))
            except OSError as exc:
                raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None
            detail = f"baseline written: {path} ({len(events)} events)"
            analysis.checks.append(Check(CHECK_ID, "-", "pass", detail))
            continue
        if not os.path.exists(path):
            detail = f"no baseline {path} (--update-baseline writes it)"
            analysis.checks.append(Check(CHECK_ID, "-", "fail", detail))
            continue
        try:
            baseline = read_baseline(path)
        except OSError as exc:
            raise UserError(f"{path}: cannot read the baseline: {exc.strerror or exc}") from None
        except ValueError as exc:
            raise UserError(str(exc)) from None
        lines, frames = compare(analysis, events, baseline)
        if lines:
            analysis.checks.insert(0, Check(CHECK_ID, "-", "fail", "; ".join(lines), frames))
        else:
            detail = f"same as {path}: {len(events)} events"
            analysis.checks.append(Check(CHECK_ID, "-", "pass", detail))
