"""The DHCP server (UDP 6767): the original keyword exchange plus JSON leases.

Wire behaviour:

* the bare 8 bytes ``DISCOVER`` (the original client) get exactly
  ``{"type": "OFFER", "assigned_ip": "..."}`` (``json.dumps`` separators);
  the lease is keyed by the client's source address, so the original client
  keeps getting the same address;
* JSON ``{"type": "DISCOVER", "client_id": ...}`` -> ``OFFER`` with
  ``lease_time``; ``{"type": "REQUEST", "client_id": ..., "requested_ip": ...}``
  -> ``ACK`` or ``NAK`` with a ``reason``; ``{"type": "RELEASE", "client_id": ...}``
  -> ``RELEASED``; a full pool is a ``NAK`` with ``reason``;
* anything else (not JSON, wrong types, unknown type, too big, too deep) is
  dropped and counted under ``malformed``, as the original ignored it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from stacklab.config import DhcpSettings
from stacklab.services.base import UdpService
from stacklab.services.leases import LeaseError, LeaseTable, SqliteLeaseStore
from stacklab.wire import DHCP_DISCOVER

log = logging.getLogger(__name__)

MAX_REQUEST = 4096
"""A DHCP message is a few dozen bytes; anything far larger is not one."""
MAX_CLIENT_ID = 255


def offer_reply(ip: str) -> bytes:
    """The original OFFER, byte for byte."""
    return json.dumps({"type": "OFFER", "assigned_ip": ip}).encode()


class Malformed(ValueError):
    """The datagram is not a DHCP message stacklab understands: drop it."""


def parse_message(data: bytes) -> dict[str, Any]:
    """Decode a JSON DHCP message and check its field types; Malformed otherwise."""
    if len(data) > MAX_REQUEST:
        raise Malformed(f"{len(data)} bytes is too big")
    try:
        message = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise Malformed(f"not JSON: {type(exc).__name__}") from None
    if not isinstance(message, dict):
        raise Malformed("not a JSON object")
    kind = message.get("type")
    if kind not in ("DISCOVER", "REQUEST", "RELEASE"):
        raise Malformed(f"unknown type {kind!r}")
    client_id = message.get("client_id")
    if not isinstance(client_id, str) or not 0 < len(client_id) <= MAX_CLIENT_ID:
        raise Malformed("client_id must be a non-empty string")
    requested = message.get("requested_ip")
    if requested is not None and not isinstance(requested, str):
        raise Malformed("requested_ip must be a string")
    return message


class DhcpServer(UdpService):
    """Answers DISCOVER / REQUEST / RELEASE from a persistent lease pool."""

    name = "dhcp"

    def __init__(self, settings: DhcpSettings, clock: Callable[[], float] = time.time) -> None:
        super().__init__(settings.host, settings.port)
        self.settings = settings
        self.clock = clock
        self.store: SqliteLeaseStore | None = None
        self.table = LeaseTable(
            settings.pool_start, settings.pool_end, settings.lease_time, settings.offer_time
        )

    def start(self) -> None:
        if self.store is None:
            self.store = SqliteLeaseStore(
                self.settings.lease_db_path(), create_folder=self.settings.lease_db is None
            )
            self.table = LeaseTable(
                self.settings.pool_start,
                self.settings.pool_end,
                self.settings.lease_time,
                self.settings.offer_time,
                self.store.load(),
            )
            self.store.delete(self.table.expire(self.clock()))
        try:
            super().start()
        except BaseException:
            self._on_stop()  # a failed bind must not leave the database open
            raise

    def _on_stop(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None

    def handle_datagram(self, data: bytes, addr: tuple[str, int]) -> bytes | None:
        if data == DHCP_DISCOVER:
            return self._bare_discover(addr)
        try:
            message = parse_message(data)
        except Malformed as exc:
            self.count("malformed")
            log.debug("dhcp: dropped %d bytes from %s:%d: %s", len(data), *addr, exc)
            return None
        return json.dumps(self._answer(message)).encode()

    def _bare_discover(self, addr: tuple[str, int]) -> bytes:
        try:
            lease = self._apply(lambda now: self.table.offer(f"addr:{addr[0]}", now))
        except LeaseError as exc:
            log.info("dhcp: DISCOVER from %s:%d -> NAK (%s)", *addr, exc)
            return json.dumps({"type": "NAK", "reason": str(exc)}).encode()
        log.info("dhcp: DISCOVER from %s:%d -> OFFER %s", addr[0], addr[1], lease.ip)
        return offer_reply(lease.ip)

    def _answer(self, message: dict[str, Any]) -> dict[str, Any]:
        kind, client_id = message["type"], message["client_id"]
        try:
            if kind == "DISCOVER":
                lease = self._apply(lambda now: self.table.offer(client_id, now))
                reply = {"type": "OFFER", "assigned_ip": lease.ip}
            elif kind == "REQUEST":
                requested = message.get("requested_ip")
                lease = self._apply(lambda now: self.table.request(client_id, requested, now))
                reply = {"type": "ACK", "assigned_ip": lease.ip}
            else:
                ended = self._release(client_id)
                log.info("dhcp: RELEASE from %r -> %s", client_id, ended or "nothing")
                return {"type": "RELEASED", "client_id": client_id, "ip": ended}
        except LeaseError as exc:
            self.count("nak")
            log.info("dhcp: %s from %r -> NAK (%s)", kind, client_id, exc)
            return {"type": "NAK", "client_id": client_id, "reason": str(exc)}
        reply["client_id"] = client_id
        reply["lease_time"] = int(lease.expires - self.clock() + 0.5)
        log.info("dhcp: %s from %r -> %s %s", kind, client_id, reply["type"], lease.ip)
        return reply

    def _apply(self, operation: Callable[[float], Any]) -> Any:
        """Run a table operation and persist its effect (expired leases and the new one)."""
        now = self.clock()
        expired = self.table.expire(now)
        lease = operation(now)
        if self.store is not None:
            self.store.delete(expired)
            self.store.put(lease)
        return lease

    def _release(self, client_id: str) -> str | None:
        lease = self.table.release(client_id, self.clock())
        if lease is None:
            return None
        if self.store is not None:
            self.store.delete([lease])
        return lease.ip
