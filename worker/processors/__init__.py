"""Request processors: turn a stage's config (and unpacked model folder) into something that processes requests.

A processor mutates `request.results` in place and knows nothing about
RabbitMQ or ZooKeeper.  Two exceptions tell the worker what went wrong:

* `ProcessingError`: this request's input is bad (not an image, broken PAGE XML ...).
  The worker routes the request to the output stage with a failed StageLog.
* `StageConfigError`: the stage's config or model is unusable.  The worker
  reports CONFIGURATION_FAILED and leaves the messages queued for a worker
  (or a config version) that can process them.

Kinds (`select_processor_kind`): DUMMY and FAILTEST (test processors selected
in an optional `[WORKER]` section), LAYOUT (worker/processors/layout_stage.py)
and PERO_OCR (the default: a pero-ocr PageParser).  Heavy modules (numpy,
OpenCV, torch, pero-ocr) are imported only when a processor that needs them is
built, so an idle worker stays small.
"""
from __future__ import annotations

import configparser
import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from pero_worker.libs.message_pb2 import ProcessingRequest

DUMMY = "DUMMY"
FAILTEST = "FAILTEST"
LAYOUT = "LAYOUT"
PERO_OCR = "PERO_OCR"
KINDS = (DUMMY, FAILTEST, LAYOUT, PERO_OCR)

WORKER_SECTION = "WORKER"


class ProcessingError(Exception):
    """Bad input for this request (not a worker failure); the message goes into the request's StageLog."""


class StageConfigError(Exception):
    """The stage's config or model cannot be used; the message is for the operator."""


class Processor(Protocol):
    def process(self, request: ProcessingRequest) -> None:
        """Add/replace results of `request` in place; raise ProcessingError for bad input."""

    def close(self) -> None:
        """Release models and memory (GPU included); the processor is not used afterwards."""


def parse_stage_config(config_text: str) -> configparser.ConfigParser:
    """The stage's config.ini text as pero-ocr reads it (default ConfigParser); StageConfigError if malformed."""
    config = configparser.ConfigParser()
    try:
        config.read_string(config_text, source="<stage config>")
    except configparser.Error as error:
        message = str(error).replace("\n", " ")
        raise StageConfigError(f"stage config is not a valid INI file: {message}") from None
    return config


def with_worker_keys(config_text: str, keys: dict[str, str]) -> str:
    """The stage config with these `[WORKER]` keys set, the section added when missing (pure): how a bench or a
    test runs a model's config with other processing settings (e.g. BATCH_PAGES) without a second section.
    Comments are not kept."""
    import io
    config = configparser.ConfigParser(interpolation=None)
    config.read_string(config_text)
    if not config.has_section(WORKER_SECTION):
        config.add_section(WORKER_SECTION)
    for key, value in keys.items():
        config.set(WORKER_SECTION, key, value)
    text = io.StringIO()
    config.write(text)
    return text.getvalue()


def _flag(config: configparser.ConfigParser, key: str) -> bool:
    raw = config.get(WORKER_SECTION, key, raw=True, fallback=None)
    if raw is None or not raw.strip():
        return False
    value = raw.strip().lower()
    if value not in config.BOOLEAN_STATES:
        raise StageConfigError(f"[{WORKER_SECTION}] {key} must be TRUE or FALSE, not {raw.strip()!r}")
    return config.BOOLEAN_STATES[value]


def select_processor_kind(config: configparser.ConfigParser) -> str:
    """Which processor the config asks for (pure).

    `[WORKER] METHOD = DUMMY|FAILTEST|LAYOUT|PERO_OCR` names it; the original
    system's flags `[WORKER] DUMMY = TRUE` and `FAILTEST = TRUE` are understood
    too.  Without a [WORKER] section (a plain pero-ocr config) it is PERO_OCR.
    Contradictions are errors rather than guesses.
    """
    if not config.has_section(WORKER_SECTION):
        return PERO_OCR
    flagged = [kind for kind in (DUMMY, FAILTEST) if _flag(config, kind)]
    if len(flagged) > 1:
        raise StageConfigError(f"[{WORKER_SECTION}] sets both DUMMY and FAILTEST; choose one")
    method = config.get(WORKER_SECTION, "METHOD", raw=True, fallback="").strip().upper()
    if method:
        if method not in KINDS:
            raise StageConfigError(f"[{WORKER_SECTION}] METHOD = {method!r} is unknown "
                                   f"(expected one of {', '.join(KINDS)})")
        if flagged and flagged[0] != method:
            raise StageConfigError(f"[{WORKER_SECTION}] METHOD = {method} contradicts {flagged[0]} = TRUE")
        return method
    return flagged[0] if flagged else PERO_OCR


def build_processor(config_text: str, model_dir: Path | None, *, device: str = "auto") -> Processor:
    """Build the processor the stage config asks for.

    `model_dir` is the unpacked model folder (paths in the config are relative
    to it) or None for a stage without files.  `device` is 'auto' (CUDA when
    available), 'cpu', 'cuda' or 'cuda:N'; only model-based processors use it.
    Every failure is a StageConfigError.
    """
    config = parse_stage_config(config_text)
    kind = select_processor_kind(config)
    model_dir = Path(model_dir) if model_dir is not None else None
    try:
        if kind == DUMMY:
            from pero_worker.worker.processors.dummy import DummyProcessor
            return DummyProcessor.from_config(config)
        if kind == FAILTEST:
            from pero_worker.worker.processors.failtest import FailTestProcessor
            return FailTestProcessor()
        if kind == LAYOUT:
            try:
                layout_stage = importlib.import_module(f"{__name__}.layout_stage")
            except ModuleNotFoundError as error:
                if error.name != f"{__name__}.layout_stage":
                    raise
                raise StageConfigError("the LAYOUT processor is not available in this installation "
                                       "(worker/processors/layout_stage.py is missing)") from None
            return layout_stage.build(config, model_dir)
        from pero_worker.worker.processors import pero_ocr_stage
        return pero_ocr_stage.build(config, model_dir, device=device)
    except StageConfigError:
        raise
    except Exception as error:  # whatever a builder raises means the stage cannot be used
        raise StageConfigError(f"cannot build the {kind} processor: {type(error).__name__}: {error}") from error


__all__ = [
    "ProcessingError", "StageConfigError", "Processor", "build_processor", "select_processor_kind",
    "parse_stage_config", "with_worker_keys", "DUMMY", "FAILTEST", "LAYOUT", "PERO_OCR", "KINDS",
]
