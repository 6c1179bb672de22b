"""DHCP leases: a sans-I/O lease table and its SQLite persistence.

:class:`LeaseTable` decides who gets which address, given the current time
passed in by the caller (so expiry is tested with a virtual clock).  It never
touches a file: every operation returns the leases it changed and
:class:`SqliteLeaseStore` writes them, so a restart loses no lease.

Life of a lease: ``offer`` holds an address for a client for ``offer_time``
seconds; ``request`` binds it for ``lease_time`` seconds (renewing when the
client asks again); ``release`` or expiry frees it.  Addresses are handed
out lowest first, and a client that comes back gets its previous address
while it is still held.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

OFFERED = "offered"
BOUND = "bound"


@dataclass(frozen=True, slots=True)
class Lease:
    """One address held by one client until ``expires`` (seconds, the caller's clock)."""

    ip: str
    client_id: str
    expires: float
    state: str  # OFFERED or BOUND


class LeaseError(Exception):
    """A request that must be refused (NAK); the message says why."""


class LeaseTable:
    """Address pool and leases, keyed both by address and by client id."""

    def __init__(
        self,
        pool_start: str,
        pool_end: str,
        lease_time: float,
        offer_time: float,
        leases: Iterable[Lease] = (),
    ) -> None:
        first = int(ipaddress.IPv4Address(pool_start))
        last = int(ipaddress.IPv4Address(pool_end))
        if first > last:
            raise ValueError("pool start is after pool end")
        self._first, self._last = first, last
        self.lease_time = lease_time
        self.offer_time = offer_time
        self._by_ip: dict[str, Lease] = {}
        self._by_client: dict[str, Lease] = {}
        for lease in leases:
            if self.in_pool(lease.ip):
                self._put(lease)

    @property
    def size(self) -> int:
        return self._last - self._first + 1

    def in_pool(self, ip: str) -> bool:
        try:
            value = int(ipaddress.IPv4Address(ip))
        except ValueError:
            return False
        return self._first <= value <= self._last

    def leases(self) -> list[Lease]:
        return sorted(self._by_ip.values(), key=lambda lease: ipaddress.IPv4Address(lease.ip))

    def lease_of(self, client_id: str, now: float) -> Lease | None:
        lease = self._by_client.get(client_id)
        return lease if lease is not None and lease.expires > now else None

    def expire(self, now: float) -> list[Lease]:
        """Forget every lease whose time is up; return them (so the store can delete them)."""
        gone = [lease for lease in self._by_ip.values() if lease.expires <= now]
        for lease in gone:
            self._drop(lease)
        return gone

    def offer(self, client_id: str, now: float) -> Lease:
        """The address to offer ``client_id``: its current one, else the lowest free one."""
        self.expire(now)
        current = self._by_client.get(client_id)
        if current is not None:
            if current.state == BOUND:
                return current
            return self._put(Lease(current.ip, client_id, now + self.offer_time, OFFERED))
        for value in range(self._first, self._last + 1):
            ip = str(ipaddress.IPv4Address(value))
            if ip not in self._by_ip:
                return self._put(Lease(ip, client_id, now + self.offer_time, OFFERED))
        raise LeaseError(f"address pool exhausted ({self.size} addresses in use)")

    def request(self, client_id: str, ip: str | None, now: float) -> Lease:
        """Bind ``ip`` (default: the address offered to the client) for ``lease_time``."""
        self.expire(now)
        current = self._by_client.get(client_id)
        if ip is None:
            if current is None:
                raise LeaseError("no address was offered to this client")
            ip = current.ip
        if not self.in_pool(ip):
            raise LeaseError(f"{ip} is not in the address pool")
        holder = self._by_ip.get(ip)
        if holder is not None and holder.client_id != client_id:
            raise LeaseError(f"{ip} is leased to another client")
        if current is not None and current.ip != ip:
            self._drop(current)
        return self._put(Lease(ip, client_id, now + self.lease_time, BOUND))

    def release(self, client_id: str, now: float) -> Lease | None:
        """Free the client's address; return the lease that ended, if any."""
        self.expire(now)
        current = self._by_client.get(client_id)
        if current is not None:
            self._drop(current)
        return current

    def _put(self, lease: Lease) -> Lease:
        old = self._by_client.get(lease.client_id)
        if old is not None and old.ip != lease.ip:
            self._by_ip.pop(old.ip, None)
        self._by_ip[lease.ip] = lease
        self._by_client[lease.client_id] = lease
        return lease

    def _drop(self, lease: Lease) -> None:
        if self._by_ip.get(lease.ip) == lease:
            del self._by_ip[lease.ip]
        if self._by_client.get(lease.client_id) == lease:
            del self._by_client[lease.client_id]


class SqliteLeaseStore:
    """Leases on disk, one row per address; every change is committed at once."""

    def __init__(self, path: str | os.PathLike[str], *, create_folder: bool = False) -> None:
        """Open (or create) the database; its folder is created only with ``create_folder``.

        Only the default location under the state folder is created on its own:
        a folder the user named that does not exist is a typo to report, not
        a tree to make.
        """
        self.path = os.fspath(path)
        if self.path != ":memory:":
            folder = Path(self.path).parent
            if create_folder:
                folder.mkdir(parents=True, exist_ok=True)
            elif not folder.is_dir():
                raise OSError(
                    f"cannot open the lease database {self.path}: no such folder {folder}"
                )
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS leases ("
                " ip TEXT PRIMARY KEY, client_id TEXT NOT NULL, expires REAL NOT NULL,"
                " state TEXT NOT NULL)"
            )
        except sqlite3.Error as exc:
            raise OSError(f"cannot open the lease database {self.path}: {exc}") from None

    def load(self) -> list[Lease]:
        with self._lock:
            rows = self._db.execute("SELECT ip, client_id, expires, state FROM leases").fetchall()
        return [Lease(str(ip), str(cid), float(exp), str(st)) for ip, cid, exp, st in rows]

    def put(self, lease: Lease) -> None:
        with self._lock:
            self._db.execute(
                "DELETE FROM leases WHERE client_id = ? AND ip != ?", (lease.client_id, lease.ip)
            )
            self._db.execute(
                "INSERT OR REPLACE INTO leases (ip, client_id, expires, state) VALUES (?, ?, ?, ?)",
                (lease.ip, lease.client_id, lease.expires, lease.state),
            )

    def delete(self, leases: Iterable[Lease]) -> None:
        with self._lock:
            for lease in leases:
                self._db.execute(
                    "DELETE FROM leases WHERE ip = ? AND client_id = ?", (lease.ip, lease.client_id)
                )

    def close(self) -> None:
        with self._lock:
            self._db.close()
