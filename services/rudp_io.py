"""Socket plumbing shared by the RUDP app server, client and benchmark.

Large kernel buffers (so a burst at full speed is not dropped by the kernel:
only the network, or ``stacklab chaos``, should drop), and the JSON-lines
events writer that turns engine events (monotonic engine time) into
wall-clock epoch seconds, so they can be lined up with capture timestamps.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import time
from typing import IO

from stacklab.transport.events import Event

log = logging.getLogger(__name__)

SOCKET_BUFFER = 4 * 1024 * 1024
RECV_BUFFER = 65535


def tune_socket(sock: socket.socket, size: int = SOCKET_BUFFER) -> None:
    """Ask for ``size``-byte send and receive buffers (the kernel may cap them: best effort)."""
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, option, size)
    # Root may exceed net.core.rmem_max; harmless where unsupported.
    for name in ("SO_RCVBUFFORCE", "SO_SNDBUFFORCE"):
        forced: int | None = getattr(socket, name, None)
        if forced is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, forced, size)


class EventLog:
    """Writes engine events as JSON lines with wall-clock times.

    Engine time is ``time.monotonic()``; the offset to ``time.time()`` is
    taken once, so the log is monotonic and still comparable to a capture.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._fh: IO[str] = open(path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
        self._offset = time.time() - time.monotonic()

    def write(self, event: Event, peer: str | None = None) -> None:
        record = event.to_dict()
        record["time"] = round(float(event.time) + self._offset, 6)
        if peer is not None:
            record["peer"] = peer
        self._fh.write(json.dumps(record, separators=(",", ":")))
        self._fh.write("\n")

    def flush(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self._fh.flush()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._fh.close()
