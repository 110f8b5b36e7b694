#!/usr/bin/env python3
"""`python scripts/local_services.py`: local ZooKeeper, SFTP and RabbitMQ for tests and the demo (development).

A thin entry point that keeps the path users know; the logic is in dev/local_services.py.
"""
import sys

from pero_worker.dev.local_services import main

if __name__ == "__main__":
    sys.exit(main())
