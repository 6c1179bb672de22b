"""``stacklab verify --checks FILE`` and ``--init``: expectation files judged against captures."""

from __future__ import annotations

import json
import operator
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from stacklab.analysis.expectations import parse_comparison
from stacklab.analysis.expectfile import ExpectationError
from stacklab.cli import cli

from conftest import seed_capture

LOSS = seed_capture("part4_rudp_loss_flow")  # 3 timeouts resend chunk 1 at frames 23, 24, 25


def _run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["verify", *args])
    return result.exit_code, result.stdout, result.stderr


def _file(tmp_path: Path, text: str, name: str = "expect.yaml") -> Path:
    """An expectation file beside a copy of the loss capture (named ``loss.pcapng``)."""
    shutil.copyfile(LOSS, tmp_path / "loss.pcapng")
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


GOOD = """\
captures:
  loss.pcapng:
    checks:
      rudp.gbn: pass
      rudp.integrity: skip
      app.framing: absent
    facts:
      sessions: 1
      retransmissions: ">= 3"
      go_backs: 3
      window_max: "<= 5"
      chunks: "1..2"
    events:
      go_back.timeout: 3
      window_exceeded: false
      retransmission: true
    frames:
      - {frame: 23, retransmits: 1}
      - {frame: 24, note: go_back.timeout, data: 1}
      - {frame: 26, ack: 1, no_note: true}
      - {frame: 27, fin: true}
"""


def test_expectations_met_exit_0_and_each_is_a_junit_case(tmp_path: Path) -> None:
    junit = tmp_path / "out.xml"
    code, out, err = _run("--checks", str(_file(tmp_path, GOOD)), "--junit", str(junit))
    assert code == 0, out + err
    assert "PASS: 15 of 15 expectations met in 1 capture(s)" in out
    assert "expect.yaml:18: frame 23: DATA chunk 1, retransmission: chunk 1 resent" in out
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None and suite.get("tests") == "15" and suite.get("failures") == "0"
    names = [case.get("name") for case in suite.iter("testcase")]
    assert "fact retransmissions >= 3 (line 9)" in names
    assert "event window_exceeded == 0 (line 15)" in names
    assert "check rudp.gbn pass (line 4)" in names


def test_unmet_expectations_exit_1_with_their_lines(tmp_path: Path) -> None:
    text = GOOD.replace('retransmissions: ">= 3"', 'retransmissions: "> 3"').replace(
        "retransmits: 1", "retransmits: 2"
    )
    text = text.replace("rudp.gbn: pass", "rudp.gbn: fail")
    junit = tmp_path / "out.xml"
    code, out, _ = _run("--checks", str(_file(tmp_path, text)), "--junit", str(junit))
    assert code == 1
    assert "FAIL" in out and "expect.yaml:9: fact retransmissions > 3: is 3" in out
    assert "expect.yaml:18: frame 23: DATA chunk 2, retransmission: it is DATA 1" in out
    assert "expect.yaml:4: check rudp.gbn fail: pass 1" in out
    assert "FAIL: 12 of 15 expectations met" in out
    root = ET.parse(junit).getroot()
    assert root.get("failures") == "3"
    failed = [c.get("name") for c in root.iter("testcase") if c.find("failure") is not None]
    assert failed == [
        "check rudp.gbn fail (line 4)",
        "fact retransmissions > 3 (line 9)",
        "frame 23: DATA chunk 2, retransmission (line 18)",
    ]


def test_a_check_expected_to_fail_makes_a_failing_capture_pass(tmp_path: Path) -> None:
    capture = tmp_path / "old.pcapng"
    shutil.copyfile(seed_capture("part2_flow"), capture)
    assert _run(str(capture))[0] == 1  # verify alone fails it
    code, text, _ = _run("--init", str(capture))
    assert code == 0 and ": fail\n" in text  # the draft states the failing check
    path = tmp_path / "old.yaml"
    path.write_text(text, encoding="utf-8")
    code, out, err = _run("--checks", str(path))
    assert code == 0, out + err


def test_init_drafts_a_file_that_passes_on_its_capture(tmp_path: Path) -> None:
    shutil.copyfile(LOSS, tmp_path / "loss.pcapng")
    code, text, _ = _run("--init", str(tmp_path / "loss.pcapng"))
    assert code == 0
    assert "go_backs: 3" in text and "- {frame: 23, retransmits: 1, note: go_back.timeout}" in text
    path = tmp_path / "drafted.yaml"
    path.write_text(text, encoding="utf-8")
    code, out, err = _run("--checks", str(path), "--json")
    assert code == 0, out + err
    doc = json.loads(out)
    (capture,) = doc["captures"]
    assert doc["passed"] and capture["passed"] and len(capture["expectations"]) > 40
    # Changing one number breaks exactly that expectation.
    path.write_text(text.replace("go_backs: 3", "go_backs: 4"), encoding="utf-8")
    code, out, _ = _run("--checks", str(path), "--json")
    broken = [e for e in json.loads(out)["captures"][0]["expectations"] if not e["ok"]]
    assert code == 1 and [e["name"] for e in broken] == ["go_backs == 4"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            GOOD.replace("    facts:\n", "    facts:\n      go_backs: 2\n"),
            "expect.yaml:11: duplicated key 'go_backs' (first on line 8)",
        ),
        (
            GOOD.replace("      sessions: 1\n", "      sesions: 1\n"),
            "expect.yaml:8: unknown key 'sesions' in 'facts'",
        ),
        (
            GOOD.replace("    events:\n", "    evnts:\n"),
            "expect.yaml:13: unknown key 'evnts' in the entry of 'loss.pcapng'",
        ),
        (
            GOOD.replace("go_back.timeout: 3", "go_back.timout: 3"),
            "expect.yaml:14: unknown key 'go_back.timout'",
        ),
        (
            GOOD.replace("rudp.gbn: pass", "rudp.gbn: passes"),
            "expect.yaml:4: rudp.gbn: 'passes' is not one of",
        ),
        (
            GOOD.replace('">= 3"', '"at least 3"'),
            "expect.yaml:9: retransmissions: 'at least 3' is not a number",
        ),
        (
            GOOD.replace("{frame: 23, retransmits: 1}", "{frame: 23, retransmit: 1}"),
            "expect.yaml:18: unknown key 'retransmit' in a frame",
        ),
        (
            GOOD.replace("{frame: 23, retransmits: 1}", "{retransmits: 1}"),
            "expect.yaml:18: a frame expectation needs 'frame'",
        ),
        (
            GOOD + "  loss.pcapng:\n    facts: {}\n",
            "duplicated key 'loss.pcapng' (first on line 2)",
        ),
        ("captures: [\n", "expect.yaml:2: not valid YAML"),
        ("other: 1\n", "expect.yaml:1: unknown key 'other' in the file"),
    ],
)
def test_bad_files_exit_2_naming_the_line(tmp_path: Path, text: str, message: str) -> None:
    code, out, err = _run("--checks", str(_file(tmp_path, text)))
    assert code == 2
    assert message in err, err
    assert "Traceback" not in err + out and err.count("\n") == 1


TOML = """\
[captures."loss.pcapng".checks]
"rudp.handshake" = "pass"

[captures."loss.pcapng".facts]
go_backs = 3
retransmissions = ">= 3"

[[captures."loss.pcapng".frames]]
frame = 25
retransmits = 1
"""


def test_toml_files(tmp_path: Path) -> None:
    code, out, err = _run("--checks", str(_file(tmp_path, TOML, "expect.toml")))
    assert code == 0, out + err
    assert "expect.toml:6: fact retransmissions >= 3: is 3" in out
    assert "expect.toml:9: frame 25: DATA chunk 1, retransmission" in out
    code, _, err = _run(
        "--checks", str(_file(tmp_path, TOML.replace("go_backs", "go_bakcs"), "expect.toml"))
    )
    assert code == 2 and "expect.toml:5: unknown key 'go_bakcs' in 'facts'" in err
    code, _, err = _run(
        "--checks",
        str(_file(tmp_path, TOML.replace("= 3\n", "= 3\ngo_backs = 4\n"), "expect.toml")),
    )
    assert code == 2 and "expect.toml: not valid TOML" in err and "line 6" in err


def test_captures_on_the_command_line_pick_entries(tmp_path: Path) -> None:
    path = _file(tmp_path, GOOD)
    assert _run("--checks", str(path), str(tmp_path / "loss.pcapng"))[0] == 0
    code, _, err = _run("--checks", str(path), str(seed_capture("part2_flow")))
    assert code == 2 and "names no entry for" in err
    code, _, err = _run("--checks", str(tmp_path / "missing.yaml"))
    assert code == 2 and "cannot read the expectation file" in err
    code, _, err = _run("--init", "--checks", str(path), str(tmp_path / "loss.pcapng"))
    assert code == 2 and "not both" in err


def test_an_unreadable_capture_is_an_error_of_its_own(tmp_path: Path) -> None:
    text = GOOD + "  junk.pcapng:\n    facts: {sessions: 0}\n"
    (tmp_path / "junk.pcapng").write_bytes(b"not a capture at all")
    code, out, err = _run("--checks", str(_file(tmp_path, text)))
    assert code == 1
    assert "junk.pcapng" in err and "1 unreadable" in out


@given(
    st.sampled_from(["==", "!=", ">=", "<=", ">", "<"]),
    st.integers(-1000, 1000),
    st.integers(-1000, 1000),
)
def test_comparisons_follow_their_operator(op: str, bound: int, actual: int) -> None:
    python = {"==": operator.eq, "!=": operator.ne, ">=": operator.ge, "<=": operator.le}
    python |= {">": operator.gt, "<": operator.lt}
    assert parse_comparison(f"{op} {bound}", "x").holds(actual) == python[op](actual, bound)
    low, high = sorted((bound, actual))
    assert parse_comparison(f"{low}..{high}", "x").holds(actual)
    assert not parse_comparison(f"{low}..{high}", "x").holds(high + 1)


@pytest.mark.parametrize("bad", ["", ">=", "3..1", ">= 1..2", "nan", True, [1]])
def test_bad_comparisons_are_refused(bad: object) -> None:
    with pytest.raises(ExpectationError, match=r"^where: "):
        parse_comparison(bad, "where")


def test_an_entry_may_set_the_window_limit(tmp_path: Path) -> None:
    import random

    from stacklab.analysis.synth import simulate_transfer, write_capture

    packets = simulate_transfer(
        random.Random(5).randbytes(20_000), rng=random.Random(5), max_window=8, delay=0.002
    )
    write_capture(tmp_path / "wide.pcapng", packets, fmt="pcapng")
    text = "captures:\n  wide.pcapng:\n    checks: {rudp.gbn: pass}\n    facts: {max_flight: 8}\n"
    path = tmp_path / "wide.yaml"
    path.write_text(text, encoding="utf-8")
    code, out, _ = _run("--checks", str(path))
    assert code == 1 and "wide.yaml:3: check rudp.gbn pass: fail 1" in out  # 8 > the original 5
    path.write_text(text + "    max_window: 8\n", encoding="utf-8")
    code, out, err = _run("--checks", str(path))
    assert code == 0, out + err
    path.write_text(text + "    max_window: 0\n", encoding="utf-8")
    code, _, err = _run("--checks", str(path))
    assert code == 2 and "wide.yaml:5: expected a whole number >= 1, not 0" in err


def test_init_of_an_unreadable_capture_exits_2(tmp_path: Path) -> None:
    (tmp_path / "junk.pcapng").write_bytes(b"junk")
    code, out, err = _run("--init", str(tmp_path / "junk.pcapng"))
    assert code == 2 and out == "" and err.startswith("stacklab: error: ")
