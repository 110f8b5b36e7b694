"""Quality flags (libs/quality.py), the character prior and the page measurements: the pure parts, table-tested.

Real pages (a good one, upside down, sideways, inked without text) go through real workers in
tests/test_ocr_pipeline.py."""
from __future__ import annotations

import configparser

import numpy as np
import pytest
from lxml import etree

from pero_worker.libs.quality import (
    LOW_CONFIDENCE,
    NO_TEXT,
    SIDEWAYS,
    UPSIDE_DOWN,
    PageNumbers,
    QualityFlag,
    best_turn,
    needs_orientation_check,
    parse_warning,
    quality_flags,
    warning_line,
)
from pero_worker.worker.processors.character_prior import (
    PriorSettings,
    apply_prior,
    best_path,
    decode,
    penalty_vector,
    prior_settings,
)
from pero_worker.worker.processors.quality_probe import character_confidences, ink_fraction, mark_page_xml

# --- the decision -------------------------------------------------------------------------

GOOD = dict(ink_fraction=0.06, lines=40, characters=3000, mean_confidence=0.99)


@pytest.mark.parametrize(("numbers", "expected"), [
    (PageNumbers(**GOOD), []),
    (PageNumbers(0.0, 0, 0, None), []),                                   # a blank page is not flagged
    (PageNumbers(0.001, 0, 0, None), []),                                 # specks of dust are no ink
    (PageNumbers(0.17, 0, 0, None), [NO_TEXT]),                           # border + photo, no lines
    (PageNumbers(0.17, 1, 1, 0.44), [NO_TEXT]),                           # one junk character
    (PageNumbers(0.05, 30, 2000, 0.95), []),                              # a noisy page, still fine
    (PageNumbers(0.05, 30, 2000, 0.85), [LOW_CONFIDENCE]),
    (PageNumbers(0.05, 30, 2000, 0.80, 0.81, {90: 0.6, 180: 0.99, 270: 0.5}), [UPSIDE_DOWN, LOW_CONFIDENCE]),
    (PageNumbers(0.05, 700, 2400, 0.56, 0.57, {90: 0.99, 180: 0.5, 270: 0.6}), [SIDEWAYS, LOW_CONFIDENCE]),
    (PageNumbers(0.05, 30, 2000, 0.95, 0.95, {90: 0.6, 180: 0.97, 270: 0.5}), []),   # not clearly better
    (PageNumbers(0.05, 30, 2000, 0.60, 0.60, {90: 0.7, 180: 0.75, 270: 0.5}), [LOW_CONFIDENCE]),  # noise all ways
    (PageNumbers(0.05, 30, 2000, 0.93, 0.88, {180: 0.99}), [UPSIDE_DOWN]),
    (PageNumbers(**GOOD, layout_turn=180), [UPSIDE_DOWN]),               # turned upright by the layout stage
    (PageNumbers(**GOOD, layout_turn=90), [SIDEWAYS]),
    (PageNumbers(**GOOD, layout_turn=270), [SIDEWAYS]),
    (PageNumbers(0.05, 30, 2000, 0.80, 0.81, {180: 0.99}, layout_turn=90), [SIDEWAYS, LOW_CONFIDENCE]),  # one turn flag
])
def test_flags_from_numbers(numbers: PageNumbers, expected: list[str]) -> None:
    assert [flag.code for flag in quality_flags(numbers)] == expected


@pytest.mark.parametrize(("numbers", "check"), [
    (PageNumbers(**GOOD), False),
    (PageNumbers(0.05, 30, 2000, 0.96), True),
    (PageNumbers(0.05, 0, 0, None), False),
])
def test_only_doubtful_pages_are_read_turned(numbers: PageNumbers, check: bool) -> None:
    assert needs_orientation_check(numbers) is check


def test_best_turn_prefers_the_clearest_angle() -> None:
    assert best_turn(PageNumbers(0.05, 9, 900, 0.6, 0.6, {90: 0.95, 180: 0.9, 270: 0.97})) == 270
    assert best_turn(PageNumbers(0.05, 9, 900, 0.6, None, {90: 0.95})) is None


def test_warning_line_round_trips_and_reads_as_one_line() -> None:
    flags = [QualityFlag(UPSIDE_DOWN, "reads better turned"), QualityFlag(LOW_CONFIDENCE, "0.80 < 0.90")]
    line = warning_line(flags)
    assert line.startswith("QUALITY WARNING: upside_down, low_confidence: ") and "\n" not in line
    log = f"2026-01-01 INFO x: layout done\n2026-01-01 WARNING y: {line}\n"
    assert parse_warning(log) == [UPSIDE_DOWN, LOW_CONFIDENCE]
    assert parse_warning("INFO all good\n") == []
    assert parse_warning(log + log) == [UPSIDE_DOWN, LOW_CONFIDENCE]


# --- the character prior ------------------------------------------------------------------

CHARS = ["O", "u", "r", "Ö", "&", "a"]          # + blank (index 6)


def _logits(rows: list[dict[int, float]]) -> np.ndarray:
    """T x 7 log-probabilities: each row names its probabilities, the rest shared evenly."""
    out = np.empty((len(rows), len(CHARS) + 1), dtype=np.float32)
    for t, row in enumerate(rows):
        rest = (1.0 - sum(row.values())) / (out.shape[1] - len(row))
        out[t] = np.log(rest)
        for k, p in row.items():
            out[t, k] = np.log(p)
    return out


PENALTIES = penalty_vector(CHARS, PriorSettings(accented=2.0, symbol=2.0))
UNSURE_O = _logits([{3: 0.6, 0: 0.3}, {6: 0.9}, {1: 0.9}, {2: 0.9}])       # Ö 0.6 vs O 0.3
SURE_O = _logits([{3: 0.97, 0: 0.02}, {6: 0.9}, {1: 0.9}, {2: 0.9}])       # Ö 0.97 vs O 0.02
AMPERSAND = _logits([{4: 0.5, 5: 0.4}, {6: 0.95}])                         # & 0.5 vs a 0.4


@pytest.mark.parametrize(("logits", "penalties", "text"), [
    (UNSURE_O, None, "Öur"),
    (UNSURE_O, PENALTIES, "Our"),            # the accent was not earned
    (SURE_O, PENALTIES, "Öur"),              # a confident accent stays
    (AMPERSAND, None, "&"),
    (AMPERSAND, PENALTIES, "a"),
    (_logits([{6: 0.9}, {6: 0.9}]), PENALTIES, ""),
    (_logits([{0: 0.9}, {0: 0.9}, {6: 0.9}, {0: 0.9}]), PENALTIES, "OO"),   # runs and blanks as greedy CTC
])
def test_prior_decoding(logits: np.ndarray, penalties, text: str) -> None:
    assert decode(logits, CHARS, penalties)[0] == text
    assert decode(logits, CHARS + ["\u200b"], penalties)[0] == text   # pero-ocr's list with the blank


def test_prior_never_adds_or_drops_characters() -> None:
    rng = np.random.default_rng(3)
    for _ in range(50):
        logits = rng.normal(0, 3, (30, len(CHARS) + 1)).astype(np.float32)
        plain, _ = decode(logits, CHARS)
        with_prior, confidences = decode(logits, CHARS, PENALTIES)
        assert len(plain) == len(with_prior) == len(confidences)
        assert all(0.0 < c <= 1.0 for c in confidences)


def test_confidences_are_the_run_maxima_of_the_posteriors() -> None:
    logits = _logits([{0: 0.6}, {0: 0.8}, {6: 0.9}, {1: 0.7}])
    np.testing.assert_allclose(character_confidences(logits), [0.8, 0.7], rtol=1e-5)
    assert character_confidences(np.zeros((0, 7))).size == 0
    assert best_path(_logits([{6: 0.99}]))[0].size == 0


def test_decode_refuses_logits_of_another_charset() -> None:
    with pytest.raises(ValueError):
        decode(np.zeros((4, 3)), CHARS)


@pytest.mark.parametrize(("text", "expected"), [
    ("", None),
    ("[CHARACTER_PRIOR]\n", PriorSettings(0.0, 0.0)),
    ("[CHARACTER_PRIOR]\nACCENTED = 2\nSYMBOL = 2.5\n", PriorSettings(2.0, 2.5)),
    ("[CHARACTER_PRIOR]\nACCENTED = much\n", ValueError),
    ("[CHARACTER_PRIOR]\nACCENTED = -1\n", ValueError),
    ("[CHARACTER_PRIOR]\nACENTED = 1\n", ValueError),
])
def test_prior_settings(text: str, expected) -> None:
    config = configparser.ConfigParser()
    config.read_string(text)
    if expected is ValueError:
        with pytest.raises(ValueError):
            prior_settings(config)
    else:
        assert prior_settings(config) == expected


def test_penalties_fall_on_accented_letters_and_rare_symbols_only() -> None:
    pen = penalty_vector(["a", "é", "Ľ", "&", "§", ".", "7"], PriorSettings(accented=2.0, symbol=3.0))
    assert pen.tolist() == [0.0, 2.0, 2.0, 3.0, 3.0, 0.0, 0.0, 0.0]


def test_apply_prior_rewrites_lines_with_logits() -> None:
    from scipy import sparse

    class Line:
        def __init__(self, logits, characters, text):
            self.logits, self.characters, self.transcription = logits, characters, text

        def get_dense_logits(self):
            dense = self.logits.toarray()
            dense[dense == 0] = -80
            return dense

    class Page:
        def __init__(self, lines):
            self.lines = lines

        def lines_iterator(self):
            return iter(self.lines)

    lines = [Line(sparse.csc_matrix(UNSURE_O), CHARS + ["\u200b"], "Öur"), Line(None, None, "kept")]
    confidences: dict[int, np.ndarray] = {}
    assert apply_prior(Page(lines), PENALTIES, confidences) == 1
    assert [line.transcription for line in lines] == ["Our", "kept"]
    # The quality probe reuses what the prior decoded: the same numbers as decoding again.
    assert list(confidences) == [id(lines[0])]
    again = character_confidences(lines[0].get_dense_logits(), PENALTIES)
    assert np.array_equal(confidences[id(lines[0])], again) and len(again) == 3


# --- the measurements ---------------------------------------------------------------------

def _paper(h: int = 400, w: int = 300, level: int = 235) -> np.ndarray:
    return np.full((h, w, 3), level, dtype=np.uint8)


def test_ink_fraction() -> None:
    assert ink_fraction(_paper()) == 0.0
    noisy = np.clip(_paper().astype(int) + np.random.default_rng(1).normal(0, 10, (400, 300, 3)), 0, 255)
    assert ink_fraction(noisy.astype(np.uint8)) < 0.001
    bordered = _paper()
    bordered[:, :30] = 20                                  # a dark scanner border: 10 % of the page
    assert ink_fraction(bordered) == pytest.approx(0.10, abs=0.01)
    assert ink_fraction(_paper(level=15)) == 1.0           # black all over: an open scanner lid
    big = np.full((4000, 3000), 230, dtype=np.uint8)
    big[:400] = 0
    assert ink_fraction(big) == pytest.approx(0.10, abs=0.01)


PAGE_XML = b"""<?xml version="1.0" encoding="UTF-8"?>
<PcGts xmlns="http://schema.primaresearch.org/PAGE/gts/pagecontent/2019-07-15">
  <Metadata><Creator>x</Creator><Created>2026-01-01T00:00:00</Created>
    <LastChange>2026-01-01T00:00:00</LastChange>%s</Metadata>
  <Page imageFilename="p" imageWidth="10" imageHeight="10"/>
</PcGts>"""
NS = {"p": "http://schema.primaresearch.org/PAGE/gts/pagecontent/2019-07-15"}


def _attributes(xml: bytes) -> dict[str, str]:
    root = etree.fromstring(xml)
    return {a.get("name"): a.get("value") for a in root.findall("p:Metadata/p:UserDefined/p:UserAttribute", NS)}


def test_page_xml_mark() -> None:
    numbers = PageNumbers(0.05, 30, 2000, 0.8123, 0.81, {180: 0.99})
    flags = quality_flags(numbers)
    marked = mark_page_xml(PAGE_XML % b"", numbers, flags)
    values = _attributes(marked)
    assert values["quality_flags"] == "upside_down,low_confidence"
    assert values["quality_warning"] == warning_line(flags)
    assert values["mean_confidence"] == "0.8123" and values["ink_fraction"] == "0.0500"
    # Marking again replaces our entries and keeps everybody else's; UserDefined stays before MetadataItem.
    other = (b'<UserDefined><UserAttribute name="scanner" value="X1"/></UserDefined>'
             b'<MetadataItem type="processingStep" value="v"/>')
    twice = mark_page_xml(mark_page_xml(PAGE_XML % other, numbers, flags), PageNumbers(**GOOD), [])
    values = _attributes(twice)
    assert values == {"scanner": "X1", "quality_flags": "", "quality_warning": "", "mean_confidence": "0.9900",
                      "ink_fraction": "0.0600"}
    metadata = etree.fromstring(twice).find("p:Metadata", NS)
    assert [etree.QName(child).localname for child in metadata][-2:] == ["UserDefined", "MetadataItem"]


def test_a_bad_prior_in_the_stage_config_is_a_configuration_error() -> None:
    from pero_worker.worker.processors import StageConfigError
    from pero_worker.worker.processors.pero_ocr_stage import build
    config = configparser.ConfigParser()
    config.read_string("[PAGE_PARSER]\nRUN_OCR = yes\n[CHARACTER_PRIOR]\nACCENTED = lots\n")
    with pytest.raises(StageConfigError, match="ACCENTED"):
        build(config, None, device="cpu")


def test_a_stage_that_reads_no_text_is_not_judged() -> None:
    """A layout-only pero-ocr config finds no text by design: no flags, no QUALITY WARNING."""
    from pero_worker.worker.processors.pero_ocr_stage import PeroOcrProcessor

    class LayoutOnly:
        ocr = None
        decoder = None

    class Page:
        def to_pagexml_string(self) -> str:
            return (PAGE_XML % b"").decode()

        def lines_iterator(self):
            return iter([])

    xml, summary, warning = PeroOcrProcessor(LayoutOnly(), None)._assess(_paper(), Page(), None)
    assert b"UserDefined" not in xml and summary == "0 lines" and warning is None


@pytest.mark.parametrize("shape, seed", [((350, 260, 3), 1), ((3507, 2481, 3), 2), ((1001, 777, 3), 3),
                                          ((300, 200, 4), 4), ((500, 400), 5)])
def test_ink_fraction_is_the_mean_of_the_channels_bit_for_bit(shape, seed) -> None:
    image = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    image[: shape[0] // 3] = 240                             # some paper, so the threshold is not at the extremes
    step = max(1, max(image.shape[:2]) // 1500)
    sample = np.asarray(image[::step, ::step], dtype=np.float32)
    if sample.ndim == 3:
        sample = sample.mean(axis=2)                         # the formula it replaced
    paper = float(np.percentile(sample, 90))
    threshold = 128.0 if paper < 96 else paper - max(50.0, 0.35 * paper)
    assert ink_fraction(image) == float(np.count_nonzero(sample < threshold)) / sample.size


def test_a_line_without_characters_gets_the_fallback_confidence() -> None:
    from scipy import sparse

    from pero_worker.worker.processors.quality_probe import set_line_confidences

    class Line:
        def __init__(self, logits, confidence, text=""):
            self.logits, self.transcription_confidence, self.transcription = logits, confidence, text

        def get_dense_logits(self):
            return self.logits.toarray()

    class Page:
        def __init__(self, lines):
            self.lines = lines

        def lines_iterator(self):
            return iter(self.lines)

    blank_only = np.full((6, len(CHARS) + 1), -20.0, dtype=np.float32)
    blank_only[:, -1] = 5.0                                  # every frame blank: nothing on the best path
    lines = [Line(sparse.csc_matrix(UNSURE_O), 0.5, "Our"), Line(sparse.csc_matrix(blank_only), 0.5),
             Line(None, 0.25)]
    asked = []

    def pero_ocr_confidence(line):
        asked.append(line)
        return 0.75

    count, characters, mean = set_line_confidences(Page(lines), PENALTIES, None, pero_ocr_confidence)
    assert asked == [lines[1]]                               # only the line without characters
    assert [line.transcription_confidence for line in lines][1:] == [0.75, 0.25]
    assert lines[0].transcription_confidence == pytest.approx(mean) and count == 3 and characters == 3
