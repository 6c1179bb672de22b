"""stacklab: a packet-crafting and capture-analysis workbench for a small network stack.

Use from Python::

    import stacklab

    analysis = stacklab.verify("capture.pcapng")        # the checks of `stacklab verify`
    for packet in stacklab.decode("capture.pcapng", only="rudp"):
        print(packet.line())                              # the lines of `stacklab decode`
    charts = stacklab.series("capture.pcapng")            # verdicts plus points to plot

``import stacklab`` stays light (no Scapy, no matplotlib, no binding of
layers): the names below are loaded when first used.  The Scapy layers are
bound to their ports by ``import stacklab.layers``; ``stacklab.pyshark``
opens captures in pyshark with the generated dissector.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from stacklab.analysis.findings import PacketFinding
    from stacklab.analysis.pcapio import CaptureError
    from stacklab.analysis.sessions import CaptureAnalysis, VerifyOptions
    from stacklab.api import decode, series, verify
    from stacklab.wire import Ports

_EXPORTS = {
    "verify": "stacklab.api",
    "decode": "stacklab.api",
    "series": "stacklab.api",
    "CaptureAnalysis": "stacklab.analysis.sessions",
    "VerifyOptions": "stacklab.analysis.sessions",
    "CaptureError": "stacklab.analysis.pcapio",
    "PacketFinding": "stacklab.analysis.findings",
    "Ports": "stacklab.wire",
}

__all__ = [
    "CaptureAnalysis",
    "CaptureError",
    "PacketFinding",
    "Ports",
    "VerifyOptions",
    "__version__",
    "decode",
    "series",
    "verify",
]


def __getattr__(name: str) -> Any:
    """Load an exported name on first use (PEP 562), so that ``import stacklab`` is cheap."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'stacklab' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
