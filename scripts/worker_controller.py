#!/usr/bin/env python3
"""`python scripts/worker_controller.py`: workers' state, queues, moving and stopping workers.

A thin entry point that keeps the path users know; the logic is in tools/worker_control.py.
"""
import sys

from pero_worker.tools.worker_control import main

if __name__ == "__main__":
    sys.exit(main())
