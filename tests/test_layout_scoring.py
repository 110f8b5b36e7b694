"""The bench's scoring functions (pure): line matching, reading-order check, CER."""

from __future__ import annotations

import numpy as np
import pytest

from pero_worker.bench.scoring import char_errors, normalise_text, score_layout


def _bl(x0, x1, y):
    return np.array([[x0, y], [x1, y]], dtype=float)


GT = [(_bl(0, 500, 100), 10.0), (_bl(0, 500, 130), 10.0), (_bl(600, 1100, 100), 10.0)]


@pytest.mark.parametrize("det,matched,order_ok", [
    ([_bl(2, 498, 101), _bl(0, 500, 131), _bl(600, 1100, 99)], 3, True),
    ([_bl(600, 1100, 99), _bl(2, 498, 101), _bl(0, 500, 131)], 3, False),   # column 2 read first
    ([_bl(2, 498, 101), _bl(0, 500, 110)], 1, True),                        # baseline 2 lines off
    ([_bl(0, 200, 100)], 0, True),                                          # too short to be the line
    ([], 0, True),
])
def test_score_layout(det, matched, order_ok):
    s = score_layout(GT, det)
    assert s.matched == matched
    assert s.order_ok == order_ok
    assert s.recall == pytest.approx(matched / 3)


@pytest.mark.parametrize("ref,hyp,errors,length", [
    ("abc\ndef", "abc\ndef", 0, 7),
    ("abc\ndef", "abc  \n\n def", 0, 7),       # whitespace and empty lines do not count
    ("abc\ndef", "abcdef", 1, 7),              # a lost line break counts
    ("abc", "", 3, 3),
])
def test_char_errors(ref, hyp, errors, length):
    assert char_errors(ref, hyp) == (errors, length)


def test_normalise_text():
    assert normalise_text("  a   b \n\n c ") == "a b\nc"
