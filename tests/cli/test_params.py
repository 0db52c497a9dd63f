"""
The parameter types and shared options of ``kplus-fsm`` (kplus_fsm.cli._params):
each value out of its bounds is a usage error (exit 2) raised while parsing,
whose message names the bound and shows at most a few dozen characters of what
was given, never a URL's password. (Every option of every command with hostile
values: tests/test_hostile_properties.py.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from kplus_fsm.cli import _params


def parse(param: click.ParamType[Any, Any], value: str) -> tuple[int, Any, str]:
    """Exit code, converted value and stderr of a one-option command given ``value``."""
    seen: list[Any] = []

    @click.command()
    @click.option("--x", type=param)
    def command(x: Any) -> None:
        seen.append(x)

    res = CliRunner().invoke(command, ["--x", value])
    return res.exit_code, seen[0] if seen else None, res.stderr


def test_time_is_stored_form() -> None:
    assert parse(_params.TIME, "2026-03-01T17:00:00+07:00")[:2] == (
        0,
        "2026-03-01T10:00:00.000000Z",
    )
    code, _, err = parse(_params.TIME, "yesterday")
    assert code == 2
    assert "not a time" in err


@pytest.mark.parametrize(
    ("value", "code"), [("1", 0), ("10000000", 0), ("0", 2), ("1e3", 2), ("1.5", 2), ("-1", 2)]
)
def test_limit_bounds(value: str, code: int) -> None:
    assert parse(_params.LIMIT, value)[0] == code


def test_port_and_minutes() -> None:
    assert parse(_params.PORT, "0")[:2] == (0, 0)
    assert parse(_params.PORT, "65536")[0] == 2
    code, _, err = parse(_params.PENDING_MINUTES, "525601")
    assert code == 2
    assert "minutes" in err


def test_host() -> None:
    assert parse(_params.HOST, "[::1]")[:2] == (0, "::1")
    assert parse(_params.HOST, "receiver_1.internal")[:2] == (0, "receiver_1.internal")
    code, _, err = parse(_params.HOST, " ")
    assert code == 2
    assert "every interface" in err
    code, value, err = parse(_params.HOST, "0.0.0.0")
    assert (code, value) == (0, "0.0.0.0")
    assert "WARNING" in err


def test_id_and_its_echo_is_cut() -> None:
    assert parse(_params.ID, "chrg_test_5xyz")[:2] == (0, "chrg_test_5xyz")
    code, _, err = parse(_params.ID, "x" * 10_000)
    assert code == 2
    assert len(err) < 300
    assert parse(_params.ID, "a\tb")[0] == 2


def test_db_never_shows_a_password() -> None:
    url = "postgresql://kplus:s3cret-pw@db.internal/kplus"
    assert parse(_params.DB, url)[:2] == (0, url)
    code, _, err = parse(_params.DB, url + "\x00")
    assert code == 2
    assert "s3cret-pw" not in err
    assert "NUL" in err


def test_output_needs_its_directory(tmp_path: Path) -> None:
    assert parse(_params.OUTPUT, "-")[:2] == (0, Path("-"))
    assert parse(_params.OUTPUT, str(tmp_path / "a.jsonl"))[:2] == (0, tmp_path / "a.jsonl")
    code, _, err = parse(_params.OUTPUT, str(tmp_path / "nowhere" / "a.jsonl"))
    assert code == 2
    assert "does not exist" in err
    assert parse(_params.OUTPUT, str(tmp_path))[0] == 2  # a directory


def test_checkpoint_json_is_checked_while_parsing_a_file_only_later(tmp_path: Path) -> None:
    assert parse(_params.CHECKPOINT, "{not json")[0] == 2
    name = str(tmp_path / "cp.json")  # need not exist yet: read when the command runs
    assert parse(_params.CHECKPOINT, name)[:2] == (0, name)


def test_db_option_default_is_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []

    @click.command()
    @_params.db_option
    def command(db: str) -> None:
        seen.append(db)

    monkeypatch.delenv("KPLUS_FSM_DB", raising=False)
    CliRunner().invoke(command, [])
    monkeypatch.setenv("KPLUS_FSM_DB", "/var/lib/kplus/log.db")
    CliRunner().invoke(command, [])
    assert seen == [_params.DEFAULT_DB, "/var/lib/kplus/log.db"]
