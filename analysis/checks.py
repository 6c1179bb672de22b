"""Turn session facts and findings into verdicts: one check per rule per session.

The trackers record what they saw; this module decides what that means,
taking ``--expect`` into account: a check whose subject is absent from the
capture (no DATA at all, no FIN) fails when it is expected and is skipped
when it is not, while a rule break that the capture positively shows fails
whatever ``--expect`` says.
"""

from __future__ import annotations

from collections.abc import Iterable

from stacklab.analysis.sessions import (
    RUDP_CHECKS,
    Check,
    ExchangeFacts,
    RudpSessionFacts,
    TcpSessionFacts,
    VerifyOptions,
)

EXPECT_ALIASES = {
    "handshake": "rudp.handshake",
    "delivery": "rudp.delivery",
    "integrity": "rudp.integrity",
    "gbn": "rudp.gbn",
    "aimd": "rudp.aimd",
    "teardown": "rudp.teardown",
    "rudp": "rudp.*",
    "dhcp": "dhcp.offer",
    "dns": "dns.answer",
    "app": "app.framing",
    "framing": "app.framing",
}


def parse_expect(text: str | None) -> frozenset[str] | None:
    """``"handshake,dns"`` -> ``{"rudp.handshake", "dns.answer"}``; raise ValueError on unknown names."""
    if text is None or not text.strip():
        return None
    out: set[str] = set()
    for raw in text.split(","):
        name = raw.strip().lower()
        if not name:
            continue
        full = EXPECT_ALIASES.get(name, name)
        if full == "rudp.*":
            out.update(RUDP_CHECKS)
        elif full in (*RUDP_CHECKS, "dhcp.offer", "dns.answer", "app.framing"):
            out.add(full)
        else:
            known = ", ".join(sorted(EXPECT_ALIASES))
            raise ValueError(f"unknown check {raw.strip()!r} in --expect (known: {known})")
    return frozenset(out)


def _expected(check_id: str, options: VerifyOptions) -> bool:
    return options.expect is None or check_id in options.expect


def _findings(session: RudpSessionFacts, check_id: str) -> tuple[str, list[int]]:
    items = [f for f in session.findings if f.check == check_id]
    total = session.finding_counts.get(check_id, len(items))
    detail = items[0].detail if items else ""
    if total > 1:
        detail += f" (+{total - 1} more)"
    return detail, [f.frame for f in items]


def rudp_checks(session: RudpSessionFacts, options: VerifyOptions) -> list[Check]:
    """The five RUDP checks of one session."""
    key = session.key
    out: list[Check] = []

    def add(check_id: str, status: str, detail: str, frames: Iterable[int] = ()) -> None:
        if (
            status == "fail"
            and not _expected(check_id, options)
            and not session.finding_counts.get(check_id)
        ):
            status = "skip"
            detail = f"not expected: {detail}"
        out.append(Check(check_id, key, status, detail, sorted(set(frames))))  # type: ignore[arg-type]

    fr = session.frames
    # rudp.handshake
    detail, frames = _findings(session, "rudp.handshake")
    if detail:
        add("rudp.handshake", "fail", detail, frames)
    else:
        missing = [n for n in ("syn", "synack", "command", "command_ack") if n not in fr]
        if missing:
            add(
                "rudp.handshake",
                "fail",
                f"handshake incomplete: no {', '.join(missing)} in the capture",
                fr.values(),
            )
        else:
            conv = "ack = seq" if session.command_ack == "seq" else "ack = seq + length"
            add(
                "rudp.handshake",
                "pass",
                f"SYN {session.isn}, ACK {(session.isn + 1) & 0xFFFFFFFF if session.isn is not None else '?'}, "
                f"command {session.command!r} acknowledged ({conv})",
                [fr["syn"], fr["synack"], fr["command"], fr["command_ack"]],
            )
    # rudp.delivery
    detail, frames = _findings(session, "rudp.delivery")
    if detail:
        add("rudp.delivery", "fail", detail, frames)
    elif session.data_packets == 0:
        add(
            "rudp.delivery",
            "fail",
            "transfer unfinished: no DATA from the server",
            [session.last_frame],
        )
    elif not session.all_acked:
        why = (
            "no FIN, so the last chunk is unknown"
            if session.fin_seq is None
            else "not every chunk was acknowledged"
        )
        add(
            "rudp.delivery",
            "fail",
            f"transfer unfinished: {why} (highest chunk {session.chunks})",
            [session.last_frame],
        )
    elif session.sha256 is None:
        add(
            "rudp.delivery",
            "fail",
            "a chunk is missing from the capture: content cannot be rebuilt",
            [session.last_frame],
        )
    else:
        add(
            "rudp.delivery",
            "pass",
            f"chunks 1..{session.chunks} acknowledged, {session.bytes} bytes, sha256 {session.sha256[:16]}...",
            [fr.get("last_ack", session.last_frame)],
        )
    # rudp.integrity: only where CRC32C trailers were negotiated
    detail, frames = _findings(session, "rudp.integrity")
    if detail:
        add("rudp.integrity", "fail", detail, frames)
    elif not session.integrity:
        out.append(
            Check("rudp.integrity", key, "skip", "no CRC32C trailers negotiated in the SYN-ACK", [])
        )
    else:
        add(
            "rudp.integrity",
            "pass",
            f"CRC32C trailers negotiated; {session.bad_chunks} DATA with a bad trailer, "
            "none acknowledged",
            [fr["synack"]] if "synack" in fr else [],
        )
    # rudp.gbn and rudp.aimd: judged on the DATA there is
    kinds = session.go_back_kinds
    go_back_frames = [frame for frame, _kind in session.go_back_frames[:20]]
    flight_frames = [session.max_flight_frame] if session.max_flight_frame else []
    for check_id, ok_text, ok_frames in (
        (
            "rudp.gbn",
            f"{_count(session.go_backs, 'go-back')} ({kinds['timeout']} after a timeout, "
            f"{kinds['dupack']} after 3 duplicate ACKs), each from the lowest unacknowledged "
            "chunk and in order; "
            + (
                f"{_count(session.probes, 'loss probe')} (the base alone); "
                if session.probes
                else ""
            )
            + f"max in flight {session.max_flight} <= {session.window_limit}",
            go_back_frames or flight_frames,
        ),
        (
            "rudp.aimd",
            f"up to {_count(session.max_flight, 'chunk')} in flight (frame "
            f"{session.max_flight_frame}), within the AIMD window (at most "
            f"{session.max_window}, +1 per advancing ACK, halved after each loss); "
            + (
                f"filled the window it demonstrably had (at least {session.min_window}, "
                f"from {_count(session.responses, 'ACK')} it acted on)"
                if session.responses
                else "no ACK it acted on, so no lower bound to judge"
            ),
            flight_frames,
        ),
    ):
        detail, frames = _findings(session, check_id)
        if detail:
            add(check_id, "fail", detail, frames)
        elif session.data_packets == 0:
            out.append(Check(check_id, key, "skip", "no DATA from the server to judge", []))
        else:
            add(check_id, "pass", ok_text, ok_frames)
    # rudp.teardown
    detail, frames = _findings(session, "rudp.teardown")
    if detail:
        add("rudp.teardown", "fail", detail, frames)
    elif session.fin_seq is None:
        add("rudp.teardown", "fail", "no FIN in the capture", [session.last_frame])
    elif not session.fin_acked:
        add("rudp.teardown", "fail", f"FIN {session.fin_seq} never acknowledged", [fr["fin"]])
    else:
        add(
            "rudp.teardown",
            "pass",
            f"FIN {session.fin_seq} after the last ACK, acknowledged",
            [fr["fin"], fr["fin_ack"]],
        )
    return out


def exchange_checks(check_id: str, exchanges: list[ExchangeFacts]) -> list[Check]:
    """``dhcp.offer`` / ``dns.answer``: one check per request that expects a reply."""
    out: list[Check] = []
    for ex in exchanges:
        if ex.problem == "ignored":
            continue
        frames = [f for f in (ex.request_frame, ex.reply_frame) if f]
        if ex.problem is None:
            out.append(
                Check(
                    check_id, ex.key, "pass", f"{_short(ex.request)} -> {_short(ex.reply)}", frames
                )
            )
        else:
            out.append(Check(check_id, ex.key, "fail", ex.problem, frames))
    return out


def app_checks(sessions: list[TcpSessionFacts]) -> list[Check]:
    """``app.framing``: every prefix equals its body's length, the request is FETCH <url>."""
    out: list[Check] = []
    for s in sessions:
        if s.findings:
            first = s.findings[0]
            more = f" (+{len(s.findings) - 1} more)" if len(s.findings) > 1 else ""
            out.append(
                Check(
                    "app.framing", s.key, "fail", first.detail + more, [f.frame for f in s.findings]
                )
            )
        else:
            out.append(
                Check(
                    "app.framing",
                    s.key,
                    "pass",
                    f"request {s.request!r} ({s.request_length} bytes), response {s.response_length} bytes",
                    [s.first_frame, s.last_frame],
                )
            )
    return out


def presence_checks(
    options: VerifyOptions,
    rudp: list[RudpSessionFacts],
    tcp: list[TcpSessionFacts],
    dhcp: list[ExchangeFacts],
    dns: list[ExchangeFacts],
    packets: int,
) -> list[Check]:
    """Fail what ``--expect`` asks for but the capture does not contain at all."""
    out: list[Check] = []
    present = {
        "dhcp.offer": any(e.problem != "ignored" for e in dhcp),
        "dns.answer": any(e.problem != "ignored" for e in dns),
        "app.framing": bool(tcp),
    }
    if options.expect is not None:
        for check_id in sorted(options.expect):
            if check_id.startswith("rudp.") and not rudp:
                out.append(
                    Check(check_id, "-", "fail", "expected, but the capture has no RUDP session")
                )
            elif check_id in present and not present[check_id]:
                out.append(
                    Check(
                        check_id,
                        "-",
                        "fail",
                        f"expected, but the capture has no {check_id.split('.')[0]} traffic",
                    )
                )
    if not (rudp or tcp or dhcp or dns):
        out.append(
            Check(
                "capture.traffic",
                "-",
                "fail",
                f"none of the {packets} packets belongs to DHCP, DNS, the app server or RUDP on the given ports",
            )
        )
    return out


def _count(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _short(value: object, limit: int = 60) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def order_failures_first(checks: list[Check]) -> list[Check]:
    """Failures first, then passes, then skips; stable otherwise."""
    rank = {"fail": 0, "pass": 1, "skip": 2}
    return sorted(checks, key=lambda c: rank[c.status])
