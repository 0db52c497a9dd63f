"""Shared test setup: make tests/ importable and provide generic fixtures."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from kplus_fsm.testing import FakeClock

sys.path.insert(0, str(Path(__file__).parent))
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


from pg import pg_server, pg_url  # noqa: E402, F401  (PostgreSQL fixtures: tests/pg.py)
