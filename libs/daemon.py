"""What the three daemons (worker, watchdog, log daemon) share: logging set-up, signals and stopping, main's guard.

One shape for all of them, so that an operator reads the same log format and
gets the same exit codes (libs/exit_codes.py) whichever daemon it is:

    def main(argv=None) -> int:
        try:
            settings = build_settings(build_parser().parse_args(argv))
        except ConfigError as error:
            return configuration_error(PROG, error)            # one line, exit 2
        setup_logging("WATCHDOG", settings.debug)
        stop = StopRequest.on_signals()                        # SIGTERM, SIGINT
        return run_guarded(log, lambda: Watchdog(settings, stop).run())

Signals: the handler only records the reason and sets an Event (no I/O, no
locks held across calls), then runs the callbacks registered with `on_stop`
(e.g. cancel a kazoo election); loops check `stop.requested` or wait on it.
"""
from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from collections.abc import Callable

from pero_worker.libs.exit_codes import ExitCode

# The transport libraries report reconnects and failures in their own words, with tracebacks; our clients
# (libs/zk.py, libs/mq.py, libs/sftp.py) already say the same in one line that names the service.
QUIET_LIBRARIES = {"kazoo": logging.ERROR, "pika": logging.CRITICAL, "paramiko": logging.WARNING,
                   "urllib3": logging.WARNING}


def setup_logging(tag: str, debug: bool) -> None:
    """One format for every daemon, UTC timestamps, libraries quiet unless --debug."""
    handler = logging.StreamHandler(sys.stderr)
    formatter = logging.Formatter(f"%(asctime)s {tag} %(levelname)s %(name)s: %(message)s")
    formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    for name, level in QUIET_LIBRARIES.items():
        logging.getLogger(name).setLevel(logging.NOTSET if debug else level)


class StopRequest:
    """Why and whether a daemon should stop; safe to set from a signal handler or any thread."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self._event = threading.Event()
        self._callbacks: list[Callable[[], None]] = []

    @classmethod
    def on_signals(cls) -> StopRequest:
        """A StopRequest set by SIGTERM and SIGINT (call from the main thread)."""
        stop = cls()
        signal.signal(signal.SIGTERM, stop._on_signal)
        signal.signal(signal.SIGINT, stop._on_signal)
        return stop

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.stop(f"signal {signal.Signals(signum).name}")

    def stop(self, reason: str) -> None:
        """Ask to stop (the first reason is kept); runs the on_stop callbacks."""
        if self.reason is None:
            self.reason = reason
        self._event.set()
        for callback in list(self._callbacks):
            try:
                callback()
            except Exception:   # a callback that fails must not hide the stop itself
                logging.getLogger(__name__).debug("stop callback failed", exc_info=True)

    def on_stop(self, callback: Callable[[], None]) -> None:
        """callback() when the stop is requested (at once if it already was); must not block."""
        self._callbacks.append(callback)
        if self.requested:
            callback()

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float | None) -> bool:
        """Sleep up to `timeout` s, waking at once on a stop; True when a stop was requested."""
        return self._event.wait(timeout)


def configuration_error(prog: str, error: BaseException) -> int:
    """A configuration that cannot be used: one line on stderr (logging may not be set up yet), exit 2."""
    print(f"{prog}: error: {error}", file=sys.stderr)
    return ExitCode.USAGE


def run_guarded(log: logging.Logger, body: Callable[[], int]) -> int:
    """Run a daemon's body; an unexpected exception (a bug) is logged with its traceback and exits 1."""
    try:
        return int(body())
    except Exception:
        log.exception("stopped by an unexpected error")
        return ExitCode.FAILED


__all__ = ["StopRequest", "configuration_error", "run_guarded", "setup_logging"]
