"""One-line summaries of the stack's messages, shared by the decoder and the Scapy layers.

``stacklab decode`` (:mod:`stacklab.analysis.decode`) and the Scapy layers
(:mod:`stacklab.layers`) print the same text for the same datagram; the
helpers live here, beside the wire format, so that neither package imports
the other for them.  Pure functions: no I/O, no Scapy.
"""

from __future__ import annotations

import json
from typing import Any, Final

from stacklab.wire import DHCP_DISCOVER, RudpHeader, flag_letter

TEXT_LIMIT: Final = 200
"""Characters of a body or message kept in the JSON output before ``"truncated": true``."""

SUMMARY_TEXT_LIMIT: Final = 60
"""Characters of a body shown in a one-line summary."""


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
