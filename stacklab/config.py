"""The stack's settings: defaults from the original programs, a TOML file, overrides.

One :class:`StackConfig` describes every service.  Defaults come from
:mod:`stacklab.wire`; a TOML file (``--config FILE``) changes any of them;
command-line options are passed as ``overrides`` and win over the file.
Unknown keys and wrong types are reported as one clear line naming the key
(:class:`ConfigError`, a :class:`~stacklab.errors.UserError`), because a
typo in a port must not start a server somewhere unexpected.

The loader is generic over the section dataclasses, so a field added to a
section (e.g. to :class:`RudpSettings`) is loadable without touching it.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stacklab import wire
from stacklab.errors import UserError
from stacklab.services.fetcher import FetchPolicy


class ConfigError(UserError):
    """A configuration file or option is invalid."""


def default_state_dir() -> Path:
    """``$XDG_STATE_HOME/stacklab`` or ``~/.local/state/stacklab``: where leases persist."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "stacklab"


@dataclass
class DhcpSettings:
    """DHCP server: address, lease pool and lease storage."""

    host: str = wire.DHCP_ADDR
    port: int = wire.DHCP_PORT
    pool_start: str = wire.OFFERED_ADDR
    pool_end: str = "127.0.0.254"
    lease_time: float = 3600.0
    offer_time: float = 60.0
    lease_db: str | None = None  # None: default_state_dir() / "leases.sqlite3"; ":memory:" for none

    def lease_db_path(self) -> str:
        return self.lease_db or str(default_state_dir() / "leases.sqlite3")


@dataclass
class DnsSettings:
    """DNS server: address and records (a zone file and/or inline records)."""

    host: str = wire.DNS_ADDR
    port: int = wire.DNS_PORT
    zone_file: str | None = None
    records: dict[str, str] = field(default_factory=dict)
    ttl: int = 60


@dataclass
class OriginSettings:
    """The embedded origin HTTP server."""

    host: str = wire.ORIGIN_ADDR
    port: int = wire.ORIGIN_PORT
    root: str | None = None  # None: the sample folder shipped with stacklab
    max_connections: int = 256
    max_connections_per_client: int = 64  # per source address
    idle_timeout: float = 10.0  # seconds a connection may stay silent (request or keep-alive)


@dataclass
class AppTcpSettings:
    """The TCP app server (10-digit framing, one request per connection)."""

    host: str = wire.APP_ADDR
    port: int = wire.APP_TCP_PORT
    max_connections: int = 256
    max_connections_per_client: int = 64  # per source address: one host cannot take them all
    read_timeout: float = 10.0
    max_request: int = 64 * 1024


@dataclass
class RudpSettings:
    """The RUDP app server; defaults reproduce the original behaviour."""

    host: str = wire.APP_ADDR
    port: int = wire.APP_RUDP_PORT
    chunk_size: int = wire.ORIGINAL_CHUNK_SIZE
    max_window: int = wire.ORIGINAL_MAX_WINDOW
    initial_rto: float = wire.ORIGINAL_TIMEOUT_S
    min_rto: float = 0.2
    max_rto: float = 10.0
    max_timeouts: int = 12  # consecutive failures to advance (stacklab.transport.recovery)
    max_sessions: int = 1024
    max_sessions_per_client: int = 64  # per source address; beyond: its oldest is dropped
    idle_timeout: float = 30.0
    # What a stacklab client may negotiate in its SYN (original clients get the values above).
    max_chunk: int = wire.MAX_STACKLAB_CHUNK
    negotiated_max_window: int = 1024
    allow_integrity: bool = True
    fetch_workers: int = 8
    events_path: str | None = None  # JSON-lines engine events (wall-clock epoch seconds)
    # Batch runs of equal datagrams with UDP GSO where the kernel has it (negotiated
    # sessions only; captures on lo record a batch as one datagram, split by the readers).
    gso: bool = True


@dataclass
class FetchSettings:
    """What the app servers may fetch (see :class:`stacklab.services.fetcher.FetchPolicy`).

    ``allow`` left empty means: only the configured origin's ``host:port``.
    """

    allow: list[str] = field(default_factory=list)
    schemes: list[str] = field(default_factory=lambda: ["http", "https"])
    max_bytes: int = 128 * 1024 * 1024  # a body held in memory (the TCP app server)
    max_stream_bytes: int = 2 * 1024**3  # a body streamed as it is read (the RUDP app server)
    timeout: float = 30.0
    max_redirects: int = 5
    follow_redirects: bool = True


SECTIONS: dict[str, type] = {
    "dhcp": DhcpSettings,
    "dns": DnsSettings,
    "origin": OriginSettings,
    "app_tcp": AppTcpSettings,
    "app_rudp": RudpSettings,
    "fetch": FetchSettings,
}


@dataclass
class StackConfig:
    """Every service's settings."""

    dhcp: DhcpSettings = field(default_factory=DhcpSettings)
    dns: DnsSettings = field(default_factory=DnsSettings)
    origin: OriginSettings = field(default_factory=OriginSettings)
    app_tcp: AppTcpSettings = field(default_factory=AppTcpSettings)
    app_rudp: RudpSettings = field(default_factory=RudpSettings)
    fetch: FetchSettings = field(default_factory=FetchSettings)

    def fetch_policy(self) -> FetchPolicy:
        """The :class:`FetchPolicy` these settings describe (default allowlist: the origin)."""
        origin_host = self.origin.host
        if ":" in origin_host:
            origin_host = f"[{origin_host}]"
        if not self.fetch.allow and self.origin.port == 0:
            raise ConfigError(
                "the default fetch allowlist needs the origin's real port: start the origin first"
            )
        allow = tuple(self.fetch.allow) or (f"{origin_host}:{self.origin.port}",)
        try:
            return FetchPolicy(
                allow=allow,
                schemes=tuple(self.fetch.schemes),
                max_bytes=self.fetch.max_bytes,
                max_stream_bytes=self.fetch.max_stream_bytes,
                timeout=self.fetch.timeout,
                max_redirects=self.fetch.max_redirects,
                follow_redirects=self.fetch.follow_redirects,
            )
        except ValueError as exc:
            raise ConfigError(f"fetch.allow: {exc}") from None

    def dns_records(self) -> dict[str, str]:
        """Inline records, or the default ``my-app-server.local`` -> the app server's address."""
        if self.dns.records or self.dns.zone_file:
            return {k.lower().rstrip("."): v for k, v in self.dns.records.items()}
        return {wire.APP_DOMAIN: self.app_tcp.host}


def load_config(
    path: str | os.PathLike[str] | None, overrides: dict[str, Any] | None = None
) -> StackConfig:
    """Defaults, then the TOML file at ``path`` (if any), then ``overrides``.

    ``overrides`` is nested (``{"dns": {"port": 53}}``) or dotted
    (``{"dns.port": 53}``); ``None`` values are skipped so that unset
    command-line options do not override the file.
    """
    data: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"config file {os.fspath(path)!r} not found") from None
        except OSError as exc:
            raise ConfigError(
                f"cannot read config file {os.fspath(path)!r}: {exc.strerror}"
            ) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {os.fspath(path)!r} is not valid TOML: {exc}") from None
    for key, value in _nest(overrides or {}).items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    config = StackConfig()
    for section_name, section_data in data.items():
        if section_name not in SECTIONS:
            raise ConfigError(
                f"unknown config section [{section_name}] (known: {', '.join(SECTIONS)})"
            )
        if not isinstance(section_data, dict):
            raise ConfigError(f"config section [{section_name}] must be a table")
        section = getattr(config, section_name)
        _apply(section_name, section, section_data)
    _validate(config)
    return config


def _nest(overrides: dict[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for key, value in overrides.items():
        if value is None:
            continue
        section, dot, name = key.partition(".")
        if isinstance(value, dict) and not dot:  # a whole section: {"dns": {"port": 53}}
            inner = {k: v for k, v in value.items() if v is not None}
            nested.setdefault(key, {}).update(inner)
            continue
        if not dot:
            raise ConfigError(f"override {key!r} must name section.key")
        nested.setdefault(section, {})[name] = value
    return nested


def _apply(section_name: str, section: Any, values: dict[str, Any]) -> None:
    hints = typing.get_type_hints(type(section))
    fields = {f.name for f in dataclasses.fields(section)}
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(
                f"unknown key {section_name}.{key} (known: {', '.join(sorted(fields))})"
            )
        setattr(section, key, _coerce(f"{section_name}.{key}", hints[key], value))


def _coerce(where: str, hint: Any, value: Any) -> Any:
    """Check ``value`` against a field's type; ints are accepted where floats are expected."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(where, inner[0], value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where} must be true or false, not {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where} must be an integer, not {value!r}")
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{where} must be a number, not {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where} must be a string, not {value!r}")
    if origin is list:
        if isinstance(value, list | tuple):
            return [_coerce(f"{where}[{i}]", args[0], v) for i, v in enumerate(value)]
        raise ConfigError(f"{where} must be a list, not {value!r}")
    if origin is dict:
        if isinstance(value, dict):
            return {
                _coerce(f"{where} key", args[0], k): _coerce(f"{where}.{k}", args[1], v)
                for k, v in value.items()
            }
        raise ConfigError(f"{where} must be a table, not {value!r}")
    raise ConfigError(f"{where}: unsupported setting type {hint!r}")  # pragma: no cover


_ZERO_ALLOWED = frozenset({"ttl"})
"""Numeric settings for which 0 means something (a DNS TTL of 0: do not cache)."""


def _validate(config: StackConfig) -> None:
    for section_name in SECTIONS:
        section = getattr(config, section_name)
        if hasattr(section, "port") and not 0 <= section.port <= 65535:
            raise ConfigError(f"{section_name}.port {section.port} is not in 0..65535")
        if hasattr(section, "host"):
            try:
                ipaddress.ip_address(section.host)
            except ValueError:
                raise ConfigError(
                    f"{section_name}.host {section.host!r} is not an IP address"
                ) from None
        for f in dataclasses.fields(section):
            value = getattr(section, f.name)
            if not isinstance(value, int | float) or isinstance(value, bool) or f.name == "port":
                continue
            if not math.isfinite(value):
                raise ConfigError(f"{section_name}.{f.name} must be a finite number, not {value!r}")
            if f.name in _ZERO_ALLOWED:
                if value < 0:
                    raise ConfigError(
                        f"{section_name}.{f.name} must not be negative, not {value!r}"
                    )
            elif value <= 0:
                raise ConfigError(f"{section_name}.{f.name} must be positive, not {value!r}")
    for key in ("pool_start", "pool_end"):
        try:
            ipaddress.IPv4Address(getattr(config.dhcp, key))
        except ValueError:
            raise ConfigError(
                f"dhcp.{key} {getattr(config.dhcp, key)!r} is not an IPv4 address"
            ) from None
    if ipaddress.IPv4Address(config.dhcp.pool_start) > ipaddress.IPv4Address(config.dhcp.pool_end):
        raise ConfigError("dhcp.pool_start is after dhcp.pool_end")
    for name, ip in config.dns.records.items():
        try:
            ipaddress.IPv4Address(ip)
        except ValueError:
            raise ConfigError(f"dns.records.{name} {ip!r} is not an IPv4 address") from None
    _validate_rudp(config.app_rudp)
    if config.fetch.allow or config.origin.port != 0:
        config.fetch_policy()  # validates the allowlist entries


def _validate_rudp(rudp: RudpSettings) -> None:
    """The RUDP engine's own bounds, reported as the setting that breaks them."""
    from stacklab.transport.options import OptionsError, TransferOptions

    values = {
        "chunk_size": lambda: TransferOptions(chunk_size=rudp.chunk_size),
        "max_window": lambda: TransferOptions(max_window=rudp.max_window),
        "negotiated_max_window": lambda: TransferOptions(max_window=rudp.negotiated_max_window),
    }
    for key, make in values.items():
        try:
            make()
        except OptionsError as exc:
            raise ConfigError(f"app_rudp.{key}: {exc}") from None
    if rudp.max_chunk > wire.MAX_STACKLAB_CHUNK:
        raise ConfigError(
            f"app_rudp.max_chunk: {rudp.max_chunk} is above {wire.MAX_STACKLAB_CHUNK}"
        )
