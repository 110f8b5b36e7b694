"""Rewrite a file's imports to the one style of the repository: absolute `pero_worker.*` imports.

Why this exists: issue 9 moved the tools' logic out of scripts/ (into tools/ and dev/) and replaced
relative imports with absolute ones.  Branches that were started before that change run this on
the files they touched after merging, instead of fixing import lines by hand:

    .venv/bin/python -m pero_worker.dev.rewrite_imports $(git diff --name-only main -- '*.py')
    .venv/bin/ruff check --fix --select I .          # re-sort the rewritten import blocks

It knows where each top-level folder is installed (FOLDERS, the same map as pyproject.toml) and
where each moved module went (MOVED).  Only `import` and `from ... import` statements change.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

# Folder of the repository -> the package it is installed as (pyproject.toml, [tool.setuptools] package-dir).
FOLDERS = {
    "libs": "pero_worker.libs",
    "worker": "pero_worker.worker",
    "watchdog": "pero_worker.watchdog",
    "log_daemon": "pero_worker.log_daemon",
    "tools": "pero_worker.tools",
    "dev": "pero_worker.dev",
    "bench": "pero_worker.bench",
    "pero-ocr": "pero_worker.training",
}

# Module that moved -> where it lives now (longest match wins; sub-modules follow their package).
MOVED = {
    "pero_worker.scripts.cli_common": "pero_worker.tools.cli",
    "pero_worker.scripts.publisher_upload": "pero_worker.tools.publishing.upload",
    "pero_worker.scripts.download_index": "pero_worker.tools.publishing.download_index",
    "pero_worker.scripts.publisher": "pero_worker.tools.publisher",
    "pero_worker.scripts.stage_config_manager": "pero_worker.tools.stage_config",
    "pero_worker.scripts.server_config_manager": "pero_worker.tools.server_config",
    "pero_worker.scripts.worker_controller": "pero_worker.tools.worker_control",
    "pero_worker.scripts.stats": "pero_worker.tools.stats",
    "pero_worker.scripts.system_setup": "pero_worker.tools.system_setup",
    "pero_worker.scripts.deploy": "pero_worker.tools.deploy",
    "pero_worker.scripts.local_services": "pero_worker.dev.local_services",
    "pero_worker.scripts.demo": "pero_worker.dev.demo",
    "pero_worker.libs.daemon_logging": "pero_worker.libs.daemon",
    "opsplane": "pero_worker.dev.opsplane",
    "tcp_proxy": "pero_worker.dev.tcp_proxy",
    "charset": "pero_worker.training.charset",
}

_FROM = re.compile(r"^(?P<indent>\s*)from\s+(?P<module>\.*[\w.]*)\s+import\s+(?P<names>.*)$")
_IMPORT = re.compile(r"^(?P<indent>\s*)import\s+(?P<module>[\w.]+)(?P<rest>\s+as\s+\w+)?\s*(?P<comment>#.*)?$")


def package_of(path: Path, root: Path) -> str | None:
    """The dotted package a file at `path` belongs to (None outside the mapped folders)."""
    parts = path.resolve().relative_to(root.resolve()).parts
    if len(parts) < 2 or parts[0] not in FOLDERS:
        return None
    return ".".join([FOLDERS[parts[0]], *parts[1:-1]])


def absolute(module: str, package: str | None) -> str:
    """'..libs.zk' seen from package 'pero_worker.worker' -> 'pero_worker.libs.zk'."""
    dots = len(module) - len(module.lstrip("."))
    if not dots:
        return module
    if package is None:
        raise ValueError(f"relative import {module!r} outside a package")
    base = package.split(".")
    if dots - 1 >= len(base):
        raise ValueError(f"relative import {module!r} goes above {package!r}")
    base = base[:len(base) - (dots - 1)]
    rest = module[dots:]
    return ".".join(base + ([rest] if rest else []))


def moved(module: str) -> str:
    for old in sorted(MOVED, key=len, reverse=True):
        if module == old or module.startswith(old + "."):
            return MOVED[old] + module[len(old):]
    return module


def rewrite_line(line: str, package: str | None) -> str:
    """One source line with its import made absolute and pointed at the module's new home (pure)."""
    match = _FROM.match(line)
    if match:
        module = moved(absolute(match["module"], package))
        names = match["names"]
        single = re.fullmatch(r"(\w+)(\s+as\s+\w+)?(\s*#.*)?", names.strip())
        if single:   # `from pero_worker.scripts import publisher as pub`: the module itself may have moved
            whole = f"{module}.{single[1]}"
            target = moved(whole)
            if target != whole:
                parent, _, name = target.rpartition(".")
                alias = single[2] or (f" as {single[1]}" if name != single[1] else "")
                return f"{match['indent']}from {parent} import {name}{alias}{single[3] or ''}"
        return f"{match['indent']}from {module} import {names}"
    match = _IMPORT.match(line)
    if match and moved(match["module"]) != match["module"]:
        rest = match["rest"] or f" as {match['module'].rpartition('.')[2]}"
        comment = f"  {match['comment']}" if match["comment"] else ""
        return f"{match['indent']}import {moved(match['module'])}{rest}{comment}"
    return line


def rewrite_source(text: str, package: str | None) -> str:
    return "".join(rewrite_line(line.rstrip("\n"), package) + ("\n" if line.endswith("\n") else "")
                   for line in text.splitlines(keepends=True))


def main(argv: list[str] | None = None) -> int:
    files = sys.argv[1:] if argv is None else argv
    if not files or files[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if files else 2
    root = Path(__file__).resolve().parent.parent
    for name in files:
        path = Path(name)
        if path.suffix != ".py" or not path.is_file():
            continue
        text = path.read_text(encoding="utf-8")
        new = rewrite_source(text, package_of(path, root))
        if new != text:
            path.write_text(new, encoding="utf-8")
            print(f"rewrote {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
