"""The RUDP client: one :class:`~stacklab.transport.client.ClientSession` on a connected socket.

``fetch_rudp_stream(server, url, write)`` is what ``stacklab fetch
--transport rudp`` calls: the content goes to ``write`` in order, in large
batches, as it arrives, and its SHA-256 is computed on the way, so memory
stays flat whatever the size.  ``fetch_rudp(server, url)`` returns the body
as bytes, for API users.  By default it negotiates stacklab's options (1400-byte chunks, a
larger window, CRC32C per datagram and the SHA-256 in the FIN); with
``legacy=True`` it sends an empty SYN and behaves exactly like the original
client.  An original server answers an empty SYN-ACK and the session falls
back to the original options on its own.

Fault injection as in the original client, but reproducible: ``drop`` is
the share of DATA datagrams ignored (never ACKed), ``delay=(a, b)`` sleeps a
uniform ``a..b`` seconds before handling each DATA datagram, both drawn from
``random.Random(seed)``.
"""

from __future__ import annotations

import contextlib
import logging
import random
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from stacklab.services.client import (
    MAX_ERROR_TEXT,
    ClientError,
    ServerError,
    looks_like_server_error,
)
from stacklab.services.rudp_io import (
    GRO_CMSG_SPACE,
    RECV_BUFFER,
    EventLog,
    enable_gro,
    gro_segment_size,
    tune_socket,
)
from stacklab.transport.client import ClientSession, ClientState
from stacklab.transport.options import STACKLAB_DEFAULT, TransferOptions
from stacklab.transport.recovery import MAX_FAILURES, SILENCE_TIMEOUT
from stacklab.transport.sink import MemorySink, StreamSink
from stacklab.wire import FETCH_COMMAND, ORIGINAL_ISN, Flag, is_busy_answer

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
BATCH = 256
LINGER_S = 2.0
"""How long a finished client keeps answering a FIN whose ACK may have been lost."""
_DATA = Flag.DATA.value
_FIN = Flag.FIN.value


class RudpTransferError(ClientError):
    """The RUDP transfer failed: no answer, silence, or content that fails its integrity check."""


class ServerBusy(RudpTransferError):
    """The server sent its busy answer (:func:`stacklab.wire.busy_answer`) instead of taking us."""


_WAITING = (ClientState.SYN_SENT, ClientState.CMD_SENT)


@dataclass(frozen=True)
class Received:
    """What :func:`fetch_rudp_stream` wrote: the size and SHA-256 (hex) of the whole content."""

    size: int
    sha256: str


def fetch_rudp(server: tuple[str, int], url: str, **options: Any) -> bytes:
    """Send ``FETCH url`` over RUDP to ``server``; return the body or raise ClientError.

    The keyword options are those of :func:`fetch_rudp_into`.
    """
    sink = MemorySink()
    fetch_rudp_into(server, url, sink, **options)
    body = sink.content
    if looks_like_server_error(body):
        raise ServerError(f"the app server answered: {body.decode('utf-8')}")
    return body


def fetch_rudp_stream(
    server: tuple[str, int],
    url: str,
    write: Callable[[memoryview], object],
    **options: Any,
) -> Received:
    """Like :func:`fetch_rudp`, but the body goes to ``write`` as it arrives, in order.

    ``write`` gets views of a reused buffer (write them out, do not keep
    them).  It is called in batches of :data:`stacklab.transport.sink.BATCH`
    bytes during the transfer and once more after the FIN checked out; a
    failure (ClientError, or what ``write`` raises) can come after some
    batches were written, so the caller writes to a temporary file and keeps
    it only on success.  An answer short enough to be the app server's error
    text is held back until it is known not to be one.
    """
    sink = StreamSink(write)
    fetch_rudp_into(server, url, sink, **options)
    if sink.size <= MAX_ERROR_TEXT:
        pending = sink.pending
        if looks_like_server_error(pending):
            raise ServerError(f"the app server answered: {pending.decode('utf-8')}")
    sink.finish()
    return Received(sink.size, sink.digest().hex())


def fetch_rudp_into(
    server: tuple[str, int],
    url: str,
    sink: MemorySink | StreamSink,
    *,
    progress: Progress | None = None,
    chunk: int = STACKLAB_DEFAULT.chunk_size,
    window: int = STACKLAB_DEFAULT.max_window,
    integrity: bool = True,
    require_integrity: bool = False,
    ack_every: int = STACKLAB_DEFAULT.ack_every,
    legacy: bool = False,
    drop: float = 0.0,
    delay: tuple[float, float] | None = None,
    seed: int | None = None,
    events: str | None = None,
    isn: int = ORIGINAL_ISN,
    initial_rto: float = 1.0,
    min_rto: float = 0.2,
    max_timeouts: int = MAX_FAILURES,
    silence_timeout: float = SILENCE_TIMEOUT,
    answer_timeout: float | None = None,
    max_bytes: int | None = 2 * 1024**3,
    linger: float = LINGER_S,
    stats: dict[str, object] | None = None,
) -> None:
    """Send ``FETCH url`` over RUDP to ``server``, the body into ``sink``; ClientError on failure.

    ``answer_timeout``, when given, is the longest wait for any answer: it
    bounds the handshake (which otherwise ends after ``max_timeouts`` backed-off
    resends, about a minute) and replaces ``silence_timeout``.
    """
    options = (
        None
        if legacy
        else TransferOptions(
            chunk_size=chunk, max_window=window, integrity=integrity, ack_every=ack_every
        )
    )
    session = ClientSession(
        f"{FETCH_COMMAND} {url}",
        options,
        isn,
        initial_rto=initial_rto,
        min_rto=min_rto,
        max_timeouts=max_timeouts,
        silence_timeout=silence_timeout if answer_timeout is None else answer_timeout,
        handshake_timeout=answer_timeout,
        max_bytes=max_bytes,
        require_integrity=require_integrity and options is not None and options.integrity,
        trace=events is not None,
        sink=sink,
    )
    where = f"{server[0]}:{server[1]}"
    rng = random.Random(seed)
    try:
        log_file = EventLog(events) if events is not None else None
    except OSError as exc:
        raise ClientError(
            f"cannot write the events file {events!r}: {exc.strerror or exc}"
        ) from None
    sock = socket.socket(socket.AF_INET6 if ":" in server[0] else socket.AF_INET, socket.SOCK_DGRAM)
    handed_off = False
    try:
        tune_socket(sock)
        enable_gro(sock)
        try:
            sock.connect(server)  # only the server's datagrams are accepted
        except OSError as exc:
            raise ClientError(f"cannot reach the RUDP app server at {where}: {exc}") from None
        _run(sock, session, rng, drop, delay, progress, log_file, where)
        if session.downgraded is not None and session.failed is None:
            log.warning(
                "RUDP %s: %s (--integrity required refuses this)", where, session.downgraded
            )
        if log_file is not None:
            log_file.flush()
        if stats is not None:
            stats.update(session.stats)
            stats["options"] = session.options
        if session.failed is not None:
            raise RudpTransferError(f"RUDP transfer from {where} failed: {session.failed}")
        if linger > 0:
            _linger_in_background(sock, session, linger, log_file)
            handed_off = True
    finally:
        if not handed_off:
            sock.close()
            if log_file is not None:
                log_file.close()


def _run(
    sock: socket.socket,
    session: ClientSession,
    rng: random.Random,
    drop: float,
    delay: tuple[float, float] | None,
    progress: Progress | None,
    log_file: EventLog | None,
    where: str,
) -> None:
    buf = bytearray(2 * RECV_BUFFER)  # a GRO batch is at most 64 KiB
    view = memoryview(buf)
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ)
    reported = -1
    try:
        session.start(time.monotonic())
        while not session.done and session.failed is None:
            now = time.monotonic()
            _flush(sock, session, now, log_file, where)
            if session.done or session.failed is not None:
                break
            timer = session.get_timer()
            timeout = None if timer is None else max(0.0, timer - now)
            if not sel.select(timeout):
                session.handle_timer(time.monotonic())
                continue
            _drain(sock, session, buf, view, rng, drop, delay, log_file, where)
            session.handle_timer(time.monotonic())
            if progress is not None and session.receiver is not None:
                got = session.receiver.delivered_bytes
                if got != reported:
                    reported = got
                    progress(got, 0)
        _flush(sock, session, time.monotonic(), log_file, where)
    finally:
        sel.close()


def _drain(
    sock: socket.socket,
    session: ClientSession,
    buf: bytearray,
    view: memoryview,
    rng: random.Random,
    drop: float,
    delay: tuple[float, float] | None,
    log_file: EventLog | None,
    where: str,
) -> None:
    """Read up to ``BATCH`` receives without blocking; ACK each completed group at once.

    An ACK sent as soon as its group is complete (rather than after the
    whole batch) lets the sender refill its window while the rest of the
    batch is still being processed here.
    """
    inject = drop > 0 or delay is not None
    recv = sock.recvmsg_into
    receive = session.receive_datagram
    receive_batch = session.receive_batch
    monotonic = time.monotonic
    bufs = [buf]
    for _ in range(BATCH):
        try:
            n, ancdata, _, _ = recv(bufs, GRO_CMSG_SPACE, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return
        except ConnectionRefusedError:
            raise ClientError(f"no RUDP app server at {where} (port unreachable)") from None
        except OSError as exc:
            raise ClientError(f"RUDP receive from {where} failed: {exc}") from None
        segment = (gro_segment_size(ancdata) if ancdata else None) or n
        if session.state in _WAITING and is_busy_answer(view[:n]):
            raise ServerBusy(f"the RUDP app server at {where} is busy: try again later")
        if segment >= n and not inject:
            receive(view[:n], monotonic())
        elif not inject:
            receive_batch(view[:n], segment, monotonic())
        else:
            for offset in range(0, n, segment):
                datagram = view[offset : min(n, offset + segment)]
                if inject and len(datagram) >= 11 and datagram[8:9] == _DATA:
                    if rng.random() < drop:
                        continue  # as the original: present on the wire, never ACKed
                    if delay is not None:
                        time.sleep(rng.uniform(*delay))
                receive(datagram, monotonic())
        receiver = session.receiver
        if receiver is not None and receiver.acks_ready:
            _flush(sock, session, monotonic(), log_file, where)


def _flush(
    sock: socket.socket,
    session: ClientSession,
    now: float,
    log_file: EventLog | None,
    where: str,
) -> None:
    for datagram in session.datagrams_to_send(now):
        try:
            sock.send(datagram)
        except ConnectionRefusedError:
            raise ClientError(f"no RUDP app server at {where} (port unreachable)") from None
        except BlockingIOError:
            pass  # a lost ACK: cumulative ACKs make up for it
        except OSError as exc:
            raise ClientError(f"RUDP send to {where} failed: {exc}") from None
    while (event := session.next_event()) is not None:
        if log_file is not None:
            log_file.write(event, where)


def _linger_in_background(
    sock: socket.socket, session: ClientSession, linger: float, log_file: EventLog | None
) -> None:
    """Keep ACKing retransmitted FINs for ``linger`` seconds, off the caller's path."""

    def run() -> None:
        deadline = time.monotonic() + linger
        try:
            sock.settimeout(linger)
            while (left := deadline - time.monotonic()) > 0:
                sock.settimeout(left)
                try:
                    data = sock.recv(RECV_BUFFER)
                except (TimeoutError, OSError):
                    break
                now = time.monotonic()
                session.receive_datagram(data, now)
                for datagram in session.datagrams_to_send(now):
                    with contextlib.suppress(OSError):
                        sock.send(datagram)
                while (event := session.next_event()) is not None:
                    if log_file is not None:
                        log_file.write(event)
        finally:
            sock.close()
            if log_file is not None:
                log_file.close()

    threading.Thread(target=run, name="stacklab-rudp-linger", daemon=True).start()
