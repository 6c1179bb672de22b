"""pyshark with stacklab's dissector: Wireshark's full dissection of the stack's captures.

``file_capture(path)`` and ``live_capture(interface)`` return pyshark
captures that load the generated Lua dissector (written once to a cache
folder, per set of ports), with stacklab's ports as preferences and JSON
output by default; the layer ``slrudp`` has ``seq``, ``ack``, ``flag``
(``"S"``), ``len``, ``crc32c`` and ``crc32c_status`` and the SYN options.
A display filter naming a field that does not exist raises
:class:`DisplayFilterError` with tshark's own words, before any capture runs.

pyshark drives tshark with asyncio and cannot iterate inside a running event
loop (a notebook cell, ``asyncio.run``): there, use :func:`packets`, which
runs tshark as a plain child process and parses its JSON with pyshark's own
parser, with no event loop at all.

For bulk work (verdicts, series, millions of packets) ``stacklab.decode`` and
``stacklab.verify`` are far faster; pyshark is for everything else Wireshark
knows about the packets.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import os
import subprocess
from pathlib import Path
from typing import Any

from stacklab.files import write_atomically
from stacklab.wire import Ports

_FAKE_LAYERS = frozenset({"_ws.lua.fake", "fake-field-wrapper", "DATA"})
"""Wireshark's Lua wrapper item, which pyshark would show as an empty extra layer."""


class TsharkError(RuntimeError):
    """tshark could not read the capture (its own words are in the message)."""


class DisplayFilterError(ValueError):
    """tshark refuses the display filter (an unknown field, a syntax error)."""


def cache_dir() -> Path:
    """Where the dissector is written: ``$XDG_CACHE_HOME/stacklab`` (``~/.cache/stacklab``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "stacklab"


def dissector_path(ports: Ports | None = None) -> Path:
    """The generated dissector for these ports, written once and reused."""
    from stacklab.layers.lua import generate_dissector

    source = generate_dissector(ports or Ports()).encode("utf-8")
    digest = hashlib.sha256(source).hexdigest()[:16]
    path = cache_dir() / f"stacklab-{digest}.lua"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, source)
    return path


def preferences(ports: Ports | None = None) -> dict[str, str]:
    """stacklab's ports as Wireshark preferences (``-o slrudp.port:2122`` ...)."""
    ports = ports or Ports()
    return {
        "slrudp.port": str(ports.rudp),
        "slframe.port": str(ports.app),
        "sldhcp.port": str(ports.dhcp),
        "sldns.port": str(ports.dns),
    }


def check_display_filter(display_filter: str, ports: Ports | None = None) -> None:
    """Raise :class:`DisplayFilterError` when tshark, with the dissector, refuses the filter."""
    lua = dissector_path(ports)
    empty = cache_dir() / "empty.pcapng"
    if not empty.exists():
        write_atomically(empty, b"")
    argv = ["tshark", "-n", "-X", f"lua_script:{lua}", "-Y", display_filter, "-r", str(empty)]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    except FileNotFoundError:
        raise DisplayFilterError("tshark is not installed (run 'make setup')") from None
    if done.returncode != 0:
        lines = [
            line.strip()
            for line in done.stderr.splitlines()
            if line.strip() and "Running as user" not in line
        ]
        words = lines[0].removeprefix("tshark: ") if lines else "refused"
        raise DisplayFilterError(f"display filter {display_filter!r}: {words}")


def _event_loop() -> asyncio.AbstractEventLoop:
    """The loop a new capture runs on: the running one (for pyshark's async API), else its own.

    Giving pyshark a loop keeps it from installing its own child watcher in
    the main thread, which would break captures running in other threads.
    """
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.new_event_loop()


def _options(kw: dict[str, Any], ports: Ports | None) -> dict[str, Any]:
    options = dict(kw)
    if options.get("eventloop") is None:
        options["eventloop"] = _event_loop()
    custom = list(options.pop("custom_parameters", None) or [])
    options["custom_parameters"] = ["-X", f"lua_script:{dissector_path(ports)}", *custom]
    prefs = preferences(ports)
    prefs.update(options.pop("override_prefs", None) or {})
    options["override_prefs"] = prefs
    options.setdefault("use_json", True)
    display_filter = options.get("display_filter")
    if display_filter:
        check_display_filter(display_filter, ports)
    return options


def _without_fake_layers(packet: Any) -> Any:
    packet.layers = [layer for layer in packet.layers if layer.layer_name not in _FAKE_LAYERS]
    return packet


def file_capture(path: str | os.PathLike[str], *, ports: Ports | None = None, **kw: Any) -> Any:
    """A ``pyshark.FileCapture`` of ``path`` with stacklab's dissector and ports.

    Keyword arguments go to pyshark (``display_filter``, ``keep_packets``...);
    ``use_json`` defaults to True.  Iterate it outside a running event loop;
    inside one, use :func:`packets`.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"{os.fspath(path)}: no such file")
    return _capture_classes()[0](os.fspath(path), **_options(kw, ports))


def live_capture(interface: str, *, ports: Ports | None = None, **kw: Any) -> Any:
    """A ``pyshark.LiveCapture`` on ``interface`` with stacklab's dissector and ports."""
    return _capture_classes()[1](interface=interface, **_options(kw, ports))


def packets(path: str | os.PathLike[str], *, ports: Ports | None = None, **kw: Any) -> list[Any]:
    """Every packet of ``path`` as pyshark objects, in a list; works in a running event loop.

    tshark runs as a plain child process and its JSON goes through pyshark's
    own packet parser: no event loop is involved, so this is the call for a
    notebook cell or a coroutine (where iterating a pyshark capture fails
    with "This event loop is already running").  Takes the keyword arguments
    of :func:`file_capture` (``display_filter`` above all).
    """
    import json

    from pyshark.tshark.output_parser.tshark_json import packet_from_json_packet

    capture = file_capture(path, ports=ports, **{**kw, "use_json": True})
    try:
        argv = ["tshark", "-n", "-T", "json", *capture.get_parameters(), "--no-duplicate-keys"]
    finally:
        if capture.eventloop is not _running_loop():
            capture.eventloop.close()
    done = subprocess.run(argv, capture_output=True, check=False)
    if done.returncode != 0:
        lines = [
            line.strip()
            for line in done.stderr.decode("utf-8", "replace").splitlines()
            if line.strip() and "Running as user" not in line
        ]
        words = " ".join(lines) or f"exit status {done.returncode}"
        raise TsharkError(f"tshark failed on {os.fspath(path)}: {words}")
    return [
        _without_fake_layers(packet_from_json_packet(json.dumps(item).encode("utf-8")))
        for item in json.loads(done.stdout or b"[]")
    ]


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


LOST_EXIT_STATUS = 255
"""What asyncio reports when it could not collect a child's exit status."""


@functools.cache
def _capture_classes() -> tuple[Any, Any]:
    """pyshark's FileCapture and LiveCapture, adjusted for stacklab's dissector.

    Two adjustments: the empty layer of Wireshark's Lua wrapper item is
    dropped from every packet, and an exit status that asyncio lost is not
    taken for a crash.  On Python 3.11, asyncio's transport may reap tshark
    (``Popen.poll``) before its child watcher does, which then reports 255;
    tshark itself never exits with 255, and its output was complete.
    """
    import pyshark
    from pyshark.capture.capture import TSharkCrashException

    class StacklabCapture:
        def _packets_from_tshark_sync(self, *args: Any, **kwargs: Any) -> Any:
            for packet in super()._packets_from_tshark_sync(*args, **kwargs):  # type: ignore[misc]
                yield _without_fake_layers(packet)

        async def _cleanup_subprocess(self, process: Any) -> None:
            try:
                await super()._cleanup_subprocess(process)  # type: ignore[misc]
            except TSharkCrashException:
                if process.returncode != LOST_EXIT_STATUS:
                    raise

    class StacklabFileCapture(StacklabCapture, pyshark.FileCapture):
        """pyshark's FileCapture, adjusted (see :func:`_capture_classes`)."""

    class StacklabLiveCapture(StacklabCapture, pyshark.LiveCapture):
        """pyshark's LiveCapture, adjusted (see :func:`_capture_classes`)."""

    return StacklabFileCapture, StacklabLiveCapture
