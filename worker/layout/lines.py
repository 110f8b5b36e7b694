"""Text lines inside one block (on a deskewed page).

Lines are found by grouping letter-sized components by the height of their
vertical centre: within a line the centres of letters sit within a fraction
of the x-height of each other, between lines there is a gap of about a line
pitch.  Sorting centres and cutting where consecutive ones are more than
`LINE_SPLIT` letter heights apart needs no estimate of the line period (the
failure of a period-based detector, which halves the spacing on many pages)
and keeps a one-word last line of a paragraph, which a projection profile
with a relative threshold would lose.

Small marks (dots, accents, commas, hyphens) and oversized components are
then attached to the line whose core they are closest to; a line is finally
cut where its words are further apart than a column gap (tables).
"""

from __future__ import annotations

import bisect

import numpy as np

LINE_SPLIT = 0.6     # gap between sorted letter centres that starts a new line, in letter heights
CORE_RANGE = (0.7, 3.5)
REAL_LETTER = 0.85   # a line needs at least one component this tall (in letter heights)


def group_lines(boxes: np.ndarray, idx: np.ndarray, h: float, split_gap: float) -> list[np.ndarray]:
    """Component indices of each line of a block, top to bottom, each line left to right.

    boxes: (N, 4) x0, y0, x1, y1 for all components; idx: the block's components;
    h: text height of the block; split_gap: horizontal gap that splits a line in two.
    """
    if len(idx) == 0:
        return []
    b = boxes[idx]
    heights = b[:, 3] - b[:, 1]
    centers = (b[:, 1] + b[:, 3]) / 2.0
    core = (heights >= CORE_RANGE[0] * h) & (heights <= CORE_RANGE[1] * h)
    if not core.any():
        core = np.ones(len(idx), dtype=bool)

    # 1. Cluster the centres of the core components.
    ci = np.flatnonzero(core)
    order = ci[np.argsort(centers[ci], kind="stable")]
    clusters: list[list[int]] = [[int(order[0])]]
    # The current cluster's heights kept sorted: its median per step without np.median's overhead
    # (thousands of calls on a page; the same value).
    sorted_heights = [float(heights[order[0]])]
    for prev, cur in zip(order[:-1], order[1:]):
        n = len(sorted_heights)
        ref = sorted_heights[n // 2] if n % 2 else (sorted_heights[n // 2 - 1] + sorted_heights[n // 2]) / 2.0
        if centers[cur] - centers[prev] > LINE_SPLIT * ref:
            clusters.append([int(cur)])
            sorted_heights = [float(heights[cur])]
        else:
            clusters[-1].append(int(cur))
            bisect.insort(sorted_heights, float(heights[cur]))

    # A "line" of accents or punctuation alone is not a line: its marks join the neighbours.
    real = [c for c in clusters if heights[c].max() >= REAL_LETTER * h]
    if real and len(real) < len(clusters):
        dissolved = [k for c in clusters if heights[c].max() < REAL_LETTER * h for k in c]
        core[dissolved] = False
        clusters = real

    # 2. Attach the other components to the nearest line core.
    _attach_to_cores(b, heights, centers, core, clusters)

    # 3. Split lines at wide horizontal gaps, order everything.
    lines: list[tuple[float, float, np.ndarray]] = []
    for c in clusters:
        members = np.array(sorted(c, key=lambda k: b[k, 0]))
        for seg in _split_wide_gaps(b, members, split_gap):
            lines.append((float(np.median(centers[seg])), float(b[seg, 0].min()), idx[seg]))
    lines.sort(key=lambda t: (t[0], t[1]))
    # Segments of one line (same centre) must stay left to right even with tiny centre differences.
    return _order_segments(lines, h)


def _attach_to_cores(b: np.ndarray, heights: np.ndarray, centers: np.ndarray, core: np.ndarray,
                     clusters: list[list[int]]) -> None:
    """Add each non-core component to the line whose core band it overlaps most, else the nearest one."""
    # Core band of every line: the span of its letters' centres, widened a little.
    bands = []
    for c in clusters:
        ch = np.median(heights[c])
        bands.append((centers[c].min() - 0.25 * ch, centers[c].max() + 0.25 * ch))
    bands_a = np.array(bands)
    # By vertical distance, or by overlap for tall components that touch several lines.
    for k in np.flatnonzero(~core):
        y0, y1 = b[k, 1], b[k, 3]
        overlap = np.minimum(y1, bands_a[:, 1]) - np.maximum(y0, bands_a[:, 0])
        if overlap.max() > 0:
            j = int(np.argmax(overlap))
        else:
            dist = np.maximum(bands_a[:, 0] - y1, y0 - bands_a[:, 1])
            j = int(np.argmin(dist))
        clusters[j].append(int(k))


def _split_wide_gaps(b: np.ndarray, members: np.ndarray, split_gap: float) -> list[np.ndarray]:
    segs: list[list[int]] = [[int(members[0])]]
    right = b[members[0], 2]
    for k in members[1:]:
        if b[k, 0] - right > split_gap:
            segs.append([int(k)])
        else:
            segs[-1].append(int(k))
        right = max(right, b[k, 2])
    return [np.array(s) for s in segs]


def _order_segments(lines: list[tuple[float, float, np.ndarray]], h: float) -> list[np.ndarray]:
    """Top to bottom; segments whose centres are within half a letter height are one row, left to right."""
    out: list[np.ndarray] = []
    i = 0
    while i < len(lines):
        j = i + 1
        while j < len(lines) and lines[j][0] - lines[i][0] < 0.5 * h:
            j += 1
        row = sorted(lines[i:j], key=lambda t: t[1])
        out.extend(t[2] for t in row)
        i = j
    return out
