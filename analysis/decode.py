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
from stacklab.wire import (
    DHCP_DISCOVER,
    RUDP_CRC_TRAILER_LEN,
    RUDP_HEADER,
    RUDP_HEADER_LEN,
    Ports,
    RudpHeader,
    flag_letter,
    looks_like_rudp,
    rudp_trailer_ok,
)

log = logging.getLogger(__name__)

PROTOCOLS: Final = ("rudp", "dhcp", "dns", "app", "udp", "tcp", "ipfrag", "other")
"""Every value ``DecodedPacket.proto`` takes; ``--only`` picks among them."""

TEXT_LIMIT: Final = 200
"""Characters of a body or message kept in the JSON output before ``"truncated": true``."""

SUMMARY_TEXT_LIMIT: Final = 60
"""Characters of a body shown in a one-line summary."""

APP_MAX_BODY: Final = 64 * 1024 * 1024
"""Cap on a declared app frame length: a lying prefix must not make the decoder allocate gigabytes."""

# ---------------------------------------------------------------------------
# Text helpers (pure; shared with the Scapy layers so both print the same)
# ---------------------------------------------------------------------------


def rudp_summary(header: RudpHeader, payload_len: int, trailer_ok: bool = False) -> str:
    """``RUDP D seq=3 ack=0 len=500``, plus a note when the length field lies.

    ``payload_len`` is the number of bytes that follow the header in the
    datagram, so a length field that claims more (or less) is visible.
    ``trailer_ok`` (see :func:`stacklab.wire.rudp_trailer_ok`) adds
    ``crc32c=ok``: the datagram belongs to a session that negotiated
    integrity, and its last 4 bytes (counted in ``len``) are that trailer.
    """
    return _rudp_text(
        flag_letter(header.flag), header.seq, header.ack, header.length, payload_len, trailer_ok
    )


def _rudp_text(
    letter: str,
    seq: int,
    ack: int,
    length: int,
    payload_len: int,
    trailer_ok: bool = False,
    bad_trailer: bool = False,
) -> str:
    text = f"RUDP {letter} seq={seq} ack={ack} len={length}"
    if payload_len < length:
        text += f" (only {payload_len} bytes present)"
    elif payload_len > length:
        text += f" (+{payload_len - length} bytes padding)"
    elif trailer_ok:
        text += " crc32c=ok"
    elif bad_trailer:
        text += " crc32c=BAD"
    return text


def clip_text(text: str, limit: int = TEXT_LIMIT) -> tuple[str, bool]:
    """Cut ``text`` to ``limit`` characters; return it and whether it was cut."""
    if len(text) <= limit:
        return text, False
    return text[:limit], True


def parse_json_message(payload: bytes) -> dict[str, Any]:
    """Decode a DHCP/DNS datagram into ``{"json": {...}}`` or ``{"text": ...}``.

    The original servers only accept a JSON *object*; anything else (the
    ``DISCOVER`` keyword, garbage, a JSON list) is kept as text, with an
    ``"error"`` when it looked like JSON but did not parse.
    """
    stripped = payload.lstrip()
    if stripped.startswith(b"{"):
        try:
            obj = json.loads(payload.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            info = _text_info(payload)
            info["error"] = f"invalid JSON: {exc}"
            return info
        if isinstance(obj, dict):
            return {"json": obj}
    return _text_info(payload)


def _text_info(payload: bytes) -> dict[str, Any]:
    text, cut = clip_text(payload.decode("utf-8", "backslashreplace"))
    info: dict[str, Any] = {"text": text}
    if cut:
        info["truncated"] = True
    return info


def _compact(obj: object) -> str:
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, default=str)
    return clip_text(text, SUMMARY_TEXT_LIMIT)[0]


def _short_repr(text: str) -> str:
    return repr(clip_text(text, SUMMARY_TEXT_LIMIT)[0])


def dhcp_summary(info: dict[str, Any]) -> str:
    """``DHCP DISCOVER``, ``DHCP OFFER 127.0.0.2`` or a compact form of anything else."""
    obj = info.get("json")
    if obj is None:
        text = info.get("text", "")
        if text == DHCP_DISCOVER.decode("ascii"):
            return "DHCP DISCOVER"
        return f"DHCP {_short_repr(text)}" + (" (invalid JSON)" if "error" in info else "")
    kind = obj.get("type")
    if isinstance(kind, str) and set(obj) <= {"type", "assigned_ip", "client_id"}:
        parts = ["DHCP", kind]
        if "assigned_ip" in obj:
            parts.append(str(obj["assigned_ip"]))
        return " ".join(parts)
    return f"DHCP {_compact(obj)}"


def dns_summary(info: dict[str, Any]) -> str:
    """``DNS-JSON query NAME``, ``DNS-JSON answer STATUS IP``, ``DNS ...`` for binary DNS."""
    if "binary" in info:
        return f"DNS {info['binary']}"
    obj = info.get("json")
    if obj is None:
        suffix = " (invalid JSON)" if "error" in info else " (not JSON)"
        return f"DNS-JSON {_short_repr(info.get('text', ''))}{suffix}"
    if "status" in obj:
        parts = ["DNS-JSON answer", str(obj["status"])]
        if obj.get("ip") is not None:
            parts.append(str(obj["ip"]))
        return " ".join(parts)
    if "domain" in obj:
        return f"DNS-JSON query {obj['domain']}"
    return f"DNS-JSON {_compact(obj)}"


def binary_dns_summary(payload: bytes) -> str | None:
    """A one-line summary when ``payload`` parses as a real (binary) DNS/mDNS message, else None.

    Port 5353 is shared with mDNS: only datagrams that parse completely are
    called DNS; everything else stays a (possibly malformed) JSON message.
    """
    if not payload or payload.lstrip().startswith(b"{"):
        return None
    import dns.exception
    import dns.message

    try:
        message = dns.message.from_wire(payload)
    except (dns.exception.DNSException, ValueError, IndexError, UnicodeError):
        return None
    kind = "response" if message.flags & 0x8000 else "query"
    names = [f"{dns.rdatatype.to_text(q.rdtype)} {q.name.to_text()}" for q in message.question]
    parts = [kind, f"id={message.id}"]
    if names:
        parts.append(", ".join(names[:3]) + (" ..." if len(names) > 3 else ""))
    if message.answer:
        parts.append(f"answers={sum(len(rrset) for rrset in message.answer)}")
    return " ".join(parts)


def app_body_info(body: bytes) -> dict[str, Any]:
    """The JSON form of an app frame body: text when UTF-8 (clipped), else a hex prefix."""
    info: dict[str, Any] = {"length": len(body)}
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        info["hex"] = body[: TEXT_LIMIT // 2].hex()
        if len(body) > TEXT_LIMIT // 2:
            info["truncated"] = True
        return info
    info["body"], cut = clip_text(text)
    if cut:
        info["truncated"] = True
    return info


def app_summary(length: int, body: bytes) -> str:
    """``APP frame len=41 FETCH http://...``: the first line of the body, clipped."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return f"APP frame len={length} (binary {body[:8].hex()}...)"
    first = text.split("\n", 1)[0].rstrip("\r")
    shown, cut = clip_text(first, SUMMARY_TEXT_LIMIT)
    more = "..." if cut or len(first) < len(text.rstrip("\r\n")) else ""
    return f"APP frame len={length} {shown}{more}".rstrip()


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
    """The summary line of :func:`rudp_info`'s fields (same text as :func:`rudp_summary`)."""
    return _rudp_text(
        info["flag"],
        info["seq"],
        info["ack"],
        info["len"],
        info["payload_len"],
        info.get("crc32c") == "ok",
        info.get("crc32c") == "BAD",
    )


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
            record = self._udp(packet, rel)
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

    def _udp(self, packet: Packet, rel: float) -> DecodedPacket:
        ports = self.ports
        payload = packet.payload
        src, dst = packet.src_ep, packet.dst_ep
        both = (packet.sport, packet.dport)
        if ports.rudp in both or (self.heuristic and looks_like_rudp(payload)):
            info = rudp_info(payload)
            if info is not None:
                if self.integrity or info["flag"] == "A":
                    self._check_trailer(src, dst, payload, info)
                return DecodedPacket(packet.number, rel, src, dst, "rudp", None, info)
            note = f"too short for RUDP ({len(payload)} bytes)"
            return DecodedPacket(
                packet.number,
                rel,
                src,
                dst,
                "udp",
                f"UDP len={len(payload)} ({note})",
                {"len": len(payload), "error": note},
            )
        if ports.dhcp in both:
            info, text = decode_dhcp(payload)
            return DecodedPacket(packet.number, rel, src, dst, "dhcp", text, info)
        if ports.dns in both:
            info, text = decode_dns(payload)
            return DecodedPacket(packet.number, rel, src, dst, "dns", text, info)
        return DecodedPacket(
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
