"""The catalogue of ``stacklab grade``: what each scenario does to the path and what passes.

A scenario is data: the file served (a size, so a chunk count), the two
directions of the impairing proxy (:class:`~stacklab.sim.impairment.Impairment`),
targeted drops (:class:`TargetedDrop`: the third DATA, the first ACK, the FIN),
a time budget, and the checks that must pass on the subject's side of the
proxy.  Random impairments draw from the run's seed, so ``--only ID --seed S``
replays the same decisions.

Which checks judge which subject: a server is judged on every RUDP rule (it
is the sender: Go-Back-N and AIMD are its job); a client only on what a
receiver controls (the handshake, acknowledging every chunk, acknowledging
the FIN) plus the bytes it saved.  Both must deliver the exact content: the
SHA-256 of what arrived is compared with the file served.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from stacklab.sim.impairment import Impairment
from stacklab.wire import ORIGINAL_CHUNK_SIZE, looks_like_rudp, unpack_rudp

SERVER: Final = "server"
CLIENT: Final = "client"
ROLES: Final = (SERVER, CLIENT)

CONTENT: Final = "grade.content"
"""The bytes that arrived are the file served (SHA-256)."""
BUDGET: Final = "grade.budget"
"""The run finished within the scenario's time budget."""
SUBJECT: Final = "grade.subject"
"""The subject started (a server listened) and did not crash during the run."""
PROBE_ALIVE: Final = "probe.alive"
"""After the probe catalogue the server still answers and still serves a whole file."""
PROBE_GIVES_UP: Final = "probe.gives-up"
"""A server stops sending to a client that went silent."""

SERVER_CHECKS: Final = (
    "rudp.handshake",
    "rudp.delivery",
    "rudp.gbn",
    "rudp.aimd",
    "rudp.teardown",
)
CLIENT_CHECKS: Final = ("rudp.handshake", "rudp.delivery", "rudp.teardown")


@dataclass(frozen=True)
class TargetedDrop:
    """Drop the ``nth`` datagram in ``direction`` that matches ``flag`` (and ``seq`` or ``ack``).

    ``direction`` is the proxy's: ``up`` (client -> server) or ``down``.
    The rule counts matching datagrams from the start of the run, so "the
    third DATA's first transmission" is ``TargetedDrop("down", "D", seq=3)``.
    """

    name: str
    direction: str
    flag: str
    seq: int | None = None
    ack_at_least: int | None = None
    nth: int = 1

    def matches(self, direction: str, data: bytes) -> bool:
        if direction != self.direction or not looks_like_rudp(data):
            return False
        header, _ = unpack_rudp(data)
        if header.flag_letter != self.flag:
            return False
        if self.seq is not None and header.seq != self.seq:
            return False
        return self.ack_at_least is None or header.ack >= self.ack_at_least


@dataclass(frozen=True)
class Outage:
    """Drop everything, both ways, for ``duration`` s from the first DATA ``after_seq`` down.

    Started by the transfer's own progress rather than by the clock, so that
    the outage falls mid-transfer however fast the subject starts.
    """

    after_seq: int
    duration: float


def drop_rule(
    drops: tuple[TargetedDrop, ...],
    outage: Outage | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Callable[[str, bytes], str | None] | None:
    """A stateful rule for :class:`~stacklab.tools.chaos.ChaosProxy` applying ``drops``."""
    if not drops and outage is None:
        return None
    seen = [0] * len(drops)
    outage_from: list[float] = []

    def rule(direction: str, data: bytes) -> str | None:
        if outage is not None:
            if not outage_from and direction == "down" and looks_like_rudp(data):
                header, _ = unpack_rudp(data)
                if header.flag_letter == "D" and header.seq >= outage.after_seq:
                    outage_from.append(clock())
            if outage_from and clock() - outage_from[0] < outage.duration:
                return f"blackhole {outage.duration:g} s"
        for i, drop in enumerate(drops):
            if drop.matches(direction, data):
                seen[i] += 1
                if seen[i] == drop.nth:
                    return drop.name
        return None

    return rule


@dataclass(frozen=True)
class GradeScenario:
    """One scenario of the matrix; see the module docstring."""

    id: str
    shows: str
    passes: str
    budget: float  # seconds for the whole run, generous enough for the original client
    size: int = 10 * ORIGINAL_CHUNK_SIZE
    up: Impairment = field(default_factory=Impairment)
    down: Impairment = field(default_factory=Impairment)
    drops: tuple[TargetedDrop, ...] = ()
    outage: Outage | None = None
    kind: str = "transfer"  # "transfer", "handshake" or "probe"
    integrity: bool = False  # the driving client asks for CRC32C integrity (corrupt)
    weight: float = 1.0

    @property
    def chunks(self) -> int:
        return -(-self.size // ORIGINAL_CHUNK_SIZE)

    @property
    def random(self) -> bool:
        """True when the seed changes what happens (random impairments)."""
        return not (self.up.is_clean and self.down.is_clean)

    @property
    def lossy(self) -> bool:
        """True when a datagram may be lost (the driving client lingers to re-ACK a FIN)."""
        return self.random or bool(self.drops) or self.outage is not None

    def checks(self, role: str) -> tuple[str, ...]:
        """The check ids that must all pass for a run of this scenario to pass."""
        if self.kind == "handshake":
            rudp: tuple[str, ...] = ("rudp.handshake",)
        else:
            rudp = SERVER_CHECKS if role == SERVER else CLIENT_CHECKS
        out = (SUBJECT, BUDGET, *rudp)
        if self.kind != "handshake" or role == CLIENT:
            out += (CONTENT,)
        if self.kind == "probe":
            out += (PROBE_ALIVE, PROBE_GIVES_UP)
        return out


CATALOGUE: Final[tuple[GradeScenario, ...]] = (
    GradeScenario(
        "handshake",
        "SYN, SYN-ACK, the FETCH command and its ACK on a clean path",
        "the handshake is exact (ACK = ISN + 1, the command acknowledged)",
        budget=30,
        size=65,
        kind="handshake",
        weight=1.0,
    ),
    GradeScenario(
        "clean-small",
        "a whole transfer of one chunk on a clean path",
        "every RUDP rule holds and the bytes are exact",
        budget=30,
        size=65,
    ),
    GradeScenario(
        "clean",
        "a whole transfer of 101 chunks on a clean path: the window must grow",
        "every RUDP rule holds and the bytes are exact",
        budget=300,
        size=101 * ORIGINAL_CHUNK_SIZE - 250,
        weight=2.0,
    ),
    GradeScenario(
        "loss-2",
        "2% loss in both directions",
        "every RUDP rule holds (Go-Back-N from the lowest unacknowledged chunk, the window "
        "halves) and the bytes are exact",
        budget=240,
        size=40 * ORIGINAL_CHUNK_SIZE,
        up=Impairment(loss=0.02),
        down=Impairment(loss=0.02),
        weight=2.0,
    ),
    GradeScenario(
        "loss-30",
        "30% loss in both directions",
        "every RUDP rule holds and the bytes are exact",
        budget=300,
        size=10 * ORIGINAL_CHUNK_SIZE,
        up=Impairment(loss=0.3),
        down=Impairment(loss=0.3),
        weight=2.0,
    ),
    GradeScenario(
        "ack-loss",
        "30% of the client's ACKs lost (client -> server only)",
        "a later cumulative ACK covers a lost one; every RUDP rule holds, the bytes are exact",
        budget=240,
        size=20 * ORIGINAL_CHUNK_SIZE,
        up=Impairment(loss=0.3),
    ),
    GradeScenario(
        "reorder",
        "20% of datagrams held back 30 ms in both directions (overtaken by later ones)",
        "out-of-order DATA is discarded and re-ACKed, stale ACKs are ignored; the bytes are exact",
        budget=240,
        size=20 * ORIGINAL_CHUNK_SIZE,
        up=Impairment(reorder=0.2, reorder_gap=0.03),
        down=Impairment(reorder=0.2, reorder_gap=0.03),
    ),
    GradeScenario(
        "duplicate",
        "20% of datagrams delivered twice in both directions",
        "duplicates neither grow the window nor corrupt the file",
        budget=240,
        size=20 * ORIGINAL_CHUNK_SIZE,
        up=Impairment(duplicate=0.2),
        down=Impairment(duplicate=0.2),
    ),
    GradeScenario(
        "corrupt",
        "5% of datagrams with a flipped byte in both directions; the driving client asks "
        "for integrity",
        "integrity, or a clean failure: never wrong bytes accepted in silence",
        budget=240,
        size=20 * ORIGINAL_CHUNK_SIZE,
        up=Impairment(corrupt=0.05),
        down=Impairment(corrupt=0.05),
        integrity=True,
    ),
    GradeScenario(
        "blackhole",
        "every datagram lost for 2 s in both directions from the first DATA 10 on",
        "the transfer recovers (retransmissions back off, the window halves) and the bytes are "
        "exact",
        budget=240,
        size=40 * ORIGINAL_CHUNK_SIZE,
        outage=Outage(after_seq=10, duration=2.0),
    ),
    GradeScenario(
        "handshake-loss-30",
        "30% loss in both directions on a one-chunk transfer: the handshake itself is hit",
        "lost SYNs, SYN-ACKs and commands are retried; the bytes are exact",
        budget=240,
        size=65,
        up=Impairment(loss=0.3),
        down=Impairment(loss=0.3),
    ),
    GradeScenario(
        "drop-3rd-data",
        "the first transmission of DATA 3 is dropped",
        "chunk 3 is resent with everything after it (Go-Back-N) and the window halves",
        budget=120,
        size=10 * ORIGINAL_CHUNK_SIZE,
        drops=(TargetedDrop("drop-3rd-data", "down", "D", seq=3),),
    ),
    GradeScenario(
        "drop-first-ack",
        "the client's first ACK of a chunk is dropped",
        "the chunk is resent after a timeout (or covered by the next ACK); the bytes are exact",
        budget=120,
        size=10 * ORIGINAL_CHUNK_SIZE,
        drops=(TargetedDrop("drop-first-ack", "up", "A", ack_at_least=1, nth=2),),
    ),
    GradeScenario(
        "drop-fin",
        "the server's first FIN is dropped",
        "the FIN is resent until acknowledged",
        budget=120,
        size=10 * ORIGINAL_CHUNK_SIZE,
        drops=(TargetedDrop("drop-fin", "down", "F"),),
    ),
    GradeScenario(
        "probe",
        "the probe catalogue against the server, then a whole transfer, then a client that "
        "goes silent after its first chunk",
        "the server stays up, still serves a whole file, and stops sending to the silent client",
        budget=180,
        size=10 * ORIGINAL_CHUNK_SIZE,
        kind="probe",
        weight=2.0,
    ),
)
SCENARIOS: Final = {s.id: s for s in CATALOGUE}


def for_role(role: str) -> tuple[GradeScenario, ...]:
    """The scenarios that apply to ``role`` (the probe throws packets at servers only)."""
    return tuple(s for s in CATALOGUE if role == SERVER or s.kind != "probe")


def select(role: str, only: str | None) -> tuple[GradeScenario, ...]:
    """``--only ID,...`` (or every scenario of the role); ValueError names unknown ones."""
    available = for_role(role)
    if only is None or not only.strip():
        return available
    known = {s.id: s for s in available}
    wanted: list[GradeScenario] = []
    for raw in only.split(","):
        name = raw.strip()
        if not name:
            continue
        if name not in known:
            hint = " (the probe is for servers)" if name in SCENARIOS else ""
            raise ValueError(
                f"unknown scenario {name!r} for a {role}{hint} (known: {', '.join(known)})"
            )
        if known[name] not in wanted:
            wanted.append(known[name])
    if not wanted:
        raise ValueError("--only names no scenario")
    return tuple(wanted)
