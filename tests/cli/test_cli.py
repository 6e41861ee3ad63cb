"""The command line, end to end in a subprocess."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import run_cli


@pytest.mark.slow
def test_help_lists_the_commands() -> None:
    out = run_cli("--help")
    assert out.returncode == 0
    assert "demo" in out.stdout and "run" in out.stdout


@pytest.mark.slow
def test_demo_runs_the_bundled_cross_engine_workflow() -> None:
    out = run_cli("demo", "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["strategy"] == "pipeline" and result["ok"]
    docs, summary, headline = result["results"]
    assert [d["name"] for d in docs] == ["actors", "lua", "js"]  # the Python stage
    assert summary["winner"] == 2  # the Lua stage's race (1-based in Lua): Python beat JS
    assert headline == {  # the JS stage, which awaited a Lua task
        "headline": "PYTHON WON: actors (8 words), lua (11 words), js (8 words)",
        "docs": 3,
    }


@pytest.mark.slow
def test_run_missing_file_exits_2() -> None:
    out = run_cli("run", "does-not-exist.lua")
    assert out.returncode == 2
    assert "no such file" in out.stderr


@pytest.mark.slow
def test_run_unknown_suffix_exits_2(tmp_path: pytest.TempPathFactory) -> None:
    f = tmp_path / "x.txt"  # type: ignore[operator]
    f.write_text("hi")
    out = run_cli("run", str(f))
    assert out.returncode == 2


@pytest.mark.slow
def test_bad_arg_syntax_exits_2() -> None:
    out = run_cli("run", "x.lua", "--arg", "novalue")
    assert out.returncode == 2


WORKFLOW = """
name: cli
strategy: sequential
steps:
  - id: greet
    lang: lua
    code: return "hello " .. spell.args.who
    args: {who: world}
  - id: shout
    lang: js
    code: return spell.input.toUpperCase()
    deps: [greet]
"""


@pytest.mark.slow
def test_run_a_workflow_in_a_subprocess_json_and_exit_codes(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(WORKFLOW)
    out = run_cli("run", str(good))
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)  # not a terminal: nothing but JSON on stdout
    assert result["ok"] and result["results"] == ["hello world", "HELLO WORLD"]

    failing = tmp_path / "failing.json"
    failing.write_text(json.dumps({"steps": [{"id": "x", "lang": "js", "code": "throw 1"}]}))
    out = run_cli("run", str(failing), "--json")
    assert out.returncode == 1
    assert json.loads(out.stdout)["ok"] is False

    bad = tmp_path / "bad.yaml"
    bad.write_text("steps:\n  - id: x\n    lang: lua\n")
    out = run_cli("run", str(bad))
    assert out.returncode == 2
    assert "x" in out.stderr and "code" in out.stderr
