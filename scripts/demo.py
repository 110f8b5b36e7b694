#!/usr/bin/env python3
"""`python scripts/demo.py`: the end-to-end demo on the local services (development).

A thin entry point that keeps the path users know; the logic is in dev/demo.py.
"""
import sys

from pero_worker.dev.demo import main

if __name__ == "__main__":
    sys.exit(main())
