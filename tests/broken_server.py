"""Deliberately broken RUDP servers for the grade tests: stacklab's own engine with one fault.

Run as a program (``python tests/broken_server.py --fault no-halving``): it
serves FETCH over RUDP on 127.0.0.3:2122 (``--host``/``--port``) with the
original protocol's settings, until SIGTERM.  Each fault is one small patch
of the engine, so that everything else stays correct and the grade must
name exactly the rule the fault breaks:

* ``none``: the correct reference;
* ``no-halving``: the window never halves after a loss (rudp.aimd);
* ``stop-and-wait``: the window never grows past 1 (rudp.aimd's lower bound);
* ``selective-repeat``: after a loss only the lowest unacknowledged chunk is
  resent, not everything after it (rudp.gbn);
* ``fin-early``: the FIN goes out just before the last chunk, so before its ACK (rudp.teardown);
* ``crash-malformed``: a datagram shorter than the header kills the process (probe.alive);
* ``never-give-up``: a silent client is retransmitted to forever (probe.gives-up).
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
from typing import Any

FAULTS = (
    "none",
    "no-halving",
    "stop-and-wait",
    "selective-repeat",
    "fin-early",
    "crash-malformed",
    "never-give-up",
)


def break_engine(fault: str) -> dict[str, Any]:
    """Patch the engine for ``fault`` (this process only); return settings overrides."""
    from stacklab.services.app_rudp import RudpAppServer
    from stacklab.transport.aimd import AimdController
    from stacklab.transport.sender import GbnSender

    if fault == "no-halving":

        def no_halving(self: AimdController, now: float, reason: str) -> None:
            self._acked_since_loss = False

        AimdController.on_loss = no_halving  # type: ignore[method-assign]
    elif fault == "stop-and-wait":

        def no_growth(self: AimdController, newly_acked: int, now: float) -> None:
            self._acked_since_loss = True

        AimdController.on_acked = no_growth  # type: ignore[method-assign]
    elif fault == "selective-repeat":
        go_back = GbnSender._go_back
        send = GbnSender.datagrams_to_send

        def resend_base_only(self: GbnSender, now: float, reason: str) -> None:
            resume = self.next_seq
            go_back(self, now, reason)
            self._resend_only = self.base  # type: ignore[attr-defined]
            self.next_seq = resume

        def with_base(self: GbnSender, now: float) -> list[bytes]:
            base = getattr(self, "_resend_only", None)
            out: list[bytes] = []
            if base is not None and not self.done and self.failed is None:
                self._resend_only = None  # type: ignore[attr-defined]
                out.append(self._build(base))
                self.retransmissions += 1
            return out + send(self, now)

        GbnSender._go_back = resend_base_only  # type: ignore[method-assign]
        GbnSender.datagrams_to_send = with_base  # type: ignore[method-assign]
    elif fault == "fin-early":
        send = GbnSender.datagrams_to_send

        def fin_before_last_chunk(self: GbnSender, now: float) -> list[bytes]:
            out = send(self, now)
            if getattr(self, "_early_fin", False):
                return out
            for i, datagram in enumerate(out):
                seq = int.from_bytes(datagram[:4], "big")
                if seq == self.last_seq and datagram[8:9] == b"D":
                    # Ahead of the last chunk in the same burst: surely before its ACK.
                    self._early_fin = True  # type: ignore[attr-defined]
                    out.insert(i, self._build(self.fin_seq))
                    break
            return out

        GbnSender.datagrams_to_send = fin_before_last_chunk  # type: ignore[method-assign]
    elif fault == "crash-malformed":
        new_session = RudpAppServer._new_session

        def crash_on_short(
            self: RudpAppServer, sock: Any, addr: Any, view: Any, n: int, now: float
        ) -> Any:
            if n < 11:
                os._exit(70)  # the bug under test: no check before unpacking the header
            return new_session(self, sock, addr, view, n, now)

        RudpAppServer._new_session = crash_on_short  # type: ignore[method-assign]
    elif fault == "never-give-up":
        return {"max_timeouts": 10**9, "idle_timeout": 10.0**6}
    return {}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="broken_server")
    parser.add_argument("--fault", choices=FAULTS, required=True)
    parser.add_argument("--host", default="127.0.0.3")
    parser.add_argument("--port", type=int, default=2122)
    parser.add_argument("--max-rto", type=float, default=None)
    args = parser.parse_args(argv)

    from stacklab.config import load_config
    from stacklab.services.app_rudp import RudpAppServer

    settings: dict[str, Any] = {"host": args.host, "port": args.port}
    if args.max_rto is not None:
        settings["max_rto"] = args.max_rto
    settings.update(break_engine(args.fault))
    config = load_config(None, {"app_rudp": settings})
    server = RudpAppServer(config.app_rudp, config.fetch_policy())
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    server.start()
    try:
        stop.wait()
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
