"""What a probe run tells people and machines: JSON, JUnit XML, one pcapng per failure.

Kept apart from the runner so the socket loop knows nothing about formats,
and so each output can be tested from a hand-made result.  A failure always
carries what was sent (hex and decoded), what happened, and the exact command
that replays it alone.
"""

from __future__ import annotations

import json
import shlex
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stacklab import wire
from stacklab.files import Output, write_atomically, write_output
from stacklab.tools.probe_cases import Case, ProbeContext
from stacklab.tools.probe_runner import CLASSES, CaseResult, Exchange, ProbeSummary

TCP_SEGMENT = 32768
"""Payload per rebuilt TCP segment in the failure pcapng."""

HEX_LIMIT = 256
"""Bytes of hex shown per packet in reports (the pcapng holds everything)."""


@dataclass(frozen=True, slots=True)
class RunInfo:
    """The parameters that, with a case index, reproduce a case exactly."""

    target: str
    protocol: str
    seed: int
    timeout: float
    context: ProbeContext

    def replay_command(self, index: int) -> str:
        """The copy-pasteable command that sends case ``index`` alone."""
        argv = [
            "stacklab",
            "probe",
            self.target,
            "--protocol",
            self.protocol,
            "--seed",
            str(self.seed),
            "--replay",
            str(index),
            "--timeout",
            f"{self.timeout:g}",
        ]
        default = ProbeContext()
        if self.context.url != default.url:
            argv += ["--url", self.context.url]
        if self.context.name != default.name:
            argv += ["--name", self.context.name]
        return shlex.join(argv)


# ---------------------------------------------------------------------------
# Decoding what was sent, for people
# ---------------------------------------------------------------------------


def decode_packet(protocol: str, data: bytes) -> str:
    """A short readable form of one datagram or segment of ``protocol``."""
    if protocol == "rudp":
        if len(data) < wire.RUDP_HEADER_LEN:
            return f"{len(data)} bytes, shorter than the {wire.RUDP_HEADER_LEN}-byte RUDP header"
        head, payload = wire.unpack_rudp(data)
        extra = len(data) - wire.RUDP_HEADER_LEN
        text = f"RUDP {head.flag_letter} seq={head.seq} ack={head.ack} len={head.length}"
        if head.length != extra:
            text += f" (actual payload {extra})"
        return text + (f" {_text(payload)}" if payload else "")
    if protocol == "app":
        prefix = data[: wire.FRAME_PREFIX_LEN]
        if len(prefix) == wire.FRAME_PREFIX_LEN and prefix.isdigit():
            body = data[wire.FRAME_PREFIX_LEN :]
            return f"frame len={int(prefix)} body({len(body)}) {_text(body)}"
        return f"{len(data)} bytes {_text(data)}"
    return f"{len(data)} bytes {_text(data)}"


def _text(data: bytes, limit: int = 80) -> str:
    """UTF-8 when it decodes, else a bytes literal; cut at ``limit`` characters."""
    try:
        shown = repr(data[:limit].decode("utf-8"))
    except UnicodeDecodeError:
        shown = repr(data[:limit])
    return shown + ("..." if len(data) > limit else "")


def sent_records(case: Case) -> list[dict[str, Any]]:
    """Each packet of a case as hex (cut at :data:`HEX_LIMIT`) plus its decoded form."""
    return [
        {
            "hex": packet[:HEX_LIMIT].hex(),
            "bytes": len(packet),
            "decoded": decode_packet(case.protocol, packet),
        }
        for packet in case.packets
    ]


def failure_record(result: CaseResult, info: RunInfo) -> dict[str, Any]:
    """One entry of ``failures`` in the JSON report."""
    case = result.case
    return {
        "case": case.index,
        "kind": result.failure_kind,
        "case_kind": case.kind,
        "description": case.detail,
        "sent": sent_records(case),
        "detail": result.detail,
        "replies": [decode_packet(case.protocol, r) for r in result.replies],
        "replay": info.replay_command(case.index),
    }


def to_json(summary: ProbeSummary, info: RunInfo) -> dict[str, Any]:
    """The ``--json`` document: the keys the spec lists, plus ``stopped``, ``warnings``, ``seconds``, ``by_kind``."""
    return {
        "target": info.target,
        "protocol": info.protocol,
        "seed": info.seed,
        "cases": summary.cases_run,
        "results": {name: summary.results.get(name, 0) for name in CLASSES},
        "failures": [failure_record(r, info) for r in summary.failures],
        "stopped": summary.stopped,
        "warnings": summary.warnings,
        "seconds": round(summary.elapsed, 3),
        "by_kind": {
            kind: {name: counts[name] for name in CLASSES if counts[name]}
            for kind, counts in sorted(summary.by_kind.items())
        },
    }


def dumps(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, ensure_ascii=False)


# ---------------------------------------------------------------------------
# JUnit XML
# ---------------------------------------------------------------------------


def write_junit(path: Path | Output, results: Sequence[CaseResult], info: RunInfo) -> None:
    """One test case per probe case, failures with the replay command; written atomically."""
    failures = sum(1 for r in results if r.failed)
    suite = ET.Element(
        "testsuite",
        name=f"stacklab.probe.{info.protocol}",
        tests=str(len(results)),
        failures=str(failures),
        errors="0",
        time=f"{sum(r.elapsed for r in results):.3f}",
    )
    ET.SubElement(ET.SubElement(suite, "properties"), "property", name="seed", value=str(info.seed))
    for result in results:
        case = result.case
        node = ET.SubElement(
            suite,
            "testcase",
            classname=f"probe.{case.kind}",
            name=f"case {case.index}: {case.detail}",
            time=f"{result.elapsed:.3f}",
        )
        if result.failed:
            failure = ET.SubElement(
                node, "failure", message=result.detail, type=result.failure_kind or ""
            )
            lines = [f"sent {s['decoded']}  hex {s['hex']}" for s in sent_records(case)]
            lines.append(f"replay: {info.replay_command(case.index)}")
            failure.text = "\n".join(lines)
        else:
            ET.SubElement(node, "system-out").text = f"{result.outcome}: {result.detail}"
    root = ET.Element("testsuites")
    root.append(suite)
    ET.indent(root)
    data = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    if isinstance(path, Output):  # already checked by the output policy
        write_output(path, data)
    else:
        _atomic_write(path, data)


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, data)


# ---------------------------------------------------------------------------
# pcapng per failing case
# ---------------------------------------------------------------------------


def write_failure_pcaps(
    directory: Path, failures: Iterable[CaseResult], info: RunInfo
) -> list[Path]:
    """One small pcapng per failing case: the crafted packets, the replies, the liveness checks."""
    from scapy.utils import PcapNgWriter

    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for result in failures:
        path = directory / f"probe-{info.protocol}-seed{info.seed}-case{result.case.index}.pcapng"
        packets = exchanges_to_packets(result.exchanges, tcp=info.protocol == "app")
        tmp = path.with_name(f".{path.name}.tmp")
        writer = PcapNgWriter(str(tmp))
        try:
            for pkt in packets:
                writer.write(pkt)
        finally:
            writer.close()
        tmp.replace(path)
        written.append(path)
    return written


def exchanges_to_packets(exchanges: Sequence[Exchange], tcp: bool) -> list[Any]:
    """Scapy packets (Ethernet/IPv4, as a Linux loopback capture) for the recorded exchanges.

    UDP exchanges map one to one.  TCP exchanges are rebuilt as one stream per
    client port: handshake, the data segments with consistent sequence
    numbers, and a FIN from each side, so Wireshark reassembles the frames.
    """
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether

    def frame(src: str, dst: str) -> Any:
        return Ether(src="00:00:00:00:00:00", dst="00:00:00:00:00:00") / IP(src=src, dst=dst)

    out: list[Any] = []
    if not tcp:
        for ex in exchanges:
            (ch, cp), (sh, sp) = ex.local, ex.remote
            if ex.outgoing:
                pkt = frame(ch, sh) / UDP(sport=cp, dport=sp) / ex.data
            else:
                pkt = frame(sh, ch) / UDP(sport=sp, dport=cp) / ex.data
            pkt.time = ex.time
            out.append(pkt)
        return out
    streams: dict[tuple[str, int], list[Exchange]] = {}
    for ex in exchanges:
        streams.setdefault(ex.local, []).append(ex)
    for items in streams.values():
        out += _tcp_stream(items, frame)
    out.sort(key=lambda p: float(p.time))
    return out


def _tcp_stream(items: Sequence[Exchange], frame: Any) -> list[Any]:
    """One client connection rebuilt as TCP segments with consistent sequence numbers."""
    from scapy.layers.inet import TCP

    (ch, cp), (sh, sp) = items[0].local, items[0].remote
    seqs = {True: 1000, False: 5000}  # next sequence number: client (True), server (False)
    out: list[Any] = []

    def seg(outgoing: bool, flags: str, data: bytes, when: float) -> None:
        src, dst, sport, dport = (ch, sh, cp, sp) if outgoing else (sh, ch, sp, cp)
        pkt = frame(src, dst) / TCP(
            sport=sport, dport=dport, flags=flags, seq=seqs[outgoing], ack=seqs[not outgoing]
        )
        if data:
            pkt = pkt / data
        pkt.time = when
        out.append(pkt)
        seqs[outgoing] += len(data) + (1 if ("S" in flags or "F" in flags) else 0)

    t0 = items[0].time
    seg(True, "S", b"", t0)
    seg(False, "SA", b"", t0)
    seg(True, "A", b"", t0)
    for ex in items:
        for start in range(0, len(ex.data), TCP_SEGMENT):  # an IPv4 packet holds < 64 KiB
            seg(ex.outgoing, "PA", ex.data[start : start + TCP_SEGMENT], ex.time)
    last = items[-1].time
    seg(True, "FA", b"", last)
    seg(False, "FA", b"", last)
    return out
