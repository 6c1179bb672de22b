"""Send probe cases to a live server, check it still answers, classify what happened.

The socket work is thin and the judgement is not in it: what a proper answer
looks like (:func:`check_liveness_reply`) and what a reply to a case means
(:func:`classify_replies`) are pure functions of bytes, tested on their own.

After every case the runner asks the server a valid question (the liveness
check) at once: a server handles its socket in order, so by the time the
liveness answer is back, any reply to the case itself has arrived too and is
read without waiting long.  A case after which the liveness check fails is a
failure (``crashed`` when the port refuses, ``hung`` when it stays silent,
``wrong-answer`` when the reply is not the documented format); a case whose
own reply is not the documented format is a failure too (``bad-reply``), and
so is a complete, well-framed app request closed without any response frame
(``no-reply``: WIRE.md promises one response per request).
After a failure the runner waits, with backoff, for the server to come back,
and stops when it does not.
"""

from __future__ import annotations

import json
import logging
import selectors
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Final

from stacklab import wire
from stacklab.framing import FrameDecoder, FramingError
from stacklab.tools.probe_cases import Case, ProbeContext

log = logging.getLogger(__name__)

ANSWERED: Final = "answered"
ERROR_REPLY: Final = "error-reply"
IGNORED: Final = "ignored"
RESET: Final = "reset"
FAILURE: Final = "failure"
CLASSES: Final = (ANSWERED, ERROR_REPLY, IGNORED, RESET, FAILURE)
"""Every case ends in exactly one of these."""

CRASHED: Final = "crashed"
HUNG: Final = "hung"
WRONG_ANSWER: Final = "wrong-answer"
BAD_REPLY: Final = "bad-reply"
NO_REPLY: Final = "no-reply"
RESPONSE_REQUIRED_MAX: Final = 32 * 1024
"""Complete app requests up to this size must get a response frame (see :func:`expects_response`)."""

UDP_PROTOCOLS: Final = frozenset({"rudp", "dns", "dhcp"})
RECV_SIZE: Final = 65535


class TargetUnreachable(Exception):
    """The target does not give a proper answer even before the first case."""


# ---------------------------------------------------------------------------
# Pure judgement: what is a proper answer, what does a reply mean
# ---------------------------------------------------------------------------


def liveness_request(protocol: str, ctx: ProbeContext) -> bytes:
    """The valid request whose proper answer proves the server is alive."""
    if protocol == "dhcp":
        return wire.DHCP_DISCOVER
    if protocol == "dns":
        return json.dumps({"domain": ctx.name}).encode()
    if protocol == "rudp":
        return wire.pack_rudp(wire.ORIGINAL_ISN, 0, wire.Flag.SYN.value)
    if protocol == "app":
        return wire.encode_frame(f"{wire.FETCH_COMMAND} {ctx.url}".encode())
    raise ValueError(f"unknown protocol {protocol!r}")


def check_liveness_reply(protocol: str, reply: bytes) -> str | None:
    """``None`` when ``reply`` is the proper answer to :func:`liveness_request`, else why not."""
    if protocol == "rudp":
        if not wire.looks_like_rudp(reply):
            return f"not a RUDP datagram: {reply[:32]!r}"
        head, _ = wire.unpack_rudp(reply)
        if head.flag != wire.Flag.ACK.value or head.ack != wire.ORIGINAL_ISN + 1:
            return f"SYN answered with flag={head.flag_letter} ack={head.ack}, expected A ack=101"
        return None
    if protocol == "app":
        problem, _ = parse_single_frame(reply)
        return problem
    obj = _json_object(reply)
    if obj is None:
        return f"not a JSON object: {reply[:48]!r}"
    if protocol == "dns":
        if obj.get("status") not in (
            wire.DNS_STATUS_SUCCESS,
            wire.DNS_STATUS_NOT_FOUND,
            wire.DNS_STATUS_ERROR,
        ):
            return f"DNS answer without a known status: {obj!r:.80}"
        return None
    if obj.get("type") != "OFFER" or not isinstance(obj.get("assigned_ip"), str):
        return f"DISCOVER answered with {obj!r:.80}, expected an OFFER"
    return None


def parse_single_frame(data: bytes) -> tuple[str | None, bytes | None]:
    """(problem, body): a reply over TCP must be exactly one complete 10-digit frame."""
    decoder = FrameDecoder()
    try:
        frames = decoder.feed(data)
    except FramingError as exc:
        return f"reply is not framed: {exc}", None
    if not frames:
        return f"incomplete frame ({len(data)} bytes)", None
    if len(frames) > 1 or decoder.pending:
        return f"{len(frames)} frames and {decoder.pending} stray bytes in one reply", None
    return None, frames[0].body


def expects_response(case: Case) -> bool:
    """True when a case is exactly one complete frame, sent and finished.

    WIRE.md: one request, one response per connection.  Whatever the frame's
    body says, a server must answer it with a frame (the file, or an
    ``ERROR: ...`` text); closing in silence is answering wrongly.  Broken
    framing, extra bytes and stalled connections may be closed silently, and
    so may a frame above :data:`RESPONSE_REQUIRED_MAX`: a server may stop
    reading a request over its limit and close, and closing with unread input
    makes the kernel reset the connection, which can discard the error frame.
    """
    if case.protocol != "app" or case.stall or not case.half_close:
        return False
    if case.size > RESPONSE_REQUIRED_MAX:
        return False
    decoder = FrameDecoder()
    try:
        frames = decoder.feed(b"".join(case.packets))
    except FramingError:
        return False
    return len(frames) == 1 and decoder.pending == 0


def wrong_handshake_answer(case: Case, replies: list[bytes]) -> str | None:
    """For a case opening with a plain SYN: is the first reply the SYN-ACK WIRE.md defines?

    A SYN without payload must be answered, if at all, with ``seq=0
    ack=ISN+1 flag=A`` (the original client checks exactly this), including
    when ISN+1 wraps past 2^32-1.  ``None`` when right or not applicable.
    """
    if case.protocol != "rudp" or not replies or not case.packets:
        return None
    first = case.packets[0]
    if len(first) != wire.RUDP_HEADER_LEN or first[8:9] != wire.Flag.SYN.value:
        return None
    syn, _ = wire.unpack_rudp(first)
    if syn.length != 0 or not wire.looks_like_rudp(replies[0]):
        return None
    answer, _ = wire.unpack_rudp(replies[0])
    expected = (syn.seq + 1) & wire.RUDP_MAX_SEQ
    if answer.flag != wire.Flag.ACK.value or answer.ack != expected or answer.seq != 0:
        return (
            f"SYN seq={syn.seq} answered with {answer.flag_letter} seq={answer.seq} "
            f"ack={answer.ack}, expected A seq=0 ack={expected}"
        )
    return None


def _json_object(data: bytes) -> dict[str, object] | None:
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError):
        return None
    return obj if isinstance(obj, dict) else None


def classify_replies(protocol: str, replies: list[bytes]) -> tuple[str, str]:
    """(class, detail) of a case from the replies it got; ``bad-reply`` failures included."""
    if not replies:
        return IGNORED, "no reply"
    if protocol == "app":
        problem, body = parse_single_frame(b"".join(replies))
        if problem is not None or body is None:
            return FAILURE, f"{BAD_REPLY}: {problem}"
        if body.startswith(wire.ERROR_PREFIX.encode()):
            return ERROR_REPLY, body[:120].decode("utf-8", "replace")
        return ANSWERED, f"frame of {len(body)} bytes"
    verdicts = [_classify_datagram(protocol, r) for r in replies]
    for verdict in verdicts:
        if verdict[0] == FAILURE:
            return verdict
    for verdict in verdicts:
        if verdict[0] == ERROR_REPLY:
            return verdict
    return verdicts[0][0], "; ".join(v[1] for v in verdicts[:4])


def _classify_datagram(protocol: str, reply: bytes) -> tuple[str, str]:
    if protocol == "rudp":
        if not wire.looks_like_rudp(reply) or reply[8:9] == wire.Flag.SYN.value:
            return FAILURE, f"{BAD_REPLY}: not a server RUDP datagram: {reply[:24].hex()}"
        head, payload = wire.unpack_rudp(reply)
        summary = f"{head.flag_letter} seq={head.seq} ack={head.ack} len={head.length}"
        if head.flag == wire.Flag.DATA.value and payload.startswith(wire.ERROR_PREFIX.encode()):
            return ERROR_REPLY, f"{summary} {payload[:100].decode('utf-8', 'replace')}"
        return ANSWERED, summary
    if protocol == "dns":
        if reply.lstrip()[:1] != b"{":
            return _classify_binary_dns(reply)
        obj = _json_object(reply)
        if obj is None or "status" not in obj:
            return (
                FAILURE,
                f"{BAD_REPLY}: DNS reply is not a JSON object with a status: {reply[:48]!r}",
            )
        if obj["status"] == wire.DNS_STATUS_SUCCESS:
            return ANSWERED, f"status {obj['status']}"
        return ERROR_REPLY, f"status {obj['status']}"
    obj = _json_object(reply)
    if obj is None or not isinstance(obj.get("type"), str):
        return FAILURE, f"{BAD_REPLY}: DHCP reply is not a JSON object with a type: {reply[:48]!r}"
    if obj["type"] in ("OFFER", "ACK"):
        return ANSWERED, f"type {obj['type']}"
    return ERROR_REPLY, f"type {obj['type']}"


def _classify_binary_dns(reply: bytes) -> tuple[str, str]:
    import dns.exception
    import dns.message
    import dns.rcode

    try:
        message = dns.message.from_wire(reply)
    except (dns.exception.DNSException, ValueError) as exc:
        return FAILURE, f"{BAD_REPLY}: neither JSON nor DNS: {exc}"
    rcode = message.rcode()
    if rcode == dns.rcode.NOERROR:
        return ANSWERED, f"binary DNS with {len(message.answer)} answer(s)"
    return ERROR_REPLY, f"binary DNS {dns.rcode.to_text(rcode)}"


# ---------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Exchange:
    """One packet the probe sent or received, for the failure report and its pcapng."""

    time: float
    outgoing: bool
    data: bytes
    local: tuple[str, int]
    remote: tuple[str, int]
    role: str  # "case" or "liveness"


@dataclass(slots=True)
class CaseResult:
    """What one case did to the server."""

    case: Case
    outcome: str
    detail: str
    failure_kind: str | None = None
    replies: list[bytes] = field(default_factory=list)
    exchanges: list[Exchange] = field(default_factory=list)
    server_dead: bool = False
    elapsed: float = 0.0

    @property
    def failed(self) -> bool:
        return self.outcome == FAILURE


@dataclass(slots=True)
class ProbeSummary:
    """Counts by class and the failing cases, in the order they ran."""

    results: Counter[str] = field(default_factory=Counter)
    by_kind: dict[str, Counter[str]] = field(default_factory=dict)
    failures: list[CaseResult] = field(default_factory=list)
    cases_run: int = 0
    elapsed: float = 0.0
    stopped: str | None = None
    warnings: list[str] = field(default_factory=list)
    interrupted: bool = False

    def add(self, result: CaseResult) -> None:
        self.cases_run += 1
        self.elapsed += result.elapsed
        self.results[result.outcome] += 1
        self.by_kind.setdefault(result.case.kind, Counter())[result.outcome] += 1
        if result.failed:
            self.failures.append(result)


# ---------------------------------------------------------------------------
# The socket loop
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProbeTarget:
    """Where and how to probe."""

    host: str
    port: int
    protocol: str
    timeout: float = 0.5
    reply_window: float = 0.005
    recover_timeout: float = 3.0
    context: ProbeContext = field(default_factory=ProbeContext)


class Liveness(Exception):
    """A failed liveness check: ``kind`` is crashed, hung or wrong-answer."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


class ProbeRunner:
    """Runs cases one by one against one target.  Not thread-safe; one run at a time."""

    def __init__(self, target: ProbeTarget) -> None:
        if target.protocol not in (*UDP_PROTOCOLS, "app"):
            raise ValueError(f"unknown protocol {target.protocol!r}")
        self.target = target
        self._addr = _resolve(target.host, target.port)
        self._family = socket.AF_INET6 if ":" in self._addr[0] else socket.AF_INET
        self._live_sock: socket.socket | None = None
        self._request = liveness_request(target.protocol, target.context)
        self._log: list[Exchange] | None = None

    # -- lifecycle ----------------------------------------------------------

    def close(self) -> None:
        if self._live_sock is not None:
            self._live_sock.close()
            self._live_sock = None

    def __enter__(self) -> ProbeRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- public API ---------------------------------------------------------

    def check_target(self) -> None:
        """Raise :class:`TargetUnreachable` unless the server answers properly right now."""
        try:
            self.liveness()
        except Liveness as exc:
            raise TargetUnreachable(
                f"{self.target.host}:{self.target.port} does not answer a valid "
                f"{self.target.protocol} request ({exc.kind}: {exc.detail})"
            ) from None

    def run(
        self, cases: Iterable[Case], on_result: Callable[[CaseResult], None] | None = None
    ) -> ProbeSummary:
        """Run ``cases`` in order; stop early when the server stays dead after a failure."""
        summary = ProbeSummary()
        pending = iter(cases)
        case = next(pending, None)
        while case is not None:
            following = next(pending, None)
            # After the last case nothing depends on the server coming back: do not wait.
            try:
                result = self.run_case(case, recover=following is not None)
            except KeyboardInterrupt:  # Ctrl-C: keep what ran so far and report it
                summary.stopped = f"interrupted during case {case.index}"
                summary.interrupted = True
                return summary
            summary.add(result)
            if on_result is not None:
                on_result(result)
            if result.server_dead:
                summary.stopped = (
                    f"the server did not come back within {self.target.recover_timeout:g} s "
                    f"after case {case.index}"
                )
                break
            case = following
        if summary.stopped is None and summary.cases_run > 1:
            problem = self.new_client_check()
            if problem is not None:
                summary.warnings.append(f"after {summary.cases_run} cases, {problem}")
        return summary

    def run_case(self, case: Case, recover: bool = True) -> CaseResult:
        """Send one case, check liveness, classify; wait for recovery after a failure."""
        self._log = []
        started = time.monotonic()
        if case.protocol in UDP_PROTOCOLS:
            result = self._run_udp_case(case)
        else:
            result = self._run_tcp_case(case)
        result.exchanges = self._log
        self._log = None
        if result.failed and recover:
            result.server_dead = not self.wait_for_recovery()
        result.elapsed = time.monotonic() - started
        return result

    def wait_for_recovery(self) -> bool:
        """Poll liveness with backoff until ``recover_timeout``; True once the server answers."""
        deadline = time.monotonic() + self.target.recover_timeout
        delay = 0.05
        while True:
            try:
                self.liveness()
                return True
            except Liveness:
                pass
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            _wait(min(delay, remaining))
            delay = min(delay * 2, 1.0)

    # -- liveness -----------------------------------------------------------

    def liveness(self) -> None:
        """One valid request; raise :class:`Liveness` unless its proper answer comes in time."""
        if self.target.protocol == "app":
            self._tcp_liveness()
        else:
            self._udp_liveness()

    def new_client_check(self) -> str | None:
        """Ask once from a brand-new client; ``None`` when properly answered, else why not.

        The liveness check after each case comes from one persistent client
        (see :meth:`_udp_liveness`), which cannot see a server that keeps
        answering known clients while it turns new ones away, e.g. a session
        table filled by the cases.  Run this once at the end of a run.
        """
        if self.target.protocol not in UDP_PROTOCOLS:
            try:
                self._tcp_liveness()  # every TCP check is a new connection already
            except Liveness as exc:
                return f"{exc.kind}: {exc.detail}"
            return None
        with socket.socket(self._family, socket.SOCK_DGRAM) as sock:
            sock.connect(self._addr)
            sock.setblocking(False)
            try:
                self._udp_liveness(sock)
            except Liveness as exc:
                return f"a new client gets no proper answer ({exc.kind}: {exc.detail})"
        return None

    def _udp_liveness(self, sock: socket.socket | None = None) -> None:
        # One persistent socket: DHCP keys leases by source address, so the
        # liveness client keeps one lease instead of draining the pool.
        if sock is None:
            if self._live_sock is None:
                fresh = socket.socket(self._family, socket.SOCK_DGRAM)
                fresh.connect(self._addr)
                fresh.setblocking(False)
                self._live_sock = fresh
            sock = self._live_sock
        _drain(sock)
        timeout = self.target.timeout
        deadline = time.monotonic() + timeout
        resend_at: float | None = time.monotonic() + timeout / 2
        self._send_udp(sock, self._request, "liveness")
        with selectors.DefaultSelector() as sel:
            sel.register(sock, selectors.EVENT_READ)
            while True:
                now = time.monotonic()
                if now >= deadline:
                    raise Liveness(HUNG, f"no answer to a valid request within {timeout:g} s")
                if resend_at is not None and now >= resend_at:
                    resend_at = None  # one retransmission covers a datagram lost on the way
                    self._send_udp(sock, self._request, "liveness")
                wake = deadline if resend_at is None else min(deadline, resend_at)
                if not sel.select(max(0.0, wake - now)):
                    continue
                try:
                    reply = sock.recv(RECV_SIZE)
                except ConnectionRefusedError:
                    raise Liveness(CRASHED, "port unreachable: nothing listens") from None
                except BlockingIOError:
                    continue
                self._record(False, reply, sock, "liveness")
                problem = check_liveness_reply(self.target.protocol, reply)
                if problem is not None:
                    raise Liveness(WRONG_ANSWER, problem)
                return

    def _send_udp(self, sock: socket.socket, data: bytes, role: str) -> None:
        self._record(True, data, sock, role)
        try:
            sock.send(data)
        except ConnectionRefusedError:
            if role == "liveness":
                raise Liveness(CRASHED, "port unreachable: nothing listens") from None
            raise

    def _tcp_liveness(self) -> None:
        timeout = self.target.timeout
        deadline = time.monotonic() + timeout
        try:
            sock = socket.create_connection(self._addr, timeout=timeout)
        except ConnectionRefusedError:
            raise Liveness(CRASHED, "connection refused: nothing listens") from None
        except OSError as exc:
            raise Liveness(HUNG, f"cannot connect within {timeout:g} s: {exc}") from None
        with sock:
            try:
                self._record(True, self._request, sock, "liveness")
                sock.sendall(self._request)
                data, closed = _read_until_frame(sock, deadline)
            except (ConnectionResetError, BrokenPipeError) as exc:
                raise Liveness(CRASHED, f"connection reset: {exc}") from None
            except OSError as exc:
                raise Liveness(HUNG, f"no answer: {exc}") from None
            self._record(False, data, sock, "liveness")
        problem = check_liveness_reply("app", data)
        if problem is None:
            return
        if not data and not closed:
            raise Liveness(HUNG, f"no answer to a valid FETCH within {timeout:g} s")
        if not data:
            raise Liveness(CRASHED, "connection closed without an answer")
        raise Liveness(WRONG_ANSWER, problem)

    # -- cases --------------------------------------------------------------

    def _run_udp_case(self, case: Case) -> CaseResult:
        sock = socket.socket(self._family, socket.SOCK_DGRAM)
        with sock:
            sock.connect(self._addr)
            sock.setblocking(False)
            reset = False
            try:
                for i, datagram in enumerate(case.packets):
                    if i and case.gap:
                        _wait(case.gap)
                    self._send_udp(sock, datagram, "case")
            except ConnectionRefusedError:
                reset = True
            except OSError as exc:  # e.g. EMSGSIZE: the case itself cannot be sent
                return CaseResult(case, IGNORED, f"could not send: {exc.strerror or exc}")
            failure = self._liveness_after_case()
            replies, refused = self._collect_udp(sock)
            reset = reset or refused
        return self._verdict(case, replies, reset, failure)

    def _collect_udp(self, sock: socket.socket) -> tuple[list[bytes], bool]:
        replies: list[bytes] = []
        refused = False
        deadline = time.monotonic() + self.target.reply_window
        with selectors.DefaultSelector() as sel:
            sel.register(sock, selectors.EVENT_READ)
            while True:
                try:
                    data = sock.recv(RECV_SIZE)
                except BlockingIOError:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or not sel.select(remaining):
                        break
                    continue
                except ConnectionRefusedError:
                    refused = True
                    continue
                self._record(False, data, sock, "case")
                replies.append(data)
        return replies, refused

    def _run_tcp_case(self, case: Case) -> CaseResult:
        timeout = self.target.timeout
        try:
            sock = socket.create_connection(self._addr, timeout=timeout)
        except ConnectionRefusedError:
            return self._failed(case, CRASHED, "connection refused before the case was sent")
        except OSError as exc:
            return self._failed(case, HUNG, f"cannot connect: {exc}")
        reset = False
        data = b""
        with sock:
            try:
                for i, segment in enumerate(case.packets):
                    if i and case.gap:
                        _wait(case.gap)
                    self._record(True, segment, sock, "case")
                    if segment:
                        sock.sendall(segment)
                if case.stall:
                    # Hold the unfinished connection open while another client asks.
                    failure = self._liveness_after_case()
                    sock.setblocking(False)
                    data = _read_available(sock)
                    return self._verdict(case, [data] if data else [], False, failure)
                if case.half_close:
                    sock.shutdown(socket.SHUT_WR)
                data, _closed = _read_until_frame(sock, time.monotonic() + timeout, until_eof=True)
            except (ConnectionResetError, BrokenPipeError):
                reset = True
            except OSError as exc:
                log.debug("case %d: %s", case.index, exc)
            if data:
                self._record(False, data, sock, "case")
        failure = self._liveness_after_case()
        return self._verdict(case, [data] if data else [], reset, failure)

    def _liveness_after_case(self) -> Liveness | None:
        try:
            self.liveness()
        except Liveness as exc:
            return exc
        return None

    def _verdict(
        self, case: Case, replies: list[bytes], reset: bool, failure: Liveness | None
    ) -> CaseResult:
        if failure is not None:
            return CaseResult(
                case,
                FAILURE,
                f"{failure.kind}: after this case, {failure.detail}",
                failure.kind,
                replies,
            )
        if reset and not replies:
            return CaseResult(case, RESET, "connection reset / port unreachable", None, replies)
        outcome, detail = classify_replies(case.protocol, replies)
        if outcome == FAILURE:
            return CaseResult(case, FAILURE, detail, BAD_REPLY, replies)
        wrong = wrong_handshake_answer(case, replies)
        if wrong is not None:
            return CaseResult(case, FAILURE, f"{WRONG_ANSWER}: {wrong}", WRONG_ANSWER, replies)
        if outcome == IGNORED and not reset and expects_response(case):
            return CaseResult(
                case,
                FAILURE,
                f"{NO_REPLY}: one complete request frame, closed without a response frame",
                NO_REPLY,
                replies,
            )
        if reset and outcome == IGNORED:
            outcome = RESET
        return CaseResult(case, outcome, detail, None, replies)

    def _failed(self, case: Case, kind: str, detail: str) -> CaseResult:
        return CaseResult(case, FAILURE, f"{kind}: {detail}", kind)

    def _record(self, outgoing: bool, data: bytes, sock: socket.socket, role: str) -> None:
        if self._log is None:
            return
        try:
            local = sock.getsockname()[:2]
        except OSError:
            local = ("0.0.0.0", 0)
        self._log.append(
            Exchange(time.time(), outgoing, bytes(data), (local[0], local[1]), self._addr, role)
        )


# ---------------------------------------------------------------------------
# Small socket helpers
# ---------------------------------------------------------------------------


def _resolve(host: str, port: int) -> tuple[str, int]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except socket.gaierror as exc:
        raise TargetUnreachable(f"cannot resolve {host}: {exc.strerror}") from None
    for family, _, _, _, sockaddr in infos:
        if family == socket.AF_INET:
            return str(sockaddr[0]), int(sockaddr[1])
    return str(infos[0][4][0]), int(infos[0][4][1])


def _drain(sock: socket.socket) -> None:
    """Discard late answers to an earlier check."""
    while True:
        try:
            sock.recv(RECV_SIZE)
        except (BlockingIOError, ConnectionRefusedError):
            return


def _read_available(sock: socket.socket) -> bytes:
    out = bytearray()
    while True:
        try:
            chunk = sock.recv(RECV_SIZE)
        except (BlockingIOError, ConnectionResetError):
            return bytes(out)
        if not chunk:
            return bytes(out)
        out += chunk


def _read_until_frame(
    sock: socket.socket, deadline: float, until_eof: bool = False
) -> tuple[bytes, bool]:
    """Read until one complete frame (or EOF with ``until_eof``) or the deadline: (data, closed)."""
    out = bytearray()
    decoder = FrameDecoder()
    framed = False
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return bytes(out), False
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(RECV_SIZE)
        except TimeoutError:
            return bytes(out), False
        if not chunk:
            return bytes(out), True
        out += chunk
        if not until_eof and not framed:
            try:
                framed = bool(decoder.feed(chunk))
            except FramingError:
                return bytes(out), False
            if framed:
                return bytes(out), False


def _wait(seconds: float) -> None:
    """Pause between the segments of a slow-drip case (the pacing is part of the case)."""
    time.sleep(seconds)
