"""Workflow files (``llmspell.workflow.load_workflow``), ``Runtime.run_workflow``
and ``Task.workflow``: loading, validation, dependencies, and a workflow as
one task of a bigger run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import targets

from llmspell import MessageError, Runtime, Strategy, Task, TaskFailed
from llmspell.workflow import load_workflow

EXAMPLE = """\
name: example
strategy: parallel           # one of the six, lower case
timeout: 30
steps:
  - id: greet
    lang: lua
    code: return "hello " .. spell.args.who
    args: {who: world}
  - id: shout
    lang: js
    code: return spell.input.toUpperCase()
    deps: [greet]            # a dependency's result arrives as spell.input
"""


def test_the_api_example_runs(rt: Runtime, tmp_path: Path) -> None:
    path = tmp_path / "example.yaml"
    path.write_text(EXAMPLE)
    r = rt.run_workflow(path)
    assert r.ok
    assert r.strategy is Strategy.PARALLEL
    assert r.results == ["hello world", "HELLO WORLD"]


def test_loading_makes_unique_task_ids_but_keeps_step_ids(tmp_path: Path) -> None:
    path = tmp_path / "example.yaml"
    path.write_text(EXAMPLE)
    one, two = load_workflow(path), load_workflow(str(path), run_prefix="run7")
    assert one.name == "example" and one.strategy == "parallel" and one.timeout == 30.0
    assert one.steps == ["greet", "shout"]
    assert {t.id for t in one.tasks}.isdisjoint({t.id for t in two.tasks})
    assert [t.id for t in two.tasks] == ["run7:greet", "run7:shout"]
    assert two.tasks[1].deps == ["run7:greet"]
    assert [t.metadata for t in two.tasks] == [
        {"workflow": "example", "step": "greet"},
        {"workflow": "example", "step": "shout"},
    ]


def test_json_files_code_files_and_several_deps_by_step_id(rt: Runtime, tmp_path: Path) -> None:
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "double.lua").write_text("return spell.args.n * 2")
    (tmp_path / "inc.js").write_text("return spell.input + 1")
    wf = {
        "name": "files",
        "steps": [
            {"id": "double", "file": "scripts/double.lua", "args": {"n": 21}},
            {"id": "inc", "lang": "js", "file": "inc.js", "deps": ["double"]},
            {"id": "both", "target": "targets:echo", "deps": ["double", "inc"]},
        ],
    }
    path = tmp_path / "files.json"
    path.write_text(json.dumps(wf))
    r = rt.run_workflow(path)
    assert r.ok
    assert r.results == [42, 43, {"value": None, "input": {"double": 42, "inc": 43}}]


def test_a_step_starts_only_after_its_deps_succeeded(rt: Runtime) -> None:
    wf = {
        "strategy": "best_effort",
        "steps": [
            {"id": "bad", "lang": "lua", "code": "error('bad step')"},
            {"id": "after", "lang": "js", "code": "return 1", "deps": ["bad"]},
            {"id": "free", "lang": "python", "target": "targets:add", "args": {"x": 1, "y": 1}},
        ],
    }
    r = rt.run_workflow(wf)
    assert r.ok  # best effort
    assert r.results == [None, None, 2]
    assert [i for i, _ in r.failed] == [0, 1]
    assert "dependency" in r.failed[1][1] and "bad" in r.failed[1][1]


@pytest.mark.parametrize("strategy", ["sequential", "race", "all_or_nothing", "pipeline"])
def test_every_strategy_runs_from_a_workflow(rt: Runtime, strategy: str) -> None:
    wf = {
        "strategy": strategy,
        "steps": [
            {"id": "one", "lang": "lua", "code": "return (spell.input or 0) + 1"},
            {"id": "two", "lang": "js", "code": "return (spell.input || 0) + 10"},
        ],
    }
    r = rt.run_workflow(wf)
    assert r.ok
    assert r.strategy.value == strategy
    expected = {"pipeline": [1, 11], "race": None}.get(strategy, [1, 10])
    if expected is not None:
        assert r.results == expected
    else:
        assert r.winner in (0, 1)


def test_workflow_timeout(rt: Runtime) -> None:
    r = rt.run_workflow(
        {
            "timeout": 0.1,
            "steps": [{"id": "slow", "lang": "lua", "code": "spell.sleep(60)"}],
        }
    )
    assert r.timed_out and not r.ok and r.cancelled == [0]


# -- validation ---------------------------------------------------------------------------


def problems(wf: Any) -> str:
    with pytest.raises(MessageError) as info:
        load_workflow(wf)
    return str(info.value)


def test_a_malformed_workflow_lists_every_problem_at_once(rt: Runtime) -> None:
    wf = {
        "name": "broken",
        "strategy": "zigzag",
        "colour": "red",
        "steps": [
            {"id": "a", "lang": "lua"},
            {"id": "b", "lang": "lua", "code": "return 1", "file": "b.lua"},
            {"id": "c", "lang": "cobol", "code": "x"},
            {"id": "d", "lang": "js", "code": "return 1", "deps": ["e"]},
            {"id": "e", "lang": "js", "code": "return 1", "deps": ["d"]},
            {"id": "f", "lang": "js", "code": "return 1", "deps": ["nowhere"]},
            {"id": "a", "lang": "js", "code": "return 1"},
            {"id": "g", "lang": "lua", "code": "return 1", "shape": "round", "timeout": -1},
            {"id": "h", "target": "not-a-target"},
            {"id": "i", "lang": "lua", "code": "return 1", "priority": "urgent", "retries": -1},
        ],
    }
    message = problems(wf)
    for expected in [
        "workflow 'broken' is malformed",
        "colour: unknown key",
        "strategy: must be one of",
        "step 'a': missing code",
        "step 'b': give code or file, not both",
        "step 'c'.lang: unknown lang 'cobol'",
        "dependency cycle: d -> e -> d",
        "step 'f'.deps: unknown step 'nowhere'",
        "step 'a': duplicate id",
        "step 'g'.shape: unknown key",
        "step 'g'.timeout: must be a positive number",
        "step 'h'.target: must be 'package.module:function'",
        "step 'i'.priority: must be one of",
        "step 'i'.retries: must be an integer",
    ]:
        assert expected in message, (expected, message)
    with pytest.raises(MessageError, match="malformed"):
        rt.run_workflow(wf)
    assert rt.stats()["submitted"] == 0  # nothing ran


@pytest.mark.parametrize(
    ("wf", "expected"),
    [
        ({"steps": []}, "steps: must be a non-empty list"),
        ({"steps": [{"lang": "lua", "code": "return 1"}]}, "steps[0]: missing id"),
        ({"steps": ["just a string"]}, "steps[0]: must be a mapping"),
        ({"steps": [{"id": "x", "code": "return 1"}]}, "step 'x': missing lang"),
        ({"steps": [{"id": "x", "lang": "lua", "tool": "t", "code": "1"}]}, "give one of"),
        (
            {"steps": [{"id": "x", "lang": "python", "target": "m:f", "code": "1"}]},
            "step 'x'.code: a python step runs a target",
        ),
        (
            {"steps": [{"id": "x", "lang": "lua", "code": "1", "args": [1]}]},
            "step 'x'.args: must be a mapping",
        ),
        (
            {"steps": [{"id": "x", "lang": "lua", "code": "1", "deps": ["x"]}]},
            "cannot depend on itself",
        ),
        (
            {"steps": [{"id": "x", "lang": "lua", "file": "missing.lua"}]},
            "step 'x'.file: cannot read",
        ),
        (
            {
                "strategy": "sequential",
                "steps": [
                    {"id": "x", "lang": "lua", "code": "1", "deps": ["y"]},
                    {"id": "y", "lang": "lua", "code": "1"},
                ],
            },
            "under sequential",
        ),
        (
            {
                "strategy": "pipeline",
                "steps": [
                    {"id": "x", "lang": "lua", "code": "1"},
                    {"id": "y", "lang": "lua", "code": "1", "deps": ["x"]},
                ],
            },
            "a pipeline step takes no deps",
        ),
        (["not", "a", "mapping"], "a workflow is a file path or a dict"),
    ],
)
def test_each_kind_of_problem_names_its_step_and_field(wf: Any, expected: str) -> None:
    assert expected in problems(wf)


def test_unreadable_and_unparsable_files(tmp_path: Path) -> None:
    with pytest.raises(MessageError, match="cannot read workflow file"):
        load_workflow(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: [\n  - id: x\n")
    with pytest.raises(MessageError, match=r"not valid YAML.*line"):
        load_workflow(bad)
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{nope")
    with pytest.raises(MessageError, match="not valid JSON"):
        load_workflow(bad_json)


# -- Task.workflow ------------------------------------------------------------------------


def test_a_workflow_task_is_one_step_whose_value_is_the_coordination_result(
    rt: Runtime, tmp_path: Path
) -> None:
    path = tmp_path / "example.yaml"
    path.write_text(EXAMPLE)
    h = rt.submit(Task.workflow(str(path)))
    value = rt.result(h, timeout=20)
    assert value["ok"] is True and value["strategy"] == "parallel"
    assert value["results"] == ["hello world", "HELLO WORLD"]
    assert value["steps"] == {"greet": "hello world", "shout": "HELLO WORLD"}


def test_a_workflow_task_as_a_dependency(rt: Runtime) -> None:
    name = f"wf-dep-{id(rt)}"
    wf = {
        "steps": [
            {"id": "s", "lang": "js", "code": "return 1"},
            # a python step with deps gets the dependency's result as input=
            {
                "id": "t",
                "target": "targets:signal",
                "args": {"name": f"{name}-inner"},
                "deps": ["s"],
            },
        ]
    }
    flow = rt.submit(Task.workflow(wf))
    after = rt.submit(Task.python("targets:record", args={"name": f"{name}-after"}, deps=[flow]))
    assert rt.result(after, timeout=20) == f"{name}-after"
    assert rt.result(flow, timeout=5)["results"] == [1, f"{name}-inner"]
    mine = [e for e in targets.log if e.startswith(name)]
    assert mine == [f"{name}-inner", f"{name}-after"]


def test_a_failing_workflow_task_fails_and_its_dependents_with_it(rt: Runtime) -> None:
    wf = {
        "name": "shaky",
        "steps": [
            {"id": "ok", "lang": "lua", "code": "return 1"},
            {"id": "boom", "lang": "js", "code": "throw new Error('boom')"},
        ],
    }
    flow = rt.submit(Task.workflow(wf))
    after = rt.submit(Task.lua("return 1", deps=[flow]))
    with pytest.raises(TaskFailed, match=r"workflow 'shaky'.*step 'boom' failed.*boom"):
        rt.result(flow, timeout=20)
    with pytest.raises(TaskFailed, match="dependency"):
        rt.result(after, timeout=20)


def test_a_malformed_workflow_task_fails_with_every_problem(rt: Runtime) -> None:
    h = rt.submit(Task.workflow({"steps": [{"id": "x", "lang": "cobol", "code": "1"}]}))
    with pytest.raises(TaskFailed, match="unknown lang 'cobol'"):
        rt.result(h, timeout=20)
    h = rt.submit(Task.workflow("/nonexistent/flow.yaml"))
    with pytest.raises(TaskFailed, match="cannot read workflow file"):
        rt.result(h, timeout=20)


def test_cancelling_a_workflow_task_cancels_its_steps(rt: Runtime) -> None:
    with rt.subscribe("llmspell.task.running") as sub:
        h = rt.submit(
            Task.workflow(
                {
                    "steps": [
                        {"id": "long", "lang": "lua", "code": "spell.sleep(60)"},
                        {"id": "longer", "lang": "js", "code": "await spell.sleep(60)"},
                    ]
                }
            )
        )
        started = set()
        while len(started) < 3:  # the workflow task and its two steps
            started.add(sub.get(timeout=10).payload["task_id"])
    assert rt.cancel(h)
    assert rt.status(h) == "cancelled"
    assert rt.stats()["running"] == 0


def test_a_workflow_task_with_its_own_timeout(rt: Runtime) -> None:
    h = rt.submit(
        Task.workflow(
            {"steps": [{"id": "s", "lang": "lua", "code": "spell.sleep(60)"}]}, timeout=0.1
        )
    )
    assert rt.status(h) in ("pending", "running")
    with pytest.raises(Exception, match="timeout"):
        rt.result(h, timeout=20)
    assert rt.stats()["running"] == 0


def test_scripts_can_submit_workflow_tasks(rt: Runtime) -> None:
    h = rt.submit(
        Task.lua("""
        local h = spell.submit({kind = "workflow", payload = {
            strategy = "sequential",
            steps = {{id = "a", lang = "js", code = "return 20"},
                     {id = "b", lang = "lua", code = "return 22", deps = {"a"}}}}})
        local r = spell.await(h)
        return r.steps.a + r.steps.b
    """)
    )
    assert rt.result(h, timeout=20) == 42


# -- the command line ---------------------------------------------------------------------


def test_llmspell_run_runs_a_workflow_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from llmspell.cli import main

    path = tmp_path / "example.yaml"
    path.write_text(EXAMPLE)
    assert main(["run", str(path)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is True and out["results"] == ["hello world", "HELLO WORLD"]

    failing = tmp_path / "failing.json"
    failing.write_text(json.dumps({"steps": [{"id": "x", "lang": "lua", "code": "error('x')"}]}))
    assert main(["run", str(failing)]) == 1
    assert json.loads(capsys.readouterr().out)["ok"] is False

    broken = tmp_path / "broken.yaml"
    broken.write_text("steps:\n  - id: x\n    lang: cobol\n    code: '1'\n")
    assert main(["run", str(broken)]) == 2
    assert "unknown lang 'cobol'" in capsys.readouterr().err
