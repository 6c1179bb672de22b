"""A capture that could not be read, kept as a result of its own.

One unreadable file among many must not wipe out the results of the others:
``stacklab verify`` reports it next to them (a line, a JSON entry, a JUnit
``<error>``) and goes on with the next file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import IO, Any

from stacklab.analysis.sessions import CaptureAnalysis, report_json


@dataclass(frozen=True)
class Unreadable:
    """``path`` could not be read as a capture; ``error`` is the one-line reason."""

    path: str
    error: str

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "error": self.error}


def results_json(analyses: list[CaptureAnalysis], unreadable: list[Unreadable]) -> dict[str, Any]:
    """The ``--json`` document: the captures read, the ones that could not be, the verdict."""
    document = report_json(analyses)
    document["unreadable"] = [u.to_json() for u in unreadable]
    document["passed"] = bool(document["passed"]) and not unreadable and bool(analyses)
    return document


def write_results_json(
    analyses: list[CaptureAnalysis], unreadable: list[Unreadable], out: IO[str]
) -> None:
    """Write the :func:`results_json` document to ``out`` as its parts are encoded.

    The same document (``json.loads`` of the text equals
    :func:`results_json`, keys in the same order); each check and session is
    one line, and only one of them is held as text at a time.
    """
    from stacklab.jsonstream import JsonWriter

    passed = all(a.passed for a in analyses) and not unreadable and bool(analyses)
    JsonWriter(out).write(
        {
            "captures": (a.json_parts() for a in analyses),
            "passed": passed,
            "unreadable": [u.to_json() for u in unreadable],
        }
    )
    out.write("\n")
