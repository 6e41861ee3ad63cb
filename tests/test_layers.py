"""The layering of docs/architecture.md holds: nothing imports upward.

Every ``import`` in the package (at module level or inside a function) is read
with ``ast``; a module of a lower layer that names a module of a higher one
fails, naming the file, the line and what it imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

import llmspell

PACKAGE = Path(llmspell.__file__).parent

# the facade and what only users touch: nothing below it imports these
FACADE = {"_runtime", "_task", "cli", "testing", "agents", "__init__", "__main__", "_demo"}
# layer -> the top-level parts of llmspell it must not import
FORBIDDEN = {
    "messages": FACADE | {"engines", "actors", "table", "supervisors", "journal", "workflow"},
    "table": FACADE | {"engines", "actors", "supervisors", "journal", "_actor", "_loop"},
    "engines": FACADE | {"actors", "supervisors", "table", "journal", "_loop", "_driver"},
    "supervisors": FACADE | {"actors", "journal", "_loop", "_driver"},
    "actors": FACADE | {"_loop", "_driver"},
    "workflow": FACADE | {"engines", "actors", "supervisors", "table", "journal"},
}


def _imported(path: Path, package: tuple[str, ...]) -> list[tuple[int, str]]:
    """(line, top-level part of llmspell) of every llmspell import in ``path``,
    a module of the subpackage ``package`` (``()``: llmspell itself)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(package[: len(package) - (node.level - 1)])
                if node.level - 1 > len(package):
                    continue
                parts = base + (node.module.split(".") if node.module else [])
                if not parts:  # ``from .. import x``: x is a top-level module
                    found += [(node.lineno, alias.name) for alias in node.names]
                    continue
                found.append((node.lineno, parts[0]))
            elif node.module and node.module.split(".")[0] == "llmspell":
                parts = node.module.split(".")[1:]
                if parts:
                    found.append((node.lineno, parts[0]))
                else:
                    found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "llmspell" and len(parts) > 1:
                    found.append((node.lineno, parts[1]))
    return found


def _layer(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def test_nothing_imports_upward() -> None:
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        layer = _layer(path)
        forbidden = FORBIDDEN.get(layer)
        if forbidden is None:
            continue
        for line, part in _imported(path, path.relative_to(PACKAGE).parts[:-1]):
            if part in forbidden and part != layer:
                wrong.append(f"{path.relative_to(PACKAGE)}:{line} imports {part}")
    assert wrong == []


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    """The reader finds relative, absolute and function-level imports."""
    probe = tmp_path / "probe.py"
    probe.write_text(
        "from .._task import Task\n"
        "from . import base\n"
        "def f():\n"
        "    from ..actors import scheduler\n"
        "    import llmspell._runtime.core\n"
        "    from .. import journal\n"
    )
    parts = sorted(part for _, part in _imported(probe, ("engines",)))
    assert parts == ["_runtime", "_task", "actors", "engines", "journal"]
