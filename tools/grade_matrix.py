"""Run the matrix of ``stacklab grade``: every (scenario, seed) run, here or on a Dask cluster.

Each run is independent (its own namespace, subject, proxy and capture), so
the matrix is embarrassingly parallel: ``--jobs N`` runs N at once on this
machine (threads, each waiting on its namespace's child process), and
``--scheduler ADDRESS`` hands the same runs to a Dask cluster
(:mod:`stacklab.tools.grade_dask`).  Either way results come back as
:class:`~stacklab.tools.grade_run.RunResult` through one callback, in the
order they finish.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from stacklab.tools.grade_run import RunResult, RunSpec, run_in_namespace
from stacklab.tools.grade_scenarios import GradeScenario

Runner = Callable[[RunSpec], RunResult]


def seed_list(seeds: int, seed: int | None) -> list[int]:
    """``--seeds N`` from 1, or from ``--seed S`` (one seed by default when S is given)."""
    start = 1 if seed is None else seed
    return list(range(start, start + seeds))


def plan(
    role: str,
    command: str,
    scenarios: Sequence[GradeScenario],
    seeds: Sequence[int],
    out: str | os.PathLike[str],
    workdir: str | None = None,
    private: bool = True,
) -> list[RunSpec]:
    """One spec per (scenario, seed); each run writes into ``out/runs/<id>-s<seed>/``.

    ``private``: each run in a namespace on the original addresses; else on free
    loopback addresses of this machine (see :func:`~stacklab.tools.grade_run.free_loopback`).
    """
    base = Path(out).absolute() / "runs"
    cwd = workdir or os.getcwd()
    return [
        RunSpec(role, command, s.id, seed, str(base / f"{s.id}-s{seed}"), cwd, private)
        for s in scenarios
        for seed in seeds
    ]


def run_local(
    specs: Sequence[RunSpec],
    jobs: int,
    on_result: Callable[[RunResult], None],
    runner: Runner = run_in_namespace,
) -> list[RunResult]:
    """Run ``specs`` with ``jobs`` at a time on this machine."""
    results: list[RunResult] = []
    if jobs <= 1:
        for spec in specs:
            result = runner(spec)
            results.append(result)
            on_result(result)
        return results
    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="stacklab-grade") as pool:
        futures = [pool.submit(runner, spec) for spec in specs]
        for future in as_completed(futures):
            result = future.result()
            results.append(result)
            on_result(result)
    return results
