"""
Imports point inward only, and no module imports itself back (STYLE.md).

The graph is read from the package tree (every ``.py`` file of ``kplus_fsm/``
and ``adapters/``, installed as ``kplus_fsm.adapters``), never from a hand-kept
list: a new module fails :func:`test_every_module_has_a_layer` until it is
placed in :data:`LAYERS`. An import is an arrow from the importing module to the
imported one; imports under ``if TYPE_CHECKING:`` are types only and draw no
arrow. Arrows must point to the same or an inner layer; the runtime graph
(module-level imports) must have no cycle.
"""

from __future__ import annotations

import ast
import fnmatch
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: (module pattern, layer), first match wins; inner layers have lower numbers.
LAYERS: tuple[tuple[str, int], ...] = (
    # the pure core: no I/O, no clock, no logging
    ("kplus_fsm.exceptions", 0),
    ("kplus_fsm.typing", 0),
    ("kplus_fsm._time", 0),
    ("kplus_fsm.failpoints", 0),
    ("kplus_fsm._logging", 0),
    ("kplus_fsm._model", 1),
    ("kplus_fsm._machine", 2),
    ("kplus_fsm._codec", 3),
    # the store: rows and SQL, then the two databases over them
    ("kplus_fsm._store._rows", 4),
    ("kplus_fsm._store._reports", 4),
    ("kplus_fsm._store._urls", 4),
    ("kplus_fsm._store._sql", 5),
    ("kplus_fsm._store._schema_sqlite", 5),
    ("kplus_fsm._store._schema_pg", 6),
    ("kplus_fsm._store._classify", 6),
    ("kplus_fsm._store._audit", 6),
    ("kplus_fsm._store._log", 7),
    ("kplus_fsm._store._group_commit", 7),
    ("kplus_fsm._store._write_cache", 7),
    ("kplus_fsm._store.sqlite", 8),
    ("kplus_fsm._store.postgres", 8),
    ("kplus_fsm._store.migrate", 9),
    ("kplus_fsm._store", 9),
    ("kplus_fsm._hints", 10),
    # the application service
    ("kplus_fsm._consumer", 10),
    ("kplus_fsm._flow", 10),
    ("kplus_fsm._tracker", 11),
    ("kplus_fsm._followup", 12),
    ("kplus_fsm._imports", 12),
    ("kplus_fsm", 13),
    ("kplus_fsm.testing", 14),
    # the edges: adapters use the public API only; the command line and the server last
    ("kplus_fsm.adapters*", 15),
    ("kplus_fsm._server*", 16),
    ("kplus_fsm.cli*", 17),
    ("kplus_fsm.__main__", 18),
)

#: The machine's modules: the standard library's pure parts and attrs only.
PURE = {"kplus_fsm._model", "kplus_fsm._machine", "kplus_fsm.exceptions"}
#: The standard library's pure parts the machine may use (``operator``: its getters).
STDLIB_OK = {
    "__future__",
    "collections",
    "enum",
    "re",
    "types",
    "typing",
    "datetime",
    "math",
    "operator",
}


def _module_name(path: Path) -> str:
    if path.is_relative_to(ROOT / "adapters"):
        parts = [
            "kplus_fsm",
            "adapters",
            *path.relative_to(ROOT / "adapters").with_suffix("").parts,
        ]
    else:
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _files() -> Iterator[Path]:
    for base in ("kplus_fsm", "adapters"):
        for path in sorted((ROOT / base).rglob("*.py")):
            if base == "kplus_fsm" and path.is_relative_to(ROOT / "kplus_fsm" / "adapters"):
                continue  # the symlink to adapters/
            yield path


MODULES = {_module_name(p): p for p in _files()}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(name: str) -> Iterator[tuple[str, bool]]:
    """(imported module, at module level) for every runtime import of ``name``."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))

    def walk(node: ast.AST, top: bool) -> Iterator[tuple[str, bool]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                yield from (x for n in child.orelse for x in walk(n, top))
                continue
            if isinstance(child, ast.Import):
                for alias in child.names:
                    yield alias.name, top
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")
                    base = base[: len(base) - (child.level - 1)]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                # "from . import _codec" imports the module _codec (running the package's
                # __init__ first is Python's doing, not an arrow of this module).
                subs = [f"{target}.{a.name}" for a in child.names]
                if all(sub in MODULES for sub in subs):
                    yield from ((sub, top) for sub in subs)
                else:
                    yield target, top
            inner = top and not isinstance(
                child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda
            )
            yield from walk(child, inner)

    yield from walk(tree, True)


def _internal(target: str) -> str | None:
    """The package module an import refers to (``None``: outside the package)."""
    while target:
        if target in MODULES:
            return target
        target = target.rpartition(".")[0]
    return None


def layer(name: str) -> int | None:
    for pattern, number in LAYERS:
        if fnmatch.fnmatchcase(name, pattern):
            return number
    return None


GRAPH = {
    name: sorted({(t, top) for raw, top in _imports(name) if (t := _internal(raw)) and t != name})
    for name in MODULES
}


def test_every_module_has_a_layer() -> None:
    assert [n for n in sorted(MODULES) if layer(n) is None] == []


@pytest.mark.parametrize("name", sorted(MODULES))
def test_arrows_point_inward(name: str) -> None:
    here = layer(name)
    assert here is not None
    outward = [t for t, _ in GRAPH[name] if (layer(t) or 0) > here]
    assert outward == [], f"{name} (layer {here}) imports outer modules {outward}"


def test_no_import_cycle() -> None:
    """The runtime graph (imports at module level) is acyclic."""
    edges = {n: {t for t, top in GRAPH[n] if top} for n in MODULES}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycle = [*stack[stack.index(nxt) :], nxt]
                pytest.fail(f"import cycle: {' -> '.join(cycle)}")
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)


def test_no_import_at_the_bottom() -> None:
    """No module needs ``noqa: E402`` (an import placed after code to dodge a cycle)."""
    offenders = [
        f"{_module_name(p)}:{i}"
        for p in MODULES.values()
        for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
        if "noqa: E402" in line
    ]
    assert offenders == []


def test_machine_is_pure() -> None:
    """The machine imports only the standard library's pure parts, attrs and itself."""
    for name in PURE:
        for raw, _top in _imports(name):
            target = _internal(raw)
            if target is not None:
                assert target in PURE, f"{name} imports {raw}"
                continue
            assert raw.split(".")[0] in STDLIB_OK | {"attrs"}, f"{name} imports {raw}"


def test_adapters_use_the_public_api() -> None:
    """The adapters import kplus_fsm's public names, never its private modules."""
    for name in MODULES:
        if not name.startswith("kplus_fsm.adapters"):
            continue
        for raw, _top in _imports(name):
            target = _internal(raw) or ""
            if target.startswith("kplus_fsm.adapters"):
                continue
            private = [p for p in target.split(".")[1:] if p.startswith("_")]
            assert not private, f"{name} imports {raw}"
