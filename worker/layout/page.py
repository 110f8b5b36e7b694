"""Whole-page layout analysis: image in, regions and lines in reading order out.

Steps (each in its own module):
binarise -> components and text height -> drop noise, rules, pictures ->
estimate skew and rotate the text mask upright -> XY-cut into blocks in
reading order -> lines in each block -> baseline and heights of each line ->
map everything back to the coordinates of the original image (the OCR stage
crops the original, not our deskewed copy).

`to_page_layout` converts the result into pero-ocr's PageLayout, ready for
`to_pagexml_string()`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from pero_worker.worker.layout import binarize as binarize_mod
from pero_worker.worker.layout.border import Border, find_border, whiten_border
from pero_worker.worker.layout.components import (
    Classes,
    Components,
    classify,
    dark_area_mask,
    estimate_text_height,
    find_components,
)
from pero_worker.worker.layout.facts import LayoutFacts
from pero_worker.worker.layout.furniture import label_page_furniture, split_drop_caps
from pero_worker.worker.layout.geometry import line_geometry, line_polygon
from pero_worker.worker.layout.lines import group_lines
from pero_worker.worker.layout.orientation import Orientation, detect_orientation
from pero_worker.worker.layout.skew import apply_affine, deskew_transform, estimate_skew, invert_affine, warp_mask
from pero_worker.worker.layout.xycut import CutParams, xy_cut


@dataclass(frozen=True)
class LayoutParams:
    """Thresholds in units of the page's text height (so they hold at any resolution)."""
    max_skew_deg: float = 3.0
    column_gap: float = 2.0       # min width of the whitespace between columns
    min_column_height: float = 6.0  # about three lines: shorter nodes are never cut into columns
    short_column_height: float = 15.0  # nodes of fewer than about six lines ...
    short_column_gap: float = 3.0      # ... need a wider column gap (justified-text rivers)
    block_gap: float = 1.5        # min height of the whitespace between blocks
    min_column_width: float = 4.0
    line_split_gap: float = 3.0   # a line is cut where words are further apart (tables)
    min_skew_to_rotate: float = 0.05
    max_working_side: float = 2600.0   # pixels; bigger scans are analysed reduced (0 = never)
    detect_orientation: float = 1.0    # 0 = trust the page is upright (no 90/180/270 turn)


@dataclass
class Line:
    baseline: np.ndarray          # (N, 2) x, y in original image coordinates
    heights: list[float]          # [up, down] in pixels
    polygon: np.ndarray           # (M, 2)


@dataclass
class Region:
    polygon: np.ndarray           # (4, 2) in original image coordinates
    lines: list[Line] = field(default_factory=list)
    kind: str | None = None       # PAGE TextRegion/@type: header, footer, page-number, drop-capital or None


@dataclass
class PageAnalysis:
    size: tuple[int, int]         # (height, width) of the image
    skew_deg: float
    text_height: float
    regions: list[Region]
    picture_mask: np.ndarray | None = None    # in the upright working frame (see facts.scale)
    facts: LayoutFacts = field(default_factory=LayoutFacts)

    @property
    def lines(self) -> list[Line]:
        return [line for r in self.regions for line in r.lines]


def _text_mask(comps: Components, keep: np.ndarray) -> np.ndarray:
    lut = np.zeros(comps.count + 1, dtype=bool)
    lut[1:] = keep
    return lut[comps.labels]


@dataclass
class _Prepared:
    """A binarised page with its components classified (all in one pixel frame)."""
    gray: np.ndarray
    comps: Components
    h: float
    classes: Classes | None


def _prepare(gray: np.ndarray) -> _Prepared:
    """Binarise, find components and the text height, class them (text, noise, rules, pictures)."""
    H, W = gray.shape
    binary_input = binarize_mod.is_binary(gray)
    mask, flat = binarize_mod.binarize_with_flat(gray)
    comps = find_components(mask)
    h = estimate_text_height(comps, H)
    if comps.count == 0 or h <= 0:
        return _Prepared(gray, comps, 0.0, None)
    paper = binarize_mod.paper_surface(gray)
    dark_src = flat if binary_input else np.clip(gray / np.maximum(paper, 1.0) * 255.0, 0, 255)
    darkest = _darkest(comps, mask, flat)
    dark = dark_area_mask(dark_src, mask, h, _ink_depth(comps, darkest, h))
    classes = classify(comps, h, (H, W), dark)
    if not binary_input:
        _drop_faint(comps, classes, darkest, h)
    return _Prepared(gray, comps, h, classes)


def _darkest(comps: Components, mask: np.ndarray, page: np.ndarray) -> np.ndarray:
    """Darkest grey of every component (index i = label i + 1), from its ink pixels only."""
    out = np.full(comps.count + 1, 255, dtype=np.uint8)
    np.minimum.at(out, comps.labels[mask], page[mask])
    return out[1:]


def _ink_depth(comps: Components, darkest: np.ndarray, h: float) -> float:
    """How much darker than paper the letters are: 255 - the median of their darkest grey."""
    letters = np.flatnonzero((comps.heights >= 0.5 * h) & (comps.heights <= 2 * h))
    if len(letters) < 20:
        return 215.0
    return 255.0 - float(np.median(darkest[letters]))


def _drop_faint(comps: Components, classes: Classes, darkest: np.ndarray, h: float) -> None:
    """Letter-sized marks far fainter than the page's print are the back side showing through
    (bleed-through) or a pencil note: they become noise, not text lines.

    The darkness of a mark is its darkest pixel on the illumination-flattened page; print on
    one page is inked about evenly, so anything under 45 % of the median letter's darkness is
    not this page's print."""
    text = np.flatnonzero(classes.text & (comps.heights >= 0.5 * h))
    if len(text) < 20:
        return
    depth = 255.0 - darkest[text].astype(np.float64)
    faint = text[depth < 0.45 * float(np.median(depth))]
    classes.text[faint] = False
    classes.noise[faint] = True


def working_scale(shape: tuple[int, int], max_side: float) -> float:
    """Factor (<= 1) that brings the image's long side down to `max_side` pixels (big scans are
    analysed at about 150-220 dpi: the layout does not need more, and memory and time grow with pixels;
    2600 px took a 300 dpi A4 page's layout from 1.4 to 0.7 s at the same line recall, bench/cer.py)."""
    side = max(shape)
    return 1.0 if max_side <= 0 or side <= max_side else max_side / side


def _quarter_turn(shape: tuple[int, int], degrees_cw: int) -> np.ndarray:
    """2x3 point map from an H x W image to the same image turned clockwise by 0/90/180/270 degrees."""
    H, W = shape
    k = (degrees_cw // 90) % 4
    maps = {0: [[1, 0, 0], [0, 1, 0]], 1: [[0, -1, H - 1], [1, 0, 0]],
            2: [[-1, 0, W - 1], [0, -1, H - 1]], 3: [[0, 1, 0], [-1, 0, W - 1]]}
    return np.array(maps[k], dtype=np.float64)


def analyze_page(image: np.ndarray, params: LayoutParams = LayoutParams()) -> PageAnalysis:
    """Layout of a page image (grey, colour or binary numpy array), in the image's own coordinates.

    The page is analysed at a working resolution (big scans are reduced), with the
    scanner border painted white, turned upright (0/90/180/270) and deskewed; every
    coordinate is mapped back to the original image, whose full resolution the OCR
    stage crops its lines from."""
    gray_full = binarize_mod.to_gray(image)
    H, W = gray_full.shape
    scale = working_scale((H, W), params.max_working_side)
    if scale < 1.0:
        size = (max(1, int(round(W * scale))), max(1, int(round(H * scale))))
        gray = cv2.resize(gray_full, size, interpolation=cv2.INTER_AREA)
    else:
        gray = gray_full
    del gray_full
    border = find_border(gray)
    gray = whiten_border(gray, border)
    prep = _prepare(gray)
    orient = Orientation(0, 0.0, 0)
    if prep.classes is not None and params.detect_orientation:
        text_boxes = prep.comps.boxes[prep.classes.text]
        orient = detect_orientation(text_boxes, gray.shape, prep.h)
        if orient.degrees:
            prep = _prepare(np.ascontiguousarray(np.rot90(gray, -(orient.degrees // 90))))
    upright = _analyze_upright(prep, params)
    # Upright working frame -> working frame -> image frame (pixel centres kept in place).
    to_work = invert_affine(_quarter_turn(gray.shape, orient.degrees))
    to_image = np.array([[1.0 / scale, 0.0, 0.5 / scale - 0.5], [0.0, 1.0 / scale, 0.5 / scale - 0.5]])
    m = _compose(to_image, to_work)
    analysis = _map_analysis(upright, m, 1.0 / scale, (H, W))
    analysis.facts = _facts(prep, upright, orient, border, scale)
    return analysis


def _compose(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The affine map `a` after `b` (2x3 each)."""
    return (np.vstack([a, [0, 0, 1]]) @ np.vstack([b, [0, 0, 1]]))[:2]


def _map_analysis(a: PageAnalysis, m: np.ndarray, zoom: float, size: tuple[int, int]) -> PageAnalysis:
    """The analysis with every coordinate mapped by `m` (heights scaled by `zoom`), clipped to `size`."""
    regions = []
    for r in a.regions:
        lines = [Line(baseline=_clip(apply_affine(m, ln.baseline), size),
                      heights=[ln.heights[0] * zoom, ln.heights[1] * zoom],
                      polygon=_clip(apply_affine(m, ln.polygon), size)) for ln in r.lines]
        regions.append(Region(polygon=_clip(apply_affine(m, r.polygon), size), lines=lines, kind=r.kind))
    return PageAnalysis(size=size, skew_deg=a.skew_deg, text_height=a.text_height * zoom, regions=regions,
                        picture_mask=a.picture_mask)


def _facts(prep: _Prepared, a: PageAnalysis, orient: Orientation, border: Border, scale: float) -> LayoutFacts:
    classes = prep.classes
    text_count = int(classes.text.sum()) if classes is not None else 0
    pictures = float(classes.picture_mask.mean()) if classes is not None else 0.0
    # Ink: letter-like marks (a handful of specks is no print) or a picture.
    ink = text_count >= 3 or (classes is not None and bool(classes.picture.any()))
    return LayoutFacts(orientation=orient.degrees, orientation_conf=orient.confidence, skew=round(a.skew_deg, 3),
                       ink=ink, text_components=text_count, lines=len(a.lines), regions=len(a.regions),
                       picture_fraction=round(pictures, 4), border=border.found, scale=round(scale, 4))


def _analyze_upright(prep: _Prepared, params: LayoutParams) -> PageAnalysis:
    """Regions and lines of an upright page, in its own (working) pixel frame."""
    H, W = prep.gray.shape
    comps, h, classes = prep.comps, prep.h, prep.classes
    if classes is None:
        return PageAnalysis(size=(H, W), skew_deg=0.0, text_height=0.0, regions=[])
    text = classes.text
    if not text.any():
        return PageAnalysis(size=(H, W), skew_deg=0.0, text_height=h, regions=[],
                            picture_mask=classes.picture_mask)

    # Skew from the bottoms of letter-sized components.
    tb = comps.boxes[text]
    th = tb[:, 3] - tb[:, 1]
    letters = (th >= 0.5 * h) & (th <= 3 * h)
    pts = np.stack([(tb[letters, 0] + tb[letters, 2]) / 2.0, tb[letters, 3]], axis=1)
    angle = estimate_skew(pts, h, params.max_skew_deg)

    tmask = _text_mask(comps, text)
    if abs(angle) >= params.min_skew_to_rotate:
        m, size = deskew_transform((H, W), angle)
        tmask = warp_mask(tmask, m, size)
    else:
        angle = 0.0
        m = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    m_inv = invert_affine(m)

    dcomps = find_components(tmask)
    del tmask
    keep = dcomps.areas >= max(3.0, 0.012 * h * h)
    idx = np.flatnonzero(keep)
    blocks = xy_cut(dcomps.boxes, _cut_params(params, h), idx)
    regions = []
    for block, kind in split_drop_caps(dcomps.boxes, blocks, h):
        region = _block_region(dcomps, block, h, params, m_inv, (H, W))
        if region is not None:
            region.kind = kind
            regions.append(region)
    regions = label_page_furniture(regions, h, H, angle)
    return PageAnalysis(size=(H, W), skew_deg=angle, text_height=h, regions=regions,
                        picture_mask=classes.picture_mask)


def _cut_params(params: LayoutParams, h: float) -> CutParams:
    return CutParams(col_gap=params.column_gap * h, row_gap=params.block_gap * h,
                     min_col_width=params.min_column_width * h,
                     min_col_height=params.min_column_height * h,
                     short_col_height=params.short_column_height * h,
                     short_col_gap=params.short_column_gap * h, tolerance=0.6 * h,
                     fine_row_gap=0.25 * h, letter_height=h)


def _block_region(dcomps: Components, block: np.ndarray, h: float, params: LayoutParams, m_inv: np.ndarray,
                  size: tuple[int, int]) -> Region | None:
    """One text block (components of the deskewed page) as a region of lines on the original page."""
    bh = _block_text_height(dcomps, block, h)
    lines = group_lines(dcomps.boxes, block, bh, params.line_split_gap * h)
    region_lines: list[Line] = []
    corners = []
    for members in lines:
        line = _make_line(dcomps, members, m_inv, size)
        if line is None:
            continue
        region_lines.append(line[0])
        corners.append(line[1])
    if not region_lines:
        return None
    pts_d = np.concatenate(corners, axis=0)
    x0, y0 = pts_d.min(axis=0)
    x1, y1 = pts_d.max(axis=0)
    rect = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
    return Region(polygon=_clip(apply_affine(m_inv, rect), size), lines=region_lines)


def _block_text_height(comps: Components, block: np.ndarray, h: float) -> float:
    """Letter height of a block: its own when it has enough letters (titles are bigger)."""
    if len(block) < 8:
        return h
    hs = comps.heights[block]
    hs = hs[hs >= 0.4 * h]
    if len(hs) < 8:
        return h
    return float(np.median(hs))


def _make_line(comps: Components, members: np.ndarray, m_inv: np.ndarray,
               size: tuple[int, int]) -> tuple[Line, np.ndarray] | None:
    b = comps.boxes[members].astype(int)
    x0, y0 = b[:, 0].min(), b[:, 1].min()
    x1, y1 = b[:, 2].max(), b[:, 3].max()
    lut = np.zeros(comps.count + 1, dtype=bool)
    lut[members + 1] = True
    sub = lut[comps.labels[y0:y1, x0:x1]]
    if not sub.any():
        return None
    baseline, heights = line_geometry(sub)
    baseline = baseline + np.array([x0, y0], dtype=np.float64)
    poly_d = line_polygon(baseline, heights)
    H, W = size
    base_o = apply_affine(m_inv, baseline)
    base_o[:, 0] = np.clip(base_o[:, 0], 0, W - 1)
    base_o[:, 1] = np.clip(base_o[:, 1], 0, H - 1)
    if base_o[-1, 0] - base_o[0, 0] < 1:
        return None
    poly_o = _clip(apply_affine(m_inv, poly_d), size)
    return Line(baseline=base_o, heights=[float(heights[0]), float(heights[1])], polygon=poly_o), poly_d


def _clip(points: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    H, W = size
    out = points.copy()
    out[:, 0] = np.clip(out[:, 0], 0, W - 1)
    out[:, 1] = np.clip(out[:, 1], 0, H - 1)
    return out


def to_page_layout(analysis: PageAnalysis, page_id: str):
    """pero-ocr PageLayout with one TextRegion per block, in reading order (also stored as
    the PAGE ReadingOrder so that pero-ocr keeps it when it reloads the XML)."""
    from pero_ocr.core.layout import PageLayout, RegionLayout, TextLine

    layout = PageLayout(id=page_id, page_size=(analysis.size[0], analysis.size[1]))
    order: dict[str, int] = {}
    for ri, region in enumerate(analysis.regions):
        rid = f"r{ri + 1:03d}"
        rl = RegionLayout(rid, np.round(region.polygon).astype(np.int64), region_type=region.kind)
        for li, line in enumerate(region.lines):
            rl.lines.append(TextLine(
                id=f"{rid}-l{li + 1:03d}",
                index=li,
                baseline=np.round(line.baseline).astype(np.int64),
                polygon=np.round(line.polygon).astype(np.int64),
                heights=[float(line.heights[0]), float(line.heights[1])]))
        layout.regions.append(rl)
        order[rid] = ri
    layout.reading_order = order
    return layout
