"""
The install lines of README.md and docs/quickstart.md work: kplus_fsm is not on
a public index, so a project installs it from a wheel built from the source, or
from its Git repository (``pip install 'kplus-fsm @ git+…'``; here a ``file://``
URL of this repository). Each into a fresh virtual environment, then the
command runs. Dependencies come from the configured package index.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from kplus_fsm import __version__

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        list(args), capture_output=True, text=True, timeout=600, check=False, cwd=cwd
    )
    assert done.returncode == 0, f"{args}: {done.stdout[-2000:]}{done.stderr[-2000:]}"
    return done


def fresh_venv(where: Path) -> Path:
    venv.EnvBuilder(with_pip=False).create(where)
    return where / "bin"


def pip_install(bin_dir: Path, *args: str) -> None:
    """``pip install`` into the fresh environment (with this environment's pip)."""
    python = str(bin_dir / "python")
    run(sys.executable, "-m", "pip", "--python", python, "install", "-q", *args)


#: Every adapters module, the fake Omise subpackage included, and the CLI.
IMPORT_ADAPTERS = (
    "import kplus_fsm.adapters.webhooks, kplus_fsm.adapters.fake, kplus_fsm.adapters.omise,"
    " kplus_fsm.cli; from kplus_fsm.adapters.fake import FakeOmise, run_server"
)


def test_the_documented_lines_are_the_ones_tested() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    quickstart = (ROOT / "docs" / "quickstart.md").read_text(encoding="utf-8")
    for text in (readme, quickstart):
        assert "pip wheel --no-deps -w dist ." in text
        assert "pip install dist/kplus_fsm-" in text
        assert "pip install 'kplus-fsm" in text
        assert "@ git+https://" in text


def test_from_a_wheel_then_from_a_git_url(tmp_path: Path) -> None:
    """Both forms into one fresh environment (the Git form replaces the wheel)."""
    run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "-q",
        "-w",
        "dist",
        str(ROOT),
        cwd=tmp_path,
    )
    (wheel,) = (tmp_path / "dist").glob("kplus_fsm-*-py3-none-any.whl")
    assert wheel.name == f"kplus_fsm-{__version__}-py3-none-any.whl"
    bin_dir = fresh_venv(tmp_path / "shop-venv")
    pip_install(bin_dir, str(wheel))
    assert run(str(bin_dir / "kplus-fsm"), "--version").stdout.strip().endswith(__version__)
    run(str(bin_dir / "python"), "-c", IMPORT_ADAPTERS)
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a Git checkout: the Git URL form cannot be tried")
    head = run("git", "-C", str(ROOT), "rev-parse", "HEAD").stdout.strip()
    url = f"kplus-fsm @ git+file://{ROOT}@{head}"
    pip_install(bin_dir, "--force-reinstall", "--no-deps", url)
    assert run(str(bin_dir / "kplus-fsm"), "--version").stdout.strip().endswith(__version__)
    python = str(bin_dir / "python")
    freeze = run(sys.executable, "-m", "pip", "--python", python, "freeze").stdout
    assert url in freeze


def test_an_editable_install(tmp_path: Path) -> None:
    """``pip install -e .`` exposes every adapters module from the source tree."""
    bin_dir = fresh_venv(tmp_path / "dev-venv")
    pip_install(bin_dir, "-e", str(ROOT))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run(str(bin_dir / "python"), "-c", IMPORT_ADAPTERS, cwd=elsewhere)
    where = run(
        str(bin_dir / "python"),
        "-c",
        "import kplus_fsm.adapters.fake as f; print(f.__file__)",
        cwd=elsewhere,
    ).stdout.strip()
    assert Path(where).resolve() == (ROOT / "adapters" / "fake" / "__init__.py").resolve()
