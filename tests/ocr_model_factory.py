"""Builds a tiny, random-weight pero-ocr model so tests can run a real PageParser in seconds.

The model is a real TorchScript CTC line recogniser with the interface
`PytorchEngineLineOCR` expects (pero-ocr 0.7.0):

* input  : float tensor N x 3 x line_px_height x W (RGB/BGR scaled to 0..1),
* output : logits N x (len(characters) + 1) x W/4, the CTC blank being the last class
  (the engine's `net_subsampling` is 4),
* files  : `model.pt` (loaded on CUDA) and `model.pt.cpu` (the engine appends '.cpu' on CPU),
  described by `ocr_engine.json` (line_px_height, line_vertical_scale, characters,
  checkpoint, net_name).

The stage config runs model-free layout analysis (REGION_WHOLE_PAGE, then
LINES_SIMPLE_THRESHOLD), the line cropper, the OCR and optionally a GREEDY decoder.
Random weights read garbage, which is all the tests need: that lines are found,
cropped, recognised and written out as PAGE XML and logits.
"""
from __future__ import annotations

import json
import tarfile
import warnings
from pathlib import Path

import numpy as np

CHARACTERS = list("abcdefghijklmnopqrstuvwxyz0123456789 .,-")
LINE_PX_HEIGHT = 40


def stage_config_text(*, decoder: bool = True, ocr_json: str = "ocr_engine.json") -> str:
    """A pero-ocr config.ini for the tiny model (paths relative to the model folder)."""
    return f"""[PAGE_PARSER]
RUN_LAYOUT_PARSER = yes
RUN_LINE_CROPPER = yes
RUN_OCR = yes
RUN_DECODER = {'yes' if decoder else 'no'}

[LAYOUT_PARSER_1]
METHOD = REGION_WHOLE_PAGE

[LAYOUT_PARSER_2]
METHOD = LINES_SIMPLE_THRESHOLD
ADAPTIVE_THRESHOLD = 20
BLOCK_SIZE = 31
MINIMUM_LENGTH = 10
IGNORED_BORDER_PIXELS = 5

[LINE_CROPPER]
INTERP = 2
LINE_SCALE = 1.25
LINE_HEIGHT = {LINE_PX_HEIGHT}

[OCR]
OCR_JSON = {ocr_json}
USE_CPU = no

[DECODER]
TYPE = GREEDY
USE_CPU = yes
"""


def _tiny_network(num_classes: int):
    import torch
    from torch import nn

    class TinyCtcNet(nn.Module):
        """Two conv blocks down-sample 4x (height and width), then a per-column classifier."""

        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(3, 8, kernel_size=3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(8, 16, kernel_size=3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            )
            self.classifier = nn.Conv1d(16, num_classes, kernel_size=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            features = self.features(x)          # N x 16 x H/4 x W/4
            columns = features.mean(dim=2)       # N x 16 x W/4
            return self.classifier(columns)      # N x C x W/4

    return TinyCtcNet()


def build_ocr_model(dest: str | Path, *, seed: int = 0, decoder: bool = True) -> Path:
    """Write model.pt, model.pt.cpu, ocr_engine.json and config.ini into dest; return dest."""
    import torch

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    network = _tiny_network(len(CHARACTERS) + 1).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)   # pero-ocr 0.7 loads TorchScript, so we write it
        scripted = torch.jit.script(network)
    scripted.save(str(dest / "model.pt"))
    scripted.save(str(dest / "model.pt.cpu"))
    engine = {
        "line_px_height": LINE_PX_HEIGHT,
        "line_vertical_scale": 1.25,
        "characters": CHARACTERS,
        "checkpoint": "model.pt",
        "net_name": "tiny_ctc_test_net",
    }
    (dest / "ocr_engine.json").write_text(json.dumps(engine, ensure_ascii=False, indent=1), encoding="utf-8")
    (dest / "config.ini").write_text(stage_config_text(decoder=decoder), encoding="utf-8")
    return dest


def pack_model(model_dir: str | Path, archive: str | Path) -> Path:
    """Pack the folder's files (at the archive's top level, as the worker expects) into a .tar.xz."""
    model_dir, archive = Path(model_dir), Path(archive)
    with tarfile.open(archive, "w:xz") as tar:
        for path in sorted(model_dir.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(model_dir)), recursive=False)
    return archive


def render_page(lines: tuple[str, ...] = ("the quick brown fox", "jumps over the lazy dog", "pero ocr 2024"),
                *, width: int = 900, line_spacing: int = 70, fmt: str = ".png") -> bytes:
    """A white page with a few lines of black text, encoded as `fmt` (cv2 extension)."""
    import cv2

    height = line_spacing * (len(lines) + 1)
    page = np.full((height, width, 3), 255, dtype=np.uint8)
    for index, text in enumerate(lines, start=1):
        cv2.putText(page, text, (40, index * line_spacing), cv2.FONT_HERSHEY_SIMPLEX, 1.2, (0, 0, 0), 2,
                    cv2.LINE_AA)
    ok, encoded = cv2.imencode(fmt, page)
    assert ok, f"cv2 cannot encode {fmt}"
    return encoded.tobytes()
