"""Log set-up shared by the long-running daemons (watchdog, log daemon).

One format for all of them, UTC timestamps, and the transport libraries kept
quiet unless --debug: they report reconnects and failures in their own words,
with tracebacks, while our clients already say the same thing in one line.
"""
from __future__ import annotations

import logging
import sys
import time


def setup_daemon_logging(tag: str, debug: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    formatter = logging.Formatter(f"%(asctime)s {tag} %(levelname)s %(message)s")
    formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    if not debug:
        # kazoo's connection messages do not name the service; libs/zk.py logs outages and recoveries itself.
        logging.getLogger("kazoo").setLevel(logging.ERROR)
        logging.getLogger("urllib3").setLevel(logging.WARNING)
        logging.getLogger("pika").setLevel(logging.CRITICAL)
