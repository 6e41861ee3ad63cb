"""Workflow files (``llmspell.workflow.load_workflow``), ``Runtime.run_workflow``
and ``Task.workflow``: loading, validation, dependencies, and a workflow as
one task of a bigger run."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
import targets

from llmspell import CoordinationResult, MessageError, Runtime, Strategy, Task, TaskFailed
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
    assert [t.metadata for t in two.tasks] == [  # source: what a script step's errors name
        {"workflow": "example", "step": "greet", "source": "step 'greet' (example.yaml:5)"},
        {"workflow": "example", "step": "shout", "source": "step 'shout' (example.yaml:9)"},
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


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("priority", ["high"], "must be one of low, normal, high, critical, got ['high']"),
        (
            "priority",
            "hihg",
            "must be one of low, normal, high, critical, got 'hihg' (did you mean 'high'?)",
        ),
        ("retries", 2**31, "must be an integer from 0 to 2**31 - 1, got 2147483648"),
        ("retries", True, "must be an integer from 0 to 2**31 - 1, got True"),
    ],
)
def test_step_options_follow_the_task_option_rules(option: str, value: Any, expected: str) -> None:
    step = {**ONE_STEP[0], option: value}
    assert f"step 'a'.{option}: {expected}" in problems({"steps": [step]})


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


# -- hostile values and files ---------------------------------------------------------------

ONE_STEP = [{"id": "a", "lang": "lua", "code": "return 1"}]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (float("inf"), "must be at most 100000000 s (about 3 years), got inf"),
        (float("nan"), "must be a positive number of seconds, got nan"),
        (-float("inf"), "must be a positive number of seconds, got -inf"),
        (1e308, "must be at most 100000000 s"),
        (10**400, "must be at most 100000000 s"),
    ],
    ids=["inf", "nan", "-inf", "1e308", "10**400"],
)
def test_a_timeout_must_be_finite_positive_and_at_most_1e8_seconds(
    rt: Runtime, value: float, expected: str
) -> None:
    message = problems({"timeout": value, "steps": ONE_STEP})
    assert f"timeout: {expected}" in message
    step = {**ONE_STEP[0], "timeout": value}
    assert f"step 'a'.timeout: {expected}" in problems({"steps": [step]})
    with pytest.raises(MessageError, match="malformed"):
        rt.run_workflow({"timeout": value, "steps": [step]})
    assert rt.stats()["submitted"] == 0  # nothing ran, nothing hangs
    assert load_workflow({"timeout": 1e8, "steps": ONE_STEP}).timeout == 1e8


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("inf.yaml", "timeout: .inf\nsteps: [{id: a, lang: lua, code: return 1}]", "got inf"),
        ("nan.yaml", "timeout: .nan\nsteps: [{id: a, lang: lua, code: return 1}]", "got nan"),
        ("inf.json", '{"timeout": Infinity, "steps": [{"id": "a", "lang": "lua"}]}', "got inf"),
        ("nan.json", '{"steps": [{"id": "a", "code": "1", "timeout": NaN}]}', "got nan"),
    ],
)
def test_infinite_and_nan_timeouts_in_files_are_rejected(
    tmp_path: Path, name: str, text: str, expected: str
) -> None:
    path = tmp_path / name
    path.write_text(text)
    message = problems(path)
    assert "timeout: must be" in message and expected in message


def test_a_file_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    utf16 = tmp_path / "utf16.yaml"
    utf16.write_text("steps: []\n", encoding="utf-16")
    with pytest.raises(MessageError) as info:
        load_workflow(utf16)
    assert str(info.value) == f"cannot read workflow file {str(utf16)!r}: it is not UTF-8 text"
    binary = tmp_path / "binary.json"
    binary.write_bytes(bytes(range(256)))
    with pytest.raises(MessageError, match=r"'.*binary\.json': it is not UTF-8 text"):
        load_workflow(binary)
    (tmp_path / "blob.lua").write_bytes(b"return '\xff\xfe'")
    with pytest.raises(MessageError) as info:
        load_workflow({"steps": [{"id": "blob", "file": "blob.lua"}]}, base_dir=tmp_path)
    assert "step 'blob'.file: cannot read" in str(info.value)
    assert "blob.lua': it is not UTF-8 text" in str(info.value)


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("deep.json", '{"steps": ' + "[" * 5000 + "]" * 5000 + "}"),
        ("deep.yaml", "steps: " + "{a: " * 5000 + "1" + "}" * 5000),
    ],
)
def test_a_file_nested_too_deeply_is_named(tmp_path: Path, name: str, text: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(MessageError) as info:
        load_workflow(path)
    assert str(info.value) == f"workflow file {str(path)!r} is nested too deeply"


BOMB = """\
description:
  a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
  b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
  c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
  d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
  e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
  f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
  g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
  h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
  i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
steps:
  - {id: a, lang: lua, code: return 1, args: {x: *i}}
"""


@pytest.mark.timeout(10)
def test_a_yaml_alias_bomb_is_rejected_at_once(rt: Runtime, tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)  # 405 bytes standing for 9**9 (387 million) strings
    started = time.monotonic()
    with pytest.raises(MessageError) as info:
        rt.run_workflow(path)
    assert time.monotonic() - started < 0.5
    assert str(info.value) == (
        f"workflow file {str(path)!r} expands to more than 1,000,000 values (YAML aliases?)"
    )
    assert rt.stats()["submitted"] == 0
    shared: list[Any] = ["lol"] * 9
    for _ in range(8):
        shared = [shared] * 9  # the same graph, built in Python
    started = time.monotonic()
    with pytest.raises(MessageError, match="expands to more than 1,000,000 values"):
        load_workflow({"steps": [{"id": "a", "lang": "lua", "code": "1", "args": {"x": shared}}]})
    assert time.monotonic() - started < 0.5


def test_yaml_anchors_aliases_and_merge_keys_still_work(rt: Runtime, tmp_path: Path) -> None:
    path = tmp_path / "anchors.yaml"
    path.write_text(
        """\
description:
  defaults: &defaults {lang: lua, retries: 1, args: &n {n: 2}}
steps:
  - {<<: *defaults, id: a, code: return spell.args.n}
  - <<: *defaults
    id: b
    code: return spell.args.n * spell.args.m
    args: {<<: *n, m: 10}
  - {id: c, lang: js, code: return spell.args.n + 1, args: *n}
"""
    )
    wf = load_workflow(path)
    assert [t.retries for t in wf.tasks] == [1, 1, 0]
    assert rt.run_workflow(path).results == [2, 20, 3]


@pytest.mark.timeout(10)  # reading a FIFO used to wait for a writer for ever
def test_only_regular_files_are_read(tmp_path: Path) -> None:
    def cannot_read(path: Path, why: str) -> None:
        with pytest.raises(MessageError) as info:
            load_workflow(path)
        assert str(info.value) == f"cannot read workflow file {str(path)!r}: {why}"

    cannot_read(tmp_path / "nope.yaml", "no such file")
    (tmp_path / "dir.yaml").mkdir()
    cannot_read(tmp_path / "dir.yaml", "is a directory, not a workflow file")
    step = {"id": "s", "lang": "lua", "file": str(tmp_path / "dir.yaml")}
    assert f"step 's'.file: cannot read {str(tmp_path / 'dir.yaml')!r}: is a directory" in (
        problems({"steps": [step]})
    )
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "fifo.yaml")
        cannot_read(tmp_path / "fifo.yaml", "is not a regular file")
        step = {"id": "s", "lang": "lua", "file": str(tmp_path / "fifo.yaml")}
        assert "step 's'.file: cannot read" in problems({"steps": [step]})
        assert "fifo.yaml': is not a regular file" in problems({"steps": [step]})


@pytest.mark.parametrize(
    ("text", "got"), [("just a string", "str"), ("[1, 2]", "list"), ("# only a comment", "nothing")]
)
def test_a_file_whose_top_level_is_not_a_mapping_is_named(
    tmp_path: Path, text: str, got: str
) -> None:
    path = tmp_path / "flat.yaml"
    path.write_text(text)
    with pytest.raises(MessageError) as info:
        load_workflow(path)
    assert str(info.value) == (
        f"workflow file {str(path)!r} must hold a mapping with 'steps', got {got}"
    )


@pytest.mark.parametrize("bad", [None, 5, [1]])
def test_task_workflow_takes_a_path_or_a_mapping_only(bad: Any) -> None:
    with pytest.raises(MessageError, match="workflow: a workflow is a file path or a dict"):
        Task.workflow(bad)
    with pytest.raises(MessageError, match="workflow: a workflow is a file path or a dict"):
        load_workflow(bad)


# -- where a step's input comes from ------------------------------------------------------


@pytest.mark.parametrize(
    ("wf", "expected"),
    [
        (
            {"steps": [*ONE_STEP, {"id": "b", "agent": "echo", "input": "hi", "args": {"x": 1}}]},
            "step 'b'.args: an agent step takes no args",
        ),
        (
            {
                "steps": [
                    *ONE_STEP,
                    {"id": "b", "lang": "js", "code": "1", "input": 1, "deps": ["a"]},
                ]
            },
            "step 'b'.input: give input or deps, not both",
        ),
        (
            {
                "strategy": "pipeline",
                "steps": [*ONE_STEP, {"id": "b", "target": "m:f", "input": 1}],
            },
            "step 'b'.input: only a pipeline's first step takes input",
        ),
    ],
)
def test_a_step_input_that_would_be_lost_or_replaced_is_a_problem(
    rt: Runtime, wf: Any, expected: str
) -> None:
    assert expected in problems(wf)
    with pytest.raises(MessageError, match="malformed"):
        rt.run_workflow(wf)
    assert rt.stats()["submitted"] == 0


def test_an_agent_step_gets_its_input(rt: Runtime) -> None:
    rt.register_agent("echo", "agent_targets:echo_agent")
    wf = {
        "strategy": "pipeline",
        "steps": [
            {"id": "ask", "agent": "echo", "input": "hi"},
            {"id": "shout", "lang": "js", "code": "return JSON.stringify(spell.input)"},
        ],
    }
    r = rt.run_workflow(wf)
    assert r.ok, r.failed
    assert "echo: hi" in r.results[1]


def test_an_agent_step_takes_its_dependency_or_the_previous_stage_as_input(rt: Runtime) -> None:
    rt.register_agent("echo", "agent_targets:echo_agent")
    after = {
        "steps": [
            {"id": "q", "lang": "lua", "code": "return 'from a dep'"},
            {"id": "ask", "agent": "echo", "deps": ["q"]},
        ],
    }
    r = rt.run_workflow(after)
    assert r.ok, r.failed
    assert "echo: from a dep" in str(r.results[1])
    staged = {
        "strategy": "pipeline",
        "steps": [
            {"id": "q", "lang": "lua", "code": "return 'from a stage'"},
            {"id": "ask", "agent": "echo"},
        ],
    }
    r = rt.run_workflow(staged)
    assert r.ok, r.failed
    assert "echo: from a stage" in str(r.results[1])
    direct = rt.coordinate(
        [Task.lua("return 'direct'"), Task.agent("echo", None)], Strategy.PIPELINE
    )
    assert direct.ok and "echo: direct" in str(direct.results[1])


def test_a_workflow_result_maps_step_ids_to_values_and_failures() -> None:
    wf = {
        "name": "ids",
        "strategy": "parallel",
        "steps": [
            {"id": "a", "lang": "lua", "code": "error('boom')"},
            {"id": "b", "lang": "js", "code": "return 2"},
            {"id": "c", "target": "targets:add", "args": {"x": 1, "y": 2}},
        ],
    }
    with Runtime() as rt:
        r = rt.run_workflow(wf)
        plain = rt.coordinate([Task.lua("return 1")], Strategy.PARALLEL)
    assert r.step_ids == ["a", "b", "c"]
    assert r.steps == {"a": None, "b": 2, "c": 3}
    assert list(r.failed_steps) == ["a"] and "boom" in r.failed_steps["a"]
    d = r.to_dict()
    assert d["steps"] == {"a": None, "b": 2, "c": 3} and "boom" in d["failed_steps"]["a"]
    assert CoordinationResult.from_dict(d) == r
    assert plain.step_ids == [] and "steps" not in plain.to_dict()  # no steps, no map
