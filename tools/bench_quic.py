"""The aioquic side of ``stacklab bench``: one QUIC stream carrying the same bytes.

aioquic is a real Python reliable transport (QUIC with TLS 1.3, loss
recovery and congestion control), so it is the natural yardstick for a
Python RUDP.  Optional: this module is only imported when ``aioquic`` is
installed (``pip install aioquic``).  The server runs its own asyncio loop
on a thread with a throw-away self-signed certificate; the client opens one
bidirectional stream, sends ``get`` and reads until the stream ends.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import ssl
import threading
import time
from typing import Any

from aioquic.asyncio import QuicConnectionProtocol, connect, serve
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import QuicEvent, StreamDataReceived
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

ALPN = ["stacklab-bench"]


def _self_signed() -> tuple[Any, Any]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return cert, key


class QuicBlobServer:
    """Answers any request on a stream with the whole content, then ends the stream."""

    def __init__(self, content: bytes) -> None:
        self.content = content
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: Any = None

    def start(self) -> tuple[str, int]:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        return future.result(10)

    async def _start(self) -> tuple[str, int]:
        config = QuicConfiguration(
            is_client=False, alpn_protocols=ALPN, max_datagram_frame_size=None
        )
        config.certificate, config.private_key = _self_signed()
        content = self.content

        class Protocol(QuicConnectionProtocol):
            def quic_event_received(self, event: QuicEvent) -> None:
                if isinstance(event, StreamDataReceived) and event.end_stream:
                    self._quic.send_stream_data(event.stream_id, content, end_stream=True)
                    self.transmit()

        self._server = await serve("127.0.0.1", 0, configuration=config, create_protocol=Protocol)
        sockname = self._server._transport.get_extra_info("sockname")
        return str(sockname[0]), int(sockname[1])

    def stop(self) -> None:
        if self._server is not None:
            self._loop.call_soon_threadsafe(self._server.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


def fetch_quic(addr: tuple[str, int], size: int) -> tuple[float, int, str]:
    """Fetch ``size`` bytes over one QUIC stream; (seconds, bytes, sha256)."""
    return asyncio.run(_fetch(addr, size))


async def _fetch(addr: tuple[str, int], size: int) -> tuple[float, int, str]:
    config = QuicConfiguration(is_client=True, alpn_protocols=ALPN, verify_mode=ssl.CERT_NONE)
    start = time.perf_counter()
    async with connect(addr[0], addr[1], configuration=config) as client:
        reader, writer = await client.create_stream()
        writer.write(b"get")
        writer.write_eof()
        digest = hashlib.sha256()
        received = 0
        while True:
            chunk = await reader.read(1 << 20)
            if not chunk:
                break
            digest.update(chunk)
            received += len(chunk)
        elapsed = time.perf_counter() - start
    return elapsed, received, digest.hexdigest()
