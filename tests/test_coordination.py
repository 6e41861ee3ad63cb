"""Coordination through ``Runtime.coordinate``: the six strategies with tasks of
every engine mixed, timeouts, hook events, and coordinations nested in Lua and
JavaScript scripts (``spell.coordinate``)."""

from __future__ import annotations

import itertools
import time

import pytest
import targets
from helpers import WAIT, stats_when

from llmspell import MessageError, Runtime, ScriptError, Strategy, Task, TaskTimeout
from llmspell._task import CoordinationResult

_tags = itertools.count()


def tag() -> str:
    """A fresh name, so tests never share gates or log entries."""
    return f"c{next(_tags)}-{time.monotonic_ns()}"


def settled(rt: Runtime, ids: list[str]) -> dict[str, str]:
    """Each task's status, once nothing of the runtime runs any more."""
    stats = rt.stats()
    assert stats["running"] == 0 and stats["pending"] == 0, stats
    return {i: rt.status(i) for i in ids}


def partition(r: CoordinationResult, n: int) -> None:
    """Every task lands in exactly one of succeeded, failed, cancelled."""
    slots = [*r.succeeded, *(i for i, _ in r.failed), *r.cancelled]
    assert sorted(slots) == list(range(n))


# -- sequential ---------------------------------------------------------------------------


def test_sequential_runs_each_after_the_previous_ended_even_past_a_failure(rt: Runtime) -> None:
    t = tag()
    tasks = [
        Task.python("targets:record", args={"name": f"{t}-1"}, id=f"{t}-a"),
        Task.lua("error('lua broke')", id=f"{t}-b"),
        Task.js("return spell.task_id", id=f"{t}-c"),
        Task.python("targets:record", args={"name": f"{t}-4"}, id=f"{t}-d"),
    ]
    r = rt.coordinate(tasks, Strategy.SEQUENTIAL, timeout=30)
    assert r.strategy is Strategy.SEQUENTIAL
    assert not r.ok
    assert r.results == [f"{t}-1", None, f"{t}-c", f"{t}-4"]
    assert r.succeeded == [0, 2, 3]
    assert [i for i, _ in r.failed] == [1]
    assert "lua broke" in r.failed[0][1]
    assert r.cancelled == []
    assert [e for e in targets.log if e.startswith(t)] == [f"{t}-1", f"{t}-4"]
    assert settled(rt, [f"{t}-{x}" for x in "abcd"]) == {
        f"{t}-a": "succeeded",
        f"{t}-b": "failed",
        f"{t}-c": "succeeded",
        f"{t}-d": "succeeded",
    }


def test_sequential_starts_a_task_only_when_the_previous_one_ended(rt: Runtime) -> None:
    t = tag()
    tasks = [
        Task.python("targets:stage", args={"tag": t, "name": "A", "delay": 0.02}),
        Task.python("targets:fail", args={"message": "between"}),
        Task.python("targets:stage", args={"tag": t, "name": "B"}),
    ]
    r = rt.coordinate(tasks, "sequential", timeout=30)
    assert not r.ok
    assert r.results == ["None>A", None, "None>B"]
    runs = {name: (start, end) for tg, name, _, start, end, _ in targets.stage_log if tg == t}
    assert runs["B"][0] >= runs["A"][1]


# -- parallel and best effort -----------------------------------------------------------


def test_parallel_runs_all_at_once_with_mixed_engines(rt: Runtime) -> None:
    t = tag()
    tasks = [
        Task.python("targets:add", args={"x": 20, "y": 22}),
        Task.lua("return spell.args.n * 2", args={"n": 21}),
        Task.js("return spell.args.s.toUpperCase()", args={"s": "ok"}),
        # "1" waits (up to 5 s) until "0" started: both run at the same time
        Task.python("targets:stage", args={"tag": t, "name": "P", "input": "1", "wait_for": "P"}),
        Task.python("targets:stage", args={"tag": t, "name": "P", "input": "0"}),
    ]
    r = rt.coordinate(tasks, Strategy.PARALLEL, timeout=30)
    assert r.ok
    assert r.results == [42, 42, "OK", "1>P", "0>P"]
    assert r.succeeded == [0, 1, 2, 3, 4]
    assert all(waited for tg, *_, waited in targets.stage_log if tg == t)
    assert r.failed == [] and r.cancelled == [] and r.winner is None
    assert not r.timed_out
    assert r.duration > 0
    assert r.resource_usage.duration > 0


def test_parallel_is_not_ok_when_one_fails_but_runs_the_others(rt: Runtime) -> None:
    r = rt.coordinate(
        [
            Task.lua("return 1"),
            Task.python("targets:fail", args={"message": "nope"}),
            Task.js("return 3"),
        ],
        Strategy.PARALLEL,
    )
    assert not r.ok
    assert r.results == [1, None, 3]
    assert [i for i, _ in r.failed] == [1]
    assert "nope" in r.failed[0][1]
    assert r.succeeded == [0, 2]


def test_best_effort_records_failures_and_is_ok(rt: Runtime) -> None:
    r = rt.coordinate(
        [
            Task.js("throw new Error('js broke')"),
            Task.lua("return 'fine'"),
            Task.python("targets:afail"),
        ],
        Strategy.BEST_EFFORT,
    )
    assert r.ok
    assert r.results == [None, "fine", None]
    assert r.succeeded == [1]
    assert [i for i, _ in r.failed] == [0, 2]
    assert "js broke" in r.failed[0][1]
    assert "async boom" in r.failed[1][1]


# -- race -------------------------------------------------------------------------------


def test_race_the_first_to_succeed_wins_even_when_a_faster_one_failed(rt: Runtime) -> None:
    t = tag()
    tasks = [
        Task.python("targets:fail", args={"message": "fast but wrong"}, id=f"{t}-0"),
        Task.lua(
            # about 50 ms slower than the failure
            "spell.run({lang = 'python', target = 'targets:wait_gate',"
            f" args = {{name = '{t}-never', timeout = 0.05}}}}) return 'lua'",
            id=f"{t}-1",
        ),
        Task.js("await spell.sleep(30); return 'js'", id=f"{t}-2"),
        Task.python("targets:await_forever", args={"name": f"{t}-3"}, id=f"{t}-3"),
    ]
    r = rt.coordinate(tasks, Strategy.RACE, timeout=30)
    assert r.ok
    assert r.winner == 1
    assert r.results == [None, "lua", None, None]
    assert r.succeeded == [1]
    assert [i for i, _ in r.failed] == [0]
    assert "fast but wrong" in r.failed[0][1]
    assert r.cancelled == [2, 3]
    statuses = settled(rt, [f"{t}-{i}" for i in range(4)])
    assert statuses == {
        f"{t}-0": "failed",
        f"{t}-1": "succeeded",
        f"{t}-2": "cancelled",
        f"{t}-3": "cancelled",
    }
    deadline = time.monotonic() + 5
    while f"{t}-3" not in targets.cancelled_coroutines and time.monotonic() < deadline:
        time.sleep(0.01)
    assert f"{t}-3" in targets.cancelled_coroutines  # the loser really was stopped


def test_race_where_all_fail_has_no_winner(rt: Runtime) -> None:
    r = rt.coordinate(
        [Task.python("targets:fail"), Task.lua("error('l')"), Task.js("throw new Error('j')")],
        Strategy.RACE,
    )
    assert not r.ok
    assert r.winner is None
    assert r.results == [None, None, None]
    assert [i for i, _ in r.failed] == [0, 1, 2]
    assert r.cancelled == []


# -- all or nothing -----------------------------------------------------------------------


def test_all_or_nothing_succeeds_with_every_value(rt: Runtime) -> None:
    t = tag()
    r = rt.coordinate(
        [
            Task.lua("return 1", compensate=Task.python("targets:record", args={"name": t})),
            Task.js("return 2"),
            Task.python("targets:add", args={"x": 1, "y": 2}),
        ],
        Strategy.ALL_OR_NOTHING,
    )
    assert r.ok
    assert r.results == [1, 2, 3]
    assert t not in targets.log  # nothing was rolled back


def test_all_or_nothing_cancels_the_rest_and_compensates_in_reverse_completion_order(
    rt: Runtime,
) -> None:
    t = tag()
    undo = {x: Task.python("targets:record", args={"name": f"{t}-undo-{x}"}) for x in "abd"}
    tasks = [
        # b starts after a succeeded, c after b: the completion order is a, b
        Task.python("targets:record", args={"name": f"{t}-a"}, id=f"{t}-a", compensate=undo["a"]),
        Task.lua("return 'b'", id=f"{t}-b", deps=[f"{t}-a"], compensate=undo["b"]),
        Task.js("throw new Error('c broke')", id=f"{t}-c", deps=[f"{t}-b"]),
        Task.python(
            "targets:await_forever", args={"name": f"{t}-d"}, id=f"{t}-d", compensate=undo["d"]
        ),
        Task.lua("spell.sleep(60) return 'e'", id=f"{t}-e"),
    ]
    r = rt.coordinate(tasks, Strategy.ALL_OR_NOTHING, timeout=30)
    assert not r.ok
    assert r.results == [None] * 5
    assert r.succeeded == [0, 1]
    assert [i for i, _ in r.failed] == [2]
    assert "c broke" in r.failed[0][1]
    assert r.cancelled == [3, 4]
    mine = [e for e in targets.log if e.startswith(t)]
    # the cancelled task d is not compensated; b (completed last) is undone first
    assert mine == [f"{t}-a", f"{t}-undo-b", f"{t}-undo-a"]
    assert settled(rt, [f"{t}-{x}" for x in "abcde"]) == {
        f"{t}-a": "succeeded",
        f"{t}-b": "succeeded",
        f"{t}-c": "failed",
        f"{t}-d": "cancelled",
        f"{t}-e": "cancelled",
    }


def test_all_or_nothing_runs_compensations_one_after_another(rt: Runtime) -> None:
    t = tag()
    tasks = [
        Task.js(
            "return 'a'",
            id=f"{t}-a",
            compensate=Task.python("targets:stage", args={"tag": t, "name": "undo-a"}),
        ),
        Task.lua(
            "return 'b'",
            id=f"{t}-b",
            deps=[f"{t}-a"],
            compensate=Task.python(
                "targets:stage", args={"tag": t, "name": "undo-b", "delay": 0.02}
            ),
        ),
        Task.python("targets:fail", deps=[f"{t}-b"]),
    ]
    r = rt.coordinate(tasks, Strategy.ALL_OR_NOTHING, timeout=30)
    assert not r.ok
    assert r.succeeded == [0, 1] and r.results == [None, None, None]
    runs = {name: (start, end) for tg, name, _, start, end, _ in targets.stage_log if tg == t}
    assert runs["undo-a"][0] >= runs["undo-b"][1]  # undo-a started after undo-b ended


# -- pipeline -----------------------------------------------------------------------------


def test_pipeline_passes_each_result_on_across_engines(rt: Runtime) -> None:
    r = rt.coordinate(
        [
            Task.lua("return spell.args.n + 1", args={"n": 1}),
            Task.js("return spell.input * 10"),
            Task.python("targets:echo", args={"value": "py"}),
            Task.lua("return spell.input.input + 1"),
        ],
        Strategy.PIPELINE,
    )
    assert r.ok
    assert r.results == [2, 20, {"value": "py", "input": 20}, 21]


def test_pipeline_failure_cancels_the_later_stages(rt: Runtime) -> None:
    t = tag()
    r = rt.coordinate(
        [
            Task.js("return 1", id=f"{t}-0"),
            Task.lua("error('stage broke')", id=f"{t}-1"),
            Task.python("targets:record", args={"name": f"{t}-never"}, id=f"{t}-2"),
            Task.js("return 4", id=f"{t}-3"),
        ],
        Strategy.PIPELINE,
    )
    assert not r.ok
    assert r.results == [1, None, None, None]
    assert r.succeeded == [0]
    assert [i for i, _ in r.failed] == [1]
    assert r.cancelled == [2, 3]
    assert f"{t}-never" not in targets.log
    assert settled(rt, [f"{t}-{i}" for i in range(4)]) == {
        f"{t}-0": "succeeded",
        f"{t}-1": "failed",
        f"{t}-2": "cancelled",
        f"{t}-3": "cancelled",
    }


def test_pipeline_with_inputs_flows_every_input_through_every_stage(rt: Runtime) -> None:
    r = rt.coordinate(
        [
            Task.lua("return spell.input .. '>lua'"),
            Task.js("return spell.input + '>js'"),
            Task.python("targets:stage", args={"tag": tag(), "name": "py"}),
        ],
        Strategy.PIPELINE,
        inputs=["0", "1", "2"],
    )
    assert r.ok
    assert r.results == ["0>lua>js>py", "1>lua>js>py", "2>lua>js>py"]
    assert r.succeeded == [0, 1, 2]


def test_pipeline_stages_work_on_different_inputs_at_the_same_time(rt: Runtime) -> None:
    t = tag()
    # stage A on item k waits (up to 5 s) until stage B started on item k-1: that
    # only happens when B works on item k-1 while A works on item k
    stages = [
        Task.python("targets:stage", args={"tag": t, "name": "A", "wait_for": "B"}),
        Task.python("targets:stage", args={"tag": t, "name": "B", "delay": 0.01}),
    ]
    r = rt.coordinate(stages, Strategy.PIPELINE, inputs=["0", "1", "2", "3"], timeout=60)
    assert r.ok
    assert r.results == [f"{k}>A>B" for k in range(4)]
    runs = {
        (name, item): (start, end, waited)
        for tg, name, item, start, end, waited in targets.stage_log
        if tg == t
    }
    assert all(runs[("A", str(k))][2] for k in range(1, 4))
    for k in range(1, 4):  # B on item k-1 started before A finished item k
        assert runs[("B", str(k - 1))][0] < runs[("A", str(k))][1]


def test_pipeline_buffers_between_stages_are_bounded(rt: Runtime) -> None:
    t = tag()
    stages = [
        Task.python("targets:stage", args={"tag": t, "name": "fast"}),
        Task.python("targets:stage", args={"tag": t, "name": "slow", "delay": 0.02}),
    ]
    n = 8
    r = rt.coordinate(stages, Strategy.PIPELINE, inputs=[str(k) for k in range(n)], timeout=60)
    assert r.ok
    runs = {
        (name, item): (start, end) for tg, name, item, start, end, _ in targets.stage_log if tg == t
    }
    # the fast stage may run ahead by at most: 1 in the slow stage, 2 waiting
    # before it (the buffer) and 1 it holds; so it starts item k only after
    # the slow stage finished item k-4
    for k in range(4, n):
        assert runs[("fast", str(k))][0] > runs[("slow", str(k - 4))][1]


def test_pipeline_with_inputs_a_failure_ends_only_its_item(rt: Runtime) -> None:
    t = tag()
    stages = [
        Task.lua("return spell.input"),
        Task.python("targets:stage", args={"tag": t, "name": "P", "fail_on": "1"}),
        Task.js("return spell.input + '!'"),
    ]
    r = rt.coordinate(stages, Strategy.PIPELINE, inputs=["0", "1", "2"])
    assert not r.ok
    assert r.results == ["0>P!", None, "2>P!"]
    assert r.succeeded == [0, 2]
    assert [k for k, _ in r.failed] == [1]
    assert "stage 1" in r.failed[0][1] and "failed on item 1" in r.failed[0][1]


# -- timeouts, hooks, bad requests ------------------------------------------------------


def test_coordination_timeout_cancels_what_is_left(rt: Runtime) -> None:
    t = tag()
    tasks = [
        Task.python("targets:await_forever", args={"name": f"{t}-py"}, id=f"{t}-0"),
        Task.lua("spell.sleep(60) return 1", id=f"{t}-1"),
        Task.js("return 'quick'", id=f"{t}-2"),
    ]
    r = rt.coordinate(tasks, Strategy.PARALLEL, timeout=0.2)
    assert r.timed_out
    assert not r.ok
    assert r.results == [None, None, "quick"]
    assert r.succeeded == [2]
    assert r.cancelled == [0, 1]
    assert settled(rt, [f"{t}-{i}" for i in range(3)]) == {
        f"{t}-0": "cancelled",
        f"{t}-1": "cancelled",
        f"{t}-2": "succeeded",
    }


@pytest.mark.parametrize("strategy", ["sequential", "pipeline"])
def test_timeout_records_tasks_that_never_started_as_cancelled(rt: Runtime, strategy: str) -> None:
    t = tag()
    tasks = [
        Task.lua("spell.sleep(60) return 1", id=f"{t}-0"),
        Task.js("return 2", id=f"{t}-1"),
        Task.python("targets:add", args={"x": 1, "y": 1}, id=f"{t}-2"),
    ]
    r = rt.coordinate(tasks, strategy, timeout=0.1)
    assert r.timed_out and not r.ok
    assert r.cancelled == [0, 1, 2]
    assert set(settled(rt, [f"{t}-{i}" for i in range(3)]).values()) == {"cancelled"}


def test_best_effort_timeout_is_not_ok(rt: Runtime) -> None:
    r = rt.coordinate(
        [Task.lua("spell.sleep(60)"), Task.js("return 1")], Strategy.BEST_EFFORT, timeout=0.1
    )
    assert r.timed_out and not r.ok
    assert r.results == [None, 1]


def test_coordination_publishes_before_and_after_hook_events(rt: Runtime) -> None:
    with rt.subscribe("llmspell.coordination.*") as sub:
        r = rt.coordinate([Task.lua("return 1")], Strategy.RACE)
        before = sub.get(timeout=5)
        after = sub.get(timeout=5)
    assert r.ok
    assert before.name == "llmspell.coordination.before"
    assert before.payload["point"] == "coordination.before"
    assert before.payload["strategy"] == "race" and before.payload["tasks"] == 1
    assert after.name == "llmspell.coordination.after"
    assert after.payload["ok"] is True
    assert after.payload["coord_id"] == before.payload["coord_id"]


def test_an_empty_coordination_returns_at_once(rt: Runtime) -> None:
    assert rt.coordinate([], Strategy.PARALLEL).ok
    assert rt.coordinate([], Strategy.PIPELINE, inputs=[1, 2]).results == [1, 2]
    assert not rt.coordinate([], Strategy.RACE).ok


def test_bad_requests_are_refused_before_anything_runs(rt: Runtime) -> None:
    with pytest.raises(MessageError, match="unknown strategy"):
        rt.coordinate([Task.lua("return 1")], "zigzag")
    with pytest.raises(MessageError, match="inputs"):
        rt.coordinate([Task.lua("return 1")], Strategy.PARALLEL, inputs=[1])
    with pytest.raises(MessageError, match="timeout"):
        rt.coordinate([Task.lua("return 1")], Strategy.PARALLEL, timeout=0)
    assert rt.stats()["submitted"] == 0


def test_resource_usage_sums_the_tasks(rt: Runtime) -> None:
    r = rt.coordinate(
        [Task.python("targets:sleep", args={"seconds": 0.02}) for _ in range(3)],
        Strategy.PARALLEL,
    )
    assert r.ok
    assert r.resource_usage.duration >= 0.059  # the tasks' durations, summed
    lua = rt.coordinate([Task.lua("return 1"), Task.lua("return 2")], Strategy.PARALLEL)
    assert lua.resource_usage.memory_bytes > 0  # the largest VM memory reported


# -- nesting from scripts -----------------------------------------------------------------


def test_lua_script_coordinates_tasks_of_every_engine(rt: Runtime) -> None:
    h = rt.submit(
        Task.lua("""
        local r = spell.coordinate({
            {lang = "lua", code = "return 1"},
            {lang = "js", code = "return 2"},
            {lang = "python", target = "targets:add", args = {x = 1, y = 2}},
        }, "parallel", {timeout = 20})
        local p = spell.coordinate({
            {lang = "lua", code = "return spell.input * 2"},
            {lang = "js", code = "return spell.input + 1"},
        }, "pipeline", {inputs = {1, 2, 3}})
        local race = spell.coordinate({
            {lang = "python", target = "targets:fail"},
            {lang = "js", code = "return 'js won'"},
        }, "race")
        return {ok = r.ok, results = r.results, piped = p.results, winner = race.winner,
                won = race.results[race.winner]}
    """)
    )
    assert rt.result(h, timeout=20) == {
        "ok": True,
        "results": [1, 2, 3],
        "piped": [3, 5, 7],
        "winner": 2,  # 1-based in Lua, like results
        "won": "js won",
    }


def test_js_script_coordinates_and_nests_a_coordination_inside_a_coordinated_task(
    rt: Runtime,
) -> None:
    h = rt.submit(
        Task.js("""
        const inner = `local r = spell.coordinate({{lang = "js", code = "return 40"},
            {lang = "python", target = "targets:add", args = {x = 1, y = 1}}}, "sequential")
            return r.results[1] + r.results[2]`;
        const r = await spell.coordinate([
            {lang: "lua", code: inner},
            {lang: "js", code: "throw new Error('nope')"},
        ], "best_effort");
        const bad = await spell.coordinate([{lang: "lua", code: "return 1"}], "zigzag");
        return {ok: r.ok, results: r.results, failed: r.failed.length, bad: bad.ok,
                error: bad.error};
    """)
    )
    value = rt.result(h, timeout=20)
    assert value["ok"] is True
    assert value["results"] == [42, None]
    assert value["failed"] == 1
    assert value["bad"] is False
    assert "unknown strategy" in value["error"]


def test_nested_coordination_from_lua_times_out(rt: Runtime) -> None:
    h = rt.submit(
        Task.lua("""
        local r = spell.coordinate({{lang = "js", code = "await spell.sleep(60)"}},
                                   "parallel", {timeout = 0.1})
        return {timed_out = r.timed_out, ok = r.ok, cancelled = r.cancelled}
    """)
    )
    assert rt.result(h, timeout=20) == {"timed_out": True, "ok": False, "cancelled": [1]}
    assert rt.stats()["running"] == 0


def test_a_failing_compensation_does_not_stop_the_next_one(rt: Runtime) -> None:
    t = tag()
    tasks = [
        Task.lua(
            "return 'a'",
            id=f"{t}-a",
            compensate=Task.python("targets:record", args={"name": f"{t}-undo-a"}),
        ),
        Task.js(
            "return 'b'",
            id=f"{t}-b",
            deps=[f"{t}-a"],
            compensate=Task.lua("error('cannot undo b')"),
        ),
        Task.python("targets:fail", deps=[f"{t}-b"]),
    ]
    r = rt.coordinate(tasks, Strategy.ALL_OR_NOTHING, timeout=30)
    assert not r.ok
    assert f"{t}-undo-a" in targets.log
    assert rt.stats()["running"] == 0


def test_a_bug_in_an_aggregator_ends_the_coordination_instead_of_hanging(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llmspell.actors import aggregators

    def broken(self: object, i: int, o: object) -> None:
        raise RuntimeError("aggregator bug")

    monkeypatch.setattr(aggregators.ParallelAggregator, "ended", broken)
    r = rt.coordinate([Task.lua("return 1"), Task.js("await spell.sleep(60)")], "parallel")
    assert not r.ok
    assert r.results == [1, None]
    assert r.cancelled == [1]
    deadline = time.monotonic() + 5
    while rt.stats()["running"] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert rt.stats()["running"] == 0


# -- moved from test_bad_input.py: bad input to this feature ----------------------------


@pytest.mark.parametrize("timeout", ["1", float("nan"), float("inf"), 0, True])
def test_coordinate_timeout_must_be_seconds(rt: Runtime, timeout: object) -> None:
    with pytest.raises(MessageError, match="timeout: must be a positive number"):
        rt.coordinate([Task.lua("return 1")], Strategy.PARALLEL, timeout=timeout)  # type: ignore[arg-type]


@pytest.mark.parametrize("inputs", [5, "abc", {"a": 1}])
def test_pipeline_inputs_must_be_a_list(rt: Runtime, inputs: object) -> None:
    with pytest.raises(MessageError, match="inputs: must be a list"):
        rt.coordinate([Task.lua("return 1")], Strategy.PIPELINE, inputs=inputs)  # type: ignore[arg-type]


def test_a_coordination_timeout_bounds_its_rollback_too(rt: Runtime) -> None:
    tasks = [
        Task.lua("return 1", compensate=Task.lua("spell.sleep(3600)")),
        Task.lua("spell.sleep(0.2) error('boom')"),
    ]
    result = rt.coordinate(tasks, Strategy.ALL_OR_NOTHING, timeout=1)
    assert result.ok is False and result.timed_out is True
    assert stats_when(rt, "running", 0)["running"] == 0  # the compensation was cancelled


def test_a_compensation_id_must_be_new(rt: Runtime) -> None:
    tasks = [
        Task.lua("return 1", id="m1", compensate=Task.lua("return 2", id="m1")),
        Task.lua("error('x')", id="m2"),
    ]
    with pytest.raises(MessageError, match=r"tasks\[0\]\.compensate\.id"):
        rt.coordinate(tasks, Strategy.ALL_OR_NOTHING, timeout=5)


def test_coordinated_tasks_keep_their_own_end(rt: Runtime) -> None:
    tasks = [
        Task.lua("spell.sleep(5)", id="times-out", timeout=0.1),
        Task.lua("error('bad')", id="errs"),
        Task.lua("return 3", id="fine"),
    ]
    result = rt.coordinate(tasks, Strategy.PARALLEL, timeout=5)
    assert result.ok is False
    assert rt.status("times-out") == "timed_out"
    with pytest.raises(TaskTimeout):
        rt.result("times-out")
    with pytest.raises(ScriptError, match="bad"):
        rt.result("errs")
    assert rt.result("fine") == 3


def test_cancelling_a_coordinated_task_that_has_not_started_yet_cancels_it(rt: Runtime) -> None:
    import threading
    import time

    out: list[object] = []
    tasks = [Task.lua("spell.sleep(0.5) return 1", id="first"), Task.lua("return 2", id="later")]
    runner = threading.Thread(
        target=lambda: out.append(rt.coordinate(tasks, Strategy.SEQUENTIAL, timeout=10))
    )
    runner.start()
    time.sleep(0.2)  # "first" runs; "later" is not submitted yet
    assert rt.status("later") == "pending"
    assert rt.cancel("later") is True
    runner.join(WAIT)
    (result,) = out
    assert result.cancelled == [1] and result.results == [1, None]  # type: ignore[attr-defined]
    assert rt.status("later") == "cancelled"
