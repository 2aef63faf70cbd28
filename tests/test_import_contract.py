"""The import contract: dependencies point one way (``pipelines -> components -> sdk``), and no import
circle joins distilflow's modules. Read from the source with ``ast``, so nothing is imported.

- Nothing in ``sdk/`` (``distilflow.*``) imports a stage (``distilflow.components``) or a recipe
  (``distilflow.pipelines``), at module level or inside a function, except ``distilflow.client``
  (the SDK's client side and the CLI run stages and pipelines);
- nothing in ``components/`` imports a recipe;
- a stage's ``config.py`` takes only ``distilflow.training.fields`` from ``distilflow.training``;
- the module-level imports of distilflow's modules form no circle (``if TYPE_CHECKING:`` imports and
  imports inside functions, which run late on purpose, are not part of it).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"sdk": "distilflow", "components": "distilflow.components", "pipelines": "distilflow.pipelines"}
CLIENT = "distilflow.client"
UPPER = ("distilflow.components", "distilflow.pipelines")


def sources(root: Path = ROOT) -> dict[str, tuple[str, str]]:
    """``{module: (file relative to root, source)}`` for every Python file of the package."""
    found = {}
    for folder in FOLDERS:
        for path in sorted((root / folder).rglob("*.py")):
            rel = path.relative_to(root)
            found[module_name(root, folder, path)] = (str(rel), path.read_text(encoding="utf-8"))
    return found


def module_name(root: Path, folder: str, path: Path) -> str:
    """The import name of a file under one of the three source folders of ``root``."""
    parts = list(path.relative_to(root / folder).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([FOLDERS[folder], *parts])


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports(module: str, path: str, source: str, modules: set[str]) -> list[tuple[str, int, bool]]:
    """``(imported distilflow module, line, at module level)`` for every import in ``source``.

    ``from a.b import c`` names ``a.b.c`` when that is a module, else ``a.b``; relative imports are
    resolved against ``module``. Imports under ``if TYPE_CHECKING:`` are left out.
    """
    tree = ast.parse(source)
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            skipped |= {id(n) for child in node.body for n in ast.walk(child)}
    top = _module_level(tree)
    found = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                names.append(sub if sub in modules else base)
        for name in names:
            if name == "distilflow" or name.startswith("distilflow."):
                found.append((name, node.lineno, id(node) in top))
    return found


def _module_level(tree: ast.Module) -> set[int]:
    """Ids of the nodes that run when the module is imported (everything outside function bodies)."""
    found: set[int] = set()
    todo: list[ast.AST] = list(tree.body)
    while todo:
        node = todo.pop()
        found.add(id(node))
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            todo.extend(ast.iter_child_nodes(node))
    return found


def layer_violations(found: dict[str, tuple[str, str]]) -> list[str]:
    """Imports that point up a layer: ``file:line: module imports target``."""
    modules = set(found)
    bad = []
    for module, (path, source) in sorted(found.items()):
        in_sdk = not module.startswith(UPPER) and module != CLIENT and not module.startswith(CLIENT + ".")
        in_components = module.startswith("distilflow.components")
        for target, line, _ in imports(module, path, source, modules):
            up = (in_sdk and target.startswith(UPPER)) or (
                in_components and target.startswith("distilflow.pipelines")
            )
            if up:
                bad.append(f"{path}:{line}: {module} imports {target}")
    return bad


def config_violations(found: dict[str, tuple[str, str]]) -> list[str]:
    """Stage config modules importing any part of ``distilflow.training`` but ``fields``."""
    modules = set(found)
    bad = []
    for module, (path, source) in sorted(found.items()):
        if not (module.startswith("distilflow.components.") and module.endswith(".config")):
            continue
        for target, line, _ in imports(module, path, source, modules):
            if target.startswith("distilflow.training") and target != "distilflow.training.fields":
                bad.append(f"{path}:{line}: {module} imports {target}")
    return bad


def import_graph(found: dict[str, tuple[str, str]]) -> dict[str, set[str]]:
    """Module-level import edges among distilflow's modules; importing ``a.b.c`` also runs ``a.b``."""
    modules = set(found)
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, (path, source) in found.items():
        for target, _, at_top in imports(module, path, source, modules):
            if not at_top:
                continue
            parts = target.split(".")
            for i in range(2, len(parts) + 1):
                step = ".".join(parts[:i])
                if step in modules and step != module:
                    graph[module].add(step)
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                group.append(top)
                if top == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(groups)


# --- the contract, on this repository ---------------------------------------------------------------


@pytest.fixture(scope="module")
def project() -> dict[str, tuple[str, str]]:
    found = sources()
    assert "distilflow.components.sft.run" in found and "distilflow.training.fields" in found
    return found


@pytest.mark.unit
def test_no_import_points_up_a_layer(project):
    assert layer_violations(project) == []


@pytest.mark.unit
def test_stage_configs_import_only_the_training_fields(project):
    assert config_violations(project) == []


@pytest.mark.unit
def test_no_import_circle(project):
    graph = import_graph(project)
    assert "distilflow.config" in graph["distilflow.teachers.config"]  # the graph holds real edges
    assert circles(graph) == []


# --- the checks themselves fail on what they guard against ------------------------------------------


def _tree(tmp_path: Path, files: dict[str, str]) -> dict[str, tuple[str, str]]:
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return sources(tmp_path)


@pytest.mark.unit
def test_checks_report_an_upward_import_a_config_import_and_a_circle(tmp_path):
    found = _tree(
        tmp_path,
        {
            "sdk/__init__.py": "",
            "sdk/config.py": "def classes():\n    from distilflow.components import STAGES\n",
            "sdk/a.py": "from distilflow import b\n",
            "sdk/b.py": "import distilflow.c\n",
            "sdk/c.py": "from distilflow.a import thing\n",
            "sdk/lazy.py": "def f():\n    from distilflow import lazy2\n",
            "sdk/lazy2.py": "from distilflow import lazy\n",
            "sdk/typed.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from distilflow import typed2\n",
            "sdk/typed2.py": "from distilflow import typed\n",
            "sdk/training/__init__.py": "",
            "sdk/training/fields.py": "",
            "sdk/training/save.py": "",
            "sdk/client/__init__.py": "from distilflow.pipelines import PIPELINES\n",
            "components/__init__.py": "",
            "components/sft/__init__.py": "",
            "components/sft/config.py": "from distilflow.training import fields, save\n",
            "components/sft/run.py": "from distilflow.pipelines.common import x\n",
            "pipelines/__init__.py": "from distilflow.components import sft\n",
            "pipelines/common.py": "",
        },
    )
    assert layer_violations(found) == [
        "components/sft/run.py:1: distilflow.components.sft.run imports distilflow.pipelines.common",
        "sdk/config.py:2: distilflow.config imports distilflow.components",
    ]
    assert config_violations(found) == [
        "components/sft/config.py:1: distilflow.components.sft.config imports distilflow.training.save"
    ]
    # a -> b -> c -> a is a circle; lazy (function-level) and TYPE_CHECKING imports are not
    assert circles(import_graph(found)) == [["distilflow.a", "distilflow.b", "distilflow.c"]]
