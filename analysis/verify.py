"""Analyse one capture in one streaming pass: ``analyze_capture(path, options)``.

The scan (:mod:`~stacklab.analysis.scan`) hands over only the packets on the
watched ports; each goes to its tracker (RUDP, DHCP, DNS, app framing), and
at the end the trackers' facts become checks (:mod:`~stacklab.analysis.checks`).
Nothing heavy is imported here: ``stacklab verify`` on a small file answers
in a fraction of a second.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

from stacklab.analysis import checks as chk
from stacklab.analysis.pcapio import CaptureError, Packet
from stacklab.analysis.rudp import RudpTracker
from stacklab.analysis.scan import CaptureScan, flow_endpoints
from stacklab.analysis.services import AppTracker, JsonServiceTracker
from stacklab.analysis.sessions import (
    CaptureAnalysis,
    Check,
    ExchangeFacts,
    RudpSessionFacts,
    TcpSessionFacts,
    VerifyOptions,
)

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

log = logging.getLogger(__name__)


PARALLEL_MIN_BYTES = 32 << 20
"""Captures at least this big are shared between two processes by default."""


def analyze_capture(
    path: str | os.PathLike[str], options: VerifyOptions | None = None
) -> CaptureAnalysis:
    """Read ``path`` and return its sessions, facts and checks.

    Raises :class:`~stacklab.analysis.pcapio.CaptureError` when the file is
    not a readable capture.  A capture cut short is analysed up to the cut and
    flagged ``truncated`` (with a warning): the transfers it leaves unfinished
    fail their checks on their own.

    With ``options.jobs`` > 1 (by default for big files on a machine with
    four cores or more), each process streams the whole file but follows only
    the RUDP sessions whose client port falls to it; the facts are the same
    as with one process, only sooner.
    """
    options = options or VerifyOptions()
    jobs = _jobs(path, options)
    if jobs <= 1:
        return _analyze(path, options)
    return _analyze_shared(path, options, jobs)


def _jobs(path: str | os.PathLike[str], options: VerifyOptions) -> int:
    if options.jobs is not None:
        jobs = options.jobs
    else:
        try:
            big = os.path.getsize(path) >= PARALLEL_MIN_BYTES
        except OSError:
            big = False
        # Two processes pay off only with cores to spare: each streams the
        # whole file, so on a busy two-core machine they just compete.
        jobs = 2 if big and (os.cpu_count() or 1) >= 4 else 1
    if jobs > 1:
        import multiprocessing  # here: it costs 10 ms of start-up to every verify

        if "fork" not in multiprocessing.get_all_start_methods():
            return 1  # the workers inherit the trackers' code by forking
    return max(1, jobs)


@contextlib.contextmanager
def no_cycle_collector() -> Iterator[None]:
    """Pause the cyclic garbage collector during a scan, the judgement and the report.

    The hot path allocates short-lived tuples and lists by the million and
    builds no reference cycles: reference counting frees everything, and the
    collector's periodic passes only cost time (about 15 % of a scan).  Once
    the facts of a big capture exist, every full pass walks all of them
    again: judging them and printing them allocate much, and no cycles
    either.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def new_trackers(
    options: VerifyOptions,
) -> tuple[RudpTracker, JsonServiceTracker, JsonServiceTracker, AppTracker]:
    """The RUDP, DHCP, DNS and app trackers one analysis feeds (both engines use them)."""
    ports = options.ports
    rudp = RudpTracker(
        ports.rudp,
        max_window=options.max_window,
        min_rto=options.min_rto,
        keep_series=options.keep_series,
        keep_notes=options.keep_notes,
        trace_sessions=options.trace_sessions,
        trace_limit=options.trace_limit,
    )
    dhcp = JsonServiceTracker("dhcp", ports.dhcp)
    dns = JsonServiceTracker("dns", ports.dns)
    return rudp, dhcp, dns, AppTracker(ports.app)


def _scan(
    path: str | os.PathLike[str], options: VerifyOptions, share: tuple[int, int]
) -> tuple[CaptureAnalysis, RudpTracker, JsonServiceTracker, JsonServiceTracker, AppTracker]:
    """One streaming pass: RUDP sessions of this share, and (share 0) everything else."""
    with no_cycle_collector():
        return _scan_inner(path, options, share)


def _scan_inner(
    path: str | os.PathLike[str], options: VerifyOptions, share: tuple[int, int]
) -> tuple[CaptureAnalysis, RudpTracker, JsonServiceTracker, JsonServiceTracker, AppTracker]:
    ports = options.ports
    rudp, dhcp, dns, app = new_trackers(options)
    scan = CaptureScan(
        path,
        frozenset({ports.dns, ports.dhcp}),
        frozenset({ports.app}),
        hot_port=ports.rudp,
        hot_sink=rudp,
        hot_share=share,
    )
    dns_port = ports.dns
    others = share[1] == 0
    for item in scan:
        if not others:
            continue
        if item.__class__ is tuple:
            number, _time, key, sport, dport, payload = item
            if dns_port in (sport, dport):
                dns.feed(number, *flow_endpoints(key), payload)
            else:
                dhcp.feed(number, *flow_endpoints(key), payload)
        else:
            assert isinstance(item, Packet)
            app.feed(item)
    result = CaptureAnalysis(
        path=os.fspath(path),
        packets=scan.frames,
        link_type=scan.linktype_name,
        truncated=scan.truncated,
    )
    if scan.truncated:
        result.warnings.append(
            f"capture is truncated: analysed the {scan.frames} complete frames before the cut"
        )
    result.warnings.extend(scan.fragments.stats.problems())
    return result, rudp, dhcp, dns, app


def _analyze(path: str | os.PathLike[str], options: VerifyOptions) -> CaptureAnalysis:
    result, rudp, dhcp, dns, app = _scan(path, options, (1, 0))
    with no_cycle_collector():
        return finish_analysis(result, options, rudp, dhcp, dns, app)


def _worker(path: str, options: VerifyOptions, share: tuple[int, int], conn: Connection) -> None:
    """A forked helper: follow one share of the RUDP sessions, send their facts back."""
    try:
        try:
            _, rudp, _, _, _ = _scan(path, options, share)
            message: tuple[str, object] = ("ok", rudp.sessions())
        except Exception as exc:  # reported to the parent, which raises its own error
            message = ("error", f"{type(exc).__name__}: {exc}")
        conn.send(message)
    except OSError:
        pass  # the parent stopped listening: it failed on the same file and says so
    finally:
        conn.close()


def _analyze_shared(
    path: str | os.PathLike[str], options: VerifyOptions, jobs: int
) -> CaptureAnalysis:
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    helpers = []
    for part in range(1, jobs):
        receiver, sender = ctx.Pipe(duplex=False)
        proc = ctx.Process(
            target=_worker, args=(os.fspath(path), options, (jobs, part), sender), daemon=True
        )
        proc.start()
        sender.close()
        helpers.append((proc, receiver))
    try:
        result, rudp, dhcp, dns, app = _scan(path, options, (jobs, 0))
        sessions = rudp.sessions()
        for _proc, receiver in helpers:
            status, payload = receiver.recv()
            if status != "ok":
                raise CaptureError(f"{os.fspath(path)}: a helper process failed: {payload}")
            sessions.extend(payload)
    finally:
        for proc, receiver in helpers:
            receiver.close()
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
    sessions.sort(key=lambda s: s.first_frame)
    with no_cycle_collector():
        return judge(result, options, sessions, dhcp.finish(), dns.finish(), app.finish())


def finish_analysis(
    result: CaptureAnalysis,
    options: VerifyOptions,
    rudp: RudpTracker,
    dhcp: JsonServiceTracker,
    dns: JsonServiceTracker,
    app: AppTracker,
) -> CaptureAnalysis:
    """Collect the trackers' facts into ``result`` and judge them (shared by both engines)."""
    return judge(result, options, rudp.sessions(), dhcp.finish(), dns.finish(), app.finish())


def judge(
    result: CaptureAnalysis,
    options: VerifyOptions,
    rudp_sessions: list[RudpSessionFacts],
    dhcp: list[ExchangeFacts],
    dns: list[ExchangeFacts],
    tcp: list[TcpSessionFacts],
) -> CaptureAnalysis:
    """Turn the facts into checks, failures first."""
    result.rudp_sessions = rudp_sessions
    result.dhcp = dhcp
    result.dns = dns
    result.tcp_sessions = tcp
    checks: list[Check] = []
    for session in result.rudp_sessions:
        checks.extend(chk.rudp_checks(session, options))
    checks.extend(chk.exchange_checks("dhcp.offer", result.dhcp))
    checks.extend(chk.exchange_checks("dns.answer", result.dns))
    checks.extend(chk.app_checks(result.tcp_sessions))
    checks.extend(
        chk.presence_checks(
            options,
            result.rudp_sessions,
            result.tcp_sessions,
            result.dhcp,
            result.dns,
            result.packets,
        )
    )
    if options.events_path is not None:
        from stacklab.analysis.eventlog import cross_check

        checks.extend(cross_check(options.events_path, result.rudp_sessions, options))
    result.checks = chk.order_failures_first(checks)
    return result
