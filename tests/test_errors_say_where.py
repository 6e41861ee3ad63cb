"""Errors say where: the file or workflow step a script came from, the value a
script threw when it was data, the limit that stopped a script."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import SCRIPT_PYTHON
from helpers import run_cli

from llmspell import Limits, ResourceLimitExceeded, Runtime, ScriptError, Task, TaskFailed

WAIT = 30


@pytest.mark.slow
def test_a_lua_file_s_error_names_the_file_and_line(tmp_path: Path) -> None:
    f = tmp_path / "add.lua"
    f.write_text("local a = 1\nlocal b = 2\nerror('boom')\n")
    out = run_cli("run", str(f))
    assert out.returncode == 1
    assert json.loads(out.stdout)["error"].startswith("add.lua:3: boom")


@pytest.mark.slow
def test_a_js_file_s_error_names_the_file_the_throw_site_and_inner_frames(tmp_path: Path) -> None:
    f = tmp_path / "add.js"
    f.write_text("function boom() {\n  throw new Error('bad');\n}\nreturn boom();\n")
    out = run_cli("run", str(f))
    assert out.returncode == 1
    assert json.loads(out.stdout)["error"] == "Error: bad (add.js:2)"
    assert "at boom (add.js:2)" in out.stderr and "at <task> (add.js:4)" in out.stderr


FLOW = """\
name: flow
strategy: sequential
steps:
  - id: load
    lang: lua
    code: return 1
  - id: transform
    lang: lua
    code: |
      local x = tostring(spell.input)
      error("cannot transform " .. x)
  - id: publish
    lang: js
    code: |
      const v = null;
      return v.x;
"""


def test_a_workflow_step_s_error_names_the_step_and_where_it_is_written(
    tmp_path: Path,
) -> None:
    f = tmp_path / "flow.yaml"
    f.write_text(FLOW)
    with Runtime() as rt:
        r = rt.run_workflow(f)
    assert r.failed_steps["transform"].startswith(
        "step 'transform' (flow.yaml:7):2: cannot transform nil"
    )
    assert r.failed_steps["publish"] == (
        "TypeError: cannot read property 'x' of null (step 'publish' (flow.yaml:12), line 2)"
    )


@pytest.mark.parametrize(
    ("task", "data"),
    [
        (Task.lua("error({code = 42, why = 'nope'})"), {"code": 42, "why": "nope"}),
        (Task.js("throw {code: 42, why: 'nope'}"), {"code": 42, "why": "nope"}),
        (Task.lua("error(7)"), 7),
        (Task.lua("error('text')"), None),
        (Task.js("throw new Error('x')"), None),
    ],
)
def test_a_thrown_value_that_is_data_is_kept_as_the_error_s_data(task: Task, data: object) -> None:
    with Runtime() as rt, pytest.raises(ScriptError) as info:
        rt.result(rt.submit(task), timeout=WAIT)
    assert info.value.data == data


@pytest.mark.parametrize(
    "task",
    [
        Task.lua("while true do end", limits=Limits(cpu_seconds=0.2)),
        Task.js("for (;;) {}", limits=Limits(cpu_seconds=0.2)),
    ],
)
def test_a_cpu_limit_stops_a_script_that_never_yields_inside_its_step(task: Task) -> None:
    with Runtime(step_budget=30) as rt:  # the step budget would fire far later
        with pytest.raises(ResourceLimitExceeded) as info:
            rt.result(rt.submit(task), timeout=WAIT)
        assert "over its limit of 0.2" in info.value.message
        assert "step budget" not in info.value.message
        assert rt.result(rt.submit(Task.lua("return 1")), timeout=WAIT) == 1


def test_a_cpu_limit_larger_than_the_step_budget_leaves_the_budget_in_charge() -> None:
    with Runtime(step_budget=0.2) as rt:
        task = Task.lua("while true do end", limits=Limits(cpu_seconds=50))
        with pytest.raises(TaskFailed) as info:
            rt.result(rt.submit(task), timeout=WAIT)
    assert "step budget of 0.2 s" in info.value.message


def test_lua_coordination_results_are_one_based_like_lua_tables() -> None:
    code = """
    local r = spell.coordinate({
      {lang = "lua", code = "error('first fails')"},
      {lang = "lua", code = "return 'second wins'"},
      {lang = "lua", code = "spell.sleep(30) return 'too slow'"},
    }, "race")
    return {winner = r.winner, value = r.results[r.winner], succeeded = r.succeeded,
            failed = r.failed[1][1], cancelled = r.cancelled}
    """
    with Runtime(script_python=SCRIPT_PYTHON) as rt:
        got = rt.result(rt.submit(Task.lua(code)), timeout=WAIT)
    assert got == {
        "winner": 2,
        "value": "second wins",
        "succeeded": [2],
        "failed": 1,
        "cancelled": [3],
    }
