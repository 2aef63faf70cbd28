"""No function in ``sdk/``, ``components/`` or ``pipelines/`` is longer than 80 lines (its ``def`` line to
its last line, docstring and nested functions included): a stage's ``run`` reads as a few named phases."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("sdk", "components", "pipelines")
LIMIT = 80


def long_functions(root: Path = ROOT, limit: int = LIMIT) -> list[str]:
    """``file:line name (N lines)`` for every function or method over ``limit`` lines."""
    found = []
    for folder in FOLDERS:
        for path in sorted((root / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    start = min([node.lineno] + [d.lineno for d in node.decorator_list])
                    length = node.end_lineno - start + 1
                    if length > limit:
                        rel = path.relative_to(root)
                        found.append(f"{rel}:{node.lineno} {node.name} ({length} lines)")
    return found


@pytest.mark.unit
def test_no_function_over_80_lines():
    assert long_functions() == []


@pytest.mark.unit
def test_long_functions_are_listed_with_file_and_line(tmp_path):
    body = "\n".join(f"        x{i} = {i}" for i in range(80))
    (tmp_path / "sdk").mkdir()
    (tmp_path / "sdk" / "m.py").write_text(
        f"def short():\n    pass\n\n\nclass C:\n    def long(self):\n{body}\n"
    )
    assert long_functions(tmp_path) == ["sdk/m.py:6 long (81 lines)"]
    assert long_functions(tmp_path, limit=81) == []
