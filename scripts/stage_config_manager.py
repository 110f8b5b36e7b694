#!/usr/bin/env python3
"""`python scripts/stage_config_manager.py`: create, list, show and delete processing stages.

A thin entry point that keeps the path users know; the logic is in tools/stage_config.py.
"""
import sys

from pero_worker.tools.stage_config import main

if __name__ == "__main__":
    sys.exit(main())
