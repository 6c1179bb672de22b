"""Benchmark ``stacklab verify`` against tshark with the generated Lua dissector.

For each size (250k, 500k, 1M packets by default) a synthetic capture of
many interleaved RUDP transfers with loss, plus unrelated noise and some
DHCP/DNS, is written to a temporary directory.  Then, in the same run:

* ``stacklab verify -q FILE`` (the whole analysis: sessions, checks, output;
  on four cores or more, captures of 32 MB or more are shared between two
  processes, see ``--jobs``);
* ``tshark -r FILE -X lua_script:stacklab.lua -Y slrudp -T fields -e ...``
  extracting the RUDP fields the checks need (frame number, time, addresses,
  ports, seq, ack, flag, length, payload).

It says first whether stacklab's hot path runs compiled (the normal install)
or as Python source (no C compiler, or ``STACKLAB_PURE=1``).

Each is run ``--repeat`` times; the table shows the median wall time, the
speed-up and the peak resident memory of each child process
(``wait4``'s ``ru_maxrss``: the largest process, helpers included) and the
CPU time of the child and its helpers.  Usage::

    python bench/verify_bench.py [--sizes 250000,500000,1000000] [--repeat 3] [--markdown]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

from stacklab.analysis.synth import CaptureWriter, benchmark_stream
from stacklab.analysis.tshark_engine import RUDP_FIELDS, write_dissector
from stacklab.wire import ORIGINAL_CHUNK_SIZE, STACKLAB_DEFAULT_CHUNK, Ports


@dataclass
class Run:
    wall: float
    cpu: float
    max_rss_mb: float
    exit_code: int


def run_child(cmd: list[str]) -> Run:
    """Run ``cmd`` with output discarded; measure wall time, CPU time and peak memory."""
    start = time.perf_counter()
    with open(os.devnull, "wb") as null:
        proc = subprocess.Popen(cmd, stdout=null, stderr=null)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    return Run(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, proc.returncode)


def hot_path_build() -> str:
    """Whether the capture scan and tracker run compiled (see setup.py) or as Python."""
    from stacklab.analysis import rudp, scan

    files = (str(scan.__file__), str(rudp.__file__))
    return "Python source" if any(f.endswith(".py") for f in files) else "compiled with mypyc"


def generate(path: str, size: int, seed: int, chunk: int) -> int:
    with CaptureWriter(path, fmt="pcap") as writer:
        writer.write_all(benchmark_stream(size, seed=seed, chunk_size=chunk))
        return writer.count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="250000,500000,1000000")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--chunk",
        type=int,
        default=ORIGINAL_CHUNK_SIZE,
        help=f"RUDP chunk size of the transfers (the original's; stacklab's own is {STACKLAB_DEFAULT_CHUNK}).",
    )
    parser.add_argument("--markdown", action="store_true", help="Print the table as Markdown.")
    parser.add_argument("--jobs", type=int, help="Passed to stacklab verify --jobs.")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"stacklab's hot path: {hot_path_build()}", file=sys.stderr)
    stacklab = [sys.executable, "-m", "stacklab", "-q", "verify"]
    if args.jobs is not None:
        stacklab += ["--jobs", str(args.jobs)]
    rows = []
    with tempfile.TemporaryDirectory(prefix="stacklab-bench-") as tmp:
        lua = write_dissector(Ports(), tmp)
        env_dir = os.path.join(tmp, "wireshark")
        os.mkdir(env_dir)
        os.environ["WIRESHARK_CONFIG_DIR"] = env_dir
        for size in sizes:
            path = os.path.join(tmp, f"bench-{size}.pcap")
            t = time.perf_counter()
            count = generate(path, size, args.seed, args.chunk)
            mb = os.path.getsize(path) / 1e6
            print(
                f"generated {count} packets ({mb:.0f} MB) in {time.perf_counter() - t:.1f} s",
                file=sys.stderr,
            )
            tshark = ["tshark", "-n", "-r", path, "-X", f"lua_script:{lua}", "-Y", "slrudp"]
            tshark += ["-T", "fields"]
            for field in RUDP_FIELDS:
                tshark += ["-e", field]
            ours: list[Run] = []
            theirs: list[Run] = []
            for _ in range(args.repeat):  # interleaved, so both see the same machine load
                ours.append(run_child([*stacklab, path]))
                theirs.append(run_child(tshark))
            if any(r.exit_code != 0 for r in ours):
                print(
                    f"warning: stacklab verify exited {ours[0].exit_code} on {path}",
                    file=sys.stderr,
                )
            row = (
                count,
                statistics.median(r.wall for r in ours),
                statistics.median(r.wall for r in theirs),
                statistics.median(r.cpu for r in ours),
                statistics.median(r.cpu for r in theirs),
                max(r.max_rss_mb for r in ours),
                max(r.max_rss_mb for r in theirs),
            )
            rows.append(row)
            print(_format_row(row, args.markdown, header=len(rows) == 1), flush=True)
            os.unlink(path)
    return 0


def _format_row(row: tuple[float, ...], markdown: bool, header: bool) -> str:
    count, ours, theirs, ours_cpu, theirs_cpu, ours_mb, theirs_mb = row
    cells = [
        f"{int(count):,}",
        f"{ours:.2f}",
        f"{theirs:.2f}",
        f"{theirs / ours:.1f}x",
        f"{ours_cpu:.2f}",
        f"{theirs_cpu:.2f}",
        f"{theirs_cpu / ours_cpu:.1f}x",
        f"{ours_mb:.0f}",
        f"{theirs_mb:.0f}",
    ]
    names = [
        "packets",
        "stacklab s",
        "tshark s",
        "speed-up",
        "stacklab cpu s",
        "tshark cpu s",
        "cpu speed-up",
        "stacklab MB",
        "tshark MB",
    ]
    if markdown:
        line = "| " + " | ".join(cells) + " |"
        if header:
            return "| " + " | ".join(names) + " |\n|" + "---|" * len(names) + "\n" + line
        return line
    line = "  ".join(f"{c:>14}" for c in cells)
    if header:
        return "  ".join(f"{n:>14}" for n in names) + "\n" + line
    return line


if __name__ == "__main__":
    raise SystemExit(main())
