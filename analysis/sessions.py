"""The facts a capture analysis produces: the public model of ``stacklab verify``.

``analyze_capture(path, options)`` (in :mod:`stacklab.analysis.verify`)
returns a :class:`CaptureAnalysis`; the plots and the HTML report read the
same objects, and ``--json`` prints :meth:`CaptureAnalysis.to_json`.  Every
object here is plain data: the trackers that fill them in live in
:mod:`~stacklab.analysis.rudp` and :mod:`~stacklab.analysis.services`, the
judgements in :mod:`~stacklab.analysis.checks`.

Times are seconds since the epoch rounded to the microsecond, so that two
engines reading the same file agree exactly.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from types import GeneratorType
from typing import TYPE_CHECKING, Any, Literal

from stacklab.wire import ORIGINAL_MAX_WINDOW, Ports

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from stacklab.analysis.findings import PacketFinding
    from stacklab.analysis.series import SessionSeries

Status = Literal["pass", "fail", "skip"]

RUDP_CHECKS = (
    "rudp.handshake",
    "rudp.delivery",
    "rudp.integrity",
    "rudp.gbn",
    "rudp.aimd",
    "rudp.teardown",
)
SERVICE_CHECKS = ("dhcp.offer", "dns.answer", "app.framing")
ALL_CHECKS = (*RUDP_CHECKS, *SERVICE_CHECKS, "rudp.events", "capture.traffic")


@dataclass(frozen=True)
class VerifyOptions:
    """What to look for and how strictly.

    ``expect`` narrows what must be present: ``None`` means every RUDP check
    for each RUDP session (DHCP, DNS and app checks whenever that traffic is
    present); otherwise a set of check ids (``rudp.handshake``...).
    ``min_rto`` is the shortest retransmission timeout a sender may use (a
    go-back sooner than that after progress, with no duplicate ACK, is
    unexplained).
    """

    ports: Ports = field(default_factory=Ports)
    max_window: int = ORIGINAL_MAX_WINDOW
    expect: frozenset[str] | None = None
    min_rto: float = 0.2
    events_path: str | None = None
    keep_series: bool = True
    keep_notes: bool = False  # per-packet notes (findings), for annotations and the report
    trace_sessions: int = 0  # the first N RUDP sessions keep every DATA and ACK, for charts
    trace_limit: int = 20_000  # points kept per traced session
    jobs: int | None = None  # processes; None: two for big captures with 4+ cores

    def __post_init__(self) -> None:
        """Refuse what the command line refuses, in its words; accept its short names.

        ``expect`` may be given as ``"handshake,dns"`` or as any collection of
        names (``{"handshake"}``, ``{"rudp.handshake"}``); it is kept as the
        full check ids.  A misspelt name raises ``ValueError`` instead of
        quietly expecting nothing.
        """
        from stacklab.analysis.checks import parse_expect  # checks imports this module

        expect: object = self.expect
        if expect is not None:
            if isinstance(expect, str):
                names = [expect]
            elif isinstance(expect, Iterable):
                names = [str(name) for name in expect]
            else:
                raise ValueError(f"expect must be check names, not {expect!r}")
            full = parse_expect(",".join(names))
            object.__setattr__(self, "expect", full if full is not None else frozenset())
        if not isinstance(self.ports, Ports):
            raise ValueError(f"ports must be a stacklab.wire.Ports, not {self.ports!r}")
        for name in ("rudp", "dns", "dhcp", "app"):
            port = getattr(self.ports, name)
            if not isinstance(port, int) or not 1 <= port <= 65535:
                raise ValueError(f"invalid {name} port {port!r}: not in the range 1<=x<=65535")
        if not isinstance(self.max_window, int) or self.max_window < 1:
            raise ValueError(f"invalid max_window {self.max_window!r}: must be at least 1")
        if not 0.0 <= self.min_rto <= 60.0:
            raise ValueError(f"invalid min_rto {self.min_rto!r}: not in the range 0<=x<=60")
        if self.jobs is not None and (not isinstance(self.jobs, int) or self.jobs < 1):
            raise ValueError(f"invalid jobs {self.jobs!r}: must be at least 1")


@dataclass(slots=True)
class Check:
    """One verdict: a rule applied to one session (or to the whole capture)."""

    id: str
    session: str
    status: Status
    detail: str
    frames: list[int] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "session": self.session,
            "status": self.status,
            "detail": self.detail,
            "frames": self.frames,
        }


@dataclass(slots=True)
class Finding:
    """Something a tracker saw that breaks a rule, with the frame that shows it."""

    check: str
    frame: int
    detail: str


@dataclass(slots=True)
class PacketNote:
    """What the verifier concluded at one frame, as Wireshark's TCP analysis flags do.

    ``kind`` is one of ``retransmission``, ``go_back.timeout``,
    ``go_back.dupack`` (fast retransmit), ``go_back.unexplained``,
    ``go_back.selective`` (a lone resend after a timeout, then new chunks),
    ``loss_probe``, ``duplicate_ack``, ``duplicate`` (a network duplicate),
    ``window_exceeded``, ``malformed``, ``bad_crc32c`` and ``failed`` (a
    rule broken here; the text starts with the check's id).
    """

    frame: int
    kind: str
    text: str

    def to_json(self) -> dict[str, Any]:
        return {"frame": self.frame, "kind": self.kind, "text": self.text}


@dataclass(slots=True)
class RudpSessionFacts:
    """Everything observed about one RUDP exchange (client ip:port <-> server ip:port).

    ``chunks`` is the highest chunk number, ``flights`` is ``[time since the
    session's first frame, largest flight]`` per burst of server DATA (a burst
    ends at a client ACK or a go-back), and
    ``go_back_kinds`` tells how many go-backs followed a timeout or duplicate
    ACKs.  ``findings`` are the rule breaks the tracker saw, ``frames`` the
    frame numbers of the handshake, FIN and so on, for pointing at them.
    """

    client: str
    server: str
    isn: int | None = None
    command: str | None = None
    command_ack: str | None = None  # "seq" (ack = seq) or "bytes" (ack = seq + length)
    chunks: int = 0
    bytes: int = 0
    sha256: str | None = None
    data_packets: int = 0
    retransmissions: int = 0
    go_backs: int = 0
    probes: int = 0  # lone resends of the base after which the sender carried on (loss probes)
    go_back_kinds: dict[str, int] = field(default_factory=lambda: {"timeout": 0, "dupack": 0})
    timeouts: list[float] = field(default_factory=list)
    max_flight: int = 0
    max_flight_frame: int = 0  # where the most chunks were in flight
    max_window: int = 0  # the largest window the AIMD model allowed (upper bound)
    min_window: int = 0  # the largest lower-bound window: what the sender had to reach
    window_limit: int = (
        0  # the bound checked: --max-window, or the window negotiated in the SYN-ACK
    )
    flights: list[list[float]] = field(default_factory=list)
    duplicate_acks: int = 0
    max_ack_delay: float = 0.0  # longest wait from a chunk's last transmission to its ACK
    malformed: int = 0
    gso_batches: int = 0  # captured UDP GSO batches, split into their segments
    bad_chunks: int = 0  # DATA copies with a wrong length field or CRC32C trailer
    network_duplicates: int = 0  # the same chunk twice in a row at once
    integrity: bool = False  # CRC32C trailers negotiated
    responses: int = 0  # responses to ACKs judged against the lower-bound window
    rto_estimate: float | None = None  # RFC 6298 from the capture's round trips
    handshake: bool = False
    options: dict[str, object] | None = None  # stacklab extension: accepted in the SYN-ACK
    fin_seq: int | None = None
    fin_acked: bool = False
    all_acked: bool = False
    complete: bool = False
    start: float = 0.0
    end: float = 0.0
    first_frame: int = 0
    last_frame: int = 0
    packets: int = 0
    frames: dict[str, int] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    finding_counts: dict[str, int] = field(default_factory=dict)
    notes: list[PacketNote] = field(default_factory=list)  # with VerifyOptions.keep_notes
    # traced sessions: (frame, time, 0 DATA / 1 ACK / 2 FIN, seq or ack, window hi, lo)
    trace: list[tuple[int, float, int, int, int, int]] = field(default_factory=list)
    trace_points: int = 0  # DATA and ACKs seen while tracing (more than kept when clipped)
    go_back_frames: list[tuple[int, str]] = field(default_factory=list)  # (frame, kind)
    points: SessionSeries | None = None  # the graphs' points, when read (stacklab.series)

    @property
    def key(self) -> str:
        return f"{self.client}->{self.server}"

    def _points(self) -> SessionSeries:
        if self.points is None:
            raise ValueError(
                f"session {self.key} has no points to draw: "
                "read the capture with stacklab.series(path) to plot it"
            )
        return self.points

    def plot_timeseq(self, ax: Axes | None = None) -> Axes:
        """Draw this session's time-sequence graph on ``ax`` (a new figure by default)."""
        from stacklab.analysis import plots

        points = self._points()
        if ax is None:
            ax = plots.new_figure().add_subplot()
        return plots.draw_time_sequence(ax, points, f"RUDP {self.key}: time-sequence")

    def plot_window(self, ax: Axes | None = None) -> Axes:
        """Draw this session's window graph; the ceiling is the session's own window limit."""
        from stacklab.analysis import plots

        points = self._points()
        if ax is None:
            ax = plots.new_figure(10.0, 4.2).add_subplot()
        limit = points.window_limit or self.window_limit or None
        return plots.draw_window(ax, points, f"RUDP {self.key}: window", limit)

    def to_json(self) -> dict[str, Any]:
        return {
            "client": self.client,
            "server": self.server,
            "isn": self.isn,
            "command": self.command,
            "command_ack": self.command_ack,
            "chunks": self.chunks,
            "bytes": self.bytes,
            "sha256": self.sha256,
            "data_packets": self.data_packets,
            "retransmissions": self.retransmissions,
            "go_backs": self.go_backs,
            "probes": self.probes,
            "go_back_kinds": dict(self.go_back_kinds),
            "timeouts": self.timeouts,
            "max_flight": self.max_flight,
            "max_window": self.max_window,
            "min_window": self.min_window,
            "window_limit": self.window_limit,
            "flights": self.flights,
            "duplicate_acks": self.duplicate_acks,
            "max_ack_delay": self.max_ack_delay,
            "malformed": self.malformed,
            "gso_batches": self.gso_batches,
            "bad_chunks": self.bad_chunks,
            "network_duplicates": self.network_duplicates,
            "integrity": self.integrity,
            "rto_estimate": self.rto_estimate,
            "handshake": self.handshake,
            "options": self.options,
            "fin_seq": self.fin_seq,
            "complete": self.complete,
            "start": self.start,
            "end": self.end,
            "duration": round(self.end - self.start, 6),
            "packets": self.packets,
            "first_frame": self.first_frame,
            "last_frame": self.last_frame,
            "frames": dict(self.frames),
        }


@dataclass(slots=True)
class TcpSessionFacts:
    """One app-protocol connection over TCP: the framed request and response."""

    client: str
    server: str
    request: str | None = None
    request_length: int | None = None
    response_length: int | None = None
    response_bytes: int = 0
    response_sha256: str | None = None
    error: str | None = None  # framing problem, if any
    closed: bool = False
    first_frame: int = 0
    last_frame: int = 0
    findings: list[Finding] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.client}->{self.server}"

    def to_json(self) -> dict[str, Any]:
        return {
            "client": self.client,
            "server": self.server,
            "request": self.request,
            "request_length": self.request_length,
            "response_length": self.response_length,
            "response_bytes": self.response_bytes,
            "response_sha256": self.response_sha256,
            "error": self.error,
            "closed": self.closed,
            "first_frame": self.first_frame,
            "last_frame": self.last_frame,
        }


@dataclass(slots=True)
class ExchangeFacts:
    """One DHCP or DNS request and its reply (JSON over UDP)."""

    kind: Literal["dhcp", "dns"]
    client: str
    server: str
    request: Any = None
    reply: Any = None
    request_frame: int = 0
    reply_frame: int | None = None
    problem: str | None = None

    @property
    def key(self) -> str:
        return f"{self.client}->{self.server}"

    def to_json(self) -> dict[str, Any]:
        return {
            "client": self.client,
            "server": self.server,
            "request": self.request,
            "reply": self.reply,
            "request_frame": self.request_frame,
            "reply_frame": self.reply_frame,
            "problem": self.problem,
        }


@dataclass
class CaptureAnalysis:
    """The analysis of one capture file."""

    path: str
    packets: int = 0
    link_type: str = "unknown"
    truncated: bool = False
    engine: str = "native"
    rudp_sessions: list[RudpSessionFacts] = field(default_factory=list)
    tcp_sessions: list[TcpSessionFacts] = field(default_factory=list)
    dhcp: list[ExchangeFacts] = field(default_factory=list)
    dns: list[ExchangeFacts] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """True when no check failed."""
        return all(check.status != "fail" for check in self.checks)

    @property
    def sessions(self) -> list[RudpSessionFacts]:
        """The RUDP sessions, in order of their first frame (TCP ones: ``tcp_sessions``)."""
        return self.rudp_sessions

    @property
    def findings(self) -> list[PacketFinding]:
        """Per-packet findings, as Wireshark's TCP analysis and Expert Info show them.

        Retransmissions, go-backs (by timeout, fast retransmit, loss probe),
        duplicate ACKs, windows exceeded, bad datagrams and failed checks,
        each with its frame, severity (note, warn, error), group and text, in
        frame order (see :mod:`stacklab.analysis.findings`).  The per-packet
        ones need an analysis that kept its notes (``stacklab.verify`` does;
        ``VerifyOptions(keep_notes=True)``); without them only the failed
        checks' frames are listed.
        """
        from stacklab.analysis.findings import capture_findings

        return capture_findings(self)

    @property
    def rule_breaks(self) -> list[Finding]:
        """The rule breaks the trackers saw (the first few per check), in frame order."""
        found = [f for s in self.rudp_sessions for f in s.findings]
        found += [f for s in self.tcp_sessions for f in s.findings]
        return sorted(found, key=lambda f: f.frame)

    def check(self, check_id: str) -> list[Check]:
        """The checks with this id (one per session), e.g. ``check("rudp.gbn")``."""
        return [c for c in self.checks if c.id == check_id]

    def summary(self) -> str:
        """One line, as ``stacklab verify`` ends its report."""
        counts = {s: sum(1 for c in self.checks if c.status == s) for s in ("pass", "fail", "skip")}
        verdict = "PASS" if self.passed else "FAIL"
        return (
            f"{verdict}: {counts['pass']} passed, {counts['fail']} failed, {counts['skip']} skipped"
        )

    def __repr__(self) -> str:
        return (
            f"<CaptureAnalysis {self.path!r}: {self.packets} frames, "
            f"{len(self.rudp_sessions)} RUDP session(s), {self.summary()}>"
        )

    def _repr_html_(self) -> str:
        """A checks table for notebooks (Jupyter calls this to show the object)."""
        from html import escape

        rows = "".join(
            "<tr>"
            f"<td style='color:{_STATUS_COLOURS[c.status]}'><b>{c.status.upper()}</b></td>"
            f"<td>{escape(c.id)}</td><td>{escape(c.session)}</td>"
            f"<td style='text-align:left'>{escape(c.detail)}</td>"
            f"<td>{escape(', '.join(map(str, c.frames[:8])))}"
            f"{' …' if len(c.frames) > 8 else ''}</td>"
            "</tr>"
            for c in self.checks
        )
        warnings = "".join(f"<p>warning: {escape(w)}</p>" for w in self.warnings)
        return (
            f"<div><p><b>{escape(self.path)}</b>: {self.packets} frames, "
            f"link type {escape(self.link_type)}; <b>{escape(self.summary())}</b></p>{warnings}"
            "<table><thead><tr><th>status</th><th>check</th><th>session</th>"
            f"<th>detail</th><th>frames</th></tr></thead><tbody>{rows}</tbody></table></div>"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            name: list(value) if isinstance(value, GeneratorType) else value
            for name, value in self.json_parts().items()
        }

    def json_parts(self) -> dict[str, Any]:
        """:meth:`to_json` with its lists of records as generators, for a streamed document.

        Each check and session becomes JSON only as it is written
        (:class:`stacklab.jsonstream.JsonWriter`), so the whole document never
        exists in memory at once.
        """
        return {
            "path": self.path,
            "packets": self.packets,
            "link_type": self.link_type,
            "truncated": self.truncated,
            "passed": self.passed,
            "warnings": self.warnings,
            "checks": (c.to_json() for c in self.checks),
            "rudp_sessions": (s.to_json() for s in self.rudp_sessions),
            "tcp_sessions": (s.to_json() for s in self.tcp_sessions),
            "dhcp": (e.to_json() for e in self.dhcp),
            "dns": (e.to_json() for e in self.dns),
        }


_STATUS_COLOURS = {"pass": "green", "fail": "red", "skip": "grey"}


def report_json(analyses: list[CaptureAnalysis]) -> dict[str, Any]:
    """The ``--json`` document: every capture, and whether all of them passed."""
    return {
        "captures": [a.to_json() for a in analyses],
        "passed": all(a.passed for a in analyses),
    }
