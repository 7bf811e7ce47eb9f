"""engine/'s import graph has no cycle (architecture: dependencies run one way, transports ->
sessions -> room -> seams; nothing calls back up).

Rules: the graph is read from the source with `ast`, not by importing, so it counts every
import statement: at module level, inside functions, and under `if TYPE_CHECKING:` (a cycle a
type checker needs is still a cycle a reader has to untangle). An edge goes from a module to
the engine module it names: `from .room import X` names the package `plait.engine.room` (its
`__init__`), `from .room._doc import Y` names `plait.engine.room._doc`, and `from . import z`
names `z` if it is a module of ours. The implicit import of a parent package that Python does
before a submodule's is not an edge: every module would otherwise reach engine/__init__.py,
which imports Engine, which imports everything.
"""

from __future__ import annotations

import ast
from pathlib import Path

import plait.engine

PACKAGE = "plait.engine"
ROOT = Path(next(iter(plait.engine.__path__)))


def _modules() -> dict[str, Path]:
    """Every module of the engine package: dotted name -> file."""
    found: dict[str, Path] = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join([PACKAGE, *parts])] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The engine modules that module `name` imports, anywhere in its source."""
    is_package = path.name == "__init__.py"
    here = name if is_package else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            # `from pkg import sub` imports the submodule when there is one; else the package.
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # `import plait.engine.room._doc as d`, etc.
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

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
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_engine_import_graph_has_no_cycle() -> None:
    graph = import_graph()
    assert f"{PACKAGE}.room._lifecycle" in graph  # the walk found the subpackages
    found = cycles(graph)
    assert found == [], "import cycles in engine/ (TYPE_CHECKING imports included):\n" + "\n".join(
        " <-> ".join(component) for component in found
    )


def test_the_room_package_imports_no_session_transport_or_engine() -> None:
    # room -> seams only: a room reaches its members through MemberSession, never a session.
    graph = import_graph()
    upward = {f"{PACKAGE}.{m}" for m in ("_engine", "_peer", "_session", "_yjs", "_services", "_transport", "_websocket", "_handle")}
    for name, imports in graph.items():
        if name.startswith(f"{PACKAGE}.room"):
            assert not imports & upward, f"{name} imports {sorted(imports & upward)}"


def test_the_cycle_finder_finds_cycles() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
