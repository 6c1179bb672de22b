"""Raw UDP ceilings: the benchmark's bytes in datagrams of RUDP's size, with no protocol at all.

Two ways to move them, each the fastest honest loop Python offers for its
kind, so that RUDP is compared with what the same machine can do without
any protocol:

* **per datagram**: one ``sendto`` per datagram; the receiver waits in a
  selector and then reads every queued datagram with one ``recv_into`` each
  (``MSG_DONTWAIT``), straight into the final buffer;
* **batched**: the sender hands up to 64 datagrams to the kernel in one
  ``sendmsg`` with ``UDP_SEGMENT`` (GSO), the receiver asks for ``UDP_GRO``
  and gets several datagrams per ``recvmsg_into``: the same socket options
  the RUDP client and server use (:mod:`stacklab.services.rudp_io`).

There is no recovery: what the kernel drops is lost, and goodput counts only
what arrived.  The receiver stops when everything arrived, or after
:data:`IDLE_END_S` without a datagram.

Run as a module, it is the pair of processes of the whole-process ceiling:
``send`` waits for a ``go`` datagram and answers with the file's bytes (read
from disk for each request, as the origin does), ``receive`` asks for them,
writes them to a file atomically and prints a JSON summary.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import selectors
import socket
import sys
import time
from pathlib import Path

from stacklab.files import write_atomically
from stacklab.services.rudp_io import (
    GRO_CMSG_SPACE,
    GSO_MAX_BYTES,
    GSO_MAX_SEGMENTS,
    SOL_UDP,
    UDP_SEGMENT,
    enable_gro,
    tune_socket,
)

PER_DATAGRAM = "per-datagram"
BATCHED = "batched"
MODES = (PER_DATAGRAM, BATCHED)
GO = b"go "
IDLE_END_S = 0.5
"""Raw UDP has no end marker: a receiver missing datagrams stops after this long without one."""
RECEIVE_BUFFER = 64 * 1024 * 1024
"""The receiver's kernel buffer: with no flow control, a smaller one overflows and loses data."""
SO_RCVBUFFORCE_LINUX = 33  # asm-generic/socket.h
GRO_SPAN = 65536
"""Room for the largest coalesced GRO receive."""


class CeilingUnavailable(RuntimeError):
    """This kernel cannot run the batched ceiling (no UDP GSO or GRO)."""


def gso_segments(datagram: int) -> int:
    """Datagrams per GSO ``sendmsg``: as many as the kernel takes in one buffer."""
    return max(1, min(GSO_MAX_SEGMENTS, GSO_MAX_BYTES // datagram))


def send_content(
    sock: socket.socket, content: memoryview, datagram: int, mode: str, addr: tuple[str, int]
) -> None:
    """Send ``content`` to ``addr`` in ``datagram``-byte datagrams (the last one may be shorter)."""
    size = len(content)
    if mode == PER_DATAGRAM:
        sendto = sock.sendto
        for offset in range(0, size, datagram):
            sendto(content[offset : offset + datagram], addr)
        return
    step = datagram * gso_segments(datagram)
    cmsg = [(SOL_UDP, UDP_SEGMENT, datagram.to_bytes(2, sys.byteorder))]
    sendmsg = sock.sendmsg
    try:
        for offset in range(0, size, step):
            sendmsg([content[offset : offset + step]], cmsg, 0, addr)
    except OSError as exc:
        raise CeilingUnavailable(f"UDP GSO send failed: {exc}") from None


def open_receiver(mode: str, host: str = "127.0.0.1") -> socket.socket:
    """A bound UDP socket with large buffers (and GRO for the batched mode)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    tune_socket(sock)
    _force_receive_buffer(sock, RECEIVE_BUFFER)
    if mode == BATCHED and not enable_gro(sock):
        sock.close()
        raise CeilingUnavailable("UDP GRO is not available on this kernel")
    return sock


def _force_receive_buffer(sock: socket.socket, size: int) -> None:
    """Root may exceed ``net.core.rmem_max`` (Linux SO_RCVBUFFORCE; Python names no constant)."""
    forced = getattr(socket, "SO_RCVBUFFORCE", SO_RCVBUFFORCE_LINUX)
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, forced, size)


def receive_content(
    sock: socket.socket, buf: bytearray, size: int, datagram: int, mode: str
) -> tuple[int, float]:
    """Read up to ``size`` bytes into ``buf``; return (bytes received, seconds idle at the end).

    ``buf`` needs :data:`GRO_SPAN` bytes of room beyond ``size``.  The idle
    tail is zero when everything arrived; otherwise it is the wait that
    decided nothing more would come, which callers subtract from their time.
    """
    view = memoryview(buf)
    got = 0
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ)
    dontwait = socket.MSG_DONTWAIT
    last = time.perf_counter()
    try:
        if mode == PER_DATAGRAM:
            recv_into = sock.recv_into
            while got < size:
                if not sel.select(IDLE_END_S):
                    return got, time.perf_counter() - last
                while got < size:
                    try:
                        got += recv_into(view[got : got + datagram], datagram, dontwait)
                    except BlockingIOError:
                        break
                last = time.perf_counter()
        else:
            recvmsg_into = sock.recvmsg_into
            while got < size:
                if not sel.select(IDLE_END_S):
                    return got, time.perf_counter() - last
                while got < size:
                    try:
                        n, _, _, _ = recvmsg_into(
                            [view[got : got + GRO_SPAN]], GRO_CMSG_SPACE, dontwait
                        )
                    except BlockingIOError:
                        break
                    got += n
                last = time.perf_counter()
    finally:
        sel.close()
    return got, 0.0


# -- the two processes of the whole-process ceiling ----------------------------------------


def _serve(args: argparse.Namespace) -> int:
    """Answer each ``go MODE DATAGRAM`` with the file's bytes, until killed."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((args.host, 0))
    tune_socket(sock)
    host, port = sock.getsockname()
    sys.stdout.write(f"listening on {host}:{port}\n")
    sys.stdout.flush()
    path = Path(args.file)
    while True:
        request, addr = sock.recvfrom(256)
        if not request.startswith(GO):
            continue
        mode, _, datagram = request[len(GO) :].decode("ascii", "replace").partition(" ")
        content = path.read_bytes()  # each request reads the file again, as the origin does
        try:
            send_content(sock, memoryview(content), int(datagram), mode, addr)
        except (CeilingUnavailable, ValueError) as exc:
            sock.sendto(f"error {exc}".encode(), addr)


def _receive(args: argparse.Namespace) -> int:
    """Ask the sender for the bytes, write them to ``--output``, print a JSON summary."""
    try:
        sock = open_receiver(args.mode)
    except CeilingUnavailable as exc:
        _say({"error": str(exc)})
        return 1
    host, _, port = args.sender.rpartition(":")
    buf = bytearray(args.size + GRO_SPAN)
    with sock:
        sock.connect((host, int(port)))
        sock.send(GO + f"{args.mode} {args.datagram}".encode())
        got, idle = receive_content(sock, buf, args.size, args.datagram, args.mode)
    view = memoryview(buf)[:got]
    if got < args.datagram and bytes(view[:6]) == b"error ":
        _say({"error": bytes(view).decode("utf-8", "replace")[6:]})
        return 1
    write_atomically(args.output, lambda handle: handle.write(view))
    _say({"received": got, "idle_tail_s": round(idle, 6)})
    return 0


def _say(summary: dict[str, object]) -> None:
    """The receiver's one line of output, read by the benchmark."""
    sys.stdout.write(json.dumps(summary) + "\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stacklab.tools.bench_udp")
    sub = parser.add_subparsers(dest="role", required=True)
    send = sub.add_parser("send", help="serve a file as raw UDP datagrams on request")
    send.add_argument("--file", required=True)
    send.add_argument("--host", default="127.0.0.1")
    recv = sub.add_parser("receive", help="fetch the file as raw UDP datagrams, write it")
    recv.add_argument("--sender", required=True, help="HOST:PORT of the sending process")
    recv.add_argument("--size", type=int, required=True)
    recv.add_argument("--datagram", type=int, required=True)
    recv.add_argument("--mode", choices=MODES, required=True)
    recv.add_argument("--output", required=True)
    args = parser.parse_args(argv)
    return _serve(args) if args.role == "send" else _receive(args)


if __name__ == "__main__":
    sys.exit(main())
