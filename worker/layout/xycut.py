"""Text blocks and their reading order by recursive XY-cut on component boxes.

A node (a set of component boxes) is cut where a whitespace gap crosses it
completely:

1. Column cut first: if a vertical gap at least `col_gap` wide runs through
   the whole node, the node is split into columns, read left to right.
   Pieces narrower than `min_col_width` are not columns (a list's numbers, a
   stray mark): their gap is ignored.
2. Otherwise a row cut (`row_groups`): the node is cut between its lines,
   consecutive lines that share a column structure are joined (so paragraph
   breaks that happen to line up in both columns do not make us read the
   columns band by band), and the other lines are joined back into blocks
   unless a gap of `row_gap` separates them.  A full-width block (a title, a
   caption across columns) has no column gap, so it stops the column flow
   exactly there, even when it is set close above the columns.
3. A node with no gap is a block (a leaf).

Gaps are found on a coverage profile with a small tolerance, so one speck of
noise in a column gap does not hide the gap.  All sizes are in pixels of the
(deskewed) page; the caller derives them from the text height.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class CutParams:
    col_gap: float          # minimum width of a column gap
    row_gap: float          # minimum height of a gap between blocks
    min_col_width: float    # narrower pieces are not columns
    min_col_height: float   # lower nodes are never split into columns (a line's word gaps are not columns)
    tolerance: float        # coverage (summed box extent) still counted as empty
    fine_row_gap: float = 0.0       # gaps between lines: tried when a node has no block gap (see xy_cut)
    short_col_height: float = 0.0   # nodes lower than this need a wider gap ...
    short_col_gap: float = 0.0      # ... this wide (word gaps of justified text line up over a few lines)
    letter_height: float = 0.0      # bands of marks lower than half of this (accents, specks) join the next band


def find_gaps(starts: np.ndarray, ends: np.ndarray, weights: np.ndarray, min_gap: float,
              tolerance: float) -> list[tuple[float, float]]:
    """Interior gaps of a set of intervals: runs where the summed weight of covering intervals
    is at most `tolerance` and that are at least `min_gap` long.  Returns (start, end) pairs."""
    if len(starts) == 0:
        return []
    lo = int(np.floor(starts.min()))
    hi = int(np.ceil(ends.max()))
    n = hi - lo
    if n <= 0:
        return []
    diff = np.zeros(n + 1, dtype=np.float64)
    np.add.at(diff, np.clip(np.floor(starts).astype(int) - lo, 0, n), weights)
    np.add.at(diff, np.clip(np.ceil(ends).astype(int) - lo, 0, n), -weights)
    cover = np.cumsum(diff)[:n]
    empty = cover <= tolerance + 1e-9
    gaps = []
    # Runs of empty cells; leading/trailing runs are margins, not gaps.
    edges = np.flatnonzero(np.diff(np.concatenate([[0], empty.astype(np.int8), [0]])))
    for s, e in zip(edges[::2], edges[1::2]):
        if s == 0 or e == n:
            continue
        if e - s >= min_gap:
            gaps.append((float(lo + s), float(lo + e)))
    return gaps


def _split(boxes: np.ndarray, idx: np.ndarray, cuts: list[tuple[float, float]], axis: int) -> list[np.ndarray]:
    """Split component indices by gap positions along an axis (0 = x, 1 = y), in order."""
    centers = (boxes[idx, axis] + boxes[idx, axis + 2]) / 2.0
    mids = np.array([(a + b) / 2.0 for a, b in cuts])
    which = np.searchsorted(mids, centers)
    return [idx[which == k] for k in range(len(cuts) + 1) if np.any(which == k)]


def column_cuts(boxes: np.ndarray, idx: np.ndarray, p: CutParams, any_height: bool = False,
                min_width: float | None = None) -> list[tuple[float, float]]:
    """Column gaps through the whole node, without the ones that would make too narrow columns.

    A node lower than `min_col_height` has none unless `any_height` (used when checking
    whether bands continue each other's columns)."""
    b = boxes[idx]
    height = b[:, 3].max() - b[:, 1].min()
    if height < p.min_col_height and not any_height:
        return []
    gap = max(p.col_gap, p.short_col_gap) if height < p.short_col_height else p.col_gap
    cuts = find_gaps(b[:, 0], b[:, 2], b[:, 3] - b[:, 1], gap, p.tolerance)
    left, right = float(b[:, 0].min()), float(b[:, 2].max())
    while cuts:
        bounds = [left] + [c for g in cuts for c in g] + [right]
        widths = [bounds[2 * k + 1] - bounds[2 * k] for k in range(len(cuts) + 1)]
        k = int(np.argmin(widths))
        if widths[k] >= (p.min_col_width if min_width is None else min_width):
            break
        # Drop the narrower of the gaps next to the too-narrow piece.
        if k == 0:
            drop = 0
        elif k == len(cuts):
            drop = len(cuts) - 1
        else:
            g_left, g_right = cuts[k - 1], cuts[k]
            drop = k - 1 if (g_left[1] - g_left[0]) <= (g_right[1] - g_right[0]) else k
        cuts = cuts[:drop] + cuts[drop + 1:]
    return cuts


def continues_columns(boxes: np.ndarray, group: np.ndarray, band: np.ndarray, p: CutParams) -> bool:
    """Whether a band of lines and the group above it are one column flow.

    They are when their union keeps a column gap and each of them either has columns itself
    or looks like a line of one of those columns: inside one column and as wide as the column
    (justified text), or flush with its left or right edge (a paragraph's last or first line).
    A centred byline or heading above the columns fits inside one column too, but is neither
    wide nor flush: it is its own block, read before the columns (not after the first one)."""
    union = np.concatenate([group, band])
    # A one-word last line at the top of a column is a narrow piece: allow it here.
    cuts = column_cuts(boxes, union, p, any_height=True, min_width=p.min_col_width / 3)
    if not cuts:
        return False
    bounds = [float(boxes[union, 0].min())] + [c for g in cuts for c in g] + [float(boxes[union, 2].max())]
    return _fits_columns(boxes, group, bounds, p) and _fits_columns(boxes, band, bounds, p)


def _fits_columns(boxes: np.ndarray, piece: np.ndarray, bounds: list[float], p: CutParams) -> bool:
    if column_cuts(boxes, piece, p, any_height=True, min_width=p.min_col_width / 3):
        return True
    bx0, bx1 = float(boxes[piece, 0].min()), float(boxes[piece, 2].max())
    tol = max(p.tolerance, 1.0)
    for k in range(len(bounds) // 2):
        left, right = bounds[2 * k], bounds[2 * k + 1]
        if bx0 >= left - tol and bx1 <= right + tol:
            lm, rm = bx0 - left, right - bx1
            centred = lm > 2 * tol and rm > 2 * tol and abs(lm - rm) <= 2 * tol
            return not centred
    return False


def _merge_column_bands(boxes: np.ndarray, bands: list[np.ndarray], p: CutParams) -> list[np.ndarray]:
    """Join consecutive bands while they continue each other's columns (a band may hold a line
    of one column only: a paragraph break in the other), unless a very large gap separates them."""
    groups: list[np.ndarray] = []
    node = np.concatenate(bands)
    centre = (boxes[node, 0].min() + boxes[node, 2].max()) / 2.0
    width = boxes[node, 2].max() - boxes[node, 0].min()
    last_centred = False
    for band in bands:
        centred = _centred_line(boxes, band, centre, width, p)
        if groups and not centred and not last_centred:
            gap = boxes[band, 1].min() - boxes[groups[-1], 3].max()
            if gap <= 4 * p.row_gap and continues_columns(boxes, groups[-1], band, p):
                groups[-1] = np.concatenate([groups[-1], band])
                continue
        groups.append(band)
        last_centred = centred
    return groups


def _centred_line(boxes: np.ndarray, band: np.ndarray, centre: float, width: float, p: CutParams) -> bool:
    """A band without columns, clearly narrower than the node and centred on it: a title, byline or
    caption that separates two sections (it never joins a column flow, even when it lies inside
    the middle column's extent)."""
    if column_cuts(boxes, band, p, any_height=True):
        return False
    x0, x1 = boxes[band, 0].min(), boxes[band, 2].max()
    tol = max(p.tolerance, 1.0)
    return bool(x1 - x0 < 0.8 * width and abs((x0 + x1) / 2.0 - centre) <= 2 * tol)


def _absorb_marks(boxes: np.ndarray, bands: list[np.ndarray], p: CutParams) -> list[np.ndarray]:
    """Bands of accents, dots or specks alone join the band below them (the last one the band above):
    they are parts of lines, and on their own they break a column flow apart."""
    if p.letter_height <= 0 or len(bands) < 2:
        return bands
    out: list[np.ndarray] = []
    carry: np.ndarray | None = None
    for band in bands:
        if carry is not None:
            band = np.concatenate([carry, band])
            carry = None
        if (boxes[band, 3] - boxes[band, 1]).max() < 0.5 * p.letter_height:
            carry = band
            continue
        out.append(band)
    if carry is not None:
        if out:
            out[-1] = np.concatenate([out[-1], carry])
        else:
            out.append(carry)
    return out


def row_groups(boxes: np.ndarray, node: np.ndarray, p: CutParams) -> list[np.ndarray]:
    """Children of a node without a column gap, top to bottom.

    The node is cut between all its lines (gaps of at least `fine_row_gap`); runs of lines
    that form columns are joined into one child (so columns are read whole even when their
    paragraph breaks line up, and a heading set close above columns comes off them); the
    remaining lines are joined back into blocks unless `row_gap` separates them.
    """
    min_gap = p.fine_row_gap if p.fine_row_gap > 0 else p.row_gap
    rows = find_gaps(boxes[node, 1], boxes[node, 3], boxes[node, 2] - boxes[node, 0], min_gap, p.tolerance)
    if not rows:
        return [node]
    groups = _merge_column_bands(boxes, _absorb_marks(boxes, _split(boxes, node, rows, axis=1), p), p)
    cols = [bool(column_cuts(boxes, g, p)) for g in groups]
    out: list[np.ndarray] = []
    prev_cols = True
    for g, c in zip(groups, cols):
        if out and not c and not prev_cols and boxes[g, 1].min() - boxes[out[-1], 3].max() < p.row_gap:
            out[-1] = np.concatenate([out[-1], g])
        else:
            out.append(g)
        prev_cols = c
    return out


def _has_centred_line(boxes: np.ndarray, node: np.ndarray, groups: list[np.ndarray], p: CutParams) -> bool:
    centre = (boxes[node, 0].min() + boxes[node, 2].max()) / 2.0
    width = boxes[node, 2].max() - boxes[node, 0].min()
    return any(_centred_line(boxes, g, centre, width, p) for g in groups)


def xy_cut(boxes: np.ndarray, p: CutParams, idx: np.ndarray | None = None) -> list[np.ndarray]:
    """Blocks (arrays of box indices) in reading order."""
    if idx is None:
        idx = np.arange(len(boxes))
    if len(idx) == 0:
        return []
    out: list[np.ndarray] = []
    stack: list[np.ndarray] = [idx]
    # Depth-first with an explicit stack (pages can nest deeply); children pushed in reverse.
    while stack:
        node = stack.pop()
        if len(node) <= 1:
            out.append(node)
            continue
        cols = column_cuts(boxes, node, p)
        if cols:
            # Columns, unless a centred heading, byline or caption inside one column's extent
            # (it does not block the column gap) separates horizontal sections: then the
            # sections first, each read column by column.
            children = row_groups(boxes, node, p)
            if len(children) == 1 or not _has_centred_line(boxes, node, children, p):
                children = _split(boxes, node, cols, axis=0)
        else:
            children = row_groups(boxes, node, p)
        if len(children) == 1:
            out.append(node)
            continue
        stack.extend(reversed(children))
    return out
