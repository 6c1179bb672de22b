"""The embedded origin HTTP server (what ``python -m http.server 8080`` was in the original).

It serves a folder read-only over HTTP/1.0 with the standard library's
handler, one thread per request, and logs one line per request through
:mod:`logging` instead of writing to stderr.  ``Content-Length`` is always
sent for files, which lets the app servers preallocate the body buffer.

Unlike ``http.server``, it cannot be held by idle connections: a connection
silent for ``idle_timeout`` seconds is closed, at most ``max_connections``
are served at once and ``max_connections_per_client`` per source address;
a connection over a limit gets ``503 Service Unavailable`` at once, without
a thread (refusals are logged at most once every few seconds).
"""

from __future__ import annotations

import functools
import http.server
import logging
import socket
import threading
from collections import Counter
from importlib import resources
from pathlib import Path
from typing import Any

from stacklab.services.base import RateLimitedLog, Service, bind_error, family_for

log = logging.getLogger(__name__)


def sample_root() -> Path:
    """The small sample folder shipped with stacklab (contains ``test_file.txt``)."""
    return Path(str(resources.files("stacklab") / "data" / "www"))


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Static files only; logging through :mod:`logging`; counts into the service's stats."""

    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("origin: %s - %s", self.client_address[0], format % args)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        self.server.owner.count("requests")
        log.info("origin: %s %s -> %s", self.command, self.path, code)

    def log_error(self, format: str, *args: Any) -> None:
        self.server.owner.count("errors")
        log.info("origin: %s - %s", self.client_address[0], format % args)


BUSY_RESPONSE = (
    b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
    b"Content-Length: 29\r\nConnection: close\r\n\r\nServer busy, try again later\n"
)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    owner: OriginServer
    max_connections = 256
    max_per_client = 64
    # socketserver's backlog of 5 would leave a burst of clients waiting seconds
    # for SYN retransmissions before the limits below could even answer them.
    request_queue_size = min(socket.SOMAXCONN, 1024)

    def server_activate(self) -> None:
        super().server_activate()
        self._active: Counter[str] = Counter()
        self._total = 0
        self._limits = threading.Lock()
        self._warn = RateLimitedLog(log)

    def process_request(self, request: Any, client_address: Any) -> None:
        """Refuse a connection over a limit on the accept thread; serve the others on their own."""
        host = str(client_address[0])
        with self._limits:
            crowded = self._active[host] >= self.max_per_client
            full = self._total >= self.max_connections
            if not (crowded or full):
                self._active[host] += 1
                self._total += 1
        if crowded or full:
            self.owner.count("busy_client" if crowded else "busy")
            self._warn.log(
                logging.WARNING,
                "busy",
                "origin: %s:%d refused: too many connections%s",
                client_address[0],
                client_address[1],
                " from this address" if crowded else "",
            )
            try:
                request.settimeout(0.5)
                request.sendall(BUSY_RESPONSE)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            host = str(client_address[0])
            with self._limits:
                self._total -= 1
                self._active[host] -= 1
                if self._active[host] <= 0:
                    del self._active[host]

    def handle_error(self, request: Any, client_address: Any) -> None:
        self.owner.count("errors")
        log.debug("origin: error serving %s", client_address, exc_info=True)


class OriginServer(Service):
    """Serves ``root`` over HTTP on ``host:port`` (port 0 picks a free port)."""

    name = "origin"

    def __init__(
        self,
        host: str,
        port: int,
        root: str | Path | None = None,
        *,
        idle_timeout: float = 10.0,
        max_connections: int = 256,
        max_connections_per_client: int = 64,
    ) -> None:
        super().__init__()
        self.host = host
        self.port = port
        self.root = Path(root) if root is not None else sample_root()
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.max_connections_per_client = max_connections_per_client
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def address(self) -> tuple[str, int]:
        if self._server is None:
            raise RuntimeError("origin is not started")
        name = self._server.socket.getsockname()
        return str(name[0]), int(name[1])

    def start(self) -> None:
        with self._lock:
            if self._server is not None:
                return
            if not self.root.is_dir():
                raise FileNotFoundError(f"origin root {self.root} is not a directory")
            # The handler's ``timeout`` is the socket timeout of each connection:
            # a client silent that long (before or between requests) is dropped.
            handler_cls = type("_TimedHandler", (_Handler,), {"timeout": self.idle_timeout})
            handler = functools.partial(handler_cls, directory=str(self.root))

            server_cls = type(
                "_BoundServer",
                (_Server,),
                {
                    "address_family": family_for(self.host),
                    "max_connections": self.max_connections,
                    "max_per_client": self.max_connections_per_client,
                },
            )
            try:
                server = server_cls((self.host, self.port), handler)
            except OSError as exc:
                raise bind_error(self.name, self.host, self.port, exc) from None
            server.owner = self
            self._server = server
            self._thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.2},
                name="stacklab-origin",
                daemon=True,
            )
            self._thread.start()
            log.info("origin serving %s on %s:%d", self.root, *self.address)

    def stop(self, timeout: float = 5.0) -> None:
        with self._lock:
            server, thread = self._server, self._thread
            if server is None or thread is None:
                return
            server.shutdown()
            server.server_close()
            thread.join(timeout)
            self._server = None
            self._thread = None
            log.info("origin stopped")
