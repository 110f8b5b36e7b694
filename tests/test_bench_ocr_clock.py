"""bench/ocr_throughput.py's worker clock: pages of the warm-up step never count inside the window.

A batching worker stamps every request of a step with the step's start and stores them one by one, so the
warm-up step's pages end milliseconds apart; counting them inside the window made one run read 3.5 pages/s on
a 2-core machine that reads ~2.
"""
from __future__ import annotations

import pytest

from pero_worker.bench.ocr_throughput import BenchFailure, worker_rate


@pytest.mark.parametrize("spans, expected", [
    # one page a step: warm-up page, then 4 pages of 0.5 s
    ([(0, 9.0), (9.0, 9.5), (9.5, 10.0), (10.0, 10.5), (10.5, 11.0)], (2.0, 4, 2.0)),
    # a warm-up step of 3 pages ending 10 ms apart, then two steps of 2 pages (1 s each)
    ([(0, 10.0), (0, 10.01), (0, 10.02), (10.02, 11.0), (10.02, 11.01), (11.01, 12.0), (11.01, 12.02)],
     (2.0, 4, 2.0)),
    # arrival order does not matter
    ([(11.01, 12.02), (0, 10.02), (10.02, 11.0), (0, 10.0)], (2 / 2.0, 2, 2.0)),
])
def test_worker_rate(spans, expected):
    rate, counted, window = worker_rate(spans)
    assert (round(rate, 6), counted, round(window, 6)) == expected


@pytest.mark.parametrize("spans", [[(0, 5.0), (0, 5.01)], [(0, 5.0), (1.0, 5.0)]])
def test_no_window_is_a_failure_not_a_figure(spans):
    with pytest.raises(BenchFailure):
        worker_rate(spans)
