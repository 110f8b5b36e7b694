"""The shape the code keeps (issue 9), checked on the source itself with an AST walk.

- no function over 60 lines in the daemons and libs/ (worker/, libs/, watchdog/, log_daemon/), and each
  daemon's `main` at most 40: long functions are where decisions hide from the table tests;
- one import style: absolute `pero_worker.*` imports, no relative imports, no sys.path edits;
- scripts/ holds thin entry points only, and no test imports a module under scripts/.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CORE = ("worker", "libs", "watchdog", "log_daemon")
DAEMON_MAINS = ("worker/run_worker.py", "watchdog/worker_watchdog.py", "log_daemon/log_daemon.py")
MAX_FUNCTION_LINES = 60
MAX_MAIN_LINES = 40
PYTHON_FOLDERS = ("libs", "worker", "watchdog", "log_daemon", "tools", "dev", "bench", "pero-ocr", "scripts",
                  "tests", "examples")


def python_files(*folders: str) -> list[Path]:
    return sorted(path for folder in folders for path in (REPO / folder).rglob("*.py")
                  if not path.name.endswith("_pb2.py"))


def functions(path: Path) -> list[tuple[str, int]]:
    """(qualified name, lines from `def` to the last line) of every function in the file."""
    found = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                found.append((prefix + child.name, child.end_lineno - child.lineno + 1))
                visit(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
    visit(ast.parse(path.read_text(encoding="utf-8")), "")
    return found


def test_the_source_tree_is_found():
    assert len(python_files(*CORE)) > 40 and all((REPO / name).is_file() for name in DAEMON_MAINS)


def test_no_function_in_the_core_is_over_60_lines():
    long = [f"{path.relative_to(REPO)}: {name} ({lines} lines)"
            for path in python_files(*CORE) for name, lines in functions(path) if lines > MAX_FUNCTION_LINES]
    assert not long, "split these functions:\n" + "\n".join(long)


@pytest.mark.parametrize("daemon", DAEMON_MAINS)
def test_each_daemon_main_is_at_most_40_lines(daemon):
    mains = [lines for name, lines in functions(REPO / daemon) if name == "main"]
    assert mains and mains[0] <= MAX_MAIN_LINES, f"{daemon}: main has {mains} lines"


def _imports(path: Path) -> list[tuple[int, str, int]]:
    """(line, module, relative level) of every import in the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            found.append((node.lineno, node.module or "", node.level))
        elif isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name, 0) for alias in node.names)
    return found


def test_one_import_style_absolute_pero_worker_imports():
    relative = [f"{path.relative_to(REPO)}:{line}" for path in python_files(*PYTHON_FOLDERS)
                for line, _module, level in _imports(path) if level]
    assert not relative, "use `from pero_worker.<folder> import ...` (dev/rewrite_imports.py):\n" + "\n".join(relative)
    path_edits = [str(path.relative_to(REPO)) for path in python_files(*PYTHON_FOLDERS) if _edits_sys_path(path)]
    assert not path_edits, f"no sys.path tricks: {path_edits}"


def _edits_sys_path(path: Path) -> bool:
    """True when the file calls sys.path.insert/append/extend."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr in ("insert", "append", "extend") and ast.unparse(node.func.value) == "sys.path":
            return True
    return False


def test_no_test_imports_a_script():
    offending = [f"{path.relative_to(REPO)}:{line} imports {module}" for path in python_files("tests", "bench")
                 for line, module, _level in _imports(path)
                 if module.startswith(("scripts", "pero_worker.scripts"))]
    assert not offending, "\n".join(offending)


def test_scripts_are_thin_entry_points():
    for path in python_files("scripts"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        defined = [node for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))]
        assert not defined, f"{path.relative_to(REPO)}: logic belongs in tools/ or dev/, not in scripts/"
        assert len(path.read_text(encoding="utf-8").splitlines()) <= 15, path


LAYERS = {
    # folder: the pero_worker packages its code may import
    "libs": ("pero_worker.libs",),
    "worker": ("pero_worker.libs", "pero_worker.worker"),
    "watchdog": ("pero_worker.libs", "pero_worker.watchdog"),
    "log_daemon": ("pero_worker.libs", "pero_worker.log_daemon"),
}


@pytest.mark.parametrize("folder", sorted(LAYERS))
def test_layers_libs_below_the_daemons_no_daemon_on_tools(folder):
    allowed = LAYERS[folder]
    crossing = [f"{path.relative_to(REPO)}:{line} imports {module}" for path in python_files(folder)
                for line, module, _level in _imports(path)
                if module.startswith("pero_worker.") and not module.startswith(allowed)]
    assert not crossing, "\n".join(crossing)
