"""Layering (style §1), read from the source.

Every import statement of every module of ours counts: at any depth (function bodies too), and
under `if TYPE_CHECKING:` too, since a type-only import still ties two modules together. Each
is resolved to the absolute module it names (relative imports included). The rules:

- protocol/ imports nothing of ours, and neither trio nor anything that does I/O, logs or reads
  the clock (sans-I/O);
- storage/ imports protocol/ only, of ours;
- client/ imports protocol/ only;
- engine/ imports protocol/ and storage/, and of client/ its public API only (`plait.client`,
  for `plait client`), never a private module `plait.client._x`.

The packages and their folders come from pyproject's package-dir, so a new package needs a rule
here. A second test imports protocol with trio blocked, for imports no statement spells out.
Within engine/ the imports run one way (http -> sessions -> room, transports below sessions):
no cycle; the room package reaches no session, transport or the Engine (it reaches members
through MemberSession), and transports reach no session or room.
"""

from __future__ import annotations

import ast
import functools
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
PACKAGE_DIRS: dict[str, str] = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"][
    "package-dir"
]


@dataclass(frozen=True)
class Rule:
    ours: frozenset[str]
    """Our other packages it may import."""
    banned: frozenset[str] = frozenset()
    """Top-level modules it must not import."""
    public_only: frozenset[str] = frozenset()
    """Of these packages (also in `ours`), no private module."""


RULES = {
    "plait.protocol": Rule(
        ours=frozenset(),
        # no trio, no event loop, no sockets, no logging, no clock reads (style §1)
        banned=frozenset({"trio", "trio_websocket", "anyio", "asyncio", "socket", "ssl", "selectors", "logging", "time"}),
    ),
    "plait.storage": Rule(ours=frozenset({"plait.protocol"})),
    "plait.client": Rule(ours=frozenset({"plait.protocol"})),
    "plait.engine": Rule(
        ours=frozenset({"plait.protocol", "plait.storage", "plait.client"}),
        public_only=frozenset({"plait.client"}),
    ),
}


@dataclass(frozen=True)
class Module:
    name: str
    path: Path
    is_package: bool


@dataclass(frozen=True)
class Import:
    target: str
    """The absolute name imported: a module, or `module.name` for each name of a from-import
    (which may be a submodule, as in `from plait.client import _cli`)."""
    line: int
    type_only: bool


def modules() -> dict[str, Module]:
    """Every module of ours, by name."""
    found: dict[str, Module] = {}
    for package, folder in PACKAGE_DIRS.items():
        base = ROOT / folder
        for path in sorted(base.rglob("*.py")):
            parts = [package, *path.relative_to(base).with_suffix("").parts]
            is_package = parts[-1] == "__init__"
            if is_package:
                parts.pop()
            name = ".".join(parts)
            found[name] = Module(name, path, is_package)
    return found


def _statements(body: list[ast.stmt], type_only: bool) -> Iterator[tuple[ast.stmt, bool]]:
    """Every statement, nested ones too (an import is a statement, so expressions are skipped),
    and whether it is under `if TYPE_CHECKING:`."""
    for node in body:
        yield node, type_only
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from _statements(node.body, True)
            yield from _statements(node.orelse, type_only)
            continue
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.stmt):
                yield from _statements([child], type_only)
            elif isinstance(child, (ast.excepthandler, ast.match_case)):
                yield from _statements(child.body, type_only)


def imports_of(module: str, is_package: bool, source: str) -> list[Import]:
    """What a module's import statements name, anywhere in it."""
    found: list[Import] = []
    for node, type_only in _statements(ast.parse(source).body, False):
        if isinstance(node, ast.Import):
            found.extend(Import(alias.name, node.lineno, type_only) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = module.split(".") if is_package else module.split(".")[:-1]
                if node.level > 1:
                    package = package[: 1 - node.level]
                base = ".".join([*package, node.module] if node.module else package)
            else:
                base = node.module or ""
            found.append(Import(base, node.lineno, type_only))
            found.extend(Import(f"{base}.{alias.name}", node.lineno, type_only) for alias in node.names if alias.name != "*")
    return found


def _package_of(name: str) -> str:
    """`plait.engine._cli` -> `plait.engine`; `trio.testing` -> `trio`."""
    parts = name.split(".")
    return ".".join(parts[:2]) if parts[0] == "plait" else parts[0]


def violations(module: str, imports: list[Import]) -> list[str]:
    """What breaks the rule of the module's package, one line each."""
    package = _package_of(module)
    rule = RULES[package]
    out = []
    for imp in imports:
        other = _package_of(imp.target)
        where = f"{module}:{imp.line} imports {imp.target}"
        if imp.target.split(".")[0] in rule.banned:
            out.append(f"{where} ({imp.target.split('.')[0]} is banned in {package})")
        elif imp.target.split(".")[0] == "plait" and other != package:
            if other not in rule.ours:
                out.append(f"{where} ({package} may import {sorted(rule.ours) or 'nothing of ours'})")
            elif other in rule.public_only and any(p.startswith("_") for p in imp.target.split(".")[2:]):
                out.append(f"{where} (a private module of {other}: use its public API)")
    return out


MODULES = modules()


@functools.cache
def imports_of_module(name: str) -> list[Import]:
    m = MODULES[name]
    return imports_of(name, m.is_package, m.path.read_text(encoding="utf-8"))


def test_every_package_has_a_rule() -> None:
    assert set(PACKAGE_DIRS) == set(RULES)


@pytest.mark.parametrize("package", sorted(RULES))
def test_each_package_imports_only_what_its_layer_may(package: str) -> None:
    mine = [m for m in MODULES.values() if _package_of(m.name) == package]
    assert len(mine) > 1, f"no modules found for {package} under {PACKAGE_DIRS.get(package)}"
    broken = [line for m in mine for line in violations(m.name, imports_of_module(m.name))]
    assert broken == []


def test_the_walk_sees_every_kind_of_import() -> None:
    """The walk above is only as good as what it finds: imports in functions and under
    TYPE_CHECKING, relative ones from a module and from a package, and names that are modules."""
    source = """
from __future__ import annotations
from typing import TYPE_CHECKING
import os.path as p
from . import _sibling
from .._up import thing
from plait.client import _cli
if TYPE_CHECKING:
    from plait.client._room import Room
def f():
    import trio.testing
class C:
    def g(self):
        try:
            import a
        except ImportError:
            import b
"""
    found = {(i.target, i.type_only) for i in imports_of("plait.engine.room._x", False, source)}
    assert {
        ("os.path", False),
        ("plait.engine.room", False),
        ("plait.engine.room._sibling", False),
        ("plait.engine._up", False),
        ("plait.engine._up.thing", False),
        ("plait.client._cli", False),
        ("plait.client._room", True),
        ("plait.client._room.Room", True),
        ("trio.testing", False),
        ("a", False),
        ("b", False),
    } <= found
    in_package = {i.target for i in imports_of("plait.engine", True, "from ._engine import Engine\nfrom . import _x\n")}
    assert in_package == {"plait.engine._engine", "plait.engine._engine.Engine", "plait.engine", "plait.engine._x"}


def test_each_rule_reports_what_breaks_it() -> None:
    """Each kind of violation is reported (the package tests pass only because there is none)."""

    def check(module: str, target: str) -> list[str]:
        return violations(module, [Import(target, 1, False)])

    assert check("plait.protocol._codec", "trio")
    assert check("plait.protocol._codec", "time")
    assert check("plait.protocol._codec", "plait.storage")
    assert check("plait.storage._files", "plait.engine._room")
    assert check("plait.client._room", "plait.storage.MemoryStore")
    assert check("plait.engine._cli", "plait.client._cli.main")
    assert check("plait.engine._cli", "plait.client._cli")
    assert check("plait.engine", "plait")
    assert not check("plait.engine._cli", "plait.client.terminal_main")
    assert not check("plait.storage._files", "plait.protocol")
    assert not check("plait.protocol._codec", "plait.protocol._errors")
    assert not check("plait.protocol._codec", "msgpack")


# -- cycles within engine/ ------------------------------------------------------------------


def engine_graph() -> dict[str, set[str]]:
    """engine module -> the engine modules it imports."""
    engine = {name for name in MODULES if _package_of(name) == "plait.engine"}
    graph: dict[str, set[str]] = {}
    for name in sorted(engine):
        targets = set()
        for imp in imports_of_module(name):
            # the longest name of ours it starts with: `plait.engine._room.Room` is `_room`
            parts = imp.target.split(".")
            known = next((".".join(parts[:n]) for n in range(len(parts), 0, -1) if ".".join(parts[:n]) in engine), None)
            if known is not None and known != name:
                targets.add(known)
        graph[name] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every elementary cycle, each once, starting at its smallest module."""
    found = []
    for start in sorted(graph):
        stack = [[start]]
        while stack:
            path = stack.pop()
            for nxt in sorted(graph.get(path[-1], ())):
                if nxt == start:
                    found.append([*path, start])
                elif nxt > start and nxt not in path:
                    stack.append([*path, nxt])
    return sorted(found, key=lambda c: (len(c), c))


def test_the_cycle_finder_finds_cycles() -> None:
    graph = {"a": {"b"}, "b": {"c", "a"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "a"], ["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_engine_modules_do_not_import_each_other_in_cycles() -> None:
    graph = engine_graph()
    assert "plait.engine.room._lifecycle" in graph  # the walk sees the subpackages
    found = [" -> ".join(m.removeprefix("plait.engine.") for m in cycle) for cycle in cycles(graph)]
    assert found == []


UPWARD = {
    # package -> what it must not import: the engine's layers run http -> sessions -> room,
    # and transports know nothing of sessions or rooms.
    "plait.engine.room": ("plait.engine._engine", "plait.engine._handle", "plait.engine.sessions", "plait.engine.transports",
                          "plait.engine.http"),
    "plait.engine.sessions": ("plait.engine._engine", "plait.engine._handle", "plait.engine.http"),
    "plait.engine.transports": ("plait.engine._engine", "plait.engine.sessions", "plait.engine.room", "plait.engine.http"),
    "plait.engine.http": ("plait.engine._engine", "plait.engine.sessions", "plait.engine.room"),
}


@pytest.mark.parametrize("package", sorted(UPWARD))
def test_each_engine_layer_imports_nothing_above_it(package: str) -> None:
    graph = engine_graph()
    assert any(name.startswith(package) for name in graph), f"no modules of {package}"
    for name, imports in graph.items():
        if name == package or name.startswith(package + "."):
            upward = sorted(i for i in imports if i.startswith(UPWARD[package]))
            assert upward == [], f"{name} imports {upward}"


# -- at run time ------------------------------------------------------------------------------

CHECK = """
import sys
class Blocked:
    def find_spec(self, name, path=None, target=None):
        ours = name.startswith(('plait.engine', 'plait.storage', 'plait.client'))
        if name.split('.')[0] in {'trio', 'trio_websocket'} or ours:
            raise ImportError('protocol/ must not import ' + name)
sys.meta_path.insert(0, Blocked())
import plait.protocol
print('ok')
"""


def test_protocol_imports_without_trio_or_other_plait_packages() -> None:
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
