"""
How a command ends and prints (kplus_fsm.cli._output): the exit codes defined
once, ``fail``, and the helpers of the tables for people.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from kplus_fsm import cli as cli_package
from kplus_fsm.cli import _output

CLI = Path(cli_package.__file__).parent


def test_exit_codes_are_the_contract() -> None:
    """The numbers scripts rely on (docs/cli.md), re-exported by kplus_fsm.cli as they are."""
    assert (
        _output.EXIT_OK,
        _output.EXIT_PROBLEM,
        _output.EXIT_USAGE,
        _output.EXIT_NOT_FOUND,
        _output.EXIT_STORE,
        _output.EXIT_DEFERRED,
        _output.EXIT_PAID,
    ) == (0, 1, 2, 3, 4, 5, 6)
    assert sorted(_output.EXIT_CODES) == [0, 1, 2, 3, 4, 5, 6]
    for name in ("EXIT_OK", "EXIT_USAGE", "EXIT_STORE", "EXIT_CODES"):
        assert getattr(cli_package, name) is getattr(_output, name), name


def _int_literal(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and type(node.value) is int


def test_every_exit_code_is_named() -> None:
    """
    No module of the CLI defines an exit code of its own, nor exits or fails with
    a bare number: each code is named once, in _output.
    """
    found = []
    for path in sorted(CLI.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign | ast.AnnAssign) and path.name != "_output.py":
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    if isinstance(target, ast.Name) and target.id.startswith("EXIT_"):
                        found.append(f"{path.name}:{node.lineno}: defines {target.id}")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute | ast.Name):
                name = node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id
                args = node.args
                if name == "exit" and args and _int_literal(args[0]):
                    found.append(f"{path.name}:{node.lineno}: exit({ast.unparse(args[0])})")
                if name == "fail" and len(args) > 1 and _int_literal(args[1]):
                    found.append(f"{path.name}:{node.lineno}: fail(..., {ast.unparse(args[1])})")
    assert found == []


def test_fail_prints_on_stderr_and_exits_with_the_code() -> None:
    @click.command()
    def boom() -> None:
        _output.fail("no such payment 'x'", _output.EXIT_NOT_FOUND)

    res = CliRunner().invoke(boom)
    assert res.exit_code == 3
    assert res.stdout == ""
    assert res.stderr == "kplus-fsm: no such payment 'x'\n"


def test_echo_json_is_indented_and_keeps_thai() -> None:
    @click.command()
    def out() -> None:
        _output.echo_json({"reason": "ยอดเงินไม่พอ", "at": Path("/x")})

    res = CliRunner().invoke(out)
    assert json.loads(res.stdout) == {"reason": "ยอดเงินไม่พอ", "at": "/x"}
    assert "ยอดเงินไม่พอ" in res.stdout  # not \\u escaped
    assert res.stdout.startswith('{\n  "reason"')


def test_table_aligns_and_right_aligns() -> None:
    lines = _output.table(
        ("ID", "AMOUNT", "NOTE"), [["a", "1.00", "x"], ["bbb", "350.00", ""]], right=(1,)
    )
    assert lines == [
        "ID   AMOUNT  NOTE",
        "a      1.00  x",
        "bbb  350.00",
    ]


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (None, "-"),
        (4.25, "4.2 s"),
        (185, "3m 05s"),
        (7_800, "2h 10m"),
        (3 * 86_400 + 4 * 3_600, "3d 04h"),
    ],
)
def test_duration(seconds: float | None, shown: str) -> None:
    assert _output.duration(seconds) == shown


def test_small_formats() -> None:
    assert _output.short_time("2026-03-01T10:00:05.123456Z") == "2026-03-01T10:00:05Z"
    assert _output.short_time(None) == "-"
    assert _output.baht(3_500_000) == "35,000.00"
    assert _output.plural(1, "payment") == "1 payment"
    assert _output.plural(2, "payment") == "2 payments"
    assert _output.pct(0.1234) == "12.3%"
    assert _output.pct(None) == "-"
