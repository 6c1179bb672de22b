"""A flood of 100,000 SYNs from spoofed addresses leaves the RUDP server's memory flat.

The flood needs a raw socket (``IP_HDRINCL``) and addresses nobody owns, so
it runs in a private network namespace created and deleted by the test: this
file is also the script the namespace runs (``python test_abuse_synflood.py``),
which starts the RUDP app server in-process on 10.99.0.1, measures its RSS,
sends SYNs (plain and negotiated) and forged commands from random
10.0.0.0/8 sources, fetches a file as a legitimate client during and after
the flood, and prints one JSON line of results.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import random
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from stacklab.tools.netns import unavailable_reason

SERVER_IP = "10.99.0.1"
CONTENT = random.Random(7).randbytes(100_000)
MB = 1024 * 1024


# -- the namespace side ------------------------------------------------------------------


def rss() -> int:
    """Resident set size of this process in bytes (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def udp_packet(src: str, sport: int, dst: str, dport: int, payload: bytes, ident: int) -> bytes:
    """IPv4 + UDP, checksums left to the kernel (IP) and zero (UDP: optional over IPv4)."""
    total = 20 + 8 + len(payload)
    ip = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        total,
        ident & 0xFFFF,
        0,
        64,
        socket.IPPROTO_UDP,
        0,
        socket.inet_aton(src),
        socket.inet_aton(dst),
    )
    return ip + struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def flood_main(count: int, seed: int) -> dict[str, object]:
    from stacklab.config import RudpSettings
    from stacklab.services.app_rudp import RudpAppServer
    from stacklab.services.fetcher import FetchPolicy
    from stacklab.services.rudp_client import fetch_rudp
    from stacklab.transport.integrity import add_trailer
    from stacklab.transport.options import STACKLAB_DEFAULT, encode_options
    from stacklab.wire import RUDP_HEADER, pack_rudp

    server = RudpAppServer(
        RudpSettings(host=SERVER_IP, port=0, initial_rto=0.2, min_rto=0.05),
        FetchPolicy(allow=("origin.test:80",)),
        fetcher=lambda url, policy: CONTENT,
    )
    server.start()
    addr = server.address
    url = "http://origin.test/file"

    def legit(legacy: bool) -> bool:
        body = fetch_rudp(addr, url, legacy=legacy, linger=0, initial_rto=0.2, min_rto=0.05)
        return body == CONTENT

    try:
        assert legit(False) and legit(True)  # warm up: imports, buffers, thread pool
        gc.collect()
        rss_before = rss()
        rng = random.Random(seed)
        body = encode_options(STACKLAB_DEFAULT)
        negotiated = RUDP_HEADER.pack(0, 0, b"S", len(body) + 4) + body
        during: list[bool] = []

        def client_during() -> None:
            during.append(legit(False))
            during.append(legit(True))

        raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        started = time.monotonic()
        helper = None
        for i in range(count):
            src = f"10.{rng.randrange(1, 255)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
            sport = rng.randrange(1024, 65536)
            isn = rng.randrange(2**32)
            kind = i % 10
            if kind < 6:
                payload = pack_rudp(isn, 0, b"S")
            elif kind < 9:
                syn = bytearray(negotiated)
                struct.pack_into("!I", syn, 0, isn)
                payload = add_trailer(bytes(syn))
            else:  # a forged command with a guessed cookie
                payload = pack_rudp(isn, rng.randrange(1, 2**32), b"D", b"FETCH " + url.encode())
            # ENOBUFS under the flood: that packet was dropped, like on a real link
            with contextlib.suppress(OSError):
                raw.sendto(udp_packet(src, sport, SERVER_IP, addr[1], payload, i), (SERVER_IP, 0))
            if i == count // 2:
                helper = threading.Thread(target=client_during)
                helper.start()
        flood_seconds = time.monotonic() - started
        raw.close()
        if helper is not None:
            helper.join(60)
        # Let the server drain its socket: its one loop answers datagrams in arrival
        # order, so once a plain SYN sent now is answered, the flood before it was handled.
        # A full socket buffer may drop a marker too: send another until one is answered.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as marker:
            marker.settimeout(0.5)
            for _ in range(60):
                marker.sendto(pack_rudp(7, 0, b"S"), addr)
                try:
                    marker.recvfrom(2048)
                    break
                except TimeoutError:
                    continue
            else:
                raise AssertionError("the server never answered a SYN after the flood")
        # Only spoofed sources count: a real client whose last ACK the flood pushed out of
        # the socket buffer leaves a closing session of its own, which is no flood state.
        sessions_after_flood = sum(1 for client in server.sessions if client[0] != SERVER_IP)
        gc.collect()
        rss_after = rss()
        after = legit(False) and legit(True)
        stats = dict(server.stats)
        return {
            "sent": count,
            "flood_seconds": round(flood_seconds, 3),
            "syn_answered": stats.get("syn_answered", 0),
            "bad_cookie": stats.get("bad_cookie", 0),
            "sessions_created": stats.get("sessions", 0),
            "sessions_after_flood": sessions_after_flood,
            "profiles": len(server.handshake.profiles),
            "rss_before": rss_before,
            "rss_after": rss_after,
            "rss_growth": rss_after - rss_before,
            "legit_during": during,
            "legit_after": after,
            "errors": stats.get("errors", 0),
        }
    finally:
        server.stop()


# -- the test side -----------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.skipif(unavailable_reason() is not None, reason=unavailable_reason() or "")
def test_a_spoofed_syn_flood_leaves_memory_flat_and_clients_served() -> None:
    from stacklab.tools.netns import private_netns, run_in_netns

    with private_netns("stacklab-flood") as ns:
        subprocess.run(
            ["ip", "-n", ns, "addr", "add", f"{SERVER_IP}/8", "dev", "lo"],
            check=True,
            capture_output=True,
        )
        result = run_in_netns(
            ns, [sys.executable, __file__, "--count", "100000", "--seed", "1"], timeout=100
        )
    assert result.returncode == 0, result.stdout
    report = json.loads(result.stdout.strip().splitlines()[-1])
    print("\n" + json.dumps(report))
    assert report["sent"] == 100_000
    assert report["syn_answered"] >= 10_000  # the server did face the flood
    assert report["sessions_after_flood"] == 0
    # only the six legitimate fetches made sessions: no SYN and no forged command did
    assert report["sessions_created"] == 6  # 2 warm-up, 2 during, 2 after
    assert report["profiles"] <= 2
    assert report["rss_growth"] < 5 * MB, report
    assert report["legit_during"] == [True, True] and report["legit_after"] is True
    assert report["errors"] == 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="SYN flood inside a private namespace")
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    print(json.dumps(flood_main(args.count, args.seed)))
