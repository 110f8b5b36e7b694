#!/usr/bin/env python3
"""`python scripts/publisher.py`: upload images as requests, or download finished requests.

A thin entry point that keeps the path users know; the logic is in tools/publisher.py.
"""
import sys

from pero_worker.tools.publisher import main

if __name__ == "__main__":
    sys.exit(main())
