"""Run the grade matrix on a Dask distributed cluster (``--scheduler ADDRESS``).

The workers need stacklab installed and root (each run makes a private
network namespace); each run is one task that returns its verdict as plain
JSON, so nothing but dictionaries crosses the wire.  The run folders are
written on the workers: with a shared file system (or a ``LocalCluster``)
the captures and reports end up in ``--out`` as with ``--jobs``.

Dask is optional (the ``grade`` extra): ``--scheduler`` without it says how
to install it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from stacklab.errors import UserError
from stacklab.tools.grade_run import RunResult, RunSpec, run_in_namespace


def run_spec_json(spec: dict[str, Any]) -> dict[str, Any]:
    """The task a worker runs: one spec in, one verdict out (both JSON-friendly)."""
    return run_in_namespace(RunSpec(**spec)).to_json()


def _client(address: str) -> Any:
    try:
        from distributed import Client
    except ImportError:
        raise UserError(
            "--scheduler needs Dask: pip install 'stacklab[grade]' (dask[distributed])"
        ) from None
    try:
        return Client(address, timeout="10s")
    except (OSError, TimeoutError) as exc:
        raise UserError(f"cannot reach the Dask scheduler at {address}: {exc}") from None


def run_dask(
    specs: Sequence[RunSpec],
    address: str,
    on_result: Callable[[RunResult], None],
    task: Callable[[dict[str, Any]], dict[str, Any]] = run_spec_json,
) -> list[RunResult]:
    """Submit every run to the cluster at ``address``; gather verdicts as they finish."""
    from distributed import as_completed

    client = _client(address)
    try:
        futures = [
            client.submit(
                task, spec.to_json(), pure=False, key=f"grade-{spec.scenario}-{spec.seed}"
            )
            for spec in specs
        ]
        results: list[RunResult] = []
        for future in as_completed(futures):
            result = RunResult.from_json(future.result())
            results.append(result)
            on_result(result)
        return results
    finally:
        client.close()
