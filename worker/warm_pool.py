"""Warm-model pool: the processors of recently used stages stay loaded, so switching back costs no reload.

A worker that the watchdog moves A -> B -> A would otherwise close A's model
and load it again (unpack, build the network, move it to the GPU).  With a
pool, the processor of the stage it leaves is kept, keyed by (stage, config
version), and taken back when that stage and version are wanted again.  The
pool holds at most `max_models` processors and at most `max_bytes` of their
model memory (`memory_bytes`); the least recently used go first.  A new
version of a stage makes its kept processors stale: they are closed.

Touched only by the processing thread (stage set-up jobs run there), so it has
no lock.  Closing is the caller's business: `put` and `take` return what must
be closed.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class WarmSettings:
    max_models: int = 0            # 0: no pool, a processor is closed when its stage is left
    max_bytes: int | None = None   # None: no memory budget beyond max_models

    @property
    def enabled(self) -> bool:
        return self.max_models > 0


def memory_bytes(processor: Any) -> int:
    """What a processor says its models take (`memory_bytes()`), 0 for one that does not say."""
    measure = getattr(processor, "memory_bytes", None)
    if measure is None:
        return 0
    try:
        return max(0, int(measure()))
    except Exception:   # a measurement must never stop a stage switch
        return 0


class WarmPool:
    def __init__(self, settings: WarmSettings) -> None:
        self.settings = settings
        self._entries: OrderedDict[tuple[str, str], tuple[Any, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def total_bytes(self) -> int:
        return sum(size for _processor, size in self._entries.values())

    def kept(self) -> list[tuple[str, str]]:
        """(stage, version) of the kept processors, least recently used first."""
        return list(self._entries)

    def put(self, stage: str, version: str, processor: Any, size: int) -> list[Any]:
        """Keep a processor; returns the processors to close (evicted ones, or this one if it cannot be kept)."""
        if not self.settings.enabled:
            return [processor]
        closing = self._drop_stage(stage, keep_version=None)
        self._entries[(stage, version)] = (processor, size)
        limit = self.settings.max_bytes
        while self._entries and (len(self._entries) > self.settings.max_models
                                 or (limit is not None and self.total_bytes > limit)):
            _key, (evicted, _size) = self._entries.popitem(last=False)
            closing.append(evicted)
        return closing

    def take(self, stage: str, version: str) -> tuple[Any | None, list[Any]]:
        """(the kept processor of this stage and version or None, stale processors of the stage to close)."""
        entry = self._entries.pop((stage, version), None)
        stale = self._drop_stage(stage, keep_version=version)
        return (entry[0] if entry is not None else None), stale

    def drain(self) -> list[Any]:
        """Every kept processor (to close them all)."""
        processors = [processor for processor, _size in self._entries.values()]
        self._entries.clear()
        return processors

    def _drop_stage(self, stage: str, keep_version: str | None) -> list[Any]:
        dropped = []
        for key in [key for key in self._entries if key[0] == stage and key[1] != keep_version]:
            dropped.append(self._entries.pop(key)[0])
        return dropped


__all__ = ["WarmPool", "WarmSettings", "memory_bytes"]
