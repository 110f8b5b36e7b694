"""Which stages can receive a worker (libs/stages.py): a table of the configs real deployments hold."""
from __future__ import annotations

from pathlib import Path

import pytest

from pero_worker.libs.stages import classify_stage_config, is_processing_stage

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("config,processing,reason", [
    # output stages: the original's `--name out` writes no config node, ours an empty one
    (None, False, "no config node"),
    ("", False, "empty config"),
    (b"", False, "empty config"),
    ("  \n\t\n", False, "empty config"),
    # configs that name no processor
    ("# just a comment\n", False, "no [PAGE_PARSER]"),
    ("[OCR]\nOCR_JSON = ocr.json\n", False, "no [PAGE_PARSER]"),
    ("[WORKER]\n", False, "names no method"),
    ("[WORKER]\nDUMMY = FALSE\n", False, "names no method"),
    ("[WORKER]\nMETHOD =   \n", False, "names no method"),
    ("[worker]\nMETHOD = DUMMY\n", False, "names no method"),   # section names are case-sensitive, as for workers
    # broken text
    ("not an ini file", False, "not a valid INI file"),
    ("[A]\nx = 1\n[A]\ny = 2\n", False, "not a valid INI file"),
    (b"\xff\xfe[PAGE_PARSER]", False, "not UTF-8"),
    # processing stages
    ("[PAGE_PARSER]\nRUN_OCR = yes\n", True, ""),
    ("[WORKER]\nMETHOD = LAYOUT\n", True, ""),
    ("[WORKER]\nmethod = layout\n", True, ""),
    ("[WORKER]\nDUMMY = TRUE\nTIME_SCALE = 0\n", True, ""),
    ("[WORKER]\nDUMMY = yes\n", True, ""),
    ("[WORKER]\nFAILTEST = True\n", True, ""),
    ("[WORKER]\nDUMMY = 1\n[PAGE_PARSER]\n", True, ""),
    ("[WORKER]\nMETHOD = NO_SUCH_METHOD\n", True, ""),   # a worker tries and reports CONFIGURATION_FAILED
    ("[PAGE_PARSER]\nRUN_OCR = %(missing)s\n", True, ""),  # interpolation is pero-ocr's business
])
def test_classify_stage_config(config, processing, reason):
    kind = classify_stage_config(config)
    assert kind.processing is processing
    assert is_processing_stage(config) is processing
    if processing:
        assert kind.reason == ""
    else:
        assert reason in kind.reason


def test_the_bundled_model_and_the_readme_layout_config_are_processing_stages():
    assert is_processing_stage((REPO / "pero-ocr" / "model" / "config.ini").read_text(encoding="utf-8"))
    assert is_processing_stage("[WORKER]\nMETHOD = LAYOUT\n")   # README: layout.ini
