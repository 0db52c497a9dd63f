"""
A griffe extension for the API reference: the docstrings use a few reST
habits (``:class:`Result``` roles, ``::`` before a literal block, simple tables
drawn with ``=``) that Markdown would print literally. Rewrite them, at build
time only, into Markdown: a role becomes inline code, ``::`` a colon, a table a
``text`` block. The source docstrings are unchanged.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:class|meth|func|mod|attr|data|exc|obj|const):`(~?)([^`]+)`")
_BORDER = re.compile(r"^\s*=+(?:\s+=+)+\s*$")


def _role(match: re.Match[str]) -> str:
    name = match[2]
    return f"`{name.rsplit('.', 1)[-1] if match[1] else name}`"


def rewrite(text: str) -> str:
    """The docstring ``text`` with its reST habits turned into Markdown."""
    text = _ROLE.sub(_role, text)
    lines = text.splitlines()
    out: list[str] = []
    in_table = False
    for n, line in enumerate(lines):
        if _BORDER.match(line):
            nxt = lines[n + 1] if n + 1 < len(lines) else ""
            if not in_table:
                out += ["```text", line]
                in_table = True
                continue
            if not nxt.strip():
                out += [line, "```"]
                in_table = False
                continue
        if not in_table and line.rstrip().endswith("::"):
            stripped = line.rstrip()[:-1]
            out.append(stripped if stripped.strip(": ") else "")
            continue
        out.append(line)
    return "\n".join(out)


class RestToMarkdown(griffe.Extension):
    """Rewrite every docstring as it is loaded."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = rewrite(obj.docstring.value)
