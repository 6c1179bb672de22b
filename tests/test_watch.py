"""``stacklab watch``: live verification of a lossy transfer, in a private network namespace.

The driver below runs inside the namespace: it starts the stack, starts
``stacklab watch -w FILE --json``, waits (on the watch's own word) until
frames flow, runs a transfer with 30% of DATA dropped by the client, then
presses Ctrl-C.  The watch must exit 130 and its final verdicts must equal
``verify`` on the file it kept.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from stacklab.analysis.verify import analyze_capture
from stacklab.cli import cli
from stacklab.tools.netns import private_netns, run_in_netns

from conftest import requires_netns_capture

DRIVER = r"""
import json, os, select, signal, socket, subprocess, sys, time
from pathlib import Path

work = Path(sys.argv[1])
stacklab = [sys.executable, "-m", "stacklab"]


def wait_for_text(proc_stream, needle, timeout, poke=None):
    seen = b""
    deadline = time.monotonic() + timeout
    while needle not in seen:
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {needle!r}; got {seen[-500:]!r}")
        if poke is not None:
            poke()
        ready, _, _ = select.select([proc_stream], [], [], 0.2)
        if ready:
            chunk = os.read(proc_stream.fileno(), 65536)
            if not chunk:
                raise SystemExit(f"stream ended before {needle!r}; got {seen[-500:]!r}")
            seen += chunk
    return seen


up = subprocess.Popen(
    stacklab + ["up", "--root", str(work / "www")],
    stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
)
wait_for_text(up.stdout, b"is up", 60)
watch = subprocess.Popen(
    stacklab + ["watch", "-i", "lo", "-w", str(work / "watched.pcapng"), "--json"],
    stdout=subprocess.PIPE, stderr=subprocess.PIPE,
)
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
poke = lambda: sock.sendto(b"DISCOVER", ("127.0.0.1", 6767))
wait_for_text(watch.stderr, b"first frame captured", 30, poke)
fetch = subprocess.run(
    stacklab + ["fetch", "--transport", "rudp", "--legacy", "--drop", "0.3", "--seed", "1",
                "-o", str(work / "got.txt"), "http://127.0.0.1:8080/big.txt"],
    capture_output=True, text=True, timeout=120,
)
watch.send_signal(signal.SIGINT)
out, err = watch.communicate(timeout=60)
up.send_signal(signal.SIGINT)
up.communicate(timeout=30)
print(json.dumps({
    "fetch": fetch.returncode, "fetch_err": fetch.stderr,
    "rc": watch.returncode, "stdout": out.decode(), "stderr": err.decode()[-2000:],
}))
"""

BIG = bytes(range(33, 127)) * 300  # 28,200 bytes: 57 chunks of the original 500


@pytest.mark.netns
@pytest.mark.slow
@pytest.mark.timeout(240)
@requires_netns_capture
def test_watch_verdicts_on_ctrl_c_equal_verify_on_the_saved_file(tmp_path: Path) -> None:
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "big.txt").write_bytes(BIG)
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    with private_netns() as name:
        done = run_in_netns(name, [sys.executable, str(driver), str(tmp_path)], timeout=200)
    assert done.returncode == 0, done.stdout
    result = json.loads(done.stdout)
    assert result["fetch"] == 0, result["fetch_err"]
    assert (tmp_path / "got.txt").read_bytes() == BIG
    assert result["rc"] == 130, result["stderr"]
    saved = tmp_path / "watched.pcapng"
    live = json.loads(result["stdout"])["captures"][0]
    verified = analyze_capture(saved).to_json()
    assert live == verified
    sessions = verified["rudp_sessions"]
    assert len(sessions) == 1 and sessions[0]["retransmissions"] > 0  # the transfer was lossy
    assert sessions[0]["bytes"] == len(BIG)


def test_watch_refuses_an_unknown_interface_in_one_line(tmp_path: Path) -> None:
    out = tmp_path / "never.pcapng"
    result = CliRunner().invoke(
        cli, ["watch", "-i", "stacklab-no-such0", "-w", str(out), "--duration", "5"]
    )
    assert result.exit_code == 2, result.output
    assert "cannot capture on stacklab-no-such0" in result.output
    assert not out.exists() and list(tmp_path.iterdir()) == []  # no half-written file


def test_watch_help_names_its_exits() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "stacklab", "watch", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "130 after Ctrl-C" in out.stdout and "--duration" in out.stdout
