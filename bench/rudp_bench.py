"""RUDP goodput benchmark: the same as ``stacklab bench`` (end to end, in process, originals).

The README's tables come from ``stacklab bench --markdown`` with its
defaults, which ``make bench`` runs.
Usage: ``python bench/rudp_bench.py [--quick] [--size 100M] [--repeat 5] [--json|--markdown]``.
"""

from __future__ import annotations

import sys

from stacklab.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
