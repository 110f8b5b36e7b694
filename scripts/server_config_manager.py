#!/usr/bin/env python3
"""`python scripts/server_config_manager.py`: the RabbitMQ, monitoring and SFTP server lists in ZooKeeper.

A thin entry point that keeps the path users know; the logic is in tools/server_config.py.
"""
import sys

from pero_worker.tools.server_config import main

if __name__ == "__main__":
    sys.exit(main())
