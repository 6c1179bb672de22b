"""One transfer captured on ``lo`` with the server's UDP GSO on, and the same one with it off.

Run inside a private network namespace by ``tests/test_gso_capture.py``
(``python tests/gso_capture_run.py OUT_DIR``): a stacklab RUDP server on an
ephemeral loopback port, dumpcap on ``lo`` filtered to that port, a stacklab
client (options negotiated, GRO on) fetching fixed content.  Prints one JSON
object: per run, the capture's path, the port, and what the server's sender
says it sent (datagrams, GSO batches).
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

from stacklab.config import RudpSettings
from stacklab.services.app_rudp import RudpAppServer
from stacklab.services.fetcher import FetchPolicy
from stacklab.services.rudp_client import fetch_rudp
from stacklab.tools.capture import DumpcapCapture, capture_filter

from conftest import wait_for

CONTENT = random.Random(5).randbytes(300_000)
URL = "http://origin.test/gso"


def _run(out: Path, gso: bool) -> dict[str, object]:
    server = RudpAppServer(
        RudpSettings(host="127.0.0.1", port=0, gso=gso),
        FetchPolicy(allow=("origin.test:80",)),
        fetcher=lambda url, policy: CONTENT,
    )
    server.start()
    try:
        port = server.address[1]
        bpf = capture_filter([("udp", port)])
        capture = DumpcapCapture(out, bpf, f"GSO {gso}", interface="lo")
        capture.start()
        try:
            body = fetch_rudp(server.address, URL, silence_timeout=15.0)
            # The session is freed once its FIN is acknowledged: nothing more is sent.
            wait_for(lambda: not server.sessions, what="the server's session freed")
        except BaseException:
            capture.abort()
            raise
        capture.stop()
        sender = server.sender
        assert sender is not None
        return {
            "path": str(out),
            "port": port,
            "intact": body == CONTENT,
            "gso": sender.gso,
            "datagrams": sender.datagrams,
            "batches": sender.batches,
        }
    finally:
        server.stop()


def main() -> int:
    out_dir = Path(sys.argv[1])
    result = {
        "gso": _run(out_dir / "gso.pcapng", True),
        "plain": _run(out_dir / "plain.pcapng", False),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
