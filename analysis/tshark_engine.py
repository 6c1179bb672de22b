"""A second, independent way to read a capture: tshark with the generated dissector.

``stacklab verify --engine tshark`` lets Wireshark's own code do everything
below the sessions: reading the file (every format and link type tshark
knows), IP and UDP/TCP decoding, and the RUDP header fields through the Lua
dissector that :func:`stacklab.layers.lua.generate_dissector` writes from the
wire tables.  The session trackers and checks are shared with the native
engine, so a disagreement between the two engines points at a reader or a
dissector bug; the test suite asserts that they agree on every session fact.

IP fragments: Wireshark reassembles them before UDP (``ip.defragment`` and
``ipv6.defragment``, on by default), so the dissector sees whole datagrams,
in the frame of the fragment that completes them, as the native engine
does.  When Wireshark cannot reassemble (a fragment cut by the snapshot
length, or a fragment missing), it still dissects a lone first fragment as a
partial datagram; such rows are skipped and counted, because the verifier's
rule is that no partial datagram is ever judged (see
:mod:`stacklab.analysis.ipfrag`).  One known difference remains: Wireshark
keys IPv4 fragments on protocol XOR identification, so a fragment left
incomplete can be spliced into a datagram of another protocol between the
same hosts whose identification collides that way; the native engine keeps
the protocol apart, as the receiving host does.

UDP GSO batches (several RUDP segments in one captured datagram, see
:mod:`stacklab.gso`) are split by the dissector (``slrudp.gso.count``), not
by the session tracker, so that the two engines split independently.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from typing import Final

from stacklab.analysis.pcapio import CaptureError, CaptureReader, Packet
from stacklab.analysis.sessions import CaptureAnalysis, VerifyOptions
from stacklab.wire import RUDP_HEADER_LEN, Ports, pack_rudp

FIELDS: Final = (
    "frame.number",
    "frame.time_epoch",
    "ip.src",
    "ipv6.src",
    "ip.dst",
    "ipv6.dst",
    "udp.srcport",
    "udp.dstport",
    "tcp.srcport",
    "tcp.dstport",
    "slrudp.seq",
    "slrudp.ack",
    "slrudp.flag",
    "slrudp.len",
    "slrudp.payload",
    "slrudp.padding",
    "udp.payload",
    "tcp.seq_raw",
    "tcp.ack_raw",
    "tcp.flags",
    "tcp.payload",
    "ip.flags.mf",
    "ip.frag_offset",
    "ip.reassembled.length",
    "ipv6.fraghdr.more",
    "ipv6.fraghdr.offset",
    "ipv6.reassembled.length",
    "slrudp.gso.count",
)
RUDP_FIELDS: Final = FIELDS[:16]
"""The fields the benchmark asks tshark for (what the RUDP checks need)."""


def _flag_byte(text: str) -> bytes:
    """``slrudp.flag`` as tshark prints it (``S``, or ``\\x07`` for an unprintable byte)."""
    text = text.strip("'")
    if len(text) == 1:
        return text.encode("latin-1")
    digits = text.lstrip("\\").removeprefix("x")
    try:
        return bytes([int(digits, 16)])
    except ValueError:
        return b"\x00"


class TsharkError(Exception):
    """tshark is missing or failed on the file."""


def tshark_command(
    path: str, lua_path: str, ports: Ports, fields: tuple[str, ...] = FIELDS
) -> list[str]:
    """The tshark command line that extracts ``fields`` for the watched ports."""
    display = (
        f"slrudp or udp.port == {ports.rudp} or udp.port == {ports.dns} or "
        f"udp.port == {ports.dhcp} or tcp.port == {ports.app}"
    )
    cmd = [
        "tshark",
        "-n",
        "-r",
        path,
        "-X",
        f"lua_script:{lua_path}",
        "-Y",
        display,
        "-T",
        "fields",
    ]
    cmd += ["-E", "separator=/t", "-E", "occurrence=f", "-E", "quote=n"]
    for name in fields:
        cmd += ["-e", name]
    return cmd


def write_dissector(ports: Ports, directory: str) -> str:
    """Write the generated dissector for ``ports`` into ``directory``; return its path."""
    from stacklab.layers.lua import generate_dissector

    path = os.path.join(directory, "stacklab.lua")
    with open(path, "w", encoding="utf-8") as out:
        out.write(generate_dissector(ports))
    return path


def _rows(path: str, options: VerifyOptions) -> Iterator[list[str]]:
    if shutil.which("tshark") is None:
        raise TsharkError("tshark is not installed (needed by --engine tshark)")
    with tempfile.TemporaryDirectory(prefix="stacklab-tshark-") as tmp:
        lua = write_dissector(options.ports, tmp)
        cmd = tshark_command(path, lua, options.ports)
        env = dict(os.environ, WIRESHARK_CONFIG_DIR=tmp)  # no personal preferences
        with subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        ) as proc:
            assert proc.stdout is not None and proc.stderr is not None
            for line in proc.stdout:
                yield line.rstrip("\n").split("\t")
            err = proc.stderr.read()
            code = proc.wait()
        if code != 0:
            lines = [x for x in err.splitlines() if x.strip() and "Running as user" not in x]
            # tshark exits non-zero on a cut-short file after printing every frame before the cut.
            if not any("cut short" in x or "truncated" in x for x in lines):
                raise TsharkError(
                    f"{path}: tshark failed: {lines[-1] if lines else f'exit {code}'}"
                )


def _hex(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", "")) if text else b""


PROGRESS_EVERY = 2000
"""Rows between two calls of the progress callback."""


def analyze_capture(
    path: str | os.PathLike[str],
    options: VerifyOptions | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> CaptureAnalysis:
    """The same analysis as :func:`stacklab.analysis.verify.analyze_capture`, read by tshark.

    tshark is slow on big captures: ``progress(frame, frames)`` is called
    every :data:`PROGRESS_EVERY` rows so that the command can show how far it is.
    """
    from stacklab.analysis.verify import finish_analysis, new_trackers

    options = options or VerifyOptions()
    path = os.fspath(path)
    with CaptureReader(path) as reader:  # same input errors as the native engine
        frames = 0
        for _ in reader:
            frames += 1
        truncated = reader.truncated
        link_type = reader.linktype_name
    ports = options.ports
    rudp, dhcp, dns, app = new_trackers(options)
    rudp.split_gso = False  # GSO batches: the dissector's split (slrudp.gso.*), not ours
    partial: list[int] = []
    for count, row in enumerate(_rows(path, options)):
        if len(row) < len(FIELDS):
            continue
        if progress is not None and count % PROGRESS_EVERY == 0:
            progress(int(row[0] or 0), frames)
        (
            number_s,
            time_s,
            src4,
            src6,
            dst4,
            dst6,
            usport,
            udport,
            tsport,
            tdport,
            seq,
            ack,
            flag,
            length,
            payload,
            padding,
            udp_payload,
            tseq,
            tack,
            tflags,
            tpayload,
            mf4,
            offset4,
            whole4,
            mf6,
            offset6,
            whole6,
            gso_count,
        ) = row[: len(FIELDS)]
        if _lone_fragment(mf4, offset4, whole4) or _lone_fragment(mf6, offset6, whole6):
            partial.append(int(number_s))
            continue
        number = int(number_s)
        time = float(time_s)
        src = src4 or src6
        dst = dst4 or dst6
        if usport:
            sport, dport = int(usport), int(udport)
            key = (src, sport, dst, dport)
            if ports.rudp in (sport, dport):
                if gso_count:
                    segments = _gso_segments(_hex(udp_payload), int(gso_count), int(length))
                    if segments is not None:
                        rudp.batch(number, time, key, dport == ports.rudp, segments)
                        continue
                if seq:
                    flag_byte = _flag_byte(flag)
                    datagram = pack_rudp(int(seq), int(ack), flag_byte, _hex(payload), int(length))
                    datagram += _hex(padding)
                else:
                    datagram = _hex(udp_payload)
                rudp.feed(number, time, key, dport == ports.rudp, datagram)
            elif ports.dns in (sport, dport):
                dns.feed(number, src, sport, dst, dport, _hex(udp_payload))
            elif ports.dhcp in (sport, dport):
                dhcp.feed(number, src, sport, dst, dport, _hex(udp_payload))
        elif tsport:
            packet = Packet(
                number,
                time,
                src,
                dst,
                int(tsport),
                int(tdport),
                "tcp",
                _hex(tpayload),
                int(tseq or 0),
                int(tack or 0),
                int(tflags or "0", 16),
            )
            app.feed(packet)
    result = CaptureAnalysis(
        path=path, packets=frames, link_type=link_type, truncated=truncated, engine="tshark"
    )
    if truncated:
        result.warnings.append(
            f"capture is truncated: analysed the {frames} complete frames before the cut"
        )
    if partial:
        named = ", ".join(str(n) for n in partial[:5]) + (", ..." if len(partial) > 5 else "")
        result.warnings.append(
            f"{len(partial)} IP fragment(s) tshark could not reassemble, not used (frames {named})"
        )
    return finish_analysis(result, options, rudp, dhcp, dns, app)


def _gso_segments(datagram: bytes, count: int, first_length: int) -> list[bytes] | None:
    """The ``count`` segments of a batch the dissector split, cut as the kernel cut them.

    Every segment but the last is as long as the first (11 + its length
    field); None when the dissector's count does not fit the datagram.
    """
    size = RUDP_HEADER_LEN + first_length
    segments = [datagram[i : i + size] for i in range(0, len(datagram), size)]
    return segments if len(segments) == count and count > 1 else None


def _lone_fragment(more: str, offset: str, reassembled: str) -> bool:
    """A row of a fragment that tshark dissected without reassembling its datagram."""
    return (more in ("1", "True") or offset not in ("", "0")) and not reassembled


__all__ = [
    "FIELDS",
    "RUDP_FIELDS",
    "CaptureError",
    "TsharkError",
    "analyze_capture",
    "tshark_command",
]
