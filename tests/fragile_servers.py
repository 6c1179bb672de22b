"""Deliberately fragile servers for the probe's positive controls (tests only).

A TCP app server that crashes (closes its listening socket and stops) on a
FETCH command that is not UTF-8, and a RUDP server that hangs (stops reading
its socket) on a datagram shorter than the 11-byte header.  The fixtures
``fragile_app`` and ``fragile_rudp`` in conftest start one per test.
"""

from __future__ import annotations

import socket
import threading

from stacklab import wire


class FragileAppServer:
    """Framed FETCH over TCP, one connection at a time; dies on a non-UTF-8 command."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.crashed = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        try:
            while True:
                try:
                    conn, _ = self.sock.accept()
                except OSError:
                    return
                with conn:
                    self._handle(conn)
        except UnicodeDecodeError:
            self.crashed.set()  # the bug under test: the exception ends the server
        finally:
            self.sock.close()

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(0.2)
        data = b""
        try:
            while len(data) < wire.FRAME_PREFIX_LEN:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                data += chunk
            if not data[:10].isdigit():
                return
            length = min(int(data[:10]), 1 << 16)
            while len(data) < 10 + length:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                data += chunk
        except (TimeoutError, ConnectionResetError):
            return
        reply = self._reply(data[10 : 10 + length])
        if reply is not None:
            conn.sendall(wire.encode_frame(reply))

    def _reply(self, body: bytes) -> bytes | None:
        text = body.decode("utf-8")  # strict: raises on bad bytes, ending the server
        return b"hello" if text.startswith("FETCH ") else wire.ERROR_UNKNOWN_COMMAND.encode()

    def close(self) -> None:
        self.sock.close()


class FragileRudpServer:
    """Answers SYN and the command; hangs for good on a datagram shorter than the header."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.hung = threading.Event()
        self._release = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                data, addr = self.sock.recvfrom(65535)
            except OSError:
                return
            if len(data) < wire.RUDP_HEADER_LEN:
                self.hung.set()
                self._release.wait()  # the bug under test: the loop never reads again
                return
            head, _ = wire.unpack_rudp(data)
            if head.flag == b"S":
                self.sock.sendto(wire.pack_rudp(0, (head.seq + 1) & 0xFFFFFFFF, b"A"), addr)
            elif head.flag == b"D":
                self.sock.sendto(wire.pack_rudp(0, head.seq, b"A"), addr)

    def close(self) -> None:
        self._release.set()
        self.sock.close()
