"""The lifecycle every stacklab service shares, and the UDP request/reply loop.

A :class:`Service` binds in :meth:`Service.start` (so "address in use" is an
error the caller sees at once, with the service's name and address in it),
runs its socket loop on daemon threads, and :meth:`Service.stop` closes the
sockets and joins the threads, so ``stacklab up`` can shut down cleanly and a
test can start a server on port 0 and read the real port from
:attr:`Service.address`.

:class:`UdpService` is the thin loop for the JSON-over-UDP services (DHCP,
DNS): one socket, a selector with a wake-up socket so ``stop()`` is prompt,
and a handler that turns one datagram into at most one reply.  Whatever the
handler raises is logged and counted, never allowed out of the loop: a
malformed datagram must not take a server down.
"""

from __future__ import annotations

import abc
import errno
import logging
import selectors
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from types import TracebackType

log = logging.getLogger(__name__)

UDP_RECV_SIZE = 65535
"""Large enough for any UDP datagram, so nothing is silently truncated."""


class RateLimitedLog:
    """At most one log record per ``interval`` seconds per key; the rest are counted.

    A server under attack must not turn every refused connection into a line
    on the console: the first one is logged, the following ones within the
    interval only counted, and the next record says how many were held back.
    """

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.interval = interval
        self.clock = clock
        self._next: dict[str, float] = {}
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()

    def log(
        self, level: int, key: str, message: str, *args: object, exc_info: bool = False
    ) -> bool:
        """Log ``message % args`` unless ``key`` was logged less than ``interval`` ago."""
        now = self.clock()
        with self._lock:
            if now < self._next.get(key, 0.0):
                self._held[key] = self._held.get(key, 0) + 1
                return False
            self._next[key] = now + self.interval
            held = self._held.pop(key, 0)
        if held:
            message += " (%d more like this in the last %.0f s)"
            args = (*args, held, self.interval)
        self.logger.log(level, message, *args, exc_info=exc_info)
        return True


class BindError(OSError):
    """A service could not bind its address; the message names the service and the address."""

    def __str__(self) -> str:
        return str(self.strerror)


def bind_error(name: str, host: str, port: int, exc: OSError) -> BindError:
    """Translate a bind failure into one clear line (``cannot bind dns to 127.0.0.1:5353: ...``)."""
    if exc.errno == errno.EADDRINUSE:
        why = "address in use"
    elif exc.errno == errno.EADDRNOTAVAIL:
        why = "address not available on this host"
    elif exc.errno == errno.EACCES:
        why = "permission denied"
    else:
        why = exc.strerror or str(exc)
    return BindError(exc.errno or 0, f"cannot bind {name} to {host}:{port}: {why}")


def family_for(host: str) -> socket.AddressFamily:
    """IPv6 when the host is an IPv6 literal, otherwise IPv4."""
    return socket.AF_INET6 if ":" in host else socket.AF_INET


class Service(abc.ABC):
    """A thread-based network service with an explicit, idempotent lifecycle.

    Subclasses implement :meth:`start`, :meth:`stop` and :attr:`address`;
    ``stats`` counts what happened (requests, replies, dropped, errors, ...)
    so tests and the ``stacklab up`` table can show it.  Use :meth:`count`
    from worker threads: a plain ``Counter`` update is not atomic.
    """

    name: str = "service"

    def __init__(self) -> None:
        self.stats: Counter[str] = Counter()
        self._stats_lock = threading.Lock()

    def count(self, key: str, n: int = 1) -> None:
        """Increment one counter, safely from any thread."""
        with self._stats_lock:
            self.stats[key] += n

    @abc.abstractmethod
    def start(self) -> None:
        """Bind and start serving; return only once ready.  Raises :class:`BindError`."""

    @abc.abstractmethod
    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving, close sockets and join threads.  Safe to call twice."""

    @property
    @abc.abstractmethod
    def address(self) -> tuple[str, int]:
        """The real bound (host, port): port 0 resolved to the ephemeral port."""

    def __enter__(self) -> Service:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class LoopService(Service):
    """A service with one bound socket watched by a selector on one daemon thread.

    The wake-up socket pair lets :meth:`stop` interrupt the selector at once
    instead of waiting for a poll timeout; the timeout is only a safety net.
    """

    POLL_INTERVAL = 0.5

    def __init__(self, host: str, port: int) -> None:
        super().__init__()
        self.host = host
        self.port = port
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._wake: tuple[socket.socket, socket.socket] | None = None
        self._bound: tuple[str, int] | None = None
        self._lifecycle = threading.Lock()
        self._warn = RateLimitedLog(log)  # what a peer can trigger is logged sparingly

    @abc.abstractmethod
    def _make_socket(self) -> socket.socket:
        """Create, configure and bind the service socket (bind errors propagate)."""

    @abc.abstractmethod
    def _on_readable(self, sock: socket.socket) -> None:
        """Handle readiness of the service socket (must not block)."""

    def _on_stop(self) -> None:
        """Hook for subclasses: release per-connection resources after the loop ends."""

    @property
    def address(self) -> tuple[str, int]:
        if self._bound is None:
            raise RuntimeError(f"{self.name} is not started")
        return self._bound

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        with self._lifecycle:
            if self._thread is not None:
                return
            try:
                sock = self._make_socket()
            except BindError:
                raise
            except OSError as exc:
                raise bind_error(self.name, self.host, self.port, exc) from None
            sock.setblocking(False)
            self._sock = sock
            self._wake = socket.socketpair()
            name = sock.getsockname()
            self._bound = (str(name[0]), int(name[1]))
            self._stopping.clear()
            self._thread = threading.Thread(
                target=self._run, name=f"stacklab-{self.name}", daemon=True
            )
            self._thread.start()
            log.info("%s listening on %s:%d", self.name, *self._bound)

    def _run(self) -> None:
        assert self._sock is not None and self._wake is not None
        sel = selectors.DefaultSelector()
        sel.register(self._sock, selectors.EVENT_READ, "service")
        sel.register(self._wake[0], selectors.EVENT_READ, "wake")
        try:
            while not self._stopping.is_set():
                for key, _ in sel.select(self.POLL_INTERVAL):
                    if key.data == "wake":
                        break
                    try:
                        self._on_readable(self._sock)
                    except Exception:  # the loop must survive any bug in a handler
                        self.count("errors")
                        log.exception("%s: unexpected error in the socket loop", self.name)
        finally:
            sel.close()

    def stop(self, timeout: float = 5.0) -> None:
        with self._lifecycle:
            thread = self._thread
            if thread is None:
                return
            self._stopping.set()
            if self._wake is not None:
                self._wake[1].send(b"x")
            thread.join(timeout)
            if thread.is_alive():
                log.warning("%s: loop thread did not stop within %.1f s", self.name, timeout)
            self._thread = None
            if self._sock is not None:
                self._sock.close()
                self._sock = None
            if self._wake is not None:
                for end in self._wake:
                    end.close()
                self._wake = None
            self._on_stop()
            log.info("%s stopped", self.name)


class UdpService(LoopService):
    """One UDP socket; each datagram goes to :meth:`handle_datagram`, which may reply.

    Counters: ``requests`` (datagrams received), ``replies``, ``dropped``
    (no reply: unparseable or ignored input), ``errors`` (handler raised).
    """

    def _make_socket(self) -> socket.socket:
        sock = socket.socket(family_for(self.host), socket.SOCK_DGRAM)
        # No SO_REUSEADDR: on Linux it would let two UDP servers share a port silently.
        try:
            sock.bind((self.host, self.port))
        except OSError as exc:
            sock.close()
            raise bind_error(self.name, self.host, self.port, exc) from None
        return sock

    @abc.abstractmethod
    def handle_datagram(self, data: bytes, addr: tuple[str, int]) -> bytes | None:
        """Turn one datagram into a reply, or ``None`` to drop it (count why with :meth:`count`)."""

    def _on_readable(self, sock: socket.socket) -> None:
        for _ in range(64):  # drain a burst, but let the loop check for stop now and then
            try:
                data, addr = sock.recvfrom(UDP_RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. ICMP port unreachable reported on a later recv
                log.debug("%s: recvfrom failed: %s", self.name, exc)
                return
            self.count("requests")
            log.debug(
                "%s: %d bytes from %s:%d: %r", self.name, len(data), addr[0], addr[1], data[:200]
            )
            try:
                reply = self.handle_datagram(data, (str(addr[0]), int(addr[1])))
            except Exception:
                self.count("errors")
                self._warn.log(
                    logging.ERROR,
                    "handler",
                    "%s: handler failed on %d bytes from %s",
                    self.name,
                    len(data),
                    addr,
                    exc_info=True,
                )
                continue
            if reply is None:
                self.count("dropped")
                continue
            self.count("replies")  # before sending: a client that got its reply sees it counted
            try:
                sock.sendto(reply, addr)
            except OSError as exc:
                self.count("replies", -1)
                self.count("errors")
                self._warn.log(
                    logging.WARNING,
                    "reply",
                    "%s: cannot reply to %s:%d: %s",
                    self.name,
                    addr[0],
                    addr[1],
                    exc,
                )
                continue
            log.debug("%s: replied %d bytes to %s:%d", self.name, len(reply), addr[0], addr[1])
