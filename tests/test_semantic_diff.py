"""``stacklab diff`` and ``stacklab verify --baseline``: captures compared as protocol events."""

from __future__ import annotations

import dataclasses
import json
import random
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from click.testing import CliRunner

from stacklab.analysis.semantic import Event, capture_events, event_options, first_divergence
from stacklab.analysis.sessions import VerifyOptions
from stacklab.analysis.synth import simulate_transfer, write_capture
from stacklab.analysis.verify import analyze_capture
from stacklab.cli import cli

from conftest import seed_capture

CONTENT = random.Random(1).randbytes(6000)


def _capture(
    path: Path,
    *,
    seed: int = 3,
    port: int = 50000,
    isn: int = 100,
    start: float = 1_700_000_000.0,
    delay: float = 0.005,
) -> Path:
    packets = simulate_transfer(
        CONTENT,
        rng=random.Random(seed),
        loss=0.1,
        rto=0.2,
        delay=delay,
        client=("10.0.0.2", port),
        isn=isn,
        start=start,
    )
    write_capture(path, packets, fmt="pcapng")
    return path


def _run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_ports_isns_and_clock_do_not_count(tmp_path: Path) -> None:
    a = _capture(tmp_path / "a.pcapng")
    b = _capture(tmp_path / "b.pcapng", port=40001, isn=7, start=1_800_000_000.0)
    assert a.read_bytes() != b.read_bytes()
    code, out, _ = _run("diff", str(a), str(b))
    assert code == 0 and out.startswith("same: 53 events agree"), out


def test_the_first_divergence_shows_frames_on_both_sides(tmp_path: Path) -> None:
    a = _capture(tmp_path / "a.pcapng")
    c = _capture(tmp_path / "c.pcapng", seed=4)  # other losses
    code, out, _ = _run("diff", str(a), str(c))
    assert code == 1
    lines = out.splitlines()
    assert lines[0] == "first divergence at event 13: different events"
    assert "  A session 1, frame 12, t=0.040 s: ACK 2" in lines
    assert "  B session 1, frame 12, t=0.032 s: ACK 3" in lines
    assert any(line.startswith("counts differ: ") and "resend 7 vs 0" in line for line in lines)
    code, out, _ = _run("diff", str(a), str(c), "--json")
    doc = json.loads(out)
    assert code == 1 and doc["same"] is False
    session, kind, value, time, frame = doc["divergence"]["a"]
    assert (session, kind, value, frame) == (1, "ack", 2, 12) and time == pytest.approx(
        0.04, abs=5e-4
    )


def test_times_count_beyond_the_tolerance(tmp_path: Path) -> None:
    a = _capture(tmp_path / "a.pcapng")
    slower = _capture(tmp_path / "slower.pcapng", delay=0.0052)
    assert _run("diff", str(a), str(slower))[0] == 0
    code, out, _ = _run("diff", str(a), str(slower), "--time-tolerance", "0")
    assert code == 1 and "times differ by 0.001 s (tolerance 0 s)" in out
    assert "  A session 1, frame 5, t=0.015 s: DATA chunk 1" in out


def test_diff_input_errors_exit_2(tmp_path: Path) -> None:
    a = _capture(tmp_path / "a.pcapng")
    (tmp_path / "junk").write_bytes(b"junk")
    code, _, err = _run("diff", str(a), str(tmp_path / "junk"))
    assert code == 2 and err.startswith("stacklab: error: ") and err.count("\n") == 1
    code, _, err = _run("diff", str(a), str(tmp_path / "missing.pcapng"))
    assert code == 2 and "no such file" in err


def test_a_shorter_story_diverges_where_it_ends() -> None:
    story = [Event(1, "data", n, n * 0.01, n + 4) for n in range(1, 6)]
    divergence = first_divergence(story, story[:3], 0.1)
    assert divergence is not None and divergence.index == 3 and divergence.b is None
    assert divergence.reason == "B has no more events of this kind"
    assert first_divergence(story, list(story), 0.0) is None


def test_a_data_and_an_ack_crossing_are_no_divergence() -> None:
    data, ack = Event(1, "data", 4, 0.0021, 24), Event(1, "ack", 2, 0.0022, 25)
    later = Event(1, "data", 5, 0.0030, 26)
    assert first_divergence([data, ack, later], [ack, data, later], 0.01) is None
    # ... but the same ACK with another value is.
    other = Event(1, "ack", 3, 0.0022, 24)
    divergence = first_divergence([data, ack, later], [other, data, later], 0.01)
    assert divergence is not None and (divergence.a, divergence.b) == (ack, other)
    assert divergence.index == 1


def test_baselines_written_then_compared(tmp_path: Path) -> None:
    folder = tmp_path / "baselines"
    a = _capture(tmp_path / "a.pcapng")
    code, _, err = _run("verify", "--baseline", str(folder), str(a))
    assert code == 2 and "no such baseline folder" in err
    code, out, _ = _run("verify", "--baseline", str(folder), "--update-baseline", str(a))
    assert code == 0 and "baseline written" in out
    stored = json.loads((folder / "a.pcapng.json").read_text())
    assert stored["format"] == "stacklab-baseline" and len(stored["events"]) == 53
    # The same transfer from another port, ISN and clock matches its baseline.
    (tmp_path / "again").mkdir()
    again = _capture(tmp_path / "again" / "a.pcapng", port=41000, isn=9, start=1.8e9)
    code, out, _ = _run("verify", "--baseline", str(folder), str(again), "--json")
    assert code == 0, out
    (check,) = [
        c for c in json.loads(out)["captures"][0]["checks"] if c["id"] == "capture.baseline"
    ]
    assert check["status"] == "pass" and "53 events" in check["detail"]


def test_a_changed_capture_fails_its_baseline(tmp_path: Path) -> None:
    folder = tmp_path / "baselines"
    a = _capture(tmp_path / "a.pcapng")
    assert _run("verify", "--baseline", str(folder), "--update-baseline", str(a))[0] == 0
    _capture(a, seed=4)  # the same name, other losses
    junit = tmp_path / "out.xml"
    code, out, _ = _run(
        "verify", "--baseline", str(folder), str(a), "--json", "--junit", str(junit)
    )
    assert code == 1
    (check,) = [
        c for c in json.loads(out)["captures"][0]["checks"] if c["id"] == "capture.baseline"
    ]
    assert check["status"] == "fail" and check["frames"] == [12]
    assert "event 13: different events: baseline session 1, frame 12" in check["detail"]
    failures = [
        c for c in ET.parse(junit).getroot().iter("testcase") if c.find("failure") is not None
    ]
    assert [c.get("classname") for c in failures] == ["capture.baseline"]
    # A capture with no baseline fails too; rewriting the baselines makes it pass.
    b = _capture(tmp_path / "b.pcapng")
    code, out, _ = _run("verify", "--baseline", str(folder), str(b))
    assert code == 1 and "no baseline" in out
    assert _run("verify", "--baseline", str(folder), "--update-baseline", str(a), str(b))[0] == 0
    assert _run("verify", "--baseline", str(folder), str(a), str(b))[0] == 0


def test_an_edited_tolerance_is_used_and_kept(tmp_path: Path) -> None:
    folder = tmp_path / "baselines"
    a = _capture(tmp_path / "a.pcapng")
    assert _run("verify", "--baseline", str(folder), "--update-baseline", str(a))[0] == 0
    path = folder / "a.pcapng.json"
    stored = json.loads(path.read_text())
    stored["time_tolerance"] = 0
    path.write_text(json.dumps(stored))
    _capture(a, delay=0.0052)
    code, out, _ = _run("verify", "--baseline", str(folder), str(a))
    assert code == 1 and "times differ" in out
    assert _run("verify", "--baseline", str(folder), "--update-baseline", str(a))[0] == 0
    assert json.loads(path.read_text())["time_tolerance"] == 0


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{", "not JSON"),
        ('{"format": "other"}', "not a stacklab baseline"),
        ('{"format": "stacklab-baseline", "version": 9}', "baseline version 9"),
        (
            '{"format": "stacklab-baseline", "version": 1, "checks": [], "events": [[1]]}',
            "not an event",
        ),
    ],
)
def test_bad_baselines_exit_2(tmp_path: Path, content: str, message: str) -> None:
    folder = tmp_path / "baselines"
    folder.mkdir()
    a = _capture(tmp_path / "a.pcapng")
    (folder / "a.pcapng.json").write_text(content)
    code, out, err = _run("verify", "--baseline", str(folder), str(a))
    assert code == 2 and message in err and "Traceback" not in out + err


def test_baseline_usage_errors(tmp_path: Path) -> None:
    a = _capture(tmp_path / "a.pcapng")
    code, _, err = _run("verify", "--update-baseline", str(a))
    assert code == 2 and "--update-baseline needs --baseline DIR" in err
    (tmp_path / "other").mkdir()
    b = _capture(tmp_path / "other" / "a.pcapng")
    code, _, err = _run("verify", "--baseline", str(tmp_path), "--update-baseline", str(a), str(b))
    assert code == 2 and "captures share a baseline name: a.pcapng" in err


def test_a_clipped_trace_says_so() -> None:
    options = event_options(VerifyOptions())
    whole = capture_events(analyze_capture(seed_capture("part4_rudp_loss_flow"), options))
    assert all(e.kind != "clipped" for e in whole)
    short = dataclasses.replace(options, trace_limit=3)
    clipped = capture_events(analyze_capture(seed_capture("part4_rudp_loss_flow"), short))
    (marker,) = [e for e in clipped if e.kind == "clipped"]
    assert marker.value == 6 and "only the first of them compared" in marker.text()
    divergence = first_divergence(whole, clipped, 1.0)
    assert divergence is not None
