"""App frames of the stack over TCP 2121: 10 ASCII digits of length, then the body.

Wire format (WIRE.md, "App protocol over TCP"): ``str(len(body)).zfill(10)``
+ body, in both directions; request ``FETCH <url>``, response the fetched
bytes or an ``ERROR: ...`` text.  A segment may hold several frames (they
stack as ``AppFrame / AppFrame``) or part of one; :func:`app_frames`
reassembles a list of Scapy packets into whole frames, reusing the
project's TCP reassembly and :class:`stacklab.framing.FrameDecoder`::

    >>> raw(AppFrame(body=b"FETCH http://127.0.0.1:8080/test_file.txt"))[:10]
    b'0000000041'
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from scapy.config import conf
from scapy.fields import Field, StrLenField
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.packet import Packet, bind_layers

from stacklab.summaries import app_summary
from stacklab.wire import (
    APP_TCP_PORT,
    FRAME_PREFIX_LEN,
    encode_frame,
    frame_prefix,
    parse_frame_prefix,
)

if TYPE_CHECKING:
    from stacklab.analysis.pcapio import Packet as WirePacket


def _valid_prefix(data: bytes) -> bool:
    return len(data) >= FRAME_PREFIX_LEN and data[:FRAME_PREFIX_LEN].isdigit()


class FrameLengthField(Field[int, bytes]):
    """The 10-digit ASCII length; ``None`` means "the length of ``length_of``"."""

    __slots__ = ["length_of"]

    def __init__(self, name: str, default: int | None, length_of: str) -> None:
        Field.__init__(self, name, default, f"{FRAME_PREFIX_LEN}s")
        self.length_of = length_of

    def i2m(self, pkt: Packet | None, x: int | None) -> bytes:
        if x is None:
            x = 0 if pkt is None else len(pkt.getfieldval(self.length_of))
        return frame_prefix(x)

    def m2i(self, pkt: Packet | None, x: bytes) -> int:
        return parse_frame_prefix(x)


class AppFrame(Packet):
    """One app frame: ``len`` (10 ASCII digits) and ``body``.

    A body cut short by the segment end is kept as far as it goes; a
    segment that does not start with ten digits is not an AppFrame (Raw).
    """

    name = "AppFrame"
    fields_desc = [  # noqa: RUF012
        FrameLengthField("len", None, length_of="body"),
        StrLenField("body", b"", length_from=lambda pkt: pkt.len),
    ]

    @classmethod
    def dispatch_hook(cls, _pkt: bytes | None = None, *args: Any, **kargs: Any) -> type[Packet]:
        if _pkt is not None and len(_pkt) > 0 and not _valid_prefix(bytes(_pkt)):
            return conf.raw_layer
        return cls

    def guess_payload_class(self, payload: bytes) -> type[Packet]:
        return AppFrame if _valid_prefix(payload) else conf.raw_layer

    @property
    def complete(self) -> bool:
        """True when the whole body declared by ``len`` is present."""
        return len(self.body) == self.len

    def mysummary(self) -> str:
        length = self.len if self.len is not None else len(self.body)
        return app_summary(length, bytes(self.body))


@dataclass(frozen=True, slots=True)
class ReassembledFrame:
    """A whole app frame and the packet that completed it.

    ``number`` counts the input packets from 1, as ``stacklab decode``,
    ``verify`` and Wireshark number frames (``index`` is the same from 0).
    """

    number: int
    direction: str  # "c2s" or "s2c"
    frame: AppFrame

    @property
    def index(self) -> int:
        """Position of the completing packet in the input, from 0."""
        return self.number - 1


def _wire_packet(number: int, pkt: Packet) -> WirePacket | None:
    """The transport view of a Scapy packet that the reassembler understands."""
    from stacklab.analysis.pcapio import Packet as WirePacket

    ip = pkt.getlayer(IP) or pkt.getlayer(IPv6)
    tcp = pkt.getlayer(TCP)
    if ip is None or tcp is None:
        return None
    # do_build() leaves out link-layer padding, unlike raw().
    payload = tcp.payload.do_build() if tcp.payload else b""
    return WirePacket(
        number,
        float(getattr(pkt, "time", 0.0)),
        str(ip.src),
        str(ip.dst),
        int(tcp.sport),
        int(tcp.dport),
        "tcp",
        payload,
        int(tcp.seq),
        int(tcp.ack),
        int(tcp.flags),
    )


def app_frames(packets: Iterable[Packet], port: int = APP_TCP_PORT) -> Iterator[ReassembledFrame]:
    """Reassemble the app frames of TCP ``port`` from Scapy packets (e.g. ``rdpcap()``).

    Frames split over segments come out whole, several frames in one segment
    come out one by one, retransmitted bytes are counted once.  A stream
    whose framing breaks stops yielding frames.
    """
    # The capture decoder's TCP reassembly, imported here: importing the
    # layers must not import the analysis package (which imports the layers'
    # Lua export in its tshark engine).
    from stacklab.analysis.decode import AppStreams

    streams = AppStreams()
    for number, pkt in enumerate(packets, start=1):
        wire = _wire_packet(number, pkt)
        if wire is None or port not in (wire.sport, wire.dport):
            continue
        direction, frames, _error = streams.feed(wire)
        for _length, body in frames:
            yield ReassembledFrame(number, direction, AppFrame(encode_frame(body)))


bind_layers(TCP, AppFrame, sport=APP_TCP_PORT)
bind_layers(TCP, AppFrame, dport=APP_TCP_PORT)
