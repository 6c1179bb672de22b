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

from dataclasses import dataclass, field
from typing import Any, Literal

from stacklab.wire import ORIGINAL_MAX_WINDOW, Ports

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
    max_window: int = 0  # the largest window the AIMD model allowed (upper bound)
    min_window: int = 0  # the largest lower-bound window: what the sender had to reach
    window_limit: int = (
        0  # the bound checked: --max-window, or the window negotiated in the SYN-ACK
    )
    flights: list[list[float]] = field(default_factory=list)
    duplicate_acks: int = 0
    max_ack_delay: float = 0.0  # longest wait from a chunk's last transmission to its ACK
    malformed: int = 0
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

    @property
    def key(self) -> str:
        return f"{self.client}->{self.server}"

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
        return all(check.status != "fail" for check in self.checks)

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "packets": self.packets,
            "link_type": self.link_type,
            "truncated": self.truncated,
            "passed": self.passed,
            "warnings": self.warnings,
            "checks": [c.to_json() for c in self.checks],
            "rudp_sessions": [s.to_json() for s in self.rudp_sessions],
            "tcp_sessions": [s.to_json() for s in self.tcp_sessions],
            "dhcp": [e.to_json() for e in self.dhcp],
            "dns": [e.to_json() for e in self.dns],
        }


def report_json(analyses: list[CaptureAnalysis]) -> dict[str, Any]:
    """The ``--json`` document: every capture, and whether all of them passed."""
    return {
        "captures": [a.to_json() for a in analyses],
        "passed": all(a.passed for a in analyses),
    }
