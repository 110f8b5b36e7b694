"""A test's missing dependency: a skip on a developer's machine, a failure in CI.

With CI=true (what CI systems set) a test that cannot run because something is
not installed must fail, not skip: a green CI run that silently skipped the
secure deployment or the OCR model proves nothing.  Outside CI the test skips
with the reason, so a partial development set-up still runs the rest.
(Hardware that a CI machine may lack, such as a CUDA GPU, is a plain skip.)
"""
from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import NoReturn

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def missing(reason: str) -> NoReturn:
    """Stop the test (or, called at import, the module): fail with CI=true, skip otherwise."""
    if in_ci():
        pytest.fail(f"CI=true and a dependency is missing: {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def require(condition: bool, reason: str) -> None:
    if not condition:
        missing(reason)


def require_module(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError as error:
        missing(f"python module {name} is not installed ({error})")
