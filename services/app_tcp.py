"""The TCP app server (2121): one framed FETCH request per connection.

Each connection gets its own thread (bounded by ``max_connections``, and by
``max_connections_per_client`` per source address, so that one host holding
idle connections cannot take every slot), so a slow or silent client never
blocks another.  A connection over either limit is answered with the framed
``ERROR: Server busy, try again later`` and closed; those refusals are
logged at most once every few seconds.  A connection must deliver its
whole request frame within ``read_timeout`` seconds; a malformed prefix or a
declared length above ``max_request`` is answered with an ``ERROR: ...``
frame and the connection closes, as does a client that stalls mid-frame.
The command itself is answered by :func:`stacklab.services.fetcher.handle_command`,
which the RUDP app server shares.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections import Counter

from stacklab.config import AppTcpSettings
from stacklab.framing import FrameDecoder, FramingError
from stacklab.services.base import LoopService, RateLimitedLog, bind_error, family_for
from stacklab.services.fetcher import Fetcher, FetchPolicy, fetch, handle_command
from stacklab.wire import ERROR_PREFIX, frame_prefix

log = logging.getLogger(__name__)

RECV_SIZE = 65536
SMALL_RESPONSE = 256 * 1024
"""Responses up to this size are copied behind their prefix and sent in one write."""
ERROR_BUSY = ERROR_PREFIX + "Server busy, try again later"
ERROR_TIMEOUT = ERROR_PREFIX + "Timed out waiting for the request"


def error_frame(text: str) -> bytes:
    body = text.encode("utf-8")
    return frame_prefix(len(body)) + body


class TcpAppServer(LoopService):
    """Accepts connections on the loop thread and serves each on a worker thread."""

    name = "app-tcp"

    def __init__(
        self, settings: AppTcpSettings, policy: FetchPolicy, *, fetcher: Fetcher = fetch
    ) -> None:
        super().__init__(settings.host, settings.port)
        self.settings = settings
        self.policy = policy
        self.fetcher = (
            fetcher  # how a FETCH gets its bytes (tests and benchmarks answer from memory)
        )
        self._slots = threading.BoundedSemaphore(settings.max_connections)
        self._per_client: Counter[str] = Counter()  # source address -> open connections
        self._warn = RateLimitedLog(log)
        self._conns: set[socket.socket] = set()
        self._workers: set[threading.Thread] = set()
        self._conns_lock = threading.Lock()

    def _make_socket(self) -> socket.socket:
        sock = socket.socket(family_for(self.host), socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
            sock.listen(min(socket.SOMAXCONN, 1024))
        except OSError as exc:
            sock.close()
            raise bind_error(self.name, self.host, self.port, exc) from None
        return sock

    def _on_readable(self, sock: socket.socket) -> None:
        try:
            conn, addr = sock.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:  # e.g. EMFILE: keep serving the others
            self.count("errors")
            self._warn.log(logging.WARNING, "accept", "app-tcp: accept failed: %s", exc)
            return
        self.count("connections")
        conn.setblocking(True)
        host = str(addr[0])
        with self._conns_lock:
            crowded = self._per_client[host] >= self.settings.max_connections_per_client
        if crowded:
            self._busy(conn, addr, "busy_client", "connections from this address")
            return
        if not self._slots.acquire(blocking=False):
            self._busy(conn, addr, "busy", "connections in all")
            return
        with self._conns_lock:
            self._per_client[host] += 1
            self._conns.add(conn)
            worker = threading.Thread(
                target=self._serve,
                args=(conn, (str(addr[0]), int(addr[1]))),
                daemon=True,
                name=f"stacklab-app-tcp-{addr[1]}",
            )
            self._workers.add(worker)
        worker.start()

    def _serve(self, conn: socket.socket, addr: tuple[str, int]) -> None:
        try:
            body = self._read_request(conn, addr)
            if body is None:
                return
            self.count("requests")
            response = handle_command(body, self.policy, self.fetcher)
            conn.settimeout(self.settings.read_timeout)  # per send: a slow reader still progresses
            self.count("replies")  # before sending: a client that got its reply sees it counted
            try:
                if len(response) <= SMALL_RESPONSE:
                    # one segment, as the original sent it; two writes would meet Nagle's delay
                    conn.sendall(frame_prefix(len(response)) + response)
                else:
                    conn.sendall(frame_prefix(len(response)))
                    conn.sendall(response)
            except OSError:
                self.count("replies", -1)
                raise
            self.count("bytes_sent", len(response) + 10)
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_WR)
        except OSError as exc:
            self.count("aborted")
            log.info("app-tcp: %s:%d: connection ended: %s", addr[0], addr[1], exc)
        except Exception:
            self.count("errors")
            log.exception("app-tcp: %s:%d: unexpected error", *addr)
        finally:
            conn.close()
            with self._conns_lock:
                self._per_client[addr[0]] -= 1
                if self._per_client[addr[0]] <= 0:
                    del self._per_client[addr[0]]
                self._conns.discard(conn)
                self._workers.discard(threading.current_thread())
            self._slots.release()

    def _busy(self, conn: socket.socket, addr: tuple[str, int], counter: str, why: str) -> None:
        """Refuse a connection over a limit: the framed busy error, then close."""
        self.count(counter)
        limit = (
            self.settings.max_connections_per_client
            if counter == "busy_client"
            else self.settings.max_connections
        )
        self._warn.log(
            logging.WARNING,
            counter,
            "app-tcp: %s:%d refused: %d %s active",
            addr[0],
            addr[1],
            limit,
            why,
        )
        try:
            conn.settimeout(0.5)  # a fresh socket's send buffer is empty: this does not wait
            conn.sendall(error_frame(ERROR_BUSY))
        except OSError:
            pass
        conn.close()

    def _read_request(self, conn: socket.socket, addr: tuple[str, int]) -> bytes | None:
        """The request body, or None after answering/closing a bad or stalled request."""
        decoder = FrameDecoder(self.settings.max_request)
        deadline = time.monotonic() + self.settings.read_timeout
        buf = bytearray(RECV_SIZE)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self._refuse(conn, addr, "timeouts", ERROR_TIMEOUT)
                return None
            conn.settimeout(left)
            try:
                n = conn.recv_into(buf)
            except TimeoutError:
                self._refuse(conn, addr, "timeouts", ERROR_TIMEOUT)
                return None
            if n == 0:
                self.count("incomplete")
                log.info(
                    "app-tcp: %s:%d closed before a full request (%d bytes)",
                    addr[0],
                    addr[1],
                    decoder.pending,
                )
                return None
            try:
                frames = decoder.feed(memoryview(buf)[:n])
            except FramingError as exc:
                self._refuse(
                    conn, addr, "malformed", f"{ERROR_PREFIX}Malformed request frame: {exc}"
                )
                return None
            if frames:
                return frames[0].body  # one request per connection; extra bytes are ignored

    def _refuse(self, conn: socket.socket, addr: tuple[str, int], counter: str, text: str) -> None:
        self.count(counter)
        log.info("app-tcp: %s:%d: %s", addr[0], addr[1], text)
        try:
            conn.settimeout(1.0)
            conn.sendall(error_frame(text))
        except OSError:
            pass

    def _on_stop(self) -> None:
        with self._conns_lock:
            conns = list(self._conns)
            workers = list(self._workers)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + 2.0
        for worker in workers:
            worker.join(max(0.0, deadline - time.monotonic()))
