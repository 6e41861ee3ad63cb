"""The command line, end to end in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llmspell.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_help_lists_the_commands() -> None:
    out = run_cli("--help")
    assert out.returncode == 0
    assert "demo" in out.stdout and "run" in out.stdout


def test_demo_prints_its_result_as_json() -> None:
    out = run_cli("demo", "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert [d["name"] for d in result["documents"]] == ["actors", "lua", "js"]
    assert result["slow_task"] == "timed_out"
    # a Lua task awaited a JS task that awaited a Python task (fetch "js": 8 words)
    assert result["cross_engine"] == {
        "engine": "lua",
        "awaited": {"engine": "js", "awaited": {"engine": "python", "words": 8}},
    }
    assert result["tasks"]["succeeded"] == 7


def test_run_missing_file_exits_2() -> None:
    out = run_cli("run", "does-not-exist.lua")
    assert out.returncode == 2
    assert "no such file" in out.stderr


def test_run_unknown_suffix_exits_2(tmp_path: pytest.TempPathFactory) -> None:
    f = tmp_path / "x.txt"  # type: ignore[operator]
    f.write_text("hi")
    out = run_cli("run", str(f))
    assert out.returncode == 2


def test_bad_arg_syntax_exits_2() -> None:
    out = run_cli("run", "x.lua", "--arg", "novalue")
    assert out.returncode == 2
