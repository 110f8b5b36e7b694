"""Layout on what real magazine and book scans have (issue 10): a scanner border touching a
halftone photo, pictures masked by their own shape, columns across which titles, bylines,
captions and pictures run, headers/footers/page numbers, drop caps, pages turned by 90/180/270
degrees, bleed-through, and big scans analysed at a working resolution.  Pages come from
bench/magazine.py (ground truth in reading order)."""

from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np
import pytest
from PIL import Image, ImageDraw

from pero_worker.bench import magazine, synth
from pero_worker.bench.scoring import match_lines, score_layout
from pero_worker.worker.layout import LayoutParams, analyze_page, to_page_layout
from pero_worker.worker.layout.border import find_border, fit_edge
from pero_worker.worker.layout.facts import LayoutFacts, add_facts_to_pagexml, read_facts
from pero_worker.worker.layout.orientation import rotate_boxes, up_down_score
from pero_worker.worker.layout.page import _quarter_turn
from pero_worker.worker.layout.skew import apply_affine
from pero_worker.worker.layout.xycut import CutParams, xy_cut

A5 = dict(width_in=5.8, height_in=8.3, margin_in=0.5)


def _page(dpi: int = 200, seed: int = 3, scan: bool = True, **kw) -> synth.SynthPage:
    base = synth.PageSpec(dpi=dpi, font_family="Caladea", font_pt=9, leading=1.25, column_gap_in=0.22,
                          seed=seed, **A5)
    if scan:
        base = replace(base, rotation_deg=0.5, blur_sigma=0.4, noise_sigma=5, illumination=0.2, jpeg_quality=70)
    return magazine.render_magazine(magazine.MagazineSpec(page=base, **kw))


def _upright(points: np.ndarray, shape: tuple[int, int], orientation: int) -> np.ndarray:
    return apply_affine(_quarter_turn(shape, orientation), points)


def _score(page: synth.SynthPage, analysis, orientation: int = 0):
    """Layout score in the upright frame (the scorer compares horizontal baselines)."""
    shape = page.image.shape[:2]
    gt = [(_upright(ln.baseline, shape, orientation), ln.x_height) for ln in page.lines]
    det = [_upright(ln.baseline, shape, orientation) for ln in analysis.lines]
    return score_layout(gt, det), match_lines(gt, det)


def _assert_good(page, analysis, orientation: int = 0, min_recall: float = 0.97):
    score, pairs = _score(page, analysis, orientation)
    assert score.recall >= min_recall, score
    assert score.precision >= min_recall, score
    assert score.order_ok, score
    return score, pairs


# ----------------------------------------------------------------------------- scanner border

def test_dark_scanner_border_touching_a_halftone_photo_is_removed_not_a_picture():
    page = _page(columns=2, corner_photo=True, border_in=0.3, span_picture=False, seed=5)
    analysis = analyze_page(page.image)
    assert analysis.facts.border
    _assert_good(page, analysis)
    # The border band itself is never masked as picture (only the photo is).
    assert analysis.facts.picture_fraction < 0.2


def test_text_close_beside_a_photo_on_noisy_paper_keeps_its_last_words():
    """The development set's second border-photo page (400 dpi, noisy paper, lines ending about one
    text height left of a halftone photo): the noise once made the photo's area solid up to 8 text
    heights around it, and the last words of the lines beside it ("go letter", "own paper") were
    masked as picture."""
    page = magazine.render_magazine(magazine.dev_spec("border-photo", 1, "Caladea", 1234))
    analysis = analyze_page(page.image)
    _, pairs = _assert_good(page, analysis)
    def beside_a_photo(line) -> bool:
        end_x, y = float(line.baseline[-1, 0]), float(line.baseline[-1, 1])
        return any(box[:, 1].min() < y < box[:, 1].max()
                   and box[:, 0].min() - 6 * line.x_height < end_x < box[:, 0].min() for box in page.picture_boxes)

    beside = [(i, j) for i, j in pairs if beside_a_photo(page.lines[i])]
    assert len(beside) >= 3
    for i, j in beside:
        gt_end = float(page.lines[i].baseline[-1, 0])
        found_end = float(np.max(analysis.lines[j].baseline[:, 0]))
        assert found_end > gt_end - page.lines[i].x_height, (i, gt_end, found_end)


@pytest.mark.parametrize("runs,expect", [
    (np.full(100, 20.0), (0.0, 20.0)),                                     # even border
    (np.concatenate([np.full(70, 15.0), np.full(30, 300.0)]), (0.0, 15.0)),  # a photo continues the run
    (20 + 0.05 * np.arange(200.0), (0.05, 20.0)),                          # a turned page: slanted edge
    (np.zeros(100), None),                                                 # no border
])
def test_border_edge_fit_ignores_photos_and_follows_a_slanted_edge(runs, expect):
    fit = fit_edge(runs, min_depth=2.0)
    if expect is None:
        assert fit is None
    else:
        assert fit is not None
        assert fit[0] == pytest.approx(expect[0], abs=0.01) and fit[1] == pytest.approx(expect[1], abs=1.0)


def test_page_without_border_finds_none():
    page = _page(columns=2, seed=6)
    assert not find_border(page.image).found


# ----------------------------------------------------------------------------- pictures

def test_picture_is_masked_by_its_shape_so_text_inside_its_box_survives():
    """A round halftone picture: text set in the corners of its bounding box is still read."""
    dpi = 200
    img = Image.new("L", (1100, 1100), 250)
    disc = magazine.halftone_photo(np.random.default_rng(1), 800, 800, dpi)
    yy, xx = np.mgrid[0:800, 0:800]
    inside = (xx - 400) ** 2 + (yy - 400) ** 2 <= 400 ** 2
    arr = np.asarray(img).copy()
    arr[150:950, 150:950][inside] = disc[inside]
    img = Image.fromarray(arr)
    draw = ImageDraw.Draw(img)
    font = synth.load_font("Caladea", 26)
    words = ["corner", "text", "ok"]
    for k, y in enumerate((185, 220, 255)):
        draw.text((155, y), words[k], font=font, fill=25, anchor="ls")
    for y in (60, 100, 1040, 1080):
        draw.text((160, y), "a full line of ordinary text above and below the picture", font=font, fill=25,
                  anchor="ls")
    analysis = analyze_page(np.asarray(img))
    corner = [ln for ln in analysis.lines if 170 < ln.baseline[:, 1].mean() < 270 and ln.baseline[:, 0].min() < 200]
    assert len(corner) == 3, [ln.baseline.tolist() for ln in analysis.lines]
    assert all(ln.baseline[:, 0].max() < 260 for ln in corner), [ln.baseline.tolist() for ln in corner]
    full = [ln for ln in analysis.lines if ln.baseline[:, 0].max() - ln.baseline[:, 0].min() > 500]
    assert len(full) == 4
    assert analysis.facts.picture_fraction > 0.3


# ----------------------------------------------------------------------------- columns and sections

@pytest.mark.parametrize("columns", [2, 3])
def test_columns_read_section_by_section_across_a_spanning_picture_and_caption(columns):
    page = _page(columns=columns, span_picture=True, seed=10 + columns)
    analysis = analyze_page(page.image)
    _, pairs = _assert_good(page, analysis)
    order = [g for g, _ in sorted(pairs, key=lambda p: p[1])]
    assert order == sorted(order)


def test_centred_byline_above_columns_is_its_own_block_read_first():
    """Pure XY-cut: a centred short line inside the middle column's extent is not column 2's first line."""
    h = 10.0
    boxes = []
    boxes.append([145, 0, 175, 10])                        # byline, centred over the middle column
    for col in range(3):
        for line in range(8):
            y = 30 + line * 15
            boxes.append([col * 120, y, col * 120 + 80, y + 10])
    boxes = np.array(boxes, dtype=np.float64)
    p = CutParams(col_gap=2 * h, row_gap=1.5 * h, min_col_width=4 * h, min_col_height=6 * h, tolerance=0.6 * h,
                  fine_row_gap=0.25 * h, short_col_height=15 * h, short_col_gap=3 * h, letter_height=h)
    blocks = xy_cut(boxes, p)
    assert blocks[0].tolist() == [0]
    firsts = [int(b.min()) for b in blocks[1:]]
    assert firsts == [1, 9, 17]      # then column 1, 2, 3, each whole


# ----------------------------------------------------------------------------- page furniture

def test_header_page_number_and_footer_are_own_regions_first_and_last():
    page = _page(columns=2, header=True, footer=True, span_picture=False, seed=21)
    analysis = analyze_page(page.image)
    _assert_good(page, analysis)
    kinds = [r.kind for r in analysis.regions]
    assert kinds[:2] == ["header", "page-number"], kinds
    assert kinds[-2:] == ["footer", "page-number"], kinds
    assert all(k not in ("header", "footer", "page-number") for k in kinds[2:-2])
    xml = to_page_layout(analysis, "p").to_pagexml_string()
    assert 'type="header"' in xml and 'type="page-number"' in xml and 'type="footer"' in xml


def test_title_is_not_taken_for_a_header():
    page = _page(columns=1, header=False, footer=False, span_picture=False, seed=22)
    analysis = analyze_page(page.image)
    assert analysis.regions[0].kind is None


def test_drop_cap_is_its_own_region_before_its_paragraph():
    page = _page(columns=2, drop_cap=True, span_picture=False, seed=23)
    analysis = analyze_page(page.image)
    _, pairs = _assert_good(page, analysis)
    caps = [i for i, r in enumerate(analysis.regions) if r.kind == "drop-capital"]
    assert len(caps) == 1
    gt_cap = next(i for i, ln in enumerate(page.lines) if len(ln.text) == 1 and ln.text.isupper())
    det_index = {g: d for g, d in pairs}[gt_cap]
    flat = [(ri, li) for ri, r in enumerate(analysis.regions) for li in range(len(r.lines))]
    assert flat[det_index][0] == caps[0]
    # The paragraph's first line comes right after it and starts right of the cap.
    next_line = analysis.regions[caps[0] + 1].lines[0]
    cap = analysis.regions[caps[0]].polygon
    assert next_line.baseline[:, 0].min() > (cap[:, 0].min() + cap[:, 0].max()) / 2


# ----------------------------------------------------------------------------- orientation

@pytest.mark.parametrize("orientation", [90, 180, 270])
def test_pages_turned_by_quarter_turns_are_detected_and_read_upright(orientation):
    page = _page(columns=2, span_picture=False, orientation=orientation, seed=30 + orientation // 90)
    analysis = analyze_page(page.image)
    assert analysis.facts.orientation == orientation
    assert analysis.facts.orientation_conf > 0.5
    _assert_good(page, analysis, orientation)


@pytest.mark.parametrize("deg", [0, 90, 180, 270])
def test_rotate_boxes_matches_numpy_rot90(deg):
    img = np.zeros((30, 50), dtype=np.uint8)
    img[5:9, 10:20] = 1
    boxes = np.array([[10, 5, 20, 9]], dtype=np.float64)
    turned = np.rot90(img, -(deg // 90))
    ys, xs = np.nonzero(turned)
    assert rotate_boxes(boxes, img.shape, deg)[0].tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_half_turn_negates_the_up_down_score(seed):
    """detect_orientation scores one of each pair of opposite turns and negates it for the other."""
    rng = np.random.default_rng(seed)
    x0 = rng.uniform(0, 2000, 400)
    y0 = rng.integers(0, 40, 400) * 50 + rng.uniform(-8, 8, 400)
    boxes = np.stack([x0, y0, x0 + rng.uniform(10, 30, 400), y0 + rng.uniform(15, 40, 400)], axis=1)
    for first, second in ((0, 180), (90, 270)):
        score = up_down_score(rotate_boxes(boxes, (2100, 2100), first), 30.0)
        assert score != 0
        assert up_down_score(rotate_boxes(boxes, (2100, 2100), second), 30.0) == pytest.approx(-score, abs=1e-12)


def test_upright_page_stays_at_zero():
    page = _page(columns=1, span_picture=False, seed=40)
    assert analyze_page(page.image).facts.orientation == 0


def test_orientation_can_be_switched_off():
    page = _page(columns=1, span_picture=False, orientation=180, seed=41)
    analysis = analyze_page(page.image, LayoutParams(detect_orientation=0))
    assert analysis.facts.orientation == 0


# ----------------------------------------------------------------------------- degradations

def test_bleed_through_and_low_contrast_make_no_extra_lines():
    page = _page(columns=2, span_picture=False, bleed_through=0.9, contrast=0.5, seed=50)
    analysis = analyze_page(page.image)
    _assert_good(page, analysis, min_recall=0.95)


# ----------------------------------------------------------------------------- big pages

def test_big_page_is_analysed_at_working_resolution_and_mapped_back():
    page = _page(dpi=400, columns=2, span_picture=False, seed=60)
    analysis = analyze_page(page.image, LayoutParams(max_working_side=1600))
    assert analysis.facts.scale == pytest.approx(1600 / max(page.image.shape), abs=1e-3)
    assert analysis.size == page.image.shape[:2]
    score, pairs = _assert_good(page, analysis)
    assert score.baseline_error < 0.2
    # Heights are in full-resolution pixels: about the letters' size at 400 dpi.
    x_height = np.median([ln.x_height for ln in page.lines])
    up = np.median([ln.heights[0] for ln in analysis.lines])
    assert 1.0 * x_height < up < 2.5 * x_height


# ----------------------------------------------------------------------------- facts

def test_facts_round_trip_through_page_xml():
    facts = LayoutFacts(orientation=270, orientation_conf=0.8, skew=-0.4, ink=True, text_components=1234,
                        lines=0, regions=0, picture_fraction=0.25, border=True, scale=0.5)
    assert LayoutFacts.from_custom(facts.to_custom()) == facts
    assert facts.ink_without_text
    page = _page(columns=1, span_picture=False, seed=70, scan=False)
    analysis = analyze_page(page.image)
    xml = add_facts_to_pagexml(to_page_layout(analysis, "p").to_pagexml_string(), analysis.facts)
    back = read_facts(xml)
    assert back == analysis.facts
    assert back.ink and back.lines == len(page.lines) and not back.ink_without_text
    assert read_facts("<PcGts><Page/></PcGts>") is None
    assert read_facts(b"not xml") is None


def test_blank_page_has_no_ink_and_a_picture_only_page_has_ink_without_text():
    blank = np.full((1200, 900), 245, dtype=np.uint8)
    blank = np.clip(blank + np.random.default_rng(0).normal(0, 4, blank.shape), 0, 255).astype(np.uint8)
    facts = analyze_page(blank).facts
    assert not facts.ink and facts.lines == 0
    photo = blank.copy()
    photo[200:900, 150:750] = magazine.halftone_photo(np.random.default_rng(2), 700, 600, 200)
    facts = analyze_page(cv2.GaussianBlur(photo, (3, 3), 0)).facts
    assert facts.ink and facts.lines == 0 and facts.ink_without_text


# ----------------------------------------------------------------------------- the stage

def test_layout_stage_writes_facts_and_region_types_into_the_page_xml():
    """What the quality flags of later stages read: Page/@custom 'layout {...}' and TextRegion/@type."""
    from pero_worker.libs import message_pb2
    from pero_worker.worker.processors import build_processor

    page = _page(columns=2, span_picture=False, orientation=180, seed=80)
    ok, buf = cv2.imencode(".png", page.image)
    request = message_pb2.ProcessingRequest(uuid="u", page_uuid="p")
    request.results.add(name="turned.png", content=buf.tobytes())
    build_processor("[WORKER]\nMETHOD = LAYOUT\n[LAYOUT]\nMAX_WORKING_SIDE = 0\n", None).process(request)
    xml = next(r for r in request.results if r.name == "turned.png_page.xml").content
    facts = read_facts(xml)
    assert facts is not None and facts.orientation == 180 and facts.ink and facts.lines >= len(page.lines) - 2
    assert facts.scale == 1.0
    assert b'type="header"' in xml and b'type="footer"' in xml
