"""stacklab: a packet-crafting and capture-analysis workbench for a small network stack."""

__version__ = "0.1.0"
