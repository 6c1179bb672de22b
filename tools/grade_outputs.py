"""What ``stacklab grade`` writes: the JSON verdict, JUnit XML, Gradescope's results.json,
and one HTML matrix page linking each run's report.

All four are built from the same :class:`~stacklab.tools.grade_score.ScenarioVerdict`
list, and every file is written atomically.
"""

from __future__ import annotations

import html
import json
import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stacklab.files import write_atomically
from stacklab.tools.grade_score import ScenarioVerdict, score


def grade_json(
    subject: str, role: str, items: Sequence[ScenarioVerdict], seeds: Sequence[int]
) -> dict[str, Any]:
    """The JSON document (the fixed part first: subject, role, score, scenarios)."""
    return {
        "subject": subject,
        "role": role,
        "score": score(items),
        "scenarios": [v.to_json() for v in items],
        "seeds": list(seeds),
    }


def write_json(path: str | os.PathLike[str], document: dict[str, Any]) -> None:
    write_atomically(path, (json.dumps(document, indent=2) + "\n").encode("utf-8"))


def junit_tree(subject: str, role: str, items: Sequence[ScenarioVerdict]) -> ET.ElementTree:
    """One ``<testcase>`` per scenario: a failure lists the failing seeds and checks."""
    root = ET.Element("testsuites", name=f"stacklab grade {role}")
    suite = ET.SubElement(root, "testsuite", name=f"stacklab grade {role}: {subject}")
    failures = skipped = 0
    for v in items:
        case = ET.SubElement(
            suite, "testcase", classname=f"grade.{role}", name=v.scenario.id, time=_seconds(v)
        )
        if v.runs == 0:
            skipped += 1
            ET.SubElement(case, "skipped", message="no run")
        elif v.failures:
            failures += 1
            message = f"{v.passed}/{v.runs} runs passed; failing: " + ", ".join(
                sorted({c for f in v.failures for c in f.checks})
            )
            failure = ET.SubElement(case, "failure", message=message, type="grade")
            failure.text = "\n".join(
                f"seed {f.seed}: {'; '.join(f.details)}\n  capture: {f.capture}\n  "
                f"reproduce: {f.reproduce}"
                for f in v.failures
            )
        else:
            out = ET.SubElement(case, "system-out")
            out.text = f"{v.passed}/{v.runs} runs passed: {v.scenario.passes}"
    for node in (root, suite):
        node.set("tests", str(len(items)))
        node.set("failures", str(failures))
        node.set("errors", "0")
        node.set("skipped", str(skipped))
    ET.indent(root)
    return ET.ElementTree(root)


def _seconds(v: ScenarioVerdict) -> str:
    return f"{sum(r.seconds for r in v.results):.3f}"


def write_junit(
    path: str | os.PathLike[str], subject: str, role: str, items: Sequence[ScenarioVerdict]
) -> None:
    tree = junit_tree(subject, role, items)
    write_atomically(path, lambda h: tree.write(h, encoding="utf-8", xml_declaration=True))


def gradescope(subject: str, role: str, items: Sequence[ScenarioVerdict]) -> dict[str, Any]:
    """Gradescope's ``results.json``: one test per scenario, worth its share of 100 points."""
    total_weight = sum(v.scenario.weight for v in items if v.runs) or 1.0
    tests = []
    for v in items:
        max_score = round(100.0 * v.scenario.weight / total_weight, 2)
        lines = [f"{v.passed}/{v.runs} runs passed. Passes when: {v.scenario.passes}."]
        for f in v.failures:
            lines.append(f"seed {f.seed}: " + "; ".join(f.details))
            lines.append(f"  reproduce: {f.reproduce}")
        tests.append(
            {
                "name": v.scenario.id,
                "score": round(max_score * v.pass_rate, 2),
                "max_score": max_score,
                "status": "passed" if v.runs and not v.failures else "failed",
                "output": "\n".join(lines),
            }
        )
    return {
        "score": score(items),
        "output": f"stacklab grade --{role} {subject}",
        "visibility": "visible",
        "tests": tests,
    }


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def matrix_html(
    subject: str,
    role: str,
    items: Sequence[ScenarioVerdict],
    reports: dict[tuple[str, int], str],
) -> str:
    """One self-contained page: a row per scenario, a cell per seed linking its report."""
    seeds = sorted({r.seed for v in items for r in v.results})
    head = "".join(f"<th>seed {s}</th>" for s in seeds)
    rows = []
    for v in items:
        by_seed = {r.seed: r for r in v.results}
        cells = []
        for s in seeds:
            r = by_seed.get(s)
            if r is None:
                cells.append("<td></td>")
                continue
            label = "PASS" if r.passed else "FAIL"
            title = "; ".join(f"{c.id}: {c.detail}" for c in r.failing) or "every check passed"
            link = reports.get((v.scenario.id, s))
            text = f'<a href="{_e(link)}">{label}</a>' if link else label
            cells.append(f'<td class="{label.lower()}" title="{_e(title)}">{text}</td>')
        lo, hi = v.interval
        failing = ", ".join(sorted({c for f in v.failures for c in f.checks})) or ""
        rows.append(
            f'<tr><th title="{_e(v.scenario.shows)}">{_e(v.scenario.id)}</th>'
            f"<td>{v.passed}/{v.runs}</td><td>{v.pass_rate:.0%}</td>"
            f"<td>{lo:.2f} – {hi:.2f}</td>{''.join(cells)}<td>{_e(failing)}</td></tr>"
        )
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>stacklab grade: {_e(subject)}</title><style>"
        "body{font-family:system-ui,sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left}"
        ".pass{background:#dfd}.fail{background:#fdd}</style></head><body>"
        f"<h1>stacklab grade --{_e(role)}</h1><p><code>{_e(subject)}</code>: score "
        f"<strong>{score(items)}</strong> / 100</p>"
        "<table><thead><tr><th>scenario</th><th>passed</th><th>rate</th>"
        f"<th>Wilson 95 %</th>{head}<th>failing checks</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table><p>Each cell links to the run's report (its capture, checks and "
        "packets; frames the network dropped are marked).</p></body></html>\n"
    )


def write_html(
    path: str | os.PathLike[str],
    subject: str,
    role: str,
    items: Sequence[ScenarioVerdict],
    reports: dict[tuple[str, int], str],
) -> None:
    page = matrix_html(subject, role, items, reports)
    write_atomically(path, page.encode("utf-8"))


def relative_to(path: str | os.PathLike[str], folder: str | os.PathLike[str]) -> str:
    """``path`` relative to ``folder`` when it lies inside, else as given."""
    try:
        return str(Path(path).resolve().relative_to(Path(folder).resolve()))
    except ValueError:
        return os.fspath(path)
