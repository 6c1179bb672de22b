"""The DNS server (UDP 5353): the original JSON exchange and RFC 1035 A queries.

The two dialects share the port and the records; the first non-space byte
decides: ``{`` is JSON (the original protocol), anything else is tried as
DNS wire format (so ``dig @127.0.0.1 -p 5353 my-app-server.local`` works).
A ``{`` that does not start valid JSON is still tried as wire format, since a
DNS message ID may begin with that byte.

JSON, as WIRE.md: ``{"domain": name}`` -> ``{"status": "SUCCESS", "ip": ...}``
or ``NOT_FOUND`` with ``"ip": null``; valid JSON without a usable ``domain``
-> ``ERROR``; not parseable -> no reply.  Names are case-insensitive and a
trailing dot is ignored.  Wire-format queries that do not parse, and
responses, are dropped and counted.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from stacklab.config import DnsSettings
from stacklab.services.base import UdpService
from stacklab.wire import DNS_STATUS_ERROR, DNS_STATUS_NOT_FOUND, DNS_STATUS_SUCCESS

log = logging.getLogger(__name__)

MAX_JSON_QUERY = 4096


class ZoneError(ValueError):
    """A zone file cannot be read; the message names the file and the line."""


def normalise(name: str) -> str:
    return name.strip().lower().rstrip(".")


def load_zone(path: str | Path) -> dict[str, str]:
    """Records from a TOML zone (``[records]`` table or top-level ``name = "ip"``) or a hosts file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ZoneError(f"cannot read zone file {path}: {exc}") from None
    records: dict[str, str] = {}
    if path.suffix.lower() == ".toml":
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ZoneError(f"zone file {path} is not valid TOML: {exc}") from None
        table = data.get("records", data)
        if not isinstance(table, dict):
            raise ZoneError(f"zone file {path}: [records] must be a table")
        for name, ip in table.items():
            if not isinstance(ip, str):
                raise ZoneError(f"zone file {path}: {name} must map to an address string")
            records[normalise(name)] = ip
    else:
        for number, line in enumerate(text.splitlines(), 1):
            fields = line.split("#", 1)[0].split()
            if not fields:
                continue
            if len(fields) < 2:
                raise ZoneError(f"zone file {path}:{number}: expected 'address name [aliases]'")
            for name in fields[1:]:
                records[normalise(name)] = fields[0]
    for name, ip in records.items():
        try:
            ipaddress.IPv4Address(ip)
        except ValueError:
            raise ZoneError(f"zone file {path}: {name} -> {ip!r} is not an IPv4 address") from None
    return records


def json_reply(status: str, ip: str | None) -> bytes:
    """The original reply, byte for byte (``json.dumps`` separators)."""
    return json.dumps({"status": status, "ip": ip}).encode()


class DnsServer(UdpService):
    """Answers JSON lookups and DNS A queries from one record table."""

    name = "dns"

    def __init__(self, settings: DnsSettings, records: Mapping[str, str]) -> None:
        super().__init__(settings.host, settings.port)
        self.settings = settings
        self.records = {normalise(k): v for k, v in records.items()}

    def lookup(self, name: str) -> str | None:
        return self.records.get(normalise(name))

    def handle_datagram(self, data: bytes, addr: tuple[str, int]) -> bytes | None:
        if data.lstrip()[:1] == b"{":
            return self._json(data, addr)
        return self._wire(data, addr)

    def _json(self, data: bytes, addr: tuple[str, int]) -> bytes | None:
        if len(data) > MAX_JSON_QUERY:
            self.count("malformed")
            return None
        try:
            query: Any = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            # A DNS message whose ID starts with 0x7b ("{") lands here: try the wire format.
            return self._wire(data, addr)
        domain = query.get("domain") if isinstance(query, dict) else None
        if not isinstance(domain, str):
            log.info("dns: query from %s:%d without a domain -> ERROR", *addr)
            return json_reply(DNS_STATUS_ERROR, None)
        ip = self.lookup(domain)
        if ip is None:
            log.info("dns: %s from %s:%d -> NOT_FOUND", domain, *addr)
            return json_reply(DNS_STATUS_NOT_FOUND, None)
        log.info("dns: %s from %s:%d -> %s", domain, addr[0], addr[1], ip)
        return json_reply(DNS_STATUS_SUCCESS, ip)

    def _wire(self, data: bytes, addr: tuple[str, int]) -> bytes | None:
        try:
            query = dns.message.from_wire(data)
        except (dns.exception.DNSException, ValueError, UnicodeError):
            self.count("malformed")
            log.debug("dns: dropped %d bytes from %s:%d: neither JSON nor DNS", len(data), *addr)
            return None
        if query.flags & dns.flags.QR:
            self.count("malformed")
            return None
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if query.opcode() != dns.opcode.QUERY or len(query.question) != 1:
            response.set_rcode(
                dns.rcode.NOTIMP if query.opcode() != dns.opcode.QUERY else dns.rcode.FORMERR
            )
            return response.to_wire()
        question = query.question[0]
        name = question.name.to_text(omit_final_dot=True)
        ip = self.lookup(name)
        if ip is None:
            response.set_rcode(dns.rcode.NXDOMAIN)
            log.info("dns: wire %s from %s:%d -> NXDOMAIN", name, *addr)
        elif (
            question.rdtype in (dns.rdatatype.A, dns.rdatatype.ANY)
            and question.rdclass == dns.rdataclass.IN
        ):
            response.answer.append(
                dns.rrset.from_text(question.name, self.settings.ttl, "IN", "A", ip)
            )
            log.info("dns: wire %s A from %s:%d -> %s", name, addr[0], addr[1], ip)
        else:
            log.info(
                "dns: wire %s type %s -> no data", name, dns.rdatatype.to_text(question.rdtype)
            )
        return response.to_wire()
