"""Scoring ``stacklab grade``: pass rates with a Wilson interval, and one weighted score.

Why Wilson: with a handful of seeds per scenario the plain pass rate says
too little (3 of 3 is not "100 %"); the Wilson score interval (95 %) stays
inside [0, 1] and is honest about small samples, so a teacher sees how much
a verdict would move with more seeds.

The score: each scenario counts with its weight (see the catalogue in
:mod:`stacklab.tools.grade_scenarios`: 2 for ``clean``, the loss scenarios
and ``probe``, 1 for the others) times its pass rate; the total is scaled
to 100.  A scenario that passes on some seeds only earns that share.
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from stacklab.tools.grade_run import RunResult
from stacklab.tools.grade_scenarios import GradeScenario

Z95: Final = 1.959963984540054
"""The two-sided 95 % quantile of the standard normal distribution."""


def wilson(passed: int, runs: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of ``passed`` successes in ``runs`` trials.

    ``(0.0, 1.0)`` when there were no runs: nothing is known.
    """
    if runs <= 0:
        return (0.0, 1.0)
    if not 0 <= passed <= runs:
        raise ValueError(f"passed must be within 0..{runs}, got {passed}")
    p = passed / runs
    z2 = z * z
    denominator = 1 + z2 / runs
    centre = (p + z2 / (2 * runs)) / denominator
    half = z * math.sqrt(p * (1 - p) / runs + z2 / (4 * runs * runs)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


def reproducer(role: str, command: str, scenario: str, seed: int) -> str:
    """The one-line command that replays one run with the same impairment decisions."""
    return f"stacklab grade --{role} {shlex.quote(command)} --only {scenario} --seed {seed}"


@dataclass
class Failure:
    """One failing run of a scenario."""

    seed: int
    capture: str
    checks: list[str]
    reproduce: str
    details: list[str] = field(default_factory=list)
    report: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "capture": self.capture,
            "checks": self.checks,
            "reproduce": self.reproduce,
            "details": self.details,
            "report": self.report,
        }


@dataclass
class ScenarioVerdict:
    """Runs, passes and failures of one scenario over the seeds."""

    scenario: GradeScenario
    runs: int
    passed: int
    failures: list[Failure]
    results: list[RunResult]

    @property
    def pass_rate(self) -> float:
        return self.passed / self.runs if self.runs else 0.0

    @property
    def interval(self) -> tuple[float, float]:
        return wilson(self.passed, self.runs)

    def to_json(self) -> dict[str, Any]:
        lo, hi = self.interval
        return {
            "id": self.scenario.id,
            "runs": self.runs,
            "passed": self.passed,
            "pass_rate": round(self.pass_rate, 4),
            "interval": [round(lo, 4), round(hi, 4)],
            "weight": self.scenario.weight,
            "budget": self.scenario.budget,
            "shows": self.scenario.shows,
            "passes": self.scenario.passes,
            "failures": [f.to_json() for f in self.failures],
        }


def verdicts(
    role: str,
    command: str,
    scenarios: Sequence[GradeScenario],
    results: Sequence[RunResult],
    relative: Any = None,
) -> list[ScenarioVerdict]:
    """Group run results by scenario, in catalogue order.

    ``relative`` (a callable) turns a capture path into the one shown (e.g.
    relative to the output folder).
    """
    out: list[ScenarioVerdict] = []
    for scenario in scenarios:
        mine = sorted((r for r in results if r.scenario == scenario.id), key=lambda r: r.seed)
        failures = []
        for r in mine:
            if r.passed:
                continue
            capture = r.capture or ""
            if relative is not None and capture:
                capture = relative(capture)
            failures.append(
                Failure(
                    seed=r.seed,
                    capture=capture,
                    checks=[c.id for c in r.failing] or ["grade.run"],
                    reproduce=reproducer(role, command, scenario.id, r.seed),
                    details=[f"{c.id}: {c.detail}" for c in r.failing] or [r.error or "failed"],
                )
            )
        out.append(
            ScenarioVerdict(scenario, len(mine), sum(r.passed for r in mine), failures, mine)
        )
    return out


def score(items: Sequence[ScenarioVerdict]) -> float:
    """The weighted pass rate over the scenarios that ran, scaled to 100 (one decimal)."""
    total = sum(v.scenario.weight for v in items if v.runs)
    if total == 0:
        return 0.0
    earned = sum(v.scenario.weight * v.pass_rate for v in items if v.runs)
    return round(100.0 * earned / total, 1)
