"""Socket plumbing shared by the RUDP app server, client and benchmark.

Large kernel buffers (so a burst at full speed is not dropped by the kernel:
only the network, or ``stacklab chaos``, should drop), and the JSON-lines
events writer that turns engine events (monotonic engine time) into
wall-clock epoch seconds, so they can be lined up with capture timestamps.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import logging
import socket
import sys
import time
from typing import IO

from stacklab.transport.events import Event

log = logging.getLogger(__name__)

SOCKET_BUFFER = 4 * 1024 * 1024
RECV_BUFFER = 65535
_SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)
_SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
"""Linux's values (asm-generic/socket.h); ``socket`` defines neither name."""


def tune_socket(sock: socket.socket, size: int = SOCKET_BUFFER) -> None:
    """Ask for ``size``-byte send and receive buffers (the kernel may cap them: best effort)."""
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, option, size)
    # Root may exceed net.core.rmem_max (Python's socket module does not name
    # these options, hence Linux's numbers); others get EPERM, which is fine.
    if sys.platform.startswith("linux"):
        for forced in (_SO_RCVBUFFORCE, _SO_SNDBUFFORCE):
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


# -- UDP segmentation offload (Linux): fewer syscalls for runs of equal datagrams ----------

SOL_UDP = getattr(socket, "SOL_UDP", 17)
UDP_SEGMENT = 103  # linux/udp.h: send one buffer as equal-size datagrams (GSO)
UDP_GRO = 104  # linux/udp.h: receive several datagrams of one flow in one buffer
GSO_MAX_BYTES = 65000
GSO_MAX_SEGMENTS = 64
GRO_CMSG_SPACE = socket.CMSG_SPACE(4) if hasattr(socket, "CMSG_SPACE") else 0


@functools.cache
def gso_supported() -> bool:
    """Whether this kernel has UDP segmentation offload (``UDP_SEGMENT``, Linux 4.18+).

    Probed once per process on a throw-away socket; a sender still falls back
    for good if a real send fails (a device without checksum offload answers
    EIO, a too-big segment EINVAL).
    """
    if not sys.platform.startswith("linux") or not hasattr(socket.socket, "sendmsg"):
        return False
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.setsockopt(SOL_UDP, UDP_SEGMENT, 1400)
    except OSError:
        return False
    return True


class DatagramSender:
    """Sends a list of datagrams, batching runs of equal size with UDP GSO when enabled.

    With ``gso`` the kernel cuts one ``sendmsg`` buffer into datagrams of the
    given size: identical on the wire to one ``sendto`` each, at a fraction of
    the system calls, and a receiver that did not ask for UDP GRO gets them
    one by one.  ``gso=None`` (the default) uses it when the kernel has it
    (:func:`gso_supported`).  A capture on the loopback interface records
    such a batch as one oversized datagram (segmentation happens after the
    capture point); stacklab's capture readers split it again
    (:mod:`stacklab.gso`).  Any error from the kernel turns GSO off
    for good and falls back to ``sendto``.
    """

    def __init__(self, sock: socket.socket, gso: bool | None = None) -> None:
        self.sock = sock
        wanted = gso_supported() if gso is None else gso
        self.gso = wanted and hasattr(sock, "sendmsg")
        self.datagrams = 0  # sent, batched or not
        self.batches = 0  # GSO sends (each of two or more datagrams)

    def send(
        self, datagrams: list[bytes], addr: tuple[str, int] | None = None, batch: bool = True
    ) -> int:
        """Send all; return how many went out (BlockingIOError counts as a loss, not an error).

        ``batch=False`` sends one datagram per system call even with GSO on
        (the app server's original-protocol sessions: see its docstring).
        """
        sent = 0
        if not self.gso or not batch or len(datagrams) < 2:
            sent = self._each(datagrams, addr)
            self.datagrams += sent
            return sent
        i, n = 0, len(datagrams)
        while i < n:
            size = len(datagrams[i])
            limit = min(GSO_MAX_SEGMENTS, GSO_MAX_BYTES // max(size, 1))
            j = i + 1
            while j < n and j - i < limit and len(datagrams[j]) == size:
                j += 1
            if j - i == 1 or not self.gso:
                sent += self._one(datagrams[i], addr)
            else:
                sent += self._batch(datagrams[i:j], size, addr)
            i = j
        self.datagrams += sent
        return sent

    def _each(self, datagrams: list[bytes], addr: tuple[str, int] | None) -> int:
        """One ``sendto`` each, with the bound method looked up once (the bulk path)."""
        sent = 0
        if addr is None:
            send = self.sock.send
            for datagram in datagrams:
                try:
                    send(datagram)
                except BlockingIOError:
                    continue
                sent += 1
            return sent
        sendto = self.sock.sendto
        for datagram in datagrams:
            try:
                sendto(datagram, addr)
            except BlockingIOError:
                continue
            sent += 1
        return sent

    def _one(self, datagram: bytes, addr: tuple[str, int] | None) -> int:
        try:
            if addr is None:
                self.sock.send(datagram)
            else:
                self.sock.sendto(datagram, addr)
        except BlockingIOError:
            return 0
        return 1

    def _batch(self, run: list[bytes], size: int, addr: tuple[str, int] | None) -> int:
        cmsg = [(SOL_UDP, UDP_SEGMENT, size.to_bytes(2, sys.byteorder))]
        try:
            self.sock.sendmsg([b"".join(run)], cmsg, 0, *(() if addr is None else (addr,)))
        except BlockingIOError:
            return 0
        except OSError as exc:
            if exc.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH):
                raise
            log.info("UDP GSO unavailable (%s): sending one datagram at a time", exc)
            self.gso = False
            return sum(self._one(d, addr) for d in run)
        self.batches += 1
        return len(run)


def enable_gro(sock: socket.socket) -> bool:
    """Ask the kernel to hand over several datagrams per receive (Linux UDP GRO)."""
    if not GRO_CMSG_SPACE:
        return False
    try:
        sock.setsockopt(SOL_UDP, UDP_GRO, 1)
    except OSError:
        return False
    return True


def gro_segment_size(ancdata: list[tuple[int, int, bytes]]) -> int | None:
    """The segment size of a coalesced receive, or None for a single datagram."""
    for level, kind, data in ancdata:
        if level == SOL_UDP and kind == UDP_GRO and len(data) >= 2:
            return int.from_bytes(data[:4] if len(data) >= 4 else data[:2], sys.byteorder)
    return None
