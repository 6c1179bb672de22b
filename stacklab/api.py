"""stacklab from Python: verify, decode and chart captures in a script or a notebook.

The functions here are what ``import stacklab`` offers at the top level
(``stacklab.verify``, ``stacklab.decode``, ``stacklab.series``); each is the
same code as the command of the same name, with its options as keyword
arguments, validated with the command line's words (a misspelt check name
raises ``ValueError`` rather than quietly checking nothing).  They import
neither Scapy nor matplotlib: charts import matplotlib when drawn.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING

from stacklab.analysis.checks import parse_expect
from stacklab.analysis.decode import PROTOCOLS, DecodedPacket, decode_capture
from stacklab.analysis.pcapio import CaptureError
from stacklab.analysis.sessions import CaptureAnalysis, VerifyOptions
from stacklab.wire import ORIGINAL_MAX_WINDOW, Ports

if TYPE_CHECKING:
    pass

__all__ = [
    "CaptureAnalysis",
    "CaptureError",
    "DecodedPacket",
    "Ports",
    "VerifyOptions",
    "decode",
    "series",
    "verify",
]


def ports_from(ports: Ports | Mapping[str, int] | None) -> Ports:
    """``Ports`` from a ``Ports``, a mapping such as ``{"rudp": 9000}``, or None (defaults)."""
    if ports is None:
        return Ports()
    if isinstance(ports, Ports):
        return ports
    if not isinstance(ports, Mapping):
        raise ValueError(f"ports must be a Ports or a mapping of names to ports, not {ports!r}")
    known = ("rudp", "dns", "dhcp", "app", "origin")
    unknown = sorted(set(ports) - set(known))
    if unknown:
        raise ValueError(f"unknown port name {unknown[0]!r} (known: {', '.join(known)})")
    return replace(Ports(), **dict(ports))


def expect_ids(expect: str | Iterable[str] | None) -> frozenset[str] | None:
    """``"handshake,dns"`` or ``{"handshake", "dns"}`` -> the full check ids, as ``--expect``."""
    if expect is None:
        return None
    names = [expect] if isinstance(expect, str) else [str(name) for name in expect]
    return parse_expect(",".join(names)) or frozenset()


def options(
    *,
    expect: str | Iterable[str] | None = None,
    ports: Ports | Mapping[str, int] | None = None,
    max_window: int = ORIGINAL_MAX_WINDOW,
    min_rto: float = 0.2,
    events: str | os.PathLike[str] | None = None,
    jobs: int | None = None,
) -> VerifyOptions:
    """The :class:`VerifyOptions` of :func:`verify`'s keyword arguments (validated)."""
    return VerifyOptions(
        ports=ports_from(ports),
        max_window=max_window,
        expect=expect_ids(expect),
        min_rto=min_rto,
        events_path=os.fspath(events) if events is not None else None,
        jobs=jobs,
    )


def verify(
    path: str | os.PathLike[str],
    *,
    expect: str | Iterable[str] | None = None,
    ports: Ports | Mapping[str, int] | None = None,
    max_window: int = ORIGINAL_MAX_WINDOW,
    min_rto: float = 0.2,
    events: str | os.PathLike[str] | None = None,
    jobs: int | None = None,
) -> CaptureAnalysis:
    """Verify a pcap or pcapng capture, as ``stacklab verify`` does.

    ``expect`` narrows what must be present (``"handshake"``,
    ``{"handshake", "dns"}``; the names of ``--expect``); ``ports`` moves the
    protocols (``{"rudp": 9000}``); ``max_window`` and ``min_rto`` bound the
    sender; ``events`` is the RUDP engine's events log to cross-check.
    Returns the :class:`CaptureAnalysis`: ``.checks``, ``.sessions``,
    ``.findings`` (per packet, as Wireshark's TCP analysis: retransmissions,
    go-backs, duplicate ACKs, failed checks...), ``.passed``, ``.to_json()``.  Raises :class:`CaptureError`
    when the file is not a readable capture, ``ValueError`` for a bad option.
    """
    from stacklab.analysis.verify import analyze_capture

    opts = options(
        expect=expect,
        ports=ports,
        max_window=max_window,
        min_rto=min_rto,
        events=events,
        jobs=jobs,
    )
    # Per-packet notes, so that ``.findings`` lists retransmissions, go-backs...
    return analyze_capture(path, replace(opts, keep_notes=True))


def decode(
    path: str | os.PathLike[str],
    *,
    only: str | Iterable[str] | None = None,
    ports: Ports | Mapping[str, int] | None = None,
    heuristic: bool = False,
) -> Iterator[DecodedPacket]:
    """The packets of a capture, decoded as ``stacklab decode`` prints them, streaming.

    ``only`` keeps some protocols (``"rudp"``, ``{"dhcp", "dns"}``; any of
    :data:`PROTOCOLS`).  Each :class:`DecodedPacket` has ``frame`` (numbered
    from 1, as Wireshark does), ``time``, ``src``, ``dst``, ``proto``,
    ``info`` (the fields, as in ``--json``), ``summary`` and ``to_json()``.
    The file is checked before the first packet is asked for: a bad path
    raises :class:`CaptureError` here, not later in the loop.
    """
    kinds = _protocols(only)
    from stacklab.analysis.pcapio import CaptureReader

    with CaptureReader(path):
        pass  # validates now, with the reader's message
    return decode_capture(path, ports_from(ports), only=kinds, heuristic=heuristic)


def _protocols(only: str | Iterable[str] | None) -> frozenset[str] | None:
    if only is None:
        return None
    names = only.split(",") if isinstance(only, str) else list(only)
    out = set()
    for raw in names:
        name = str(raw).strip().lower()
        if not name:
            continue
        if name not in PROTOCOLS:
            raise ValueError(f"unknown protocol {raw!r} in --only (known: {', '.join(PROTOCOLS)})")
        out.add(name)
    return frozenset(out)


def series(
    path: str | os.PathLike[str],
    *,
    expect: str | Iterable[str] | None = None,
    ports: Ports | Mapping[str, int] | None = None,
    max_window: int = ORIGINAL_MAX_WINDOW,
    min_rto: float = 0.2,
) -> CaptureAnalysis:
    """Verify a capture and keep the points of its RUDP sessions, for charts.

    The result is :func:`verify`'s, and each of its first sessions (up to
    :data:`~stacklab.analysis.series.MAX_SESSIONS`) also has ``.points``:
    ``data`` ``(time, chunk, retransmission)``, ``acks``, ``window``,
    ``flight`` and ``go_backs``, times in seconds since the session's first
    packet, ready for ``session.plot_timeseq()`` and ``session.plot_window()``.
    """
    import dataclasses

    from stacklab.analysis.series import MAX_SESSIONS, session_series
    from stacklab.analysis.verify import analyze_capture

    opts = options(expect=expect, ports=ports, max_window=max_window, min_rto=min_rto)
    # One read of the file: the verifier traces the first sessions as it judges them.
    analysis = analyze_capture(
        path, dataclasses.replace(opts, trace_sessions=MAX_SESSIONS, keep_notes=True)
    )
    for session in analysis.rudp_sessions:
        if session.trace_points:
            session.points = session_series(session)
    return analysis
