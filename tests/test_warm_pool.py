"""The warm-model pool (worker/warm_pool.py): which processors stay loaded, which are closed (table tests)."""
from __future__ import annotations

import pytest

from pero_worker.worker.warm_pool import WarmPool, WarmSettings, memory_bytes


class Sized:
    """A processor stand-in that only says how big it is (the pool never calls anything else)."""

    def __init__(self, name: str, size: int | None = None) -> None:
        self.name = name
        self.size = size

    def memory_bytes(self) -> int:
        if self.size is None:
            raise RuntimeError("cannot measure")
        return self.size


def _names(processors) -> list[str]:
    return [p.name for p in processors]


def test_disabled_pool_closes_at_once():
    pool = WarmPool(WarmSettings())
    a = Sized("a")
    assert pool.put("A", "1", a, 10) == [a]
    assert len(pool) == 0
    assert pool.take("A", "1") == (None, [])


@pytest.mark.parametrize("settings, puts, closed, kept", [
    # count limit: least recently used goes first
    (WarmSettings(2), [("A", "1", 10), ("B", "1", 10), ("C", "1", 10)], ["A1"], [("B", "1"), ("C", "1")]),
    # byte budget
    (WarmSettings(5, 25), [("A", "1", 10), ("B", "1", 10), ("C", "1", 10)], ["A1"], [("B", "1"), ("C", "1")]),
    # a processor over the whole budget is not kept
    (WarmSettings(5, 25), [("A", "1", 10), ("B", "1", 30)], ["A1", "B1"], []),
    # a new version of a stage replaces the old one
    (WarmSettings(5), [("A", "1", 10), ("A", "2", 10)], ["A1"], [("A", "2")]),
])
def test_put_table(settings, puts, closed, kept):
    pool = WarmPool(settings)
    got = []
    for stage, version, size in puts:
        got += pool.put(stage, version, Sized(stage + version), size)
    assert _names(got) == closed
    assert pool.kept() == kept


def test_take_returns_the_version_and_drops_stale_ones():
    pool = WarmPool(WarmSettings(5))
    a1, b1 = Sized("a1"), Sized("b1")
    pool.put("A", "1", a1, 1)
    pool.put("B", "1", b1, 1)
    assert pool.take("A", "1") == (a1, [])
    assert pool.kept() == [("B", "1")]
    assert pool.take("B", "2") == (None, [b1])     # B moved on to version 2: version 1 is stale
    assert len(pool) == 0


def test_drain_hands_back_everything():
    pool = WarmPool(WarmSettings(5))
    pool.put("A", "1", Sized("a"), 1)
    pool.put("B", "1", Sized("b"), 2)
    assert pool.total_bytes == 3
    assert _names(pool.drain()) == ["a", "b"]
    assert len(pool) == 0


@pytest.mark.parametrize("processor, expected", [(Sized("x", 123), 123), (Sized("x", None), 0), (object(), 0)])
def test_memory_bytes(processor, expected):
    assert memory_bytes(processor) == expected
