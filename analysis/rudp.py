"""Follow RUDP exchanges through a capture, one datagram at a time.

The tracker infers what the sender (the server) must have been doing from
what the wire shows: the base (lowest unacknowledged chunk) from the client's
cumulative ACKs, go-backs from DATA that does not continue with the previous
chunk + 1, and the AIMD window by replaying the rule on the observed ACKs and
loss events: start at 1, +1 per ACK that advances the base (capped at the
maximum window), halve (floor 1) on a timeout.

It records facts (:class:`~stacklab.analysis.sessions.RudpSessionFacts`) and
*findings*: observations that break a rule, tagged with the check they
belong to and the frame that shows them.  Which check owns which rule:

* ``rudp.handshake``: SYN seq=x, ACK ack=x+1, command DATA seq=x+1, its ACK
  (ack = x+1, or x+1+length as in older captures), in this order;
* ``rudp.gbn``: a go-back resends from the lowest unacknowledged chunk and
  continues in order; it follows a timeout (the chunk went unacknowledged
  for ``min_rto``) or duplicate ACKs; no chunk beyond base + max_window - 1;
* ``rudp.aimd``: no DATA beyond base + (AIMD window) - 1, the window being
  the replayed one above; what exceeds the maximum window itself is the
  Go-Back-N bound's business, so one broken rule fails one check;
* ``rudp.delivery``: retransmissions carry the same bytes, ACKs only cover
  chunks that were sent, the FIN's SHA-256 (stacklab extension) matches;
* ``rudp.teardown``: FIN seq = N+1 only after chunk N is acknowledged, no
  DATA after it.

A capture is one vantage point, so the model is generous wherever the wire
cannot tell what the sender knew, and strict where it can:

* ACKs may still be on their way, or lost after the capture point: a go-back
  below the captured base rewinds the model to the sender's base, and the
  ACKs set aside count again as soon as the client repeats them;
* a go-back triggered by duplicate ACKs does not halve the model's window
  (whether the sender halved depends on ACKs reordering may hide);
* recognised sender refinements that stay Go-Back-N on the wire: loss probes
  (the base alone, resent sooner than any timeout, after which the sender
  carries on) and the base sent twice at a go-back.  No chunk may go beyond
  base + window - 1, not even on duplicate ACKs (RFC 3042's limited transmit
  is not Go-Back-N as this stack defines it).  A lone resend *after a
  timeout* is a selective repeat and fails.

Memory per session is bounded: the payloads of recent chunks (to compare
retransmissions) are dropped as the base advances, the content is hashed in
chunk order (on a worker thread, :mod:`~stacklab.analysis.hashing`), and a
finished session keeps only its summary.  Nothing here reads files or
clocks: the caller feeds datagrams.

Like the capture scan, this module is compiled with mypyc when stacklab is
installed (``setup.py``): keep it fully typed, and after editing it run
``make native`` (``tests/test_native_build.py`` checks that the compiled copy
is current and gives the same results as this source).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import deque
from typing import Final

from stacklab.analysis.hashing import BLOCK as HASH_BLOCK
from stacklab.analysis.hashing import BackgroundHasher, StreamHash
from stacklab.analysis.scan import FlowKey, HotSink, flow_endpoints
from stacklab.analysis.sessions import Finding, RudpSessionFacts
from stacklab.wire import ORIGINAL_MAX_WINDOW, RUDP_CRC_TRAILER_LEN, RUDP_HEADER, RUDP_HEADER_LEN

log = logging.getLogger(__name__)

MAX_FINDINGS_PER_CHECK = 20
"""Findings kept per check and session (all of them are counted)."""
_MAX_PENDING = 4096
"""Unacknowledged chunks whose payload is kept for comparison."""
_RECENT_CLOSED = 4096

"""Finished sessions remembered for late duplicates (FIN, its ACK)."""

_TRAILER = RUDP_CRC_TRAILER_LEN
_MASK = 0xFFFFFFFF  # sequence numbers are 32-bit and wrap
_unpack = RUDP_HEADER.unpack_from
# Flag letters as byte values: the scan hands the hot path the flag as an int.
_SYN: Final = 0x53  # "S"
_ACK: Final = 0x41  # "A"
_DATA: Final = 0x44  # "D"
_FIN: Final = 0x46  # "F"


def _r(t: float) -> float:
    return round(t, 6)


def record_finding(f: RudpSessionFacts, check: str, frame: int, detail: str) -> None:
    """Count a rule break; keep the first few with their frames."""
    count = f.finding_counts.get(check, 0) + 1
    f.finding_counts[check] = count
    if count <= MAX_FINDINGS_PER_CHECK:
        f.findings.append(Finding(check, frame, detail))


PendingDigest = tuple[RudpSessionFacts, "hashlib._Hash", bytes | None, int]


def set_digest(pending: PendingDigest) -> None:
    """Fill in ``sha256`` (after :meth:`BackgroundHasher.wait`) and compare the FIN's."""
    f, sha, fin_digest, fin_frame = pending
    f.sha256 = sha.hexdigest()
    if fin_digest is not None and fin_digest != sha.digest():
        record_finding(
            f,
            "rudp.delivery",
            fin_frame,
            f"the FIN carries SHA-256 {fin_digest.hex()[:16]}..., "
            f"the chunks hash to {f.sha256[:16]}...",
        )


class _Sent:
    """A chunk recently sent: its payload (to compare resends) and last transmission time."""

    __slots__ = ("payload", "time")

    def __init__(self, payload: bytes, time: float) -> None:
        self.payload = payload
        self.time = time


class RudpSession:
    """The live state of one exchange; :meth:`finish` turns it into facts.

    Hot counters live in slots and are copied into the facts at the end.
    """

    __slots__ = (
        "_advanced",
        "_advances",
        "_burst_max",
        "_burst_start",
        "_credit",
        "_credit_ack",
        "_credit_grew",
        "_hash",
        "_hash_next",
        "_held",
        "_last_ack_frame",
        "_last_advance",
        "_last_dupack",
        "_last_sent",
        "_max_ack_delay",
        "_pending",
        "_pruned",
        "_synack",
        "acked_seen",
        "bytes",
        "cmd_len",
        "data_packets",
        "digest",
        "dupacks",
        "end",
        "f",
        "fin_digest",
        "fin_seen",
        "finished",
        "highest_ack",
        "highest_sent",
        "keep_series",
        "last_frame",
        "max_flight",
        "max_window",
        "min_rto",
        "model_max",
        "packets",
        "retransmissions",
        "series",
        "trailer",
        "window",
    )

    def __init__(
        self,
        client: str,
        server: str,
        *,
        max_window: int = ORIGINAL_MAX_WINDOW,
        min_rto: float = 0.2,
        keep_series: bool = True,
        hasher: BackgroundHasher | None = None,
    ) -> None:
        self.f = RudpSessionFacts(client, server)
        self.max_window = max_window
        self.min_rto = min_rto
        self.keep_series = keep_series
        self.window = 1
        self.model_max = 0
        self.highest_ack = 0  # the sender's view: the base is highest_ack + 1
        self.acked_seen = 0  # the highest cumulative ACK in the capture
        self.highest_sent = 0
        self.dupacks = 0
        self.cmd_len = 0
        self.packets = 0
        self.last_frame = 0
        self.end = 0.0
        self.data_packets = 0
        self.retransmissions = 0
        self.bytes = 0
        self.max_flight = 0
        self.finished = False
        self.trailer = 0
        self.fin_seen = False
        self.digest: hashlib._Hash | None = None
        self.fin_digest: bytes | None = None
        self.series: list[tuple[float, int]] = []
        self._last_sent = 0
        self._last_advance = 0.0
        self._last_ack_frame = 0  # frame of the ACK that covered everything sent
        self._last_dupack = -1.0
        self._pruned = 0
        self._advances: deque[tuple[int, int, bool]] = deque(
            maxlen=256
        )  # (ack before, after, grew)
        self._credit: list[tuple[int, bool]] = []  # ACKs set aside at a go-back: (ack, window grew)
        self._credit_ack = 0
        self._credit_grew = 0
        self._pending: dict[int, _Sent] = {}  # chunks recently sent
        self._max_ack_delay = 0.0
        self._hash: StreamHash | None = (hasher or BackgroundHasher()).stream()
        self._hash_next = 1
        self._held: tuple[int, float, int, int, float, bool, int, int, int] | None = None
        self._advanced = 0  # ACKs that advanced the base, ever
        self._burst_start = -1.0
        self._burst_max = 0
        self._synack: int | None = None

    # -- bookkeeping --------------------------------------------------------

    def find(self, check: str, frame: int, detail: str) -> None:
        """Record a rule break (the first few are kept with their frames)."""
        record_finding(self.f, check, frame, detail)

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
        if self._burst_start >= 0.0:
            if self.keep_series:
                self.series.append((self._burst_start, self._burst_max))
            self._burst_start = -1.0
        highest = self.highest_ack
        if ack > highest:
            f = self.f
            if self.fin_seen and ack == f.fin_seq:
                if not f.fin_acked:
                    f.fin_acked = True
                    f.frames["fin_ack"] = number
                return
            if ack > self.highest_sent:
                self.find(
                    "rudp.delivery",
                    number,
                    f"ACK {ack} acknowledges a chunk never sent (highest {self.highest_sent})",
                )
                return
            self.highest_ack = ack
            if ack > self.acked_seen:  # noqa: PLR1730 - hot path, no call
                self.acked_seen = ack
            self._last_advance = time
            self.dupacks = 0
            self._advanced += 1
            grew = self.window < self.max_window
            if grew:
                self.window += 1
            self._advances.append((highest, ack, grew))
            if self._credit:
                self._credit = [c for c in self._credit if c[0] > ack]
                self._recount_credit()
            pending = self._pending
            sent = pending.get(ack)
            if sent is not None:
                delay = time - sent.time
                if delay > self._max_ack_delay:  # noqa: PLR1730 - hot path, no call
                    self._max_ack_delay = delay
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
            if ack == self.highest_sent:
                self._last_ack_frame = number
        elif ack == highest and self.highest_sent > highest:
            self.dupacks += 1
            self.f.duplicate_acks += 1
            self._last_dupack = time
        elif self.f.fin_seq is not None and ack == self.f.fin_seq and not self.f.fin_acked:
            self.f.fin_acked = True
            self.f.frames["fin_ack"] = number

    # -- server -> client ---------------------------------------------------

    def server_other(self, number: int, seq: int, ack: int, flag: int, payload: bytes) -> None:
        """A server datagram that is not DATA: a handshake ACK or the FIN."""
        if flag == _ACK:
            self._handshake_ack(number, ack)
            if payload and self.f.frames.get("synack") == number:
                self._options(payload)
        elif flag == _FIN:
            self._fin(number, seq)
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

        A JSON object followed by a CRC32C trailer (WIRE.md, extensions).  The
        negotiated window replaces the default bound; with integrity, DATA
        payloads end with a 4-byte trailer that is not content, and the FIN
        carries the content's SHA-256.
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
        self.trailer = _TRAILER if obj.get("integrity") is True else 0

    def data(self, number: int, time: float, chunk: int, payload: bytes) -> None:
        """A DATA chunk from the server: the heart of the Go-Back-N and AIMD checks."""
        self.data_packets += 1
        window = self.window
        if window > self.model_max:  # noqa: PLR1730 - hot path, no call
            self.model_max = window
        if self.data_packets == 1:
            self._first_data(number)
        last = self._last_sent
        highest_sent = self.highest_sent
        # The sender's base as the model sees it, raised by ACKs set aside at
        # a go-back (they may have reached the sender since): generous.
        acked = self.highest_ack
        if self._credit_ack > acked:  # noqa: PLR1730 - hot path, no call
            acked = self._credit_ack
        held = self._held
        probing = False
        if held is not None:
            sent = self._pending.get(chunk)
            since_tx = time - sent.time if sent is not None else self.min_rto
            if chunk == held[6] + 1 and held[1] - held[4] < self.min_rto * 0.95:
                # Loss probes: the base alone, resent sooner than any timeout
                # (maybe several times, maybe a new base after an ACK), and
                # the sender carries on where it was.  Not a go-back.
                self._held = None
                self.f.probes += 1
                last = held[6]
            elif (
                chunk <= held[6]
                and held[2] <= chunk <= acked + 1
                and since_tx < self.min_rto * 0.95
            ):
                probing = True  # another probe, or the base sent twice at a go-back
            else:
                self._settle()
                window = self.window
                acked = self.highest_ack
                if self._credit_ack > acked:  # noqa: PLR1730
                    acked = self._credit_ack
        if chunk != last + 1 and not probing:
            if chunk <= last:
                sent = self._pending.get(chunk)
                previous = sent.time if sent is not None else self._last_advance
                # Judged at the next DATA: a lone resend of the base after
                # which the sender carries on is a loss probe, not a go-back.
                self._held = (
                    number,
                    time,
                    chunk,
                    acked + 1,
                    previous,
                    time - self._last_dupack < self.min_rto,
                    last,
                    self.window,
                    self._advanced,
                )
                if self._burst_start >= 0.0:  # a resend starts a new burst
                    if self.keep_series:
                        self.series.append((self._burst_start, self._burst_max))
                    self._burst_start = -1.0
            elif chunk - 1 > acked:
                if chunk - 1 <= highest_sent:
                    self.find(
                        "rudp.gbn",
                        number,
                        f"jumped from {last} to {chunk}: {last + 1}..{chunk - 1} neither "
                        "acknowledged nor resent (not a go-back)",
                    )
                else:
                    self.find(
                        "rudp.gbn",
                        number,
                        f"chunk {chunk} skips {highest_sent + 1}..{chunk - 1}, never sent",
                    )
        # Window bounds: the Go-Back-N limit first, then the AIMD window.
        model_flight = chunk - acked
        if model_flight > window + self._credit_grew:
            self._over_window(number, chunk, model_flight, acked)
        flight = chunk - self.acked_seen  # the fact: against the highest ACK in the capture
        if flight > self.max_flight:  # noqa: PLR1730 - hot path, no call
            self.max_flight = flight
        if self._burst_start < 0.0:
            self._burst_start = time
            self._burst_max = flight
        elif flight > self._burst_max:
            self._burst_max = flight
        # Content: new chunks are hashed in order, retransmissions compared.
        if self.trailer:
            payload = payload[: -self.trailer]
        pending = self._pending
        if chunk <= highest_sent:
            self.retransmissions += 1
            sent = pending.get(chunk)
            if sent is not None:
                if sent.payload != payload:
                    self.find("rudp.delivery", number, f"chunk {chunk} resent with different bytes")
                sent.time = time
        else:
            self.highest_sent = chunk
            size = len(payload)
            self.bytes += size
            sha = self._hash
            if sha is not None:
                if chunk == self._hash_next:
                    sha.parts.append(payload)  # StreamHash.update, inlined: the hot path
                    sha.size += size
                    if sha.size >= HASH_BLOCK:
                        sha.flush()
                    self._hash_next = chunk + 1
                else:
                    self._hash = None
            if len(pending) < _MAX_PENDING:
                pending[chunk] = _Sent(payload, time)
        self._last_sent = chunk
        if self.fin_seen and chunk >= self.f.fin_seq:  # type: ignore[operator]
            self.find(
                "rudp.teardown", number, f"DATA {chunk} at or after the FIN ({self.f.fin_seq})"
            )

    def _recount_credit(self) -> None:
        credit = self._credit
        self._credit_ack = max((c[0] for c in credit), default=0)
        self._credit_grew = sum(1 for c in credit if c[1])

    def _first_data(self, number: int) -> None:
        if "command_ack" not in self.f.frames:
            self.find("rudp.handshake", number, "DATA before the command was acknowledged")

    def _over_window(self, number: int, chunk: int, flight: int, acked: int) -> None:
        if flight > self.max_window:
            self.find(
                "rudp.gbn",
                number,
                f"chunk {chunk} beyond base + window - 1 = {acked + self.max_window} "
                f"(max window {self.max_window})",
            )
        else:
            self.find(
                "rudp.aimd",
                number,
                f"chunk {chunk} with {flight} in flight, but the AIMD window is {self.window}",
            )

    def _settle(self) -> None:
        """The held resend was a go-back after all: judge it now."""
        held = self._held
        self._held = None
        if held is not None:
            number, time, chunk, base, previous, dup_recent, _last, window, advanced = held
            # The loss happened at the resend: halve the window it had then,
            # and add one for each ACK that advanced the base since.
            self.window = window
            self._go_back(number, time, chunk, base, previous, dup_recent)
            grown = self._advanced - advanced
            if grown > 0:
                self.window = min(self.window + grown, self.max_window)

    def _go_back(
        self,
        number: int,
        time: float,
        chunk: int,
        base: int,
        previous: float,
        dup_recent: bool,
    ) -> None:
        f = self.f
        f.go_backs += 1
        if chunk > base:
            self.find(
                "rudp.gbn",
                number,
                f"resent chunk {chunk}, but the lowest unacknowledged chunk is {base} (selective resend)",
            )
        # A go-back below the base is not a fault: the ACKs above it had not
        # reached the sender (still on their way, or lost after the capture
        # point).  The model forgets them, as the sender did, and keeps them
        # as credit until the client's next ACKs count them again.
        if chunk < base:
            advances = self._advances
            credit = self._credit
            while advances and advances[-1][0] >= chunk - 1:
                before, after, grew = advances.pop()
                credit.append((after, grew))
                if grew:
                    self.window -= 1
                self.highest_ack = before
            self._recount_credit()
        f.timeouts.append(_r(time - previous))
        if dup_recent:
            # Duplicate ACKs just before (an ACK that advanced the base since
            # may not have reached the sender yet when it went back).
            f.go_back_kinds["dupack"] += 1
            # Whether this fast retransmit halved the sender's window depends
            # on ACKs it had seen since its last loss, which reordering hides
            # from the capture: the model does not halve (stays generous).
        elif time - previous >= self.min_rto * 0.95:
            # A timeout: the chunk went unacknowledged for at least the
            # shortest RTO.  (The last captured ACK is no evidence against it:
            # it may have been lost after the capture point.)
            f.go_back_kinds["timeout"] += 1
            self.window = max(self.window // 2, 1)
        else:
            self.find(
                "rudp.gbn",
                number,
                f"go-back to {chunk} only {time - previous:.3f} s after sending it, with no duplicate ACK",
            )
            self.window = max(self.window // 2, 1)
        self.dupacks = 0

    def _fin(self, number: int, seq: int) -> None:
        if self._held is not None:
            self._settle()
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
        if self._held is not None:
            self._settle()
        self.finished = True
        if self._burst_start >= 0.0 and self.keep_series:
            self.series.append((self._burst_start, self._burst_max))
        start = f.start
        f.flights = [[_r(t - start), m] for t, m in self.series]
        self.series = []
        f.packets = self.packets
        f.last_frame = self.last_frame
        f.end = _r(self.end)
        f.data_packets = self.data_packets
        f.retransmissions = self.retransmissions
        f.bytes = self.bytes
        f.chunks = self.highest_sent
        f.max_flight = self.max_flight
        f.max_window = self.model_max
        f.window_limit = self.max_window
        f.max_ack_delay = _r(max(f.max_ack_delay, self._max_ack_delay))
        if self._last_ack_frame:
            f.frames["last_ack"] = self._last_ack_frame
        last_chunk = f.fin_seq - 1 if f.fin_seq is not None else self.highest_sent
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
        self._advances = deque()
        self._credit = []
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
    ) -> None:
        self.port = port
        self.max_window = max_window
        self.min_rto = min_rto
        self.keep_series = keep_series
        self.flows: dict[FlowKey, tuple[RudpSession, bool]] = {}
        self.recent: deque[tuple[FlowKey, RudpSession]] = deque()
        self.done: list[RudpSessionFacts] = []
        self.open: dict[int, RudpSession] = {}  # id -> session not finished yet
        self.digests: list[PendingDigest] = []
        self.stray = 0
        self.hasher = BackgroundHasher()

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
            hasher=self.hasher,
        )
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
            self._finish(entry[0])
            entry = self._new(key, True, number, time)
        session, from_client = entry
        session.packets += 1
        session.last_frame = number
        session.end = time
        if stop - start - RUDP_HEADER_LEN != length:
            session.f.malformed += 1
            length = min(length, stop - start - RUDP_HEADER_LEN)  # never read past the datagram
        if from_client:
            if flag == _ACK:
                session.chunk_ack(number, time, ack)
                if session.fin_seen and session.f.fin_acked and not session.finished:
                    self._finish(session, key)
            else:
                begin = start + RUDP_HEADER_LEN
                session.client_other(number, seq, flag, buf[begin : begin + length])
        elif flag == _DATA:
            begin = start + RUDP_HEADER_LEN
            session.data(number, time, seq, buf[begin : begin + length])
        else:
            begin = start + RUDP_HEADER_LEN
            session.server_other(number, seq, ack, flag, buf[begin : begin + length])
        if session.finished:
            session.sync()

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


def _ep(addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"
