"""Finishes pages in spawned processes once the network has read their lines (the PERO_OCR processor's
shared-batch path, i.e. on a GPU).

On a GPU the network reads a page's lines in milliseconds, but what follows runs on the CPU under the GIL:
line confidences, the character prior, the quality probe, PAGE XML and logits out -- about a fifth of a
second of one core for a 300 dpi page (bench/ocr_serial.py; README, "OCR throughput").  Done on the
worker's processing thread for every page, that caps a GPU worker at a few pages a second whatever the GPU.
So each page's tail runs in a pool process that holds its own CPU copy of the stage, built from the same
stage config and model folder (one page a step, one torch thread): it reads the request's input exactly as
the worker read it, takes the network's line results, and returns the PageOutput that the processing
thread stores and logs (PeroOcrProcessor.finish).

The pool's processes log nothing themselves: a page's summary and quality warning come back in its
PageOutput, and so do the warnings logged while it was finished (its `notes`: a PAGE XML for another page
size, logits not saved, a failed orientation check), which the processing thread logs into the request's
StageLog.  If the pool breaks (a process killed, a stage that cannot load there), the processor finishes
its pages itself.

torch and pero-ocr are imported by whoever builds the processor; this module is imported only then.
"""
from __future__ import annotations

import dataclasses
import logging
import multiprocessing
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# In a pool process: "stage", its own PeroOcrProcessor (set once by _start).
_process: dict[str, Any] = {}


def default_finish_processes(device_type: str, cores: int | None) -> int:
    """Finishing processes when the stage does not say (pure): on a GPU one per core but the processing
    thread's (they share the cores with the crop processes, which are busy at other moments); on a CPU none,
    because there a step's pages are read side by side on page threads, each finished where it was read."""
    if device_type != "cuda":
        return 0
    return max(1, min(16, (cores or 1) - 1))


def _start(config_text: str, model_dir: str | None) -> None:
    """Pool process initializer: the stage on the CPU, one page a step, one torch thread, no logging."""
    import torch
    torch.set_num_threads(1)
    root = logging.getLogger()
    root.handlers[:] = [logging.NullHandler()]
    root.setLevel(logging.WARNING)
    from pero_worker.worker.processors import build_processor, with_worker_keys
    _process["stage"] = build_processor(with_worker_keys(config_text, {"BATCH_PAGES": "1"}),
                                        Path(model_dir) if model_dir else None, device="cpu")


class _Notes(logging.Handler):
    """The warnings logged while one page is finished (installed on the root logger for that time)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _finish(request_bytes: bytes, lines: Sequence[Any]) -> Any:
    from pero_worker.libs.message_pb2 import ProcessingRequest
    notes = _Notes()
    root = logging.getLogger()
    root.addHandler(notes)
    try:
        output = _process["stage"].finish_read_page(ProcessingRequest.FromString(request_bytes), lines)
    finally:
        root.removeHandler(notes)
    return dataclasses.replace(output, notes=tuple(notes.lines))


class FinishPool:
    """Spawned processes that finish read pages; spawn, because the worker's threads make fork unsafe."""

    def __init__(self, processes: int, config_text: str, model_dir: Path | None) -> None:
        self.processes = processes
        self._executor = ProcessPoolExecutor(max_workers=processes, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_start,
                                             initargs=(config_text, str(model_dir) if model_dir else None))

    def submit(self, request_bytes: bytes, lines: Sequence[Any]) -> Future:
        """The page's PageOutput, made in a pool process from its serialized request and its lines' results."""
        return self._executor.submit(_finish, request_bytes, lines)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


__all__ = ["FinishPool", "default_finish_processes"]
