"""``stacklab verify --checks FILE`` and ``--init``: captures judged by an expectation file.

Kept apart from :mod:`stacklab.commands.verify`, which hands over to it: the
verdict here is the file's (a check the file expects to fail may fail), while
the exit codes are verify's: 0 when every expectation holds, 1 when one does
not or a capture cannot be read, 2 for a file that cannot be used or when no
capture can be read.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Callable, Sequence

import click

from stacklab.analysis.expectations import CaptureExpectations, Outcome
from stacklab.analysis.expectfile import ExpectationError
from stacklab.analysis.pcapio import CaptureError
from stacklab.analysis.sessions import CaptureAnalysis, VerifyOptions
from stacklab.analysis.unreadable import Unreadable
from stacklab.cli import is_quiet
from stacklab.errors import UserError
from stacklab.files import Output

TRACED_SESSIONS = 64
"""Sessions whose DATA and ACKs are kept when frames name chunks (CI captures are small)."""

Analyze = Callable[[str, VerifyOptions], CaptureAnalysis]


def pick(
    specs: list[CaptureExpectations], captures: Sequence[str], file: str
) -> list[CaptureExpectations]:
    """The entries to run: all, or the ones matching the captures named on the command line."""
    if not captures:
        return specs
    chosen = []
    for capture in captures:
        real = os.path.realpath(capture)
        match = [s for s in specs if os.path.realpath(s.path) == real]
        match = match or [s for s in specs if os.path.basename(s.path) == os.path.basename(capture)]
        if len(match) != 1:
            why = "names no entry for" if not match else "has several entries matching"
            raise UserError(f"{file} {why} {capture}")
        chosen.append(match[0])
    return chosen


def run_checks(
    file: str,
    captures: Sequence[str],
    options: VerifyOptions,
    analyze: Analyze,
    errors: tuple[type[Exception], ...],
    as_json: bool,
    junit: Output | None,
) -> int:
    """Judge each capture of ``file``; print per expectation; return the exit status."""
    from stacklab.analysis.expectations import judge, read_expectations

    try:
        specs = pick(read_expectations(file), captures, file)
    except ExpectationError as exc:
        raise UserError(str(exc)) from None
    results: list[tuple[str, list[Outcome]]] = []
    unreadable: list[Unreadable] = []
    for spec in specs:
        run = dataclasses.replace(
            options,
            keep_notes=True,
            keep_series=False,
            trace_sessions=TRACED_SESSIONS if spec.needs_trace else 0,
            max_window=spec.max_window or options.max_window,
            min_rto=options.min_rto if spec.min_rto is None else spec.min_rto,
        )
        try:
            analysis = analyze(spec.path, run)
        except errors as exc:
            unreadable.append(Unreadable(spec.path, str(exc)))
            click.echo(f"stacklab: error: {exc}", err=True)
            continue
        results.append((spec.path, judge(spec, analysis)))
    if junit is not None:
        from stacklab.analysis.junit import expectations_tree, write_tree

        try:
            write_tree(expectations_tree(results, unreadable), junit)
        except OSError as exc:
            raise UserError(f"cannot write {junit}: {exc.strerror or exc}") from None
    met = sum(o.ok for _, outcomes in results for o in outcomes)
    total = sum(len(outcomes) for _, outcomes in results)
    passed = not unreadable and met == total
    if as_json:
        document = {
            "checks_file": file,
            "captures": [
                {"path": path, "passed": all(o.ok for o in outcomes)}
                | {"expectations": [o.to_json() for o in outcomes]}
                for path, outcomes in results
            ],
            "unreadable": [{"path": u.path, "error": u.error} for u in unreadable],
            "passed": passed,
        }
        sys.stdout.write(json.dumps(document, indent=2) + "\n")
    else:
        for path, outcomes in results:
            if not is_quiet():
                click.echo(path)
            for o in outcomes:
                if o.ok and is_quiet():
                    continue
                mark = "ok  " if o.ok else "FAIL"
                click.echo(f"  {mark} {file}:{o.line}: {o.kind} {o.name}: {o.detail}")
    verdict = "PASS" if passed else "FAIL"
    click.echo(
        f"{verdict}: {met} of {total} expectations met in {len(results)} capture(s)"
        + (f", {len(unreadable)} unreadable" if unreadable else ""),
        err=as_json,
    )
    if not results:
        return 2
    return 0 if passed else 1


def run_init(
    captures: Sequence[str],
    options: VerifyOptions,
    analyze: Analyze,
    errors: tuple[type[Exception], ...],
) -> int:
    """Print a drafted expectation file for ``captures`` on standard output."""
    from stacklab.analysis.expectdraft import draft

    run = dataclasses.replace(
        options, keep_notes=True, keep_series=False, trace_sessions=TRACED_SESSIONS
    )
    items = []
    caught: tuple[type[Exception], ...] = (*errors, CaptureError)
    for capture in captures:
        try:
            items.append((capture, analyze(capture, run)))
        except caught as exc:
            raise UserError(str(exc)) from None
    sys.stdout.write(draft(items))
    return 0


def check_file(file: str) -> None:
    """Refuse an unreadable expectation file before any capture is read."""
    if not os.path.isfile(file) or not os.access(file, os.R_OK):
        raise UserError(f"{file}: cannot read the expectation file")
