"""Engine events: what happened inside a sender or receiver, and when.

Every event is a frozen dataclass with the (virtual or wall-clock) ``time``
the engine was given and a qlog-style ``name``.  The socket loops drain them
with ``next_event()`` and, with ``--events FILE``, write one JSON object per
line: the ground truth that a capture of the same transfer can be checked
against.  Per-packet events (sent, ACK, delivered) are only produced when the
engine runs with ``trace=True``, so the fast path allocates nothing for them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import ClassVar


@dataclass(frozen=True, slots=True)
class Event:
    """Base of all engine events."""

    name: ClassVar[str] = "rudp:event"
    time: float

    def to_dict(self) -> dict[str, object]:
        data = asdict(self)
        time = data.pop("time")
        return {"time": time, "name": self.name, "data": data}

    def to_json(self) -> str:
        """One line of the JSON-lines events log."""
        return json.dumps(self.to_dict(), separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class PacketSent(Event):
    name: ClassVar[str] = "rudp:packet_sent"
    seq: int
    flag: str
    length: int
    retransmission: bool


@dataclass(frozen=True, slots=True)
class AckReceived(Event):
    """``counted``: a duplicate that counts towards the next fast retransmit (not an echo)."""

    name: ClassVar[str] = "rudp:ack_received"
    ack: int
    duplicate: bool
    counted: bool = False


@dataclass(frozen=True, slots=True)
class WindowChanged(Event):
    name: ClassVar[str] = "recovery:window_changed"
    old: int
    new: int
    reason: str


@dataclass(frozen=True, slots=True)
class RtoChanged(Event):
    name: ClassVar[str] = "recovery:rto_changed"
    rto: float
    srtt: float | None
    rttvar: float | None


@dataclass(frozen=True, slots=True)
class RttSample(Event):
    name: ClassVar[str] = "recovery:rtt_sample"
    rtt: float
    seq: int


@dataclass(frozen=True, slots=True)
class Timeout(Event):
    name: ClassVar[str] = "recovery:timeout"
    base: int
    rto: float
    consecutive: int


@dataclass(frozen=True, slots=True)
class LossProbe(Event):
    name: ClassVar[str] = "recovery:loss_probe"
    base: int
    probes: int


@dataclass(frozen=True, slots=True)
class FastRetransmit(Event):
    name: ClassVar[str] = "recovery:fast_retransmit"
    base: int
    dup_acks: int


@dataclass(frozen=True, slots=True)
class GoBack(Event):
    """``quiet``: for this long after the go-back, duplicate ACKs echo the old flight."""

    name: ClassVar[str] = "recovery:go_back"
    from_seq: int
    to_seq: int
    reason: str
    quiet: float = 0.0


@dataclass(frozen=True, slots=True)
class OptionsNegotiated(Event):
    name: ClassVar[str] = "rudp:options"
    chunk_size: int
    max_window: int
    integrity: bool
    ack_every: int
    original: bool


@dataclass(frozen=True, slots=True)
class CommandReceived(Event):
    name: ClassVar[str] = "rudp:command_received"
    command: str


@dataclass(frozen=True, slots=True)
class DataDelivered(Event):
    name: ClassVar[str] = "rudp:data_delivered"
    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class TransferComplete(Event):
    name: ClassVar[str] = "rudp:transfer_complete"
    bytes: int
    sha256: str


@dataclass(frozen=True, slots=True)
class ConnectionClosed(Event):
    name: ClassVar[str] = "rudp:connection_closed"
    fin_acknowledged: bool = True


@dataclass(frozen=True, slots=True)
class GaveUp(Event):
    name: ClassVar[str] = "rudp:gave_up"
    reason: str


@dataclass(frozen=True, slots=True)
class IntegrityFailure(Event):
    name: ClassVar[str] = "rudp:integrity_failure"
    expected: str
    actual: str


@dataclass(frozen=True, slots=True)
class ProtocolError(Event):
    name: ClassVar[str] = "rudp:protocol_error"
    reason: str
