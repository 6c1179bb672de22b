"""Verify a capture while it is being written: frames fed one at a time.

``stacklab verify`` walks a finished file with the compiled scan
(:mod:`~stacklab.analysis.scan`), which reads big blocks and stops at the end
of the file.  ``stacklab watch`` reads dumpcap's pcapng stream through a pipe
instead, so this module feeds each frame, as soon as it is whole, to the same
trackers (:func:`~stacklab.analysis.verify.new_trackers`) and judges them
with the same code (:func:`~stacklab.analysis.verify.finish_analysis`): the
final verdicts of a stream equal ``verify`` on the saved file.  Between
frames, :func:`live_rows` reads the trackers' state for a live table.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import BinaryIO

from stacklab.analysis.pcapio import CaptureReader, Frame, parse_packet
from stacklab.analysis.rudp import RudpTracker
from stacklab.analysis.sessions import (
    RUDP_CHECKS,
    CaptureAnalysis,
    RudpSessionFacts,
    VerifyOptions,
)
from stacklab.analysis.verify import finish_analysis, new_trackers


class StreamAnalysis:
    """The verifier's trackers, fed frame by frame; :meth:`finish` judges them."""

    def __init__(self, options: VerifyOptions | None = None) -> None:
        self.options = options or VerifyOptions()
        self.rudp, self.dhcp, self.dns, self.app = new_trackers(self.options)
        self.frames = 0
        self.finished: CaptureAnalysis | None = None

    def feed(self, frame: Frame) -> None:
        """One captured frame, in capture order."""
        self.frames = frame.number
        packet = parse_packet(frame)
        if packet is None:
            return
        ports = self.options.ports
        if packet.proto == "udp":
            if ports.rudp in (packet.sport, packet.dport):
                key = (packet.src, packet.sport, packet.dst, packet.dport)
                to_port = packet.dport == ports.rudp
                self.rudp.feed(packet.number, packet.time, key, to_port, packet.payload)
            elif ports.dns in (packet.sport, packet.dport):
                self.dns.feed(
                    packet.number,
                    packet.src,
                    packet.sport,
                    packet.dst,
                    packet.dport,
                    packet.payload,
                )
            elif ports.dhcp in (packet.sport, packet.dport):
                self.dhcp.feed(
                    packet.number,
                    packet.src,
                    packet.sport,
                    packet.dst,
                    packet.dport,
                    packet.payload,
                )
        elif packet.proto == "tcp" and ports.app in (packet.sport, packet.dport):
            self.app.feed(packet)

    def finish(
        self, path: str, *, link_type: str = "unknown", truncated: bool = False
    ) -> CaptureAnalysis:
        """The verdicts, as :func:`~stacklab.analysis.verify.analyze_capture` gives them.

        Call once: the trackers hand over their sessions and forget them.
        """
        if self.finished is not None:
            return self.finished
        result = CaptureAnalysis(
            path=path, packets=self.frames, link_type=link_type, truncated=truncated
        )
        if truncated:
            result.warnings.append(
                f"capture is truncated: analysed the {self.frames} complete frames before the cut"
            )
        self.finished = finish_analysis(
            result, self.options, self.rudp, self.dhcp, self.dns, self.app
        )
        return self.finished


def analyze_stream(
    stream: BinaryIO,
    options: VerifyOptions | None = None,
    *,
    name: str = "<stream>",
    on_frame: Callable[[StreamAnalysis, Frame], object] | None = None,
) -> CaptureAnalysis:
    """Verify a pcap or pcapng stream (a pipe, a socket, a file) as its frames arrive.

    ``on_frame`` is called after each frame is fed (a live display reads
    :func:`live_rows` there).  Raises
    :class:`~stacklab.analysis.pcapio.CaptureError` when the stream is not a
    capture; a stream cut inside a record is analysed up to the cut.
    """
    analysis = StreamAnalysis(options)
    reader = CaptureReader.from_stream(stream, name)
    for frame in reader:
        analysis.feed(frame)
        if on_frame is not None:
            on_frame(analysis, frame)
    return analysis.finish(name, link_type=reader.linktype_name, truncated=reader.truncated)


def analyze_frames(
    frames: Iterable[Frame], options: VerifyOptions | None = None, *, name: str = "<frames>"
) -> CaptureAnalysis:
    """Verify frames from any source (already read, generated, filtered)."""
    analysis = StreamAnalysis(options)
    for frame in frames:
        analysis.feed(frame)
    return analysis.finish(name)


@dataclass(frozen=True, slots=True)
class LiveRow:
    """One RUDP session as the trackers see it so far (a row of ``stacklab watch``)."""

    session: str
    packets: int
    chunks: int
    retransmissions: int
    window: int
    go_backs: int
    state: str  # "handshake", "transfer", "closing", "done"
    checks: dict[str, str]  # check id -> "ok so far" / "fail" (a rule break already seen)


def live_rows(tracker: RudpTracker) -> list[LiveRow]:
    """The sessions of a tracker still being fed, in order of their first frame.

    A check shows ``fail`` as soon as the tracker has seen a rule break for
    it; otherwise ``ok so far``: the final verdict (which also judges what
    is missing, such as an unacknowledged chunk) comes from
    :meth:`StreamAnalysis.finish`.
    """
    rows = []
    for facts in tracker.done:
        rows.append((facts.first_frame, _row_from_facts(facts)))
    for session in tracker.open.values():
        f = session.f
        if session.fin_seen:
            state = "closing"
        elif "command" in f.frames:
            state = "transfer"
        else:
            state = "handshake"
        row = LiveRow(
            session=f.key,
            packets=session.packets,
            chunks=session.highest_sent,
            retransmissions=session.retransmissions,
            window=session.bounds.hi,
            go_backs=f.go_backs,
            state=state,
            checks=_check_states(f.finding_counts),
        )
        rows.append((f.first_frame, row))
    rows.sort(key=lambda item: item[0])
    return [row for _first, row in rows]


def _row_from_facts(facts: RudpSessionFacts) -> LiveRow:
    return LiveRow(
        session=facts.key,
        packets=facts.packets,
        chunks=facts.chunks,
        retransmissions=facts.retransmissions,
        window=facts.max_window,
        go_backs=facts.go_backs,
        state="done" if facts.complete else "closed",
        checks=_check_states(facts.finding_counts),
    )


def _check_states(counts: dict[str, int]) -> dict[str, str]:
    return {check: "fail" if counts.get(check) else "ok so far" for check in RUDP_CHECKS}


def stream_name(path: str | os.PathLike[str] | None) -> str:
    """How a stream is named in the verdicts: the file it is saved to, if any."""
    return os.fspath(path) if path is not None else "<live>"
