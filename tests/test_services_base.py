"""The Service lifecycle and the UDP loop: binding, errors, prompt stop, survival."""

from __future__ import annotations

import logging
import socket
import threading

import pytest

from stacklab.services.base import BindError, UdpService


class Echo(UdpService):
    """Echoes, drops b"drop", raises on b"boom": exercises every branch of the loop."""

    name = "echo"

    def handle_datagram(self, data: bytes, addr: tuple[str, int]) -> bytes | None:
        if data == b"boom":
            raise RuntimeError("handler bug")
        if data == b"drop":
            return None
        return b"echo:" + data


def ask(addr: tuple[str, int], data: bytes, timeout: float = 2.0) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(data, addr)
        return sock.recvfrom(65535)[0]


@pytest.mark.timeout(20)
def test_udp_service_serves_survives_and_counts() -> None:
    with Echo("127.0.0.1", 0) as service:
        assert service.address[1] != 0
        assert ask(service.address, b"hi") == b"echo:hi"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(b"boom", service.address)
            sock.sendto(b"drop", service.address)
        assert ask(service.address, b"still there") == b"echo:still there"
        assert service.stats["requests"] == 4
        assert service.stats["replies"] == 2
        assert service.stats["errors"] == 1
        assert service.stats["dropped"] == 1


@pytest.mark.timeout(20)
def test_stop_is_prompt_idempotent_and_frees_the_port() -> None:
    service = Echo("127.0.0.1", 0)
    service.start()
    service.start()  # idempotent
    addr = service.address
    before = threading.active_count()
    service.stop()
    service.stop()
    assert threading.active_count() == before - 1
    assert not service.running
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(addr)  # the port is free again


def test_address_in_use_is_one_clear_line() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        service = Echo("127.0.0.1", port)
        with pytest.raises(BindError) as info:
            service.start()
        assert str(info.value) == f"cannot bind echo to 127.0.0.1:{port}: address in use"
        assert isinstance(info.value, OSError)
        service.stop()  # stopping a service that never started is harmless


def test_address_before_start_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="not started"):
        _ = Echo("127.0.0.1", 0).address


def test_rate_limited_log_holds_back_repeats_and_counts_them(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from stacklab.services.base import RateLimitedLog

    now = [100.0]
    limited = RateLimitedLog(logging.getLogger("stacklab.test.rate"), 5.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="stacklab.test.rate"):
        assert limited.log(logging.WARNING, "busy", "refused %s", "a")
        for _ in range(300):  # an attack: one line, not three hundred
            assert not limited.log(logging.WARNING, "busy", "refused %s", "b")
        assert limited.log(logging.WARNING, "other", "another kind")  # keys are separate
        now[0] += 5.0
        assert limited.log(logging.WARNING, "busy", "refused %s", "c")
    assert [r.getMessage() for r in caplog.records] == [
        "refused a",
        "another kind",
        "refused c (300 more like this in the last 5 s)",
    ]
