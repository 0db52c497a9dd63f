"""The README's Python example runs as written."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


class TestReadmeExample:
    """Every ```python block of README.md is executed."""

    def test_blocks_run(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """The twenty-line example creates, pays and ships a payment."""
        text = (ROOT / "README.md").read_text(encoding="utf-8")
        blocks = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
        assert blocks, "README.md has no python example"
        monkeypatch.chdir(tmp_path)
        out = io.StringIO()
        namespace: dict[str, object] = {}
        with contextlib.redirect_stdout(out):
            for block in blocks:
                exec(compile(block, "README.md", "exec"), namespace)
        for value in namespace.values():
            close = getattr(value, "close", None)
            if callable(close) and type(value).__module__.startswith("kplus_fsm"):
                close()
        lines = out.getvalue().splitlines()
        assert any(
            re.fullmatch(r"pending https?://\S+/test/authorize/chrg_test_\w+", x) for x in lines
        )
        assert "successful" in lines
        assert "['order-1042']" in lines
        assert (tmp_path / "shop.db").exists()
