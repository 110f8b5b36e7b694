"""The OCR stage freezes the line network for the CPU (pero_ocr_stage.optimize_for_cpu) without changing what it reads.

- with the bundled model, the stage reads an example page exactly as pero-ocr's own PageParser does (same
  transcriptions, logits within 1e-3), while its network is the frozen one;
- a network the freezer changes (here: one that adds noise) or cannot handle is kept as it is;
- the warm-model pool still sees the network's size (frozen weights are no longer parameters);
- in bfloat16 (CPU_PRECISION, by default where the CPU has AVX512-BF16 or AMX) the stage reads the page with
  the same text but for a borderline character on a few lines, logits close to float32's;
- which precision a stage gets (table).
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
from pero_worker.worker.processors import StageConfigError, build_processor, with_worker_keys  # noqa: E402
from pero_worker.worker.processors.pero_ocr_stage import (  # noqa: E402
    Bfloat16Network,
    cpu_precision,
    native_bfloat16,
    optimize_for_cpu,
    use_bfloat16,
)

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
    assert optimize_for_cpu(parser) == "float32"
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


def test_a_bfloat16_network_keeps_the_float32_interface() -> None:
    scripted = torch.jit.script(_Scaled().eval())
    parser = _parser_with(scripted)
    assert optimize_for_cpu(parser, bfloat16=True) == "bfloat16"
    network = parser.ocr.ocr_engine.model
    assert isinstance(network, Bfloat16Network)
    sample = torch.rand(1, 3, 40, 64)
    with torch.no_grad():
        out = network(sample)
        assert out.dtype == torch.float32
        assert float((out - scripted(sample)).abs().max()) < 0.1
    assert next(scripted.parameters()).dtype == torch.float32   # the original is left as it was


def _page() -> tuple[np.ndarray, bytes, ProcessingRequest]:
    import cv2
    content = (ROOT / "examples" / PAGE).read_bytes()
    request = ProcessingRequest(uuid="x", results=[Data(name=PAGE, content=content)])
    build_processor("[WORKER]\nMETHOD = LAYOUT\n", None).process(request)
    xml = next(d.content for d in request.results if d.name.endswith("_page.xml"))
    return cv2.imdecode(np.frombuffer(content, np.uint8), cv2.IMREAD_COLOR), xml, request


def _pero_ocr_lines(image: np.ndarray, xml: bytes) -> list:
    from pero_ocr.core.layout import PageLayout
    from pero_ocr.document_ocr.page_parser import PageParser
    config = configparser.ConfigParser()
    config.read(MODEL_DIR / "config.ini")
    plain = PageParser(config, device=torch.device("cpu"), config_path=str(MODEL_DIR))
    assert list(plain.ocr.ocr_engine.model.parameters())
    return list(plain.process_page(image, PageLayout(file=io.BytesIO(xml))).lines_iterator())


def _stage(precision: str):
    text = with_worker_keys((MODEL_DIR / "config.ini").read_text(), {"CPU_PRECISION": precision})
    return build_processor(text, MODEL_DIR, device="cpu")


def test_the_stage_reads_a_page_as_pero_ocr_does() -> None:
    from pero_ocr.core.layout import PageLayout

    image, xml, request = _page()
    processor = _stage("float32")
    assert not list(processor.page_parser.ocr.ocr_engine.model.parameters()), "the network is not the frozen one"
    assert 1.4e6 * 4 < processor.memory_bytes() < 1.6e6 * 4
    ours = processor.page_parser.process_page(image, PageLayout(file=io.BytesIO(xml)))
    our_lines, their_lines = list(ours.lines_iterator()), _pero_ocr_lines(image, xml)
    assert len(our_lines) == len(their_lines) > 5
    for mine, reference in zip(our_lines, their_lines, strict=True):
        assert mine.transcription == reference.transcription
        difference = np.abs(mine.get_dense_logits() - reference.get_dense_logits()).max()
        assert difference < 1e-3, (reference.transcription, difference)
    processor.process(request)            # and the whole stage runs with it
    assert any(d.name.endswith(".logits") for d in request.results)


def test_the_bfloat16_stage_reads_the_same_text() -> None:
    import Levenshtein
    from pero_ocr.core.layout import PageLayout

    image, xml, request = _page()
    processor = _stage("bfloat16")
    assert isinstance(processor.page_parser.ocr.ocr_engine.model, Bfloat16Network)
    assert 1.4e6 * 4 < processor.memory_bytes() < 1.6e6 * 4
    ours = list(processor.page_parser.process_page(image, PageLayout(file=io.BytesIO(xml))).lines_iterator())
    theirs = _pero_ocr_lines(image, xml)
    assert len(ours) == len(theirs) > 5
    changed = [(a.transcription, b.transcription) for a, b in zip(ours, theirs) if a.transcription != b.transcription]
    assert len(changed) <= max(1, len(theirs) // 50), changed
    assert all(Levenshtein.distance(a, b) <= 1 for a, b in changed), changed
    for mine, reference in zip(ours, theirs):
        # the best class of each frame keeps its logit within bfloat16's ~3 digits (logits are tens of units)
        best = reference.get_dense_logits().max(axis=1)
        assert np.abs(mine.get_dense_logits().max(axis=1) - best).max() < 1.0
    processor.process(request)
    assert any(d.name.endswith(".logits") for d in request.results)


@pytest.mark.parametrize("section, expected", [("", "auto"), ("[WORKER]\n", "auto"),
                                               ("[WORKER]\nCPU_PRECISION = float32\n", "float32"),
                                               ("[WORKER]\nCPU_PRECISION = BFloat16\n", "bfloat16")])
def test_cpu_precision_table(section, expected) -> None:
    config = configparser.ConfigParser()
    config.read_string(section)
    assert cpu_precision(config) == expected


def test_a_bad_cpu_precision_is_a_stage_config_error() -> None:
    config = configparser.ConfigParser()
    config.read_string("[WORKER]\nCPU_PRECISION = float16\n")
    with pytest.raises(StageConfigError, match="CPU_PRECISION"):
        cpu_precision(config)


@pytest.mark.parametrize("precision, flags, expected", [
    ("auto", {"avx2", "avx512f", "avx512_bf16"}, True),
    ("auto", {"avx2", "amx_bf16", "amx_tile"}, True),
    ("auto", {"avx2", "avx512f", "avx512bw"}, False),     # bfloat16 would be emulated: slower
    ("auto", set(), False),
    ("float32", {"avx512_bf16"}, False),
    ("bfloat16", set(), True),
])
def test_which_precision_a_stage_gets(precision, flags, expected) -> None:
    assert use_bfloat16(precision, flags) == expected
    assert native_bfloat16(flags) == bool(flags & {"avx512_bf16", "amx_bf16"})
