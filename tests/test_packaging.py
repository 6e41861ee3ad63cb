"""What a user gets from installing llmspell: the CLI under ``python -m``, and
types mypy can see (``py.typed`` shipped; an editable dev install mypy follows)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


def test_python_dash_m_llmspell_is_the_cli(tmp_path: Path) -> None:
    script = tmp_path / "double.lua"
    script.write_text("return spell.args.x * 2")
    out = subprocess.run(
        [sys.executable, "-m", "llmspell", "run", str(script), "--arg", "x=21"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == 42


def test_python_dash_m_llmspell_help_names_the_program() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "llmspell", "--help"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0
    assert out.stdout.startswith("usage: llmspell ")


def test_py_typed_is_shipped() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "py.typed" in project["tool"]["setuptools"]["package-data"]["llmspell"]
    assert (ROOT / "llmspell" / "py.typed").is_file()


def test_mypy_sees_the_installed_package_types(tmp_path: Path) -> None:
    """A user's file, outside the checkout, checked against the installed
    llmspell: a type error in how it uses the API is found (an install mypy
    cannot follow reports the import instead)."""
    mypy = Path(sys.executable).parent / "mypy"
    if not mypy.exists() and shutil.which("mypy") is None:
        pytest.skip("mypy is not installed (pip install llmspell[test])")
    user = tmp_path / "user.py"
    user.write_text(
        "from llmspell import Task\n\nwrong: str = Task.lua('return 1')\nok: Task = Task.lua('')\n"
    )
    out = subprocess.run(
        [str(mypy) if mypy.exists() else "mypy", "--strict", "--no-incremental", str(user)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "import-not-found" not in out.stdout, out.stdout
    assert 'expression has type "Task", variable has type "str"' in out.stdout, out.stdout
    assert out.stdout.count("error:") == 1, out.stdout


@pytest.mark.parametrize("name", ["prelude.lua", "prelude.js"])
def test_script_preludes_are_package_data(name: str) -> None:
    """The Lua and JavaScript sandboxes are files the wheel ships: listed as package
    data, and readable through importlib.resources from the installed package."""
    from importlib import resources

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert f"engines/{name}" in project["tool"]["setuptools"]["package-data"]["llmspell"]
    text = resources.files("llmspell.engines").joinpath(name).read_text(encoding="utf-8")
    assert "llmspell" in text.splitlines()[0]
