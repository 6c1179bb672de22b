"""Scapy layers for the stack's wire formats and the Wireshark Lua export.

Importing :mod:`stacklab.layers` imports Scapy; the services and the fast
capture reader use :mod:`stacklab.wire` instead.
"""
