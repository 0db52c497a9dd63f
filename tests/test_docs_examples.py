"""
Every fenced code block of README.md and docs/**/*.md is run or checked, so the
examples cannot rot. The conventions (docs/contributing.md says the same):

- Each page runs in a child process, in a fresh temporary working directory,
  its blocks **in order**, sharing state as a reader would: ``python`` blocks
  share one namespace (a later block uses the names an earlier one defined) and
  run as a module named ``__docs__``, so lines under ``if __name__ ==
  "__main__":`` are shown but not run (use it for a server's
  ``serve_forever()``); ``sh``/``bash``/``shell`` blocks run with ``bash -euo
  pipefail`` in the same directory, with this virtualenv's ``bin`` first on
  ``PATH`` and none of ``KPLUS_FSM_DB``/``OMISE_*`` inherited from the
  environment; ``sql`` blocks run with ``sqlite3`` against ``./kplus.db``.
- ``<!-- docs-test setup: COMMAND -->`` anywhere in a page runs ``COMMAND``
  with bash before the page's first block (e.g. to make the ``kplus.db`` a page
  queries); the reader sees it in the page's source.
- Blocks that are read, not run: ``text`` (output; in a transcript, each line
  starting with ``$ `` is a command and every ``kplus-fsm`` call on it is parsed
  against the real CLI: the command, its options and their values must be
  valid), ``json`` (parsed), ``ini`` (parsed, e.g. a systemd unit; the
  ``kplus-fsm`` calls of its ``Exec*=`` lines parsed), ``yaml`` (parsed, e.g.
  a Prometheus rule file), ``crontab`` (five time fields and a command;
  ``kplus-fsm`` calls parsed), ``mermaid`` (a diagram;
  the state machine's is generated and checked by test_docs.py).
- A runnable block with a title (``python title="app.py"``) is a file: it is
  written to that relative path in the page's directory instead of being run,
  for later blocks to use.
- ``<!-- not-run: REASON -->`` on the line right before a fence exempts a
  runnable block (install commands, live Omise keys, long benchmarks, a server
  that never returns); its ``kplus-fsm`` calls are still parsed. The reason is
  required and the exemptions are capped (:data:`MAX_NOT_RUN`).
- ``<!-- synopsis -->`` before a fence marks a command synopsis (``[--limit
  N]``, ``A|B``): every option it names must exist on that ``kplus-fsm``
  command.
- A fence without a language, or with one not listed here, fails.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest
from docs_blocks import (
    CHECK,
    LANGUAGES,
    MARKER_LIKE,
    NOT_RUN,
    ROOT,
    RUN,
    SYNOPSIS,
    Block,
    blocks_of,
    doc_files,
    kplus_commands,
    logical_lines,
    setup_commands,
)

from kplus_fsm.cli import cli

#: At most this many blocks may be exempted from running, in all the docs (15 since
#: docs/scaling.md: its harness needs PostgreSQL, its model writes the plot).
MAX_NOT_RUN = 15
#: Seconds one page may take.
PAGE_TIMEOUT = 120.0
SHELLS = frozenset({"sh", "bash", "shell"})
RUNNER = Path(__file__).with_name("docs_blocks.py")


def all_blocks() -> list[Block]:
    return [block for path in doc_files() for block in blocks_of(path)]


def runnable(block: Block) -> bool:
    return block.lang in RUN and block.not_run is None and block.marker is None


def runnable_file(title: str) -> bool:
    """A title names a file in the page's directory."""
    path = Path(title)
    return not path.is_absolute() and ".." not in path.parts


def pages_to_run() -> list[Path]:
    return [
        path
        for path in doc_files()
        if setup_commands(path) or any(runnable(b) for b in blocks_of(path))
    ]


def clean_env() -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("OMISE_", "KPLUS_FSM_")) and key != "PYTHONPATH"
    }
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bindir, env.get("PATH", "")])
    env["COLUMNS"] = "200"
    env["NO_COLOR"] = "1"
    return env


@pytest.mark.parametrize("page", pages_to_run(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_page_runs(page: Path, tmp_path: Path) -> None:
    """The page's runnable blocks run, in order, in a fresh directory."""
    rel = page.relative_to(ROOT).as_posix()
    blocks = [b for b in blocks_of(page) if runnable(b)]
    work = tmp_path / "work"
    work.mkdir()
    env = clean_env()
    plan = {
        "page": rel,
        "cwd": str(work),
        "env": env,
        "timeout": PAGE_TIMEOUT,
        "setup": setup_commands(page),
        "blocks": [
            {"lang": b.lang, "code": b.code, "where": b.where, "title": b.title} for b in blocks
        ],
    }
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps(plan), encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, str(RUNNER), str(plan_file)],
        env=env,
        cwd=work,
        capture_output=True,
        text=True,
        timeout=PAGE_TIMEOUT,
        check=False,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{rel}: a block failed\n{output[-6000:]}"
    assert output.rstrip().endswith("OK"), output[-6000:]


class TestConventions:
    """Every block is in a known language and every marker is well-formed."""

    def test_known_languages(self) -> None:
        """A fence without a language, or in an unknown one, fails."""
        bad = [
            f"{b.where} ({b.lang or 'no language'})"
            for b in all_blocks()
            if b.lang not in LANGUAGES
        ]
        assert not bad, f"fences need one of {sorted(LANGUAGES)}: {bad}"

    def test_markers_are_well_formed(self) -> None:
        """Each marker comment sits right before a fence and is spelt right."""
        problems: list[str] = []
        for path in doc_files():
            rel = path.relative_to(ROOT).as_posix()
            lines = path.read_text(encoding="utf-8").splitlines()
            for n, line in enumerate(lines):
                text = line.strip()
                indented_code = len(line) - len(line.lstrip()) >= 4
                if indented_code or not MARKER_LIKE.match(text):
                    continue
                if text.startswith("<!-- docs-test setup:"):
                    continue
                nxt = lines[n + 1].strip() if n + 1 < len(lines) else ""
                if not nxt.startswith(("```", "~~~")):
                    problems.append(f"{rel}:{n + 1}: a marker must be right before a fence")
                if not (NOT_RUN.match(text) or SYNOPSIS.match(text)):
                    problems.append(f"{rel}:{n + 1}: unknown marker {text!r}")
        for block in all_blocks():
            if block.not_run is not None and len(block.not_run) < 10:
                problems.append(f"{block.where}: not-run needs a reason, got {block.not_run!r}")
            if block.marker and block.lang in CHECK:
                problems.append(f"{block.where}: {block.lang} blocks are never run; no marker")
            if block.marker and SYNOPSIS.match(block.marker) and block.lang not in SHELLS:
                problems.append(f"{block.where}: a synopsis is a sh block")
            if block.lang in RUN and block.title and not runnable_file(block.title):
                problems.append(f"{block.where}: title {block.title!r} must be a relative path")
        assert not problems, "\n".join(problems)

    def test_exemptions_stay_few(self) -> None:
        """Blocks that are not run are few, and each says why."""
        exempt = [f"{b.where}: {b.not_run}" for b in all_blocks() if b.not_run is not None]
        assert len(exempt) <= MAX_NOT_RUN, "too many not-run blocks:\n" + "\n".join(exempt)


# ----------------------------------------------------------- checked, not run


def parse_cli(args: list[str]) -> None:
    """Parse a ``kplus-fsm`` call with the real CLI, without running it."""
    rest = list(args)
    while rest and rest[0].startswith("-"):
        option = rest.pop(0)
        if option in ("-h", "--help", "--version"):
            return
        assert re.fullmatch(r"-v+|--verbose", option), f"unknown global option {option}"
    assert rest, "no command"
    name, *params = rest
    command = cli.commands.get(name)
    assert command is not None, f"no command {name!r}"
    if "-h" in params or "--help" in params:
        return
    with command.make_context(f"kplus-fsm {name}", params):
        pass


def synopsis_options(line: str) -> tuple[str, set[str]]:
    """The command of a synopsis line and the options it names."""
    calls = kplus_commands(re.sub(r"[\[\]|]", " ", line))
    assert calls, f"no kplus-fsm command in synopsis {line!r}"
    assert calls[0], f"no command after kplus-fsm in {line!r}"
    name = calls[0][0]
    options = set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", line.split("kplus-fsm", 1)[1]))
    return name, options


def checked_commands() -> list[tuple[str, list[str]]]:
    """Every kplus-fsm call that is parsed rather than run."""
    calls: list[tuple[str, list[str]]] = []
    for block in all_blocks():
        lines: list[str] = []
        if block.lang == "text":
            lines = [ln[2:] for ln in logical_lines(block.code) if ln.startswith("$ ")]
        elif block.lang == "crontab":
            lines = [
                " ".join(ln.split()[5:])
                for ln in block.code.splitlines()
                if ln.strip() and not ln.lstrip().startswith("#") and "=" not in ln.split()[0]
            ]
        elif block.lang == "ini":
            lines = [ln.split("=", 1)[1] for ln in block.code.splitlines() if ln.startswith("Exec")]
        elif block.lang in SHELLS and block.not_run is not None:
            lines = list(logical_lines(block.code))
        for line in lines:
            calls.extend((block.where, args) for args in kplus_commands(line))
    return calls


class TestReadNotRun:
    """Blocks that are not run are still checked against the code."""

    def test_commands_parse(self) -> None:
        """Transcripts, not-run blocks and crontabs call the CLI as it is."""
        problems: list[str] = []
        calls = checked_commands()
        assert calls
        for where, args in calls:
            try:
                parse_cli(args)
            except (AssertionError, click.ClickException) as exc:
                problems.append(f"{where}: kplus-fsm {' '.join(args)}: {exc}")
        assert not problems, "\n".join(problems)

    def test_synopses_name_real_options(self) -> None:
        """Every option a synopsis names exists on its command."""
        problems: list[str] = []
        seen = 0
        for block in all_blocks():
            if not (block.marker and SYNOPSIS.match(block.marker)):
                continue
            for line in logical_lines(block.code):
                if "kplus-fsm" not in line:
                    continue
                seen += 1
                name, options = synopsis_options(line)
                command = cli.commands.get(name)
                if command is None:
                    problems.append(f"{block.where}: no command {name!r}")
                    continue
                known = {o for p in command.params for o in (*p.opts, *p.secondary_opts)}
                known |= {"-h", "--help"}
                problems += [
                    f"{block.where}: kplus-fsm {name} has no option {o}" for o in options - known
                ]
        assert seen
        assert not problems, "\n".join(problems)

    def test_static_blocks(self) -> None:
        """json, ini and yaml parse, crontab lines have five fields and a command."""
        import configparser

        import yaml

        problems: list[str] = []
        for block in all_blocks():
            try:
                if block.lang == "json":
                    json.loads(block.code)
                elif block.lang == "yaml":
                    assert yaml.safe_load(block.code) is not None, "an empty yaml block"
                elif block.lang == "ini":
                    configparser.ConfigParser(strict=True, interpolation=None).read_string(
                        block.code
                    )
                elif block.lang == "crontab":
                    for line in block.code.splitlines():
                        words = line.split()
                        if not words or words[0].startswith("#") or "=" in words[0]:
                            continue
                        assert len(words) > 5, f"not a crontab line: {line!r}"
                        for field in words[:5]:
                            assert re.fullmatch(r"[\d*/,-]+", field), f"bad field {field!r}"
            except (ValueError, AssertionError, configparser.Error, yaml.YAMLError) as exc:
                problems.append(f"{block.where}: {exc}")
        assert not problems, "\n".join(problems)
