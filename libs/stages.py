"""What counts as a processing stage: one pure decision shared by the watchdog and the operator tools.

Every child of /pero/queue is a stage, but only some can be processed.  The
output stage has no processing config: the original stage_config_manager.py
writes no `config` node for `--name out`, ours writes an empty one, and an
operator may leave a config that names no processor at all.  A worker sent to
such a stage can only fail (CONFIGURATION_FAILED), and because results pile up
in the output queue the watchdog would keep sending workers there.  So a stage
is a processing stage only when its config asks for a processor the workers
know: a pero-ocr config (a `[PAGE_PARSER]` section) or a `[WORKER]` section
selecting one (`METHOD = ...`, or the original system's `DUMMY = TRUE` /
`FAILTEST = TRUE`).  The workers' own selection (worker/processors) decides
which processor; this only decides whether there is one to try.
"""
from __future__ import annotations

import configparser
from dataclasses import dataclass

PAGE_PARSER_SECTION = "PAGE_PARSER"
WORKER_SECTION = "WORKER"
_TRUE = {"1", "yes", "true", "on"}


@dataclass(frozen=True)
class StageKind:
    processing: bool
    reason: str        # why not (empty for a processing stage); shown by the operator tools


def classify_stage_config(config: bytes | str | None) -> StageKind:
    """Whether a stage with this `config` node content (None: no node) can be given a worker (pure)."""
    if config is None:
        return StageKind(False, "no config node (output stage)")
    if isinstance(config, bytes):
        try:
            config = config.decode("utf-8")
        except UnicodeDecodeError:
            return StageKind(False, "config is not UTF-8 text")
    if not config.strip():
        return StageKind(False, "empty config (output stage)")
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(config, source="<stage config>")
    except configparser.Error as error:
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        return StageKind(False, f"config is not a valid INI file ({first_line})")
    if parser.has_section(PAGE_PARSER_SECTION):
        return StageKind(True, "")
    if parser.has_section(WORKER_SECTION):
        section = parser[WORKER_SECTION]
        if section.get("METHOD", "").strip():
            return StageKind(True, "")
        if any(section.get(flag, "").strip().lower() in _TRUE for flag in ("DUMMY", "FAILTEST")):
            return StageKind(True, "")
    return StageKind(False, f"config has no [{PAGE_PARSER_SECTION}] section and [{WORKER_SECTION}] names no method")


def is_processing_stage(config: bytes | str | None) -> bool:
    return classify_stage_config(config).processing


__all__ = ["StageKind", "classify_stage_config", "is_processing_stage"]
