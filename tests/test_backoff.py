"""libs/backoff.py: the delays themselves (pure)."""
from __future__ import annotations

import pytest

from pero_worker.libs.backoff import Backoff


@pytest.mark.parametrize("initial,cap,factor,expected", [
    (0.2, 1.5, 2.0, [0.2, 0.4, 0.8, 1.5, 1.5, 1.5]),
    (0.5, 0.5, 2.0, [0.5, 0.5, 0.5]),
    (0.1, 5.0, 3.0, [0.1, 0.3, 0.9, 2.7, 5.0]),
    (1.0, 4.0, 1.0, [1.0, 1.0, 1.0]),
])
def test_delays_grow_to_the_cap_without_jitter(initial, cap, factor, expected):
    backoff = Backoff(initial=initial, cap=cap, factor=factor, jitter=0.0)
    assert [round(backoff.delay(), 6) for _ in expected] == expected


def test_jitter_stays_within_its_band_and_below_the_cap():
    draws = iter([0.0, 1.0, 0.5] * 10)
    backoff = Backoff(initial=1.0, cap=1.0, jitter=0.3, random=lambda: next(draws))
    assert [round(backoff.delay(), 6) for _ in range(3)] == [1.0, 0.7, 0.85]
    real = Backoff(initial=0.2, cap=1.5, jitter=0.3)
    for _ in range(200):
        assert 0.14 - 1e-9 <= real.delay() <= 1.5


def test_reset_starts_again_from_initial():
    backoff = Backoff(initial=0.2, cap=1.5, jitter=0.0)
    for _ in range(10):
        backoff.delay()
    assert backoff.ceiling() == 1.5
    backoff.reset()
    assert backoff.delay() == 0.2


def test_many_attempts_do_not_overflow():
    backoff = Backoff(initial=0.2, cap=1.5, jitter=0.0, attempts=10_000)
    assert backoff.delay() == 1.5


@pytest.mark.parametrize("kwargs", [dict(initial=0), dict(initial=2, cap=1), dict(factor=0.5), dict(jitter=1.0)])
def test_bad_parameters_are_refused(kwargs):
    with pytest.raises(ValueError):
        Backoff(**kwargs)
