"""Follow RUDP exchanges through a capture, one datagram at a time.

This module routes datagrams to their session (:class:`RudpTracker`) and
follows each session (:class:`RudpSession`): the handshake, the content, the
teardown, and the sender's Go-Back-N and AIMD behaviour as the rulebook
(``docs/rulebook.md``) defines them.  Two helpers hold the parts that need a
model of what the capture cannot see:

* :mod:`~stacklab.analysis.rudp_window`: the interval of windows a correct
  sender may have had (``hi`` for the upper bound, ``lo`` for the lower);
* :mod:`~stacklab.analysis.rudp_recovery`: round trips estimated from the
  capture (RFC 6298, Karn's rule) and the duplicate ACKs, which tell a
  timeout, a fast retransmit and a loss probe apart;
* :mod:`~stacklab.analysis.rudp_goback`: the go-back classification itself
  (:class:`~stacklab.analysis.rudp_goback.GoBackClassifier`, the base of
  :class:`RudpSession`).

It records facts (:class:`~stacklab.analysis.sessions.RudpSessionFacts`) and
*findings*: observations that break a rule, tagged with the check they
belong to and the frame that shows them.  Which check owns which rule:

* ``rudp.handshake``: SYN seq=x, ACK ack=x+1, command DATA seq=x+1, its ACK
  (ack = x+1, or x+1+length as in older captures), in this order;
* ``rudp.gbn``: a go-back resends from the base and continues in order; it
  follows a timeout or the third duplicate ACK; a loss probe is the base
  alone; no chunk beyond base + max window - 1; the receiver discards
  out-of-order chunks (its ACK never jumps over chunks it could only have
  kept out of order);
* ``rudp.aimd``: no DATA beyond base + hi - 1, and no sender that keeps
  stopping short of base + lo - 1 with data left;
* ``rudp.delivery``: retransmissions carry the same bytes, ACKs only cover
  chunks that were sent, no malformed DATA acknowledged, the FIN's SHA-256
  (stacklab extension) matches;
* ``rudp.integrity``: with CRC32C trailers negotiated, no chunk whose every
  copy had a wrong trailer is acknowledged;
* ``rudp.teardown``: FIN seq = N+1 only after chunk N is acknowledged, no
  DATA after it.

Memory per session is bounded: the payloads of recent chunks (to compare
retransmissions) are dropped as the base advances, the content is hashed in
chunk order (on a worker thread, :mod:`~stacklab.analysis.hashing`), and a
finished session keeps only its summary.  Nothing here reads files or
clocks: the caller feeds datagrams.

Like the capture scan, this module and its three helpers are compiled with
mypyc when stacklab is installed (``setup.py``): keep them fully typed, and
after editing them run ``make native`` (``tests/test_native_build.py``
checks that the compiled copy is current and gives the same results as the
sources).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import deque
from typing import Final

from stacklab.analysis.hashing import BLOCK as HASH_BLOCK
from stacklab.analysis.hashing import BackgroundHasher, StreamHash
from stacklab.analysis.rudp_goback import (
    GoBackClassifier,
    _r,
    record_finding,
)
from stacklab.analysis.scan import FlowKey, HotSink, flow_endpoints
from stacklab.analysis.sessions import RudpSessionFacts
from stacklab.gso import segment_limit, split_batch
from stacklab.wire import (
    ORIGINAL_MAX_WINDOW,
    RUDP_ABORT_PREFIX,
    RUDP_CRC_TRAILER_LEN,
    RUDP_HEADER,
    RUDP_HEADER_LEN,
)

log = logging.getLogger(__name__)

MIN_RTT_FOR_LOWER_BOUND = 0.0005
"""Smoothed round trip (s) below which the capture cannot bound a window from below."""
MAX_TRACE = 20_000
"""DATA and ACK points traced per session (for the charts)."""
_MAX_PENDING = 4096
"""Unacknowledged chunks whose payload is kept for comparison."""
_RECENT_CLOSED = 4096
"""Finished sessions remembered for late duplicates (FIN, its ACK)."""
_AT_ONCE = 0.005
"""Copies of a chunk closer than this share of the minimum RTO went out together."""

_TRAILER = RUDP_CRC_TRAILER_LEN
_MASK = 0xFFFFFFFF  # sequence numbers are 32-bit and wrap
_unpack = RUDP_HEADER.unpack_from
# Flag letters as byte values: the scan hands the hot path the flag as an int.
_SYN: Final = 0x53  # "S"
_ACK: Final = 0x41  # "A"
_DATA: Final = 0x44  # "D"
_FIN: Final = 0x46  # "F"
# What a copy of a chunk was like.
_GOOD: Final = 0
_MALFORMED: Final = 1
_BAD_CRC: Final = 2


PendingDigest = tuple[RudpSessionFacts, "hashlib._Hash", bytes | None, int]


def set_digest(pending: PendingDigest) -> None:
    """Fill in ``sha256`` (after :meth:`BackgroundHasher.wait`) and compare the FIN's."""
    f, sha, fin_digest, fin_frame = pending
    f.sha256 = sha.hexdigest()
    if fin_digest is not None and fin_digest.startswith(RUDP_ABORT_PREFIX):
        # The server's content failed mid-body (its origin): it says so instead of a digest.
        reason = fin_digest[len(RUDP_ABORT_PREFIX) :].decode("utf-8", errors="replace")
        record_finding(
            f,
            "rudp.delivery",
            fin_frame,
            f"the server aborted the transfer (its FIN says ABORT): {reason[:200]}",
        )
    elif fin_digest is not None and fin_digest != sha.digest():
        record_finding(
            f,
            "rudp.delivery",
            fin_frame,
            f"the FIN carries SHA-256 {fin_digest.hex()[:16]}..., "
            f"the chunks hash to {f.sha256[:16]}...",
        )


class _Sent:
    """A chunk recently sent: its payload (to compare resends) and its copies."""

    __slots__ = ("copies", "first", "frame", "good", "kind", "payload", "time", "times", "why")

    def __init__(self, payload: bytes, time: float, frame: int, kind: int, why: str) -> None:
        self.payload = payload
        self.time = time  # of the latest copy
        self.times = [time]  # of the first few copies
        self.first = time
        self.frame = frame  # of the latest copy
        self.copies = 1
        self.kind = kind  # of the latest copy
        self.good = kind == _GOOD  # any copy sound
        self.why = why  # what was wrong with a bad copy


class RudpSession(GoBackClassifier):
    """The live state of one exchange; :meth:`finish` turns it into facts."""

    # Slots, as in the base class: the interpreter reads them quickly.
    __slots__ = (
        "_hash",
        "_hash_next",
        "_last_ack_frame",
        "_lo_marks",
        "_max_ack_delay",
        "_peak",
        "_pending",
        "_pruned",
        "_synack",
        "bytes",
        "cmd_len",
        "data_packets",
        "digest",
        "end",
        "fin_digest",
        "fin_seen",
        "finished",
        "last_frame",
        "max_flight",
        "network_duplicates",
        "packets",
        "retransmissions",
        "trace",
        "trace_limit",
        "trace_points",
        "trailer",
    )

    def __init__(
        self,
        client: str,
        server: str,
        *,
        max_window: int = ORIGINAL_MAX_WINDOW,
        min_rto: float = 0.2,
        keep_series: bool = True,
        keep_notes: bool = False,
        keep_trace: bool = False,
        trace_limit: int = MAX_TRACE,
        hasher: BackgroundHasher | None = None,
    ) -> None:
        super().__init__(
            RudpSessionFacts(client, server),
            max_window=max_window,
            min_rto=min_rto,
            keep_series=keep_series,
            keep_notes=keep_notes,
            keep_trace=keep_trace,
        )
        self.trace_limit = trace_limit
        self.cmd_len = 0
        self.packets = 0
        self.last_frame = 0
        self.end = 0.0
        self.data_packets = 0
        self.retransmissions = 0
        self.network_duplicates = 0
        self.bytes = 0
        self.max_flight = 0
        self.finished = False
        self.trailer = 0
        self.fin_seen = False
        self.digest: hashlib._Hash | None = None
        self.fin_digest: bytes | None = None
        self.trace: list[tuple[int, float, int, int, int, int]] = []
        self.trace_points = 0
        self._last_ack_frame = 0  # frame of the ACK that covered everything sent
        self._pruned = 0
        self._pending: dict[int, _Sent] = {}  # chunks recently sent
        self._max_ack_delay = 0.0
        self._hash: StreamHash | None = (hasher or BackgroundHasher()).stream()
        self._hash_next = 1
        self._synack: int | None = None
        self._peak = 0  # most chunks ever outstanding (highest sent - highest ACK)
        self._lo_marks: dict[int, tuple[int, int]] = {}  # lo -> (ACK, frame) where first reached

    # -- bookkeeping --------------------------------------------------------

    def _trace(self, number: int, time: float, kind: int, value: int) -> None:
        self.trace_points += 1
        if len(self.trace) < self.trace_limit:
            self.trace.append((number, time, kind, value, self.bounds.hi, self.bounds.lo))

    # -- client -> server ---------------------------------------------------

    def client_other(self, number: int, seq: int, flag: int, payload: bytes) -> None:
        """A client datagram that is not an ACK: the SYN or the command."""
        f = self.f
        if flag == _SYN:
            if f.isn is None:
                f.isn = seq
                f.frames["syn"] = number
                if "synack" in f.frames:
                    self.find(
                        "rudp.handshake", number, f"SYN at frame {number} after the server's ACK"
                    )
            elif seq != f.isn:
                self.find("rudp.handshake", number, f"second SYN with seq {seq}, first had {f.isn}")
        elif flag == _DATA:
            self._command(number, seq, payload)
        else:
            f.malformed += 1  # not a flag of the protocol: counted, not judged

    def _command(self, number: int, seq: int, payload: bytes) -> None:
        f = self.f
        if "command" in f.frames:
            return  # a retransmitted command
        f.frames["command"] = number
        if self.trailer:  # a negotiated session: the command ends with its CRC32C
            payload = payload[: -self.trailer]
        f.command = payload.decode("utf-8", "replace")
        self.cmd_len = len(payload)
        if f.isn is None:
            self.find("rudp.handshake", number, "command DATA without a SYN before it")
        elif seq != (f.isn + 1) & _MASK:
            self.find(
                "rudp.handshake",
                number,
                f"command DATA has seq {seq}, expected ISN+1 = {(f.isn + 1) & _MASK}",
            )
        if "synack" not in f.frames:
            self.find("rudp.handshake", number, "command DATA before the server's SYN-ACK")

    def chunk_ack(self, number: int, time: float, ack: int) -> None:
        """A client ACK: cumulative for chunks, or the ACK of the FIN."""
        self._acks_seen += 1
        if self._burst_start >= 0.0:  # a client datagram ends a burst of DATA
            if self.keep_series:
                self.series.append((self._burst_start, self._burst_max))
            self._burst_start = -1.0
        acked = self.acked_seen
        f = self.f
        highest = self.highest_sent
        if ack > acked:
            if self.fin_seen and ack == f.fin_seq:
                if not f.fin_acked:
                    f.fin_acked = True
                    f.frames["fin_ack"] = number
                return
            if ack > highest:
                self.find(
                    "rudp.delivery",
                    number,
                    f"ACK {ack} acknowledges a chunk never sent (highest {highest})",
                )
                return
            self._advance(number, time, acked, ack)
        elif ack == acked and highest > acked:
            self.dups.add(ack, time, number)
            f.duplicate_acks += 1
            if self.keep_notes:
                self.note(number, "duplicate_ack", f"duplicate ACK {ack} (chunk {ack + 1} missing)")
        elif f.fin_seq is not None and ack == f.fin_seq and not f.fin_acked:
            f.fin_acked = True
            f.frames["fin_ack"] = number
        if self.keep_trace:
            self._trace(number, time, 1, ack)

    def _advance(self, number: int, time: float, acked: int, ack: int) -> None:
        """An ACK that raises the highest acknowledged chunk from ``acked`` to ``ack``."""
        pending = self._pending
        sent = pending.get(ack)
        if sent is not None:
            delay = time - sent.time
            if delay > self._max_ack_delay:  # noqa: PLR1730 - hot path, no call
                self._max_ack_delay = delay
            # Karn's rule: time only chunks sent once, and only an ACK that
            # covers no resent chunk (one that waited for a resend is no round trip).
            if sent.copies == 1 and (
                ack == acked + 1  # the common case, without a generator per ACK
                or all(c not in pending or pending[c].copies == 1 for c in range(acked + 1, ack))
            ):
                self.rtt.sample(time - sent.first)
        if ack == acked + 1:  # the common case: the chunk looked up above
            if sent is not None and not sent.good:
                check = "rudp.integrity" if sent.kind == _BAD_CRC else "rudp.delivery"
                self.find(check, number, f"{sent.why}, and the client acknowledged it (ACK {ack})")
        else:  # several chunks at once (the caller saw ack > acked)
            self._receiver_jump(number, acked, ack)
            self._acked_bad(number, pending, acked, ack)
        self.acked_seen = ack
        self.bounds.advanced(ack)
        highest = self.highest_sent
        outstanding = highest - acked  # as the ACK came back
        if outstanding > self._peak:  # noqa: PLR1730 - compiled, no call
            self._peak = outstanding
        self._ack_wait = ack
        self._progress_time = time
        # Keep acknowledged chunks for a while: a go-back that raced an ACK
        # on the wire resends them, and its timing is judged from them.
        hi = ack - 2 * self.max_window
        pruned = self._pruned
        if hi > pruned:
            if hi == pruned + 1:
                pending.pop(hi, None)
            else:
                for chunk in range(pruned + 1, hi + 1):
                    pending.pop(chunk, None)
            self._pruned = hi
        if ack == highest:
            self._last_ack_frame = number

    def _acked_bad(self, number: int, pending: dict[int, _Sent], acked: int, ack: int) -> None:
        """Chunks ``acked + 1 .. ack`` acknowledged at once: none of them may have been bad."""
        for chunk in range(acked + 1, ack + 1) if ack - acked <= 64 else ():
            copy = pending.get(chunk)
            if copy is not None and not copy.good:
                check = "rudp.integrity" if copy.kind == _BAD_CRC else "rudp.delivery"
                self.find(check, number, f"{copy.why}, and the client acknowledged it (ACK {ack})")

    def _receiver_jump(self, number: int, acked: int, ack: int) -> None:
        """A Go-Back-N receiver keeps chunks only in order (rule R1).

        The ACK moved from ``acked`` to ``ack``: the receiver had every chunk
        in between, in order.  The last duplicate ACK of ``acked`` says that
        when the receiver sent it, chunk ``acked + 1`` had not arrived, so
        every copy of it sent well before (more than twice the longest round
        trip of the capture) was lost, and the copy it accepted went out
        after that duplicate.  A later chunk whose last copy went out well
        before that accepted copy arrived ahead of it and was thrown away by a
        Go-Back-N receiver: acknowledging it now means the receiver kept it
        out of order.  The margins cover copies delayed or reordered by the
        network, so that none is ever taken for one kept (rule O4).
        """
        if self.f.options is not None:
            return  # a negotiated receiver may keep chunks beyond a hole (wire extensions)
        dup_time, dup_frame = self.dups.last(acked)
        rtt = self.rtt
        if dup_frame == 0 or rtt.samples < 3:
            return
        pending = self._pending
        gap = pending.get(acked + 1)
        if gap is None:
            return
        margin = 2 * rtt.max_rtt
        accepted = -1.0  # the first copy of the missing chunk sent after the duplicate
        for t in gap.times:
            if dup_time - margin < t <= dup_time:
                return  # a copy may have been on its way: the capture cannot tell
            if t > dup_time and accepted < 0.0:
                accepted = t
        if accepted < 0.0:
            return
        for chunk in range(acked + 2, min(ack, acked + 64) + 1):
            sent = pending.get(chunk)
            if sent is not None and sent.time + margin < accepted:
                self.find(
                    "rudp.gbn",
                    number,
                    f"selective repeat at the receiver: ACK {ack} covers chunk {chunk}, whose "
                    f"last copy (frame {sent.frame}) arrived before the copy of chunk "
                    f"{acked + 1} the receiver accepted (it still reported it missing at "
                    f"frame {dup_frame}); a Go-Back-N receiver discards out-of-order chunks",
                )
                return

    # -- server -> client ---------------------------------------------------

    def server_other(
        self, number: int, time: float, seq: int, ack: int, flag: int, payload: bytes
    ) -> None:
        """A server datagram that is not DATA: a handshake ACK or the FIN."""
        if flag == _ACK:
            self._handshake_ack(number, ack)
            if payload and self.f.frames.get("synack") == number:
                self._options(payload)
        elif flag == _FIN:
            self._fin(number, seq)
            if self.keep_trace:
                self._trace(number, time, 2, seq)
            if payload and self.f.frames.get("fin") == number:
                self.fin_digest = payload[:-_TRAILER] if self.trailer else payload
        else:
            self.f.malformed += 1

    def _handshake_ack(self, number: int, ack: int) -> None:
        f = self.f
        isn = f.isn
        frames = f.frames
        if "synack" not in frames:
            frames["synack"] = number
            self._synack = ack
            if isn is None:
                self.find("rudp.handshake", number, "server ACK without a SYN before it")
            elif ack != (isn + 1) & _MASK:
                self.find(
                    "rudp.handshake",
                    number,
                    f"SYN-ACK acknowledges {ack}, expected ISN+1 = {(isn + 1) & _MASK}",
                )
            return
        if "command" not in frames:
            if ack != self._synack:
                self.find("rudp.handshake", number, f"server ACK {ack} before the command DATA")
            return
        if "command_ack" not in frames:
            frames["command_ack"] = number
            if isn is None:
                return
            if ack == (isn + 1) & _MASK:
                f.command_ack = "seq"
            elif ack == (isn + 1 + self.cmd_len) & _MASK:
                f.command_ack = "bytes"
            else:
                self.find(
                    "rudp.handshake",
                    number,
                    f"command ACK acknowledges {ack}, expected {(isn + 1) & _MASK} "
                    f"(or {(isn + 1 + self.cmd_len) & _MASK})",
                )
            f.handshake = "rudp.handshake" not in f.finding_counts

    def _options(self, payload: bytes) -> None:
        """The stacklab extension: options accepted by the server in the SYN-ACK payload.

        A JSON object followed by a CRC32C trailer (README, wire extensions).
        The negotiated window replaces the default bound; with integrity,
        DATA payloads end with a 4-byte trailer that is not content, and the
        FIN carries the content's SHA-256.
        """
        for body in (payload[:-_TRAILER], payload):
            try:
                obj = json.loads(body)
            except ValueError:
                continue
            if isinstance(obj, dict):
                break
        else:
            return
        self.f.options = {k: v for k, v in obj.items() if isinstance(v, (int, bool, str))}
        window = obj.get("window")
        if type(window) is int and window >= 1:
            self.max_window = window
            self.bounds.set_limit(window)
        self.trailer = _TRAILER if obj.get("integrity") is True else 0
        self.f.integrity = self.trailer > 0

    def data(
        self,
        number: int,
        time: float,
        chunk: int,
        payload: bytes,
        length: int = -1,
        present: int = 0,
        crc_ok: bool = True,
    ) -> None:
        """A DATA chunk from the server: the heart of the Go-Back-N and AIMD checks.

        ``length`` is the header's length field when it differs from the
        ``present`` bytes (a malformed datagram), ``crc_ok`` whether a
        negotiated CRC32C trailer matched.
        """
        # Attributes read more than once are read once into locals: the
        # interpreted path pays for every lookup, the compiled one for none.
        data_packets = self.data_packets + 1
        self.data_packets = data_packets
        if data_packets == 1:
            self._progress_time = time
            if "command_ack" not in self.f.frames:
                self.find("rudp.handshake", number, "DATA before the command was acknowledged")
        last = self.last_sent
        held = self._held
        pending = self._pending
        sent = pending.get(chunk)
        again = False
        if held is not None:
            if (
                chunk == held.chunk
                and time - held.copy_time < self.min_rto * _AT_ONCE
                and self._acks_seen == held.acks_seen
            ):
                again = True  # the base sent twice at once (negotiated go-backs do)
                held.copy_time = time
            elif chunk == held.chunk:
                self._settle_lone(held, number, carried_on=False)
                last = held.last
            elif (
                chunk == held.chunk + 1
                and chunk <= held.highest
                and (self.acked_seen < held.chunk or self._go_back_allowed(held))
            ):
                self._settle_go_back(held)  # the resend continues in order
                last = held.chunk
            elif chunk == held.last + 1:
                self._settle_lone(held, number)
                last = held.last
            elif (
                held.chunk < chunk <= self.acked_seen + 1
                and self.acked_seen >= held.chunk
                and not self._go_back_allowed(held)
            ):
                # The resend alone was acknowledged, then the (new) base went
                # out again: a go-back with a window of one, or a probe and
                # then a probe of the new base.  Where the go-back would
                # break a rule, the probes keep them all.
                self._settle_lone(held, number)
                last = held.last
            else:
                self._settle_go_back(held)
                last = held.chunk
            if not again:
                self._held = None
        highest = self.highest_sent
        is_new = chunk > highest
        if not again:
            if chunk <= last and not is_new:
                if (
                    chunk == last
                    and chunk > self.acked_seen + 1
                    and sent is not None
                    and sent.payload == self._content(payload)
                    and time - sent.time < self.min_rto * 0.5
                ):
                    # The same mid-window chunk twice in a row at once: the
                    # network duplicated it (a sender resends from its base).
                    self.network_duplicates += 1
                    self.note(number, "duplicate", f"chunk {chunk} again: a network duplicate")
                    return
                self._start_resend(
                    number, time, chunk, last, sent.time if sent is not None else -1.0
                )
            elif chunk != last + 1:
                self._jump(number, chunk, last)
        # The lower bound: new data right after an advancing ACK shows the
        # sender had that ACK; the response it starts is judged at its end.
        ack_wait = self._ack_wait
        if ack_wait:
            if self._held is None and not again:
                lo = self.bounds.acted(ack_wait)
                # Where the lower-bound window first reached each size (rule S4).
                if lo not in self._lo_marks:
                    self._lo_marks[lo] = (self.acked_seen, number)
            self._ack_wait = 0
        # The upper bounds: the Go-Back-N limit, then the AIMD window.
        acked = self.acked_seen
        flight = chunk - acked
        max_window = self.max_window
        if flight > max_window:
            self.find(
                "rudp.gbn",
                number,
                f"chunk {chunk} beyond base + window - 1 = {acked + max_window} "
                f"(max window {max_window})",
            )
        elif flight > self.bounds.hi:
            hi = self.bounds.hi
            self.find(
                "rudp.aimd",
                number,
                f"chunk {chunk} sent with {flight} chunks in flight (base {acked + 1}), "
                f"but the AIMD window was at most {hi}: 1 at the start or half the window "
                "after a loss, plus 1 per advancing ACK",
            )
            if self.keep_notes:
                self.note(number, "window_exceeded", f"{flight} in flight, window at most {hi}")
        if flight > self.max_flight:
            self.max_flight = flight
            self.f.max_flight_frame = number
        # What the sender has outstanding (it cannot know which of it was lost).
        outstanding = (chunk if is_new else highest) - acked
        if outstanding > self._peak:  # noqa: PLR1730 - hot path, no call
            self._peak = outstanding
        if self._burst_start < 0.0:
            self._burst_start = time
            self._burst_max = flight
        elif flight > self._burst_max:
            self._burst_max = flight
        # Content: new chunks are hashed in order, retransmissions compared.
        kind = _GOOD
        why = ""
        if length >= 0 or not crc_ok:  # one test for the common, sound chunk
            if length >= 0:
                kind = _MALFORMED
                why = (
                    f"malformed DATA: chunk {chunk} (frame {number}) has length field {length}, "
                    f"{present} bytes present"
                )
            else:
                kind = _BAD_CRC
                why = f"chunk {chunk} (frame {number}) has a wrong CRC32C trailer"
            self.f.bad_chunks += 1
            self.note(number, "malformed" if kind == _MALFORMED else "bad_crc32c", why)
        trailer = self.trailer
        content = payload[:-trailer] if trailer else payload  # _content, inlined
        if not is_new:
            self.retransmissions += 1
            if self.keep_notes:
                self.note(number, "retransmission", f"chunk {chunk} resent")
            if sent is not None:
                if sent.payload != content and kind == _GOOD and sent.good:
                    self.find("rudp.delivery", number, f"chunk {chunk} resent with different bytes")
                sent.time = time
                sent.frame = number
                sent.copies += 1
                if len(sent.times) < 16:
                    sent.times.append(time)
                sent.kind = kind
                if kind == _GOOD:
                    if not sent.good:
                        sent.payload = content
                    sent.good = True
                else:
                    sent.why = why
        else:
            self.highest_sent = chunk
            size = len(content)
            self.bytes += size
            sha = self._hash
            if sha is not None:
                if chunk == self._hash_next:
                    sha.parts.append(content)  # StreamHash.update, inlined: the hot path
                    sha.size += size
                    if sha.size >= HASH_BLOCK:
                        sha.flush()
                    self._hash_next = chunk + 1
                else:
                    self._hash = None
            if len(pending) < _MAX_PENDING:
                pending[chunk] = _Sent(content, time, number, kind, why)
        self.last_sent = chunk
        self.last_data_time = time
        if self.keep_trace:
            self._trace(number, time, 0, chunk)
        if self.fin_seen and chunk >= self.f.fin_seq:  # type: ignore[operator]
            self.find(
                "rudp.teardown", number, f"DATA {chunk} at or after the FIN ({self.f.fin_seq})"
            )

    def _content(self, payload: bytes) -> bytes:
        return payload[: -self.trailer] if self.trailer else payload

    def _jump(self, number: int, chunk: int, last: int) -> None:
        """DATA that neither continues with ``last + 1`` nor goes back."""
        acked = self.acked_seen
        if chunk - 1 <= acked:
            return  # the chunks skipped were acknowledged meanwhile
        if chunk - 1 <= self.highest_sent:
            self.find(
                "rudp.gbn",
                number,
                f"jumped from {last} to {chunk}: {last + 1}..{chunk - 1} neither "
                "acknowledged nor resent: not a go-back (a selective repeat resends only "
                "the chunks it takes for lost)",
            )
        else:
            self.find(
                "rudp.gbn",
                number,
                f"chunk {chunk} skips {self.highest_sent + 1}..{chunk - 1}, never sent",
            )

    # -- the lower bound ----------------------------------------------------------------

    def _confirm_lower_bound(self, last_chunk: int) -> None:
        """Rule S4, judged on the whole session: the sender filled its window at least once.

        The largest window the sender demonstrably had while data was left
        (``lo`` reached it at an ACK ``a`` with ``a + lo - 1 <= last chunk``)
        must be matched, within two chunks, by the most chunks it ever had
        outstanding.  A capture on a fast path may show the receiver's ACKs
        well ahead of the sender's answers, so a correct sender can look
        short for a while; over a whole transfer it fills its window at some
        point, while a stop-and-wait sender, or one capped below its window,
        never does.
        """
        if self.f.options is not None:
            # Negotiated sessions ACK every few chunks and may keep chunks
            # beyond a hole: the capture cannot bound their window from below.
            return
        if self.rtt.samples == 0 or self.rtt.srtt < MIN_RTT_FOR_LOWER_BOUND:
            # A receiver that answers faster than the sender's own send loop
            # (an unimpeded loopback) hides the window: every chunk is
            # acknowledged before the next one leaves, whatever the window.
            return
        best = 0
        where = 0
        for lo, (acked, frame) in self._lo_marks.items():
            if acked + lo - 1 <= last_chunk and lo > best:
                best = lo
                where = frame
        peak = self._peak
        # Two chunks of slack: an ACK counted by mistake as a burst went on,
        # and an ACK seen in the capture before the sender had it.
        if best < 4 or peak >= best - 2:
            return
        if peak <= 1:
            head = (
                "stop-and-wait: never more than 1 chunk outstanding, although the window "
                f"reached at least {best}"
            )
        else:
            head = (
                f"sends less than its window allows: never more than {peak} chunks "
                f"outstanding, although the window reached at least {best}"
            )
        self.find(
            "rudp.aimd",
            where,
            f"{head} (frame {where}) with data left; AIMD fills the window: +1 per advancing ACK",
        )

    # -- teardown -----------------------------------------------------------------------

    def _fin(self, number: int, seq: int) -> None:
        held = self._held
        if held is not None:
            self._held = None
            if seq == held.last + 1:
                self._settle_lone(held, number)
            else:
                self._settle_go_back(held)
        self._ack_wait = 0
        f = self.f
        if f.fin_seq is not None:
            if seq != f.fin_seq:
                self.find(
                    "rudp.teardown", number, f"second FIN with seq {seq}, first had {f.fin_seq}"
                )
            return
        f.fin_seq = seq
        self.fin_seen = True
        f.frames["fin"] = number
        if self.acked_seen < self.highest_sent:
            self.find(
                "rudp.teardown",
                number,
                f"FIN sent while chunks {self.acked_seen + 1}..{self.highest_sent} were unacknowledged",
            )
        if seq != self.highest_sent + 1:
            self.find(
                "rudp.teardown",
                number,
                f"FIN seq {seq}, expected last chunk + 1 = {self.highest_sent + 1}",
            )

    # -- result --------------------------------------------------------------

    def finish(self) -> RudpSessionFacts:
        """Close the session: compute the verdict facts and drop the heavy state."""
        f = self.f
        if self.finished:
            return f
        held = self._held
        if held is not None:
            self._held = None
            self._settle_lone(held, held.frame, carried_on=False)
        last_chunk = f.fin_seq - 1 if f.fin_seq is not None else self.highest_sent
        self._confirm_lower_bound(last_chunk)
        self.finished = True
        if self._burst_start >= 0.0 and self.keep_series:
            self.series.append((self._burst_start, self._burst_max))
        start = f.start
        # round(), not _r(): one call less per burst (sessions have tens of thousands).
        f.flights = [[round(t - start, 6), m] for t, m in self.series]
        self.series = []
        f.packets = self.packets
        f.last_frame = self.last_frame
        f.end = _r(self.end)
        f.data_packets = self.data_packets
        f.retransmissions = self.retransmissions
        f.network_duplicates = self.network_duplicates
        f.bytes = self.bytes
        f.chunks = self.highest_sent
        f.max_flight = self.max_flight
        f.max_window = self.bounds.max_hi
        f.min_window = self.bounds.max_lo
        f.window_limit = self.max_window
        f.responses = self.bounds.acted_count
        f.rto_estimate = _r(self.rtt.rto()) if self.rtt.samples else None
        f.max_ack_delay = _r(max(f.max_ack_delay, self._max_ack_delay))
        f.notes = self.notes
        f.trace = self.trace
        f.trace_points = self.trace_points
        self.notes = []
        self.trace = []
        if self._last_ack_frame:
            f.frames["last_ack"] = self._last_ack_frame
        f.all_acked = (
            f.fin_seq is not None
            and last_chunk >= 1
            and self.acked_seen >= last_chunk
            and self.highest_sent == last_chunk
        )
        if f.all_acked and self._hash is not None and self._hash_next == last_chunk + 1:
            self._hash.close()
            self.digest = self._hash.sha  # read by digest() once the hasher has caught up
        f.complete = f.all_acked and f.fin_acked
        self._pending = {}
        self._hash = None
        return f

    def pending_digest(self) -> PendingDigest | None:
        """What is left to do once the hasher has caught up (see :func:`set_digest`)."""
        if self.digest is None:
            return None
        pending = (self.f, self.digest, self.fin_digest, self.f.frames.get("fin", self.last_frame))
        self.digest = None
        return pending

    def sync(self) -> None:
        """Refresh the facts of a finished session after late duplicates."""
        f = self.f
        f.packets = self.packets
        f.last_frame = self.last_frame
        f.end = _r(self.end)


def reverse_key(key: FlowKey) -> FlowKey:
    """The flow key of the other direction."""
    if isinstance(key, tuple):
        return (key[2], key[3], key[0], key[1])
    return key[4:8] + key[0:4] + key[10:12] + key[8:10]


class RudpTracker(HotSink):
    """Route RUDP datagrams to their session; hand out finished sessions.

    A datagram to ``port`` comes from a client, one from ``port`` from the
    server.  A SYN on a flow whose session already went past its command
    starts a new session (client port reuse).  A session whose FIN is
    acknowledged is finished at once (its heavy state freed) and stays
    reachable for late duplicates until many newer sessions have finished.
    """

    def __init__(
        self,
        port: int,
        *,
        max_window: int = ORIGINAL_MAX_WINDOW,
        min_rto: float = 0.2,
        keep_series: bool = True,
        keep_notes: bool = False,
        trace_sessions: int = 0,
        trace_limit: int = MAX_TRACE,
    ) -> None:
        self.port = port
        self.trace_sessions = trace_sessions
        self.trace_limit = trace_limit
        self.created = 0
        self.max_window = max_window
        self.min_rto = min_rto
        self.keep_series = keep_series
        self.keep_notes = keep_notes
        self.flows: dict[FlowKey, tuple[RudpSession, bool]] = {}
        self.recent: deque[tuple[FlowKey, RudpSession]] = deque()
        self.done: list[RudpSessionFacts] = []
        self.open: dict[int, RudpSession] = {}  # id -> session not finished yet
        self.digests: list[PendingDigest] = []
        self.stray = 0
        self.hasher = BackgroundHasher()
        # Split captured GSO batches (stacklab.gso); off when the reader already
        # split them (the tshark engine: the dissector's split).
        self.split_gso = True

    def _new(
        self, key: FlowKey, from_client: bool, number: int, time: float
    ) -> tuple[RudpSession, bool]:
        client_key = key if from_client else reverse_key(key)
        src, sport, dst, dport = flow_endpoints(client_key)
        session = RudpSession(
            _ep(src, sport),
            _ep(dst, dport),
            max_window=self.max_window,
            min_rto=self.min_rto,
            keep_series=self.keep_series,
            keep_notes=self.keep_notes,
            keep_trace=self.created < self.trace_sessions,
            trace_limit=self.trace_limit,
            hasher=self.hasher,
        )
        self.created += 1
        session.f.start = _r(time)
        session.f.first_frame = number
        self.flows[client_key] = (session, True)
        self.flows[reverse_key(client_key)] = (session, False)
        self.open[id(session)] = session
        return session, from_client

    def feed(self, number: int, time: float, key: FlowKey, to_port: bool, datagram: bytes) -> None:
        """One UDP datagram on the RUDP port; ``to_port``: sent to it, i.e. by a client."""
        if len(datagram) < RUDP_HEADER_LEN:
            entry = self.flows.get(key)
            if entry is not None:
                entry[0].f.malformed += 1
            else:
                self.stray += 1
            return
        seq, ack, flag, length = _unpack(datagram)
        self.fields(
            number, time, key, to_port, seq, ack, flag[0], length, datagram, 0, len(datagram)
        )

    def raw(self, number: int, time: float, key: FlowKey, to_port: bool, datagram: bytes) -> None:
        """The scan's name for :meth:`feed`."""
        self.feed(number, time, key, to_port, datagram)

    def fields(
        self,
        number: int,
        time: float,
        key: FlowKey,
        to_port: bool,
        seq: int,
        ack: int,
        flag: int,
        length: int,
        buf: bytes,
        start: int,
        stop: int,
    ) -> None:
        """One RUDP datagram, header decoded; the datagram is ``buf[start:stop]``.

        This is the hot path of ``stacklab verify``: the capture scan decodes
        the RUDP header together with the IP and UDP fields, so an ACK costs
        no slicing at all.
        """
        entry = self.flows.get(key)
        if entry is None:
            entry = self._new(key, to_port, number, time)
        elif flag == _SYN and entry[1] and ("command" in entry[0].f.frames or entry[0].finished):
            old = entry[0]
            if old.finished or old.fin_seen or seq != old.f.isn:
                # Client port reuse: a new session.  (The same SYN again while
                # the session runs is a late or duplicated copy of its SYN.)
                self._finish(old)
                entry = self._new(key, True, number, time)
        session, from_client = entry
        present = stop - start - RUDP_HEADER_LEN
        if (
            present > length
            and self.split_gso
            and self._split(number, time, key, to_port, session, buf, start, stop)
        ):
            return
        session.packets += 1
        session.last_frame = number
        session.end = time
        wrong_length = -1
        if present != length:
            session.f.malformed += 1
            wrong_length = length
            length = min(length, present)  # never read past the datagram
        begin = start + RUDP_HEADER_LEN
        if from_client:
            if flag == _ACK:
                session.chunk_ack(number, time, ack)
                if session.fin_seen and session.f.fin_acked and not session.finished:
                    self._finish(session, key)
            else:
                session.client_other(number, seq, flag, buf[begin : begin + length])
        elif flag == _DATA:
            crc_ok = True
            if session.trailer:
                end = begin + length
                crc_ok = end - start >= RUDP_HEADER_LEN + _TRAILER and _crc32c(
                    buf[start : end - _TRAILER]
                ) == int.from_bytes(buf[end - _TRAILER : end], "big")
            session.data(
                number, time, seq, buf[begin : begin + length], wrong_length, present, crc_ok
            )
        else:
            session.server_other(number, time, seq, ack, flag, buf[begin : begin + length])
        if session.finished:
            session.sync()

    def _split(
        self,
        number: int,
        time: float,
        key: FlowKey,
        to_port: bool,
        session: RudpSession,
        buf: bytes,
        start: int,
        stop: int,
    ) -> bool:
        """A UDP GSO batch as the capture recorded it: each segment fed on its own.

        Same frame and time for every segment (:mod:`~stacklab.gso`
        has the rules); False when the datagram is not a valid batch, which
        then counts as malformed like any datagram whose length field
        disagrees with its size.
        """
        f = session.f
        limit = segment_limit(f.options, "synack" in f.frames)
        bounds = split_batch(buf, start, stop, limit)
        if isinstance(bounds, str):
            if self.keep_notes:
                session.note(number, "malformed", bounds)
            return False
        f.gso_batches += 1
        for i in range(len(bounds) - 1):
            a, b = bounds[i], bounds[i + 1]
            seq, ack, flag, length = _unpack(buf, a)
            self.fields(number, time, key, to_port, seq, ack, flag[0], length, buf, a, b)
        return True

    def batch(
        self, number: int, time: float, key: FlowKey, to_port: bool, segments: list[bytes]
    ) -> None:
        """A GSO batch another reader already split (the tshark engine: the dissector's split)."""
        for segment in segments:
            self.feed(number, time, key, to_port, segment)
        entry = self.flows.get(key)
        if entry is not None:
            entry[0].f.gso_batches += 1

    def _finish(self, session: RudpSession, key: FlowKey | None = None) -> None:
        if session.finished:
            return
        self.done.append(session.finish())
        self.open.pop(id(session), None)
        pending = session.pending_digest()
        if pending is not None:
            self.digests.append(pending)
        if key is not None:
            self.recent.append((key, session))
            if len(self.recent) > _RECENT_CLOSED:
                old_key, old = self.recent.popleft()
                for k in (old_key, reverse_key(old_key)):
                    if k in self.flows and self.flows[k][0] is old:
                        del self.flows[k]

    def sessions(self) -> list[RudpSessionFacts]:
        """Every session, finished or not, in order of first frame (call once, at the end)."""
        for session in list(self.open.values()):
            self._finish(session)
        self.hasher.wait()
        for pending in self.digests:
            set_digest(pending)
        self.hasher.close()
        self.digests = []
        return sorted(self.done, key=lambda s: s.first_frame)


def _crc32c(data: bytes) -> int:
    """CRC32C, imported on first use: the package costs 20 ms of start-up (importlib.metadata)."""
    from crc32c import crc32c

    return crc32c(data)


def _ep(addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"
