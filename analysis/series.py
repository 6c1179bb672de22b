"""Per-packet time series of RUDP sessions, for the time-sequence and window graphs.

The verifier (:mod:`~stacklab.analysis.rudp`) keeps only a summary per
session, so that verifying a million packets costs no memory.  A graph needs
the opposite: every DATA with its time, chunk and whether it was a
retransmission, every cumulative ACK, every go-back.  Rather than teach the
verifier a second job, this module runs its own
:class:`~stacklab.analysis.rudp.RudpTracker` over the capture and samples the
tracker's state after each datagram: the graphs then show exactly the model
the checks judged (the same base, the same go-back classification, the same
replayed AIMD window), with no second implementation of the rules.

Memory is bounded: points are kept for the first :data:`MAX_SESSIONS`
sessions only, at most :data:`MAX_POINTS` per session (a session cut there
is marked ``clipped``, and the pages say so), and the pass stops reading
once every drawn session is finished.
"""

from __future__ import annotations

import json
import logging
import os
from collections import deque
from dataclasses import dataclass, field
from typing import Final, Literal

from stacklab.analysis.pcapio import CaptureReader, parse_packet
from stacklab.analysis.rudp import RudpSession, RudpTracker
from stacklab.wire import ORIGINAL_MAX_WINDOW, Ports

log = logging.getLogger(__name__)

MAX_SESSIONS: Final = 12
"""RUDP sessions whose points are collected (and drawn)."""
MAX_POINTS: Final = 20_000
"""DATA plus ACK points kept per session; the rest of a longer session is not drawn."""

GoBackKind = Literal["timeout", "dupack", "unexplained", "go-back"]
"""How the verifier explained a go-back; ``go-back`` when it did not classify it."""


@dataclass
class SessionSeries:
    """The points of one RUDP session; times are seconds since its first packet.

    ``data`` holds ``(time, chunk, retransmission)``, ``acks`` the client's
    cumulative ACKs ``(time, highest ack so far)``, ``window`` the samples
    ``(time, window the verifier's AIMD model allows)`` taken after every
    DATA and ACK (an upper bound: the model does not halve where the capture
    cannot prove the sender did),
    ``flight`` the chunks in flight ``(time, last chunk sent - cumulative
    ACK)`` at every DATA (sampled at sends, as tcptrace's outstanding-data
    graph, so the ACK-then-send flicker does not hide the sawtooth), and
    ``go_backs`` ``(time, chunk, kind)``.
    """

    key: str
    start: float
    first_frame: int
    data: list[tuple[float, int, bool]] = field(default_factory=list)
    acks: list[tuple[float, int]] = field(default_factory=list)
    window: list[tuple[float, int]] = field(default_factory=list)
    flight: list[tuple[float, int]] = field(default_factory=list)
    go_backs: list[tuple[float, int, GoBackKind]] = field(default_factory=list)
    fin: float | None = None
    clipped: bool = False
    points: int = 0
    window_limit: int | None = None  # the session's own maximum window (negotiated in the SYN)

    @property
    def retransmissions(self) -> int:
        return sum(1 for _t, _c, retx in self.data if retx)

    @property
    def duration(self) -> float:
        times = [p[0] for p in self.data[-1:]] + [p[0] for p in self.acks[-1:]]
        return max(times, default=0.0)


class _Sampler:
    """The sampling state of one session.

    Retransmissions and go-back candidates are read off the wire here (a DATA
    not above the highest chunk sent; a DATA not following the previous
    one), so each mark sits at its own packet.  What a candidate *is* comes
    from the verifier, which may decide a packet or two later, once it has
    seen what followed: whenever its loss-probe, timeout or duplicate-ACK
    counters move, the oldest undecided candidates take that verdict.  Probes,
    and candidates left over once the verifier's go-back count is reached,
    are dropped from the go-backs at the end (they stay retransmissions); a
    candidate the verifier flagged as a Go-Back-N fault is ``unexplained``.
    """

    __slots__ = (
        "acked",
        "highest_sent",
        "kinds",
        "last_sent",
        "pending",
        "probe_count",
        "probes",
        "series",
        "session",
    )

    def __init__(self, session: RudpSession, series: SessionSeries) -> None:
        self.session = session
        self.series = series
        self.kinds = dict(session.f.go_back_kinds)
        self.probe_count = session.f.probes
        self.pending: deque[tuple[int, int]] = deque()  # (index in go_backs, frame), undecided
        self.probes: set[int] = set()
        self.last_sent = 0
        self.highest_sent = 0
        self.acked = 0

    def classify(self) -> None:
        """Hand the verifier's newly counted verdicts to the oldest undecided candidates."""
        f = self.session.f
        go_backs = self.series.go_backs
        for _ in range(f.probes - self.probe_count):
            if self.pending:
                self.probes.add(self.pending.popleft()[0])
        self.probe_count = f.probes
        kinds = f.go_back_kinds
        for name in ("timeout", "dupack"):
            for _ in range(kinds.get(name, 0) - self.kinds.get(name, 0)):
                if self.pending:
                    index, _frame = self.pending.popleft()
                    t, chunk, _kind = go_backs[index]
                    go_backs[index] = (t, chunk, name)
        self.kinds = dict(kinds)

    def finish(self) -> None:
        """After the verifier finished the session: settle the last candidates, drop probes."""
        self.classify()
        f = self.session.f
        self.series.window_limit = f.window_limit
        faults = {x.frame for x in f.findings if x.check == "rudp.gbn"}
        go_backs = self.series.go_backs
        # Go-backs the verifier counted without a kind; candidates beyond that
        # (a base resent twice at a go-back, say) were not go-backs to it.
        unclassified = f.go_backs - sum(f.go_back_kinds.values())
        for index, frame in self.pending:
            t, chunk, _kind = go_backs[index]
            if frame in faults:
                go_backs[index] = (t, chunk, "unexplained")
                unclassified -= 1
            elif unclassified > 0:
                unclassified -= 1
            else:
                self.probes.add(index)
        self.pending.clear()
        if self.probes:
            self.series.go_backs = [g for i, g in enumerate(go_backs) if i not in self.probes]
            self.probes = set()

    def sample(
        self, number: int, time: float, flag: bytes, from_client: bool, seq: int, ack: int
    ) -> None:
        s = self.session
        series = self.series
        t = round(time - series.start, 6)
        if self.pending:
            self.classify()
        if flag == b"F" and not from_client and series.fin is None:
            series.fin = t
            return
        if from_client and flag != b"A":
            return
        if not from_client and flag != b"D":
            return  # handshake ACKs from the server
        if from_client and "command_ack" not in s.f.frames:
            return  # handshake ACK of the client: not a chunk ACK
        if from_client and s.f.fin_seq is not None and ack >= s.f.fin_seq:
            return  # the ACK of the FIN: drawn as part of the FIN mark
        series.points += 1
        if series.points > MAX_POINTS:
            series.clipped = True
            return
        if from_client:
            self.acked = max(self.acked, ack)
            series.acks.append((t, self.acked))
            if series.flight and self.acked >= self.last_sent:
                series.flight.append((t, 0))  # everything acknowledged: nothing in flight
        else:
            series.data.append((t, seq, seq <= self.highest_sent))
            if self.last_sent and seq <= self.last_sent:
                self.pending.append((len(series.go_backs), number))
                series.go_backs.append((t, seq, "go-back"))
            self.last_sent = seq
            self.highest_sent = max(self.highest_sent, seq)
            series.flight.append((t, max(1, seq - self.acked)))
        series.window.append((t, s.window))
        if self.pending:
            self.classify()


@dataclass
class CaptureSeries:
    """The series of a capture's first sessions, and how many sessions were seen.

    When ``stopped_early`` the pass ended once the drawn sessions were
    finished, so ``total_sessions`` counts only those seen until then.
    """

    sessions: list[SessionSeries] = field(default_factory=list)
    total_sessions: int = 0
    stopped_early: bool = False


def collect_series(
    path: str | os.PathLike[str],
    ports: Ports = Ports(),  # noqa: B008 - frozen dataclass, immutable default
    *,
    max_window: int = ORIGINAL_MAX_WINDOW,
    min_rto: float = 0.2,
    max_sessions: int = MAX_SESSIONS,
) -> CaptureSeries:
    """Read ``path`` streaming and return the point series of its RUDP sessions.

    Raises :class:`~stacklab.analysis.pcapio.CaptureError` for a file that is
    not a capture.  Sessions are keyed like the verifier's
    (``client ip:port->server ip:port``), in order of their first frame.
    """
    tracker = RudpTracker(ports.rudp, max_window=max_window, min_rto=min_rto, keep_series=False)
    samplers: dict[int, _Sampler] = {}
    others: set[int] = set()
    out = CaptureSeries()
    rudp_port = ports.rudp
    with CaptureReader(path) as reader:
        for frame in reader:
            packet = parse_packet(frame)
            if packet is None or packet.proto != "udp":
                continue
            to_port = packet.dport == rudp_port
            if not to_port and packet.sport != rudp_port:
                continue
            key = (packet.src, packet.sport, packet.dst, packet.dport)
            tracker.feed(packet.number, packet.time, key, to_port, packet.payload)
            entry = tracker.flows.get(key)
            if entry is None or len(packet.payload) < 11:
                continue
            session, from_client = entry
            sampler = samplers.get(id(session))
            if sampler is None:
                if len(out.sessions) >= max_sessions:
                    if id(session) not in others:
                        others.add(id(session))  # the tracker keeps it alive: ids are stable
                        out.total_sessions += 1
                    if all(s.session.finished for s in samplers.values()):
                        out.stopped_early = True
                        break
                    continue
                out.total_sessions += 1
                series = SessionSeries(session.f.key, session.f.start, session.f.first_frame)
                out.sessions.append(series)
                sampler = samplers[id(session)] = _Sampler(session, series)
            payload = packet.payload
            seq = int.from_bytes(payload[0:4], "big")
            ack = int.from_bytes(payload[4:8], "big")
            sampler.sample(packet.number, packet.time, payload[8:9], from_client, seq, ack)
    tracker.sessions()  # finish them: the last candidates get their verdict
    for sampler in samplers.values():
        sampler.finish()
    return out


@dataclass
class SenderWindow:
    """The sender's own window over time, from its events log (``--events``)."""

    points: list[tuple[float, int]] = field(default_factory=list)
    first_data: float | None = None  # time the sender logged its first DATA, if traced
    data_sent: int = 0  # DATA packets the sender logged (0 when not traced)

    def pick(self, sessions: list[SessionSeries]) -> SessionSeries | None:
        """The session this log describes: the only one, else the one with as many DATA."""
        if len(sessions) == 1:
            return sessions[0]
        for series in sessions:
            if self.data_sent and len(series.data) == self.data_sent:
                return series
        return sessions[0] if sessions else None


def read_sender_window(path: str | os.PathLike[str]) -> SenderWindow:
    """The ``window_changed`` events of a JSON-lines events log, tolerant of bad lines.

    Raises ``OSError`` when the file cannot be opened.
    """
    out = SenderWindow()
    with open(path, encoding="utf-8", errors="replace") as handle:
        for raw in handle:
            try:
                obj = json.loads(raw)
            except ValueError:
                continue
            if not isinstance(obj, dict):
                continue
            time = obj.get("time")
            if not isinstance(time, int | float):
                continue
            name = str(obj.get("name") or obj.get("event") or "").rsplit(":", 1)[-1]
            data = obj.get("data") if isinstance(obj.get("data"), dict) else obj
            assert isinstance(data, dict)
            if name == "window_changed" and isinstance(data.get("new"), int):
                if not out.points and isinstance(data.get("old"), int):
                    out.points.append((float(time), data["old"]))
                out.points.append((float(time), data["new"]))
            elif name == "packet_sent" and data.get("flag") == "D":
                out.data_sent += 1
                if out.first_data is None:
                    out.first_data = float(time)
    return out


def align_sender_window(window: SenderWindow, series: SessionSeries) -> list[tuple[float, int]]:
    """The sender's window on the session's time axis.

    An events log is stamped with whatever clock the engine was given (often
    a monotonic one), so absolute times rarely match the capture's.  When the
    log's times fall inside the session they are used as they are; otherwise
    the log's first DATA (or its first event) is aligned with the capture's
    first DATA.
    """
    if not window.points:
        return []
    first_capture = series.data[0][0] if series.data else 0.0
    end = series.start + series.duration
    if series.start - 1.0 <= window.points[0][0] <= end + 1.0:
        offset = series.start
    else:
        anchor = window.first_data if window.first_data is not None else window.points[0][0]
        offset = anchor - first_capture
    return [(round(t - offset, 6), w) for t, w in window.points]
