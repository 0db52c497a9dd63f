"""Imports point inward only (STYLE.md): the core never imports its edges."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: Modules of the pure machine: standard library and attrs only.
PURE = {"_model", "_machine", "exceptions"}
#: Modules that must not import the CLI, the demo, testing or adapters.
CORE = {"_model", "_machine", "exceptions", "_codec", "_schema", "_store", "_ports", "_tracker"}
OUTER = {"cli", "testing", "adapters", "_server"}
STDLIB_OK = {
    "__future__",
    "collections",
    "enum",
    "re",
    "types",
    "typing",
    "datetime",
    "math",
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                names.add("." + (node.module or ""))
            elif node.module:
                names.add(node.module)
    return names


class TestLayering:
    """The dependency rule between rings."""

    def test_core_never_imports_outer_rings(self) -> None:
        """No core module imports cli, testing, the demo or adapters."""
        for name in CORE:
            for imp in _imports(ROOT / "kplus_fsm" / f"{name}.py"):
                target = imp.lstrip(".").split(".")[0]
                assert target not in OUTER, f"{name} imports {imp}"
                assert not imp.startswith("kplus_fsm.adapters"), f"{name} imports {imp}"

    def test_machine_is_pure(self) -> None:
        """The machine imports only the standard library's pure parts, attrs and itself."""
        for name in PURE:
            for imp in _imports(ROOT / "kplus_fsm" / f"{name}.py"):
                if imp.startswith("."):
                    assert imp.lstrip(".") in PURE, f"{name} imports {imp}"
                    continue
                assert imp.split(".")[0] in STDLIB_OK | {"attrs"}, f"{name} imports {imp}"

    def test_adapters_use_the_public_api(self) -> None:
        """adapters/ imports kplus_fsm names, never its private modules."""
        for path in (ROOT / "adapters").rglob("*.py"):
            for imp in _imports(path):
                assert not imp.startswith("kplus_fsm._"), f"{path.name} imports {imp}"
