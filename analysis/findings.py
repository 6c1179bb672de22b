"""The verifier's per-packet findings, modelled on Wireshark's TCP analysis.

Why a model of its own: people read a transfer's troubles where they work,
in Python, in an annotated capture and in Wireshark's packet list and
Expert Info dialog.  The verifier (:mod:`~stacklab.analysis.rudp`) leaves
per-packet notes (:class:`~stacklab.analysis.sessions.PacketNote`); this
module gives each note kind one meaning (a Wireshark-like name, an Expert
Info severity and group, the ``slrudp.analysis.*`` fields it sets) and turns
notes and failed checks into :class:`PacketFinding` objects.  The pcapng
comments of ``stacklab annotate`` and the generated Lua dissector
(:mod:`stacklab.layers.lua`) are both written from :data:`KINDS`, so the
three views cannot disagree.

A finding's comment is ``stacklab: <kind>: <text>``, e.g.
``stacklab: go_back.timeout: go-back to chunk 3 (timeout)``;
:func:`parse_comment` reads it back.  Severities and groups are those of
Wireshark's TCP analysis: a retransmission, a fast retransmission or a
duplicate ACK is a note in the sequence group, a window exceeded a warning,
a malformed datagram an error in the malformed group, a bad CRC32C an error
in the checksum group, and a broken rule (a failed check) an error in the
protocol group.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal

if TYPE_CHECKING:
    from stacklab.analysis.sessions import CaptureAnalysis

Severity = Literal["chat", "note", "warn", "error"]
Group = Literal["sequence", "malformed", "checksum", "protocol"]

COMMENT_PREFIX: Final = "stacklab: "
"""Every comment ``stacklab annotate`` writes starts with this."""


@dataclass(frozen=True, slots=True)
class FindingKind:
    """What one note kind means, in Wireshark's terms.

    ``flags`` are the ``slrudp.analysis.<flag>`` presence fields the
    dissector sets (as ``tcp.analysis.retransmission``); ``value_field``,
    when given, is a string field set to ``value`` (or, for a failed check,
    to the check's id, the text before its first colon); ``label`` is what
    the Info column shows in brackets.
    """

    kind: str
    name: str
    severity: Severity
    group: Group
    label: str
    flags: tuple[str, ...] = ()
    value_field: str | None = None
    value: str | None = None


KINDS: Final[Mapping[str, FindingKind]] = {
    k.kind: k
    for k in (
        FindingKind(
            "retransmission",
            "retransmission",
            "note",
            "sequence",
            "Retransmission",
            ("retransmission",),
        ),
        FindingKind(
            "go_back.timeout",
            "go-back by timeout",
            "note",
            "sequence",
            "Go-back: timeout",
            (),
            "go_back",
            "timeout",
        ),
        FindingKind(
            "go_back.dupack",
            "go-back by fast retransmit",
            "note",
            "sequence",
            "Fast retransmission",
            ("fast_retransmission",),
            "go_back",
            "fast retransmit",
        ),
        FindingKind(
            "go_back.unexplained",
            "unexplained go-back",
            "warn",
            "sequence",
            "Go-back: unexplained",
            (),
            "go_back",
            "unexplained",
        ),
        FindingKind(
            "go_back.selective",
            "selective repeat after a timeout",
            "warn",
            "sequence",
            "Selective repeat",
            (),
            "go_back",
            "selective repeat",
        ),
        FindingKind(
            "loss_probe",
            "go-back by loss probe",
            "note",
            "sequence",
            "Loss probe",
            ("loss_probe",),
        ),
        FindingKind(
            "duplicate_ack",
            "duplicate ACK",
            "note",
            "sequence",
            "Dup ACK",
            ("duplicate_ack",),
        ),
        FindingKind(
            "duplicate",
            "network duplicate",
            "note",
            "sequence",
            "Network duplicate",
            ("duplicate",),
        ),
        FindingKind(
            "window_exceeded",
            "window exceeded",
            "warn",
            "sequence",
            "Window exceeded",
            ("window_exceeded",),
        ),
        FindingKind(
            "malformed",
            "malformed DATA",
            "error",
            "malformed",
            "Malformed",
            ("malformed",),
        ),
        FindingKind(
            "bad_crc32c",
            "bad CRC32C trailer",
            "error",
            "checksum",
            "Bad CRC32C",
            ("bad_crc32c",),
        ),
        FindingKind(
            "failed",
            "failed check",
            "error",
            "protocol",
            "Failed",
            (),
            "failed",
            None,
        ),
    )
}
"""Every note kind of the verifier, by the name it has in notes and comments."""

ANALYSIS_FIELDS: Final[Mapping[str, tuple[Literal["none", "string"], str]]] = {
    "retransmission": ("none", "Retransmission"),
    "fast_retransmission": ("none", "Fast retransmission (go-back on the 3rd duplicate ACK)"),
    "go_back": ("string", "Go-back (its trigger)"),
    "loss_probe": ("none", "Loss probe (the base resent alone)"),
    "duplicate_ack": ("none", "Duplicate ACK"),
    "duplicate": ("none", "Network duplicate"),
    "window_exceeded": ("none", "Window exceeded"),
    "malformed": ("none", "Malformed DATA"),
    "bad_crc32c": ("none", "Bad CRC32C trailer"),
    "failed": ("string", "Failed check"),
}
"""The ``slrudp.analysis.<name>`` fields of the dissector: (presence or string, title)."""

_COMMENT: Final = re.compile(r"^stacklab: ([a-z0-9_.]+): (.*)$", re.DOTALL)


@dataclass(frozen=True, slots=True)
class PacketFinding:
    """One thing the verifier concluded at one frame, as Wireshark's Expert Info shows it.

    ``kind`` is the verifier's note kind (``retransmission``,
    ``go_back.timeout``...; see :data:`KINDS`), ``name`` its Wireshark-like
    name, ``severity`` ``note``/``warn``/``error`` and ``group`` the Expert
    Info group.  ``session`` is the RUDP (or TCP) session's ``client->server``.
    """

    frame: int
    kind: str
    name: str
    severity: Severity
    group: Group
    text: str
    session: str = ""

    @property
    def check(self) -> str | None:
        """The check a ``failed`` finding belongs to (``rudp.gbn``...), else None."""
        if self.kind != "failed":
            return None
        return self.text.split(":", 1)[0]

    @property
    def comment(self) -> str:
        """The pcapng packet comment ``stacklab annotate`` writes for it."""
        return f"{COMMENT_PREFIX}{self.kind}: {self.text}"

    def to_json(self) -> dict[str, Any]:
        return {
            "frame": self.frame,
            "kind": self.kind,
            "name": self.name,
            "severity": self.severity,
            "group": self.group,
            "text": self.text,
            "session": self.session,
        }


def make_finding(frame: int, kind: str, text: str, session: str = "") -> PacketFinding:
    """The finding of one note; an unknown kind is a protocol note of its own name."""
    meaning = KINDS.get(kind)
    if meaning is None:
        return PacketFinding(frame, kind, kind.replace("_", " "), "note", "protocol", text, session)
    return PacketFinding(frame, kind, meaning.name, meaning.severity, meaning.group, text, session)


def parse_comment(comment: str) -> tuple[str, str] | None:
    """``(kind, text)`` of a comment written by :attr:`PacketFinding.comment`, else None."""
    match = _COMMENT.match(comment)
    if match is None:
        return None
    return match.group(1), match.group(2)


def capture_findings(analysis: CaptureAnalysis) -> list[PacketFinding]:
    """Every finding of a capture, in frame order (the verifier's order within a frame).

    The RUDP sessions' notes (kept when the analysis ran with
    ``keep_notes``) come first; then each failed check that no ``failed``
    note of its session explains (a rule judged at the session's end, such
    as an unfinished transfer, or an analysis without notes) gives one
    finding per frame it names.
    """
    found: list[PacketFinding] = []
    explained: set[tuple[str, str]] = set()
    for session in analysis.rudp_sessions:
        key = session.key
        for note in session.notes:
            finding = make_finding(note.frame, note.kind, note.text, key)
            found.append(finding)
            if finding.check is not None:
                explained.add((key, finding.check))
    for check in analysis.checks:
        if check.status != "fail" or (check.session, check.id) in explained:
            continue
        text = f"{check.id}: {check.detail}"
        found.extend(make_finding(frame, "failed", text, check.session) for frame in check.frames)
    found.sort(key=lambda f: f.frame)
    return found


def comments_by_frame(findings: Iterable[PacketFinding]) -> dict[int, list[str]]:
    """The packet comments of the findings, per frame (frame 0 and below dropped)."""
    out: dict[int, list[str]] = {}
    for finding in findings:
        if finding.frame >= 1:
            out.setdefault(finding.frame, []).append(finding.comment)
    return out


def count_kinds(findings: Iterable[PacketFinding]) -> Counter[str]:
    """How many findings of each kind (for a one-line summary)."""
    return Counter(f.kind for f in findings)


__all__ = [
    "ANALYSIS_FIELDS",
    "COMMENT_PREFIX",
    "KINDS",
    "FindingKind",
    "Group",
    "PacketFinding",
    "Severity",
    "capture_findings",
    "comments_by_frame",
    "count_kinds",
    "make_finding",
    "parse_comment",
]
