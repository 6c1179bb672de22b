"""The whole stack: `stacklab up` / `serve` lifecycle, clean shutdown, clear bind errors."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from stacklab.cli import cli
from stacklab.config import load_config
from stacklab.services.base import BindError
from stacklab.services.stack import Stack

PORT_OPTIONS = ["--dhcp-port", "0", "--dns-port", "0", "--origin-port", "0", "--app-tcp-port", "0",
                "--app-rudp-port", "0"]  # fmt: skip


def test_a_failed_start_stops_what_was_started(tmp_path: Path) -> None:
    before = threading.active_count()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        config = load_config(
            None,
            {"dhcp.port": 0, "dhcp.lease_db": str(tmp_path / "l.db"), "dns.port": port,
             "origin.port": 0, "app_tcp.port": 0},
        )  # fmt: skip
        stack = Stack(config, ("origin", "dhcp", "dns", "app-tcp"))
        with pytest.raises(BindError, match=f"cannot bind dns to 127.0.0.1:{port}: address in use"):
            stack.start()
    assert stack.services == []
    assert threading.active_count() == before


def test_unknown_service_name() -> None:
    with pytest.raises(LookupError, match="unknown service 'ftp'"):
        Stack(load_config(None, {}), ("ftp",))


def test_up_address_in_use_is_one_line_and_exit_2(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        args = [
            "up",
            *PORT_OPTIONS,
            "--dhcp-port",
            str(port),
            "--dhcp-lease-db",
            str(tmp_path / "l.db"),
        ]
        result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2
    assert (
        result.stderr == f"stacklab: error: cannot bind dhcp to 127.0.0.1:{port}: address in use\n"
    )


def test_bad_config_file_is_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "stack.toml"
    path.write_text("[dns]\nprot = 1\n")
    result = CliRunner().invoke(cli, ["serve", "dns", "--config", str(path)])
    assert result.exit_code == 2 and "unknown key dns.prot" in result.stderr


@pytest.mark.slow
@pytest.mark.timeout(60)
@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_up_serves_then_stops_cleanly_on_a_signal(tmp_path: Path, stop_signal: int) -> None:
    env = {**os.environ, "COLUMNS": "200", "XDG_STATE_HOME": str(tmp_path / "state")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "stacklab", "up", *PORT_OPTIONS],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        table: dict[str, tuple[str, int]] = {}
        for line in proc.stdout:  # blocks until the table is printed (or the process dies)
            match = re.search(r"│ (\S+)\s+│ [^│]+│ ([\d.]+):(\d+)", line)
            if match:
                table[match.group(1)] = (match.group(2), int(match.group(3)))
            if line.startswith("└"):
                break
        assert {"origin", "dhcp", "dns", "app-tcp"} <= set(table)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.settimeout(5)
            udp.sendto(b"DISCOVER", table["dhcp"])
            assert udp.recvfrom(2048)[0] == b'{"type": "OFFER", "assigned_ip": "127.0.0.2"}'
        proc.send_signal(stop_signal)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "stopped cleanly" in out
    assert "Traceback" not in err
    for name in ("dhcp", "dns"):  # the UDP ports are free again
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(table[name])
    assert (tmp_path / "state" / "stacklab" / "leases.sqlite3").exists()
