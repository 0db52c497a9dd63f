"""
Shared test setup and generic fixtures. ``tests/`` itself is importable
(``pythonpath`` in pyproject.toml), so helpers such as ``store_contract`` and
``pg`` are plain imports.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from pg import pg_server, pg_url  # noqa: F401  (PostgreSQL fixtures: tests/pg.py)

from kplus_fsm.testing import FakeClock

pytest.register_assert_rewrite("store_contract")


@pytest.fixture
def clock() -> FakeClock:
    """A fake clock starting at 2026-01-01T00:00:00Z."""
    return FakeClock()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """A path for a fresh event log file (not created yet)."""
    return tmp_path / "kplus.db"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the figures reported by the reliability suite (``tests/reliability``)."""
    support = sys.modules.get("reliability_support")
    figures = getattr(support, "FIGURES", None)
    if not figures:
        return
    terminalreporter.section("reliability figures")
    for test, name, value in figures:
        terminalreporter.write_line(f"{test}: {name} = {value}")
