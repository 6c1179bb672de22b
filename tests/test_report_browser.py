"""The HTML report in a real browser: headless Chromium renders the charts and the checks.

Chromium comes from the system (Debian's ``chromium``; ``make test`` installs
it through ``scripts/ensure-tools.sh`` when run as root).  Without it these
tests are skipped with the reason.  The browser runs with networking features
off and its own profile folder, on a ``file://`` URL: what it shows is what
an offline reader sees.
"""

from __future__ import annotations

import random
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from stacklab.analysis.report import ReportOptions, write_report
from stacklab.analysis.synth import dhcp_exchange, dns_exchange, simulate_transfer, write_capture

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(180),
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="headless Chromium not installed (run scripts/ensure-tools.sh as root, "
        "or apt-get install chromium)",
    ),
]


def _chromium(profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--window-size=1280,2000",
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The report of a lossy transfer (with DHCP and DNS before it), written to disk."""
    folder = tmp_path_factory.mktemp("browser")
    packets = dhcp_exchange(1_699_999_999.0) + dns_exchange(1_699_999_999.5)
    packets += simulate_transfer(
        random.Random(11).randbytes(80_000),
        rng=random.Random(11),
        loss=0.06,
        rto=0.2,
        delay=0.02,
        max_window=8,
    )
    capture = folder / "lossy.pcapng"
    write_capture(capture, packets, fmt="pcapng")
    out = folder / "lossy.html"
    write_report(capture, out, ReportOptions(max_window=8))
    return out


def test_dom_shows_charts_checks_and_paged_table(page: Path, tmp_path: Path) -> None:
    result = _chromium(tmp_path / "profile", "--dump-dom", page.as_uri())
    dom = result.stdout
    assert result.returncode == 0 and "</html>" in dom, result.stderr[-2000:]
    assert len(re.findall(r"<svg\b", dom)) == 3  # time-sequence, window, ladder
    assert 'id="checks-table"' in dom
    assert len(re.findall(r'<tr class="pass">', dom)) >= 7
    assert "R: retransmission (" in dom and "AIMD bound (verifier's model)" in dom
    # The inline script ran: the table is paged (200 rows a page).
    label = re.search(r'id="page-label">page 1 of (\d+)<', dom)
    assert label is not None and int(label.group(1)) >= 2
    rows = re.findall(r'<tr id="f\d+"( style="display: none;")?>', dom)
    assert rows[:200] == [""] * 200 and all(rows[200:])


def test_screenshot_is_not_blank(page: Path, tmp_path: Path) -> None:
    import numpy as np
    from matplotlib import image

    shot = tmp_path / "shot.png"
    result = _chromium(tmp_path / "profile", f"--screenshot={shot}", page.as_uri())
    assert shot.is_file(), result.stderr[-2000:]
    rgb = (image.imread(shot)[:, :, :3] * 255).round().astype(np.int32)
    assert rgb.shape[:2] == (2000, 1280)
    packed = (rgb[:, :, 0] << 16) | (rgb[:, :, 1] << 8) | rgb[:, :, 2]
    colours = len(np.unique(packed))
    white = float(np.mean(np.all(rgb >= 250, axis=2)))
    assert colours > 100, colours  # text, header, charts: many colours
    assert white < 0.9, white
    # The charts' retransmission red is on screen (the time-sequence graph is in the first 2000 px).
    red = np.all(np.abs(rgb - np.array([214, 39, 40])) < 30, axis=2)
    assert int(red.sum()) > 50
