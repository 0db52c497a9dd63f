"""
Loading a host's handler from a ``module:attribute`` reference, as the CLI's
``--consumer`` and ``--handler`` options take it (``myshop.fulfil:ship``).
"""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Callable
from typing import Any, Final

_REFERENCE: Final = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")


class HandlerImportError(ValueError):
    """A handler reference that cannot be loaded; the message says why."""


def load_handler(reference: str) -> Callable[..., Any]:
    """
    The callable at ``module.path:attribute.path``; the current directory is
    searched first, as ``python -m`` does.

    Raises:
        HandlerImportError: a malformed reference, a module that cannot be
            imported (its error's type and message are given), a missing
            attribute, or something that is not callable.
    """
    if not isinstance(reference, str) or not _REFERENCE.fullmatch(reference):
        raise HandlerImportError(
            f"{reference!r} is not a handler reference: use module.path:function "
            "(e.g. myshop.fulfil:ship)"
        )
    module_name, _, attribute = reference.partition(":")
    if "" not in sys.path:
        sys.path.insert(0, "")
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as exc:  # the host's module: any import error is a clear refusal
        raise HandlerImportError(
            f"cannot import {module_name!r} for {reference!r}: {type(exc).__name__}: {exc}"
        ) from None
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise HandlerImportError(f"{reference!r}: {module_name} has no {attribute}") from None
    if not callable(target):
        raise HandlerImportError(f"{reference!r} is not callable")
    return target  # type: ignore[no-any-return]


__all__ = ["HandlerImportError", "load_handler"]
