"""``stacklab plot``: the image files, their names, and one-line errors."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from click.testing import CliRunner

from stacklab.analysis.plots import window_figure
from stacklab.analysis.series import SessionSeries
from stacklab.analysis.synth import simulate_transfer, write_capture
from stacklab.cli import cli

from conftest import seed_capture


def _colours(png: Path) -> tuple[int, float]:
    """Distinct colours and the share of pure white pixels of a PNG."""
    import numpy as np
    from matplotlib import image

    rgb = (image.imread(png)[:, :, :3] * 255).round().astype(np.uint32)
    packed = (rgb[:, :, 0] << 16) | (rgb[:, :, 1] << 8) | rgb[:, :, 2]
    white = float(np.mean(packed == 0xFFFFFF))
    return len(np.unique(packed)), white


def test_plot_part4_writes_three_readable_pngs(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli, ["plot", str(seed_capture("part4_rudp_loss_flow")), "-o", str(tmp_path / "out")]
    )
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == [
        "part4_rudp_loss_flow.ladder.png",
        "part4_rudp_loss_flow.s1-127.0.0.1-58314.timeseq.png",
        "part4_rudp_loss_flow.s1-127.0.0.1-58314.window.png",
    ]
    assert "4 DATA (3 retransmitted)" in result.output and "3 go-backs" in result.output
    for name in names:
        png = tmp_path / "out" / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        colours, white = _colours(png)
        assert colours > 20 and white < 0.99, (name, colours, white)


def test_plot_svg_and_sender_window(tmp_path: Path) -> None:
    packets = simulate_transfer(
        random.Random(2).randbytes(20_000), rng=random.Random(2), loss=0.1, rto=0.2, delay=0.01
    )
    capture = tmp_path / "lossy.pcap"
    write_capture(capture, packets)
    events = tmp_path / "events.jsonl"
    events.write_text(
        "\n".join(
            json.dumps({"time": 10.0 + i / 10, "name": "recovery:window_changed", "data": d})
            for i, d in enumerate(
                [{"old": 1, "new": 2}, {"old": 2, "new": 4}, {"old": 4, "new": 2}]
            )
        )
    )
    result = CliRunner().invoke(
        cli,
        ["plot", str(capture), "-o", str(tmp_path), "--format", "svg", "--events", str(events)],
    )
    assert result.exit_code == 0, result.output
    window = (tmp_path / "lossy.s1-127.0.0.1-50000.window.svg").read_text()
    assert window.lstrip().startswith("<?xml") and "</svg>" in window
    assert "sender" in window  # the legend entry of the overlay
    timeseq = (tmp_path / "lossy.s1-127.0.0.1-50000.timeseq.svg").read_text()
    assert "retransmission" in timeseq
    assert not list(tmp_path.glob(".plot-*"))  # no temporary file left behind


def test_plot_capture_without_rudp_draws_only_the_ladder(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["plot", str(seed_capture("part1_flow")), "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert [p.name for p in tmp_path.iterdir()] == ["part1_flow.ladder.png"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["/nonexistent/x.pcap"], "/nonexistent/x.pcap: no such file"),
        (["JUNK"], "not a pcap or pcapng capture file"),
        (["DIR"], "is a directory, not a capture file"),
        (["CAPTURE", "--events", "/nonexistent/e.jsonl"], "cannot read the events log"),
        (["CAPTURE", "--rudp-port", "5353"], "must all differ"),
        (["CAPTURE", "-o", "FILE"], "cannot create the folder"),
    ],
)
def test_plot_bad_input_is_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    junk = tmp_path / "junk.pcapng"
    junk.write_bytes(b"\x00" * 64)
    a_file = tmp_path / "file"
    a_file.write_text("x")
    subst = {
        "JUNK": str(junk),
        "DIR": str(tmp_path),
        "CAPTURE": str(seed_capture("part2_flow")),
        "FILE": str(a_file),
    }
    result = CliRunner().invoke(cli, ["plot", *[subst.get(a, a) for a in args]])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert result.output.startswith("stacklab: error: ") and result.output.count("\n") == 1


@pytest.mark.parametrize(("max_window", "drawn"), [(5, True), (256, False)])
def test_a_far_ceiling_is_named_not_drawn(max_window: int, drawn: bool) -> None:
    series = SessionSeries("c->s", 0.0, 1)
    series.flight = [(0.1, 1), (0.2, 2), (0.3, 4)]
    series.window = [(0.1, 2), (0.2, 3), (0.3, 5)]
    fig = window_figure(series, "w", max_window)
    (ax,) = fig.axes
    ceilings = [line for line in ax.get_lines() if list(line.get_ydata()) == [max_window] * 2]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    if drawn:
        assert ceilings and ax.get_ylim()[1] > max_window
        assert f"maximum window ({max_window})" in labels
    else:
        # the curves keep the height of the chart: the ceiling is only named
        assert not ceilings and ax.get_ylim()[1] < 10
        assert f"maximum window ({max_window}, above the chart)" in labels


def test_time_sequence_axis_is_zoomed_to_the_data() -> None:
    from stacklab.analysis.plots import close, time_sequence_figure
    from stacklab.analysis.series import collect_series

    (series,) = collect_series(seed_capture("part4_rudp_loss_flow")).sessions
    first = min(t for t, _c, _r in series.data)
    assert first > 0.09  # the handshake and the fetch come first
    fig = time_sequence_figure(series, "part4")
    left, right = fig.axes[0].get_xlim()
    close(fig)
    assert series.fin is not None
    assert 0 < left <= first and right >= series.fin
    assert left > first - 0.2  # the axis starts at the DATA, not at the SYN


def test_plot_session_picks_one_client(tmp_path: Path) -> None:
    capture = str(seed_capture("part4_rudp_loss_flow"))
    picked = CliRunner().invoke(
        cli, ["plot", capture, "-o", str(tmp_path), "--session", "127.0.0.1"]
    )
    assert picked.exit_code == 0, picked.output
    assert len(list(tmp_path.glob("*.timeseq.png"))) == 1
    missing = CliRunner().invoke(
        cli, ["plot", capture, "-o", str(tmp_path), "--session", "10.0.0.1:1"]
    )
    assert missing.exit_code == 2
    assert "no RUDP session of 10.0.0.1:1 (sessions: 127.0.0.1:58314)" in missing.output
