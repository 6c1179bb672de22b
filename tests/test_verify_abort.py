"""A transfer the server aborted (its origin failed mid-body) is judged as such by verify.

The engine ends such a session with a FIN whose payload is ``ABORT <reason>``
instead of the content's SHA-256: verify must say the transfer was aborted
and why, not that the digest differs.
"""

from __future__ import annotations

from pathlib import Path

from stacklab.analysis.sessions import VerifyOptions
from stacklab.analysis.synth import UdpPacket, write_capture
from stacklab.analysis.verify import analyze_capture
from stacklab.transport.client import ClientSession
from stacklab.transport.events import CommandReceived
from stacklab.transport.options import TransferOptions
from stacklab.transport.server import ServerSession
from stacklab.transport.source import SourceFailed

CLIENT = ("127.0.0.1", 45000)
SERVER = ("127.0.0.3", 2122)
T0 = 1_700_000_000.0


class FailingSource:
    """``good`` bytes of content, then the origin fails."""

    exact_length = None

    def __init__(self, good: int) -> None:
        self.good = good
        self.offset = 0

    @property
    def drained(self) -> bool:
        return False

    def take(self, size: int) -> bytes:
        if self.offset >= self.good:
            raise SourceFailed("the origin closed the connection")
        n = min(size, self.good - self.offset)
        self.offset += n
        return b"x" * n

    def digest(self) -> bytes:
        raise AssertionError("an aborted transfer has no digest")

    def close(self) -> None:
        pass


def _aborted_transfer(good: int) -> tuple[list[UdpPacket], ClientSession]:
    options = TransferOptions(chunk_size=500, max_window=8, integrity=True, ack_every=1)
    server, client = ServerSession(), ClientSession("FETCH http://origin/f", options)
    packets: list[UdpPacket] = []
    now = 0.0
    client.start(now)
    for _ in range(1000):
        now += 0.001
        for data in client.datagrams_to_send(now):
            packets.append(UdpPacket(T0 + now, *CLIENT, *SERVER, data))
            server.receive_datagram(data, now)
        while (event := server.next_event()) is not None:
            if isinstance(event, CommandReceived):
                server.provide_content(FailingSource(good), now)
        for data in server.datagrams_to_send(now):
            packets.append(UdpPacket(T0 + now, *SERVER, *CLIENT, data))
            client.receive_datagram(data, now)
        if (client.done or client.failed) and (server.done or server.failed):
            break
    return packets, client


def test_an_aborted_transfer_fails_delivery_with_the_servers_reason(tmp_path: Path) -> None:
    packets, client = _aborted_transfer(good=2000)
    assert client.failed is not None and "aborted" in client.failed
    path = tmp_path / "aborted.pcapng"
    write_capture(path, packets, fmt="pcapng")
    checks = {c.id: c for c in analyze_capture(path, VerifyOptions()).checks}
    delivery = checks["rudp.delivery"]
    assert delivery.status == "fail"
    assert "aborted" in delivery.detail and "the origin closed the connection" in delivery.detail
    assert "SHA-256" not in delivery.detail
    # The sender kept every rule up to its abort.
    for rule in ("rudp.handshake", "rudp.gbn", "rudp.aimd", "rudp.integrity"):
        assert checks[rule].status in ("pass", "skip"), (rule, checks[rule].detail)
