"""A user-space UDP relay that impairs traffic like tc netem (no root needed).

Clients send to the proxy's listening address; for each client address the
proxy opens its own socket to the upstream server (so the server sees one
peer per client, and replies find their way back), and every datagram in
either direction goes through one direction of an impaired link
(:class:`stacklab.sim.impairment.Link`): "up" is client -> server, "down"
is server -> client.  Each direction is a shared link, like a netem qdisc on
an interface: its loss chain, rate queue and outage windows apply to all
clients together.

Threads: one I/O thread reads every socket through a selector and takes the
decisions (so decisions are taken in arrival order, one at a time, and a seed
reproduces them); datagrams due at once are sent right there, delayed ones go
to a scheduler thread that keeps them in a heap and sleeps on a condition
until the earliest is due (never a polling loop).
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import json
import logging
import random
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from stacklab.services.base import Service, bind_error, family_for
from stacklab.sim.impairment import Decision, Impairment, Link, derive_rng
from stacklab.wire import looks_like_rudp, unpack_rudp

log = logging.getLogger(__name__)

RECV_SIZE = 65535
SOCKET_BUFFER = 4 * 1024 * 1024
"""Large socket buffers so the kernel drops nothing at full speed: only the model drops."""

UP = "up"
DOWN = "down"
DROP_RULE = "rule"
"""The verdict of a datagram dropped by a targeted rule rather than by the random model."""

DropRule = Callable[[str, bytes], "str | None"]
"""``rule(direction, datagram)`` -> the name of the rule that drops it, or ``None``.

Targeted drops (the third DATA, the first ACK, the FIN) hit the protocol state a
random model reaches only by luck.  The link still takes its random draws for the
datagram, so a rule changes no other decision of the seed.
"""


@dataclass(eq=False)
class _Mapping:
    """One client: its address and the socket the proxy uses to talk upstream for it."""

    client: tuple[str, int]
    upstream: socket.socket
    last_seen: float
    label: str = field(init=False)
    via: str = field(init=False)  # the upstream socket's own address: the server's peer

    def __post_init__(self) -> None:
        self.label = f"{self.client[0]}:{self.client[1]}"
        local = self.upstream.getsockname()
        self.via = f"{local[0]}:{local[1]}"


class _Scheduler:
    """Delivers delayed datagrams at their time: a heap guarded by a condition.

    The thread waits on the condition until the earliest deadline (or until a
    new, earlier datagram is pushed); it never sleeps in a fixed-step loop.
    """

    def __init__(self, clock: Callable[[], float], on_error: Callable[[OSError], None]) -> None:
        self._clock = clock
        self._on_error = on_error
        self._heap: list[tuple[float, int, Callable[[bytes], object], bytes]] = []
        self._order = itertools.count()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="stacklab-chaos-sched", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def push(self, at: float, send: Callable[[bytes], object], data: bytes) -> None:
        item = (at, next(self._order), send, data)
        with self._cond:
            heapq.heappush(self._heap, item)
            if self._heap[0] is item:  # a new earliest deadline: wake the thread early
                self._cond.notify()

    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._heap)

    def stop(self, timeout: float) -> None:
        with self._cond:
            self._stopping = True
            self._heap.clear()
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        due: list[tuple[float, int, Callable[[bytes], object], bytes]] = []
        while True:
            with self._cond:
                while not self._stopping:
                    if not self._heap:
                        self._cond.wait()
                        continue
                    wait = self._heap[0][0] - self._clock()
                    if wait <= 0:
                        break
                    self._cond.wait(wait)
                if self._stopping:
                    return
                now = self._clock()
                while self._heap and self._heap[0][0] <= now:
                    due.append(heapq.heappop(self._heap))
            for _, _, send, data in due:
                try:
                    send(data)
                except OSError as exc:
                    self._on_error(exc)
            due.clear()


class ChaosProxy(Service):
    """An impairing UDP relay between clients and one upstream server.

    ``seed`` makes every decision reproducible: each direction draws from its
    own stream (:func:`~stacklab.sim.impairment.derive_rng`).  With
    ``log_path`` each decision is appended as one JSON line.  ``stats``
    counts per direction (``up.received``, ``up.delivered``, ``up.loss``,
    ``down.corrupt``, ...) plus ``clients``, ``expired`` and ``send_errors``.
    """

    name = "chaos"

    def __init__(
        self,
        listen: tuple[str, int],
        upstream: tuple[str, int],
        impairment_up: Impairment | None = None,
        impairment_down: Impairment | None = None,
        seed: int = 0,
        log_path: str | Path | None = None,
        *,
        idle_timeout: float = 60.0,
        max_clients: int = 1024,
        clock: Callable[[], float] = time.monotonic,
        drop_rule: DropRule | None = None,
    ) -> None:
        super().__init__()
        self.drop_rule = drop_rule
        self.listen = listen
        self.upstream = upstream
        self.impairment_up = impairment_up or Impairment()
        self.impairment_down = impairment_down or Impairment()
        self.seed = seed
        self.log_path = Path(log_path) if log_path is not None else None
        self.idle_timeout = idle_timeout
        self.max_clients = max_clients
        self._clock = clock
        self._sock: socket.socket | None = None
        self._bound: tuple[str, int] | None = None
        self._wake: tuple[socket.socket, socket.socket] | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._lifecycle = threading.Lock()
        self._scheduler: _Scheduler | None = None
        self._mappings: dict[tuple[str, int], _Mapping] = {}
        self._log: IO[str] | None = None
        self._decisions = 0
        self._t0 = 0.0
        self._links: dict[str, Link] = {}
        self._rngs: dict[str, random.Random] = {}
        self._sel: selectors.BaseSelector = selectors.DefaultSelector()

    # -- lifecycle -----------------------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        if self._bound is None:
            raise RuntimeError("chaos proxy is not started")
        return self._bound

    @property
    def clients(self) -> int:
        """How many client mappings are open now."""
        return len(self._mappings)

    def start(self) -> None:
        with self._lifecycle:
            if self._thread is not None:
                return
            host, port = self.listen
            sock = socket.socket(family_for(host), socket.SOCK_DGRAM)
            try:
                sock.bind((host, port))
            except OSError as exc:
                sock.close()
                raise bind_error(self.name, host, port, exc) from None
            _big_buffers(sock)
            sock.setblocking(False)
            name = sock.getsockname()
            self._sock = sock
            self._bound = (str(name[0]), int(name[1]))
            if self.log_path is not None:
                self._log = self.log_path.open("w", encoding="utf-8")
            self._t0 = self._clock()
            self._links = {
                UP: Link(self.impairment_up, start=self._t0),
                DOWN: Link(self.impairment_down, start=self._t0),
            }
            self._rngs = {UP: derive_rng(self.seed, UP), DOWN: derive_rng(self.seed, DOWN)}
            self._decisions = 0
            self._wake = socket.socketpair()
            self._sel = selectors.DefaultSelector()
            self._stopping.clear()
            self._scheduler = _Scheduler(self._clock, self._send_failed)
            self._scheduler.start()
            self._thread = threading.Thread(target=self._run, name="stacklab-chaos", daemon=True)
            self._thread.start()
            log.info(
                "chaos relaying %s:%d -> %s:%d (up: %s; down: %s; seed %d)",
                *self._bound,
                *self.upstream,
                self.impairment_up.describe(),
                self.impairment_down.describe(),
                self.seed,
            )

    def stop(self, timeout: float = 5.0) -> None:
        with self._lifecycle:
            thread = self._thread
            if thread is None:
                return
            self._stopping.set()
            if self._wake is not None:
                self._wake[1].send(b"x")
            thread.join(timeout)
            self._thread = None
            if self._scheduler is not None:
                self._scheduler.stop(timeout)
                self._scheduler = None
            for mapping in self._mappings.values():
                mapping.upstream.close()
            self._mappings.clear()
            for s in (self._sock, *(self._wake or ())):
                if s is not None:
                    s.close()
            self._sock = None
            self._wake = None
            if self._log is not None:
                self._log.close()
                self._log = None
            log.info("chaos stopped")

    # -- the I/O loop --------------------------------------------------------

    def _run(self) -> None:
        assert self._sock is not None and self._wake is not None
        sel = self._sel
        sel.register(self._sock, selectors.EVENT_READ, None)
        sel.register(self._wake[0], selectors.EVENT_READ, "wake")
        next_sweep = self._clock() + min(1.0, self.idle_timeout)
        try:
            while not self._stopping.is_set():
                timeout = max(0.0, next_sweep - self._clock())
                for key, _ in sel.select(timeout):
                    if key.data == "wake":
                        return
                    try:
                        if key.data is None:
                            self._from_clients()
                        else:
                            self._from_upstream(key.data)
                    except Exception:  # one bad datagram must never stop the relay
                        self.count("errors")
                        log.exception("chaos: unexpected error in the relay loop")
                now = self._clock()
                if now >= next_sweep:
                    self._expire_idle(now)
                    next_sweep = now + min(1.0, self.idle_timeout)
        finally:
            sel.close()
            if self._log is not None:
                self._log.flush()

    def _from_clients(self) -> None:
        assert self._sock is not None
        for _ in range(64):  # drain a burst, then let the loop look at other sockets
            try:
                data, addr = self._sock.recvfrom(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.debug("chaos: recvfrom failed: %s", exc)
                return
            client = (str(addr[0]), int(addr[1]))
            now = self._clock()
            mapping = self._mappings.get(client)
            if mapping is None:
                mapping = self._open_mapping(client, now)
                if mapping is None:
                    continue
            mapping.last_seen = now
            self._relay(UP, mapping, data, now, mapping.upstream.send)

    def _from_upstream(self, mapping: _Mapping) -> None:
        sock = self._sock
        assert sock is not None
        client = mapping.client

        def send_down(data: bytes) -> object:
            return sock.sendto(data, client)

        for _ in range(64):
            try:
                data = mapping.upstream.recv(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. ECONNREFUSED: the upstream port is closed
                self.count("up.unreachable")
                log.debug("chaos: upstream for %s: %s", mapping.label, exc)
                return
            now = self._clock()
            mapping.last_seen = now
            self._relay(DOWN, mapping, data, now, send_down)

    def _relay(
        self,
        direction: str,
        mapping: _Mapping,
        data: bytes,
        now: float,
        send: Callable[[bytes], object],
    ) -> None:
        decision = self._links[direction].offer(data, now, self._rngs[direction])
        rule = self.drop_rule(direction, data) if self.drop_rule is not None else None
        if rule is not None and not decision.dropped:
            decision = Decision(DROP_RULE, ())
        elif rule is not None:
            rule = None  # the model dropped it already: the rule's target is still to come
        self._record(direction, mapping, data, now, decision, rule)
        # "received" is counted last so that whoever sees it also sees the rest.
        with self._stats_lock:
            stats = self.stats
            decision.count(stats, direction)
            if not decision.dropped:
                stats[f"{direction}.delivered"] += len(decision.deliveries)
            stats[f"{direction}.received"] += 1
        scheduler = self._scheduler
        assert scheduler is not None
        for at, payload in decision.deliveries:
            if at <= now:
                try:
                    send(payload)
                except OSError as exc:
                    self._send_failed(exc)
            else:
                scheduler.push(at, send, payload)

    def _record(
        self,
        direction: str,
        mapping: _Mapping,
        data: bytes,
        now: float,
        decision: Decision,
        rule: str | None = None,
    ) -> None:
        self._decisions += 1
        if self._log is None:
            return
        record: dict[str, object] = {
            "n": self._decisions,
            "t": round(now - self._t0, 6),
            "dir": direction,
            "client": mapping.label,
            "via": mapping.via,
            "bytes": len(data),
        }
        if looks_like_rudp(data):
            # The relay is protocol-agnostic, but naming RUDP packets makes the log readable.
            header, _ = unpack_rudp(data)
            record["rudp"] = {
                "seq": header.seq,
                "ack": header.ack,
                "flag": header.flag_letter,
                "len": header.length,
            }
        record.update(decision.to_record())
        if rule is not None:
            record["rule"] = rule
        self._log.write(json.dumps(record, separators=(",", ":")) + "\n")

    def _send_failed(self, exc: OSError) -> None:
        self.count("send_errors")
        log.debug("chaos: send failed: %s", exc)

    # -- client mappings -----------------------------------------------------

    def _open_mapping(self, client: tuple[str, int], now: float) -> _Mapping | None:
        if len(self._mappings) >= self.max_clients:
            oldest = min(self._mappings.values(), key=lambda m: m.last_seen)
            self._close_mapping(oldest)
            self.count("evicted")
        host, port = self.upstream
        upstream = socket.socket(family_for(host), socket.SOCK_DGRAM)
        try:
            _big_buffers(upstream)
            upstream.connect((host, port))
        except OSError as exc:
            upstream.close()
            self.count("errors")
            log.warning("chaos: cannot open a socket to upstream %s:%d: %s", host, port, exc)
            return None
        upstream.setblocking(False)
        mapping = _Mapping(client, upstream, now)
        self._mappings[client] = mapping
        self._sel.register(upstream, selectors.EVENT_READ, mapping)
        self.count("clients")
        log.info("chaos: new client %s", mapping.label)
        return mapping

    def _close_mapping(self, mapping: _Mapping) -> None:
        self._mappings.pop(mapping.client, None)
        with contextlib.suppress(KeyError, ValueError):
            self._sel.unregister(mapping.upstream)
        mapping.upstream.close()

    def _expire_idle(self, now: float) -> None:
        for mapping in [
            m for m in self._mappings.values() if now - m.last_seen > self.idle_timeout
        ]:
            self._close_mapping(mapping)
            self.count("expired")
            log.info("chaos: client %s idle, mapping closed", mapping.label)


def _big_buffers(sock: socket.socket) -> None:
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        with contextlib.suppress(OSError):  # some systems cap it; the default still works
            sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
