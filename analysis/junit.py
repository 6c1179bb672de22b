"""JUnit XML for CI systems: one test case per check per session.

CI servers (GitLab, Jenkins, GitHub test reporters) understand JUnit XML; a
capture becomes a test suite, each check a test case named after the check
and its session, with ``<failure>`` carrying the detail and the frames that
show the problem, and ``<skipped>`` for checks that had nothing to judge.
A capture that could not be read is a suite with one ``<error>`` test case
carrying the reason.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from typing import TYPE_CHECKING

from stacklab.analysis.sessions import CaptureAnalysis
from stacklab.analysis.unreadable import Unreadable
from stacklab.files import Output, write_atomically, write_output

if TYPE_CHECKING:
    from stacklab.analysis.expectations import Outcome


def junit_tree(
    analyses: list[CaptureAnalysis], unreadable: Sequence[Unreadable] = ()
) -> ET.ElementTree:
    """Build the ``<testsuites>`` document."""
    root = ET.Element("testsuites", name="stacklab verify")
    total = failures = skipped = 0
    for analysis in analyses:
        suite = ET.SubElement(root, "testsuite", name=analysis.path)
        fails = skips = 0
        for check in analysis.checks:
            case = ET.SubElement(
                suite, "testcase", classname=check.id, name=f"{check.id} [{check.session}]"
            )
            frames = ", ".join(str(f) for f in check.frames)
            if check.status == "fail":
                fails += 1
                failure = ET.SubElement(case, "failure", message=check.detail, type=check.id)
                failure.text = f"{check.detail}\nframes: {frames or '-'}"
            elif check.status == "skip":
                skips += 1
                ET.SubElement(case, "skipped", message=check.detail)
            else:
                out = ET.SubElement(case, "system-out")
                out.text = f"{check.detail}\nframes: {frames or '-'}"
        suite.set("tests", str(len(analysis.checks)))
        suite.set("failures", str(fails))
        suite.set("errors", "0")
        suite.set("skipped", str(skips))
        if analysis.warnings:
            err = ET.SubElement(suite, "system-err")
            err.text = "\n".join(analysis.warnings)
        total += len(analysis.checks)
        failures += fails
        skipped += skips
    for item in unreadable:
        suite = ET.SubElement(
            root, "testsuite", name=item.path, tests="1", failures="0", errors="1", skipped="0"
        )
        case = ET.SubElement(suite, "testcase", classname="capture.read", name="capture.read")
        error = ET.SubElement(case, "error", message=item.error, type="capture.read")
        error.text = item.error
    root.set("tests", str(total + len(unreadable)))
    root.set("failures", str(failures))
    root.set("errors", str(len(unreadable)))
    root.set("skipped", str(skipped))
    ET.indent(root)
    return ET.ElementTree(root)


def write_junit(
    analyses: list[CaptureAnalysis],
    path: str | os.PathLike[str] | Output,
    unreadable: Sequence[Unreadable] = (),
) -> None:
    """Write the JUnit XML file (raises OSError when it cannot be written).

    ``path`` may be an :class:`~stacklab.files.Output` already checked by the
    output policy (a FIFO, standard output); a plain path is written atomically.
    """
    tree = junit_tree(analyses, unreadable)

    def write(handle: object) -> None:
        tree.write(handle, encoding="utf-8", xml_declaration=True)  # type: ignore[arg-type]

    if isinstance(path, Output):
        write_output(path, write)
    else:
        write_atomically(path, write)


def expectations_tree(
    results: Sequence[tuple[str, Sequence[Outcome]]], unreadable: Sequence[Unreadable] = ()
) -> ET.ElementTree:
    """``stacklab verify --checks``: a suite per capture, a test case per expectation.

    A case is named after what it expects (``fact retransmissions >= 3``) and
    its line in the expectation file, so a CI page points at the line to fix.
    """
    root = ET.Element("testsuites", name="stacklab verify --checks")
    total = failures = 0
    for path, outcomes in results:
        suite = ET.SubElement(root, "testsuite", name=path)
        fails = 0
        for outcome in outcomes:
            case = ET.SubElement(
                suite,
                "testcase",
                classname=f"expect.{outcome.kind}",
                name=f"{outcome.kind} {outcome.name} (line {outcome.line})",
            )
            if outcome.ok:
                ET.SubElement(case, "system-out").text = outcome.detail
            else:
                fails += 1
                failure = ET.SubElement(
                    case, "failure", message=outcome.detail, type=f"expect.{outcome.kind}"
                )
                failure.text = f"expected {outcome.name}: {outcome.detail}"
        suite.set("tests", str(len(outcomes)))
        suite.set("failures", str(fails))
        suite.set("errors", "0")
        suite.set("skipped", "0")
        total += len(outcomes)
        failures += fails
    for item in unreadable:
        suite = ET.SubElement(
            root, "testsuite", name=item.path, tests="1", failures="0", errors="1", skipped="0"
        )
        case = ET.SubElement(suite, "testcase", classname="capture.read", name="capture.read")
        ET.SubElement(case, "error", message=item.error, type="capture.read").text = item.error
    root.set("tests", str(total + len(unreadable)))
    root.set("failures", str(failures))
    root.set("errors", str(len(unreadable)))
    root.set("skipped", "0")
    ET.indent(root)
    return ET.ElementTree(root)


def write_tree(tree: ET.ElementTree, path: str | os.PathLike[str] | Output) -> None:
    """Write any JUnit tree as :func:`write_junit` does (raises OSError)."""

    def write(handle: object) -> None:
        tree.write(handle, encoding="utf-8", xml_declaration=True)  # type: ignore[arg-type]

    if isinstance(path, Output):
        write_output(path, write)
    else:
        write_atomically(path, write)
