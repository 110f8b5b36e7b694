"""Page quality flags: the pure decision (numbers in, flags out) and the one log line that carries them.

Why: an OCR result with status OK must never hide a page that was not really read
(issue 10): ink on the page but no text found, a page read upside down or sideways,
or a page whose characters the model was unsure of.  The StageLog status stays `OK`
(docs/protocol.md §2: every other status means the processing failed, and the
original system's readers treat it so), but the stage log gets one line

    QUALITY WARNING: upside_down, low_confidence: <what was measured, in words>

the PAGE XML carries the same flags (Metadata/UserDefined, see worker/processors/quality_probe.py),
and `publisher.py --download` counts and lists flagged pages from that line (`parse_warning`).
Shared by the worker and the publisher, so it lives in libs/ and imports nothing heavy.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

WARNING_PREFIX = "QUALITY WARNING: "

NO_TEXT = "no_text"                  # ink on the page, but no (or next to no) text recognised
UPSIDE_DOWN = "upside_down"          # the page reads clearly better turned by 180 degrees
SIDEWAYS = "sideways"                # the page reads clearly better turned by 90 or 270 degrees
LOW_CONFIDENCE = "low_confidence"    # the mean character confidence is low: expect many errors
FLAGS = (NO_TEXT, UPSIDE_DOWN, SIDEWAYS, LOW_CONFIDENCE)


@dataclass(frozen=True)
class QualityThresholds:
    """Where a number becomes a flag; the defaults were set on the example pages and their rotations
    (README, "Quality flags")."""
    min_ink_fraction: float = 0.003       # share of dark pixels above which a page "has ink"
    min_text_chars: int = 3               # fewer recognised characters than this on an inked page: no text
    low_confidence: float = 0.90          # mean character confidence below this: low_confidence
    orientation_check_below: float = 0.97  # only pages read with less confidence are tried turned
    orientation_gain: float = 0.05        # a turned page must read this much better to be called turned
    orientation_min_confidence: float = 0.85  # ... and at least this well (noise reads badly every way)


DEFAULT_THRESHOLDS = QualityThresholds()


@dataclass(frozen=True)
class PageNumbers:
    """What was measured on one page (worker/processors/quality_probe.py).

    `sample_confidence` is the mean character confidence of the page's longest lines as read;
    `turned_confidence[angle]` the same for the page turned by `angle` degrees (90, 180, 270),
    with lines found afresh on the turned page; both are empty/None when the check did not run.
    """
    ink_fraction: float
    lines: int
    characters: int
    mean_confidence: float | None
    sample_confidence: float | None = None
    turned_confidence: dict[int, float] = field(default_factory=dict)


@dataclass(frozen=True)
class QualityFlag:
    code: str
    reason: str


def needs_orientation_check(numbers: PageNumbers, thresholds: QualityThresholds = DEFAULT_THRESHOLDS) -> bool:
    """Whether to spend the time of reading the page turned: only when it was read with doubt."""
    return numbers.lines > 0 and numbers.mean_confidence is not None \
        and numbers.mean_confidence < thresholds.orientation_check_below


def best_turn(numbers: PageNumbers, thresholds: QualityThresholds = DEFAULT_THRESHOLDS) -> int | None:
    """The angle the page reads clearly better at (90, 180 or 270), else None."""
    if not numbers.turned_confidence or numbers.sample_confidence is None:
        return None
    angle, confidence = max(numbers.turned_confidence.items(), key=lambda item: (item[1], -item[0]))
    if confidence >= thresholds.orientation_min_confidence \
            and confidence >= numbers.sample_confidence + thresholds.orientation_gain:
        return angle
    return None


def quality_flags(numbers: PageNumbers, thresholds: QualityThresholds = DEFAULT_THRESHOLDS) -> list[QualityFlag]:
    """The flags of one page, in the order of FLAGS; an empty list for a page that is fine (or blank)."""
    flags = []
    has_ink = numbers.ink_fraction >= thresholds.min_ink_fraction
    if has_ink and numbers.characters < thresholds.min_text_chars:
        flags.append(QualityFlag(NO_TEXT, f"ink covers {numbers.ink_fraction:.1%} of the page but only "
                                          f"{_count(numbers.characters, 'character')} "
                                          f"({_count(numbers.lines, 'line')}) could be read"))
    angle = best_turn(numbers, thresholds)
    if angle is not None:
        code = UPSIDE_DOWN if angle == 180 else SIDEWAYS
        flags.append(QualityFlag(code, f"the page reads better turned clockwise by {angle} degrees (confidence "
                                       f"{numbers.turned_confidence[angle]:.2f} against "
                                       f"{numbers.sample_confidence:.2f} as it is)"))
    if numbers.characters >= thresholds.min_text_chars and numbers.mean_confidence is not None \
            and numbers.mean_confidence < thresholds.low_confidence:
        flags.append(QualityFlag(LOW_CONFIDENCE, f"mean character confidence {numbers.mean_confidence:.2f} "
                                                 f"is below {thresholds.low_confidence:.2f}"))
    return flags


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def warning_line(flags: list[QualityFlag]) -> str:
    """The one stage-log line for a flagged page: the codes first (machine-readable), then the reasons."""
    codes = ", ".join(flag.code for flag in flags)
    return f"{WARNING_PREFIX}{codes}: " + "; ".join(flag.reason for flag in flags)


_WARNING_RE = re.compile(re.escape(WARNING_PREFIX) + r"([a-z_]+(?:, [a-z_]+)*):")


def parse_warning(log_text: str) -> list[str]:
    """The flag codes of every QUALITY WARNING line in a stage log (in order, without repeats)."""
    codes: list[str] = []
    for match in _WARNING_RE.finditer(log_text):
        for code in match.group(1).split(", "):
            if code not in codes:
                codes.append(code)
    return codes


__all__ = ["WARNING_PREFIX", "FLAGS", "NO_TEXT", "UPSIDE_DOWN", "SIDEWAYS", "LOW_CONFIDENCE", "QualityThresholds",
           "DEFAULT_THRESHOLDS", "PageNumbers", "QualityFlag", "needs_orientation_check", "best_turn",
           "quality_flags", "warning_line", "parse_warning"]
