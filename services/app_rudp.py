"""The RUDP app server (2122): many clients on one UDP socket, one engine session each.

Thin by design: all protocol logic is in :class:`stacklab.transport.server.ServerSession`.
This loop, on one thread, reads every datagram (``recvfrom_into`` a
preallocated buffer), hands it to the session of its source address, runs
due timers from a heap, sends what the sessions queue and acts on their
events.  A command is run by :func:`stacklab.services.fetcher.handle_command`
(the TCP app server's logic: same allowlist, limits and error texts) in a
small thread pool; the result is posted back through a queue and a
socket-pair wake-up, so the loop never blocks on a fetch.

The body is streamed: the worker opens the origin's response
(:func:`stacklab.services.fetcher.open_command`; a failure before the first
byte still answers the error text), hands the session a
:class:`~stacklab.services.body_stream.BodyStream` and goes on reading the
body into it, blocking whenever the sender has not taken enough (memory stays
a window plus ``READ_AHEAD``, whatever the size).  When the stream gets data
after the sender found it empty, the worker posts a wake-up for that session.
A body that fails mid-way ends the transfer without a FIN that could pass for
complete (see :mod:`stacklab.transport.sender`).  A server made with a
``fetcher`` that returns bytes (tests, benchmarks) sends those from memory.

Stateless SYNs: a SYN never creates a session.  It is answered from the
datagram alone by :class:`stacklab.transport.handshake.Handshake` (a cookie
in the SYN-ACK's ``seq`` for a stacklab client, the original ``seq=0``
SYN-ACK for a plain SYN), so a SYN flood from spoofed addresses leaves the
session table and memory flat.  The command creates the session: with a
valid echoed cookie (proven address) or ``ack=0`` (an original client,
limited by the anti-amplification budget until it acknowledges data).  The
factor and the budget are documented in :mod:`stacklab.transport.handshake`.

Limits: at most ``max_sessions`` sessions, and ``max_sessions_per_client``
per source address, so that one host (original-style sessions that never
ACK included) cannot fill the table: a command from an address at its share
replaces that address's longest-silent session (counted as ``evicted``), so
a host only ever competes with itself.  A session is freed on FIN, give-up,
or ``idle_timeout`` seconds without a datagram (a session waiting for its
fetch is never idle).  When the whole table is full, a SYN or a command gets
the busy answer of :func:`stacklab.wire.busy_answer` (a bare FIN, counted as
``busy``) instead of silence.  Refusals and evictions are logged at most
once every few seconds.

Sending: runs of equal-size datagrams go out as one UDP GSO ``sendmsg``
where the kernel has it (``RudpSettings.gso``, on by default; ``--no-gso``),
but only in negotiated sessions.  An original-protocol session gets one
``sendto`` per datagram, exactly as the original server sends, so that its
captures stay what the original tools expect (the kernel would segment a
batch for a receiver without GRO anyway).
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import os
import queue
import selectors
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from stacklab.config import RudpSettings
from stacklab.services.base import RateLimitedLog, Service, bind_error, family_for
from stacklab.services.body_stream import BodyStream, StreamClosed
from stacklab.services.fetcher import (
    Fetcher,
    FetchPolicy,
    Opener,
    fetch,
    handle_command,
    open_body,
    open_command,
    stream_body,
)
from stacklab.services.rudp_io import RECV_BUFFER, DatagramSender, EventLog, tune_socket
from stacklab.transport.events import CommandReceived, Event
from stacklab.transport.handshake import Handshake, SynCookies
from stacklab.transport.options import OptionLimits, TransferOptions
from stacklab.transport.server import ServerSession, ServerState
from stacklab.wire import FETCH_COMMAND, RUDP_HEADER, Flag, busy_answer, fetch_error_text

log = logging.getLogger(__name__)

Address = tuple[str, int]
BATCH = 256
"""Datagrams read per wake-up before the sessions answer (ACKs coalesce, the loop stays fair)."""
SWEEP_INTERVAL = 1.0
_SYN = Flag.SYN.value
_DATA = Flag.DATA.value


class RudpAppServer(Service):
    """Serves FETCH over RUDP to original and stacklab clients alike."""

    name = "app-rudp"

    def __init__(
        self,
        settings: RudpSettings,
        policy: FetchPolicy,
        *,
        fetcher: Fetcher = fetch,
        opener: Opener | None = None,
        cookie_secret: bytes | None = None,
    ) -> None:
        super().__init__()
        self.settings = settings
        self.policy = policy
        self.fetcher = fetcher
        # Streamed unless a bytes fetcher stands in for the origin (tests, benchmarks).
        self.opener: Opener | None = (
            opener if opener is not None else (open_body if fetcher is fetch else None)
        )
        self.limits = OptionLimits(
            max_chunk=settings.max_chunk,
            max_window=settings.negotiated_max_window,
            allow_integrity=settings.allow_integrity,
        )
        self.original = TransferOptions(
            chunk_size=settings.chunk_size, max_window=settings.max_window
        )
        # The cookie key is secret, not simulation randomness: fresh per server
        # unless a caller (a test) passes one.
        self.handshake = Handshake(
            self.limits, self.original, SynCookies(cookie_secret or os.urandom(32))
        )
        self.sessions: dict[Address, ServerSession] = {}
        self._sock: socket.socket | None = None
        self._sender: DatagramSender | None = None
        self._wake: tuple[socket.socket, socket.socket] | None = None
        self._thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None
        # A fetch's answer: bytes, a stream (its first post), or None (a stream has data).
        self._done: queue.SimpleQueue[tuple[Address, ServerSession, bytes | BodyStream | None]] = (
            queue.SimpleQueue()
        )
        self._streams: set[BodyStream] = set()  # streams being filled, closed at stop()
        self._streams_lock = threading.Lock()
        self._stopping = threading.Event()
        self._bound: Address | None = None
        self._events: EventLog | None = None
        self._lifecycle = threading.Lock()
        self._heap: list[tuple[float, int, Address]] = []
        self._armed: dict[Address, float] = {}
        self._last_seen: dict[Address, float] = {}
        self._seq = 0
        self._per_client: dict[str, set[Address]] = {}  # source address -> its sessions
        self._warn = RateLimitedLog(log)

    # -- lifecycle -----------------------------------------------------------------

    @property
    def sender(self) -> DatagramSender | None:
        """What sends the sessions' datagrams (GSO or not; its counters), once started."""
        return self._sender

    @property
    def address(self) -> Address:
        if self._bound is None:
            raise RuntimeError(f"{self.name} is not started")
        return self._bound

    def start(self) -> None:
        with self._lifecycle:
            if self._thread is not None:
                return
            s = self.settings
            sock = socket.socket(family_for(s.host), socket.SOCK_DGRAM)
            try:
                sock.bind((s.host, s.port))
            except OSError as exc:
                sock.close()
                raise bind_error(self.name, s.host, s.port, exc) from None
            tune_socket(sock)
            self._sock = sock
            self._sender = DatagramSender(sock, gso=s.gso)
            name = sock.getsockname()
            self._bound = (str(name[0]), int(name[1]))
            self._wake = socket.socketpair()
            self._wake[0].setblocking(False)
            self._pool = ThreadPoolExecutor(
                max_workers=max(1, s.fetch_workers), thread_name_prefix="stacklab-rudp-fetch"
            )
            if s.events_path:
                try:
                    self._events = EventLog(s.events_path)
                except OSError as exc:
                    self._close_sockets()
                    raise bind_error(self.name, s.host, s.port, exc) from None
            self._stopping.clear()
            self._thread = threading.Thread(target=self._run, name="stacklab-app-rudp", daemon=True)
            self._thread.start()
            log.info("app-rudp listening on %s:%d", *self._bound)

    def stop(self, timeout: float = 5.0) -> None:
        with self._lifecycle:
            thread = self._thread
            if thread is None:
                return
            self._stopping.set()
            self._poke()
            with self._streams_lock:
                for stream in self._streams:
                    stream.close()  # a worker blocked on back-pressure lets go
            thread.join(timeout)
            self._thread = None
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = None
            self._close_sockets()
            if self._events is not None:
                self._events.close()
                self._events = None
            self.sessions.clear()
            self._per_client.clear()
            log.info("app-rudp stopped")

    def _close_sockets(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._wake is not None:
            for end in self._wake:
                end.close()
            self._wake = None

    def _poke(self) -> None:
        wake = self._wake
        if wake is not None:
            with contextlib.suppress(OSError):
                wake[1].send(b"x")

    # -- the loop ------------------------------------------------------------------

    def _run(self) -> None:
        assert self._sock is not None and self._wake is not None
        sock, wake = self._sock, self._wake[0]
        sel = selectors.DefaultSelector()
        sel.register(sock, selectors.EVENT_READ, "sock")
        sel.register(wake, selectors.EVENT_READ, "wake")
        buf = bytearray(RECV_BUFFER)
        view = memoryview(buf)
        next_sweep = time.monotonic() + SWEEP_INTERVAL
        try:
            while not self._stopping.is_set():
                now = time.monotonic()
                deadline = min(self._heap[0][0] if self._heap else next_sweep, next_sweep)
                ready = sel.select(max(0.0, deadline - now))
                now = time.monotonic()
                touched: dict[Address, ServerSession] = {}
                for key, _ in ready:
                    if key.data == "sock":
                        self._read(sock, buf, view, now, touched)
                    else:
                        with contextlib.suppress(OSError):
                            wake.recv(4096)
                        self._collect_fetches(now, touched)
                self._run_timers(now, touched)
                for addr, session in touched.items():
                    self._service(sock, addr, session, now)
                if now >= next_sweep:
                    self._sweep(now)
                    next_sweep = now + SWEEP_INTERVAL
        except Exception:  # the loop must not die silently
            self.count("errors")
            log.exception("app-rudp: socket loop crashed")
        finally:
            sel.close()

    def _read(
        self,
        sock: socket.socket,
        buf: bytearray,
        view: memoryview,
        now: float,
        touched: dict[Address, ServerSession],
    ) -> None:
        sessions = self.sessions
        last_seen = self._last_seen
        for _ in range(BATCH):
            try:
                n, raw_addr = sock.recvfrom_into(buf, RECV_BUFFER, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # ICMP errors surface here on Linux
                log.debug("app-rudp: recvfrom: %s", exc)
                continue
            addr: Address = (raw_addr[0], raw_addr[1])
            session = sessions.get(addr)
            if session is None:
                session = self._new_session(sock, addr, view, n, now)
                if session is None:
                    continue
            session.receive_datagram(view[:n], now)
            last_seen[addr] = now
            touched[addr] = session

    def _new_session(
        self, sock: socket.socket, addr: Address, view: memoryview, n: int, now: float
    ) -> ServerSession | None:
        """Answer a SYN without state; create a session only for an acceptable command."""
        flag = view[8:9] if n >= 11 else b""
        if flag in (_SYN, _DATA) and len(self.sessions) >= self.settings.max_sessions:
            seq = RUDP_HEADER.unpack_from(view, 0)[0]
            self._refuse(sock, addr, seq + 1 if flag == _SYN else seq)
            return None
        if flag == _SYN:
            answer = self.handshake.answer_syn(view[:n], addr, now)
            if answer is None:
                self.count("bad_syn")
                return None
            try:
                sock.sendto(answer, addr)
            except OSError as exc:
                self.count("send_errors")
                log.debug("app-rudp: sendto %s:%d: %s", addr[0], addr[1], exc)
            # Counted once the answer is on its way: whoever watches the counter
            # may then expect the SYN-ACK to be readable.
            self.count("syn_answered")
            return None
        if flag != _DATA:
            self.count("no_session")  # a stray packet or a session we already freed
            return None
        session = self.handshake.accept_command(view[:n], addr, now, self._make_session)
        if session is None:
            self.count("bad_cookie")
            return None
        own = self._per_client.setdefault(addr[0], set())
        if len(own) >= self.settings.max_sessions_per_client:
            self._evict_oldest(own)
        self.sessions[addr] = session
        own.add(addr)
        self.count("sessions")
        return session

    def _evict_oldest(self, own: set[Address]) -> None:
        """Make room in one address's share: free its longest-silent session."""
        seen = self._last_seen
        victim = min(own, key=lambda a: seen.get(a, 0.0))
        session = self.sessions.get(victim)
        self.count("evicted")
        self._warn.log(
            logging.WARNING,
            "evicted",
            "app-rudp: %s holds %d sessions: its longest-silent one (port %d) is dropped",
            victim[0],
            len(own),
            victim[1],
        )
        if session is not None:
            self._free(victim, session)
        else:
            own.discard(victim)

    def _refuse(self, sock: socket.socket, addr: Address, ack: int) -> None:
        """Send the busy answer (a bare FIN, never larger than what it answers)."""
        self.count("busy")
        self._warn.log(
            logging.WARNING,
            "busy",
            "app-rudp: %s:%d refused: the session table is full (%d sessions)",
            addr[0],
            addr[1],
            self.settings.max_sessions,
        )
        try:
            sock.sendto(busy_answer(ack), addr)
        except OSError as exc:
            self.count("send_errors")
            log.debug("app-rudp: sendto %s:%d: %s", addr[0], addr[1], exc)

    def _make_session(self) -> ServerSession:
        s = self.settings
        session = ServerSession(
            self.limits,
            s.max_timeouts,
            original_options=self.original,
            initial_rto=s.initial_rto,
            min_rto=s.min_rto,
            max_rto=s.max_rto,
            handshake_timeout=s.idle_timeout,
            trace=self._events is not None,
        )
        return session

    def _collect_fetches(self, now: float, touched: dict[Address, ServerSession]) -> None:
        while True:
            try:
                addr, session, content = self._done.get_nowait()
            except queue.Empty:
                return
            current = self.sessions.get(addr) is session
            if content is None:  # a stream got data after the sender found it empty
                if current and session.state is ServerState.SENDING:
                    touched[addr] = session
                continue
            if not current or session.state is not ServerState.AWAIT_CONTENT:
                if isinstance(content, BodyStream):
                    content.close()
                continue  # the client left while we fetched
            session.provide_content(content, now)
            self._last_seen[addr] = now
            touched[addr] = session

    def _run_timers(self, now: float, touched: dict[Address, ServerSession]) -> None:
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, addr = heapq.heappop(heap)
            session = self.sessions.get(addr)
            if session is None:
                continue
            timer = session.get_timer()
            if timer is not None and timer <= now:
                self._armed.pop(addr, None)
                session.handle_timer(now)
                touched[addr] = session
            elif timer is not None and self._armed.get(addr) != timer:
                self._arm(addr, timer)

    def _arm(self, addr: Address, timer: float) -> None:
        self._armed[addr] = timer
        self._seq += 1
        heapq.heappush(self._heap, (timer, self._seq, addr))

    def _service(
        self, sock: socket.socket, addr: Address, session: ServerSession, now: float
    ) -> None:
        """Send what the session queued, act on its events, re-arm or free it."""
        if self.sessions.get(addr) is not session:
            return  # evicted to make room for a newer session of the same address
        out = session.datagrams_to_send(now)
        if out:
            try:
                sent = self._sender.send(out, addr, batch=session.negotiated) if self._sender else 0
            except OSError as exc:
                self.count("send_errors")
                log.debug("app-rudp: sendto %s:%d: %s", addr[0], addr[1], exc)
            else:
                if sent < len(out):
                    self.count("send_dropped", len(out) - sent)  # like a loss: GBN recovers
        events = self._events
        while (event := session.next_event()) is not None:
            if events is not None:
                events.write(event, f"{addr[0]}:{addr[1]}")
            if isinstance(event, CommandReceived):
                self._submit(addr, session, event)
            else:
                self._note(addr, event)
        if session.done or session.failed is not None:
            self._free(addr, session)
            return
        timer = session.get_timer()
        if timer is not None and self._armed.get(addr) != timer:
            self._arm(addr, timer)

    def _note(self, addr: Address, event: Event) -> None:
        name = event.name
        if name == "rudp:gave_up":
            log.info("app-rudp: %s:%d: %s", addr[0], addr[1], getattr(event, "reason", ""))

    def _free(self, addr: Address, session: ServerSession) -> None:
        if session.done:
            self.count("completed")
        else:
            self.count("failed")
        self.count("retransmissions", session.sender.retransmissions if session.sender else 0)
        source = session.source
        if source is not None:
            source.close()  # a worker still reading the body stops
        self.sessions.pop(addr, None)
        own = self._per_client.get(addr[0])
        if own is not None:
            own.discard(addr)
            if not own:
                del self._per_client[addr[0]]
        self._armed.pop(addr, None)
        self._last_seen.pop(addr, None)
        if self._events is not None:
            self._events.flush()

    def _submit(self, addr: Address, session: ServerSession, event: CommandReceived) -> None:
        self.count("requests")
        pool = self._pool
        if pool is None:
            return
        command = event.command

        def work() -> None:
            if self.opener is not None:
                self._stream(addr, session, command, self.opener)
                return
            content = self._answer(command)
            self._done.put((addr, session, content))
            self._poke()

        pool.submit(work)

    def _stream(self, addr: Address, session: ServerSession, command: str, opener: Opener) -> None:
        """In a worker: open the body, hand the session a stream, fill it to the end."""
        try:
            answer = open_command(command.encode("utf-8"), self.policy, opener)
        except Exception as exc:  # an opener bug must still produce the documented error text
            answer = self._internal_error(command, exc)
        if isinstance(answer, bytes):
            self._done.put((addr, session, answer))
            self._poke()
            return
        options = session.options  # settled before the command: read-only from here on

        def ready() -> None:
            self._done.put((addr, session, None))
            self._poke()

        stream = BodyStream(options.chunk_size, digest=options.integrity, notify=ready)
        with self._streams_lock:
            if self._stopping.is_set():
                answer.close()
                return
            self._streams.add(stream)
        self._done.put((addr, session, stream))
        self._poke()
        try:
            size = stream_body(answer, stream, self.policy)
            log.debug("app-rudp: %s:%d: %d bytes of body read", addr[0], addr[1], size)
        except StreamClosed:
            log.debug("app-rudp: %s:%d: the session ended before the body", addr[0], addr[1])
        except Exception as exc:  # never leave the sender waiting for a body nobody reads
            self.count("errors")
            log.exception("app-rudp: streaming the answer to %r failed", command[:200])
            stream.fail(f"internal error ({type(exc).__name__})")
        finally:
            with self._streams_lock:
                self._streams.discard(stream)

    def _answer(self, command: str) -> bytes:
        try:
            return handle_command(command.encode("utf-8"), self.policy, self.fetcher)
        except Exception as exc:  # a fetcher bug must still produce the documented error text
            return self._internal_error(command, exc)

    def _internal_error(self, command: str, exc: Exception) -> bytes:
        self.count("errors")
        log.exception("app-rudp: command %r failed unexpectedly", command[:200])
        _, _, url = command.partition(" ")
        if not command.startswith(FETCH_COMMAND + " "):
            url = command
        return fetch_error_text(url.strip(), f"internal error ({type(exc).__name__})").encode()

    def _sweep(self, now: float) -> None:
        """Free sessions idle for ``idle_timeout`` (never one waiting for its fetch)."""
        limit = self.settings.idle_timeout
        for addr, seen in list(self._last_seen.items()):
            session = self.sessions.get(addr)
            if session is None:
                self._last_seen.pop(addr, None)
                continue
            if session.state is ServerState.AWAIT_CONTENT:
                continue
            if now - seen > limit:
                self.count("idle")
                log.info("app-rudp: %s:%d idle for %.0f s: freed", addr[0], addr[1], limit)
                self._free(addr, session)
