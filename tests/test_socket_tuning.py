"""tune_socket: the buffers it asks for are the buffers the socket gets, as root beyond rmem_max."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest

from stacklab.services.rudp_io import tune_socket


def _sysctl(name: str) -> int:
    return int(Path("/proc/sys/net/core", name).read_text())


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or os.geteuid() != 0,
    reason="forcing buffers past net.core.rmem_max needs Linux and root",
)
def test_root_gets_buffers_beyond_the_sysctl_limits() -> None:
    wanted = 2 * max(_sysctl("rmem_max"), _sysctl("wmem_max")) + 4096
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        tune_socket(sock, wanted)
        # Linux reports twice the size set (its bookkeeping overhead).
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) >= wanted
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) >= wanted


def test_tuning_never_fails_on_a_socket_that_refuses() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.close()  # every setsockopt now fails with EBADF
    tune_socket(sock)
