#!/usr/bin/env python3
"""`python scripts/dead_letters.py`: list, show, replay, purge and export dead letters.

A thin entry point that keeps the path users know; the logic is in tools/dead_letters.py.
"""
import sys

from pero_worker.tools.dead_letters import main

if __name__ == "__main__":
    sys.exit(main())
