"""The OCR stage freezes the line network for the CPU (pero_ocr_stage.optimize_for_cpu) without changing what it reads.

- with the bundled model, the stage reads an example page exactly as pero-ocr's own PageParser does (same
  transcriptions, logits within 1e-3), while its network is the frozen one;
- a network the freezer changes (here: one that adds noise) or cannot handle is kept as it is;
- the warm-model pool still sees the network's size (frozen weights are no longer parameters).
"""
from __future__ import annotations

import configparser
import io
import types
from pathlib import Path

import numpy as np
import pytest
from needs import require_module  # tests/ helper: a skip here, a failure with CI=true

require_module("torch")
require_module("pero_ocr")

import torch  # noqa: E402

from pero_worker.libs.message_pb2 import Data, ProcessingRequest  # noqa: E402
from pero_worker.worker.processors import build_processor  # noqa: E402
from pero_worker.worker.processors.pero_ocr_stage import optimize_for_cpu  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MODEL_DIR = ROOT / "pero-ocr" / "model"
PAGE = "03_title_rule_picture_200dpi.jpg"


def _parser_with(model: torch.nn.Module) -> types.SimpleNamespace:
    engine = types.SimpleNamespace(model=model, embed_id=None, model_type="ctc")
    return types.SimpleNamespace(ocr=types.SimpleNamespace(ocr_engine=engine))


class _Noisy(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=1) + torch.rand_like(x.mean(dim=1))


class _Scaled(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.norm = torch.nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x)).mean(dim=2)


def test_a_network_that_freezes_faithfully_is_replaced() -> None:
    scripted = torch.jit.script(_Scaled().eval())
    parser = _parser_with(scripted)
    assert optimize_for_cpu(parser)
    frozen = parser.ocr.ocr_engine.model
    assert frozen is not scripted
    sample = torch.rand(1, 3, 40, 64)
    with torch.no_grad():
        assert float((frozen(sample) - scripted(sample)).abs().max()) < 1e-4


def test_a_network_whose_output_changes_is_kept(caplog) -> None:
    scripted = torch.jit.script(_Noisy())
    parser = _parser_with(scripted)
    assert not optimize_for_cpu(parser)
    assert parser.ocr.ocr_engine.model is scripted
    assert "runs unoptimised" in caplog.text


@pytest.mark.parametrize("engine_changes", [{"model_type": "transformer"}, {"embed_id": 3}])
def test_other_engines_are_left_alone(engine_changes) -> None:
    scripted = torch.jit.script(_Scaled().eval())
    parser = _parser_with(scripted)
    vars(parser.ocr.ocr_engine).update(engine_changes)
    assert not optimize_for_cpu(parser)
    assert parser.ocr.ocr_engine.model is scripted


def test_an_eager_network_is_left_alone() -> None:
    module = _Scaled().eval()
    parser = _parser_with(module)
    assert not optimize_for_cpu(parser)
    assert parser.ocr.ocr_engine.model is module


def test_the_stage_reads_a_page_as_pero_ocr_does() -> None:
    import cv2
    from pero_ocr.core.layout import PageLayout
    from pero_ocr.document_ocr.page_parser import PageParser

    content = (ROOT / "examples" / PAGE).read_bytes()
    request = ProcessingRequest(uuid="x", results=[Data(name=PAGE, content=content)])
    build_processor("[WORKER]\nMETHOD = LAYOUT\n", None).process(request)
    xml = next(d.content for d in request.results if d.name.endswith("_page.xml"))
    image = cv2.imdecode(np.frombuffer(content, np.uint8), cv2.IMREAD_COLOR)

    processor = build_processor((MODEL_DIR / "config.ini").read_text(), MODEL_DIR, device="cpu")
    assert not list(processor.page_parser.ocr.ocr_engine.model.parameters()), "the network is not the frozen one"
    assert 1.4e6 * 4 < processor.memory_bytes() < 1.6e6 * 4
    ours = processor.page_parser.process_page(image, PageLayout(file=io.BytesIO(xml)))

    config = configparser.ConfigParser()
    config.read(MODEL_DIR / "config.ini")
    plain = PageParser(config, device=torch.device("cpu"), config_path=str(MODEL_DIR))
    assert list(plain.ocr.ocr_engine.model.parameters())
    theirs = plain.process_page(image, PageLayout(file=io.BytesIO(xml)))

    our_lines, their_lines = list(ours.lines_iterator()), list(theirs.lines_iterator())
    assert len(our_lines) == len(their_lines) > 5
    for mine, reference in zip(our_lines, their_lines, strict=True):
        assert mine.transcription == reference.transcription
        difference = np.abs(mine.get_dense_logits() - reference.get_dense_logits()).max()
        assert difference < 1e-3, (reference.transcription, difference)
    processor.process(request)            # and the whole stage runs with it
    assert any(d.name.endswith(".logits") for d in request.results)
