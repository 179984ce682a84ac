"""Layering: the modules of ``proxy/`` import each other without a cycle.

The graph is read from the source with ``ast`` (every ``import``, also inside functions, so a
lazy import cannot hide a cycle); ``if TYPE_CHECKING:`` blocks are left out, as they never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "proxy"


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node except those under ``if TYPE_CHECKING:``."""
    found: list[ast.AST] = []
    stack = [tree]
    while stack:
        node = stack.pop()
        found.append(node)
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and ast.unparse(child.test).endswith("TYPE_CHECKING"):
                stack.extend(child.orelse)
                continue
            stack.append(child)
    return found


def imports_of(path: Path, root: Path, modules: set[str]) -> set[str]:
    """The package's modules that ``path`` imports (``from proxy import x`` names proxy.x).

    Parents of an imported module are not counted: Python imports a package before its
    submodules, and a submodule importing its package's ``__init__`` is no cycle to fix.
    """
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            # A name that is a submodule is that module; any other is read from ``base``.
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                for alias in node.names
            ]
        else:
            continue
        found.update(t for t in targets if t in modules and t != name)
    return found


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    paths = sorted(root.rglob("*.py"))
    modules = {module_name(p, root) for p in paths}
    return {module_name(p, root): imports_of(p, root, modules) for p in paths}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    done: set[str] = set()
    path: list[str] = []
    on_path: set[str] = set()

    def visit(node: str) -> list[str] | None:
        path.append(node)
        on_path.add(node)
        for target in sorted(graph.get(node, ())):
            if target in on_path:
                return [*path[path.index(target) :], target]
            if target not in done and (cycle := visit(target)):
                return cycle
        on_path.discard(node)
        path.pop()
        done.add(node)
        return None

    for start in sorted(graph):
        if start not in done and (cycle := visit(start)):
            return cycle
    return None


def test_the_proxy_package_has_no_import_cycle() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_a_lazy_import_cycle_is_found(tmp_path: Path) -> None:
    """The check itself: two modules that import each other, one lazily, are a cycle."""
    package = tmp_path / "proxy"
    (package / "usage").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "usage" / "__init__.py").write_text("")
    (package / "usage" / "store.py").write_text(
        "def open_store():\n    from proxy.usage.redis import RedisStore\n"
    )
    (package / "usage" / "redis.py").write_text("from proxy.usage import store\n")
    graph = import_graph(package)
    assert find_cycle(graph) == ["proxy.usage.redis", "proxy.usage.store", "proxy.usage.redis"]


@pytest.mark.parametrize(
    ("source", "imported"),
    [
        ("from . import store", {"proxy.usage.store"}),
        ("from .store import Row", {"proxy.usage.store"}),
        ("from .. import settings", {"proxy.settings"}),
        ("import proxy.usage.store", {"proxy.usage.store"}),
        ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import store", set()),
    ],
)
def test_relative_and_absolute_imports_are_read(
    tmp_path: Path, source: str, imported: set[str]
) -> None:
    package = tmp_path / "proxy"
    (package / "usage").mkdir(parents=True)
    for name in ("__init__.py", "settings.py", "usage/__init__.py", "usage/store.py"):
        (package / name).write_text("")
    (package / "usage" / "gate.py").write_text(source + "\n")
    assert import_graph(package)["proxy.usage.gate"] == imported
