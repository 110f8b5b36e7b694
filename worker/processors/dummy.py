"""DUMMY processor: simulates processing time without touching the request (docs/protocol.md §5).

The time for one request is `len(image bytes) * TIME_SCALE` plus a random
offset drawn uniformly from TIME_DIFF_MIN..TIME_DIFF_MAX, or from
-TIME_DELTA..+TIME_DELTA when no TIME_DIFF_* key is given; never negative.
TIME_SCALE defaults to 1 as in the original system.  With TIME_SCALE = 0 and
no offset the processor returns at once without looking at the request, which
is what throughput benchmarks of the plumbing need.
"""
from __future__ import annotations

import configparser
import logging
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pero_worker.worker.processors import WORKER_SECTION, ProcessingError, StageConfigError
from pero_worker.worker.processors.images import image_format

if TYPE_CHECKING:
    from pero_worker.libs.message_pb2 import Data, ProcessingRequest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DummySettings:
    time_scale: float = 1.0      # seconds per byte of the input image
    offset_min: float = 0.0      # seconds added, drawn uniformly from offset_min..offset_max
    offset_max: float = 0.0

    @property
    def instant(self) -> bool:
        return self.time_scale == 0 and self.offset_min == 0 and self.offset_max == 0


def _number(section: Mapping[str, str], key: str) -> float | None:
    raw = section.get(key)
    if raw is None or not raw.strip():
        return None
    try:
        value = float(raw)
    except ValueError:
        raise StageConfigError(f"[{WORKER_SECTION}] {key} must be a number, not {raw.strip()!r}") from None
    if not math.isfinite(value):
        raise StageConfigError(f"[{WORKER_SECTION}] {key} must be a finite number, not {raw.strip()!r}")
    return value


def dummy_settings(section: Mapping[str, str]) -> DummySettings:
    """Settings from the [WORKER] section's keys (case-insensitive mapping); StageConfigError when invalid (pure)."""
    scale = _number(section, "TIME_SCALE")
    delta = _number(section, "TIME_DELTA")
    diff_min = _number(section, "TIME_DIFF_MIN")
    diff_max = _number(section, "TIME_DIFF_MAX")
    scale = 1.0 if scale is None else scale
    if scale < 0:
        raise StageConfigError(f"[{WORKER_SECTION}] TIME_SCALE must not be negative ({scale})")
    if diff_min is not None or diff_max is not None:
        low, high = diff_min or 0.0, diff_max or 0.0
    elif delta is not None:
        if delta < 0:
            raise StageConfigError(f"[{WORKER_SECTION}] TIME_DELTA must not be negative ({delta})")
        low, high = -delta, delta
    else:
        low = high = 0.0
    if low > high:
        raise StageConfigError(f"[{WORKER_SECTION}] TIME_DIFF_MIN ({low}) is greater than TIME_DIFF_MAX ({high})")
    return DummySettings(time_scale=scale, offset_min=low, offset_max=high)


def dummy_duration(size: int, settings: DummySettings,
                   uniform: Callable[[float, float], float] = random.uniform) -> float:
    """Seconds to sleep for an input of `size` bytes (pure apart from the injected random draw)."""
    offset = uniform(settings.offset_min, settings.offset_max) if settings.offset_min != settings.offset_max \
        else settings.offset_min
    return max(0.0, size * settings.time_scale + offset)


def input_size(results: Sequence[Data]) -> int:
    """Bytes of the first image (by content), else of the first result; ProcessingError for an empty request."""
    for data in results:
        if image_format(data.content) is not None:
            return len(data.content)
    if not results:
        raise ProcessingError("request has no results: nothing to (pretend to) process")
    return len(results[0].content)


class DummyProcessor:
    def __init__(self, settings: DummySettings) -> None:
        self.settings = settings

    @classmethod
    def from_config(cls, config: configparser.ConfigParser) -> DummyProcessor:
        section = dict(config.items(WORKER_SECTION, raw=True)) if config.has_section(WORKER_SECTION) else {}
        keys = {key.upper(): value for key, value in section.items()}
        processor = cls(dummy_settings(keys))
        # SWITCH_DELAY: seconds the set-up takes, standing in for a model load (benchmarks of stage switching).
        delay = _number(keys, "SWITCH_DELAY")
        if delay is not None:
            if delay < 0:
                raise StageConfigError(f"[{WORKER_SECTION}] SWITCH_DELAY must not be negative ({delay})")
            time.sleep(delay)
        return processor

    def process(self, request: ProcessingRequest) -> None:
        if self.settings.instant:
            return
        size = input_size(request.results)
        seconds = dummy_duration(size, self.settings)
        log.debug("dummy processing of %d bytes: sleeping %.3f s", size, seconds)
        if seconds > 0:
            time.sleep(seconds)

    def close(self) -> None:
        pass
