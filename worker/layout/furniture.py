"""Drop caps, running headers, footers and page numbers: the parts of a page that are not body text.

- A *drop cap* (a big initial letter beside the first lines of a paragraph) is
  as tall as several lines: left in the block it was attached to one line and
  spoiled its baseline.  It becomes its own region (PAGE type
  `drop-capital`) read just before its paragraph.
- A *running header* or *footer* is a short line of ordinary-sized text at the
  top or bottom of the page, set apart from everything else by white space.
  Every line of it becomes its own region (type `header` / `footer`, or
  `page-number` for a short one, e.g. "17"), headers read first, footers last,
  whatever the column structure in between.  A title is not a header: it is
  larger than the body text.

All thresholds are in units of the page's text height `h`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

DROP_CAP_MIN = 2.2        # a drop cap is at least this many text heights tall ...
DROP_CAP_MAX = 9.0        # ... and at most this many
FURNITURE_ZONE = 0.15     # headers/footers lie within this fraction of the page height from its edge
FURNITURE_GAP = 1.5       # white space (text heights) that sets them apart from the rest
FURNITURE_WIDTH = 0.6     # each of their lines is at most this fraction of the text width
PAGE_NUMBER_WIDTH = 4.0   # a header/footer line narrower than this (text heights) is a page number


def split_drop_caps(boxes: np.ndarray, blocks: list[np.ndarray], h: float) -> list[tuple[np.ndarray, str | None]]:
    """Blocks in reading order with drop caps taken out as their own block (kind `drop-capital`) just before."""
    out: list[tuple[np.ndarray, str | None]] = []
    for block in blocks:
        cap = _drop_cap(boxes, block, h)
        if cap is None:
            out.append((block, None))
            continue
        out.append((np.array([cap]), "drop-capital"))
        out.append((block[block != cap], None))
    return out


def _drop_cap(boxes: np.ndarray, block: np.ndarray, h: float) -> int | None:
    """The block's drop cap: a tall letter at its top-left with several lines of text to its right."""
    if len(block) < 10:
        return None
    b = boxes[block]
    heights = b[:, 3] - b[:, 1]
    widths = b[:, 2] - b[:, 0]
    top, left = b[:, 1].min(), b[:, 0].min()
    cand = np.flatnonzero((heights >= DROP_CAP_MIN * h) & (heights <= DROP_CAP_MAX * h) & (widths <= 8 * h)
                          & (b[:, 0] <= left + 1.0 * h) & (b[:, 1] <= top + 2.5 * h))
    for k in cand:
        x1, y0, y1 = b[k, 2], b[k, 1], b[k, 3]
        beside = (b[:, 0] >= x1) & (b[:, 0] <= x1 + 3 * h) & (b[:, 1] < y1) & (b[:, 3] > y0)
        beside &= heights < DROP_CAP_MIN * h
        # Letters of at least two lines beside it: their tops spread over more than a line.
        if beside.sum() >= 2 and np.ptp(b[beside, 1]) >= 0.8 * (y1 - y0) / 2:
            return int(block[k])
    return None


def _extent(region: Any) -> tuple[float, float, float, float]:
    p = region.polygon
    return float(p[:, 0].min()), float(p[:, 1].min()), float(p[:, 0].max()), float(p[:, 1].max())


def _line_size(region: Any) -> float:
    return float(np.median([ln.heights[0] + ln.heights[1] for ln in region.lines]))


def label_page_furniture(regions: list, h: float, page_height: int, skew_deg: float = 0.0) -> list:
    """Regions with headers split per line and put first, footers split and put last (kinds set).

    `skew_deg` is the page's skew (lines go down to the right by its tangent): lines of one row
    are told by their height with the skew taken out."""
    if len(regions) < 3:
        return regions
    body_size = float(np.median([ln.heights[0] + ln.heights[1] for r in regions for ln in r.lines]))
    ext = [_extent(r) for r in regions]
    text_width = max(e[2] for e in ext) - min(e[0] for e in ext)
    head = _furniture(regions, ext, h, body_size, page_height, text_width, top=True)
    foot = _furniture(regions, ext, h, body_size, page_height, text_width, top=False) - head
    if not head and not foot:
        return regions
    first = [r for i, r in enumerate(regions) if i in head]
    last = [r for i, r in enumerate(regions) if i in foot]
    middle = [r for i, r in enumerate(regions) if i not in head and i not in foot]
    slope = float(np.tan(np.deg2rad(skew_deg)))
    return _per_line(first, "header", h, slope) + middle + _per_line(last, "footer", h, slope)


def _furniture(regions: list, ext: list, h: float, body_size: float, page_height: int, text_width: float,
               top: bool) -> set[int]:
    """Indices of the regions that form the page's header (top=True) or footer band.

    Short lines only: a running head is a title and a page number, not a justified line of
    body text (the last short paragraph of a page is no footer)."""
    order = sorted(range(len(regions)), key=lambda i: ext[i][1] if top else -ext[i][3])
    chosen: set[int] = set()
    for i in order:
        y0, y1 = ext[i][1], ext[i][3]
        in_zone = y1 <= FURNITURE_ZONE * page_height if top else y0 >= (1 - FURNITURE_ZONE) * page_height
        widths = [float(np.ptp(ln.baseline[:, 0])) for ln in regions[i].lines]
        small = (len(regions[i].lines) <= 2 and _line_size(regions[i]) <= 1.3 * body_size
                 and max(widths) <= FURNITURE_WIDTH * text_width)
        if not (in_zone and small and regions[i].kind is None):
            break
        chosen.add(i)
    if not chosen:
        return chosen
    # Set apart: white space between the band and every other region.
    band = [ext[i] for i in chosen]
    edge = max(e[3] for e in band) if top else min(e[1] for e in band)
    rest = [ext[i] for i in range(len(regions)) if i not in chosen]
    if not rest:
        return set()
    gap = min(e[1] for e in rest) - edge if top else edge - max(e[3] for e in rest)
    return chosen if gap >= FURNITURE_GAP * h else set()


def _per_line(regions: list, kind: str, h: float, slope: float) -> list:
    """One region per line, left to right within each band, short ones as page numbers."""
    out = []
    if regions:
        for line in _rows_left_to_right([ln for r in regions for ln in r.lines], h, slope):
            pts = line.polygon
            rect = np.array([[pts[:, 0].min(), pts[:, 1].min()], [pts[:, 0].max(), pts[:, 1].min()],
                             [pts[:, 0].max(), pts[:, 1].max()], [pts[:, 0].min(), pts[:, 1].max()]])
            width = float(line.baseline[:, 0].max() - line.baseline[:, 0].min())
            out.append(type(regions[0])(polygon=rect, lines=[line],
                                    kind="page-number" if width <= PAGE_NUMBER_WIDTH * h else kind))
    return out


def _rows_left_to_right(lines: list, h: float, slope: float = 0.0) -> list:
    """Lines top to bottom; lines whose baselines (skew taken out) are less than a text height apart
    are one row, read left to right (a running title and its page number)."""
    def level(ln) -> float:
        return float(ln.baseline[:, 1].mean() - slope * ln.baseline[:, 0].mean())

    by_y = sorted(lines, key=level)
    rows: list[list] = []
    for line in by_y:
        if rows and level(line) - level(rows[-1][0]) < h:
            rows[-1].append(line)
        else:
            rows.append([line])
    return [ln for row in rows for ln in sorted(row, key=lambda ln: float(ln.baseline[:, 0].min()))]
