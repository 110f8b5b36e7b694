#!/usr/bin/env python3
"""`python scripts/stats.py`: per-stage processing times over a download folder.

A thin entry point that keeps the path users know; the logic is in tools/stats.py.
"""
import sys

from pero_worker.tools.stats import main

if __name__ == "__main__":
    sys.exit(main())
