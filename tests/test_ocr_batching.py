"""Cross-page line batching (worker/processors/ocr_batching.py): pure planning, table tests."""
from __future__ import annotations

import random

import pytest

from pero_worker.worker.processors.ocr_batching import (
    PERO_OCR_MAX_PIXELS,
    UNBOUNDED,
    Batch,
    LineRef,
    padded_width,
    padding_ratio,
    plan_batches,
    scatter,
)


def _shape(batches: list[Batch]) -> list[tuple[int, list[tuple[int, int]]]]:
    return [(batch.width, [(ref.page, ref.line) for ref in batch.lines]) for batch in batches]


@pytest.mark.parametrize("width, expected", [(1, 32), (32, 32), (33, 64), (1577, 1600), (0, 32)])
def test_padded_width(width, expected):
    assert padded_width(width) == expected


@pytest.mark.parametrize("widths, kwargs, expected", [
    # one page, pero-ocr's rule: widest first, batch of max_pixels // width lines
    ([[100, 300, 200]], {}, [(320, [(0, 1), (0, 2), (0, 0)])]),
    ([[1600, 1600, 1600]], {}, [(1600, [(0, 0), (0, 1)]), (1600, [(0, 2)])]),
    # a line wider than max_pixels still gets a batch of its own
    ([[5000, 10]], {}, [(5024, [(0, 0)]), (32, [(0, 1)])]),
    # ties: page order, then line order (stable)
    ([[64, 64], [64]], {}, [(64, [(0, 0), (0, 1), (1, 0)])]),
    # two pages share batches
    ([[300, 100], [200]], {}, [(320, [(0, 0), (1, 0), (0, 1)])]),
    # bounded padding keeps narrow lines out of wide batches
    ([[1000, 100], [900]], {"max_padding": 0.25}, [(1024, [(0, 0), (1, 0)]), (128, [(0, 1)])]),
    ([[1000, 100], [900]], {"max_padding": 0.0}, [(1024, [(0, 0)]), (928, [(1, 0)]), (128, [(0, 1)])]),
    # max_lines caps a batch of narrow lines
    ([[10] * 5], {"max_lines": 2}, [(32, [(0, 0), (0, 1)]), (32, [(0, 2), (0, 3)]), (32, [(0, 4)])]),
    # empty pages and no pages
    ([[], [50], []], {}, [(64, [(1, 0)])]),
    ([], {}, []),
])
def test_plan_batches_table(widths, kwargs, expected):
    assert _shape(plan_batches(widths, **kwargs)) == expected


def _pero_ocr_batches(widths: list[int], max_pixels: int = PERO_OCR_MAX_PIXELS) -> list[tuple[int, list[int]]]:
    """pero-ocr 0.7's BaseEngineLineOCR.process_lines batching rule, restated for the comparison."""
    ids = [index for index, _ in sorted(enumerate(widths), key=lambda item: -item[1])]
    batches = []
    while ids:
        width = padded_width(widths[ids[0]])
        size = max(1, max_pixels // width)
        batches.append((width, ids[:size]))
        ids = ids[size:]
    return batches


@pytest.mark.parametrize("seed", range(20))
def test_one_page_unbounded_is_pero_ocr_batching(seed):
    rng = random.Random(seed)
    widths = [rng.choice([rng.randint(20, 1800), 640, 641]) for _ in range(rng.randint(1, 90))]
    got = [(batch.width, [ref.line for ref in batch.lines]) for batch in plan_batches([widths])]
    assert got == _pero_ocr_batches(widths)


@pytest.mark.parametrize("seed", range(20))
def test_every_line_once_within_bounds(seed):
    rng = random.Random(seed)
    pages = [[rng.randint(5, 2500) for _ in range(rng.randint(0, 60))] for _ in range(rng.randint(1, 8))]
    max_pixels, max_padding = rng.choice([3840, 30000, 120000]), rng.choice([0.0, 0.1, 0.5, UNBOUNDED])
    batches = plan_batches(pages, max_pixels=max_pixels, max_padding=max_padding)
    seen = sorted((ref.page, ref.line) for batch in batches for ref in batch.lines)
    assert seen == sorted((p, i) for p, row in enumerate(pages) for i in range(len(row)))
    for batch in batches:
        assert batch.width == padded_width(max(ref.width for ref in batch.lines))
        assert len(batch.lines) == 1 or batch.padded_pixels <= max_pixels
        if max_padding != UNBOUNDED:
            assert all(batch.width <= (1 + max_padding) * ref.width for ref in batch.lines[1:])


def test_cross_page_batches_are_fewer_than_per_page():
    pages = [[1500] * 40, [1480] * 30, [700] * 70]
    together = plan_batches(pages, max_pixels=1600 * 32, max_padding=0.25)
    apart = sum(len(plan_batches([page])) for page in pages)
    assert len(together) < apart / 4
    assert padding_ratio(together) < 0.1


def test_scatter_returns_each_page_in_line_order():
    pages = [[300, 100, 200], [], [250]]
    batches = plan_batches(pages, max_pixels=700)
    outputs = [[f"p{ref.page}l{ref.line}" for ref in batch.lines] for batch in batches]
    assert scatter(batches, outputs, [len(page) for page in pages]) == [["p0l0", "p0l1", "p0l2"], [], ["p2l0"]]


@pytest.mark.parametrize("batches, outputs, sizes, message", [
    ([Batch(32, (LineRef(0, 0, 10),))], [[]], [1], "has 0 outputs"),
    ([Batch(32, (LineRef(0, 0, 10),)), Batch(32, (LineRef(0, 0, 10),))], [["a"], ["b"]], [1], "in two batches"),
    ([Batch(32, (LineRef(0, 0, 10),))], [["a"]], [2], "1 lines have no output"),
])
def test_scatter_refuses_inconsistent_outputs(batches, outputs, sizes, message):
    with pytest.raises(ValueError, match=message):
        scatter(batches, outputs, sizes)


@pytest.mark.parametrize("kwargs", [{"max_pixels": 0}, {"max_padding": -0.1}])
def test_plan_batches_refuses_bad_limits(kwargs):
    with pytest.raises(ValueError):
        plan_batches([[10]], **kwargs)


def test_scatter_leaves_lines_of_a_failed_batch_empty():
    pages = [[300, 100], [200]]
    batches = plan_batches(pages, max_pixels=320)
    outputs = [None if any(ref.page == 1 for ref in batch.lines) else [ref.line for ref in batch.lines]
               for batch in batches]
    assert _shape(batches) == [(320, [(0, 0)]), (224, [(1, 0)]), (128, [(0, 1)])]
    assert scatter(batches, outputs, [2, 1]) == [[0, 1], [None]]
