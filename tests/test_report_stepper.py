"""The report's step-through: the states it computes, and stepping them in a real headless browser.

The browser is the system Chromium driven by Playwright (its own browser
download is never used: ``executable_path`` points at the system binary),
on a ``file://`` URL with the network off: what it shows is what an offline
reader sees.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from stacklab.analysis.report import ReportOptions, write_report
from stacklab.analysis.sessions import CaptureAnalysis, VerifyOptions
from stacklab.analysis.stepthrough import session_steps, stepper_section
from stacklab.analysis.synth import merge, simulate_transfer, write_capture
from stacklab.analysis.verify import analyze_capture

from conftest import seed_capture

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

LOSS = seed_capture("part4_rudp_loss_flow")  # chunk 1 resent at frames 23, 24, 25 after timeouts
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _analysis() -> CaptureAnalysis:
    return analyze_capture(LOSS, VerifyOptions(keep_notes=True, trace_sessions=1))


def test_steps_follow_go_back_n() -> None:
    (facts,) = _analysis().rudp_sessions
    steps = session_steps(facts)
    assert [(s.frame, s.packet) for s in steps] == [
        (20, "DATA 1"),
        (23, "DATA 1"),
        (24, "DATA 1"),
        (25, "DATA 1"),
        (26, "ACK 1"),
        (27, "FIN"),
    ]
    first, resent, ack, fin = steps[0], steps[1], steps[4], steps[5]
    assert (first.base, first.next, first.expected) == (1, 2, 1)
    assert resent.notes == ("chunk 1 resent", "go-back to chunk 1 (timeout)")
    assert first.notes == ()
    # The ACK slides the base and tells what the receiver expects next.
    assert (ack.base, ack.next, ack.expected, ack.window) == (2, 2, 2, (1, 2))
    assert fin.to_client and not ack.to_client and fin.packet == "FIN"


def test_section_embeds_the_steps_as_json_that_cannot_close_the_script() -> None:
    analysis = _analysis()
    analysis.rudp_sessions[0].notes[0].text = "</script><b>x"
    section = stepper_section(analysis)
    payload = re.search(r'<script type="application/json" id="step-data">(.*?)</script>', section)
    assert payload is not None
    data = json.loads(payload.group(1))
    (session,) = data["sessions"]
    assert len(session["steps"]) == 6 and session["steps"][1]["notes"][0] == "</script><b>x"
    assert 'id="step-session" aria-label="session" hidden' in section  # one session: no choice
    assert "<b>x" not in section and section.count("</script>") == 1
    analysis.rudp_sessions[0].trace.clear()
    assert stepper_section(analysis) == ""


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """The system Chromium under Playwright, for the whole module (one driver at a time)."""
    if CHROMIUM is None:
        pytest.skip("headless Chromium not installed (scripts/ensure-tools.sh installs it)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as driver:
        chromium = driver.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def browser_page(browser: Browser, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Page]:
    out = tmp_path_factory.mktemp("stepper") / "loss.html"
    write_report(LOSS, out, ReportOptions())
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(out.as_uri())
    page.wait_for_selector("#step-label:has-text('step 1 of 6')")
    yield page
    page.close()
    assert errors == []


def _state(page: Page) -> dict[str, str]:
    names = ("frame", "packet", "base", "next-chunk", "window", "expected", "notes")
    return {name: page.inner_text(f"#step-{name}") for name in names}


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_stepping_forward_changes_the_state_shown(browser_page: Page) -> None:
    page = browser_page
    page.keyboard.press("Home")
    start = _state(page)
    assert start["frame"] == "20" and start["packet"].startswith("DATA 1")
    assert start["base"] == "chunk 1" and start["next-chunk"] == "chunk 2 (1 in flight)"
    assert start["notes"] == "nothing noted"
    page.click("#step-next")
    after = _state(page)
    assert after != start and after["frame"] == "23"
    assert after["notes"] == "chunk 1 resent; go-back to chunk 1 (timeout)"
    assert page.inner_text("#step-label") == "step 2 of 6"
    current = page.inner_text("#step-rows tr.current")
    assert current.split()[0] == "23"
    # Keys move too: three more steps reach the ACK, which slides the base.
    for _ in range(3):
        page.keyboard.press("ArrowRight")
    ack = _state(page)
    assert ack["frame"] == "26" and ack["packet"].startswith("ACK 1")
    assert ack["base"] == "chunk 2" and ack["expected"] == "chunk 2" and ack["window"] == "1..2"
    page.keyboard.press("ArrowLeft")
    assert _state(page)["frame"] == "25"
    page.click("#step-last")
    assert _state(page)["frame"] == "27"
    page.click("#step-next")
    assert _state(page)["frame"] == "27"  # the last step stays the last


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_second_session_is_chosen_from_the_list(browser: Browser, tmp_path: Path) -> None:
    content = random.Random(2).randbytes(3000)
    first = simulate_transfer(content, rng=random.Random(1), client=("10.0.0.2", 50000))
    second = simulate_transfer(
        content, rng=random.Random(1), client=("10.0.0.9", 50001), start=1_700_000_010.0
    )
    capture = tmp_path / "two.pcapng"
    write_capture(capture, list(merge([first, second])), fmt="pcapng")
    out = tmp_path / "two.html"
    write_report(capture, out, ReportOptions())
    page = browser.new_page()
    try:
        page.goto(out.as_uri())
        assert page.inner_text("#step-client") == "client 10.0.0.2:50000"
        frame = int(page.inner_text("#step-frame"))
        page.select_option("#step-session", "1")
        assert page.inner_text("#step-client") == "client 10.0.0.9:50001"
        assert int(page.inner_text("#step-frame")) > frame
        assert page.inner_text("#step-label").startswith("step 1 of ")
        page.keyboard.press("ArrowRight")
        assert page.inner_text("#step-label").startswith("step 2 of ")
    finally:
        page.close()
