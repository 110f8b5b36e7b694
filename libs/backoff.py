"""Capped, jittered exponential backoff: how long to wait before the next attempt at reaching a service.

Why capped low: an outage ends at an unknown moment and the daemon should notice
within about one cap (targets: a worker consumes again <= 2 s after the broker is back, a
stage is ready <= 5 s after the SFTP server is back).  Why jittered: after a broker
restart every worker retries; spreading them keeps them from arriving in lockstep.

The object is a small state machine that reads no clock and does no I/O (the random
source is injectable), so callers keep their own loops (event loops, threads) and the
delays are tested directly.
"""
from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """delay() grows initial, initial*factor, ... up to cap; each delay is drawn from [d*(1-jitter), d]."""
    initial: float = 0.2
    cap: float = 1.5
    factor: float = 2.0
    jitter: float = 0.3
    random: Callable[[], float] = field(default=random.random, repr=False)
    attempts: int = 0

    def __post_init__(self) -> None:
        if not (0 < self.initial <= self.cap) or self.factor < 1 or not (0 <= self.jitter < 1):
            raise ValueError(f"bad backoff parameters: {self!r}")

    def ceiling(self) -> float:
        """The un-jittered delay of the next attempt."""
        return min(self.cap, self.initial * self.factor ** min(self.attempts, 64))

    def delay(self) -> float:
        """The wait before the next attempt (and count this attempt)."""
        ceiling = self.ceiling()
        self.attempts += 1
        return ceiling * (1.0 - self.jitter * self.random())

    def reset(self) -> None:
        """The service answered: the next failure starts from `initial` again."""
        self.attempts = 0


__all__ = ["Backoff"]
