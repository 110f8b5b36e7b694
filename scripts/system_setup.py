#!/usr/bin/env python3
"""`python scripts/system_setup.py`: generate and start a secure deployment of the core services.

A thin entry point that keeps the path users know; the logic is in tools/system_setup.py.
"""
import sys

from pero_worker.tools.system_setup import main

if __name__ == "__main__":
    sys.exit(main())
