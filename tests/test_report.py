"""``stacklab report``: one self-contained HTML page (content, escaping, caps, the command)."""

from __future__ import annotations

import random
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from click.testing import CliRunner

from stacklab.analysis.report import ReportOptions, build_report, write_report
from stacklab.analysis.synth import (
    Conversation,
    app_fetch,
    benchmark_stream,
    dns_exchange,
    simulate_transfer,
    write_capture,
)
from stacklab.cli import cli
from stacklab.wire import encode_frame

from conftest import seed_capture


class _Page(HTMLParser):
    """Collect what the offline and structure checks need from a page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: dict[str, int] = {}
        self.attrs: list[tuple[str, str, str]] = []
        self.ids: set[str] = set()
        self.styles: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags[tag] = self.tags.get(tag, 0) + 1
        for name, value in attrs:
            self.attrs.append((tag, name, value or ""))
            if name == "id" and value:
                self.ids.add(value)
        self._in_style = tag == "style"

    def handle_endtag(self, tag: str) -> None:
        self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.styles.append(data)


def _parse(html: str) -> _Page:
    page = _Page()
    page.feed(html)
    page.close()
    return page


def assert_offline(html: str) -> None:
    """Nothing in the page can make a browser fetch anything."""
    page = _parse(html)
    for tag, name, value in page.attrs:
        assert "://" not in value and not value.startswith("//"), (tag, name, value)
        if name in ("src", "href", "xlink:href", "action", "data"):
            assert value.startswith("#") or value.startswith("data:"), (tag, name, value)
    assert "link" not in page.tags and "iframe" not in page.tags and "img" not in page.tags
    css = "".join(page.styles)
    assert "url(" not in css and "@import" not in css
    assert not re.search(r"<script[^>]*\bsrc=", html)


def test_part4_page_shows_checks_charts_ladder_and_packets() -> None:
    report = build_report(seed_capture("part4_rudp_loss_flow"))
    html = report.html
    page = _parse(html)
    assert_offline(html)
    assert {"summary", "checks-table", "session-1", "ladder", "packets"} <= page.ids
    assert page.tags["svg"] == 3  # time-sequence, window, ladder
    assert '<span class="verdict pass">PASS</span>' in html
    assert html.count('<tr class="pass">') == 7
    assert "R: retransmission (3)" in html and "timeout → go-back" in html
    assert html.count('<tr id="f') == 28 == report.rows
    assert '<a href="#f5">5</a>' in html  # handshake frames link to the table
    assert "D seq=1 R" in html  # the ladder's retransmissions
    assert "maximum window (5)" in html


def test_failures_come_first_with_frames() -> None:
    html = build_report(seed_capture("part2_flow")).html
    rows = re.findall(r'<tr class="(pass|fail|skip)">', html)
    assert rows[0] == "fail" and "pass" in rows
    assert rows == sorted(rows, key=lambda s: s != "fail")
    assert '<span class="verdict fail">FAIL</span>' in html
    assert_offline(html)


def test_decoded_text_is_escaped(tmp_path: Path) -> None:
    evil = "<script>alert(1)</script>"
    packets = dns_exchange(1_700_000_000.0, domain=evil)
    packets += app_fetch(
        1_700_000_001.0,
        b'<img src="https://example.com/x.png">',
        request=encode_frame(b"FETCH https://example.com/<b>bold</b>"),
    )
    capture = tmp_path / "evil.pcap"
    write_capture(capture, packets)
    html = build_report(capture).html
    assert evil not in html and "<b>bold" not in html
    assert "&lt;script&gt;" in html
    assert "FETCH https://example.com/&lt;b&gt;bold&lt;/b&gt;" in html  # the table row
    assert "&lt;img src=&quot;https://example.com" in html  # as text, never as a reference
    assert_offline(html)


def _lossy(tmp_path: Path, name: str = "lossy.pcapng") -> Path:
    packets = simulate_transfer(
        random.Random(9).randbytes(60_000),
        rng=random.Random(9),
        loss=0.06,
        rto=0.2,
        delay=0.02,
        max_window=8,
    )
    path = tmp_path / name
    write_capture(path, packets, fmt="pcapng")
    return path


def test_lossy_capture_shows_retransmissions_and_sawtooth(tmp_path: Path) -> None:
    report = build_report(_lossy(tmp_path), ReportOptions(max_window=8))
    (facts,) = report.analysis.rudp_sessions
    assert facts.retransmissions > 0
    html = report.html
    assert f"R: retransmission ({facts.retransmissions})" in html
    assert "AIMD bound (verifier's model)" in html and "chunks in flight (capture)" in html
    assert "maximum window (8)" in html


def test_caps_are_stated(tmp_path: Path) -> None:
    packets = []
    for i in range(3):
        conv = Conversation(client=("127.0.0.1", 51000 + i), start=1_700_000_000.0 + i)
        conv.handshake()
        conv.data(1, b"abc")
        conv.ack(1)
        conv.fin(2)
        conv.ack(2)
        packets += conv.packets
    capture = tmp_path / "three.pcap"
    write_capture(capture, packets)
    report = build_report(capture, ReportOptions(max_rows=5, max_sessions=1))
    assert report.rows == 5 and report.decoded == 24 and report.sessions_drawn == 1
    assert "the first 5 of 24 decoded records (table capped at 5 rows)" in report.html
    assert "Charts drawn for the first 1 of 3 RUDP sessions." in report.html
    assert report.html.count('<section class="session"') == 1


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_large_capture_stays_bounded(tmp_path: Path) -> None:
    capture = tmp_path / "big.pcap"
    write_capture(capture, benchmark_stream(30_000, seed=3))
    report = build_report(capture, ReportOptions(max_sessions=4))
    assert report.rows == 2000 < report.decoded
    assert "table capped at 2,000 rows" in report.html
    assert report.sessions_drawn == 4
    total = len(report.analysis.rudp_sessions)
    assert total > 4 and f"Charts drawn for the first 4 of {total:,} RUDP sessions" in report.html
    assert "DATA/ACK packets compressed" in report.html  # the ladder's gap rows
    assert len(report.html) < 8_000_000
    assert_offline(report.html)


def test_command_writes_the_page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    capture = seed_capture("part4_rudp_loss_flow")
    runner = CliRunner()
    out = tmp_path / "r.html"
    result = runner.invoke(cli, ["report", str(capture), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"wrote {out}: ")
    assert "8 checks PASS, 1 session(s) charted, 28 table rows" in result.output
    assert out.read_text().startswith("<!DOCTYPE html>")
    assert oct(out.stat().st_mode & 0o777) == "0o644"
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    result = runner.invoke(cli, ["report", str(capture)])
    assert result.exit_code == 0, result.output
    assert [p.name for p in cwd.iterdir()] == ["part4_rudp_loss_flow.html"]


def test_write_report_leaves_no_temporary_file(tmp_path: Path) -> None:
    out = tmp_path / "page.html"
    write_report(seed_capture("part3_rudp_clean_flow"), out)
    assert [p.name for p in tmp_path.iterdir()] == ["page.html"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["/nonexistent/x.pcap"], "no such file"),
        (["JUNK"], "not a pcap or pcapng capture file"),
        (["DIR"], "is a directory"),
        (["CAPTURE", "-o", "/nonexistent/dir/r.html"], "no such folder"),
        (["CAPTURE", "--events", "/nonexistent/e.jsonl"], "no such events log"),
        (["CAPTURE", "--app-port", "2122"], "must all differ"),
    ],
)
def test_command_bad_input_is_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    junk = tmp_path / "junk.pcap"
    junk.write_bytes(b"garbage" * 10)
    subst = {"JUNK": str(junk), "DIR": str(tmp_path), "CAPTURE": str(seed_capture("part2_flow"))}
    result = CliRunner().invoke(cli, ["report", *[subst.get(a, a) for a in args]])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert result.output.startswith("stacklab: error: ") and result.output.count("\n") == 1


def test_services_section_lists_dhcp_dns_and_app() -> None:
    html = build_report(seed_capture("part1_flow")).html
    section = html[html.index('<section id="services">') :]
    section = section[: section.index("</section>")]
    assert "<h3>DHCP (1)</h3>" in section and "<h3>DNS (1)</h3>" in section
    assert "<h3>App sessions over TCP (1)</h3>" in section
    assert "FETCH http://127.0.0.1:8080/test_file.txt" in section
    assert '<a href="#f1">1</a>, <a href="#f2">2</a>' in section
    assert 'id="session-1"' not in html  # no RUDP in part1
    assert "No RUDP session." in html


@pytest.mark.timeout(60)
def test_stacklab_engine_capture_with_its_events_log(tmp_path: Path) -> None:
    """A capture of stacklab's own engine (negotiated window 16) and its events log."""
    from test_verify_stacklab_engine import run_transfer

    from stacklab.analysis.series import collect_series
    from stacklab.transport.options import TransferOptions

    options = TransferOptions(chunk_size=700, max_window=16, integrity=False, ack_every=1)
    content = random.Random(5).randbytes(60_000)
    packets, log, client = run_transfer(content, options, seed=5, loss=0.05, delay=0.01)
    assert client.done
    capture = tmp_path / "engine.pcapng"
    write_capture(capture, packets, fmt="pcapng")
    events = tmp_path / "events.jsonl"
    events.write_text("\n".join(log) + "\n")
    # No --max-window: the window negotiated in the handshake is the ceiling drawn.
    report = build_report(capture, ReportOptions(events_path=str(events)))
    assert report.analysis.passed
    (facts,) = report.analysis.rudp_sessions
    (series,) = collect_series(capture).sessions
    # The charts mark the go-backs the verifier counted, with its kinds.
    assert len(series.go_backs) == facts.go_backs > 0
    kinds = {k: sum(1 for *_x, kind in series.go_backs if kind == k) for k in ("timeout", "dupack")}
    assert kinds == {k: facts.go_back_kinds.get(k, 0) for k in kinds}
    html = report.html
    assert "sender's window (events log)" in html
    assert "maximum window (16)" in html and series.window_limit == 16
    assert "<code>rudp.events</code>" in html
    assert_offline(html)


def test_truncated_capture_is_reported_up_to_the_cut(tmp_path: Path) -> None:
    data = seed_capture("part4_rudp_loss_flow").read_bytes()
    cut = tmp_path / "cut.pcapng"
    cut.write_bytes(data[: len(data) // 2 + 7])
    out = tmp_path / "cut.html"
    result = CliRunner().invoke(cli, ["report", str(cut), "-o", str(out), "--max-sessions", "0"])
    assert result.exit_code == 0, result.output
    html = out.read_text()
    assert "· truncated" in html and "capture is truncated" in html
    assert '<span class="verdict fail">FAIL</span>' in html  # the transfer never finished
    assert 'class="session"' not in html and "Charts drawn for the first 0 of 1" in html


def test_many_checks_get_an_overview_and_a_capped_table() -> None:
    from stacklab.analysis.report import _checks
    from stacklab.analysis.sessions import Check

    checks = [Check("rudp.gbn", "a->b", "fail", "bad <go-back>", [7])]
    checks += [Check("rudp.aimd", f"c{i}->b", "pass", "ok", [i]) for i in range(30)]
    html = _checks(checks, linked={7}, limit=10)
    assert html.index('id="check-totals"') < html.index('id="checks-table"')
    assert '<td><code>rudp.gbn</code></td><td class="num">0</td><td class="num">1</td>' in html
    assert html.count("<tr class=") == 2 + 10  # two overview rows, ten check rows
    assert "21 more checks not listed (0 of them failing)" in html
    assert "bad &lt;go-back&gt;" in html and '<a href="#f7">7</a>' in html
    few = _checks(checks[:3], linked=set())
    assert "check-totals" not in few and "not listed" not in few


def test_a_long_file_name_has_a_row_of_its_own(tmp_path: Path) -> None:
    long_name = tmp_path / ("a-capture-with-a-very-long-descriptive-name-" * 3 + "x.pcapng")
    long_name.write_bytes(seed_capture("part1_flow").read_bytes())
    page = build_report(long_name).html
    assert f'<div class="wide"><b>file</b>{long_name.name}</div><div><b>size</b>' in page.replace(
        "\n", ""
    )
    assert ".facts div.wide { grid-column: 1 / -1; }" in page
    assert "overflow-wrap: anywhere" in page


def test_report_expect_narrows_like_verify(tmp_path: Path) -> None:
    """A capture cut after the handshake fails as a transfer, passes with --expect handshake."""
    for size in range(2000, 4000, 100):
        cut = tmp_path / f"cut{size}.pcapng"
        cut.write_bytes(seed_capture("part3_rudp_clean_flow").read_bytes()[:size])
        verify = CliRunner().invoke(cli, ["verify", str(cut), "--expect", "handshake"])
        if verify.exit_code == 0 and CliRunner().invoke(cli, ["verify", str(cut)]).exit_code == 1:
            break
    else:
        pytest.fail("no cut of the capture holds just the handshake")
    out = tmp_path / "r.html"
    result = CliRunner().invoke(cli, ["report", str(cut), "-o", str(out), "--expect", "handshake"])
    assert result.exit_code == 0 and "checks PASS" in result.output, result.output
    plain = CliRunner().invoke(cli, ["report", str(cut), "-o", str(out), "--force"])
    assert "checks FAIL" in plain.output
    bad = CliRunner().invoke(cli, ["report", str(cut), "-o", str(out), "--expect", "nonsense"])
    assert bad.exit_code == 2


def test_build_report_tells_its_passes() -> None:
    steps: list[str] = []
    build_report(seed_capture("part1_flow"), progress=steps.append)
    assert steps == ["verifying", "charting", "decoding", "rendering"]
