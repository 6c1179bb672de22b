"""Which UDP/TCP ports the stack's Scapy layers are bound to, changeable at run time.

Scapy picks a payload class by the first matching entry of the lower
layer's ``payload_guess`` list.  :func:`bind_ports` removes every binding of
the stack's layers, removes Scapy's DNS binding from the DNS-JSON port, and
puts the new bindings at the *front* of the list, so a configured port wins
over Scapy's defaults (``UDP()`` defaults to port 53 both ways).
:func:`scapy_bindings` is a context manager that restores the previous global
state on exit: tests use it so they never leak bindings.

The optional heuristic recognises RUDP on any UDP port no other layer
claims, with the strict :func:`stacklab.wire.looks_like_rudp` (known flag,
exact length).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from scapy.config import conf
from scapy.layers.dns import DNS
from scapy.layers.inet import TCP, UDP
from scapy.packet import Packet

from stacklab.layers.app import AppFrame
from stacklab.layers.jsonmsg import SCAPY_MDNS_BINDINGS, DHCPJson, DNSJson
from stacklab.layers.rudp import RUDP
from stacklab.wire import Ports, looks_like_rudp


class RUDPGuess(Packet):
    """Dispatcher bound to every UDP port: RUDP when the datagram passes the strict heuristic."""

    name = "RUDP?"

    @classmethod
    def dispatch_hook(cls, _pkt: bytes | None = None, *args: Any, **kargs: Any) -> type[Packet]:
        if _pkt is not None and looks_like_rudp(bytes(_pkt)):
            return RUDP
        return conf.raw_layer


def _overloads(cls: type[Packet]) -> dict[type[Packet], dict[str, Any]]:
    """Scapy's crafting overloads of a layer (what ``UDP()/cls()`` fills in below it)."""
    value: dict[type[Packet], dict[str, Any]] = getattr(cls, "_overload_fields", {})
    return value


def _set_overloads(cls: type[Packet], value: dict[type[Packet], dict[str, Any]]) -> None:
    cls._overload_fields = value  # type: ignore[attr-defined]


_OURS = (RUDP, DHCPJson, DNSJson, AppFrame, RUDPGuess)

_state: dict[str, Any] = {"ports": None, "heuristic": False, "removed": SCAPY_MDNS_BINDINGS}
"""The bound ports, whether the heuristic is on, and the Scapy bindings taken away."""


def current_ports() -> Ports | None:
    """The ports the layers are bound to now (None before the first bind)."""
    ports: Ports | None = _state["ports"]
    return ports


def _unbind() -> None:
    for lower in (UDP, TCP):
        lower.payload_guess = [e for e in lower.payload_guess if e[1] not in _OURS]
    UDP.payload_guess = UDP.payload_guess + _state["removed"]
    _state["removed"] = []
    for cls in _OURS:
        _set_overloads(cls, {k: v for k, v in _overloads(cls).items() if k not in (UDP, TCP)})


def bind_ports(ports: Ports, heuristic: bool = False) -> None:
    """Re-bind the layers to ``ports`` (removing the previous bindings).

    ``heuristic`` adds the catch-all RUDP recogniser at the end of UDP's
    list, after every port binding.
    """
    _unbind()
    udp_ports = {"rudp": ports.rudp, "dhcp": ports.dhcp, "dns": ports.dns}
    # Scapy's DNS/mDNS binding on the port we use for DNS-JSON would win: take it away.
    removed = [
        entry
        for entry in UDP.payload_guess
        if entry[1] is DNS and set(entry[0].values()) & {ports.dns}
    ]
    UDP.payload_guess = [e for e in UDP.payload_guess if e not in removed]
    front: list[tuple[dict[str, int], type[Packet]]] = []
    for name, cls in (("rudp", RUDP), ("dhcp", DHCPJson), ("dns", DNSJson)):
        port = udp_ports[name]
        front += [({"dport": port}, cls), ({"sport": port}, cls)]
        _set_overloads(cls, {**_overloads(cls), UDP: {"dport": port}})
    UDP.payload_guess = front + UDP.payload_guess
    if heuristic:
        UDP.payload_guess = [*UDP.payload_guess, ({}, RUDPGuess)]
    TCP.payload_guess = [
        ({"dport": ports.app}, AppFrame),
        ({"sport": ports.app}, AppFrame),
        *TCP.payload_guess,
    ]
    _set_overloads(AppFrame, {**_overloads(AppFrame), TCP: {"dport": ports.app}})
    _state.update(ports=ports, heuristic=heuristic, removed=removed)


@contextmanager
def scapy_bindings(ports: Ports | None = None, heuristic: bool = False) -> Iterator[None]:
    """Bind ``ports`` (default: the current ones) for the block, then restore everything.

    The global Scapy state saved and restored is UDP's and TCP's
    ``payload_guess`` lists and the crafting overloads of the stack's layers
    and of Scapy's DNS.
    """
    saved_guess = {lower: list(lower.payload_guess) for lower in (UDP, TCP)}
    saved_overload = {cls: dict(_overloads(cls)) for cls in (*_OURS, DNS)}
    saved_state = dict(_state)
    saved_state["removed"] = list(_state["removed"])
    try:
        bind_ports(ports or current_ports() or Ports(), heuristic)
        yield
    finally:
        for lower, guess in saved_guess.items():
            lower.payload_guess = guess
        for cls, overload in saved_overload.items():
            _set_overloads(cls, overload)
        _state.clear()
        _state.update(saved_state)


bind_ports(Ports())
