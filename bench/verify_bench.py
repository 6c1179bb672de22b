"""Benchmark ``stacklab verify`` against tshark and capinfos, and judge it by its targets.

One synthetic capture (300k packets of about 1,250 interleaved RUDP
transfers with loss, plus unrelated noise and some DHCP/DNS, by default) is
written to a temporary directory; then, in the same run and interleaved so
that all see the same machine load:

* ``stacklab verify --json FILE`` and ``stacklab -q verify FILE``, the hot
  path compiled (the normal install);
* ``stacklab verify --json FILE`` on the pure-Python fallback: the same
  command with the hot-path modules imported from their sources (as
  ``tests/test_native_build.py`` does), what a machine without a C
  compiler runs;
* ``tshark -r FILE -X lua_script:stacklab.lua -Y slrudp -T fields -e ...``
  extracting the RUDP fields the checks need with the generated dissector;
* ``capinfos FILE`` (C; all its infos, hashes of the file included) and
  ``capinfos -c FILE`` (the packet count only: one pass over the records).

Each runs ``--repeat`` times; the table shows the median wall time, the peak
resident memory of the child (``wait4``'s ``ru_maxrss``) and the speed-up
against tshark, then each target with its measured ratio and PASS or MISS.
Linux counts in a child's peak the memory of the process that forked it, so
the capture and the dissector are written by a child of their own and the
bench stays small (its own peak, printed, is the floor of every figure):

* ``verify --json`` at least 20x faster than tshark with the dissector;
* ``verify --json`` peaks at 80 MB or less;
* ``verify --json`` within 4x of capinfos (of each of the two runs);
* the pure-Python fallback within 2x of the compiled path.

Usage::

    python bench/verify_bench.py [--packets 300000] [--sessions 1250] [--repeat 5] [--markdown]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from stacklab.wire import ORIGINAL_CHUNK_SIZE, RUDP_FLAG_AT, STACKLAB_DEFAULT_CHUNK, Ports

if TYPE_CHECKING:
    from stacklab.analysis.synth import Packet

# Runs the command line with the hot-path modules imported from their sources.
_PURE_RUNNER = """
import importlib.util, sys
from pathlib import Path

import stacklab.analysis

HOT = {"scan", "rudp", "rudp_window", "rudp_recovery", "rudp_goback"}
SOURCES = Path(stacklab.analysis.__path__[0])


class SourceOnly:
    @staticmethod
    def find_spec(name, path=None, target=None):
        package, _, module = name.rpartition(".")
        if package == "stacklab.analysis" and module in HOT:
            return importlib.util.spec_from_file_location(name, SOURCES / (module + ".py"))
        return None


sys.meta_path.insert(0, SourceOnly)
from stacklab.cli import main

sys.argv[0] = "stacklab"
main()
"""

_NOISE = 0.1  # benchmark_stream's default share of unrelated packets
_PACKETS_PER_CHUNK = 2.38  # DATA, ACKs and resends per chunk of content at 5% loss
_SESSION_OVERHEAD = 8  # handshake, command and teardown datagrams


@dataclass
class Run:
    wall: float
    cpu: float
    max_rss_mb: float
    exit_code: int


@dataclass
class Tool:
    name: str
    cmd: list[str]
    runs: list[Run]

    @property
    def wall(self) -> float:
        return statistics.median(r.wall for r in self.runs)

    @property
    def mb(self) -> float:
        return max(r.max_rss_mb for r in self.runs)


def run_child(cmd: list[str]) -> Run:
    """Run ``cmd`` with output discarded; measure wall time, CPU time and peak memory."""
    start = time.perf_counter()
    with open(os.devnull, "wb") as null:
        proc = subprocess.Popen(cmd, stdout=null, stderr=null)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    return Run(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, code)


def hot_path_build() -> str:
    """Whether the capture scan and tracker of the installed stacklab run compiled."""
    from stacklab.analysis import rudp, scan

    files = (str(scan.__file__), str(rudp.__file__))
    return "Python source" if any(f.endswith(".py") for f in files) else "compiled with mypyc"


def file_size_for(packets: int, sessions: int, chunk: int) -> int:
    """The mean transfer size that makes ``packets`` hold about ``sessions`` transfers."""
    per_session = packets * (1 - _NOISE) / sessions - _SESSION_OVERHEAD
    return max(chunk, round(per_session / _PACKETS_PER_CHUNK * chunk))


def _count_syns(packets: Iterator[Packet], port: int, counter: list[int]) -> Iterator[Packet]:
    """Pass the packets through, counting the RUDP SYNs sent to ``port`` (one per transfer)."""
    from stacklab.analysis.synth import UdpPacket

    syn = ord("S")
    for packet in packets:
        if (
            isinstance(packet, UdpPacket)
            and packet.dport == port
            and len(packet.payload) > RUDP_FLAG_AT
            and packet.payload[RUDP_FLAG_AT] == syn
        ):
            counter[0] += 1
        yield packet


def generate(path: str, packets: int, sessions: int, seed: int, chunk: int) -> tuple[int, int]:
    """Write the capture; return its packets and transfers."""
    from stacklab.analysis.synth import CaptureWriter, benchmark_stream

    counter = [0]
    stream = benchmark_stream(
        packets, seed=seed, chunk_size=chunk, file_size=file_size_for(packets, sessions, chunk)
    )
    with CaptureWriter(path, fmt="pcap") as writer:
        writer.write_all(_count_syns(stream, Ports().rudp, counter))
        return writer.count, counter[0]


def main(argv: list[str] | None = None) -> int:
    if argv is None and sys.argv[1:2] == ["--generate"]:  # the child that writes the files
        path, packets, sessions, seed, chunk = sys.argv[2:7]
        count, transfers = generate(path, int(packets), int(sessions), int(seed), int(chunk))
        from stacklab.analysis.tshark_engine import RUDP_FIELDS, write_dissector

        lua = write_dissector(Ports(), os.path.dirname(path))  # imports Scapy: 30 MB
        print(count, transfers, hot_path_build().replace(" ", "_"), lua, *RUDP_FIELDS)
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packets", type=int, default=300_000)
    parser.add_argument("--sessions", type=int, default=1250, help="RUDP transfers, about.")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--chunk",
        type=int,
        default=ORIGINAL_CHUNK_SIZE,
        help=f"RUDP chunk size of the transfers (the original's; stacklab's own is {STACKLAB_DEFAULT_CHUNK}).",
    )
    parser.add_argument("--markdown", action="store_true", help="Print the tables as Markdown.")
    args = parser.parse_args(argv)
    if args.packets < 1000 or args.sessions < 1 or args.repeat < 1:
        parser.error("need --packets >= 1000, --sessions >= 1 and --repeat >= 1")
    missing = [tool for tool in ("tshark", "capinfos") if shutil.which(tool) is None]
    if missing:
        parser.error(f"{' and '.join(missing)} not found (scripts/ensure-tools.sh installs them)")
    stacklab = [sys.executable, "-m", "stacklab"]
    pure = [sys.executable, "-c", _PURE_RUNNER]
    with tempfile.TemporaryDirectory(prefix="stacklab-bench-") as tmp:
        env_dir = os.path.join(tmp, "wireshark")
        os.mkdir(env_dir)
        os.environ["WIRESHARK_CONFIG_DIR"] = env_dir
        path = os.path.join(tmp, "bench.pcap")
        t = time.perf_counter()
        child = subprocess.run(
            [sys.executable, __file__, "--generate", path]
            + [str(v) for v in (args.packets, args.sessions, args.seed, args.chunk)],
            capture_output=True,
            text=True,
            check=True,
        )
        words = child.stdout.split()
        count, transfers, build, lua = int(words[0]), int(words[1]), words[2], words[3]
        build = build.replace("_", " ")
        mb = os.path.getsize(path) / 1e6
        print(f"stacklab's hot path: {build}", file=sys.stderr)
        print(
            f"generated {count} packets, {transfers} RUDP transfers ({mb:.0f} MB) "
            f"in {time.perf_counter() - t:.1f} s",
            file=sys.stderr,
        )
        tshark = ["tshark", "-n", "-r", path, "-X", f"lua_script:{lua}", "-Y", "slrudp"]
        tshark += ["-T", "fields"]
        for field in words[4:]:
            tshark += ["-e", field]
        tools = [
            Tool("stacklab verify --json", [*stacklab, "verify", "--json", path], []),
            Tool("stacklab -q verify", [*stacklab, "-q", "verify", path], []),
            Tool("stacklab verify --json, pure Python", [*pure, "verify", "--json", path], []),
            Tool("tshark with the generated dissector", tshark, []),
            Tool("capinfos", ["capinfos", path], []),
            Tool("capinfos -c", ["capinfos", "-c", path], []),
        ]
        for _ in range(args.repeat):  # interleaved, so that all see the same machine load
            for tool in tools:
                tool.runs.append(run_child(tool.cmd))
    for tool in tools:
        codes = {r.exit_code for r in tool.runs}
        if codes != {0}:
            print(f"warning: {tool.name} exited {sorted(codes)}", file=sys.stderr)
    floor = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"{count:,} packets, {transfers:,} RUDP transfers, {mb:.0f} MB; median of {args.repeat} "
        f"runs; hot path {build}; memory floor (the bench itself) {floor:.0f} MB"
    )
    print()
    print(_tools_table(tools, args.markdown))
    print()
    print(_targets_table(tools, args.markdown))
    return 0


def _targets(tools: list[Tool]) -> list[tuple[str, str, bool]]:
    """(target, measured, met) for each of verify's targets."""
    json_run, _, pure, tshark, capinfos, count_only = tools
    speed = tshark.wall / json_run.wall
    slower = json_run.wall / capinfos.wall
    slower_count = json_run.wall / count_only.wall
    pure_ratio = pure.wall / json_run.wall
    return [
        ("verify --json >= 20x faster than tshark", f"{speed:.1f}x", speed >= 20),
        ("verify --json peak memory <= 80 MB", f"{json_run.mb:.0f} MB", json_run.mb <= 80),
        ("verify --json within 4x of capinfos", f"{slower:.2f}x", slower <= 4),
        ("verify --json within 4x of capinfos -c", f"{slower_count:.2f}x", slower_count <= 4),
        ("pure Python within 2x of compiled", f"{pure_ratio:.2f}x", pure_ratio <= 2),
    ]


def _tools_table(tools: list[Tool], markdown: bool) -> str:
    tshark = tools[3]
    rows = [
        [
            t.name,
            f"{t.wall:.2f}",
            " ".join(f"{r.wall:.2f}" for r in t.runs),
            f"{t.mb:.0f}",
            f"{tshark.wall / t.wall:.1f}x",
        ]
        for t in tools
    ]
    return _table(["run", "median s", "runs (s)", "peak MB", "vs tshark"], rows, markdown)


def _targets_table(tools: list[Tool], markdown: bool) -> str:
    rows = [[name, value, "PASS" if met else "MISS"] for name, value, met in _targets(tools)]
    return _table(["target", "measured", ""], rows, markdown)


def _table(names: list[str], rows: list[list[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in [names, *rows]) for i in range(len(names))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in [names, *rows]
    )


if __name__ == "__main__":
    raise SystemExit(main())
