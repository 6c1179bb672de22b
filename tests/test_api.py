"""The Python API at the top level: ``stacklab.verify``, ``decode``, ``series``."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import stacklab
from stacklab.analysis.live import StreamAnalysis, analyze_stream, live_rows
from stacklab.analysis.pcapio import CaptureReader
from stacklab.analysis.sessions import VerifyOptions
from stacklab.analysis.verify import analyze_capture

from conftest import REPO, SEED_NAMES, seed_capture

REFERENCE = sorted((REPO / "captures").glob("*.pcapng"))


def test_import_is_light_and_exports_are_typed_functions() -> None:
    code = (
        "import sys, stacklab; "
        "assert 'scapy' not in sys.modules and 'matplotlib' not in sys.modules; "
        "a = stacklab.verify(sys.argv[1]); "
        "assert 'scapy' not in sys.modules and 'matplotlib' not in sys.modules; "
        "print(a.passed)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(seed_capture("part4_rudp_loss_flow"))],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "True"
    assert {"verify", "decode", "series", "CaptureAnalysis", "VerifyOptions"} <= set(dir(stacklab))
    with pytest.raises(AttributeError):
        stacklab.no_such_name  # noqa: B018


def test_verify_is_the_cli_analysis() -> None:
    path = seed_capture("part4_rudp_loss_flow")
    analysis = stacklab.verify(path)
    assert analysis.to_json() == analyze_capture(path).to_json()
    assert analysis.passed
    assert [s.key for s in analysis.sessions] == ["127.0.0.1:58314->127.0.0.3:2122"]
    assert analysis.sessions[0].retransmissions == 3
    assert [c.status for c in analysis.check("rudp.gbn")] == ["pass"]
    assert analysis.rule_breaks == []
    # Per-packet findings: each resend is a retransmission and a go-back by timeout.
    assert [(f.frame, f.kind, f.severity) for f in analysis.findings[:2]] == [
        (23, "retransmission", "note"),
        (23, "go_back.timeout", "note"),
    ]
    assert {f.severity for f in analysis.findings} == {"note"}
    assert "PASS: 7 passed, 0 failed, 1 skipped" in repr(analysis)


def test_expect_is_validated_with_the_cli_words() -> None:
    path = seed_capture("part2_flow")
    with pytest.raises(ValueError, match=r"unknown check 'handshak' in --expect \(known: aimd"):
        stacklab.verify(path, expect={"handshak"})
    with pytest.raises(ValueError, match="unknown check 'handshak'"):
        VerifyOptions(expect=frozenset({"handshak"}))
    # short names, full ids and a comma list mean the same
    assert VerifyOptions(expect=frozenset({"handshake"})).expect == {"rudp.handshake"}
    assert VerifyOptions(expect="handshake,dns").expect == {"rudp.handshake", "dns.answer"}
    narrowed = stacklab.verify(path, expect="handshake")
    plain = stacklab.verify(path)
    assert narrowed.passed and not plain.passed  # part2 has only a handshake


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"ports": {"rudpp": 1}}, "unknown port name 'rudpp'"),
        ({"ports": {"rudp": 0}}, "invalid rudp port 0"),
        ({"max_window": 0}, "invalid max_window 0"),
        ({"min_rto": -1.0}, "invalid min_rto -1.0"),
        ({"jobs": 0}, "invalid jobs 0"),
    ],
)
def test_bad_options_raise_one_clear_error(kwargs: dict[str, object], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        stacklab.verify(seed_capture("part3_rudp_clean_flow"), **kwargs)  # type: ignore[arg-type]


def test_ports_move_the_protocols() -> None:
    path = seed_capture("part4_rudp_loss_flow")
    moved = stacklab.verify(path, ports={"rudp": 9999})
    assert moved.sessions == []


def test_a_failing_capture_names_its_findings_and_shows_in_html(tmp_path: Path) -> None:
    analysis = stacklab.verify(seed_capture("part2_flow"))
    assert not analysis.passed
    html = analysis._repr_html_()
    assert "FAIL" in html and "rudp.delivery" in html and "<table>" in html
    assert "&lt;" not in analysis.path  # the path is shown escaped, not altered


def test_decode_numbers_frames_from_one_and_validates_only() -> None:
    path = seed_capture("part4_rudp_loss_flow")
    packets = list(stacklab.decode(path, only="rudp"))
    assert [p.frame for p in packets[:2]] == [5, 6]
    assert packets[0].summary() == "RUDP S seq=100 ack=0 len=0"
    assert {p.proto for p in stacklab.decode(path, only={"dhcp", "dns"})} == {"dhcp", "dns"}
    with pytest.raises(ValueError, match="unknown protocol 'rdup'"):
        stacklab.decode(path, only="rdup")
    with pytest.raises(stacklab.CaptureError, match="no such file"):
        stacklab.decode(path.with_name("missing.pcapng"))


def test_series_attaches_points_and_plots_with_the_session_defaults() -> None:
    analysis = stacklab.series(seed_capture("part4_rudp_loss_flow"))
    session = analysis.sessions[0]
    assert session.points is not None
    assert [(chunk, retx) for _t, chunk, retx in session.points.data] == [
        (1, False),
        (1, True),
        (1, True),
        (1, True),
    ]
    ax = session.plot_window()
    assert ax.get_ylim()[1] == pytest.approx(5 + 1.5)  # the original window of 5 as ceiling
    assert "window" in ax.get_title()
    ax = session.plot_timeseq()
    assert ax.get_xlabel() == "time since the SYN (s)"


def test_plot_without_points_says_how_to_get_them() -> None:
    session = stacklab.verify(seed_capture("part4_rudp_loss_flow")).sessions[0]
    with pytest.raises(ValueError, match=r"stacklab\.series\(path\)"):
        session.plot_window()


def test_negotiated_window_is_the_plot_ceiling() -> None:
    analysis = stacklab.series(REPO / "captures" / "rudp-negotiated.pcapng")
    session = analysis.sessions[0]
    assert session.points is not None and session.points.window_limit == session.window_limit
    ax = session.plot_window()
    labels = [text.get_text() for text in ax.get_legend().get_texts()]
    assert any(f"maximum window ({session.window_limit}" in label for label in labels)


# -- the streaming analysis (stacklab watch's engine) ---------------------------------


def _all_captures() -> list[Path]:
    return [seed_capture(name) for name in SEED_NAMES] + REFERENCE


def test_stream_analysis_equals_verify_on_every_capture() -> None:
    for path in _all_captures():
        with open(path, "rb") as handle:
            streamed = analyze_stream(handle, name=str(path))
        assert streamed.to_json() == analyze_capture(path).to_json(), path


def test_stream_through_a_pipe_in_small_pieces_gives_each_frame_when_whole() -> None:
    """Frames come out while the writer still writes: nothing waits for a full block."""
    path = REPO / "captures" / "rudp-loss.pcapng"
    data = path.read_bytes()
    read_fd, write_fd = os.pipe()
    with CaptureReader(path) as reader:
        total = sum(1 for _ in reader)
    fed = threading.Event()
    seen: list[int] = []
    early: list[bool] = []

    def writer() -> None:
        with os.fdopen(write_fd, "wb", buffering=0) as out:
            half = len(data) // 2
            for start in range(0, half, 7):
                out.write(data[start : min(start + 7, half)])
            early.append(fed.wait(timeout=30))  # frames must come before the rest is written
            out.write(data[half:])

    thread = threading.Thread(target=writer)
    thread.start()

    def on_frame(analysis: StreamAnalysis, frame: object) -> None:
        seen.append(analysis.frames)
        if not fed.is_set():
            live_rows(analysis.rudp)  # the live table reads the trackers between frames
        if analysis.frames >= 10:
            fed.set()

    with os.fdopen(read_fd, "rb") as stream:
        streamed = analyze_stream(stream, name=str(path), on_frame=on_frame)
    thread.join()
    assert early == [True]
    assert seen == list(range(1, total + 1))
    assert streamed.to_json() == analyze_capture(path).to_json()


def test_live_rows_show_a_session_in_flight() -> None:
    analysis = StreamAnalysis()
    rows_seen = []
    with CaptureReader(REPO / "captures" / "rudp-loss.pcapng") as reader:
        for frame in reader:
            analysis.feed(frame)
            rows_seen.append(live_rows(analysis.rudp))
    states = {row.state for rows in rows_seen for row in rows}
    assert {"handshake", "transfer"} <= states
    last = rows_seen[-1][0]
    final = analysis.finish("x").sessions[0]
    assert (last.retransmissions, last.go_backs) == (final.retransmissions, final.go_backs)
    assert set(last.checks.values()) == {"ok so far"}


def test_a_stream_that_is_not_a_capture_is_one_clear_error() -> None:
    read_fd, write_fd = os.pipe()
    os.write(write_fd, b"hello, not a capture")
    os.close(write_fd)
    with (
        os.fdopen(read_fd, "rb") as stream,
        pytest.raises(stacklab.CaptureError, match="not a pcap"),
    ):
        analyze_stream(stream, name="<pipe>")


def test_window_figure_takes_its_ceiling_from_the_session() -> None:
    from stacklab.analysis import plots

    analysis = stacklab.series(REPO / "captures" / "rudp-negotiated.pcapng")
    points = analysis.sessions[0].points
    assert points is not None
    fig = plots.window_figure(points, "negotiated")  # no max_window needed
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert any(f"maximum window ({points.window_limit}" in label for label in labels)
    plots.close(fig)
