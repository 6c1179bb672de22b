"""DHCP and DNS of the stack: JSON messages over UDP (6767 and 5353).

Wire format (WIRE.md, "DHCP" and "DNS"): the client's DHCP request is the
bare keyword ``DISCOVER``; every other message is a JSON object written with
``json.dumps`` (``": "`` and ``", "`` separators).  The layer keeps the
datagram's bytes exactly (so ``raw()`` round-trips any input, even broken
JSON) and exposes the parsed object as ``.obj`` and the well-known keys
(:data:`stacklab.wire.JSON_WELL_KNOWN_KEYS`) as attributes::

    >>> DNSJson(domain="my-app-server.local").load
    b'{"domain": "my-app-server.local"}'
    >>> DHCPJson(b'{"type": "OFFER", "assigned_ip": "127.0.0.2"}').assigned_ip
    '127.0.0.2'

Port 5353 is also mDNS, which Scapy binds to its DNS layer.  That binding is
removed (``split_layers``) and :class:`DNSJson` decides by content: a
datagram that parses completely as binary DNS becomes Scapy's ``DNS``, every
other one (JSON first of all) stays ``DNSJson``.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from scapy.fields import StrField
from scapy.layers.dns import DNS
from scapy.layers.inet import UDP
from scapy.packet import Packet, bind_layers, split_layers

from stacklab.summaries import (
    binary_dns_summary,
    dhcp_summary,
    dns_summary,
    parse_json_message,
)
from stacklab.wire import DHCP_DISCOVER, DHCP_PORT, DNS_PORT, JSON_WELL_KNOWN_KEYS


class JsonMessage(Packet):
    """A whole UDP datagram holding a JSON object (or, for DHCP, a bare keyword).

    Craft with keyword arguments for the well-known keys, or ``obj=`` for any
    object; both are encoded the way the original programs do (``json.dumps``).
    """

    name = "JSON message"
    fields_desc = [StrField("load", b"")]  # noqa: RUF012

    def __init__(self, *args: Any, obj: dict[str, Any] | None = None, **kwargs: Any) -> None:
        known: dict[str, Any] = {
            key: kwargs.pop(key) for key in JSON_WELL_KNOWN_KEYS if key in kwargs
        }
        if obj is not None or known:
            merged = dict(obj or {})
            merged.update(known)
            kwargs["load"] = json.dumps(merged).encode("utf-8")
        super().__init__(*args, **kwargs)

    def __getattr__(self, attr: str) -> Any:
        if attr in JSON_WELL_KNOWN_KEYS:
            obj = self.obj
            return None if obj is None else obj.get(attr)
        return super().__getattr__(attr)

    @property
    def info(self) -> dict[str, Any]:
        """``{"json": {...}}`` or ``{"text": ...}``: the same as ``stacklab decode --json``."""
        return parse_json_message(bytes(self.getfieldval("load")))

    @property
    def obj(self) -> dict[str, Any] | None:
        """The parsed JSON object, or None when the datagram is not a JSON object."""
        obj: dict[str, Any] | None = self.info.get("json")
        return obj

    @property
    def text(self) -> str:
        """The datagram as text (invalid UTF-8 shown with backslash escapes)."""
        return bytes(self.getfieldval("load")).decode("utf-8", "backslashreplace")

    def extract_padding(self, s: bytes) -> tuple[bytes, bytes]:
        return b"", s

    def _show_or_dump(
        self,
        dump: bool = False,
        indent: int = 3,
        lvl: str = "",
        label_lvl: str = "",
        first_call: bool = True,
    ) -> str | None:
        """``show()``: the raw ``load``, then each key of the parsed JSON (or the text)."""
        text = super()._show_or_dump(True, indent, lvl, label_lvl, first_call=False) or ""
        lines = text.split("\n")
        info = self.info
        prefix = f"{label_lvl}{lvl}  "
        if "json" in info and isinstance(info["json"], dict):
            parsed = [f"{prefix}{'.' + key:<10}= {value!r}" for key, value in info["json"].items()]
        else:
            parsed = [f"{prefix}{'text':<10}= {self.text!r}"]
        # After the header line and the load line come the parsed keys.
        text = "\n".join(lines[:2] + parsed + lines[2:])
        if first_call and not dump:
            sys.stdout.write(text + "\n")
            return None
        return text


class DHCPJson(JsonMessage):
    """A DHCP message: ``DISCOVER`` or ``{"type": "OFFER", "assigned_ip": ...}``."""

    name = "DHCP-JSON"

    @classmethod
    def discover(cls) -> DHCPJson:
        """The client's request: the 8 bytes ``DISCOVER``, not JSON."""
        return cls(load=DHCP_DISCOVER)

    def mysummary(self) -> str:
        return dhcp_summary(self.info)


class DNSJson(JsonMessage):
    """A DNS message: ``{"domain": ...}`` or ``{"status": ..., "ip": ...}``."""

    name = "DNS-JSON"

    @classmethod
    def dispatch_hook(cls, _pkt: bytes | None = None, *args: Any, **kargs: Any) -> type[Packet]:
        """Binary DNS (mDNS shares the port) goes to Scapy's DNS layer; the rest is ours."""
        if _pkt and binary_dns_summary(bytes(_pkt)) is not None:
            return DNS
        return cls

    def mysummary(self) -> str:
        return dns_summary(self.info)


SCAPY_MDNS_BINDINGS = [e for e in UDP.payload_guess if e[1] is DNS and DNS_PORT in e[0].values()]
"""Scapy's own UDP 5353 -> DNS bindings, removed here; given back when DNS-JSON moves elsewhere."""
split_layers(UDP, DNS, dport=DNS_PORT)
split_layers(UDP, DNS, sport=DNS_PORT)
bind_layers(UDP, DHCPJson, sport=DHCP_PORT)
bind_layers(UDP, DHCPJson, dport=DHCP_PORT)
bind_layers(UDP, DNSJson, sport=DNS_PORT)
bind_layers(UDP, DNSJson, dport=DNS_PORT)
