#!/usr/bin/env python3
"""`python scripts/console.py`: the operator's web console.

A thin entry point that keeps the path users know; the logic is in console/.
"""
import sys

from pero_worker.console.main import main

if __name__ == "__main__":
    sys.exit(main())
