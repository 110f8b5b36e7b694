"""Cross-page batching of text lines for the line-OCR network: pure planning, no torch.

pero-ocr's line engine reads one page at a time: it sorts the page's lines by
width, widest first, and cuts them into batches of at most `max_pixels`
padded pixels (a line is padded to the widest line of its batch, rounded up to
32 px).  On a GPU a page of ~50 lines fills few batches, so the GPU idles while
the CPU crops the next page.  Here the lines of several pages share batches:

* `plan_batches` groups the lines of several pages by width, with the same
  rule as pero-ocr, plus a bound on padding: a line joins a batch only when the
  batch's width is at most `(1 + max_padding)` times its own, so narrow lines
  of one page do not ride along in the wide batches of another.
* `scatter` maps the batches' outputs back to each page, in the page's line
  order.

The network's output for a line depends on how far it is padded (the
recurrent layers run over the padding), so a line's logits equal pero-ocr's
exactly only when it is padded to the same width; `plan_batches` with one
page, pero-ocr's `max_pixels` and unbounded padding reproduces pero-ocr's own
batches, which is what the equivalence test relies on.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

WIDTH_STEP = 32          # pero-ocr rounds the padded width up to a multiple of this
PERO_OCR_MAX_PIXELS = 480 * 8   # pero-ocr's default: 480 px per line x batch size 8
UNBOUNDED = math.inf

T = TypeVar("T")


@dataclass(frozen=True)
class LineRef:
    page: int    # index of the page in the group
    line: int    # index of the line in the page's line order
    width: int   # crop width in pixels


@dataclass(frozen=True)
class Batch:
    width: int                    # padded content width (multiple of WIDTH_STEP), without the engine's margins
    lines: tuple[LineRef, ...]

    @property
    def padded_pixels(self) -> int:
        return self.width * len(self.lines)

    @property
    def content_pixels(self) -> int:
        return sum(ref.width for ref in self.lines)


def padded_width(width: int) -> int:
    """The width pero-ocr pads a batch to whose widest line is `width` pixels (pure)."""
    return max(WIDTH_STEP, int(math.ceil(width / WIDTH_STEP)) * WIDTH_STEP)


def plan_batches(widths: Sequence[Sequence[int]], *, max_pixels: int = PERO_OCR_MAX_PIXELS,
                 max_padding: float = UNBOUNDED, max_lines: int | None = None) -> list[Batch]:
    """Batches for the lines of several pages; `widths[p][i]` is the width of line i of page p (pure).

    Lines are taken widest first (ties in page order, then line order, as pero-ocr's stable sort does
    for one page).  A batch holds at most `max_pixels // width` lines (at least one) and at most
    `max_lines`; a line joins only when `batch width <= (1 + max_padding) * line width`.
    """
    if max_pixels <= 0:
        raise ValueError("max_pixels must be positive")
    if max_padding < 0:
        raise ValueError("max_padding must not be negative")
    order = sorted((LineRef(page, line, int(width)) for page, row in enumerate(widths)
                    for line, width in enumerate(row)), key=lambda ref: -ref.width)
    batches: list[Batch] = []
    start = 0
    while start < len(order):
        width = padded_width(order[start].width)
        capacity = max(1, max_pixels // width)
        if max_lines is not None:
            capacity = min(capacity, max(1, max_lines))
        end = start + 1
        while end < len(order) and end - start < capacity and _fits(width, order[end].width, max_padding):
            end += 1
        batches.append(Batch(width, tuple(order[start:end])))
        start = end
    return batches


def _fits(batch_width: int, line_width: int, max_padding: float) -> bool:
    return max_padding == UNBOUNDED or batch_width <= (1 + max_padding) * line_width


def scatter(batches: Sequence[Batch], outputs: Sequence[Sequence[T] | None], page_sizes: Sequence[int]) \
        -> list[list[T | None]]:
    """Per page, the outputs of its lines in line order; `outputs[b][k]` belongs to `batches[b].lines[k]` (pure).

    `outputs[b]` is None for a batch that failed: its lines stay None (the caller re-reads those pages).
    Raises ValueError when the outputs do not cover every line exactly once (a bug, never bad input)."""
    pages: list[list[T | None]] = [[None] * size for size in page_sizes]
    filled = 0
    for batch, batch_outputs in zip(batches, outputs, strict=True):
        if batch_outputs is None:
            filled += len(batch.lines)
            continue
        if len(batch_outputs) != len(batch.lines):
            raise ValueError(f"a batch of {len(batch.lines)} lines has {len(batch_outputs)} outputs")
        for ref, value in zip(batch.lines, batch_outputs):
            if pages[ref.page][ref.line] is not None:
                raise ValueError(f"line {ref.line} of page {ref.page} is in two batches")
            pages[ref.page][ref.line] = value
            filled += 1
    if filled != sum(page_sizes):
        raise ValueError(f"{sum(page_sizes) - filled} lines have no output")
    return pages


def padding_ratio(batches: Sequence[Batch]) -> float:
    """Padded pixels per content pixel over all batches, minus one (0.0 = no padding) (pure)."""
    content = sum(batch.content_pixels for batch in batches)
    if content == 0:
        return 0.0
    return sum(batch.padded_pixels for batch in batches) / content - 1.0


__all__ = ["Batch", "LineRef", "plan_batches", "scatter", "padded_width", "padding_ratio", "PERO_OCR_MAX_PIXELS",
           "WIDTH_STEP", "UNBOUNDED"]
