"""The public surface: sorted, complete, typed."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest

import kplus_fsm
from kplus_fsm import exceptions

#: The public names of each module as of round 2 (before the store and CLI
#: reshaping), committed: a name may be added, never removed or renamed.
SNAPSHOT = json.loads(
    (Path(__file__).parent / "fixtures" / "public_api.json").read_text(encoding="utf-8")
)


class TestPublicAPI:
    """What `import kplus_fsm` offers."""

    def test_all_is_sorted_and_resolves(self) -> None:
        """__all__ is sorted (upper-case constants first) and every name exists."""

        def isort_key(name: str) -> tuple[int, str]:
            kind = 0 if name.isupper() else 1 if name[0].isupper() else 2
            return kind, name

        assert kplus_fsm.__all__ == sorted(kplus_fsm.__all__, key=isort_key)
        for name in kplus_fsm.__all__:
            assert hasattr(kplus_fsm, name), name

    def test_every_public_class_is_exported(self) -> None:
        """No public class defined in a private module is left out of __all__."""
        for name, value in vars(kplus_fsm).items():
            if isinstance(value, type) and value.__module__.startswith("kplus_fsm._"):
                assert name in kplus_fsm.__all__, name

    def test_error_tree(self) -> None:
        """Every exception derives from KplusFSMError; input errors are ValueErrors."""
        for name in exceptions.__all__:
            cls = getattr(exceptions, name)
            assert issubclass(cls, exceptions.KplusFSMError)
        assert issubclass(exceptions.InvalidInputError, ValueError)
        assert issubclass(exceptions.PaymentNotFoundError, LookupError)

    def test_py_typed_ships(self) -> None:
        """The package carries the py.typed marker."""
        assert (Path(kplus_fsm.__file__).parent / "py.typed").exists()


@pytest.mark.parametrize("module", sorted(SNAPSHOT))
def test_no_public_name_is_lost(module: str) -> None:
    """Every name public before the reshaping is still there, and still resolves."""
    mod = importlib.import_module(module)
    public = set(getattr(mod, "__all__", ()))
    missing = [name for name in SNAPSHOT[module] if name not in public]
    assert missing == []
    for name in SNAPSHOT[module]:
        assert hasattr(mod, name), f"{module}.{name}"
