"""Follow the DHCP and DNS JSON exchanges and the framed app connections.

DHCP and DNS replies are paired with requests per (client, server) pair in
order; each exchange records what a check needs to judge it.  App
connections go through :class:`~stacklab.analysis.tcpstream.TcpReassembler`
and one :class:`~stacklab.framing.FrameDecoder` per direction, so a frame
split over segments, or two frames in one segment, are read exactly as a
receiver reads them.  Response bodies are hashed as they complete and never
kept.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from collections import deque
from typing import Any

from stacklab.analysis.pcapio import TCP_FIN, TCP_RST, Packet
from stacklab.analysis.sessions import ExchangeFacts, Finding, TcpSessionFacts
from stacklab.analysis.tcpstream import TcpReassembler
from stacklab.framing import FrameDecoder, FramingError
from stacklab.wire import DHCP_DISCOVER, FETCH_COMMAND

_MAX_OPEN_REQUESTS = 64
_APP_MAX_BODY = 1 << 28  # a lying prefix cannot make the verifier allocate more


def _ep(addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def _json(payload: bytes) -> Any:
    """Parsed JSON, or None when the payload is not a JSON object."""
    if not payload.startswith(b"{"):
        return None
    try:
        value = json.loads(payload)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _is_ipv4(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        ipaddress.IPv4Address(value)
    except ValueError:
        return False
    return True


class JsonServiceTracker:
    """DHCP (``kind="dhcp"``) or DNS (``kind="dns"``) exchanges on one UDP port."""

    def __init__(self, kind: str, port: int) -> None:
        assert kind in ("dhcp", "dns")
        self.kind = kind
        self.port = port
        self.exchanges: list[ExchangeFacts] = []
        self._open: dict[tuple[str, str], deque[ExchangeFacts]] = {}

    def feed(self, number: int, src: str, sport: int, dst: str, dport: int, payload: bytes) -> None:
        if dport == self.port:
            self._request(number, _ep(src, sport), _ep(dst, dport), payload)
        else:
            self._reply(number, _ep(dst, dport), _ep(src, sport), payload)

    def _request(self, number: int, client: str, server: str, payload: bytes) -> None:
        if self.kind == "dhcp":
            request: Any = (
                payload.decode("ascii", "replace") if payload == DHCP_DISCOVER else _json(payload)
            )
            expects_reply = payload == DHCP_DISCOVER
        else:
            request = _json(payload)
            expects_reply = request is not None
        if request is None:
            request = payload[:64].decode("utf-8", "replace")
        exchange = ExchangeFacts(self.kind, client, server, request, request_frame=number)  # type: ignore[arg-type]
        if not expects_reply:
            exchange.problem = "ignored"  # the original answers nothing; nothing to judge
        self.exchanges.append(exchange)
        if expects_reply:
            queue = self._open.setdefault((client, server), deque())
            queue.append(exchange)
            if len(queue) > _MAX_OPEN_REQUESTS:
                queue.popleft()

    def _reply(self, number: int, client: str, server: str, payload: bytes) -> None:
        queue = self._open.get((client, server))
        if not queue:
            exchange = ExchangeFacts(self.kind, client, server, None, request_frame=0)  # type: ignore[arg-type]
            exchange.reply_frame = number
            exchange.reply = payload[:200].decode("utf-8", "replace")
            exchange.problem = "reply without a request"
            self.exchanges.append(exchange)
            return
        exchange = queue.popleft()
        exchange.reply_frame = number
        reply = _json(payload)
        exchange.reply = reply if reply is not None else payload[:200].decode("utf-8", "replace")
        exchange.problem = self._judge(exchange.request, reply)

    def _judge(self, request: Any, reply: dict[str, Any] | None) -> str | None:
        if reply is None:
            return "reply is not a JSON object"
        if self.kind == "dhcp":
            if reply.get("type") != "OFFER":
                return f"reply type is {reply.get('type')!r}, expected 'OFFER'"
            if not _is_ipv4(reply.get("assigned_ip")):
                return f"assigned_ip {reply.get('assigned_ip')!r} is not an IPv4 address"
            return None
        status = reply.get("status")
        if status == "SUCCESS":
            return None if _is_ipv4(reply.get("ip")) else f"SUCCESS with ip {reply.get('ip')!r}"
        if status in ("NOT_FOUND", "ERROR"):
            if reply.get("ip") is not None:
                return f"{status} with a non-null ip {reply.get('ip')!r}"
            if status == "ERROR" and isinstance(request, dict) and "domain" in request:
                return "ERROR for a query that has a domain"
            return None
        return f"status {status!r} is not SUCCESS, NOT_FOUND or ERROR"

    def finish(self) -> list[ExchangeFacts]:
        for exchange in self.exchanges:
            if exchange.problem is None and exchange.reply_frame is None:
                exchange.problem = "no reply in the capture"
        return self.exchanges


class _AppConnection:
    __slots__ = ("decoders", "facts", "hashes", "requests", "responses")

    def __init__(self, facts: TcpSessionFacts) -> None:
        self.facts = facts
        self.decoders = {"c2s": FrameDecoder(_APP_MAX_BODY), "s2c": FrameDecoder(_APP_MAX_BODY)}
        self.requests = 0
        self.responses = 0


class AppTracker:
    """Framed app connections on one TCP port: request ``FETCH <url>``, one response."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reassembler = TcpReassembler()
        self.connections: dict[tuple[str, int, str, int], _AppConnection] = {}
        self.done: list[TcpSessionFacts] = []

    def feed(self, packet: Packet) -> None:
        for key, direction, chunk in self.reassembler.feed(packet):
            conn = self.connections.get(key)
            if conn is None:
                facts = TcpSessionFacts(
                    _ep(key[0], key[1]), _ep(key[2], key[3]), first_frame=chunk.frame
                )
                conn = self.connections[key] = _AppConnection(facts)
            conn.facts.last_frame = chunk.frame
            self._bytes(conn, direction, chunk.data, chunk.frame)
        if packet.tcp_flags & (TCP_FIN | TCP_RST):
            key, _ = self.reassembler.key_of(packet)
            conn = self.connections.get(key)
            state = self.reassembler.connections.get(key)
            if conn is not None:
                conn.facts.last_frame = packet.number
            if state is not None and state["c2s"].finished and state["s2c"].finished:
                self._close(key, packet.number)

    def _bytes(self, conn: _AppConnection, direction: str, data: bytes, frame: int) -> None:
        facts = conn.facts
        decoder = conn.decoders[direction]
        if decoder.error is not None:
            return
        try:
            frames = decoder.feed(data)
        except FramingError as exc:
            self._problem(facts, frame, f"{'request' if direction == 'c2s' else 'response'}: {exc}")
            return
        if direction == "s2c":
            if decoder.expected_length is not None and facts.response_length is None:
                facts.response_length = decoder.expected_length
            for fr in frames:
                conn.responses += 1
                facts.response_length = fr.length
                facts.response_bytes = len(fr.body)
                facts.response_sha256 = hashlib.sha256(fr.body).hexdigest()
                if conn.responses > 1:
                    self._problem(facts, frame, "more than one response frame on the connection")
            return
        for fr in frames:
            conn.requests += 1
            facts.request_length = fr.length
            text = fr.body.decode("utf-8", "replace")
            facts.request = text
            if conn.requests > 1:
                self._problem(facts, frame, "more than one request frame on the connection")
            elif (
                not text.startswith(FETCH_COMMAND + " ")
                or not text[len(FETCH_COMMAND) + 1 :].strip()
            ):
                self._problem(facts, frame, f"request {text[:60]!r} is not 'FETCH <url>'")

    @staticmethod
    def _problem(facts: TcpSessionFacts, frame: int, detail: str) -> None:
        if facts.error is None:
            facts.error = detail
        facts.findings.append(Finding("app.framing", frame, detail))

    def _close(self, key: tuple[str, int, str, int], frame: int) -> None:
        conn = self.connections.pop(key, None)
        self.reassembler.close(key)
        if conn is None:
            return
        conn.facts.closed = True
        self._final(conn, frame)

    def _final(self, conn: _AppConnection, frame: int) -> None:
        facts = conn.facts
        for direction, name in (("c2s", "request"), ("s2c", "response")):
            decoder = conn.decoders[direction]
            if decoder.error is None and decoder.pending:
                expected = decoder.expected_length
                got = decoder.pending - 10 if expected is not None else decoder.pending
                what = (
                    f"prefix says {expected} bytes but only {got} arrived"
                    if expected is not None
                    else f"only {got} bytes of the 10-digit prefix"
                )
                self._problem(facts, frame, f"{name} frame cut short: {what}")
        if conn.requests == 0 and facts.error is None:
            self._problem(facts, frame, "no complete request frame")
        elif conn.responses == 0 and facts.error is None and facts.closed:
            self._problem(facts, frame, "no complete response frame")
        self.done.append(facts)

    def finish(self) -> list[TcpSessionFacts]:
        for key in list(self.connections):
            conn = self.connections.pop(key)
            self._final(conn, conn.facts.last_frame)
        return sorted(self.done, key=lambda s: s.first_frame)
