"""A character prior for greedy CTC decoding: accented letters and rare symbols must be earned.

Why: the bundled model was trained on text where accented letters of 22 languages are common, so
on noisy print it "invents" them where a plain letter was printed ("Öur", "dweĺling", "taľe", and
"&" for "a"; issue 10).  Real European print is mostly plain ASCII.  The prior keeps the network
and its charset as they are and changes only which character a frame's run is read as:

- where (and how many) characters are emitted is decided exactly as greedy CTC decodes
  (runs of the same best class, blanks dropped), so no character is added or lost;
- inside each run the character is the one with the highest log posterior *minus its penalty*,
  so an accented letter (penalty `ACCENTED`) or a rare symbol (penalty `SYMBOL`) is kept only when
  the network is sure of it (its posterior beats the plain candidate by the factor e**penalty).

A stage opts in with a `[CHARACTER_PRIOR]` section in its config.ini (the bundled model's has one):

    [CHARACTER_PRIOR]
    ACCENTED = 1.5       ; natural-log penalty on letters outside ASCII
    SYMBOL = 1.5         ; on the rarely printed ASCII symbols & # @ \\ ^ _ ` { | } ~ < > and on § ° €

Not used when the stage runs a decoder (RUN_DECODER): a language model already weighs characters.
"""
from __future__ import annotations

import configparser
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

SECTION = "CHARACTER_PRIOR"
RARE_SYMBOLS = set("&#@\\^_`{|}~<>§°€")


@dataclass(frozen=True)
class PriorSettings:
    accented: float = 0.0
    symbol: float = 0.0


def prior_settings(config: configparser.ConfigParser) -> PriorSettings | None:
    """The stage's prior from [CHARACTER_PRIOR] (None without the section); ValueError for bad values (pure)."""
    if not config.has_section(SECTION):
        return None
    values = {}
    for key in ("accented", "symbol"):
        raw = config.get(SECTION, key, fallback="0").strip()
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"[{SECTION}] {key.upper()} = {raw!r} is not a number") from None
        if not 0.0 <= value < 50.0:
            raise ValueError(f"[{SECTION}] {key.upper()} = {raw!r} must be between 0 and 50")
        values[key] = value
    unknown = [key for key in config[SECTION] if key not in values and key not in config.defaults()]
    if unknown:
        raise ValueError(f"[{SECTION}] {unknown[0].upper()} is not a setting (known: ACCENTED, SYMBOL)")
    return PriorSettings(**values)


def penalty_vector(characters: Sequence[str], settings: PriorSettings) -> np.ndarray:
    """Penalty per output class (the CTC blank, one past the characters, gets none) (pure)."""
    out = np.zeros(len(characters) + 1, dtype=np.float32)
    for index, char in enumerate(characters):
        if char in RARE_SYMBOLS:
            out[index] = settings.symbol
        elif char.isalpha() and not char.isascii():
            out[index] = settings.accented
    return out


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def best_path(logits: np.ndarray, penalties: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Greedy CTC decoding of T x C logits (blank = last class) with a per-class penalty (pure).

    Returns the class index of each emitted character and its confidence (its best posterior within
    its run of frames).
    """
    logits = np.asarray(logits, dtype=np.float32)
    if logits.ndim != 2 or logits.shape[0] == 0 or logits.shape[1] < 2:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    blank = logits.shape[1] - 1
    log_probs = log_softmax(logits)
    best = log_probs.argmax(axis=1)
    starts = np.flatnonzero(np.r_[True, best[1:] != best[:-1]])
    run_best = np.maximum.reduceat(log_probs, starts, axis=0)[best[starts] != blank]
    if run_best.shape[0] == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    scores = run_best[:, :blank] if penalties is None else run_best[:, :blank] - penalties[:blank]
    chosen = scores.argmax(axis=1)
    return chosen, np.exp(run_best[np.arange(len(chosen)), chosen]).astype(np.float32)


def decode(logits: np.ndarray, characters: Sequence[str],
           penalties: np.ndarray | None = None) -> tuple[str, np.ndarray]:
    """`best_path` as text: `characters` names the C - 1 non-blank classes (pero-ocr's engines list C,
    the blank last); (text, character confidences)."""
    logits = np.asarray(logits)
    if logits.ndim != 2 or len(characters) not in (logits.shape[1], logits.shape[1] - 1):
        raise ValueError(f"logits of shape {logits.shape} do not match {len(characters)} characters")
    chosen, confidences = best_path(logits, penalties)
    return "".join(characters[i] for i in chosen), confidences


def apply_prior(page_layout: Any, penalties: np.ndarray, confidences: dict[int, np.ndarray] | None = None) -> int:
    """Re-read every line that has logits and characters with the prior; returns the lines changed.

    `confidences`, when given, receives each re-read line's character confidences by `id(line)`: the
    quality probe needs exactly these, and decoding a 600 dpi A3 page twice cost 0.15 s."""
    changed = 0
    for line in page_layout.lines_iterator():
        if getattr(line, "logits", None) is None or not getattr(line, "characters", None):
            continue
        text, line_confidences = decode(line.get_dense_logits(), line.characters, penalties)
        if confidences is not None:
            confidences[id(line)] = line_confidences
        if text != line.transcription:
            line.transcription = text
            changed += 1
    return changed


__all__ = ["SECTION", "PriorSettings", "prior_settings", "penalty_vector", "best_path", "decode", "apply_prior",
           "log_softmax"]
