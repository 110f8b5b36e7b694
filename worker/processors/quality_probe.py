"""Measure a page's quality after OCR (the numbers libs/quality.py decides on) and mark its PAGE XML.

- **Character confidence** comes from the CTC posteriors: along the best path, each emitted
  character's confidence is its highest posterior over the frames it occupies; a line's confidence
  (written to `TextEquiv/@conf`) is the mean over its characters, the page's the mean over all its
  characters.  (pero-ocr's own value is the single worst frame of the line, which says little about
  the line as a whole.)
- **Ink**: the share of pixels clearly darker than the paper (on every 2nd..nth pixel of big pages);
  on a page dark all over, the share of dark pixels.
- **Orientation**: only for a page read with doubt (`needs_orientation_check`), its longest lines are
  compared with the longest lines found afresh on the page turned clockwise by 90, 180 and 270
  degrees (the model-free layout analysis and the stage's own line cropper and OCR, on the page
  scaled to at most 2600 px a side), so the check costs nothing on good pages and a few seconds
  on doubtful ones.
- **PAGE XML mark**: `Metadata/UserDefined/UserAttribute` entries (PAGE 2019 schema) named
  `quality_flags` (the codes, comma-separated; empty when the page is fine), `quality_warning`,
  `mean_confidence` and `ink_fraction`.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from pero_worker.libs.quality import (
    DEFAULT_THRESHOLDS,
    PageNumbers,
    QualityFlag,
    QualityThresholds,
    needs_orientation_check,
    warning_line,
)
from pero_worker.worker.processors.character_prior import best_path

log = logging.getLogger(__name__)

SAMPLE_LINES = 8                 # longest lines compared in the orientation check
INK_SAMPLE_SIDE = 1500           # the ink share is measured on at most about this many pixels per side
DARK_PAGE = 96                   # a page whose 90th grey percentile is below this is dark all over
CHECK_SIDE = 2600                # the orientation check reads pages scaled to at most this many pixels a side
USER_ATTRIBUTES = ("quality_flags", "quality_warning", "mean_confidence", "ink_fraction")


def character_confidences(logits: Any, penalties: np.ndarray | None = None) -> np.ndarray:
    """Confidence of each character on the best CTC path of T x C logits (blank = last class) (pure)."""
    return best_path(logits, penalties)[1]


def ink_fraction(image: np.ndarray) -> float:
    """Share of pixels clearly darker than the paper (pure): text, pictures, dark scan borders."""
    # Sample first, then average the colours: averaging a 600 dpi A3 scan whole took 2.2 s and a
    # 560 MB float64 copy (bench/page_speed.py).
    step = max(1, max(image.shape[:2]) // INK_SAMPLE_SIDE)
    view = image[::step, ::step]
    if view.ndim == 3 and view.shape[2] == 3:
        # the float32 mean of the three channels, bit for bit (a float32 sum of three whole numbers is exact),
        # without numpy's slow reduction over a 3-wide axis: 16 instead of 70 ms on a 300 dpi A4 page
        sample = view[..., 0].astype(np.float32)
        sample += view[..., 1]
        sample += view[..., 2]
        sample /= np.float32(3)
    else:
        sample = np.asarray(view, dtype=np.float32)
        if sample.ndim == 3:
            sample = sample.mean(axis=2)
    if sample.size == 0:
        return 0.0
    paper = float(np.percentile(sample, 90))
    # A page dark almost all over (an open scanner lid, a black sheet) has no paper to compare with.
    threshold = 128.0 if paper < DARK_PAGE else paper - max(50.0, 0.35 * paper)
    return float(np.count_nonzero(sample < threshold)) / sample.size


def _line_confidences(lines: Iterable[Any], penalties: np.ndarray | None,
                      known: Mapping[int, np.ndarray] | None = None) -> list[np.ndarray]:
    out = []
    for line in lines:
        if known is not None and id(line) in known:
            out.append(known[id(line)])
            continue
        logits = line.get_dense_logits() if getattr(line, "logits", None) is not None else None
        out.append(character_confidences(logits, penalties) if logits is not None
                   else np.zeros(0, dtype=np.float32))
    return out


def _mean(parts: list[np.ndarray]) -> float | None:
    total = sum(part.size for part in parts)
    return float(sum(part.sum() for part in parts) / total) if total else None


def _longest(lines: list[Any], count: int) -> list[Any]:
    def length(line: Any) -> float:
        baseline = getattr(line, "baseline", None)
        if baseline is None or len(baseline) < 2:
            return 0.0
        return float(np.linalg.norm(np.asarray(baseline[-1], float) - np.asarray(baseline[0], float)))
    return sorted(lines, key=length, reverse=True)[:count]


def set_line_confidences(page_layout: Any, penalties: np.ndarray | None = None,
                         known: Mapping[int, np.ndarray] | None = None,
                         no_characters: Callable[[Any], float] | None = None) -> tuple[int, int, float | None]:
    """Write each line's mean character confidence into it (TextEquiv/@conf); (lines, characters, page mean).
    `known`: confidences already decoded with the same penalties, by id(line) (character_prior.apply_prior).
    `no_characters`: the confidence of a line with logits but no character on its best path (pero-ocr's
    PageParser.compute_line_confidence), which otherwise keeps the one it had."""
    lines = list(page_layout.lines_iterator())
    parts = _line_confidences(lines, penalties, known)
    for line, part in zip(lines, parts):
        if part.size:
            line.transcription_confidence = float(part.mean())
        elif no_characters is not None and getattr(line, "logits", None) is not None:
            line.transcription_confidence = no_characters(line)
    characters = sum(len(line.transcription or "") for line in lines)
    return len(lines), characters, _mean(parts)


def turned_confidences(image: np.ndarray, parser: Any, penalties: np.ndarray | None = None,
                       count: int = SAMPLE_LINES) -> dict[int, float]:
    """Mean character confidence of the longest lines found on the page turned clockwise by 90/180/270 degrees."""
    import cv2

    from pero_worker.worker.layout import analyze_page, to_page_layout
    scale = min(1.0, CHECK_SIDE / max(image.shape[:2]))
    if scale < 1.0:   # a 600 dpi scan reads as well at ~250 dpi, in a seventh of the time and memory
        image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    out: dict[int, float] = {}
    for angle in (90, 180, 270):
        turned = np.ascontiguousarray(np.rot90(image, k=(360 - angle) // 90))
        layout = to_page_layout(analyze_page(turned), "turned")
        chosen = {id(line) for line in _longest(list(layout.lines_iterator()), count)}
        for region in layout.regions:
            region.lines = [line for line in region.lines if id(line) in chosen]
        if not chosen:
            continue
        layout = parser.line_cropper.process_page(turned, layout)
        layout = parser.ocr.process_page(turned, layout)
        confidence = _mean(_line_confidences(layout.lines_iterator(), penalties))
        if confidence is not None:
            out[angle] = confidence
    return out


def can_check_orientation(parser: Any) -> bool:
    """The orientation check needs the stage's own line cropper and line OCR."""
    return getattr(parser, "line_cropper", None) is not None and getattr(parser, "ocr", None) is not None


def measure_page(image: np.ndarray, page_layout: Any, parser: Any, penalties: np.ndarray | None = None,
                 thresholds: QualityThresholds = DEFAULT_THRESHOLDS,
                 known: Mapping[int, np.ndarray] | None = None) -> PageNumbers:
    """The numbers of one page after OCR (sets every line's confidence on the way: ours, or pero-ocr's for a
    line without characters); `penalties` as the stage's character prior decodes (character_prior.py),
    `known` as set_line_confidences takes it."""
    lines, characters, mean = set_line_confidences(page_layout, penalties, known,
                                                   getattr(parser, "compute_line_confidence", None))
    numbers = PageNumbers(ink_fraction=ink_fraction(image), lines=lines, characters=characters,
                          mean_confidence=mean)
    if not needs_orientation_check(numbers, thresholds) or not can_check_orientation(parser):
        return numbers
    sample = _mean(_line_confidences(_longest(list(page_layout.lines_iterator()), SAMPLE_LINES), penalties, known))
    try:
        turned = turned_confidences(image, parser, penalties)
    except Exception as error:  # the check is advice: a failure of it must not fail the page
        log.warning("orientation check failed: %s: %s", type(error).__name__, error)
        turned = {}
    return PageNumbers(numbers.ink_fraction, lines, characters, mean, sample, turned)


def mark_page_xml(xml: bytes, numbers: PageNumbers, flags: list[QualityFlag]) -> bytes:
    """The PAGE XML with the quality entries in Metadata/UserDefined (earlier ones of ours replaced)."""
    from lxml import etree

    parser = etree.XMLParser(resolve_entities=False, no_network=True, remove_blank_text=False)
    root = etree.fromstring(xml, parser)
    namespace = etree.QName(root).namespace
    tag = (lambda name: f"{{{namespace}}}{name}") if namespace else (lambda name: name)
    metadata = root.find(tag("Metadata"))
    if metadata is None:       # PAGE 2013 has no Metadata element: nothing to mark
        return xml
    user_defined = metadata.find(tag("UserDefined"))
    if user_defined is None:
        user_defined = etree.Element(tag("UserDefined"))
        item = metadata.find(tag("MetadataItem"))
        if item is not None:
            item.addprevious(user_defined)
        else:
            metadata.append(user_defined)
    for old in user_defined.findall(tag("UserAttribute")):
        if old.get("name") in USER_ATTRIBUTES:
            user_defined.remove(old)
    values = [("quality_flags", "xsd:string", ",".join(flag.code for flag in flags)),
              ("quality_warning", "xsd:string", warning_line(flags) if flags else ""),
              ("mean_confidence", "xsd:float",
               "" if numbers.mean_confidence is None else f"{numbers.mean_confidence:.4f}"),
              ("ink_fraction", "xsd:float", f"{numbers.ink_fraction:.4f}")]
    for name, kind, value in values:
        if value == "" and kind == "xsd:float":
            continue
        etree.SubElement(user_defined, tag("UserAttribute"), name=name, type=kind, value=value)
    etree.indent(user_defined, space="  ", level=2)
    return etree.tostring(root, xml_declaration=True, encoding="utf-8", pretty_print=True)


__all__ = ["character_confidences", "ink_fraction", "set_line_confidences", "turned_confidences",
           "can_check_orientation", "measure_page", "mark_page_xml", "SAMPLE_LINES"]
