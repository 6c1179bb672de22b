"""The server side of one RUDP client, sans-I/O.

States: ``LISTEN -> SYN_RECEIVED -> AWAIT_CONTENT -> SENDING -> CLOSED``
(or ``FAILED``).  The socket loop owns one :class:`ServerSession` per client
address and feeds it datagrams and the time; when a
:class:`~stacklab.transport.events.CommandReceived` event comes out it runs
the command (a fetch) elsewhere and hands the response back with
:meth:`ServerSession.provide_content` — bytes, or a
:class:`~stacklab.transport.source.ChunkSource` that is still being filled
(a streamed body); the error text of a failed fetch is simply content, as in
WIRE.md.

Compatibility: a SYN without payload gets exactly the original exchange
(SYN-ACK ``seq=0 ack=ISN+1 flag=A``, command ACK ``ack=seq``, 500-byte chunks
from 1, window 5, FIN ``N+1``).  A SYN whose payload is a stacklab options
offer (JSON + CRC32C) gets the accepted values in the SYN-ACK payload.  A
duplicate SYN or command is answered again, so a lost SYN-ACK or command ACK
costs the client one retransmission and nothing else.

Stateless handshakes: the RUDP app server answers SYNs without a session
(:mod:`stacklab.transport.handshake`) and creates one at the command with
:meth:`ServerSession.adopt`.  An adopted session whose address is not proven
(a legacy command without a cookie) sends at most ``unproven_budget``
DATA/FIN datagrams before the client acknowledges data, then gives up:
a spoofed SYN + command cannot draw a whole file toward a victim.
"""

from __future__ import annotations

from enum import Enum
from typing import Protocol

from stacklab.transport.aimd import AimdController
from stacklab.transport.congestion import CongestionController
from stacklab.transport.events import (
    CommandReceived,
    ConnectionClosed,
    GaveUp,
    OptionsNegotiated,
    ProtocolError,
    RtoChanged,
)
from stacklab.transport.integrity import check_trailer
from stacklab.transport.options import (
    ORIGINAL,
    OptionLimits,
    OptionsError,
    TransferOptions,
    decode_options,
    encode_options,
)
from stacklab.transport.recovery import (
    HANDSHAKE_TIMEOUT,
    LEGACY_MAX_RTO,
    MAX_FAILURES,
    RttEstimator,
)
from stacklab.transport.sender import GbnSender
from stacklab.transport.session import ACK, DATA, FIN, SYN, SessionBase
from stacklab.transport.source import ChunkSource
from stacklab.wire import RUDP_CRC_TRAILER_LEN, RUDP_HEADER_LEN, RUDP_REJECT_PAYLOAD


class ServerState(Enum):
    LISTEN = "listen"
    SYN_RECEIVED = "syn-received"
    AWAIT_CONTENT = "await-content"
    SENDING = "sending"
    CLOSED = "closed"
    FAILED = "failed"


class CongestionFactory(Protocol):
    def __call__(self, max_window: int) -> CongestionController: ...


class ServerSession(SessionBase):
    """One client's whole exchange: handshake, command, Go-Back-N transfer, FIN."""

    def __init__(
        self,
        limits: OptionLimits | None = None,
        max_timeouts: int = MAX_FAILURES,
        *,
        original_options: TransferOptions = ORIGINAL,
        initial_rto: float = 1.0,
        min_rto: float = 0.2,
        max_rto: float = 10.0,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        congestion: CongestionFactory = AimdController,
        trace: bool = True,
    ) -> None:
        super().__init__(trace)
        self.limits = limits if limits is not None else OptionLimits()
        self.original_options = original_options
        self.max_timeouts = max_timeouts
        self.initial_rto = initial_rto
        self.min_rto = min_rto
        self.max_rto = max_rto
        self.handshake_timeout = handshake_timeout
        self.congestion = congestion
        self.state = ServerState.LISTEN
        self.options: TransferOptions = original_options
        self.negotiated = False  # True when the client sent a stacklab options offer
        self.client_isn: int | None = None
        self.command: str | None = None
        self._syn_ack_payload = b""
        self._command_seq: int | None = None
        self._deadline: float | None = None
        self._syn_ack_at = 0.0
        self._syns = 0
        self.handshake_rtt: float | None = None
        self.sender: GbnSender | None = None
        self._syn_ack_seq = 0  # the cookie of a stateless handshake, else 0 (WIRE.md)
        self.proven = True  # False: an adopted legacy session before its first ACK of data
        self.unproven_budget = 0
        self._unproven_sent = 0

    # -- public API ------------------------------------------------------------

    def receive_datagram(self, data: bytes | memoryview, now: float) -> None:
        """Handle one datagram from the client; malformed input is dropped and counted."""
        if self.done or self.failed is not None:
            return
        integrity = self.options.integrity and self.state is not ServerState.LISTEN
        parsed = self._parse(data, integrity and not self._is_syn(data))
        if parsed is None:
            return
        seq, ack, flag, payload = parsed
        if flag == ACK:
            sender = self.sender
            if sender is not None:
                # Only an ACK of a chunk actually sent proves the address (it saw our
                # data); anything beyond what was sent is a guess, ignored and counted.
                if not self.proven and sender.first_seq <= ack <= sender.max_sent:
                    self.proven = True
                if not sender.on_ack(ack, now):
                    self.stats["ignored_acks"] = self.stats.get("ignored_acks", 0) + 1
                self._check_sender(now)
            return
        if flag == SYN:
            self._on_syn(seq, data, now)
        elif flag == DATA:
            self._on_command(seq, payload, now)
        elif (
            flag == FIN
            and self.sender is not None
            and ack == self.sender.fin_seq
            and bytes(payload) == RUDP_REJECT_PAYLOAD
        ):
            self.stats["rejected"] = self.stats.get("rejected", 0) + 1
            self._fail(now, "the client rejected the content: its SHA-256 differs from our FIN's")
        else:
            self.stats["unexpected"] += 1

    def adopt(
        self,
        isn: int,
        options: TransferOptions,
        negotiated: bool,
        syn_ack_seq: int,
        syn_ack_payload: bytes,
        *,
        proven: bool,
        now: float,
    ) -> None:
        """Start in SYN_RECEIVED from a handshake answered without state; feed the command next."""
        if self.state is not ServerState.LISTEN:
            raise RuntimeError(f"adopt() in state {self.state.value}")
        self.options = options
        self.negotiated = negotiated
        self.client_isn = isn & 0xFFFFFFFF
        self._syn_ack_seq = syn_ack_seq
        self._syn_ack_payload = syn_ack_payload
        self.proven = proven
        self.state = ServerState.SYN_RECEIVED
        self._deadline = now + self.handshake_timeout
        o = options
        self._events.append(
            OptionsNegotiated(
                now, o.chunk_size, o.max_window, o.integrity, o.ack_every, not negotiated
            )
        )

    def provide_content(self, content: bytes | ChunkSource, now: float) -> None:
        """The command's response (file bytes, error text, or a source): start sending it.

        With a source, the caller runs the session again (``datagrams_to_send``)
        whenever the source gets data after it said "nothing yet".
        """
        if self.state is not ServerState.AWAIT_CONTENT:
            raise RuntimeError(f"content provided in state {self.state.value}")
        # An original client gives up after 5 s of silence: back off less for it.
        max_rto = self.max_rto if self.negotiated else min(self.max_rto, LEGACY_MAX_RTO)
        rto = RttEstimator(self.initial_rto, min(self.min_rto, max_rto), max_rto)
        if self.handshake_rtt is not None:
            # SYN-ACK out -> command in is a clean round trip (one SYN, no resend):
            # start from it instead of the 1 s guess, as TCP does with its handshake.
            rto.on_sample(self.handshake_rtt)
            self._events.append(RtoChanged(now, rto.rto, rto.srtt, rto.rttvar))
        self.sender = GbnSender(
            content,
            self.options,
            rto,
            self.congestion(self.options.max_window),
            first_seq=1,
            max_timeouts=self.max_timeouts,
            events=self._events,
            trace=self.trace,
            abort_fin=self.negotiated,
        )
        self.state = ServerState.SENDING
        self._deadline = None

    def datagrams_to_send(self, now: float) -> list[bytes]:
        out = self._take_out()
        sender = self.sender
        if sender is not None:
            sent = sender.datagrams_to_send(now)
            if sender.failed is not None and self.failed is None:
                self._check_sender(now)  # its source failed and no FIN can say so
            if not self.proven and sent:
                sent = self._spend_unproven(sent, now)
            if out:
                out.extend(sent)
            else:
                out = sent
        self.stats["datagrams_out"] += len(out)
        return out

    def _spend_unproven(self, sent: list[bytes], now: float) -> list[bytes]:
        """Keep a legacy session within its budget until it acknowledges data."""
        room = self.unproven_budget - self._unproven_sent
        if len(sent) > room:
            sent = sent[: max(room, 0)]
            self.stats["unproven_capped"] = self.stats.get("unproven_capped", 0) + 1
        self._unproven_sent += len(sent)
        return sent

    def get_timer(self) -> float | None:
        if self.done or self.failed is not None:
            return None
        if self.sender is not None:
            return self.sender.get_timer()
        return self._deadline

    def handle_timer(self, now: float) -> None:
        if self.done or self.failed is not None:
            return
        if self.sender is not None:
            if not self.proven and self._unproven_sent >= self.unproven_budget:
                # The budget is spent and the last copy had its RTO: nobody is there.
                self._fail(
                    now,
                    f"no ACK of data after {self._unproven_sent} datagrams to an unproven address",
                )
                return
            self.sender.handle_timer(now)
            self._check_sender(now)
        elif self._deadline is not None and now >= self._deadline:
            self._fail(now, f"no command within {self.handshake_timeout:g} s of the SYN")

    # -- introspection ---------------------------------------------------------

    @property
    def window(self) -> int:
        return self.sender.window if self.sender is not None else 1

    @property
    def source(self) -> ChunkSource | None:
        """Where the content comes from, once provided (to close it when the session ends)."""
        return self.sender.source if self.sender is not None else None

    @property
    def rto(self) -> float:
        return self.sender.rto if self.sender is not None else self.initial_rto

    # -- internals -------------------------------------------------------------

    @staticmethod
    def _is_syn(data: bytes | memoryview) -> bool:
        return len(data) >= RUDP_HEADER_LEN and data[8:9] == SYN

    def _on_syn(self, seq: int, data: bytes | memoryview, now: float) -> None:
        if self.state not in (ServerState.LISTEN, ServerState.SYN_RECEIVED):
            if seq == self.client_isn:
                self._answer_syn(seq, now)  # our SYN-ACK was lost, the client asks again
            else:
                self.stats["unexpected"] += 1
            return
        payload = bytes(data[RUDP_HEADER_LEN:])
        if payload:
            if not check_trailer(data):
                self.stats["bad_crc"] += 1
                return
            try:
                requested = decode_options(payload[:-RUDP_CRC_TRAILER_LEN])
            except OptionsError as exc:
                self.stats["malformed"] += 1
                self._events.append(ProtocolError(now, f"bad SYN options: {exc}"))
                return
            self.options = self.limits.clamp(requested)
            self.negotiated = True
            self._syn_ack_payload = encode_options(self.options)
        else:
            self.options = self.original_options
            self.negotiated = False
            self._syn_ack_payload = b""
        if self.state is ServerState.LISTEN:
            o = self.options
            self._events.append(
                OptionsNegotiated(
                    now, o.chunk_size, o.max_window, o.integrity, o.ack_every, not self.negotiated
                )
            )
        if self.state is ServerState.LISTEN or seq != self.client_isn:
            self._syn_ack_at = now
            self._syns = 0
        self._syns += 1
        self.client_isn = seq
        self.state = ServerState.SYN_RECEIVED
        self._deadline = now + self.handshake_timeout
        self._answer_syn(seq, now)

    def _answer_syn(self, seq: int, now: float) -> None:
        # The SYN-ACK of a negotiated session carries the CRC even when integrity
        # was refused: the client must be able to trust the values it reads.
        self._queue(
            now,
            self._syn_ack_seq,
            (seq + 1) & 0xFFFFFFFF,
            ACK,
            self._syn_ack_payload,
            bool(self._syn_ack_payload),
        )

    def _on_command(self, seq: int, payload: bytes | memoryview, now: float) -> None:
        if self.state is ServerState.SYN_RECEIVED and self.client_isn is not None:
            if seq != (self.client_isn + 1) & 0xFFFFFFFF:
                self.stats["unexpected"] += 1
                return
            self._command_seq = seq
            if self._syns == 1:
                self.handshake_rtt = max(0.0, now - self._syn_ack_at)
            self.command = bytes(payload).decode("utf-8", errors="replace")
            self._ack_command(now)
            self.state = ServerState.AWAIT_CONTENT
            self._deadline = None
            self._events.append(CommandReceived(now, self.command))
        elif seq == self._command_seq:
            self._ack_command(now)  # our command ACK was lost: answer again, run nothing twice
        else:
            self.stats["unexpected"] += 1

    def _ack_command(self, now: float) -> None:
        assert self._command_seq is not None
        self._queue(now, 0, self._command_seq, ACK, b"", self.options.integrity)

    def _check_sender(self, now: float) -> None:
        sender = self.sender
        if sender is None:
            return
        if sender.done:
            self.done = True
            self.state = ServerState.CLOSED
            self._events.append(ConnectionClosed(now, sender.fin_acknowledged))
        elif sender.failed is not None:
            self.failed = sender.failed
            self.state = ServerState.FAILED

    def _fail(self, now: float, reason: str) -> None:
        self.failed = reason
        self.state = ServerState.FAILED
        self._deadline = None
        self._events.append(GaveUp(now, reason))
