"""The embedded origin HTTP server (what ``python -m http.server 8080`` was in the original).

It serves a folder read-only over HTTP/1.0 with the standard library's
handler, one thread per request, and logs one line per request through
:mod:`logging` instead of writing to stderr.  ``Content-Length`` is always
sent for files, which lets the app servers preallocate the body buffer.
"""

from __future__ import annotations

import functools
import http.server
import logging
import threading
from importlib import resources
from pathlib import Path
from typing import Any

from stacklab.services.base import Service, bind_error, family_for

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


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    owner: OriginServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        self.owner.count("errors")
        log.debug("origin: error serving %s", client_address, exc_info=True)


class OriginServer(Service):
    """Serves ``root`` over HTTP on ``host:port`` (port 0 picks a free port)."""

    name = "origin"

    def __init__(self, host: str, port: int, root: str | Path | None = None) -> None:
        super().__init__()
        self.host = host
        self.port = port
        self.root = Path(root) if root is not None else sample_root()
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
            handler = functools.partial(_Handler, directory=str(self.root))

            server_cls = type("_BoundServer", (_Server,), {"address_family": family_for(self.host)})
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
