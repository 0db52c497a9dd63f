"""The docs cannot drift from the code."""

from __future__ import annotations

import re
from pathlib import Path

from kplus_fsm.cli import cli, diagram

ROOT = Path(__file__).resolve().parent.parent


class TestStateMachineDoc:
    """docs/state-machine.md is generated from the transition table."""

    def test_is_current(self) -> None:
        """Fails when the table changed and the doc was not regenerated."""
        text = (ROOT / "docs" / "state-machine.md").read_text(encoding="utf-8")
        assert text == diagram.render(), (
            "docs/state-machine.md is stale: "
            "run python -m kplus_fsm.cli.diagram docs/state-machine.md"
        )

    def test_every_cell_is_listed(self) -> None:
        """The rendered doc has a line for every cell of the table."""
        from kplus_fsm import TRANSITIONS

        cells = [line for line in diagram.render().splitlines() if line.startswith("- `")]
        assert len(cells) == len(TRANSITIONS)


class TestCommandsDocumented:
    """Every CLI command appears in docs/cli.md with a heading of its own."""

    def test_every_command(self) -> None:
        """A command missing from docs/cli.md fails this test."""
        text = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
        headings = set(re.findall(r"^## `kplus-fsm ([a-z-]+)", text, flags=re.MULTILINE))
        assert set(cli.commands) <= headings, sorted(set(cli.commands) - headings)


class TestReadme:
    """README.md opens with the two set-up commands that .ci/run relies on."""

    def test_two_commands(self) -> None:
        """The demo command and the test command, in that order, near the top."""
        top = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()[:25]
        commands = [line for line in top if line.startswith("python3 -m venv .venv && ")]
        assert len(commands) == 2
        assert commands[0].endswith("kplus-fsm demo")
        assert "pytest" in commands[1]
        ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
        assert "README.md" in ci
