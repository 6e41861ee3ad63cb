"""Mistakes are loud, at once and near their cause: a setting only another mode
reads, a limit that could not be enforced, a Python target the sandbox refused
where a race hides the failure, a misspelt option or value."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from llmspell import Limits, MessageError, Runtime, Strategy, Task

CLI = Path(sys.executable).parent / "llmspell"  # the console script, as a user runs it


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CLI), *args], capture_output=True, text=True, timeout=120, cwd=cwd)


RACE = {
    "name": "racey",
    "strategy": "race",
    "steps": [
        {
            "id": "py",
            "lang": "lua",
            "code": "return spell.run({lang='python', target='os:getcwd'})",
        },
        {"id": "slow", "lang": "lua", "code": "spell.sleep(0.2) return 'slow'"},
    ],
}


def test_a_refused_python_target_is_logged_even_when_a_race_hides_the_failure(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="llmspell"), Runtime() as rt:
        r = rt.coordinate(
            [
                Task.lua("return spell.run({lang='python', target='os:getcwd'})"),
                Task.lua("spell.sleep(0.2) return 'slow'"),
            ],
            Strategy.RACE,
            timeout=30,
        )
    assert r.ok and r.results[r.winner] == "slow"  # the race hid the failure...
    said = [rec.getMessage() for rec in caplog.records if rec.levelno == logging.WARNING]
    assert any("may not run the Python target 'os:getcwd'" in m for m in said), said  # not this


@pytest.mark.slow
def test_the_cli_shows_the_refusal_and_names_allow_python(tmp_path: Path) -> None:
    wf = tmp_path / "race.json"
    wf.write_text(json.dumps(RACE))
    out = run_cli("run", str(wf), "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["results"] == [None, "slow"]
    assert "may not run the Python target 'os:getcwd'" in out.stderr
    assert "--allow-python" in out.stderr


@pytest.mark.slow
def test_running_the_bundled_demo_file_gives_the_demos_answer() -> None:
    from llmspell.examples import path

    def answer(out: subprocess.CompletedProcess[str]) -> dict[str, Any]:
        assert out.returncode == 0, out.stderr
        got: dict[str, Any] = json.loads(out.stdout)
        for key in ("duration", "resource_usage"):
            got.pop(key)
        return got

    demo = answer(run_cli("demo", "--json"))
    assert demo["results"][-1]["headline"].startswith("PYTHON WON")
    assert answer(run_cli("run", str(path("demo.yaml")), "--json")) == demo


@pytest.mark.slow
def test_run_imports_python_steps_from_the_current_directory(tmp_path: Path) -> None:
    (tmp_path / "mysteps.py").write_text("def hi(name):\n    return 'hi ' + name\n")
    (tmp_path / "wf.json").write_text(
        json.dumps(
            {
                "name": "t",
                "strategy": "sequential",
                "steps": [{"id": "a", "target": "mysteps:hi", "args": {"name": "bob"}}],
            }
        )
    )
    out = run_cli("run", "wf.json", "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["results"] == ["hi bob"]


@pytest.mark.parametrize(
    ("config", "where", "says"),
    [
        ({"address": "127.0.0.1:1921"}, "address", "needs mode='local'"),
        ({"workers": 2}, "workers", "processes per engine in mode='local'"),
    ],
)
def test_settings_only_local_mode_reads_are_refused_in_embedded_mode(
    config: dict[str, Any], where: str, says: str
) -> None:
    with pytest.raises(MessageError, match=says) as info:
        Runtime(**config)
    assert info.value.where == where


@pytest.mark.parametrize("make", [Task.python, lambda t, **kw: Task.agent(t, "hi", **kw)])
def test_a_memory_limit_on_python_work_is_refused_at_once(make: Any) -> None:
    with pytest.raises(MessageError, match="could not be enforced") as info:
        make("targets:add", limits=Limits(memory_bytes=10 << 20))
    assert info.value.where == "limits.memory_bytes"
    assert make("targets:add", limits=Limits(cpu_seconds=1.0))  # what can be enforced is kept


@pytest.mark.parametrize(
    ("mistake", "suggestion"),
    [
        (lambda: Runtime(stepbudget=2), "did you mean 'step_budget'?"),
        (lambda: Runtime(mode="locla"), "did you mean 'local'?"),
        (lambda: Runtime(engines={"lau": 1}), "did you mean 'lua'?"),
        (lambda: Task.lua("return 1", priorty="high"), "did you mean 'priority'?"),
        (lambda: Task.lua("return 1", priority="hihg"), "did you mean 'high'?"),
        (lambda: Limits(on_exceed="kil"), "did you mean 'kill'?"),
        (lambda: Task.agent("a", "x", execution="stream"), "did you mean 'streaming'?"),
    ],
)
def test_a_misspelt_option_or_value_suggests_the_closest_valid_one(
    mistake: Any, suggestion: str
) -> None:
    with pytest.raises(MessageError) as info:
        mistake()
    assert suggestion in str(info.value)


def test_a_word_nothing_resembles_gets_no_suggestion() -> None:
    with pytest.raises(MessageError) as info:
        Runtime(zzzz=1)
    assert "did you mean" not in str(info.value)


def test_a_memory_limit_on_a_python_tool_says_it_is_not_enforced(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="llmspell"), Runtime() as rt:
        rt.register_tool("add", "targets:add")
        task = Task.tool("add", {"x": 1, "y": 2}, limits=Limits(memory_bytes=10 << 20))
        assert rt.result(rt.submit(task), timeout=30) == 3
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("Limits(memory_bytes=...) is not enforced" in m for m in said), said
