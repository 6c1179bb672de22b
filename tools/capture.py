"""Record the stack's traffic with dumpcap, starting and stopping without losing a packet.

Two facts about dumpcap shape this module:

* it prints ``Capturing on 'lo'`` *before* it knows whether it may capture
  (a permission error follows that line), so the line proves nothing;
* on Linux, packets reach it in blocks (TPACKET_V3) and the file is flushed
  about twice a second, so a SIGINT sent right after the last packet loses
  the packets still waiting in the kernel's ring.

So the capture is bracketed by *sync markers*: small UDP datagrams to the
discard port (9) on 127.0.0.1 that the capture filter also matches, each
with a unique payload.  :meth:`DumpcapCapture.start` returns once a marker is
in the file (the capture is live), :meth:`DumpcapCapture.stop` sends an end
marker and interrupts dumpcap only once that marker is in the file (every
earlier packet is flushed).  The markers are then deleted with ``editcap``,
which keeps the capture comment, so the file holds the scenario's traffic
only.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

from stacklab.analysis.pcapio import CaptureError, CaptureReader, Frame, parse_packet

log = logging.getLogger(__name__)

SYNC_ADDR = "127.0.0.1"
SYNC_PORT = 9
"""The discard port: nothing in the stack uses it, and nothing answers it."""
SYNC_MAGIC = b"stacklab-capture-sync:"
START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 15.0
POLL_S = 0.05
MARKER_RESEND_S = 0.25

PERMISSION_FIX = (
    "run as root, or give dumpcap the capture capabilities: "
    "sudo setcap cap_net_raw,cap_net_admin+eip $(command -v dumpcap)"
)


class CaptureToolError(Exception):
    """dumpcap or editcap is missing or failed; ``str()`` is one line for the user."""


class CapturePermissionError(CaptureToolError):
    """This user may not capture packets."""


def default_interface() -> str:
    """The loopback interface's name: ``lo`` on Linux, ``lo0`` on the BSDs and macOS."""
    return "lo" if sys.platform.startswith("linux") else "lo0"


def find_tool(name: str) -> str:
    """Path of a Wireshark command-line tool, or a clear error saying how to get it."""
    path = shutil.which(name)
    if path is None:
        raise CaptureToolError(
            f"{name} is not installed: install Wireshark's command-line tools "
            "(e.g. apt-get install tshark) or run 'make setup'"
        )
    return path


def permission_problem(dumpcap: str) -> str | None:
    """A one-line reason why capturing will fail, or ``None`` when it may work.

    Root may capture; otherwise dumpcap needs file capabilities (or setuid).
    This is a pre-check: the definitive answer is dumpcap's own error.
    """
    if not sys.platform.startswith("linux") or os.geteuid() == 0:
        return None
    try:
        if os.stat(dumpcap).st_mode & 0o4000:
            return None
        if os.getxattr(dumpcap, "security.capability"):
            return None
    except OSError:
        pass
    return f"no permission to capture packets: {PERMISSION_FIX}"


def preflight() -> str:
    """Check that dumpcap and editcap exist and that capturing is allowed; return dumpcap's path."""
    dumpcap = find_tool("dumpcap")
    find_tool("editcap")
    problem = permission_problem(dumpcap)
    if problem is not None:
        raise CapturePermissionError(problem)
    return dumpcap


def capture_filter(endpoints: Iterable[tuple[str, int]]) -> str:
    """A BPF filter for the given ``(transport, port)`` pairs plus the sync markers."""
    terms = sorted({f"{proto} port {port}" for proto, port in endpoints})
    terms.append(f"(udp dst port {SYNC_PORT} and dst host {SYNC_ADDR})")
    return " or ".join(terms)


def _ranges(numbers: list[int]) -> list[str]:
    """[1, 2, 3, 7] -> ["1-3", "7"]: editcap's frame selection, kept short."""
    out: list[str] = []
    start = prev = None
    for n in sorted(numbers):
        if prev is not None and n == prev + 1:
            prev = n
            continue
        if start is not None:
            out.append(f"{start}-{prev}" if prev != start else str(start))
        start = prev = n
    if start is not None:
        out.append(f"{start}-{prev}" if prev != start else str(start))
    return out


def _marker_payload(frame: Frame) -> bytes | None:
    """The payload of a sync marker frame, or ``None`` for any other frame."""
    packet = parse_packet(frame)
    if (
        packet is not None
        and packet.proto == "udp"
        and packet.dport == SYNC_PORT
        and packet.payload.startswith(SYNC_MAGIC)
    ):
        return packet.payload
    return None


class DumpcapCapture:
    """One dumpcap run writing ``path`` (pcapng), bracketed by sync markers.

    ``cut_after_end`` also drops every frame after the end marker: a scenario
    that stops mid-exchange (the handshake) ends exactly where its client
    stopped, whatever the server does next.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        bpf: str,
        comment: str,
        *,
        interface: str | None = None,
        cut_after_end: bool = False,
        start_timeout: float = START_TIMEOUT_S,
        stop_timeout: float = STOP_TIMEOUT_S,
    ) -> None:
        self.path = Path(path)
        self.bpf = bpf
        self.comment = comment
        self.interface = interface or default_interface()
        self.cut_after_end = cut_after_end
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.raw_path = self.path.with_name(f".{self.path.name}.{os.getpid()}.raw.pcapng")
        self.frames = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr = bytearray()
        self._stderr_thread: threading.Thread | None = None
        self._nonce = os.urandom(4).hex()
        self._markers = 0
        self._sock: socket.socket | None = None
        self._offset = 0

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        """Start dumpcap and return once the capture is live (a marker is in the file)."""
        dumpcap = preflight()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.raw_path.unlink()
        argv = [
            dumpcap,
            "-i",
            self.interface,
            "-f",
            self.bpf,
            "-w",
            str(self.raw_path),
            "-n",
            "-q",
            "--capture-comment",
            self.comment,
        ]
        log.info("starting %s", " ".join(argv[:5]) + " ...")
        self._proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        self._stderr_thread = threading.Thread(
            target=self._drain, name="stacklab-dumpcap-stderr", daemon=True
        )
        self._stderr_thread.start()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self._wait_for_marker("start", self.start_timeout)
        except BaseException:
            self.abort()
            raise
        log.info("capture on %s is live", self.interface)

    def stop(self) -> Path:
        """Flush every packet, stop dumpcap, strip the markers; return the final path."""
        proc = self._proc
        if proc is None:
            raise RuntimeError("capture not started")
        try:
            self._wait_for_marker("end", self.stop_timeout)
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise CaptureToolError("dumpcap did not stop after SIGINT") from None
            if self._stderr_thread is not None:
                self._stderr_thread.join(self.stop_timeout)
            if proc.returncode != 0:
                raise CaptureToolError(f"dumpcap failed: {self._error_line()}")
            self._finish_file()
        except BaseException:
            self.abort()
            raise
        finally:
            self._proc = None
            if self._sock is not None:
                self._sock.close()
                self._sock = None
        return self.path

    def __enter__(self) -> DumpcapCapture:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.stop()
        else:
            self.abort()

    # -- internals ---------------------------------------------------------------

    def _drain(self) -> None:
        proc = self._proc
        assert proc is not None and proc.stderr is not None
        for line in proc.stderr:
            self._stderr.extend(line)
            log.debug("dumpcap: %s", line.decode(errors="replace").rstrip())

    def _error_line(self) -> str:
        text = self._stderr.decode(errors="replace")
        lines = [
            line.strip()
            for line in text.splitlines()
            if line.strip() and not line.startswith(("Capturing on", "File:", "Running as"))
        ]
        return lines[0] if lines else "no message"

    def _marker(self, kind: str) -> bytes:
        self._markers += 1
        return SYNC_MAGIC + f"{self._nonce}:{kind}:{self._markers}".encode()

    def _send_marker(self, payload: bytes) -> None:
        assert self._sock is not None
        try:
            self._sock.sendto(payload, (SYNC_ADDR, SYNC_PORT))
        except OSError as exc:
            raise CaptureToolError(f"cannot send the capture sync marker: {exc}") from None

    def _file_contains(self, needle: bytes) -> bool:
        """Scan only what was appended since the last look (plus an overlap)."""
        try:
            with open(self.raw_path, "rb") as fh:
                start = max(0, self._offset - 256)
                fh.seek(start)
                data = fh.read()
        except FileNotFoundError:
            return False
        self._offset = start + len(data)
        return needle in data

    def _wait_for_marker(self, kind: str, timeout: float) -> None:
        """Send markers of ``kind`` until one shows up in the file; watch dumpcap meanwhile."""
        proc = self._proc
        assert proc is not None
        prefix = SYNC_MAGIC + f"{self._nonce}:{kind}:".encode()
        deadline = time.monotonic() + timeout
        self._offset = 0 if kind == "start" else self._offset
        next_send = 0.0
        while True:
            now = time.monotonic()
            if now >= next_send:
                self._send_marker(self._marker(kind))
                next_send = now + MARKER_RESEND_S
            if self._file_contains(prefix):
                return
            try:
                proc.wait(POLL_S)  # the wait doubles as the check that dumpcap still runs
            except subprocess.TimeoutExpired:
                pass
            else:
                if self._stderr_thread is not None:
                    self._stderr_thread.join(2.0)
                message = self._error_line()
                if "permission" in self._stderr.decode(errors="replace").lower():
                    raise CapturePermissionError(
                        f"no permission to capture on {self.interface}: {PERMISSION_FIX}"
                    )
                raise CaptureToolError(f"dumpcap exited early: {message}")
            if time.monotonic() >= deadline:
                raise CaptureToolError(
                    f"dumpcap did not record the {kind} marker within {timeout:g} s"
                )

    def _finish_file(self) -> None:
        """Delete the marker frames (and, if asked, what follows the end) with editcap."""
        drop: list[int] = []
        end_frame: int | None = None
        total = 0
        end_tag = f"{self._nonce}:end:".encode()
        try:
            with CaptureReader(self.raw_path) as reader:
                for frame in reader:
                    total = frame.number
                    if end_frame is not None and self.cut_after_end:
                        drop.append(frame.number)
                        continue
                    payload = _marker_payload(frame)
                    if payload is not None:
                        drop.append(frame.number)
                        if end_frame is None and end_tag in payload:
                            end_frame = frame.number
        except CaptureError as exc:
            raise CaptureToolError(f"cannot read what dumpcap wrote: {exc}") from None
        self.frames = total - len(drop)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.part.pcapng")
        argv = [find_tool("editcap"), str(self.raw_path), str(tmp), *_ranges(drop)]
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            message = (result.stderr or result.stdout).strip().splitlines()
            raise CaptureToolError(f"editcap failed: {message[0] if message else 'no message'}")
        os.replace(tmp, self.path)
        self.raw_path.unlink()
        log.info("wrote %s: %d frames (%d markers removed)", self.path, self.frames, len(drop))

    def abort(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        self._proc = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        with contextlib.suppress(FileNotFoundError):
            self.raw_path.unlink()
