"""One self-contained HTML page about a capture: verdict, checks, charts, ladder, packets.

The page is meant to be mailed, attached to a CI run or opened on a laptop
with no network: the charts are inline SVG, the CSS and the few lines of
JavaScript (paging of the packet table) are inline, and there is no URL in
it except inside decoded packet text, which is escaped like all text.

It is put together from two streaming passes over the file, each of which
keeps bounded memory: the verifier (:func:`~stacklab.analysis.verify.analyze_capture`)
for the verdict, the checks and the chart points of the first sessions
(:func:`~stacklab.analysis.series.capture_series`), and the decoder
(:func:`~stacklab.analysis.decode.decode_capture`) for the ladder and the
packet table.  What is drawn is capped (sessions,
points, ladder rows, table rows) and the page states every cap it hits.
"""

from __future__ import annotations

import html
import json
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from string import Template
from typing import Final

from stacklab import __version__
from stacklab.analysis.decode import DecodedPacket, decode_capture
from stacklab.analysis.explain import explain_failure, failure_frames
from stacklab.analysis.pcapio import CaptureError
from stacklab.analysis.series import (
    MAX_POINTS,
    MAX_SESSIONS,
    CaptureSeries,
    SessionSeries,
    align_sender_window,
    capture_series,
    read_sender_window,
)
from stacklab.analysis.sessions import CaptureAnalysis, Check, RudpSessionFacts, VerifyOptions
from stacklab.analysis.stepthrough import stepper_section
from stacklab.analysis.verify import analyze_capture
from stacklab.files import write_atomically
from stacklab.wire import ORIGINAL_MAX_WINDOW, Ports

log = logging.getLogger(__name__)

MAX_ROWS: Final = 2000
"""Rows of the packet table."""
DECODE_LIMIT: Final = 50_000
"""Frames decoded for the ladder and the table; a longer capture is decoded only that far."""
MAX_CHECK_ROWS: Final = 500
"""Rows of the checks table (failures first); the rest are counted."""
MAX_CHECKS_WITHOUT_TOTALS: Final = 20
"""Above this many checks a per-check overview table comes first."""
MAX_FRAME_LINKS: Final = 12
"""Frame numbers listed per check."""


@dataclass(frozen=True)
class ReportOptions:
    """What to read and how much to draw."""

    ports: Ports = field(default_factory=Ports)
    max_window: int = ORIGINAL_MAX_WINDOW
    min_rto: float = 0.2
    events_path: str | None = None
    max_rows: int = MAX_ROWS
    max_sessions: int = MAX_SESSIONS
    decode_limit: int = DECODE_LIMIT
    expect: frozenset[str] | None = None  # as VerifyOptions.expect: checks that must be present


def _template(name: str) -> str:
    return (resources.files("stacklab.analysis") / "templates" / name).read_text(encoding="utf-8")


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


# ---------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------


def _summary(analysis: CaptureAnalysis, size: int) -> str:
    counts = {"pass": 0, "fail": 0, "skip": 0}
    for check in analysis.checks:
        counts[check.status] += 1
    items = [
        ("file", os.path.basename(analysis.path)),
        ("size", f"{size:,} bytes"),
        ("frames", f"{analysis.packets:,}"),
        ("link type", analysis.link_type),
        ("RUDP sessions", str(len(analysis.rudp_sessions))),
        ("TCP app sessions", str(len(analysis.tcp_sessions))),
        ("DHCP exchanges", str(len(analysis.dhcp))),
        ("DNS exchanges", str(len(analysis.dns))),
        ("checks", f"{counts['pass']} passed, {counts['fail']} failed, {counts['skip']} skipped"),
    ]
    parts = ['<div class="facts">']
    # The file name gets a row of its own: a long name would run into the size.
    wide = ' class="wide"'
    parts += [f"<div{wide if k == 'file' else ''}><b>{_e(k)}</b>{_e(v)}</div>" for k, v in items]
    parts.append("</div>")
    for warning in analysis.warnings:
        parts.append(f'<p class="warn">{_e(warning)}</p>')
    return "\n".join(parts)


def _frame_links(frames: list[int], linked: set[int]) -> str:
    out = []
    for number in frames[:MAX_FRAME_LINKS]:
        if number in linked:
            out.append(f'<a href="#f{number}">{number}</a>')
        else:
            out.append(str(number))
    if len(frames) > MAX_FRAME_LINKS:
        out.append(f"… ({len(frames)} in all)")
    return ", ".join(out)


def _check_totals(checks: list[Check]) -> str:
    """Pass / fail / skip counts per check id: the overview when there are many sessions."""
    totals: dict[str, dict[str, int]] = {}
    for check in checks:
        row = totals.setdefault(check.id, {"pass": 0, "fail": 0, "skip": 0})
        row[check.status] += 1
    rows = "".join(
        f'<tr class="{"fail" if t["fail"] else "pass"}"><td><code>{_e(name)}</code></td>'
        f'<td class="num">{t["pass"]:,}</td><td class="num">{t["fail"]:,}</td>'
        f'<td class="num">{t["skip"]:,}</td></tr>'
        for name, t in sorted(totals.items(), key=lambda item: (-item[1]["fail"], item[0]))
    )
    return (
        '<table id="check-totals"><thead><tr><th>check</th><th class="num">passed</th>'
        '<th class="num">failed</th><th class="num">skipped</th></tr></thead><tbody>'
        + rows
        + "</tbody></table><h3>Every check</h3>"
    )


def _explanation(source: str, analysis: CaptureAnalysis, options: ReportOptions) -> str:
    """The first RUDP failure as the same ASCII ladder ``stacklab verify`` prints."""
    if analysis.passed:
        return ""
    try:
        lines = explain_failure(source, analysis, options.ports)
    except CaptureError:
        return ""
    if not lines:
        return ""
    head, *ladder = lines
    return (
        f'<div class="explain"><p class="note">{_e(head)}</p>'
        f'<pre class="ladder-text">{_e(chr(10).join(ladder))}</pre></div>'
    )


def _checks(checks: list[Check], linked: set[int], limit: int = MAX_CHECK_ROWS) -> str:
    if not checks:
        return (
            '<p class="note">No checks apply: the capture holds none of the stack\'s traffic.</p>'
        )
    rows = []
    for check in checks[:limit]:
        rows.append(
            f'<tr class="{_e(check.status)}"><td><span class="status {_e(check.status)}">'
            f"{_e(check.status)}</span></td><td><code>{_e(check.id)}</code></td>"
            f'<td class="mono">{_e(check.session)}</td><td>{_e(check.detail)}</td>'
            f"<td>{_frame_links(check.frames, linked)}</td></tr>"
        )
    rest = checks[limit:]
    note = ""
    if rest:
        failing = sum(1 for c in rest if c.status == "fail")
        note = (
            f'<p class="note">{len(rest):,} more checks not listed ({failing:,} of them failing); '
            f"the table is capped at {limit:,} rows, failures first.</p>"
        )
    overview = _check_totals(checks) if len(checks) > MAX_CHECKS_WITHOUT_TOTALS else ""
    return (
        overview + '<p class="note">Failures first; frame numbers link to the packet table.</p>'
        '<table id="checks-table"><thead><tr><th>status</th><th>check</th><th>session</th>'
        "<th>detail</th><th>frames</th></tr></thead><tbody>\n"
        + "\n".join(rows)
        + "</tbody></table>"
        + note
    )


def _facts(facts: RudpSessionFacts | None, series: SessionSeries) -> str:
    if facts is None:
        return ""
    kinds = facts.go_back_kinds
    items = [
        ("chunks", f"{facts.chunks:,}"),
        ("bytes", f"{facts.bytes:,}"),
        ("DATA packets", f"{facts.data_packets:,}"),
        ("retransmissions", f"{facts.retransmissions:,}"),
        (
            "go-backs",
            f"{facts.go_backs:,} ({kinds.get('timeout', 0)} timeout, {kinds.get('dupack', 0)} dup-ACK)",
        ),
        ("max in flight", str(facts.max_flight)),
        ("largest AIMD window", str(facts.max_window)),
        ("duration", f"{facts.end - facts.start:.3f} s"),
        ("complete", "yes" if facts.complete else "no"),
        ("command", facts.command or "-"),
    ]
    out = ['<div class="facts">']
    out += [f"<div><b>{_e(k)}</b>{_e(v)}</div>" for k, v in items]
    out.append("</div>")
    if series.clipped:
        out.append(
            f'<p class="note">Charts show the first {MAX_POINTS:,} DATA/ACK points of '
            f"{series.points:,}.</p>"
        )
    return "\n".join(out)


_TIMESEQ_NOTE: Final = (
    "Each DATA is a square at its time and chunk number; a red diamond is a retransmission "
    "(R marks the first of each resent run). The green steps are the client's cumulative ACK; "
    "go-backs are marked as the verifier explained them (timeout or duplicate ACKs)."
)
_WINDOW_NOTE: Final = (
    "Chunks in flight when each DATA left (last chunk sent minus the cumulative ACK): the AIMD "
    "sawtooth. The dashed line is the window the verifier's AIMD model allows (an upper bound), "
    "the dash-dotted line the maximum window."
)


def _sessions(
    analysis: CaptureAnalysis, series: CaptureSeries, options: ReportOptions, stem: str
) -> str:
    from stacklab.analysis import plots

    by_key = {(s.key, s.first_frame): s for s in analysis.rudp_sessions}
    sender = None
    if options.events_path is not None:
        try:
            sender = read_sender_window(options.events_path)
        except OSError as exc:
            log.warning("%s: cannot read the events log: %s", options.events_path, exc.strerror)
    target = sender.pick(series.sessions) if sender is not None else None
    parts = []
    total = len(analysis.rudp_sessions)
    for index, s in enumerate(series.sessions, 1):
        facts = by_key.get((s.key, s.first_frame))
        name = f"session {index}: {s.key}"
        ts = plots.time_sequence_figure(s, f"{stem} — {name}: time-sequence")
        overlay = align_sender_window(sender, s) if sender is not None and s is target else None
        limit = s.window_limit or options.max_window
        win = plots.window_figure(s, f"{stem} — {name}: window", limit, overlay)
        parts.append(
            f'<section class="session" id="session-{index}"><h2>RUDP {_e(name)}</h2>'
            f"{_facts(facts, s)}"
            f'<div class="chart timeseq">{plots.inline_svg(ts)}</div>'
            f'<p class="note">{_TIMESEQ_NOTE}</p>'
            f'<div class="chart window">{plots.inline_svg(win)}</div>'
            f'<p class="note">{_WINDOW_NOTE}</p></section>'
        )
        plots.close(ts)
        plots.close(win)
    if total > len(series.sessions):
        parts.append(
            f'<section><p class="note">Charts drawn for the first {len(series.sessions)} of '
            f"{total:,} RUDP sessions.</p></section>"
        )
    if not parts:
        parts.append('<section><h2>RUDP</h2><p class="note">No RUDP session.</p></section>')
    return "\n".join(parts)


MAX_SERVICE_ROWS: Final = 50
"""Rows per service table (DHCP, DNS, app sessions)."""


def _short(value: object, limit: int = 120) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _services(analysis: CaptureAnalysis, linked: set[int]) -> str:
    """DHCP and DNS exchanges and app sessions over TCP, one small table each."""
    parts: list[str] = []
    for title, exchanges in (("DHCP", analysis.dhcp), ("DNS", analysis.dns)):
        if not exchanges:
            continue
        rows = []
        for ex in exchanges[:MAX_SERVICE_ROWS]:
            frames = [ex.request_frame] + ([ex.reply_frame] if ex.reply_frame else [])
            rows.append(
                f'<tr><td class="mono">{_e(ex.client)}</td><td>{_e(_short(ex.request))}</td>'
                f"<td>{_e(_short(ex.reply) if ex.reply is not None else '-')}</td>"
                f"<td>{_e(ex.problem or '')}</td><td>{_frame_links(frames, linked)}</td></tr>"
            )
        more = len(exchanges) - MAX_SERVICE_ROWS
        note = f'<p class="note">{more:,} more not listed.</p>' if more > 0 else ""
        parts.append(
            f"<h3>{title} ({len(exchanges):,})</h3><table><thead><tr><th>client</th>"
            "<th>request</th><th>reply</th><th>problem</th><th>frames</th></tr></thead><tbody>"
            + "".join(rows)
            + f"</tbody></table>{note}"
        )
    if analysis.tcp_sessions:
        rows = []
        for t in analysis.tcp_sessions[:MAX_SERVICE_ROWS]:
            rows.append(
                f'<tr><td class="mono">{_e(t.client)}</td><td>{_e(_short(t.request or "-"))}</td>'
                f'<td class="num">{_e(t.response_length if t.response_length is not None else "-")}</td>'
                f"<td>{_e(t.error or '')}</td>"
                f"<td>{_frame_links([t.first_frame, t.last_frame], linked)}</td></tr>"
            )
        more = len(analysis.tcp_sessions) - MAX_SERVICE_ROWS
        note = f'<p class="note">{more:,} more not listed.</p>' if more > 0 else ""
        parts.append(
            f"<h3>App sessions over TCP ({len(analysis.tcp_sessions):,})</h3><table><thead><tr>"
            '<th>client</th><th>request</th><th class="num">response bytes</th><th>problem</th>'
            "<th>frames</th></tr></thead><tbody>" + "".join(rows) + f"</tbody></table>{note}"
        )
    if not parts:
        return ""
    return (
        '<section id="services"><h2>DHCP, DNS and app requests</h2>' + "".join(parts) + "</section>"
    )


def _packet_rows(
    rows: list[DecodedPacket],
    failing: frozenset[int] | set[int] = frozenset(),
    comments: dict[int, str] | None = None,
) -> str:
    out = []
    comments = comments or {}
    for p in rows:
        note = comments.get(p.frame)
        extra = f'<br><span class="comment">{_e(note)}</span>' if note else ""
        if note and note.startswith(NETWORK_DROP):
            row_class = ' class="dropped"'
        elif p.frame in failing:
            row_class = ' class="fail"'
        else:
            row_class = ""
        out.append(
            f'<tr id="f{p.frame}"{row_class}><td class="num">{p.frame}</td>'
            f'<td class="num">{p.time:.6f}</td>'
            f"<td>{_e(p.src)}</td><td>{_e(p.dst)}</td><td>{_e(p.proto)}</td>"
            f"<td>{_e(p.summary())}{extra}</td></tr>"
        )
    return "\n".join(out)


NETWORK_DROP: Final = "dropped by the network"
"""How a packet comment starts when an impairing proxy dropped the frame (``stacklab grade``)."""


def _frame_comments(path: str, frames: set[int]) -> dict[int, str]:
    """The packet comments of ``frames`` (pcapng), read in one streaming pass."""
    from stacklab.analysis.pcapio import CaptureError, CaptureReader

    out: dict[int, str] = {}
    if not frames:
        return out
    last = max(frames)
    try:
        with CaptureReader(path) as reader:
            for frame in reader:
                if frame.number > last:
                    break
                if frame.comment and frame.number in frames:
                    out[frame.number] = frame.comment
    except CaptureError:
        return out  # the analysis already said what is wrong with the file
    return out


def _packets(
    rows: list[DecodedPacket],
    decoded: int,
    frames: int,
    options: ReportOptions,
    failing: frozenset[int] | set[int] = frozenset(),
    comments: dict[int, str] | None = None,
) -> str:
    note = f"{len(rows):,} rows"
    if decoded > len(rows):
        note = f"the first {len(rows):,} of {decoded:,} decoded records (table capped at {options.max_rows:,} rows)"
    if frames > options.decode_limit:
        note += f"; only the first {options.decode_limit:,} frames were decoded"
    return (
        f'<details open><summary>{_e(note)}</summary><div class="pager" id="pager">'
        '<button id="page-prev" type="button">previous</button><span id="page-label"></span>'
        '<button id="page-next" type="button">next</button></div>'
        "<table><thead><tr><th>frame</th><th>time (s)</th><th>source</th><th>destination</th>"
        '<th>protocol</th><th>decoded</th></tr></thead><tbody id="packets">\n'
        + _packet_rows(rows, failing, comments)
        + "</tbody></table></details>"
    )


# ---------------------------------------------------------------------------
# The page
# ---------------------------------------------------------------------------


@dataclass
class Report:
    """A rendered page and what went into it."""

    html: str
    analysis: CaptureAnalysis
    sessions_drawn: int
    rows: int
    decoded: int


class _Tap:
    """Pass decoded packets on to the ladder, keeping the first rows for the table."""

    def __init__(self, limit: int, max_rows: int) -> None:
        self.limit = limit
        self.max_rows = max_rows
        self.rows: list[DecodedPacket] = []
        self.count = 0

    def __call__(self, packets: Iterator[DecodedPacket]) -> Iterator[DecodedPacket]:
        for packet in packets:
            if packet.frame > self.limit:
                break
            self.count += 1
            if len(self.rows) < self.max_rows:
                self.rows.append(packet)
            yield packet


def build_report(
    path: str | os.PathLike[str],
    options: ReportOptions | None = None,
    progress: Callable[[str], None] | None = None,
) -> Report:
    """Render the report of ``path``.

    Raises :class:`~stacklab.analysis.pcapio.CaptureError` when the file is
    not a readable capture.  ``progress`` is told each pass as it starts
    (``"verifying"``, ``"charting"``, ``"decoding"``, ``"rendering"``): on a
    large capture each takes a while.
    """
    from stacklab.analysis import plots
    from stacklab.analysis.ladder import build_ladder, ladder_figure

    def step(name: str) -> None:
        if progress is not None:
            progress(name)

    options = options or ReportOptions()
    source = os.fspath(path)
    stem = os.path.basename(source)
    step("verifying")
    analysis = analyze_capture(
        source,
        VerifyOptions(
            ports=options.ports,
            max_window=options.max_window,
            min_rto=options.min_rto,
            events_path=options.events_path,
            expect=options.expect,
            trace_sessions=options.max_sessions,
            keep_notes=True,
        ),
    )
    step("charting")
    series = capture_series(analysis, options.max_sessions)
    step("decoding")
    tap = _Tap(options.decode_limit, options.max_rows)
    ladder = build_ladder(tap(decode_capture(source, options.ports)), options.ports)
    figure = ladder_figure(ladder, f"{stem}: ladder diagram")
    ladder_html = f'<div class="ladder">{plots.inline_svg(figure)}</div>'
    plots.close(figure)
    passed = analysis.passed
    linked = {p.frame for p in tap.rows}
    subtitle = f"{analysis.packets:,} frames · {analysis.link_type}"
    if analysis.truncated:
        subtitle += " · truncated"
    step("rendering")
    page = Template(_template("report.html")).substitute(
        version=_e(__version__),
        title=_e(stem),
        subtitle=_e(subtitle),
        css=_template("report.css"),
        js=_template("report.js") + _template("stepper.js"),
        verdict="PASS" if passed else "FAIL",
        verdict_class="pass" if passed else "fail",
        summary=_summary(analysis, os.path.getsize(source)),
        checks=_checks(analysis.checks, linked) + _explanation(source, analysis, options),
        sessions=_sessions(analysis, series, options, stem),
        services=_services(analysis, linked),
        ladder=ladder_html + stepper_section(analysis),
        packets=_packets(
            tap.rows,
            tap.count,
            analysis.packets,
            options,
            failure_frames(analysis),
            _frame_comments(source, linked),
        ),
    )
    return Report(page, analysis, len(series.sessions), len(tap.rows), tap.count)


def write_report(
    path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    options: ReportOptions | None = None,
) -> Report:
    """Render the report of ``path`` and write it to ``out`` atomically."""
    report = build_report(path, options)
    write_atomically(out, report.html.encode("utf-8"))
    return report
