"""Layout analysis on rendered pages: columns, resolutions, binary/grey input, pictures and rules,
skew, and that pero-ocr's cropper gets good line crops from the result."""

from __future__ import annotations

import numpy as np
import pytest

from pero_worker.bench import synth
from pero_worker.bench.scoring import match_lines, score_layout
from pero_worker.worker.layout import analyze_page, to_page_layout

A5 = dict(width_in=5.8, height_in=8.3, margin_in=0.5)


def _render(**kw) -> synth.SynthPage:
    spec = synth.PageSpec(**{**A5, **kw})
    return synth.render_page(spec)


def _gt(page: synth.SynthPage) -> list[tuple[np.ndarray, float]]:
    return [(line.baseline, line.x_height) for line in page.lines]


def _check(page: synth.SynthPage, min_recall: float = 0.97):
    analysis = analyze_page(page.image)
    det = [line.baseline for line in analysis.lines]
    score = score_layout(_gt(page), det)
    assert score.recall >= min_recall, score
    assert score.precision >= min_recall, score
    assert score.order_ok, score
    return analysis, score


def test_two_column_page_comes_out_column_by_column():
    page = _render(dpi=200, columns=2, title=True, font_pt=10, seed=11, rotation_deg=0.6,
                   blur_sigma=0.5, noise_sigma=5, illumination=0.2, jpeg_quality=70)
    analysis, score = _check(page)
    cols = [line.column for line in page.lines]
    assert cols.count(0) >= 10 and cols.count(1) >= 10
    pairs = sorted(match_lines(_gt(page), [line.baseline for line in analysis.lines]), key=lambda p: p[1])
    seen_cols = [page.lines[g].column for g, _ in pairs]
    # Title first, then every line of column 1, then every line of column 2.
    assert seen_cols == sorted(seen_cols)
    assert [g for g, _ in pairs] == sorted(g for g, _ in pairs)


@pytest.mark.parametrize("dpi,paper", [(150, A5), (400, dict(width_in=4.0, height_in=4.5, margin_in=0.4))])
def test_resolution_150_and_400_dpi(dpi, paper):
    spec = synth.PageSpec(**{**paper, "dpi": dpi, "font_pt": 10, "seed": dpi, "rotation_deg": -0.8,
                             "blur_sigma": 0.4 * dpi / 300, "noise_sigma": 6, "illumination": 0.25,
                             "jpeg_quality": 60})
    page = synth.render_page(spec)
    analysis, _ = _check(page)
    assert analysis.skew_deg == pytest.approx(0.8, abs=0.15)


@pytest.mark.parametrize("binary", [True, False])
def test_binary_and_greyscale_pages(binary):
    page = _render(dpi=200, columns=2, seed=21, rotation_deg=0.4, blur_sigma=0.6, noise_sigma=8,
                   illumination=0.3, binary=binary, jpeg_quality=None if binary else 55)
    values = np.unique(page.image)
    assert (len(values) == 2) == binary
    _check(page)


@pytest.mark.parametrize("binary", [False, True])
def test_picture_and_rule_are_not_text(binary):
    page = _render(dpi=200, columns=1, title=True, rule=True, picture=True, seed=5, rotation_deg=0.5,
                   noise_sigma=5, blur_sigma=0.5, jpeg_quality=None if binary else 70, binary=binary)
    analysis, score = _check(page)
    assert score.det_lines == len(page.lines)       # the rule is no line either
    pic = page.picture_boxes[0]
    x0, y0 = pic.min(axis=0)
    x1, y1 = pic.max(axis=0)
    for line in analysis.lines:
        cx, cy = line.baseline.mean(axis=0)
        assert not (x0 <= cx <= x1 and y0 <= cy <= y1), "a line was found inside the picture"


def test_skewed_page_is_read_straight():
    page = _render(dpi=200, columns=1, seed=8, rotation_deg=2.5, noise_sigma=4)
    analysis, _ = _check(page)
    assert analysis.skew_deg == pytest.approx(-2.5, abs=0.1)


def test_page_xml_round_trip_and_pero_ocr_crops():
    """The PAGE XML loads in pero-ocr and its LINE_CROPPER cuts each line cleanly: a 40 px crop
    with the ink in its middle and (almost) nothing of the neighbouring lines at its edges."""
    from pero_ocr.core.crop_engine import EngineLineCropper
    from pero_ocr.core.layout import PageLayout

    page = _render(dpi=250, columns=1, seed=3, rotation_deg=1.0, noise_sigma=4, blur_sigma=0.5, leading=1.2)
    analysis = analyze_page(page.image)
    xml = to_page_layout(analysis, "page").to_pagexml_string()
    layout = PageLayout()
    layout.from_pagexml_string(xml)
    lines = list(layout.lines_iterator())
    assert len(lines) == len(analysis.lines) == len(page.lines)
    assert [r.id for r in layout.regions] == sorted(r.id for r in layout.regions)
    cropper = EngineLineCropper(line_height=40, poly=2, scale=1.25)
    img = np.dstack([page.image] * 3)
    for line in lines:
        crop = cropper.crop(img, line.baseline, line.heights)[:, :, 0].astype(np.float32)
        assert crop.shape[0] == 40 and crop.shape[1] > 40
        ink = (crop < 128).mean(axis=1)
        assert ink[12:34].mean() > 0.08                     # the line itself
        assert ink[:3].mean() < 0.05 and ink[-3:].mean() < 0.05   # little of the neighbours


def test_blank_and_tiny_pages_give_no_lines():
    assert analyze_page(np.full((300, 200), 240, np.uint8)).regions == []
    assert analyze_page(np.zeros((300, 200), np.uint8)).regions == []
    noise = np.random.default_rng(0).integers(200, 256, (120, 90)).astype(np.uint8)
    assert len(analyze_page(noise).lines) <= 1


def test_colour_input_is_accepted():
    page = _render(dpi=150, seed=4)
    bgr = np.dstack([page.image, page.image, np.clip(page.image.astype(int) + 10, 0, 255).astype(np.uint8)])
    gray_lines = len(analyze_page(page.image).lines)
    assert len(analyze_page(bgr).lines) == gray_lines == len(page.lines)
