"""RUDP goodput benchmark: RUDP vs the TCP app path vs raw UDP (and aioquic when installed).

The same as ``stacklab bench``; the numbers in the README come from
``stacklab bench`` with its defaults (20 MB, chunk 1400, median of 3).
Usage: ``python bench/rudp_bench.py [--size 20M] [--repeat 3] [--json]``.
"""

from __future__ import annotations

import sys

from stacklab.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
