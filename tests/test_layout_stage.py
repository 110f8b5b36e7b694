"""The LAYOUT stage processor, and the hand-off to a pero-ocr stage with its layout step off."""

from __future__ import annotations

import configparser

import cv2
import numpy as np
import pytest

from pero_worker.bench import synth
from pero_worker.libs import message_pb2
from pero_worker.worker.processors import ProcessingError, StageConfigError, build_processor
from pero_worker.worker.processors.layout_stage import image_stem, layout_params

LAYOUT_CONFIG = "[WORKER]\nMETHOD = LAYOUT\n"


@pytest.fixture(scope="module")
def page() -> synth.SynthPage:
    spec = synth.PageSpec(width_in=5.8, height_in=8.3, margin_in=0.5, dpi=150, columns=2, title=True,
                          seed=31, rotation_deg=0.5, noise_sigma=5, jpeg_quality=70)
    return synth.render_page(spec)


def _png(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", image)
    assert ok
    return buf.tobytes()


def _request(*results: tuple[str, bytes]) -> message_pb2.ProcessingRequest:
    req = message_pb2.ProcessingRequest(uuid="u1", page_uuid="p1")
    for name, content in results:
        req.results.add(name=name, content=content)
    return req


def _layout_of(xml: bytes):
    from pero_ocr.core.layout import PageLayout
    layout = PageLayout()
    layout.from_pagexml_string(xml.decode("utf-8"))
    return layout


def test_layout_processor_writes_page_xml_next_to_the_image(page):
    proc = build_processor(LAYOUT_CONFIG, None)
    # The image is found by content: another result comes first, the name has no extension.
    req = _request(("notes.txt", b"hello"), ("scan", _png(page.image)))
    proc.process(req)
    names = [r.name for r in req.results]
    assert names == ["notes.txt", "scan", "scan_page.xml"]
    layout = _layout_of(req.results[2].content)
    assert layout.id == "scan"
    assert layout.page_size == page.image.shape[:2]
    assert sum(1 for _ in layout.lines_iterator()) == len(page.lines)
    # Running again replaces the PAGE XML instead of adding a second one.
    req.results[2].content = b"old"
    proc.process(req)
    assert [r.name for r in req.results] == names
    assert req.results[2].content.startswith(b"<?xml")
    proc.close()


def test_layout_processor_rejects_requests_without_an_image():
    proc = build_processor(LAYOUT_CONFIG, None)
    with pytest.raises(ProcessingError):
        proc.process(_request(("page.jpg", b"not an image at all")))
    with pytest.raises(ProcessingError):
        proc.process(_request())


def _config(text: str) -> configparser.ConfigParser:
    c = configparser.ConfigParser()
    c.read_string(text)
    return c


@pytest.mark.parametrize("section,error", [
    ("[LAYOUT]\nCOLUMN_GAP = 3\nMAX_SKEW_DEG = 5\n", None),
    ("[LAYOUT]\nCOLUMNS = 2\n", "not a layout setting"),
    ("[LAYOUT]\nCOLUMN_GAP = wide\n", "not a number"),
    ("[LAYOUT]\nCOLUMN_GAP = -1\n", ">= 0"),
    ("[LAYOUT]\nCOLUMN_GAP = nan\n", ">= 0"),
])
def test_layout_section(section, error):
    config = _config(LAYOUT_CONFIG + section)
    if error is None:
        params = layout_params(config)
        assert params.column_gap == 3.0 and params.max_skew_deg == 5.0
        build_processor(LAYOUT_CONFIG + section, None).close()
    else:
        with pytest.raises(StageConfigError, match=error):
            layout_params(config)
        with pytest.raises(StageConfigError):
            build_processor(LAYOUT_CONFIG + section, None)


@pytest.mark.parametrize("name,stem", [("scan.jpg", "scan"), ("a/b/page.v2.png", "page.v2"), ("scan", "scan"),
                                       (".hidden", ".hidden"), ("", "page")])
def test_image_stem(name, stem):
    assert image_stem(name) == stem


CROP_ONLY_CONFIG = """
[PAGE_PARSER]
RUN_LAYOUT_PARSER = no
RUN_LINE_CROPPER = yes
RUN_OCR = no
RUN_DECODER = no

[LINE_CROPPER]
INTERP = 2
LINE_SCALE = 1.25
LINE_HEIGHT = 40
"""


def test_pero_ocr_stage_with_layout_off_uses_our_lines(page):
    """LAYOUT stage, then a pero-ocr stage (layout off): pero-ocr loads our PAGE XML, crops every
    line with its LINE_CROPPER, and writes the layout back with the same lines in the same order."""
    from pero_ocr.core.layout import PageLayout
    from pero_ocr.document_ocr.page_parser import PageParser

    req = _request(("page.png", _png(page.image)))
    build_processor(LAYOUT_CONFIG, None).process(req)
    ours = _layout_of(req.results[1].content)
    ocr_stage = build_processor(CROP_ONLY_CONFIG, None, device="cpu")
    ocr_stage.process(req)
    ocr_stage.close()
    assert [r.name for r in req.results] == ["page.png", "page.png_page.xml"]
    after = _layout_of(req.results[1].content)
    assert [line.id for line in after.lines_iterator()] == [line.id for line in ours.lines_iterator()]

    # The crops pero-ocr makes from it: one 40 px high crop per line, ink in the middle.
    config = configparser.ConfigParser()
    config.read_string(CROP_ONLY_CONFIG)
    parser = PageParser(config)
    layout = PageLayout()
    layout.from_pagexml_string(req.results[1].content.decode("utf-8"))
    layout = parser.process_page(np.dstack([page.image] * 3), layout)
    for line in layout.lines_iterator():
        assert line.crop.shape[0] == 40
        ink = (line.crop[:, :, 0] < 128).mean(axis=1)
        assert ink[12:34].mean() > 0.05
