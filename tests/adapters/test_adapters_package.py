"""
The shape of ``adapters/`` (installed as ``kplus_fsm.adapters``): the public
names of its modules stay exactly what they were before the fake Omise became a
subpackage and the webhook wrappers a module of their own (issue 15), and no
module imports another that imports it back, directly or around a loop, not
even for type checking only.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ADAPTERS = Path(__file__).resolve().parents[2] / "adapters"

#: ``__all__`` of each public module, written out as it was before the reshape.
PUBLIC = {
    "kplus_fsm.adapters.fake": [
        "DEFAULT_API_VERSION",
        "DEFAULT_BANK_TIMEOUT",
        "DEFAULT_CHARGE_LIFETIME",
        "LIFETIME_MODEL_LIFETIME",
        "ExpiryModel",
        "FakeOmise",
        "FakeOmiseError",
        "FakeOmiseServer",
        "FakeOptions",
        "Fault",
        "FaultKind",
        "RetryPolicy",
        "WebhookDelivery",
        "run_server",
        "start_server",
    ],
    "kplus_fsm.adapters.webhooks": [
        "CHUNKED_REFUSED",
        "DEFAULT_PATH",
        "MAX_BODY",
        "STALE_VERIFICATION",
        "TIMEOUT_EXTENSION",
        "ASGIApp",
        "IntakeObserver",
        "IntakeResult",
        "WebhookIntake",
        "WebhookServer",
        "asgi_app",
        "intake_from_env",
        "serve",
        "wsgi_app",
    ],
}


def module_name(path: Path) -> str:
    """``adapters/fake/_routes.py`` -> ``kplus_fsm.adapters.fake._routes``."""
    parts = list(path.relative_to(ADAPTERS).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(["kplus_fsm", "adapters", *parts])


def imports_of(text: str, package: str) -> set[str]:
    """Every module (and ``module.name``) imported by source ``text`` of ``package``."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(text)):  # walk: TYPE_CHECKING blocks, functions too
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            found.add(source)
            found.update(f"{source}.{alias.name}" for alias in node.names)
    return found


def imported(path: Path) -> set[str]:
    """What the module at ``path`` imports."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    return imports_of(path.read_text(encoding="utf-8"), package)


def graph() -> dict[str, set[str]]:
    paths = sorted(ADAPTERS.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    return {module_name(p): (imported(p) & modules) - {module_name(p)} for p in paths}


def cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import loop of ``edges``, or None."""
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        state[node] = 2
        path.pop()
        return None

    for node in sorted(edges):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_public_names_unchanged(module: str) -> None:
    loaded = importlib.import_module(module)
    assert loaded.__all__ == PUBLIC[module]
    for name in PUBLIC[module]:
        assert getattr(loaded, name) is not None, name


def test_public_objects_name_their_public_module() -> None:
    """What moved into a private module is still documented and imported from the public one."""
    from kplus_fsm.adapters import fake, webhooks

    assert fake.FakeOmise.__module__ == "kplus_fsm.adapters.fake._account"
    assert webhooks.asgi_app.__module__ == "kplus_fsm.adapters._webhook_http"
    assert webhooks.asgi_app is importlib.import_module("kplus_fsm.adapters._webhook_http").asgi_app


def test_the_fake_is_a_package_of_private_modules() -> None:
    fake = ADAPTERS / "fake"
    assert (fake / "__init__.py").is_file()
    assert sorted(p.name for p in fake.glob("*.py") if p.name != "__init__.py") == [
        "_account.py",
        "_faults.py",
        "_objects.py",
        "_options.py",
        "_routes.py",
        "_search.py",
        "_server.py",
        "_state.py",
        "_webhooks.py",
    ]
    assert not list(ADAPTERS.glob("_fake_*.py"))
    assert not (ADAPTERS / "fake.py").exists()


def test_no_import_cycle() -> None:
    edges = graph()
    assert "kplus_fsm.adapters.fake._account" in edges["kplus_fsm.adapters.fake._server"]
    assert "kplus_fsm.adapters._webhook_http" in edges["kplus_fsm.adapters.webhooks"]
    assert cycle(edges) is None, " -> ".join(cycle(edges) or [])


def test_a_type_only_import_back_would_be_a_cycle() -> None:
    """The check above can fail: a loop through a TYPE_CHECKING import counts."""
    routes = "kplus_fsm.adapters.fake._routes"
    back = (
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ._account import FakeOmise\n"
    )
    edges = graph()
    edges[routes] |= imports_of(back, "kplus_fsm.adapters.fake") & set(edges)
    assert cycle(edges) == [
        "kplus_fsm.adapters.fake._account",
        routes,
        "kplus_fsm.adapters.fake._account",
    ]
