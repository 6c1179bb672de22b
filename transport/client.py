"""The client side of one RUDP exchange, sans-I/O.

States: ``IDLE -> SYN_SENT -> CMD_SENT -> RECEIVING -> DONE`` (or ``FAILED``).
:meth:`ClientSession.start` queues the SYN — empty when ``options`` is None
(exactly the original client), else a JSON options offer with a CRC32C
trailer.  An empty SYN-ACK means an original server (or a stacklab server whose
option table is full): the client falls back to
:data:`~stacklab.transport.options.ORIGINAL` and says so in ``downgraded``
when it asked for integrity, or fails when ``require_integrity`` is set.  The SYN and the command are
retransmitted on an RFC 6298 timer until answered, at most ``max_timeouts``
times, and for at most ``handshake_timeout`` seconds without an answer when
given; once data flows, ``silence_timeout`` seconds without a valid datagram
end the transfer with :class:`~stacklab.transport.events.GaveUp`.

The command echoes the SYN-ACK's ``seq`` in its ``ack`` field: a stacklab
server's SYN cookie (see :mod:`stacklab.transport.handshake`), 0 from an
original server, which never reads it.

The command ACK is recognised in both conventions seen in real captures
(``ack = seq`` and the byte-counting ``ack = seq + len(command)``); the first
DATA also counts as one, in case the command ACK was lost.  Until the first
DATA arrives the command keeps being resent on the backed-off RTO, because
in the original convention a duplicated SYN-ACK is indistinguishable from
the command ACK.  After the FIN the
session stays answerable: a retransmitted FIN (our ACK was lost) is ACKed
again for as long as the caller keeps feeding it.

Content goes to ``sink`` (:mod:`stacklab.transport.sink`; in memory unless
the caller streams it to a file).  A FIN whose payload starts with
:data:`~stacklab.wire.RUDP_ABORT_PREFIX` (the server's content failed
mid-way) is acknowledged and ends the session as failed, with the server's
reason: what arrived is not the whole content.
"""

from __future__ import annotations

from enum import Enum

from crc32c import crc32c

from stacklab.transport.events import (
    GaveUp,
    IntegrityFailure,
    OptionsNegotiated,
    ProtocolError,
    RtoChanged,
    Timeout,
    TransferComplete,
)
from stacklab.transport.integrity import check_trailer
from stacklab.transport.options import (
    ORIGINAL,
    OptionsError,
    TransferOptions,
    decode_options,
    encode_options,
)
from stacklab.transport.receiver import GbnReceiver, ReceiverOverflow
from stacklab.transport.recovery import MAX_FAILURES, SILENCE_TIMEOUT, RttEstimator
from stacklab.transport.session import ACK, DATA, FIN, SYN, SessionBase
from stacklab.transport.sink import MemorySink, StreamSink
from stacklab.wire import (
    ORIGINAL_ISN,
    RUDP_ABORT_PREFIX,
    RUDP_CRC_TRAILER_LEN,
    RUDP_HEADER,
    RUDP_HEADER_LEN,
    RUDP_REJECT_PAYLOAD,
    RUDP_SHA256_LEN,
)

_UNPACK = RUDP_HEADER.unpack_from


def _sound_data_seq(buf: memoryview, start: int, end: int, trailer: int) -> int:
    """The sequence number of a well-formed DATA datagram ``buf[start:end]``, else -1.

    Well-formed: a whole header, flag DATA, a length field that matches, and
    (``trailer`` 4) a CRC32C that matches.  The receive fast paths take such
    datagrams; anything else goes to the full path, which counts it.
    """
    if end - start < RUDP_HEADER_LEN + trailer:
        return -1
    seq, _, flag, length = _UNPACK(buf, start)
    if flag != DATA or length != end - start - RUDP_HEADER_LEN:
        return -1
    if trailer and crc32c(buf[start : end - trailer]) != int.from_bytes(
        buf[end - trailer : end], "big"
    ):
        return -1
    return int(seq)


class ClientState(Enum):
    IDLE = "idle"
    SYN_SENT = "syn-sent"
    CMD_SENT = "cmd-sent"
    RECEIVING = "receiving"
    DONE = "done"
    FAILED = "failed"


class ClientSession(SessionBase):
    """Fetch one command's response over RUDP."""

    def __init__(
        self,
        command: str,
        options: TransferOptions | None = None,
        isn: int = ORIGINAL_ISN,
        *,
        initial_rto: float = 1.0,
        min_rto: float = 0.2,
        max_rto: float = 10.0,
        max_timeouts: int = MAX_FAILURES,
        silence_timeout: float = SILENCE_TIMEOUT,
        handshake_timeout: float | None = None,
        max_bytes: int | None = None,
        require_integrity: bool = False,
        trace: bool = True,
        sink: MemorySink | StreamSink | None = None,
    ) -> None:
        super().__init__(trace)
        self.sink = sink
        if require_integrity and (options is None or not options.integrity):
            raise ValueError("require_integrity needs options that ask for integrity")
        self.require_integrity = require_integrity
        self.downgraded: str | None = None  # why the server granted less than we asked
        self.command = command
        self._command_bytes = command.encode("utf-8")
        self.requested = options
        self.isn = isn & 0xFFFFFFFF
        self.rtt = RttEstimator(initial_rto, min_rto, max_rto)
        self.max_timeouts = max_timeouts
        self.silence_timeout = silence_timeout
        self.handshake_timeout = handshake_timeout
        self.max_bytes = max_bytes
        self.state = ClientState.IDLE
        self.options: TransferOptions = ORIGINAL
        self.receiver: GbnReceiver | None = None
        self.sha256: str | None = None
        self._timer: float | None = None
        self._retries = 0
        self._pending: bytes | None = None  # the SYN or command being retransmitted
        self._command_datagram = b""
        self._probe: float | None = None  # command re-send while no data has come yet
        self._pending_sent_at = 0.0
        self._answer_deadline: float | None = None  # handshake: give up at this time
        self._rejection: bytes | None = None  # our FIN refusing the content, resent on request

    # -- public API ------------------------------------------------------------

    @property
    def content(self) -> bytes:
        return self.receiver.content if self.receiver is not None else b""

    @property
    def command_seq(self) -> int:
        return (self.isn + 1) & 0xFFFFFFFF

    def start(self, now: float) -> None:
        """Queue the SYN and arm the retransmission timer."""
        if self.state is not ClientState.IDLE:
            raise RuntimeError("start() called twice")
        if self.requested is None:
            syn = self._queue(now, self.isn, 0, SYN, b"", False)
        else:
            syn = self._queue(now, self.isn, 0, SYN, encode_options(self.requested), True)
        self._arm(syn, now)
        self.state = ClientState.SYN_SENT

    def receive_datagram(self, data: bytes | memoryview, now: float) -> None:
        """Handle one datagram from the server; malformed input is dropped and counted."""
        state = self.state
        if state is ClientState.RECEIVING and self._receive_data_fast(data, now):
            return
        if state is ClientState.FAILED or state is ClientState.IDLE:
            if self._rejection is not None and data[8:9] == FIN:
                self._out.append(self._rejection)  # our refusal was lost: say it again
            return
        integrity = self.options.integrity and state is not ClientState.SYN_SENT
        parsed = self._parse(data, integrity)
        if parsed is None:
            return
        seq, ack, flag, payload = parsed
        if state is ClientState.SYN_SENT:
            if flag == ACK and ack == self.command_seq:
                self._on_syn_ack(seq, data, now)
            else:
                self.stats["unexpected"] += 1
            return
        if flag == DATA:
            if state is ClientState.CMD_SENT:
                self._command_acknowledged(now)
            self._on_data(seq, payload, now)
        elif flag == FIN:
            if state is ClientState.CMD_SENT:
                self._command_acknowledged(now)
            self._on_fin(seq, payload, now)
        elif flag == ACK and state is ClientState.CMD_SENT:
            if ack in (
                self.command_seq,
                (self.command_seq + len(self._command_bytes)) & 0xFFFFFFFF,
            ):
                if len(payload) == 0:
                    self._command_acknowledged(now)
                # else: a duplicate SYN-ACK with options, not the command ACK
            else:
                self.stats["unexpected"] += 1
        elif (
            flag == ACK
            and state is ClientState.RECEIVING
            and self._probe is not None
            and ack
            in (self.command_seq, (self.command_seq + len(self._command_bytes)) & 0xFFFFFFFF)
        ):
            # The server answers our command resends while its fetch runs: it is
            # alive and working, so its answer restarts the silence limit.
            self.stats["command_reacks"] = self.stats.get("command_reacks", 0) + 1
            self._timer = now + self.silence_timeout
        else:
            self.stats["unexpected"] += 1

    def _receive_data_fast(self, data: bytes | memoryview, now: float) -> bool:
        """The bulk of a transfer: a well-formed DATA while receiving.  False: take the full path.

        Same checks and effects as :meth:`_parse` + :meth:`_on_data`, without
        the generic dispatch, so the per-datagram cost stays low.  Anything
        else (short, bad length, other flags, bad CRC) returns False untouched
        and is counted by the full path.
        """
        size = len(data)
        view = data if type(data) is memoryview else memoryview(data)
        trailer = RUDP_CRC_TRAILER_LEN if self.options.integrity else 0
        seq = _sound_data_seq(view, 0, size, trailer)
        if seq < 0:
            return False
        payload = view[RUDP_HEADER_LEN : size - trailer]
        self.stats["datagrams_in"] += 1
        self._timer = now + self.silence_timeout
        self._probe = None
        assert self.receiver is not None  # set before RECEIVING
        try:
            self.receiver.on_data(seq, payload, now)
        except ReceiverOverflow as exc:
            self._fail(now, str(exc))
        return True

    def receive_batch(self, batch: memoryview, segment: int, now: float) -> None:
        """A GRO batch: datagrams of ``segment`` bytes back to back, the last may be shorter.

        The same as :meth:`receive_datagram` on each in turn, in one loop: the
        bulk of a fast transfer arrives this way, and per-datagram calls cost
        more than the checks themselves.
        """
        size = len(batch)
        segment = segment if segment >= 1 else max(size, 1)
        offset = 0
        receiver = self.receiver
        if self.state is ClientState.RECEIVING and receiver is not None:
            trailer = RUDP_CRC_TRAILER_LEN if self.options.integrity else 0
            on_data = receiver.on_data
            fast = 0
            try:
                while offset < size:
                    start, end = offset, min(size, offset + segment)
                    offset = end
                    seq = _sound_data_seq(batch, start, end, trailer)
                    if seq >= 0:
                        fast += 1
                        on_data(seq, batch[start + RUDP_HEADER_LEN : end - trailer], now)
                    else:  # anything else, counted and handled by the full path
                        self.receive_datagram(batch[start:end], now)
                        if self.state is not ClientState.RECEIVING:
                            break
            except ReceiverOverflow as exc:
                self._fail(now, str(exc))
            self.stats["datagrams_in"] += fast
            if fast and self.state is ClientState.RECEIVING:
                self._timer = now + self.silence_timeout
                self._probe = None
        for rest in range(offset, size, segment):  # after the transfer ended, or before it began
            self.receive_datagram(batch[rest : rest + segment], now)

    def datagrams_to_send(self, now: float) -> list[bytes]:
        receiver = self.receiver
        if receiver is not None:
            integrity = self.options.integrity
            for ack in receiver.take_acks():
                self._queue(now, 0, ack, ACK, b"", integrity)
        out = self._take_out()
        self.stats["datagrams_out"] += len(out)
        return out

    def get_timer(self) -> float | None:
        if self.state is ClientState.DONE or self.state is ClientState.FAILED:
            return None
        if self._probe is not None and (self._timer is None or self._probe < self._timer):
            return self._probe
        return self._timer

    def handle_timer(self, now: float) -> None:
        if self._probe is not None and now >= self._probe and self.state is ClientState.RECEIVING:
            # The command was acknowledged but no data came yet.  In the original
            # convention a duplicated SYN-ACK looks exactly like the command ACK,
            # so keep resending the command (the server re-ACKs it and runs it
            # once) until data flows; the server's answers keep the session alive
            # through a long fetch, and silence still ends it.
            self.rtt.backoff()
            self._out.append(self._command_datagram)
            self._probe = now + self.rtt.rto
        if self._timer is None or now < self._timer:
            return
        if self.state in (ClientState.SYN_SENT, ClientState.CMD_SENT):
            what = "SYN" if self.state is ClientState.SYN_SENT else "command"
            deadline = self._answer_deadline
            if deadline is not None and now >= deadline:
                self._fail(now, f"no answer to the {what} within {self.handshake_timeout:g} s")
                return
            self._retries += 1
            self._events.append(Timeout(now, self.isn, self.rtt.rto, self._retries))
            if self._retries >= self.max_timeouts:
                self._fail(now, f"no answer to the {what} after {self._retries} attempts")
                return
            self.rtt.backoff()
            self._events.append(RtoChanged(now, self.rtt.rto, self.rtt.srtt, self.rtt.rttvar))
            assert self._pending is not None
            self._out.append(self._pending)
            self._timer = self._retransmit_time(now)
        elif self.state is ClientState.RECEIVING:
            self._fail(now, f"the server was silent for {self.silence_timeout:g} s")
        else:
            self._timer = None

    # -- internals -------------------------------------------------------------

    def _arm(self, datagram: bytes, now: float) -> None:
        self._pending = datagram
        self._pending_sent_at = now
        self._retries = 0
        timeout = self.handshake_timeout
        self._answer_deadline = now + timeout if timeout is not None else None
        self._timer = self._retransmit_time(now)

    def _retransmit_time(self, now: float) -> float:
        """When to resend the SYN or command: one RTO on, or the answer deadline if sooner."""
        due = now + self.rtt.rto
        deadline = self._answer_deadline
        return due if deadline is None or due < deadline else deadline

    def _sample(self, now: float) -> None:
        if self._retries == 0:  # Karn: an answer to a resent packet is no sample
            self.rtt.on_sample(now - self._pending_sent_at)

    def _on_syn_ack(self, cookie: int, data: bytes | memoryview, now: float) -> None:
        payload = bytes(data[RUDP_HEADER_LEN:])
        original = True
        if payload and self.requested is not None:
            if not check_trailer(data):
                self.stats["bad_crc"] += 1
                return
            try:
                self.options = decode_options(payload[:-RUDP_CRC_TRAILER_LEN])
            except OptionsError as exc:
                self.stats["malformed"] += 1
                self._events.append(ProtocolError(now, f"bad SYN-ACK options: {exc}"))
                return
            original = False
        else:
            self.options = ORIGINAL
        requested = self.requested
        if requested is not None and requested.integrity and not self.options.integrity:
            why = (
                "the server answered with the original options"
                if original
                else "the server refused integrity"
            )
            self.downgraded = f"{why}: no CRC32C per datagram and no SHA-256 in the FIN"
            self.stats["downgraded"] = 1
            if self.require_integrity:
                self._fail(now, f"integrity is required but {self.downgraded}")
                return
        o = self.options
        self._events.append(
            OptionsNegotiated(now, o.chunk_size, o.max_window, o.integrity, o.ack_every, original)
        )
        self._sample(now)
        self.receiver = GbnReceiver(
            o, 1, max_bytes=self.max_bytes, events=self._events, trace=self.trace, sink=self.sink
        )
        # Echo the SYN-ACK's seq (a stacklab server's SYN cookie; 0 from an
        # original server, which ignores the field) to prove our address.
        command = self._queue(now, self.command_seq, cookie, DATA, self._command_bytes, o.integrity)
        self._command_datagram = command
        self._arm(command, now)
        self.state = ClientState.CMD_SENT

    def _command_acknowledged(self, now: float) -> None:
        self._sample(now)
        self._pending = None
        self.state = ClientState.RECEIVING
        self._timer = now + self.silence_timeout
        self._probe = now + self.rtt.rto

    def _on_data(self, seq: int, payload: bytes | memoryview, now: float) -> None:
        receiver = self.receiver
        if receiver is None or self.state is ClientState.DONE:
            if receiver is not None:
                receiver.on_data(seq, payload, now)  # answer with the cumulative ACK
            return
        self._timer = now + self.silence_timeout
        self._probe = None
        try:
            receiver.on_data(seq, payload, now)
        except ReceiverOverflow as exc:
            self._fail(now, str(exc))

    def _on_fin(self, seq: int, payload: bytes | memoryview, now: float) -> None:
        receiver = self.receiver
        if receiver is None:
            return
        self._timer = now + self.silence_timeout if self.state is ClientState.RECEIVING else None
        self._probe = None
        if not receiver.on_fin(seq, now):
            return
        if bytes(payload[: len(RUDP_ABORT_PREFIX)]) == RUDP_ABORT_PREFIX:
            # The server could not produce the rest (its origin failed): the FIN is
            # ACKed (it was heard), the transfer is a failure.
            reason = bytes(payload[len(RUDP_ABORT_PREFIX) :]).decode("utf-8", errors="replace")
            self.stats["aborted"] = 1
            self._fail(now, f"the server aborted the transfer: {reason}")
            return
        digest = receiver.digest()
        self.sha256 = digest.hex()
        if self.options.integrity and (len(payload) != RUDP_SHA256_LEN or bytes(payload) != digest):
            self._fail_integrity(now, bytes(payload).hex(), digest.hex())
            return
        self.done = True
        self.state = ClientState.DONE
        self._timer = None
        self._events.append(TransferComplete(now, receiver.delivered_bytes, digest.hex()))

    def _fail_integrity(self, now: float, expected: str, actual: str) -> None:
        self._events.append(IntegrityFailure(now, expected, actual))
        # Never ACK a FIN whose content we refuse: answer it with a FIN of our own
        # whose payload says why, so the server records a failure, not a transfer.
        receiver = self.receiver
        if receiver is not None:
            receiver.take_acks()
            fin_seq = receiver.fin_seq if receiver.fin_seq is not None else 0
            self._rejection = self._queue(
                now, 0, fin_seq, FIN, RUDP_REJECT_PAYLOAD, self.options.integrity
            )
        self._fail(now, "the content's SHA-256 does not match the one the server sent in its FIN")

    def _fail(self, now: float, reason: str) -> None:
        self.failed = reason
        self.state = ClientState.FAILED
        self._timer = None
        self._probe = None
        self._pending = None
        self._events.append(GaveUp(now, reason))
