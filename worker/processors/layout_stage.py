"""LAYOUT processor: model-free page layout analysis as its own stage.

For one request it finds the input image among the results (by content),
runs `worker.layout.analyze_page` (binarisation, deskew, columns and blocks by
XY-cut, lines with baselines and heights, reading order) and writes the
result as PAGE XML into `<image name>_page.xml` (replacing an entry of that
name).  What the layout found out about the page (orientation, ink, lines, pictures,
scanner border; `worker.layout.facts.LayoutFacts`) goes into the Page element's
`custom` attribute, for the quality flags of later stages.  The next stage is a
pero-ocr stage with RUN_LAYOUT_PARSER off: it loads that PAGE XML, crops the lines with its LINE_CROPPER and reads them.

Stage config (`config.ini` on ZooKeeper; no model archive needed):

    [WORKER]
    METHOD = LAYOUT

    [LAYOUT]               ; optional, every key optional (units: text heights, degrees)
    MAX_SKEW_DEG = 3.0
    COLUMN_GAP = 2.0
    BLOCK_GAP = 1.5
    MIN_COLUMN_WIDTH = 4.0
    LINE_SPLIT_GAP = 3.0
    MAX_WORKING_SIDE = 2600    ; pixels: bigger scans are analysed reduced (0 = never)
    DETECT_ORIENTATION = 1     ; 0 = pages are known to be upright
"""
from __future__ import annotations

import configparser
import dataclasses
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from pero_worker.worker.processors import ProcessingError, StageConfigError
from pero_worker.worker.processors.images import decode_image, find_image

if TYPE_CHECKING:
    from pero_worker.libs.message_pb2 import ProcessingRequest
    from pero_worker.worker.layout import LayoutParams

log = logging.getLogger(__name__)

PAGE_XML_SUFFIX = "_page.xml"
LAYOUT_SECTION = "LAYOUT"


def layout_params(config: configparser.ConfigParser) -> LayoutParams:
    """LayoutParams from the optional [LAYOUT] section (pure); StageConfigError for unknown keys or bad values."""
    from pero_worker.worker.layout import LayoutParams

    defaults = LayoutParams()
    if not config.has_section(LAYOUT_SECTION):
        return defaults
    fields = {f.name: f for f in dataclasses.fields(LayoutParams)}
    changes = {}
    for key, raw in config.items(LAYOUT_SECTION, raw=True):
        if key in config.defaults():
            continue
        name = key.lower()
        if name not in fields:
            raise StageConfigError(f"[{LAYOUT_SECTION}] {key.upper()} is not a layout setting "
                                   f"(known: {', '.join(n.upper() for n in fields)})")
        try:
            value = float(raw)
        except ValueError:
            raise StageConfigError(f"[{LAYOUT_SECTION}] {key.upper()} = {raw!r} is not a number") from None
        if not value >= 0 or value == float("inf"):
            raise StageConfigError(f"[{LAYOUT_SECTION}] {key.upper()} = {raw!r} must be a finite number >= 0")
        changes[name] = value
    return dataclasses.replace(defaults, **changes)


def image_stem(name: str) -> str:
    """PAGE id: the image's file name without folder and extension (pure)."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    stem = base.rsplit(".", 1)[0] if "." in base[1:] else base
    return stem or "page"


class LayoutProcessor:
    def __init__(self, params: LayoutParams) -> None:
        self.params = params

    def process(self, request: ProcessingRequest) -> None:
        from pero_worker.worker.layout import analyze_page, to_page_layout
        from pero_worker.worker.layout.facts import add_facts_to_pagexml

        results = request.results
        _, image_data = find_image(results)
        image_name = image_data.name or "page"
        image = decode_image(image_data.content, image_data.name, grey=True)
        started = time.perf_counter()
        try:
            analysis = analyze_page(image, self.params)
            xml = to_page_layout(analysis, image_stem(image_name)).to_pagexml_string()
            xml = add_facts_to_pagexml(xml, analysis.facts)
        except MemoryError:
            raise ProcessingError(f"not enough memory to analyse the layout of {image_name!r}") from None
        except Exception as error:  # an algorithm failure on odd input must not kill the worker
            log.error("layout analysis failed on %r", image_name, exc_info=True)
            raise ProcessingError(f"layout analysis failed on {image_name!r}: {type(error).__name__}: {error}") \
                from error
        out_name = image_name + PAGE_XML_SUFFIX
        content = xml.encode("utf-8")
        for data in results:
            if data.name == out_name:
                data.content = content
                break
        else:
            results.add(name=out_name, content=content)
        facts = analysis.facts
        log.info("layout of %r (%d x %d): %d regions, %d lines, turned %d deg (confidence %.2f), skew %+.2f deg, "
                 "text height %.0f px, pictures %.0f %%, border %s, working scale %.2f, %.2f s",
                 image_name, image.shape[1], image.shape[0], len(analysis.regions), len(analysis.lines),
                 facts.orientation, facts.orientation_conf, analysis.skew_deg, analysis.text_height,
                 100 * facts.picture_fraction, "removed" if facts.border else "none", facts.scale,
                 time.perf_counter() - started)
        if facts.ink_without_text:
            log.warning("layout of %r: the page has print on it but no text line was found", image_name)

    def close(self) -> None:
        pass


def build(config: configparser.ConfigParser, model_dir: Path | None) -> LayoutProcessor:
    """The LAYOUT processor; it needs no model files (model_dir is ignored)."""
    try:
        import cv2  # noqa: F401
        import pero_ocr.core.layout  # noqa: F401
    except ImportError as error:
        raise StageConfigError(f"the LAYOUT processor needs OpenCV and pero-ocr: {error}") from None
    return LayoutProcessor(layout_params(config))


__all__ = ["build", "LayoutProcessor", "layout_params", "image_stem"]
