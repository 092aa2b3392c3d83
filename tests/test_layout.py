"""The import graph of acp_server: no circles, and every import points down the layers.

Read with ``ast`` rather than by importing, so imports inside functions count too (a lazy
import is how a circle hides at run time), while ``if TYPE_CHECKING:`` blocks, which never
run, count for the layers but not for circles. Importing ``a.b.c`` first imports the
packages ``a`` and ``a.b``, so those are edges as well; a module's own packages are
already being imported when it runs, so for it they are not. What that leaves out, a
package's ``__init__`` importing its own modules (which then run for whoever imports any
one of them), has a test of its own.
"""

from __future__ import annotations

import ast
import functools
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "acp_server"
ROOT = "acp_server"
"""The root package; anyone may import it (``__version__``), and it imports nothing."""

SHARED = ("acp_server.errors", "acp_server.logs", "acp_server.sessions.model")
"""The bottom: errors, logging and the session value types, importable from anywhere."""

EVERYTHING = ("acp_server",)

LAYERS: dict[str, tuple[str, ...]] = {
    "acp_server.__main__": ("acp_server.cli",),
    "acp_server.cli": EVERYTHING,
    "acp_server.server": (
        "acp_server.preflight",
        "acp_server.protocol",
        "acp_server.sessions",
        "acp_server.agent",
        "acp_server.storage",
        "acp_server.retention",
        "acp_server.transport",
        "acp_server.config",
        *SHARED,
    ),
    "acp_server.retention": ("acp_server.storage", "acp_server.config", *SHARED),
    "acp_server.preflight": ("acp_server.agent", "acp_server.config", *SHARED),
    "acp_server.protocol": (
        "acp_server.protocol",
        "acp_server.sessions",
        "acp_server.agent",
        "acp_server.transport",
        "acp_server.config",
        *SHARED,
    ),
    "acp_server.sessions": (
        "acp_server.sessions.service",
        "acp_server.sessions.redaction",
        "acp_server.agent",
        "acp_server.config",
        *SHARED,
    ),
    "acp_server.sessions.service": (
        "acp_server.sessions.redaction",
        "acp_server.storage",
        "acp_server.config",
        *SHARED,
    ),
    "acp_server.sessions.redaction": (),
    "acp_server.sessions.model": (),
    "acp_server.agent": (
        "acp_server.agent",
        "acp_server.sessions.redaction",
        "acp_server.config",
        *SHARED,
    ),
    "acp_server.storage": ("acp_server.storage", "acp_server.config", *SHARED),
    "acp_server.transport": ("acp_server.transport", "acp_server.errors", "acp_server.logs"),
    "acp_server.config": ("acp_server.config", "acp_server.errors"),
    "acp_server.errors": (),
    "acp_server.logs": (),
}
"""What each part may import (besides the root package); the most specific entry wins.
Upper layers import lower ones only: cli and server compose everything; protocol sits
on sessions, which sit on agent; storage serves the session service, the CLI and
retention; agent never reaches storage or the live sessions; transport knows only
errors and logs."""


@dataclass(frozen=True)
class Import:
    importer: str
    target: str
    line: int
    at_import_time: bool
    """Not inside a function: runs whenever the importer is imported."""
    type_checking: bool


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def packages_of(name: str) -> list[str]:
    """``a.b.c`` -> ``a``, ``a.b``: what importing it imports first."""
    parts = name.split(".")
    return [".".join(parts[:n]) for n in range(1, len(parts))]


@functools.cache
def modules(root: Path) -> dict[str, Path]:
    """Every module under the package directory ``root``, by dotted name."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(name: str, path: Path, known: dict[str, Path]) -> Iterator[Import]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]

    def targets(node: ast.Import | ast.ImportFrom) -> set[str]:
        if isinstance(node, ast.Import):
            return {alias.name for alias in node.names}
        base = node.module or ""
        if node.level:
            parts = package.split(".")
            base = ".".join([*parts[: len(parts) - node.level + 1], *filter(None, [base])])
        # ``from pkg import sub`` imports the module ``pkg.sub`` when there is one.
        return {f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names}

    def visit(node: ast.AST, in_function: bool, type_checking: bool) -> Iterator[Import]:
        if isinstance(node, ast.Import | ast.ImportFrom):
            for target in sorted(targets(node)):
                if within(target, ROOT):
                    yield Import(name, target, node.lineno, not in_function, type_checking)
            return
        if isinstance(node, ast.If) and is_type_checking(node.test):
            for child in node.body:
                yield from visit(child, in_function, True)
            for child in node.orelse:
                yield from visit(child, in_function, type_checking)
            return
        inner = in_function or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        for child in ast.iter_child_nodes(node):
            yield from visit(child, inner, type_checking)

    yield from visit(ast.parse(path.read_text(), str(path)), False, False)


@functools.cache
def all_imports(root: Path) -> tuple[Import, ...]:
    known = modules(root)
    return tuple(found for name, path in known.items() for found in imports_of(name, path, known))


def graph(imports: tuple[Import, ...]) -> dict[str, dict[str, Import]]:
    """Module -> the modules importing it runs, each with the import that does it."""
    edges: dict[str, dict[str, Import]] = {}
    for found in imports:
        if found.type_checking:
            continue
        running = {*packages_of(found.importer), found.importer}
        for target in [*packages_of(found.target), found.target]:
            if target not in running:
                edges.setdefault(found.importer, {}).setdefault(target, found)
    return edges


def components(edges: dict[str, dict[str, Import]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan): each is a
    set of modules that all import one another, one way round or another."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in edges.get(node, {}):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while not component or component[-1] != node:
                component.append(stack.pop())
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return sorted(found)


def circle_in(component: list[str], edges: dict[str, dict[str, Import]]) -> list[str]:
    """The shortest path from the component's first module back to itself."""
    start, members = component[0], set(component)
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for nxt in sorted(edges.get(node, {})):
            if nxt == start:
                return [*paths[node], start]
            if nxt in members and nxt not in paths:
                paths[nxt] = [*paths[node], nxt]
                queue.append(nxt)
    raise AssertionError("a strongly connected component without a circle")


def describe(component: list[str], edges: dict[str, dict[str, Import]]) -> str:
    circle = circle_in(component, edges)
    steps = [f"{len(component)} modules: {', '.join(component)}; for instance"]
    for here, nxt in itertools.pairwise(circle):
        found = edges[here][nxt]
        via = "" if found.target == nxt else f" (importing {found.target})"
        how = "" if found.at_import_time else ", in a function"
        steps.append(f"{here} -> {nxt}{via} [line {found.line}{how}]")
    return "\n    ".join(steps)


def circles(root: Path) -> list[str]:
    edges = graph(all_imports(root))
    return [describe(component, edges) for component in components(edges)]


def eager_imports(root: Path) -> list[str]:
    """Imports, in a package's ``__init__`` at import time, of that package's own modules."""
    known = modules(root)
    return sorted(
        {
            f"{found.importer} imports {found.target} [line {found.line}]"
            for found in all_imports(root)
            if known[found.importer].name == "__init__.py"
            and found.at_import_time
            and not found.type_checking
            and within(found.target, found.importer)
            and found.target != found.importer
        }
    )


def layer_of(module: str) -> tuple[str, ...] | None:
    if module == ROOT:
        return ()
    best = max((key for key in LAYERS if within(module, key)), key=len, default=None)
    return None if best is None else LAYERS[best]


def upward_imports(root: Path) -> list[str]:
    upward = set()
    for found in all_imports(root):
        allowed = layer_of(found.importer) or ()
        if found.target != ROOT and not any(within(found.target, p) for p in allowed):
            upward.add(f"{found.importer} imports {found.target} [line {found.line}]")
    return sorted(upward)


def test_every_module_has_a_layer() -> None:
    assert [name for name in modules(PACKAGE) if layer_of(name) is None] == []


def test_no_import_circles() -> None:
    if found := circles(PACKAGE):
        pytest.fail("import circles among\n  " + "\n  ".join(found), pytrace=False)


def test_packages_do_not_import_their_own_modules_eagerly() -> None:
    """A package's ``__init__`` runs before any of its modules is imported: importing its
    own modules there loads them all, for whoever imports any one, with the package half
    done (and makes a circle of every module that imports a sibling)."""
    if eager := eager_imports(PACKAGE):
        pytest.fail("eager package imports:\n  " + "\n  ".join(eager), pytrace=False)


def test_imports_point_down_the_layers() -> None:
    if upward := upward_imports(PACKAGE):
        pytest.fail("imports against the layers:\n  " + "\n  ".join(upward), pytrace=False)


def test_the_checks_see_circles_eager_packages_and_upward_imports(tmp_path: Path) -> None:
    """The checks themselves, on a small made-up tree with one of each fault."""
    files = {
        "__init__.py": "",
        "errors.py": "",
        "agent/__init__.py": "from acp_server.agent import turn\n",
        "agent/turn.py": "from acp_server.storage.store import Store\n",
        "storage/__init__.py": "",
        "storage/engine.py": (
            "from typing import TYPE_CHECKING\n"
            "from acp_server import errors\n"
            "if TYPE_CHECKING:\n"
            "    from acp_server.storage.store import Store\n"
        ),
        "storage/store.py": (
            "from . import engine\n"
            "class Store:\n"
            "    def run(self):\n"
            "        from ..agent.turn import loop\n"
        ),
    }
    root = tmp_path / "acp_server"
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)

    # engine <-> store only under TYPE_CHECKING: no circle; store -> agent.turn runs agent.
    circle = ["acp_server.agent", "acp_server.agent.turn", "acp_server.storage.store"]
    assert components(graph(all_imports(root))) == [circle]
    assert eager_imports(root) == ["acp_server.agent imports acp_server.agent.turn [line 1]"]
    assert upward_imports(root) == [
        "acp_server.agent.turn imports acp_server.storage.store [line 1]",
        "acp_server.storage.store imports acp_server.agent.turn [line 4]",
    ]
