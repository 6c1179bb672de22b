"""Analyse one capture in one streaming pass: ``analyze_capture(path, options)``.

The scan (:mod:`~stacklab.analysis.scan`) hands over only the packets on the
watched ports; each goes to its tracker (RUDP, DHCP, DNS, app framing), and
at the end the trackers' facts become checks (:mod:`~stacklab.analysis.checks`).
Nothing heavy is imported here: ``stacklab verify`` on a small file answers
in a fraction of a second.
"""

from __future__ import annotations

import logging
import os

from stacklab.analysis import checks as chk
from stacklab.analysis.eventlog import cross_check
from stacklab.analysis.pcapio import Packet
from stacklab.analysis.rudp import RudpTracker
from stacklab.analysis.scan import CaptureScan, flow_endpoints
from stacklab.analysis.services import AppTracker, JsonServiceTracker
from stacklab.analysis.sessions import CaptureAnalysis, Check, VerifyOptions

log = logging.getLogger(__name__)


def analyze_capture(
    path: str | os.PathLike[str], options: VerifyOptions | None = None
) -> CaptureAnalysis:
    """Read ``path`` once and return its sessions, facts and checks.

    Raises :class:`~stacklab.analysis.pcapio.CaptureError` when the file is
    not a readable capture.  A capture cut short is analysed up to the cut and
    flagged ``truncated`` (with a warning): the transfers it leaves unfinished
    fail their checks on their own.
    """
    options = options or VerifyOptions()
    ports = options.ports
    rudp = RudpTracker(
        ports.rudp,
        max_window=options.max_window,
        min_rto=options.min_rto,
        keep_series=options.keep_series,
    )
    scan = CaptureScan(
        path,
        frozenset({ports.dns, ports.dhcp}),
        frozenset({ports.app}),
        hot_port=ports.rudp,
        hot_fields=rudp.feed_fields,
        hot_raw=rudp.feed,
    )
    dhcp = JsonServiceTracker("dhcp", ports.dhcp)
    dns = JsonServiceTracker("dns", ports.dns)
    app = AppTracker(ports.app)
    dns_port = ports.dns
    for item in scan:
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
    return finish_analysis(result, options, rudp, dhcp, dns, app)


def finish_analysis(
    result: CaptureAnalysis,
    options: VerifyOptions,
    rudp: RudpTracker,
    dhcp: JsonServiceTracker,
    dns: JsonServiceTracker,
    app: AppTracker,
) -> CaptureAnalysis:
    """Collect the trackers' facts into ``result`` and judge them (shared by both engines)."""
    result.rudp_sessions = rudp.sessions()
    result.dhcp = dhcp.finish()
    result.dns = dns.finish()
    result.tcp_sessions = app.finish()
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
        checks.extend(cross_check(options.events_path, result.rudp_sessions, options))
    result.checks = chk.order_failures_first(checks)
    return result
