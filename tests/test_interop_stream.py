"""Interop with the original programs, with the streaming server and client.

The originals use fixed addresses and ports (DHCP 6767, DNS 5353, app
server 127.0.0.3:2122, origin 8080), so each run gets a private network
namespace: two copies of the suite never meet.  Both directions: the
original RUDP client against ``stacklab up`` (whose app server streams the
origin's body), and ``stacklab fetch --transport rudp`` (which writes as it
receives) against the original RUDP app server.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
from pathlib import Path

import pytest

from stacklab.services.origin import sample_root
from stacklab.tools import netns

from conftest import REPO

ORIGINAL = REPO.parent / "shared" / "original"
STACKLAB = Path(sys.executable).with_name("stacklab")

pytestmark = [
    pytest.mark.skipif(
        netns.unavailable_reason() is not None, reason=netns.unavailable_reason() or ""
    ),
    pytest.mark.skipif(not ORIGINAL.is_dir(), reason="the original programs are not there"),
    pytest.mark.timeout(120),
]

# Wait on conditions (a line in a log, a bound port), never for a fixed time.
SCRIPT = r"""
set -u
cd "$WORK"
wait_until() { for _ in $(seq 300); do eval "$1" && return 0; sleep 0.05; done; return 1; }
"$STACKLAB" up > up.log 2>&1 &
UP=$!
wait_until 'grep -q "is up" up.log' || { echo "stacklab up did not start"; exit 3; }
python3 "$ORIGINAL/client_rudp.py" > original_client.log 2>&1
echo "original-client=$?"
kill -INT $UP; wait $UP
"$STACKLAB" serve origin > origin.log 2>&1 &
OR=$!
python3 "$ORIGINAL/app_server_rudp.py" > original_server.log 2>&1 &
SRV=$!
wait_until 'ss -Hlun | grep -q "127.0.0.3:2122"' || { echo "no original server"; exit 3; }
wait_until 'ss -Hltn | grep -q ":8080"' || { echo "no origin"; exit 3; }
"$STACKLAB" fetch --transport rudp --server 127.0.0.3:2122 -o ours.txt 2> ours.log
echo "stacklab-client=$?"
"$STACKLAB" fetch --transport rudp --legacy --server 127.0.0.3:2122 -o legacy.txt 2> legacy.log
echo "stacklab-legacy=$?"
kill $SRV $OR; wait $SRV $OR 2>/dev/null
exit 0
"""


@pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (iproute2)")
def test_original_programs_and_the_streaming_path(tmp_path: Path) -> None:
    expected = (sample_root() / "test_file.txt").read_bytes()
    env = f"WORK={tmp_path} STACKLAB={STACKLAB} ORIGINAL={ORIGINAL}"
    with netns.private_netns() as name:
        result = netns.run_in_netns(name, ["env", *env.split(), "bash", "-c", SCRIPT], timeout=100)
    logs = {p.name: p.read_text(errors="replace")[-600:] for p in tmp_path.glob("*.log")}
    assert result.returncode == 0, (result.stdout, logs)
    assert "original-client=0" in result.stdout, logs
    assert "stacklab-client=0" in result.stdout and "stacklab-legacy=0" in result.stdout, logs
    for name in ("downloaded_rudp.html", "ours.txt", "legacy.txt"):
        got = (tmp_path / name).read_bytes()
        assert hashlib.sha256(got).digest() == hashlib.sha256(expected).digest(), name
