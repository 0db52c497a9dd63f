"""
The fenced code blocks of README.md and docs/**/*.md: how they are found, and
how one page's blocks are run (``python tests/docs_blocks.py PLAN.json``, a child
process started by ``tests/test_docs_examples.py``). The conventions are written
at the top of that test file and in docs/contributing.md.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import sqlite3
import subprocess
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs

ROOT = Path(__file__).resolve().parent.parent

#: Languages whose blocks are run.
RUN = frozenset({"python", "sh", "bash", "shell", "sql"})
#: Languages whose blocks are read and checked, never run.
CHECK = frozenset({"text", "json", "ini", "crontab", "mermaid", "yaml"})
LANGUAGES = RUN | CHECK

#: A not-run marker: ``<!-- not-run: reason -->`` on the line before the fence.
NOT_RUN = re.compile(r"^<!--\s*not-run:\s*(?P<reason>.*?)\s*-->$")
#: A synopsis marker: ``<!-- synopsis -->`` on the line before the fence.
SYNOPSIS = re.compile(r"^<!--\s*synopsis\s*-->$")
#: A page's set-up command, run with bash before its first block.
SETUP = re.compile(r"^<!--\s*docs-test setup:\s*(?P<command>.*?)\s*-->$", re.MULTILINE)
#: Any comment that looks like one of ours, to catch misspelt markers.
MARKER_LIKE = re.compile(r"^<!--\s*(not[- ]?run|synopsis|docs-test)", re.IGNORECASE)

_OPEN = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`\n]*)$")

#: Blocks that cannot carry a marker comment, with the reason they are not run.
#: README.md's top is fixed (tests/test_docs.py); .ci/run runs both commands itself.
EXEMPT_IN_TEST: dict[tuple[str, str], str] = {
    ("README.md", "python3 -m venv .venv && .venv/bin/pip install . && .venv/bin/kplus-fsm demo"): (
        "the two set-up commands create .venv and install from the index; .ci/run runs both"
    ),
}


@attrs.frozen
class Block:
    """One fenced code block."""

    path: str  # relative to the repository root
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    marker: str | None = None  # the comment on the line before the fence
    not_run: str | None = None  # the reason, when the block is exempted
    title: str | None = None  # ``title="name"`` in the fence: the block is that file

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"


def doc_files(root: Path = ROOT) -> list[Path]:
    """README.md and every Markdown page under docs/, in a stable order."""
    return [root / "README.md", *sorted((root / "docs").rglob("*.md"))]


def blocks_of(path: Path, root: Path = ROOT) -> list[Block]:
    """Every fenced block of one Markdown file, in order."""
    rel = path.relative_to(root).as_posix()
    lines = path.read_text(encoding="utf-8").splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        match = _OPEN.match(lines[i])
        if match is None:
            i += 1
            continue
        indent, fence = match["indent"], match["fence"]
        info = match["info"].strip()
        lang = info.split(" ")[0].strip("{}.") if info else ""
        title = m[1] if (m := re.search(r'title="([^"]+)"', info)) else None
        body: list[str] = []
        j = i + 1
        while j < len(lines):
            stripped = lines[j].strip()
            if stripped.startswith(fence[0] * len(fence)) and set(stripped) == {fence[0]}:
                break
            text = lines[j]
            body.append(text[len(indent) :] if text.startswith(indent) else text.lstrip())
            j += 1
        before = lines[i - 1].strip() if i > 0 else ""
        marker = before if before.startswith("<!--") else None
        not_run = None
        if marker is not None and (found := NOT_RUN.match(marker)):
            not_run = found["reason"]
        code = "\n".join(body) + "\n"
        first = body[0] if body else ""
        exempt = EXEMPT_IN_TEST.get((rel, first))
        if exempt is not None:
            not_run = exempt
        out.append(Block(rel, i + 1, lang, code, marker, not_run, title))
        i = j + 1
    return out


def setup_commands(path: Path) -> list[str]:
    """The ``<!-- docs-test setup: ... -->`` commands of a page."""
    return [m["command"] for m in SETUP.finditer(path.read_text(encoding="utf-8"))]


# --------------------------------------------------------------- shell commands


def logical_lines(code: str) -> Iterator[str]:
    """Shell lines with backslash continuations joined and comments kept."""
    pending = ""
    for raw in code.splitlines():
        line = raw.rstrip()
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        yield pending + line
        pending = ""
    if pending:
        yield pending


def kplus_commands(line: str) -> list[list[str]]:
    """The argument lists of every ``kplus-fsm`` call in one shell line."""
    line = re.sub(r"(?<=\s)\d+(?=[<>])", "", line)  # 2>&1, 2>/dev/null
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        words = list(lexer)
    except ValueError:
        return []
    calls: list[list[str]] = []
    current: list[str] | None = None
    for word in words:
        if word and set(word) <= set("();<>|&"):
            current = None
        elif current is not None:
            current.append(word)
        elif word == "kplus-fsm" or word.endswith("/kplus-fsm"):
            current = []
            calls.append(current)
    return calls


# --------------------------------------------------------------------- runner


class BlockFailed(Exception):
    """A block of the page did not run cleanly."""


def _run_shell(code: str, cwd: Path, env: dict[str, str], timeout: float) -> None:
    proc = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", code],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    sys.stdout.write(proc.stdout)
    sys.stdout.write(proc.stderr)
    if proc.returncode != 0:
        raise BlockFailed(f"exit status {proc.returncode}")


def run_plan(plan: dict[str, Any]) -> int:
    """Run one page's blocks in order in ``plan["cwd"]``; 0 when all passed."""
    cwd = Path(plan["cwd"])
    env: dict[str, str] = plan["env"]
    os.chdir(cwd)
    sys.path[0] = str(cwd)  # as for `python -c` or a REPL: the page's files import
    namespace: dict[str, Any] = {"__name__": "__docs__", "__builtins__": __builtins__}
    setup = [
        {"lang": "sh", "code": command, "where": f"{plan['page']} (set-up)"}
        for command in plan["setup"]
    ]
    steps: list[dict[str, Any]] = [*setup, *plan["blocks"]]
    for block in steps:
        lang, code, where = block["lang"], block["code"], block["where"]
        print(f"--- {where} ({lang})", flush=True)
        try:
            if block.get("title"):
                target = cwd / block["title"]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(code, encoding="utf-8")
            elif lang == "python":
                exec(compile(code, where, "exec"), namespace)
                sys.stdout.flush()
            elif lang in ("sh", "bash", "shell"):
                _run_shell(code, cwd, env, plan["timeout"])
            elif lang == "sql":
                with contextlib.closing(sqlite3.connect(cwd / "kplus.db")) as conn:
                    for row in conn.execute(code):
                        print(row)
            else:
                raise BlockFailed(f"{lang} blocks are not run")
        except BaseException as exc:
            traceback.print_exc(file=sys.stdout)
            print(f"FAILED {where} ({lang}): {type(exc).__name__}: {exc}", flush=True)
            return 1
    print("OK", flush=True)
    return 0


def main(argv: list[str]) -> int:
    plan = json.loads(Path(argv[1]).read_text(encoding="utf-8"))
    status = run_plan(plan)
    sys.stdout.flush()
    sys.stderr.flush()
    # Servers or workers a page left running must not keep the process alive.
    os._exit(status)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
