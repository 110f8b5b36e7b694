"""Reads the lines of several pages in shared network batches (the PERO_OCR processor's batched path).

What PageParser does per page (crop the lines, run the line network batch by
batch, turn each line's output into a transcription, sparse logits and logit
coordinates, then line confidences), done here for a group of pages with
batches that mix their lines (ocr_batching.py plans them).  The per-line
results are made exactly as pero-ocr's `BaseEngineLineOCR.process_lines` makes
them, so a page read alone gives the same PAGE XML and logits as PageParser.

Lines are cropped ahead, in a small pool of spawned processes (the GIL would
serialise threads), while the network reads the previous pages.  On CUDA the
batches go through pinned memory, and the logits are sparsified on the GPU.
What follows the network for each page runs in another pool of spawned
processes (ocr_finishing.py).

On a CPU shared batches make no pixel cheaper, so there the processor reads a
step's pages side by side instead, each alone with this reader, one page per
thread (PAGE_THREADS; pero_ocr_stage.PeroOcrProcessor.run).

A bad page fails alone: its crop error or a network error is kept for that
page, and when a shared batch fails every page in it is read again alone, so
only the page that really fails is reported.

torch and pero-ocr are imported by whoever builds the processor; this module is
imported only then.
"""
from __future__ import annotations

import configparser
import logging
import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from pero_worker.worker.processors import WORKER_SECTION, StageConfigError
from pero_worker.worker.processors.images import decode_image
from pero_worker.worker.processors.ocr_batching import PERO_OCR_MAX_PIXELS, UNBOUNDED, plan_batches, scatter

log = logging.getLogger(__name__)

# Below this probability pero-ocr zeroes a logit before storing the line's logits as a sparse matrix.
SPARSE_PROBABILITY = 0.0001
DEFAULT_GPU_PIXELS = PERO_OCR_MAX_PIXELS * 32
# On a CPU bigger batches make the network slower per pixel (README, "OCR throughput"): pero-ocr's own size.
DEFAULT_CPU_PIXELS = PERO_OCR_MAX_PIXELS


@dataclass(frozen=True)
class BatchSettings:
    """The stage's batching keys ([WORKER] section, docs/protocol.md §5); pages = 1 means off."""
    pages: int = 1                  # BATCH_PAGES: requests read together in one processing step
    max_pixels: int | None = None   # BATCH_PIXELS: padded pixels per network batch (None: by device)
    max_padding: float = 0.25       # BATCH_PADDING: a line joins a batch at most this much wider than itself
    crop_processes: int | None = None   # CROP_PROCESSES: processes cropping lines ahead (None: by device)
    page_threads: int | None = None     # PAGE_THREADS: pages read in parallel, one per thread (None: by device)
    finish_processes: int | None = None  # FINISH_PROCESSES: processes finishing read pages (None: by device)
    mixed_precision: bool = False   # MIXED_PRECISION: float16 autocast on CUDA (ignored on a CPU)

    @property
    def enabled(self) -> bool:
        return self.pages > 1


def _int_key(config: configparser.ConfigParser, key: str, minimum: int) -> int | None:
    raw = config.get(WORKER_SECTION, key, raw=True, fallback="").strip()
    if not raw:
        return None
    if not raw.isdigit() or int(raw) < minimum:
        raise StageConfigError(f"[{WORKER_SECTION}] {key} must be a whole number >= {minimum}, not {raw!r}")
    return int(raw)


def batch_settings(config: configparser.ConfigParser) -> BatchSettings:
    """The batching keys of a stage config; StageConfigError for a bad value (pure)."""
    if not config.has_section(WORKER_SECTION):
        return BatchSettings()
    padding_raw = config.get(WORKER_SECTION, "BATCH_PADDING", raw=True, fallback="").strip()
    padding = BatchSettings.max_padding
    if padding_raw:
        try:
            padding = UNBOUNDED if padding_raw.lower() in ("inf", "none") else float(padding_raw)
        except ValueError:
            padding = -1.0
        if not padding >= 0:
            raise StageConfigError(f"[{WORKER_SECTION}] BATCH_PADDING must be a number >= 0 or 'inf', "
                                   f"not {padding_raw!r}")
    mixed_raw = config.get(WORKER_SECTION, "MIXED_PRECISION", raw=True, fallback="").strip().lower()
    if mixed_raw and mixed_raw not in config.BOOLEAN_STATES:
        raise StageConfigError(f"[{WORKER_SECTION}] MIXED_PRECISION must be TRUE or FALSE, not {mixed_raw!r}")
    return BatchSettings(pages=_int_key(config, "BATCH_PAGES", 1) or 1,
                         max_pixels=_int_key(config, "BATCH_PIXELS", 32),
                         max_padding=padding,
                         crop_processes=_int_key(config, "CROP_PROCESSES", 0),
                         page_threads=_int_key(config, "PAGE_THREADS", 1),
                         finish_processes=_int_key(config, "FINISH_PROCESSES", 0),
                         mixed_precision=config.BOOLEAN_STATES.get(mixed_raw, False))


def default_crop_processes(device_type: str, cores: int | None) -> int:
    """Crop processes when the stage does not say (pure): on a GPU one per core but the processing thread's,
    at most 16 (decoding and cropping a 300 dpi page takes a fifth of a second of a core, bench/ocr_serial.py;
    they share the cores with the finishing processes, which are busy at other moments); on a CPU the network
    already uses every core, so lines are cropped inline."""
    if device_type != "cuda":
        return 0
    return max(1, min(16, (cores or 1) - 1))


def default_page_threads(device_type: str, cores: int | None) -> int:
    """Pages read in parallel when the stage does not say (pure): on a CPU one per core (at most 8), each with
    one torch thread; on a GPU 1, because there the lines of all pages share the network's batches."""
    if device_type == "cuda":
        return 1
    return max(1, min(8, cores or 1))


@dataclass
class Batching:
    """A batching stage's parts, as the processor holds them (pero_ocr_stage._batching builds them)."""
    pages: int                   # requests per processing step
    reader: BatchedLineReader
    crop_pool: CropPool | None   # processes cropping ahead, or None: cropped on the thread that reads the page
    page_threads: int            # > 1: the group's pages read in parallel (CPU); 1: in shared batches
    finish_pool: Any = None      # ocr_finishing.FinishPool with shared batches, or None: finished on the thread


# --- cropping (also run in the spawned pool processes) ------------------------------------

def crop_lines(crop_engine: Any, image: np.ndarray, geometry: Sequence[tuple[Any, Any]]) -> list[np.ndarray]:
    """Crops of lines given as (baseline, heights), with pero-ocr LineCropper's fallback for a failed line."""
    crops = []
    for baseline, heights in geometry:
        try:
            crops.append(crop_engine.crop(image, baseline, heights))
        except ValueError:
            crops.append(np.zeros((crop_engine.line_height, crop_engine.line_height, 3)))
    return crops


def crop_encoded(crop_engine: Any, content: bytes, name: str, geometry: Sequence[tuple[Any, Any]]) \
        -> list[np.ndarray]:
    """Pool entry point: decode the image here too (sending the encoded bytes is cheaper than the pixels)."""
    return crop_lines(crop_engine, decode_image(content, name), geometry)


class CropPool:
    """Spawned processes that crop lines ahead; spawn, because the worker's threads make fork unsafe."""

    def __init__(self, processes: int) -> None:
        self.processes = processes
        self._executor = ProcessPoolExecutor(max_workers=processes, mp_context=multiprocessing.get_context("spawn"))

    def submit(self, crop_engine: Any, content: bytes, name: str, geometry: list[tuple[Any, Any]]) -> Future:
        return self._executor.submit(crop_encoded, crop_engine, content, name, geometry)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


# --- the network over shared batches ------------------------------------------------------

@dataclass
class LineResult:
    transcription: str
    logits: Any
    logit_coords: list[int]


class BatchedLineReader:
    """Runs a pero-ocr PytorchEngineLineOCR over the lines of several pages in shared batches."""

    def __init__(self, engine: Any, max_pixels: int, max_padding: float, mixed_precision: bool = False) -> None:
        self.engine = engine
        self.max_pixels = max_pixels
        self.max_padding = max_padding
        self.on_cuda = getattr(engine.device, "type", "cpu") == "cuda"
        self.mixed_precision = mixed_precision and self.on_cuda
        self.batches_run = 0

    def read_pages(self, pages: Sequence[Sequence[np.ndarray]]) -> list[list[LineResult] | BaseException]:
        """Per page, its lines' results in order, or the exception that page failed with."""
        batches = plan_batches([[crop.shape[1] for crop in crops] for crops in pages],
                               max_pixels=self.max_pixels, max_padding=self.max_padding)
        outputs: list[list[LineResult] | None] = []
        failed: set[int] = set()
        for batch in batches:
            try:
                outputs.append(self._run_batch([pages[ref.page][ref.line] for ref in batch.lines], batch.width))
            except Exception as error:   # re-read its pages alone below: only a page that fails alone fails
                log.debug("a shared batch failed (%s: %s); reading its pages alone", type(error).__name__, error)
                self._after_failure(error)
                failed.update(ref.page for ref in batch.lines)
                outputs.append(None)
        per_page = scatter(batches, outputs, [len(crops) for crops in pages])
        return [self._read_alone(pages[index]) if index in failed else page  # type: ignore[misc]
                for index, page in enumerate(per_page)]

    def _read_alone(self, crops: Sequence[np.ndarray]) -> list[LineResult] | BaseException:
        try:
            batches = plan_batches([[crop.shape[1] for crop in crops]],
                                   max_pixels=self.engine.max_input_horizontal_pixels)
            outputs = [self._run_batch([crops[ref.line] for ref in batch.lines], batch.width) for batch in batches]
            return scatter(batches, outputs, [len(crops)])[0]  # type: ignore[return-value]
        except Exception as error:
            self._after_failure(error)
            return error

    def _run_batch(self, crops: Sequence[np.ndarray], width: int) -> list[LineResult]:
        """One network batch, each line padded to `width` (+ the engine's margins), as pero-ocr does."""
        engine = self.engine
        margin = engine.line_padding_px
        data = np.zeros((len(crops), engine.line_px_height, width + 2 * margin, 3), dtype=np.uint8)
        for row, crop in zip(data, crops):
            row[:, margin:margin + crop.shape[1], :] = crop
        if data.shape[2] > engine.max_input_horizontal_pixels:
            log.warning("a line is too long for the OCR engine: cropped from %d px to %d px", data.shape[2],
                        engine.max_input_horizontal_pixels)
            data = data[:, :, :engine.max_input_horizontal_pixels]
        transcriptions, logits = self._forward(data)
        self.batches_run += 1
        step = engine.net_subsampling
        results = []
        for crop, text, line_logits in zip(crops, transcriptions, logits):
            results.append(LineResult(text, line_logits, [int(margin // step), int((margin + crop.shape[1]) // step)]))
        return results

    def _forward(self, data: np.ndarray) -> tuple[list[str], list[Any]]:
        """Transcriptions and sparse logits (pero-ocr's stored form) of a batch of padded lines."""
        if not self.on_cuda:
            transcriptions, logits = self.engine.run_ocr(data)
            return transcriptions, [_sparse_logits(line_logits) for line_logits in logits]
        import torch
        from pero_ocr.ocr_engine.pytorch_ocr_engine import greedy_decode_ctc
        from scipy import sparse
        engine = self.engine
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16, enabled=self.mixed_precision):
            batch = torch.from_numpy(data).pin_memory().to(engine.device, non_blocking=True).float() / 255.0
            batch = batch.permute(0, 3, 1, 2)
            if engine.embed_id is not None:
                ids = torch.full((batch.shape[0],), engine.embed_id, dtype=torch.long, device=engine.device)
                logits = engine.model(batch, ids)
            else:
                logits = engine.model(batch)
            logits = logits.float()
            decoded = greedy_decode_ctc(logits, engine.characters)
            # pero-ocr zeroes improbable entries on the CPU, a softmax over each line (a tenth of a second of
            # a page's CPU time); here the GPU does it for the whole batch, and the CPU only packs the result.
            logits = logits.masked_fill(torch.softmax(logits, dim=1) < SPARSE_PROBABILITY, 0.0)
            return decoded, [sparse.csc_matrix(line) for line in logits.permute(0, 2, 1).cpu().numpy()]

    def _after_failure(self, error: BaseException) -> None:
        if self.on_cuda:
            import gc

            import torch
            if isinstance(error, torch.cuda.OutOfMemoryError):
                gc.collect()
                torch.cuda.empty_cache()


def _sparse_logits(line_logits: np.ndarray) -> Any:
    """pero-ocr's stored form of one line's logits: improbable entries zeroed, then a sparse CSC matrix."""
    from pero_ocr.ocr_engine.softmax import softmax
    from scipy import sparse
    line_logits = np.array(line_logits)
    line_logits[softmax(line_logits, axis=1) < SPARSE_PROBABILITY] = 0
    return sparse.csc_matrix(line_logits)


def supports_batching(page_parser: Any) -> str:
    """'' when the parser's OCR can be batched across pages, else why not (pure on the parser's parts)."""
    from pero_ocr.ocr_engine.pytorch_ocr_engine import PytorchEngineLineOCR
    if not (page_parser.run_line_cropper and page_parser.run_ocr):
        return "the stage does not crop and read lines (RUN_LINE_CROPPER and RUN_OCR)"
    engine = page_parser.ocr.ocr_engine
    if not isinstance(engine, PytorchEngineLineOCR) or engine.model_type != "ctc":
        return "the OCR engine is not pero-ocr's CTC line engine (pytorch_ocr)"
    return ""


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:   # not Linux
        return os.cpu_count() or 1


__all__ = ["BatchSettings", "batch_settings", "default_crop_processes", "default_page_threads", "Batching",
           "crop_lines", "CropPool",
           "BatchedLineReader", "LineResult", "supports_batching", "DEFAULT_GPU_PIXELS", "DEFAULT_CPU_PIXELS"]
