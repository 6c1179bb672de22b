"""Per-packet time series of RUDP sessions, for the time-sequence and window graphs.

The verifier keeps only a summary per session, so that verifying a million
packets costs no memory; for the charts it can also keep a *trace* of the
first few sessions (``VerifyOptions.trace_sessions``): every DATA and ACK
with its frame and the window bounds it judged them by, and the frames of
the go-backs with how it explained them.  This module turns that trace into
points, so the graphs show exactly the model the checks judged, read in the
same pass over the file as the verdicts.

Memory is bounded: points are kept for the first :data:`MAX_SESSIONS`
sessions only, at most :data:`MAX_POINTS` per session (a session cut there is
marked ``clipped``, and the pages say so).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from typing import Final, Literal

from stacklab.analysis.rudp import MAX_TRACE
from stacklab.analysis.sessions import CaptureAnalysis, RudpSessionFacts, VerifyOptions
from stacklab.wire import ORIGINAL_MAX_WINDOW, Ports

log = logging.getLogger(__name__)

MAX_SESSIONS: Final = 12
"""RUDP sessions whose points are collected (and drawn)."""
MAX_POINTS: Final = MAX_TRACE
"""DATA plus ACK points kept per session; the rest of a longer session is not drawn."""

GoBackKind = Literal["timeout", "dupack", "unexplained", "go-back"]
"""How the verifier explained a go-back; ``go-back`` when it did not classify it."""


@dataclass
class SessionSeries:
    """The points of one RUDP session; times are seconds since its first packet.

    ``data`` holds ``(time, chunk, retransmission)`` and ``data_frames`` the
    frame of each, ``acks`` the client's cumulative ACKs ``(time, highest ack
    so far)`` and ``ack_frames`` theirs; ``window`` the samples ``(time,
    largest window a correct sender may have had)`` and ``window_lo`` ``(time,
    smallest)`` taken after every DATA and ACK, ``flight`` the chunks in
    flight ``(time, last chunk sent - cumulative ACK)`` at every DATA
    (sampled at sends, as tcptrace's outstanding-data graph, so the
    ACK-then-send flicker does not hide the sawtooth), and ``go_backs``
    ``(time, chunk, kind)`` (loss probes are not go-backs).
    """

    key: str
    start: float
    first_frame: int
    data: list[tuple[float, int, bool]] = field(default_factory=list)
    data_frames: list[int] = field(default_factory=list)
    acks: list[tuple[float, int]] = field(default_factory=list)
    ack_frames: list[int] = field(default_factory=list)
    window: list[tuple[float, int]] = field(default_factory=list)
    window_lo: list[tuple[float, int]] = field(default_factory=list)
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


def session_series(facts: RudpSessionFacts) -> SessionSeries:
    """The points of one session the verifier traced (``facts.trace``)."""
    series = SessionSeries(facts.key, facts.start, facts.first_frame)
    series.window_limit = facts.window_limit
    series.clipped = facts.trace_points > len(facts.trace)
    series.points = facts.trace_points
    kinds = dict(facts.go_back_frames)
    start = facts.start
    fin_seq = facts.fin_seq
    highest = 0
    acked = 0
    last_sent = 0
    for frame, time, kind, value, hi, lo in facts.trace:
        t = round(time - start, 6)
        if kind == 2:  # the FIN
            if series.fin is None:
                series.fin = t
            continue
        if kind == 0:
            series.data.append((t, value, value <= highest))
            series.data_frames.append(frame)
            how = kinds.get(frame)
            if how is not None:
                kind_name: GoBackKind = (
                    "timeout"
                    if how == "timeout"
                    else "dupack"
                    if how == "dupack"
                    else "unexplained"
                )
                series.go_backs.append((t, value, kind_name))
            highest = max(highest, value)
            last_sent = value
            series.flight.append((t, max(1, value - acked)))
        else:
            if fin_seq is not None and value >= fin_seq:
                continue  # the ACK of the FIN: drawn as part of the FIN mark
            acked = max(acked, value)
            series.acks.append((t, acked))
            series.ack_frames.append(frame)
            if series.flight and acked >= last_sent:
                series.flight.append((t, 0))  # everything acknowledged: nothing in flight
        series.window.append((t, hi))
        series.window_lo.append((t, lo))
    return series


@dataclass
class CaptureSeries:
    """The series of a capture's first sessions, and how many sessions there were."""

    sessions: list[SessionSeries] = field(default_factory=list)
    total_sessions: int = 0


def capture_series(analysis: CaptureAnalysis, max_sessions: int = MAX_SESSIONS) -> CaptureSeries:
    """The series of an analysis run with ``trace_sessions`` (its first traced sessions)."""
    out = CaptureSeries(total_sessions=len(analysis.rudp_sessions))
    for facts in analysis.rudp_sessions:
        if facts.trace_points and len(out.sessions) < max_sessions:
            out.sessions.append(session_series(facts))
    return out


def collect_series(
    path: str | os.PathLike[str],
    ports: Ports = Ports(),  # noqa: B008 - frozen dataclass, immutable default
    *,
    max_window: int = ORIGINAL_MAX_WINDOW,
    min_rto: float = 0.2,
    max_sessions: int = MAX_SESSIONS,
    max_points: int = MAX_POINTS,
) -> CaptureSeries:
    """Read ``path`` streaming and return the point series of its RUDP sessions.

    Raises :class:`~stacklab.analysis.pcapio.CaptureError` for a file that is
    not a capture.  Sessions are keyed like the verifier's
    (``client ip:port->server ip:port``), in order of their first frame.  To
    get the verdicts too from the same read, run
    :func:`~stacklab.analysis.verify.analyze_capture` with
    ``trace_sessions`` and call :func:`capture_series` on its result.
    """
    from stacklab.analysis.verify import analyze_capture

    options = VerifyOptions(
        ports=ports,
        max_window=max_window,
        min_rto=min_rto,
        trace_sessions=max_sessions,
        trace_limit=max_points,
    )
    return capture_series(analyze_capture(path, options), max_sessions)


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
