"""
The layout of the command line (docs/design.md, "CLI layout"), read from the
source: no import cycle through kplus_fsm.cli or kplus_fsm._server, no import at
the bottom of a module, the server never imports the command line, and each
command defined without reference to the group.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "kplus_fsm"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
OURS = sorted(m for m in MODULES if m.startswith(("kplus_fsm.cli", "kplus_fsm._server")))


def _is_type_checking(node: ast.stmt) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def runtime_imports(body: list[ast.stmt]) -> Iterator[ast.Import | ast.ImportFrom]:
    """The imports a module runs when it is imported (not those of functions or type checks)."""
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If) and not _is_type_checking(node):
            yield from runtime_imports(node.body)
            yield from runtime_imports(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody):
                yield from runtime_imports(block)
            for handler in node.handlers:
                yield from runtime_imports(handler.body)


def _ancestors(name: str) -> set[str]:
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)}


def edges(name: str, source: str | None = None) -> set[str]:
    """The kplus_fsm modules whose code ``name`` (or ``source`` in its place) runs on import."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    if source is None:
        source = path.read_text(encoding="utf-8")
    running = _ancestors(name)  # already being imported when ``name`` runs
    found: set[str] = set()
    for node in runtime_imports(ast.parse(source).body):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
            found.update(t for target in targets for t in _ancestors(target) - running)
            continue
        if node.level:
            parts = package.split(".")
            target = ".".join([*parts[: len(parts) - node.level + 1], *filter(None, [node.module])])
        else:
            target = node.module or ""
        found.update(_ancestors(target) - running)
        for alias in node.names:
            submodule = f"{target}.{alias.name}"
            # A submodule is imported by itself; any other name must be defined
            # in ``target``, whose code must then have run, even if it is ours.
            found.add(submodule if submodule in MODULES else target)
    return {m for m in found if m in MODULES and m != name}


#: The import graph of the package, filled as the checks read it.
_GRAPH: dict[str, set[str]] = {}


def cycle_through(start: str, graph: dict[str, set[str]] | None = None) -> list[str] | None:
    """An import cycle that passes through ``start``, if there is one."""
    graph = graph if graph is not None else _GRAPH

    def after(node: str) -> set[str]:
        if node not in graph:
            graph[node] = edges(node)
        return graph[node]

    stack = [(start, [start])]
    seen: set[str] = set()
    while stack:
        node, path = stack.pop()
        for nxt in sorted(after(node)):
            if nxt == start:
                return [*path, start]
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, [*path, nxt]))
    return None


@pytest.mark.parametrize("name", OURS)
def test_no_import_cycle(name: str) -> None:
    assert cycle_through(name) is None


def test_the_cycle_check_can_fail() -> None:
    """A command module that took the group from the package would close a cycle."""
    assert "kplus_fsm.cli.incident" in edges("kplus_fsm.cli")
    assert "kplus_fsm.cli" not in edges("kplus_fsm.cli.incident")
    graph = {"kplus_fsm.cli.incident": edges("kplus_fsm.cli.incident", "from . import cli\n")}
    assert graph["kplus_fsm.cli.incident"] == {"kplus_fsm.cli"}
    assert cycle_through("kplus_fsm.cli", graph) == [
        "kplus_fsm.cli",
        "kplus_fsm.cli.incident",
        "kplus_fsm.cli",
    ]


@pytest.mark.parametrize("name", OURS)
def test_no_import_after_code(name: str) -> None:
    """Every module-level import comes before the module's code (none at the bottom)."""
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
    code_started = False
    for node in tree.body:
        is_import = isinstance(node, ast.Import | ast.ImportFrom) or _is_type_checking(node)
        is_docstring = isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
        if is_import:
            assert not code_started, f"{name}:{node.lineno} imports after code"
        elif not is_docstring:
            code_started = True


@pytest.mark.parametrize("name", [m for m in OURS if m.startswith("kplus_fsm._server")])
def test_the_server_never_imports_the_command_line(name: str) -> None:
    source = MODULES[name].read_text(encoding="utf-8")
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            target = ("." * node.level) + (node.module or "")
            assert "cli" not in target.split("."), f"{name} imports {target}"


@pytest.mark.parametrize("name", [m for m in OURS if m.startswith("kplus_fsm.cli.")])
def test_commands_do_not_refer_to_the_group(name: str) -> None:
    """Commands are made with click.command and added by kplus_fsm.cli, never @cli.command."""
    source = MODULES[name].read_text(encoding="utf-8")
    assert "@cli." not in source
    assert "from . import cli" not in source
