"""What ``stacklab bench`` measures: series of runs, the settings in force, and the targets.

Shared by the in-process benchmark (:mod:`stacklab.tools.bench`), the
whole-process one (:mod:`stacklab.tools.bench_e2e`) and the runs of the
original programs (:mod:`stacklab.tools.bench_originals`), so that every
table is computed and printed the same way.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from stacklab.config import RudpSettings
from stacklab.transport.options import STACKLAB_DEFAULT
from stacklab.wire import RUDP_CRC_TRAILER_LEN, RUDP_HEADER_LEN

TARGET_PER_DATAGRAM = 0.8
"""RUDP end to end must reach this share of the per-datagram raw UDP ceiling."""
TARGET_BATCHED = 0.5
"""... and this share of the batched (GSO/GRO) raw UDP ceiling."""


@dataclass
class Series:
    """Repeated measurements of one row: seconds and intact bytes per run, or why a run failed."""

    name: str
    size: int
    seconds: list[float] = field(default_factory=list)
    received: list[int] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    note: str = ""

    def add(self, seconds: float, received: int) -> None:
        self.seconds.append(seconds)
        self.received.append(received)

    @property
    def runs(self) -> int:
        return len(self.seconds)

    @property
    def median_seconds(self) -> float | None:
        return statistics.median(self.seconds) if self.seconds else None

    @property
    def goodputs(self) -> list[float]:
        """MB/s (10^6 bytes) of intact bytes per run."""
        return [r / s / 1e6 for r, s in zip(self.received, self.seconds, strict=True) if s > 0]

    @property
    def median_goodput(self) -> float | None:
        return statistics.median(self.goodputs) if self.goodputs else None

    @property
    def lost(self) -> bool:
        """True when some run delivered fewer bytes than it should (raw UDP has no recovery)."""
        return any(r < self.size for r in self.received)

    def to_dict(self) -> dict[str, Any]:
        median = self.median_goodput
        seconds = self.median_seconds
        return {
            "name": self.name,
            "bytes": self.size,
            "median_mb_s": None if median is None else round(median, 2),
            "runs_mb_s": [round(g, 2) for g in self.goodputs],
            "median_s": None if seconds is None else round(seconds, 3),
            "runs_s": [round(s, 3) for s in self.seconds],
            "delivered": list(self.received),
            "failures": list(self.failures),
            "note": self.note,
        }


def ratio(numerator: Series, denominator: Series) -> float | None:
    """Median goodput of one row over another's, or None when either has no measurement."""
    top, bottom = numerator.median_goodput, denominator.median_goodput
    if top is None or not bottom:
        return None
    return top / bottom


@dataclass(frozen=True)
class Target:
    """A ratio the benchmark aims for; a MISS is printed, it does not fail the command."""

    name: str
    goal: float
    value: float | None

    @property
    def verdict(self) -> str:
        if self.value is None:
            return "N/A"
        return "PASS" if self.value >= self.goal else "MISS"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "goal": self.goal,
            "ratio": None if self.value is None else round(self.value, 3),
            "verdict": self.verdict,
        }


@dataclass
class Table:
    """One table of the report: rows measured the same way in the same rounds."""

    key: str
    title: str
    rows: list[Series] = field(default_factory=list)
    baseline: Series | None = None
    """The row the "vs" column divides by (None: no such column)."""
    notes: list[str] = field(default_factory=list)
    skipped: str = ""
    """Why the whole table was not measured (empty when it was)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "skipped": self.skipped or None,
            "baseline": None if self.baseline is None else self.baseline.name,
            "rows": [
                {
                    **row.to_dict(),
                    "ratio_to_baseline": None
                    if self.baseline is None or ratio(row, self.baseline) is None
                    else round(ratio(row, self.baseline) or 0.0, 3),
                }
                for row in self.rows
            ],
            "notes": list(self.notes),
        }


def rudp_defaults() -> dict[str, Any]:
    """The RUDP settings a plain ``stacklab fetch`` and ``stacklab serve app-rudp`` use today.

    Read from the code each time, so the benchmark follows the defaults as
    they change (chunk size, window, integrity, server GSO).
    """
    server = RudpSettings()
    options = STACKLAB_DEFAULT
    return {
        "chunk": options.chunk_size,
        "window": options.max_window,
        "integrity": options.integrity,
        "ack_every": options.ack_every,
        "server_gso": server.gso,
        "server_max_window": server.negotiated_max_window,
        "server_max_chunk": server.max_chunk,
    }


def chunk_datagram_size(chunk: int, integrity: bool) -> int:
    """Bytes of one full DATA datagram: header, chunk, and the CRC32C trailer with integrity."""
    return RUDP_HEADER_LEN + chunk + (RUDP_CRC_TRAILER_LEN if integrity else 0)


@dataclass
class BenchReport:
    """Every table of one ``stacklab bench`` run, with the settings they were measured with."""

    settings: dict[str, Any]
    tables: list[Table] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def table(self, key: str) -> Table | None:
        return next((t for t in self.tables if t.key == key), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "settings": self.settings,
            "tables": {t.key: t.to_dict() for t in self.tables},
            "targets": [t.to_dict() for t in self.targets],
            "notes": list(self.notes),
        }
