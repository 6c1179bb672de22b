"""The whole stack as one object: build every service from a config, start, stop.

Services start in dependency order (the origin first, the app servers last)
and stop in reverse.  If one cannot start (address in use...), the ones
already running are stopped before the error propagates, so a failed
``stacklab up`` leaves no thread or port behind.  The RUDP app server joins
the stack as soon as its module is installed.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from types import TracebackType

from stacklab.config import StackConfig
from stacklab.services.app_tcp import TcpAppServer
from stacklab.services.base import Service
from stacklab.services.dhcp import DhcpServer
from stacklab.services.dns import DnsServer, load_zone
from stacklab.services.origin import OriginServer

log = logging.getLogger(__name__)

SERVICE_NAMES = ("origin", "dhcp", "dns", "app-tcp", "app-rudp")
TRANSPORTS = {
    "origin": "tcp (http)",
    "dhcp": "udp",
    "dns": "udp",
    "app-tcp": "tcp",
    "app-rudp": "udp (rudp)",
}


def dns_records(config: StackConfig) -> dict[str, str]:
    """Zone file records, then inline records (which win), or the default record."""
    records: dict[str, str] = {}
    if config.dns.zone_file:
        records.update(load_zone(config.dns.zone_file))
    records.update(config.dns_records())
    return records


def build_service(name: str, config: StackConfig) -> Service:
    """One service by its CLI name (``dhcp``, ``dns``, ``origin``, ``app-tcp``, ``app-rudp``)."""
    if name == "origin":
        origin = config.origin
        return OriginServer(
            origin.host,
            origin.port,
            origin.root,
            idle_timeout=origin.idle_timeout,
            max_connections=origin.max_connections,
            max_connections_per_client=origin.max_connections_per_client,
        )
    if name == "dhcp":
        return DhcpServer(config.dhcp)
    if name == "dns":
        return DnsServer(config.dns, dns_records(config))
    if name == "app-tcp":
        return TcpAppServer(config.app_tcp, config.fetch_policy())
    if name == "app-rudp":
        # Imported here: the other services run without loading the RUDP engine.
        module = importlib.import_module("stacklab.services.app_rudp")
        service: Service = module.RudpAppServer(config.app_rudp, config.fetch_policy())
        return service
    raise LookupError(f"unknown service {name!r} (known: {', '.join(SERVICE_NAMES)})")


class Stack:
    """Every service of the stack, started and stopped together."""

    def __init__(self, config: StackConfig, names: tuple[str, ...] | None = None) -> None:
        if names is None:
            names = SERVICE_NAMES
        unknown = [n for n in names if n not in SERVICE_NAMES]
        if unknown:
            raise LookupError(f"unknown service {unknown[0]!r} (known: {', '.join(SERVICE_NAMES)})")
        self.config = config
        self.names = tuple(n for n in SERVICE_NAMES if n in names)
        self.services: list[Service] = []

    def start(self) -> None:
        """Start every service in order; built one by one, so a port-0 origin is known to the rest."""
        if self.services:
            return
        try:
            for name in self.names:
                service = build_service(name, self.config)
                service.start()
                self.services.append(service)
                if name == "origin" and self.config.origin.port == 0:
                    self.config.origin.port = service.address[1]
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = 5.0) -> None:
        for service in reversed(self.services):
            try:
                service.stop(timeout)
            except Exception:
                log.exception("%s: error while stopping", service.name)
        self.services.clear()

    def get(self, name: str) -> Service:
        for service in self.services:
            if service.name == name:
                return service
        raise KeyError(name)

    def rows(self) -> list[tuple[str, str, str]]:
        """(service, transport, host:port) for the table ``stacklab up`` prints."""
        rows = []
        for service in self.services:
            host, port = service.address
            shown = f"[{host}]" if ":" in host else host
            rows.append((service.name, TRANSPORTS.get(service.name, ""), f"{shown}:{port}"))
        return rows

    def __enter__(self) -> Stack:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
