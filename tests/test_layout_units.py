"""Unit tests of the pure layout pieces: skew, gaps, XY-cut, line grouping, line geometry, binarisation."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from pero_worker.worker.layout.binarize import binarize, is_binary, to_gray
from pero_worker.worker.layout.components import classify, estimate_text_height, find_components
from pero_worker.worker.layout.geometry import line_geometry, line_polygon
from pero_worker.worker.layout.lines import group_lines
from pero_worker.worker.layout.skew import apply_affine, deskew_transform, estimate_skew
from pero_worker.worker.layout.xycut import CutParams, find_gaps, xy_cut

# ----------------------------------------------------------------------------- skew

def _baseline_points(angle_deg: float, n_lines: int = 20, pitch: float = 50.0, width: float = 1500.0,
                     seed: int = 0) -> np.ndarray:
    """Letter bottoms on lines with slope tan(angle), with descender outliers and jitter."""
    rng = np.random.default_rng(seed)
    pts = []
    t = math.tan(math.radians(angle_deg))
    for i in range(n_lines):
        xs = rng.uniform(0, width, 60)
        ys = 100 + i * pitch + xs * t + rng.normal(0, 0.7, len(xs))
        ys[rng.random(len(xs)) < 0.12] += 9   # descenders
        pts.append(np.stack([xs, ys], axis=1))
    return np.concatenate(pts)


@pytest.mark.parametrize("angle", [-2.8, -1.0, -0.3, 0.0, 0.45, 1.7, 2.9])
def test_estimate_skew_finds_the_angle(angle):
    est = estimate_skew(_baseline_points(angle), text_height=20.0, max_angle=3.0)
    assert est == pytest.approx(angle, abs=0.05)


def test_estimate_skew_needs_points():
    assert estimate_skew(np.zeros((3, 2)), 20.0) == 0.0


@pytest.mark.parametrize("angle", [-2.0, 0.8, 2.5])
def test_deskew_transform_makes_lines_horizontal_and_keeps_the_page(angle):
    h, w = 1000, 800
    m, size = deskew_transform((h, w), angle)
    t = math.tan(math.radians(angle))
    line = np.array([[100, 300 + 100 * t], [700, 300 + 700 * t]])
    out = apply_affine(m, line)
    assert out[0, 1] == pytest.approx(out[1, 1], abs=1e-6)
    corners = apply_affine(m, np.array([[0, 0], [w, 0], [w, h], [0, h]], dtype=float))
    assert corners.min() >= -1e-6
    assert corners[:, 0].max() <= size[1] + 1e-6 and corners[:, 1].max() <= size[0] + 1e-6


# ----------------------------------------------------------------------------- gaps

@pytest.mark.parametrize("intervals,weights,min_gap,tol,expected", [
    ([(0, 10), (20, 30)], [1, 1], 5, 0, [(10.0, 20.0)]),
    ([(0, 10), (20, 30)], [1, 1], 11, 0, []),
    ([(0, 10), (12, 30), (40, 50)], [1, 1, 1], 5, 0, [(30.0, 40.0)]),
    ([(0, 10), (14, 15), (20, 30)], [5, 0.5, 5], 5, 1.0, [(10.0, 20.0)]),   # a speck inside is tolerated
    ([(0, 10), (14, 15), (20, 30)], [5, 3, 5], 3, 1.0, [(10.0, 14.0), (15.0, 20.0)]),
    ([(0, 30), (5, 10)], [1, 1], 1, 0, []),                                 # nested: no gap
    ([], [], 1, 0, []),
])
def test_find_gaps(intervals, weights, min_gap, tol, expected):
    a = np.array(intervals, dtype=float).reshape(-1, 2)
    assert find_gaps(a[:, 0], a[:, 1], np.array(weights, dtype=float), min_gap, tol) == expected


# ----------------------------------------------------------------------------- XY-cut

H = 20.0   # text height of the synthetic boxes
PARAMS = CutParams(col_gap=2 * H, row_gap=1.5 * H, min_col_width=4 * H, tolerance=0.6 * H,
                   min_col_height=6 * H, short_col_height=15 * H, short_col_gap=3 * H, fine_row_gap=0.25 * H)


def _lines(x0: float, x1: float, y0: float, n: int, pitch: float = 2.5 * H, tag: str = "") -> list:
    """Boxes of n text lines, each line made of words 3H wide (1.8H high: ascenders and
    descenders) with 0.6H gaps; tagged for checks."""
    boxes = []
    for i in range(n):
        y = y0 + i * pitch
        x = x0
        while x + 3 * H <= x1:
            boxes.append(((x, y, x + 3 * H, y + 1.8 * H), f"{tag}{i}"))
            x += 3.6 * H
    return boxes


def _blocks_as_tags(items: list) -> list[list[str]]:
    boxes = np.array([b for b, _ in items], dtype=float)
    tags = [t for _, t in items]
    out = []
    for block in xy_cut(boxes, PARAMS):
        seen = []
        for i in sorted(block, key=lambda i: (boxes[i, 1], boxes[i, 0])):
            if tags[i] not in seen:
                seen.append(tags[i])
        out.append(seen)
    return out


def _flatten(blocks: list[list[str]]) -> list[str]:
    return [t for b in blocks for t in b]


def test_xy_cut_two_columns_read_column_by_column():
    items = _lines(0, 400, 0, 12, tag="a") + _lines(500, 900, 0, 12, tag="b")
    order = _flatten(_blocks_as_tags(items))
    assert order == [f"a{i}" for i in range(12)] + [f"b{i}" for i in range(12)]


def test_xy_cut_title_breaks_the_column_flow():
    items = (_lines(100, 800, 0, 1, tag="t") + _lines(0, 400, 3 * H, 10, tag="a")
             + _lines(500, 900, 3 * H, 10, tag="b") + _lines(0, 900, 30 * H, 3, tag="f")
             + _lines(0, 400, 40 * H, 8, tag="c") + _lines(500, 900, 40 * H, 8, tag="d"))
    order = _flatten(_blocks_as_tags(items))
    expected = (["t0"] + [f"a{i}" for i in range(10)] + [f"b{i}" for i in range(10)] + [f"f{i}" for i in range(3)]
                + [f"c{i}" for i in range(8)] + [f"d{i}" for i in range(8)])
    assert order == expected


def test_xy_cut_aligned_paragraph_breaks_do_not_interleave_columns():
    # Title, then two columns whose paragraph gaps line up across both columns.
    items = (_lines(100, 800, 0, 1, tag="t")
             + _lines(0, 400, 3 * H, 5, tag="a") + _lines(0, 400, 18 * H, 5, tag="A")
             + _lines(500, 900, 3 * H, 5, tag="b") + _lines(500, 900, 18 * H, 5, tag="B"))
    order = _flatten(_blocks_as_tags(items))
    expected = (["t0"] + [f"a{i}" for i in range(5)] + [f"A{i}" for i in range(5)]
                + [f"b{i}" for i in range(5)] + [f"B{i}" for i in range(5)])
    assert order == expected


def test_xy_cut_double_spaced_columns_under_a_title_stay_columns():
    # Every line is its own band (gaps of 3.2H), each band too low for a column cut on its own.
    items = (_lines(100, 800, 0, 1, tag="t") + _lines(0, 400, 4 * H, 8, pitch=5 * H, tag="a")
             + _lines(500, 900, 4 * H, 8, pitch=5 * H, tag="b"))
    order = _flatten(_blocks_as_tags(items))
    assert order == ["t0"] + [f"a{i}" for i in range(8)] + [f"b{i}" for i in range(8)]


def test_xy_cut_narrow_piece_is_not_a_column():
    # Numbers of a list hanging 2.5H left of the text: a gap, but not a column.
    items = []
    for i in range(10):
        items.append(((0, i * 2.5 * H, H, i * 2.5 * H + H), f"n{i}"))
    items += _lines(3.5 * H, 600, 0, 10, tag="x")
    blocks = _blocks_as_tags(items)
    assert len(blocks) == 1


def test_xy_cut_river_in_short_paragraph_is_not_a_column():
    # Three lines whose word gaps line up into a 2.5H wide river.
    items = []
    for i in range(3):
        y = i * 2.5 * H
        items.append(((0, y, 300, y + 1.8 * H), f"l{i}"))
        items.append(((350, y, 600, y + 1.8 * H), f"l{i}"))
    assert len(_blocks_as_tags(items)) == 1


def test_xy_cut_blocks_top_to_bottom():
    items = _lines(0, 600, 0, 4, tag="p") + _lines(0, 600, 14 * H, 4, tag="q")
    assert _blocks_as_tags(items) == [["p0", "p1", "p2", "p3"], ["q0", "q1", "q2", "q3"]]


# ----------------------------------------------------------------------------- lines

def _letters(y_base: float, x0: float, x1: float, h: float, rng) -> list[tuple]:
    """Letter boxes on a baseline: x-height letters, ascenders, descenders, a dot and a comma."""
    out = []
    x = x0
    while x < x1:
        kind = rng.random()
        if kind < 0.6:
            out.append((x, y_base - h, x + 0.6 * h, y_base))
        elif kind < 0.8:
            out.append((x, y_base - 1.5 * h, x + 0.6 * h, y_base))
        else:
            out.append((x, y_base - h, x + 0.6 * h, y_base + 0.5 * h))
        x += 0.75 * h
    out.append((x0 + 2 * h, y_base - 1.45 * h, x0 + 2.2 * h, y_base - 1.2 * h))   # i-dot
    out.append((x1 - h, y_base - 0.1 * h, x1 - 0.8 * h, y_base + 0.35 * h))          # comma
    return out


def test_group_lines_finds_each_line_and_keeps_a_one_word_line():
    rng = np.random.default_rng(1)
    h = 20.0
    boxes, truth = [], []
    for i, (x0, x1) in enumerate([(0, 600), (0, 600), (0, 600), (0, 50)]):
        for b in _letters(50 + i * 2.4 * h, x0, x1, h, rng):
            boxes.append(b)
            truth.append(i)
    boxes = np.array(boxes, dtype=float)
    truth = np.array(truth)
    lines = group_lines(boxes, np.arange(len(boxes)), h, split_gap=3 * h)
    assert len(lines) == 4
    for i, members in enumerate(lines):
        assert set(truth[members]) == {i}
        assert set(members) == set(np.flatnonzero(truth == i))


def test_group_lines_splits_a_line_at_a_wide_gap_left_to_right():
    rng = np.random.default_rng(2)
    h = 20.0
    boxes = np.array(_letters(100, 0, 200, h, rng) + _letters(100, 400, 600, h, rng), dtype=float)
    lines = group_lines(boxes, np.arange(len(boxes)), h, split_gap=3 * h)
    assert len(lines) == 2
    assert boxes[lines[0], 2].max() < boxes[lines[1], 0].min()


def test_group_lines_empty():
    assert group_lines(np.zeros((0, 4)), np.zeros(0, dtype=int), 10.0, 30.0) == []


# ----------------------------------------------------------------------------- geometry

def _font(size: int):
    for name in ("DejaVuSerif.ttf", "DejaVuSans.ttf", "LiberationSerif-Regular.ttf"):
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    return ImageFont.load_default(size=size)


def _line_mask(text: str, size: int, angle: float = 0.0) -> tuple[np.ndarray, float, float]:
    font = _font(size)
    w = int(font.getlength(text)) + 4 * size
    h = 4 * size
    img = Image.new("L", (w, h), 0)
    base_y = 2.5 * size
    ImageDraw.Draw(img).text((2 * size, base_y), text, font=font, fill=255, anchor="ls")
    arr = np.asarray(img)
    if angle:
        m = cv2.getRotationMatrix2D((w / 2, base_y), angle, 1.0)
        arr = cv2.warpAffine(arr, m, (w, h))
    x_height = -font.getbbox("x", anchor="ls")[1]
    return arr > 127, base_y, float(x_height)


@pytest.mark.parametrize("size", [16, 30, 60])
def test_line_geometry_baseline_and_heights(size):
    mask, base_y, xh = _line_mask("Quick brown foxes jump over lazy dogs, gently.", size)
    baseline, (up, down) = line_geometry(mask)
    assert baseline.shape[1] == 2 and len(baseline) >= 2
    assert np.all(np.abs(baseline[:, 1] - base_y) <= max(1.5, 0.08 * xh))
    assert 1.35 * xh - 1e-6 <= up <= 2.0 * xh + 1e-6
    assert 0.4 * xh - 1e-6 <= down <= 0.9 * xh + 1e-6
    cols = np.flatnonzero(mask.any(axis=0))
    assert baseline[0, 0] < cols[0] and baseline[-1, 0] > cols[-1]


def test_line_geometry_follows_a_slanted_line():
    mask, base_y, xh = _line_mask("Skewed text lines still get a straight baseline here", 30, angle=2.0)
    baseline, _ = line_geometry(mask)
    slope = (baseline[-1, 1] - baseline[0, 1]) / (baseline[-1, 0] - baseline[0, 0])
    assert slope == pytest.approx(-math.tan(math.radians(2.0)), abs=0.006)


def test_line_geometry_line_without_ascenders_gets_a_normal_band():
    mask, base_y, xh = _line_mask("mano nose arms", 40)
    _, (up, down) = line_geometry(mask)
    assert up >= 1.35 * xh - 1e-6 and down >= 0.4 * xh - 1e-6


def test_line_geometry_rejects_empty_mask():
    with pytest.raises(ValueError):
        line_geometry(np.zeros((10, 10), dtype=bool))


def test_line_polygon_is_a_band_around_the_baseline():
    poly = line_polygon(np.array([[0.0, 100.0], [200.0, 100.0]]), [30.0, 10.0])
    assert poly.tolist() == [[0, 70], [200, 70], [200, 110], [0, 110]]


# ----------------------------------------------------------------------------- binarisation and components

def test_to_gray_accepts_common_layouts():
    g = np.full((5, 5), 200, np.uint8)
    assert to_gray(g) is g
    assert to_gray(np.dstack([g, g, g])).shape == (5, 5)
    assert to_gray(np.dstack([g, g, g, np.zeros_like(g)]))[0, 0] == 255   # transparent = paper
    assert to_gray(np.zeros((5, 5), bool))[0, 0] == 255


def test_binarize_survives_uneven_light_and_reads_binary_input():
    img = np.full((300, 600), 235, np.float32)
    img *= np.linspace(0.55, 1.0, 600)[None, :]            # dark left side
    for x in range(20, 580, 40):
        img[100:130, x:x + 6] *= 0.3                          # strokes on both sides
    gray = img.astype(np.uint8)
    mask = binarize(gray)
    assert mask[100:130, 20:26].mean() > 0.9 and mask[100:130, 540:546].mean() > 0.9
    assert mask[200:, :].mean() < 0.001                       # paper stays paper, even where dark
    binary = np.where(mask, 0, 255).astype(np.uint8)
    assert is_binary(binary)
    assert np.array_equal(binarize(binary), mask)


def test_classify_rule_picture_text_noise():
    mask = np.zeros((600, 800), bool)
    for x in range(50, 700, 30):                # letters 20 high
        mask[100:120, x:x + 12] = True
    mask[200:203, 40:760] = True                # rule
    mask[300:500, 100:400] = True               # picture blob
    mask[550, 600] = True                       # speck
    comps = find_components(mask)
    h = estimate_text_height(comps, 600)
    assert h == pytest.approx(20, abs=1)
    c = classify(comps, h, mask.shape)
    kinds = {}
    for i in range(comps.count):
        x0, y0 = comps.boxes[i, :2]
        kind = "text" if c.text[i] else "rule" if c.rule[i] else "picture" if c.picture[i] else "noise"
        kinds[(int(x0), int(y0))] = kind
    assert kinds[(40, 200)] == "rule"
    assert kinds[(100, 300)] == "picture"
    assert kinds[(600, 550)] == "noise"
    assert sum(1 for k in kinds.values() if k == "text") == len(range(50, 700, 30))
