"""Decode a capture of the stack into one readable record per packet, fast.

This is the hot path behind ``stacklab decode`` and the HTML report: it reads
the capture streaming with :mod:`stacklab.analysis.pcapio` and decodes RUDP
with :mod:`stacklab.wire`, the JSON messages with :mod:`json` and the app
frames with :class:`stacklab.framing.FrameDecoder` on top of
:class:`stacklab.analysis.tcpstream.TcpReassembler`.  It never builds a Scapy
packet per frame; the Scapy layers in :mod:`stacklab.layers` reuse the text
helpers below for their ``mysummary()``, and the tests prove both decoders
agree field for field.

Every decoded record is a :class:`DecodedPacket` with ``to_json()`` (the
``--json`` line) and ``summary()`` (the protocol part of the text line).

IP fragments are reassembled (:mod:`stacklab.analysis.ipfrag`): each fragment
gets an ``ipfrag`` line, and the datagram is decoded at the fragment that
completes it, naming every fragment's frame (``ip_fragments`` in JSON).

A UDP GSO batch (one captured datagram holding several RUDP segments, see
:mod:`stacklab.gso`) gives one record per segment, all with the
frame's number and time and ``"gso": {"segment": i, "of": n}``; a datagram
with bytes beyond its length field that is not a valid batch is one record
with ``"gso_error"`` saying why.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

from stacklab.analysis.ipfrag import Fragment, Reassembler
from stacklab.analysis.pcapio import (
    LINKTYPE_NAMES,
    TCP_FIN,
    TCP_RST,
    CaptureReader,
    Frame,
    Packet,
    parse_packet,
)
from stacklab.analysis.tcpstream import ConnKey, TcpReassembler
from stacklab.framing import FrameDecoder, FramingError
from stacklab.gso import UNKNOWN, is_batch, segment_limit, split_batch
from stacklab.summaries import (  # noqa: F401 - re-exported: decode's public helpers
    SUMMARY_TEXT_LIMIT,
    TEXT_LIMIT,
    _compact,
    _rudp_text,
    _short_repr,
    _text_info,
    app_body_info,
    app_summary,
    binary_dns_summary,
    clip_text,
    dhcp_summary,
    dns_summary,
    parse_json_message,
    rudp_summary,
)
from stacklab.wire import (
    RUDP_CRC_TRAILER_LEN,
    RUDP_HEADER,
    RUDP_HEADER_LEN,
    Ports,
    flag_letter,
    looks_like_rudp,
    rudp_trailer_ok,
)

log = logging.getLogger(__name__)

PROTOCOLS: Final = ("rudp", "dhcp", "dns", "app", "udp", "tcp", "ipfrag", "other")
"""Every value ``DecodedPacket.proto`` takes; ``--only`` picks among them."""

APP_MAX_BODY: Final = 64 * 1024 * 1024
"""Cap on a declared app frame length: a lying prefix must not make the decoder allocate gigabytes."""

_IP_PROTOCOL_NAMES: Final = {6: "TCP", 17: "UDP"}


def fragment_info(fragment: Fragment) -> dict[str, Any]:
    """The ``--json`` form of an IP fragment that does not (yet) complete a datagram."""
    info: dict[str, Any] = {
        "version": fragment.version,
        "id": fragment.ident,
        "offset": fragment.offset,
        "len": len(fragment.data),
        "more": fragment.more,
        "proto": fragment.proto,
    }
    if fragment.cut:
        info["cut"] = fragment.cut
    return info


def fragment_summary(fragment: Fragment) -> str:
    """``IPv4 fragment id=0x002a offset=1480 len=1480 MF proto=UDP``, and why it is unusable."""
    width = 4 if fragment.version == 4 else 8
    proto = _IP_PROTOCOL_NAMES.get(fragment.proto, str(fragment.proto))
    text = (
        f"IPv{fragment.version} fragment id=0x{fragment.ident:0{width}x} "
        f"offset={fragment.offset} len={len(fragment.data)}"
    )
    text += " MF" if fragment.more else ""
    if fragment.offset == 0 or fragment.version == 4:
        text += f" proto={proto}"
    if fragment.cut:
        text += f" (cut by the snapshot length, {fragment.cut} bytes missing: not reassembled)"
    return text


_TCP_FLAG_LETTERS: Final = "FSRPAUEC"


def tcp_flags_text(flags: int) -> str:
    """TCP flags as letters, e.g. ``SA`` or ``PA`` (Scapy's order)."""
    return "".join(letter for bit, letter in enumerate(_TCP_FLAG_LETTERS) if flags & (1 << bit))


# ---------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------


@dataclass(slots=True)
class DecodedPacket:
    """One decoded packet (or one app frame completed by a TCP segment).

    ``info`` is the protocol-specific part, stored under the protocol's name
    in :meth:`to_json`; ``text`` is the summary, or None for RUDP, whose
    summary is only built when asked for (``--json`` never pays for it).
    """

    frame: int
    time: float  # seconds since the first frame of the capture
    src: str
    dst: str
    proto: str
    text: str | None
    info: dict[str, Any] | None = field(default=None)
    fragments: tuple[int, ...] = ()  # reassembled from the IP fragments of these frames

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` object: frame, time, src, dst, proto and the protocol part."""
        out: dict[str, Any] = {
            "frame": self.frame,
            "time": round(self.time, 6),
            "src": self.src,
            "dst": self.dst,
            "proto": self.proto,
        }
        if self.info is not None:
            out[self.proto] = self.info
        if self.fragments:
            out["ip_fragments"] = list(self.fragments)
        return out

    def summary(self) -> str:
        """The protocol part of the line, e.g. ``RUDP D seq=3 ack=0 len=500``."""
        if self.text is None:
            self.text = rudp_info_summary(self.info or {})
        if self.fragments:
            frames = ", ".join(str(n) for n in self.fragments)
            return f"{self.text} [{len(self.fragments)} IP fragments: frames {frames}]"
        return self.text

    def line(self) -> str:
        """The whole plain-text line: number, relative time, endpoints, summary."""
        route = f"{self.src} -> {self.dst}" if self.src else "-"
        return f"{self.frame:>6} {self.time:>11.6f}  {route:<45} {self.summary()}"


# ---------------------------------------------------------------------------
# Per-protocol decoders
# ---------------------------------------------------------------------------


_FLAG_LETTERS: Final = {bytes([b]): flag_letter(bytes([b])) for b in range(256)}


def rudp_info(datagram: bytes) -> dict[str, Any] | None:
    """The RUDP fields of a datagram (``--json`` form), or None when shorter than a header.

    The hot path of ``stacklab decode``: one ``unpack_from``, no payload copy.
    A datagram that ends with a valid CRC32C trailer (a session that
    negotiated integrity) gets ``"crc32c": "ok"``; no other datagram has the
    key, since a mismatch cannot be told from content without session state.
    """
    size = len(datagram)
    if size < RUDP_HEADER_LEN:
        return None
    seq, ack, flag, length = RUDP_HEADER.unpack_from(datagram, 0)
    info: dict[str, Any] = {
        "seq": seq,
        "ack": ack,
        "flag": _FLAG_LETTERS[flag],
        "len": length,
        "payload_len": size - RUDP_HEADER_LEN,
    }
    # Only an exact datagram can carry a trailer: skip the CRC for the rest.
    if length == size - RUDP_HEADER_LEN >= RUDP_CRC_TRAILER_LEN and rudp_trailer_ok(datagram):
        info["crc32c"] = "ok"
    return info


def syn_ack_integrity(datagram: bytes) -> bool | None:
    """Whether the options in a SYN-ACK's payload accept integrity, or None if it has none.

    The options are JSON followed by the 4-byte trailer; the trailer itself is
    not trusted here, so that a session whose every trailer is wrong is still
    recognised as one that negotiated integrity (and its datagrams marked BAD).
    """
    body = datagram[RUDP_HEADER_LEN:-RUDP_CRC_TRAILER_LEN]
    if not body.startswith(b"{"):
        return None
    try:
        options = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(options, dict) or not isinstance(options.get("integrity"), bool):
        return None
    return bool(options["integrity"])


def rudp_info_summary(info: dict[str, Any]) -> str:
    """The summary line of :func:`rudp_info`'s fields (same text as :func:`rudp_summary`).

    A segment of a GSO batch ends with ``[GSO i/n]``; a datagram that is not
    a valid batch with ``[not a GSO batch: why]``.
    """
    text = _rudp_text(
        info["flag"],
        info["seq"],
        info["ack"],
        info["len"],
        info["payload_len"],
        info.get("crc32c") == "ok",
        info.get("crc32c") == "BAD",
    )
    gso = info.get("gso")
    if gso is not None:
        return f"{text} [GSO {gso['segment']}/{gso['of']}]"
    error = info.get("gso_error")
    if error is not None:
        return f"{text} [not a GSO batch: {error}]"
    return text


def _session_options(datagram: bytes) -> dict[str, object] | None:
    """The options JSON of a SYN-ACK (with or without its CRC32C trailer), or None."""
    body = datagram[RUDP_HEADER_LEN:]
    for candidate in (body[:-RUDP_CRC_TRAILER_LEN], body):
        if not candidate.startswith(b"{"):
            continue
        try:
            options = json.loads(candidate)
        except (ValueError, UnicodeDecodeError):
            continue
        if isinstance(options, dict):
            return options
    return None


def decode_rudp(datagram: bytes) -> tuple[dict[str, Any], str] | None:
    """RUDP fields and summary of a datagram, or None when it is shorter than a header."""
    info = rudp_info(datagram)
    if info is None:
        return None
    return info, rudp_info_summary(info)


def decode_dns(payload: bytes) -> tuple[dict[str, Any], str]:
    """A datagram on the DNS port: JSON first, real binary DNS second, text otherwise."""
    info = parse_json_message(payload)
    if "json" not in info and "error" not in info:
        binary = binary_dns_summary(payload)
        if binary is not None:
            info = {"binary": binary}
    return info, dns_summary(info)


def decode_dhcp(payload: bytes) -> tuple[dict[str, Any], str]:
    """A datagram on the DHCP port: the DISCOVER keyword or a JSON object."""
    info = parse_json_message(payload)
    return info, dhcp_summary(info)


class AppStreams:
    """App frames out of TCP segments: reassembly, then 10-digit framing, per direction.

    Reuses :class:`TcpReassembler` (ordering, retransmissions) and one
    :class:`FrameDecoder` per connection direction.  :meth:`feed` returns the
    frames a segment completes; a broken stream is reported once and then
    ignored.  Shared by the fast decoder and the Scapy reassembly helper.
    """

    def __init__(self, max_body: int = APP_MAX_BODY) -> None:
        self.max_body = max_body
        self.reassembler = TcpReassembler()
        self.decoders: dict[tuple[ConnKey, str], FrameDecoder] = {}

    def feed(self, packet: Packet) -> tuple[str, list[tuple[int, bytes]], str | None]:
        """Feed one TCP packet; return (direction, [(length, body)], framing error or None)."""
        frames: list[tuple[int, bytes]] = []
        error: str | None = None
        key, direction = self.reassembler.key_of(packet)
        for chunk_key, chunk_dir, chunk in self.reassembler.feed(packet):
            decoder = self.decoders.get((chunk_key, chunk_dir))
            if decoder is None:
                decoder = self.decoders[chunk_key, chunk_dir] = FrameDecoder(self.max_body)
            if decoder.error is not None:
                continue
            try:
                frames += [(f.length, f.body) for f in decoder.feed(chunk.data)]
            except FramingError as exc:
                error = str(exc)
        conn = self.reassembler.connections.get(key)
        closing = packet.tcp_flags & TCP_RST or (
            packet.tcp_flags & TCP_FIN
            and conn is not None
            and all(d.finished for d in conn.values())
        )
        if conn is not None and closing:
            self.reassembler.close(key)
            self.decoders.pop((key, "c2s"), None)
            self.decoders.pop((key, "s2c"), None)
        return direction, frames, error


# ---------------------------------------------------------------------------
# The capture decoder
# ---------------------------------------------------------------------------


class _Decoder:
    """Per-capture state: ports, the app streams, the time origin."""

    def __init__(self, ports: Ports, heuristic: bool) -> None:
        self.ports = ports
        self.heuristic = heuristic
        self.app = AppStreams()
        self.fragments = Reassembler()
        self.t0: float | None = None
        # RUDP flows (the two endpoints) whose SYN-ACK accepted integrity: on
        # those, a datagram without a valid CRC32C trailer is a damaged one.
        self.integrity: dict[frozenset[str], bool] = {}
        # RUDP flows: the client that sent a SYN (until the SYN-ACK), then the
        # session's GSO segment limit (stacklab.gso.segment_limit).
        self.awaiting_synack: dict[frozenset[str], str] = {}
        self.segment_limits: dict[frozenset[str], int] = {}

    def _check_trailer(self, src: str, dst: str, payload: bytes, info: dict[str, Any]) -> None:
        """Learn from a SYN-ACK whether a flow negotiated integrity; mark bad trailers on it."""
        flow = frozenset((src, dst))
        if info["flag"] == "A" and info["payload_len"] > RUDP_CRC_TRAILER_LEN:
            accepted = syn_ack_integrity(payload)
            if accepted is not None:
                self.integrity[flow] = accepted
        if "crc32c" not in info and self.integrity.get(flow) and info["len"] == info["payload_len"]:
            info["crc32c"] = "BAD"

    def decode(self, frame: Frame) -> Iterator[DecodedPacket]:
        if self.t0 is None:
            self.t0 = frame.time
        rel = frame.time - self.t0
        packet = parse_packet(frame, self.fragments)
        if packet is None:
            what = (
                f"link type {frame.linktype} is not supported"
                if frame.linktype not in LINKTYPE_NAMES
                else "non-IP frame"
            )
            yield DecodedPacket(
                frame.number, rel, "", "", "other", f"{what}, {len(frame.data)} bytes"
            )
            return
        if packet.proto == "udp":
            for record in self._udp(packet, rel):
                record.fragments = packet.fragments
                yield record
        elif packet.proto == "tcp":
            for record in self._tcp(packet, rel):
                record.fragments = packet.fragments
                yield record
        elif packet.fragment is not None:
            yield DecodedPacket(
                packet.number,
                rel,
                packet.src,
                packet.dst,
                "ipfrag",
                fragment_summary(packet.fragment),
                fragment_info(packet.fragment),
            )
        else:
            yield DecodedPacket(
                packet.number, rel, packet.src, packet.dst, "other", "IP, not UDP/TCP"
            )

    def _rudp(self, packet: Packet, rel: float) -> Iterator[DecodedPacket]:
        """One record per RUDP datagram, or per segment of a GSO batch."""
        payload = packet.payload
        src, dst = packet.src_ep, packet.dst_ep
        flow = frozenset((src, dst))
        if is_batch(payload, 0, len(payload)):
            bounds = split_batch(payload, 0, len(payload), self.segment_limits.get(flow, UNKNOWN))
            if isinstance(bounds, list):
                count = len(bounds) - 1
                for i in range(count):
                    segment = payload[bounds[i] : bounds[i + 1]]
                    info = self._rudp_segment(src, dst, flow, segment)
                    if info is not None:
                        info["gso"] = {"segment": i + 1, "of": count}
                        yield DecodedPacket(packet.number, rel, src, dst, "rudp", None, info)
                return
            info = self._rudp_segment(src, dst, flow, payload)
            if info is not None:
                info["gso_error"] = bounds
                yield DecodedPacket(packet.number, rel, src, dst, "rudp", None, info)
                return
        info = self._rudp_segment(src, dst, flow, payload)
        if info is not None:
            yield DecodedPacket(packet.number, rel, src, dst, "rudp", None, info)

    def _rudp_segment(
        self, src: str, dst: str, flow: frozenset[str], datagram: bytes
    ) -> dict[str, Any] | None:
        info = rudp_info(datagram)
        if info is None:
            return None
        flag = info["flag"]
        if flag == "S":
            self.awaiting_synack[flow] = src
            self.segment_limits.pop(flow, None)
        elif flag == "A" and self.awaiting_synack.get(flow, src) != src:
            del self.awaiting_synack[flow]
            self.segment_limits[flow] = segment_limit(_session_options(datagram), True)
        if self.integrity or flag == "A":
            self._check_trailer(src, dst, datagram, info)
        return info

    def _udp(self, packet: Packet, rel: float) -> Iterator[DecodedPacket]:
        ports = self.ports
        payload = packet.payload
        src, dst = packet.src_ep, packet.dst_ep
        both = (packet.sport, packet.dport)
        if ports.rudp in both or (self.heuristic and looks_like_rudp(payload)):
            if len(payload) >= RUDP_HEADER_LEN:
                yield from self._rudp(packet, rel)
                return
            note = f"too short for RUDP ({len(payload)} bytes)"
            yield DecodedPacket(
                packet.number,
                rel,
                src,
                dst,
                "udp",
                f"UDP len={len(payload)} ({note})",
                {"len": len(payload), "error": note},
            )
            return
        if ports.dhcp in both:
            info, text = decode_dhcp(payload)
            yield DecodedPacket(packet.number, rel, src, dst, "dhcp", text, info)
            return
        if ports.dns in both:
            info, text = decode_dns(payload)
            yield DecodedPacket(packet.number, rel, src, dst, "dns", text, info)
            return
        yield DecodedPacket(
            packet.number,
            rel,
            src,
            dst,
            "udp",
            f"UDP {packet.sport} > {packet.dport} len={len(payload)}",
            {"len": len(payload)},
        )

    def _tcp(self, packet: Packet, rel: float) -> Iterator[DecodedPacket]:
        src, dst = packet.src_ep, packet.dst_ep
        flags = tcp_flags_text(packet.tcp_flags)
        tcp_info = {"flags": flags, "seq": packet.tcp_seq, "len": len(packet.payload)}
        tcp_text = f"TCP {packet.sport} > {packet.dport} [{flags}] seq={packet.tcp_seq} len={len(packet.payload)}"
        if self.ports.app not in (packet.sport, packet.dport):
            yield DecodedPacket(packet.number, rel, src, dst, "tcp", tcp_text, tcp_info)
            return
        _direction, frames, error = self.app.feed(packet)
        for length, body in frames:
            yield DecodedPacket(
                packet.number, rel, src, dst, "app", app_summary(length, body), app_body_info(body)
            )
        if error is not None:
            yield DecodedPacket(
                packet.number,
                rel,
                src,
                dst,
                "app",
                f"APP bad framing: {error}",
                {"error": error},
            )
        elif not frames:
            yield DecodedPacket(packet.number, rel, src, dst, "tcp", tcp_text, tcp_info)


def decode_capture(
    path: str | os.PathLike[str],
    ports: Ports = Ports(),  # noqa: B008 - frozen dataclass, immutable default
    only: Collection[str] | None = None,
    heuristic: bool = False,
) -> Iterator[DecodedPacket]:
    """Decode a pcap/pcapng capture streaming, one :class:`DecodedPacket` at a time.

    The file is opened before this returns, so a missing or non-capture file
    raises :class:`~stacklab.analysis.pcapio.CaptureError` at the call, not
    at the first ``next()``.  ``only`` keeps the listed protocols (see
    :data:`PROTOCOLS`); ``heuristic`` recognises RUDP on any UDP port by
    :func:`stacklab.wire.looks_like_rudp`.
    """
    if only is not None:
        unknown = set(only) - set(PROTOCOLS)
        if unknown:
            raise ValueError(
                f"unknown protocol(s) {', '.join(sorted(unknown))}; choose from {', '.join(PROTOCOLS)}"
            )
    reader = CaptureReader(path)
    return _decode(reader, _Decoder(ports, heuristic), None if only is None else frozenset(only))


def _decode(
    reader: CaptureReader, decoder: _Decoder, only: frozenset[str] | None
) -> Iterator[DecodedPacket]:
    with reader:
        for frame in reader:
            for record in decoder.decode(frame):
                if only is None or record.proto in only:
                    yield record
        if reader.truncated:
            log.warning("%s: the capture ends in the middle of a record", reader.path)
        for problem in decoder.fragments.finish().problems():
            log.warning("%s: %s", reader.path, problem)
