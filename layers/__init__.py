"""Scapy layers for the stack's wire formats and the Wireshark Lua export.

Importing :mod:`stacklab.layers` imports Scapy and binds the layers to the
default ports (see :mod:`stacklab.layers.bindings`); the services and the
fast capture decoder use :mod:`stacklab.wire` instead and never pay for it.
"""

from stacklab.layers.app import AppFrame, app_frames
from stacklab.layers.bindings import bind_ports, current_ports, scapy_bindings
from stacklab.layers.jsonmsg import DHCPJson, DNSJson, JsonMessage
from stacklab.layers.rudp import RUDP

__all__ = [
    "RUDP",
    "AppFrame",
    "DHCPJson",
    "DNSJson",
    "JsonMessage",
    "app_frames",
    "bind_ports",
    "current_ports",
    "scapy_bindings",
]
