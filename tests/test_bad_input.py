"""Bad input gets one clear error and loses nothing, never a hang: dependency
cycles, failures at the head of long dependency chains, data nested too deeply,
and ill-typed arguments of the coordination and task options."""

from __future__ import annotations

import pytest

from llmspell import MessageError, Runtime, ScriptError, Strategy, Task, TaskFailed, TaskTimeout

WAIT = 10


def test_a_task_that_depends_on_itself_fails_as_a_cycle(rt: Runtime) -> None:
    h = rt.submit(Task.lua("return 1", id="me", deps=["me"]))
    with pytest.raises(TaskFailed, match="dependency cycle: me -> me"):
        rt.result(h, timeout=WAIT)


def test_every_task_of_a_cycle_and_what_waits_on_it_fails_the_rest_runs(rt: Runtime) -> None:
    hs = rt.submit_many(
        [
            Task.lua("return 1", id="a", deps=["c"]),
            Task.lua("return 1", id="b", deps=["a"]),
            Task.lua("return 1", id="c", deps=["b"]),
            Task.lua("return 1", id="after", deps=["c"]),
            Task.lua("return 5", id="free"),
            Task.lua("return 6", id="later", deps=["free"]),
        ]
    )
    for h in hs[:4]:
        with pytest.raises(TaskFailed, match=r"dependency cycle: a -> c -> b -> a"):
            rt.result(h, timeout=WAIT)
    assert rt.result(hs[4], timeout=WAIT) == 5
    assert rt.result(hs[5], timeout=WAIT) == 6
    stats = rt.stats()
    assert stats["failed"] == 4 and stats["succeeded"] == 2


def test_a_failure_at_the_head_of_a_long_chain_fails_every_link(rt: Runtime) -> None:
    n = 3000  # deeper than Python's recursion limit
    hs = rt.submit_many(
        [Task.lua("error('at the head')", id="k0")]
        + [Task.lua("return 1", id=f"k{i}", deps=[f"k{i - 1}"]) for i in range(1, n)]
    )
    for i in (1, 2, n - 1):
        with pytest.raises(TaskFailed, match="at the head") as info:
            rt.result(hs[i], timeout=WAIT)
        assert len(str(info.value)) < 300  # names the first failure, not every link
    assert f"dependency 'k{n - 2}' failed (because 'k0' failed" in str(info.value)
    assert rt.stats()["failed"] == n


def test_a_long_chain_of_event_tasks_runs_to_the_end(rt: Runtime) -> None:
    n = 3000  # each one ends as soon as it is ready: the chain unrolls in one go
    hs = rt.submit_many(
        [Task.event("chain", id="e0")]
        + [Task.event("chain", id=f"e{i}", deps=[f"e{i - 1}"]) for i in range(1, n)]
    )
    assert rt.result(hs[-1], timeout=WAIT) is None
    assert rt.stats()["succeeded"] == n


def test_data_nested_too_deeply_is_refused_at_submit(rt: Runtime) -> None:
    deep: list[object] = []
    for _ in range(10_000):
        deep = [deep]
    with pytest.raises(MessageError, match="nested more than 500 levels deep") as info:
        rt.submit(Task.lua("return 1", args={"d": deep}))
    assert str(info.value).startswith("args.d[0]")
    with pytest.raises(MessageError, match="nested"):
        rt.emit("deep", deep)
    assert rt.stats()["submitted"] == 0


@pytest.mark.parametrize("timeout", ["1", float("nan"), float("inf"), 0, True])
def test_coordinate_timeout_must_be_seconds(rt: Runtime, timeout: object) -> None:
    with pytest.raises(MessageError, match="timeout: must be a positive number"):
        rt.coordinate([Task.lua("return 1")], Strategy.PARALLEL, timeout=timeout)  # type: ignore[arg-type]


@pytest.mark.parametrize("inputs", [5, "abc", {"a": 1}])
def test_pipeline_inputs_must_be_a_list(rt: Runtime, inputs: object) -> None:
    with pytest.raises(MessageError, match="inputs: must be a list"):
        rt.coordinate([Task.lua("return 1")], Strategy.PIPELINE, inputs=inputs)  # type: ignore[arg-type]


@pytest.mark.parametrize("timeout", [float("nan"), float("inf"), -1, "5"])
def test_task_timeout_must_be_finite_seconds(timeout: object) -> None:
    with pytest.raises(MessageError, match="timeout: must be a positive number"):
        Task.lua("return 1", timeout=timeout)


def test_none_options_are_the_defaults(rt: Runtime) -> None:
    t = Task.lua(
        "return 1", deps=None, retries=None, priority=None, timeout=None, limits=None, id=None
    )
    assert rt.result(rt.submit(t), timeout=WAIT) == 1


def test_waits_far_in_the_future_leave_the_runtime_serving(rt: Runtime) -> None:
    # each of these once overflowed a timer and stopped the runtime's driver thread
    sleepers = [
        rt.submit(Task.lua("spell.sleep(1e10) return 1")),
        rt.submit(Task.js("await spell.sleep(1e12); return 1")),
        rt.submit(Task.lua("spell.wait_event('never.*', 1e12) return 1")),
        rt.submit(Task.lua("spell.sleep(5) return 1", timeout=1e12)),
    ]
    result = rt.coordinate([Task.lua("return 2")], Strategy.PARALLEL, timeout=1e10)
    assert result.ok and result.results == [2]
    assert rt.result(rt.submit(Task.lua("return 7")), timeout=WAIT) == 7
    assert rt.result(rt.submit(Task.js("return 8")), timeout=float("inf")) == 8
    assert all(rt.status(h) == "running" for h in sleepers)
    assert all(rt.cancel(h) for h in sleepers)


def test_a_retry_far_in_the_future_leaves_the_runtime_serving() -> None:
    with Runtime(retry_backoff=1e10, retry_backoff_cap=1e12) as rt:
        failing = rt.submit(Task.lua("error('again')", retries=1))
        _wait_for(rt, "retries", 1)  # its re-run is due in ~300 years
        assert rt.result(rt.submit(Task.lua("return 1")), timeout=WAIT) == 1
        assert rt.status(failing) == "pending"
        assert rt.cancel(failing) is True


@pytest.mark.parametrize("timeout", ["5", float("nan"), [1]])
def test_a_wait_timeout_must_be_seconds(rt: Runtime, timeout: object) -> None:
    h = rt.submit(Task.lua("return 1"))
    with pytest.raises(MessageError, match="timeout: must be a number of seconds or None"):
        rt.result(h, timeout=timeout)  # type: ignore[arg-type]
    with pytest.raises(MessageError, match="timeout"):
        rt.subscribe("x.*").get(timeout=timeout)  # type: ignore[arg-type]
    assert rt.result(h, timeout=WAIT) == 1


def test_an_abandoned_async_wait_does_not_keep_other_waiters_waiting() -> None:
    import asyncio

    from llmspell import AsyncRuntime

    rt = AsyncRuntime()
    asyncio.run(rt.start())
    try:

        async def first() -> tuple[object, object]:
            a, b = await rt.submit_many(
                [Task.lua("spell.sleep(0.3) return 'A'"), Task.lua("spell.sleep(0.3) return 'B'")]
            )
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(rt.result(a), 0.05)
            return a, b

        a, b = asyncio.run(first())  # that event loop is closed now

        async def second() -> object:
            return await asyncio.wait_for(rt.result(b), WAIT)

        assert asyncio.run(second()) == "B"
        assert asyncio.run(asyncio.wait_for(rt.result(a), WAIT)) == "A"
    finally:
        asyncio.run(rt.close())


@pytest.mark.parametrize(
    ("make", "where"),
    [
        (lambda: Task.hook("task.middle"), "point"),
        (lambda: Task.workflow(None), "workflow"),  # type: ignore[arg-type]
        (lambda: Task.workflow(5), "workflow"),  # type: ignore[arg-type]
        (lambda: Task.lua("return 1", priority=["high"]), "priority"),
        (lambda: Task.lua("return 1", retries=10**30), "retries"),
    ],
)
def test_task_constructors_refuse_what_cannot_run(make: object, where: str) -> None:
    with pytest.raises(MessageError) as info:
        make()  # type: ignore[operator]
    assert info.value.where == where


def test_limits_must_fit_the_wire() -> None:
    from llmspell import Limits

    with pytest.raises(MessageError, match=r"limits\.memory_bytes"):
        Limits(memory_bytes=10**30)
    with pytest.raises(MessageError, match=r"limits\.cpu_seconds"):
        Limits(cpu_seconds=float("nan"))


@pytest.mark.parametrize("tasks", [None, 5, "abc"])
def test_a_list_of_tasks_is_required(rt: Runtime, tasks: object) -> None:
    with pytest.raises(MessageError, match="tasks: expected a list of Tasks"):
        rt.coordinate(tasks, Strategy.PARALLEL)  # type: ignore[arg-type]
    with pytest.raises(MessageError, match="tasks: expected a list of Tasks"):
        rt.submit_many(tasks)  # type: ignore[arg-type]
    with pytest.raises(MessageError, match="tasks: expected a list of Tasks"):
        rt.coordinate(Task.lua("return 1"), Strategy.PARALLEL)  # type: ignore[arg-type]


_PARENT = """
local child = spell.submit({lang = 'lua', code = 'spell.sleep(30) return 1'})
spell.await(child)
"""


def _wait_for(rt: Runtime, what: str, n: int) -> dict[str, object]:
    import time

    deadline = time.monotonic() + WAIT
    while True:
        stats = rt.stats()
        if stats[what] >= n or time.monotonic() > deadline:
            return stats
        time.sleep(0.02)


def test_cancelling_a_task_cancels_the_children_it_is_still_running(rt: Runtime) -> None:
    parent = rt.submit(Task.lua(_PARENT))
    assert _wait_for(rt, "running", 2)["running"] == 2  # the parent and its child
    assert rt.cancel(parent) is True
    stats = _wait_for(rt, "cancelled", 2)
    assert stats["cancelled"] == 2 and stats["running"] == 0


def test_a_task_that_times_out_cancels_its_children(rt: Runtime) -> None:
    parent = rt.submit(Task.lua(_PARENT, timeout=0.3))
    with pytest.raises(TaskTimeout):
        rt.result(parent, timeout=WAIT)
    stats = _wait_for(rt, "cancelled", 1)
    assert stats["cancelled"] == 1 and stats["running"] == 0


def test_children_outlive_a_parent_that_returned(rt: Runtime) -> None:
    code = "return spell.submit({lang = 'lua', code = 'spell.sleep(0.2) return 5'})"
    child_handle = rt.result(rt.submit(Task.lua(code)), timeout=WAIT)
    late = rt.submit(Task.lua("return spell.await(spell.args.h)", args={"h": child_handle}))
    assert rt.result(late, timeout=WAIT) == 5


def test_a_task_that_submits_itself_for_ever_fails_at_the_depth_limit(rt: Runtime) -> None:
    code = "return spell.run({lang = 'lua', code = spell.args.code, args = spell.args})"
    h = rt.submit(Task.lua(code, args={"code": code}))
    with pytest.raises(TaskFailed, match="nested more than 256 levels deep") as info:
        rt.result(h, timeout=60)
    assert len(str(info.value)) < 1200  # deep awaits keep the first cause, not every link
    assert _wait_for(rt, "running", 0)["running"] == 0


# -- scripts are sandboxed: no Python, files or shared globals unless allowed ---------------


@pytest.mark.parametrize(
    "task",
    [
        Task.lua("return spell.run({lang = 'python', target = 'os:getcwd'})"),
        Task.js("return await spell.run({lang: 'python', target: 'os:getcwd'})"),
        Task.lua("return spell.coordinate({{lang = 'python', target = 'os:getcwd'}}, 'parallel')"),
        Task.lua(
            "return spell.run({kind = 'workflow', payload = {steps = {{id = 'a', "
            "target = 'os:getcwd'}}}})"
        ),
    ],
)
def test_a_script_runs_no_python_target_unless_the_runtime_allows_it(task: Task) -> None:
    with Runtime() as rt:
        h = rt.submit(task)
        try:
            value = rt.result(h, timeout=WAIT)
        except TaskFailed as exc:
            assert "may not run the Python target 'os:getcwd'" in str(exc)
        else:  # a coordination reports its failed tasks instead of raising
            assert value["ok"] is False
            assert "may not run the Python target" in str(value["failed"])
    with Runtime(script_python=["os:getcwd"]) as rt:
        code = "return spell.run({lang = 'python', target = 'os:getcwd'})"
        assert rt.result(rt.submit(Task.lua(code)), timeout=WAIT) == __import__("os").getcwd()


def test_a_script_reads_no_workflow_file(rt: Runtime) -> None:
    code = "return spell.run({kind = 'workflow', payload = spell.args.path})"
    h = rt.submit(Task.lua(code, args={"path": "/etc/hostname"}))
    with pytest.raises(TaskFailed, match="may not load a workflow file"):
        rt.result(h, timeout=WAIT)
    step_file = (
        "return spell.run({kind = 'workflow', "
        "payload = {steps = {{id = 'a', file = '/etc/hostname'}}}})"
    )
    with pytest.raises(TaskFailed, match="may not load a workflow file or a step's file"):
        rt.result(rt.submit(Task.lua(step_file)), timeout=WAIT)


@pytest.mark.parametrize("bad", ["--script-python", ["os"], [5]])
def test_script_python_must_be_patterns(bad: object) -> None:
    with pytest.raises(MessageError, match="script_python"):
        Runtime(script_python=bad)


def test_load_without_a_script_caller_gets_globals_of_its_own(rt: Runtime) -> None:
    writer = "coroutine.wrap(load)(\"secret = 'from A'; tostring = nil\")() return 1"
    assert rt.result(rt.submit(Task.lua(writer)), timeout=WAIT) == 1
    reader = "local s = coroutine.wrap(load)('return secret')() return {type(s), tostring(42)}"
    assert rt.result(rt.submit(Task.lua(reader)), timeout=WAIT) == ["nil", "42"]


def test_a_lone_surrogate_in_a_js_string_crosses_and_loses_nothing(rt: Runtime) -> None:
    hs = rt.submit_many(
        [Task.js("return 1") for _ in range(5)]
        + [Task.js("return '\\ud800'"), Task.js("return {'\\udc00': 1}")]
        + [Task.js("return 2") for _ in range(5)]
    )
    values = [rt.result(h, timeout=WAIT) for h in hs]
    assert values == [1] * 5 + ["\ud800", {"\udc00": 1}] + [2] * 5
    with pytest.raises(TaskFailed, match="Error"):
        rt.result(rt.submit(Task.js("throw new Error('\\ud800')")), timeout=WAIT)


@pytest.mark.parametrize(
    "code",
    [
        "let a = []; for (let i = 0; i < 100000; i++) a = [a]; JSON.stringify(a); return 1",
        "let a = []; for (let i = 0; i < 100000; i++) a = [a]; return JSON.stringify(a, ['x'])",
        "const d = {toJSON() { let a = []; for (let i = 0; i < 100000; i++) a = [a]; return a }};"
        " return JSON.stringify({d})",
    ],
)
def test_stringifying_a_deep_js_value_fails_its_task_not_the_process(
    rt: Runtime, code: str
) -> None:
    with pytest.raises(TaskFailed, match="Maximum call stack size exceeded"):
        rt.result(rt.submit(Task.js(code)), timeout=WAIT)
    deep_log = "let a = {}; for (let i = 0; i < 100000; i++) a = {a}; console.log(a); return 2"
    assert rt.result(rt.submit(Task.js(deep_log)), timeout=WAIT) == 2
    assert rt.result(rt.submit(Task.js("return JSON.stringify({a: [1]}, null, 1)")), timeout=WAIT)


@pytest.mark.parametrize(
    ("task", "message"),
    [
        (Task.lua("return spell.await(spell.task_id)"), "cannot await itself"),
        (Task.js("return await spell.await(spell.task_id)"), "cannot await itself"),
        (
            Task.lua(
                "local a = spell.submit({lang = 'lua', code = 'return 1', id = 'twice'})"
                " local b = spell.submit({lang = 'lua', code = 'return 2', id = 'twice'})"
                " spell.await(a) return spell.await(b)"
            ),
            "duplicate task id 'twice'",
        ),
        (
            Task.lua(
                "return spell.coordinate({{lang = 'lua', code = 'return 1'}}, 'pipeline',"
                " {inputs = 'x'})"
            ),
            "inputs must be a list",
        ),
        (
            Task.js(
                "return await spell.coordinate([{lang: 'lua', code: 'return 1'}], 'pipeline',"
                " {inputs: {a: 1}})"
            ),
            "inputs must be a list",
        ),
    ],
)
def test_script_requests_that_could_never_be_answered_fail_at_once(
    rt: Runtime, task: Task, message: str
) -> None:
    with pytest.raises(TaskFailed, match=message):
        rt.result(rt.submit(task), timeout=WAIT)


def test_thousands_of_distinct_wait_event_patterns_do_not_stall_the_runtime(rt: Runtime) -> None:
    # each subscription once rebuilt one matcher of every pattern: minutes for 2,000
    code = (
        "const ps = []; for (let i = 0; i < 2000; i++)"
        " ps.push(spell.wait_event('never.' + i, 0.2).catch(() => 0));"
        " await Promise.all(ps); return 1"
    )
    assert rt.result(rt.submit(Task.js(code)), timeout=60) == 1
    assert rt.result(rt.submit(Task.lua("return 2")), timeout=WAIT) == 2


def test_a_lua_memory_bomb_is_a_memory_failure_not_an_internal_error() -> None:
    with Runtime(lua_memory=32 * 1024 * 1024) as rt:
        for _ in range(2):
            h = rt.submit(Task.lua("local t = {} for i = 1, 1e9 do t[i] = {i} end"))
            with pytest.raises(TaskFailed, match="Lua memory limit exceeded") as info:
                rt.result(h, timeout=60)
            assert "internal error" not in str(info.value)
        assert rt.result(rt.submit(Task.lua("return 1")), timeout=WAIT) == 1


@pytest.mark.parametrize(
    "task",
    [
        Task.js("return await spell.run({lang: 'lua', code: 'return 1', timeout: NaN})"),
        Task.lua("return spell.run({lang = 'lua', code = 'return 1', timeout = 1/0})"),
        Task.lua("return spell.run({lang = 'lua', code = 'return 1', timeout = 0/0})"),
    ],
)
def test_a_script_submit_timeout_must_be_finite_seconds(rt: Runtime, task: Task) -> None:
    with pytest.raises(TaskFailed, match="timeout must be a positive number of seconds") as info:
        rt.result(rt.submit(task), timeout=WAIT)
    assert "spell.submit: spell.submit" not in str(info.value)


@pytest.mark.parametrize("what", ["tool", "hook", "executor"])
def test_options_on_a_task_template_are_refused_not_dropped(rt: Runtime, what: str) -> None:
    register = getattr(rt, f"register_{what}")
    name = "task.after" if what == "hook" else "templated"
    with pytest.raises(MessageError, match="keeps only its code and args, not retries, timeout"):
        register(name, Task.lua("spell.sleep(5) return 1", timeout=1, retries=3))
    rt.register_tool("templated_ok", Task.lua("return spell.args.a", args={"a": 1}))
    assert rt.result(rt.submit(Task.tool("templated_ok", timeout=5)), timeout=WAIT) == 1


def test_a_nan_wait_event_timeout_is_refused_in_lua_as_in_js(rt: Runtime) -> None:
    with pytest.raises(TaskFailed, match="timeout must be a number of seconds"):
        rt.result(rt.submit(Task.lua("spell.wait_event('x', 0/0)")), timeout=WAIT)
    with pytest.raises(TaskFailed, match="expected a number of seconds"):
        rt.result(rt.submit(Task.js("await spell.wait_event('x', NaN)")), timeout=WAIT)


def test_running_a_js_vm_out_of_memory_says_so() -> None:
    with Runtime(js_memory=32 * 1024 * 1024) as rt:
        h = rt.submit(Task.js("const a = []; for (;;) a.push({})"))
        with pytest.raises(TaskFailed, match="out of memory"):
            rt.result(h, timeout=60)
        assert rt.result(rt.submit(Task.js("return 1")), timeout=WAIT) == 1


def test_lua_errors_from_the_sandbox_wrappers_name_no_prelude_line(rt: Runtime) -> None:
    code = "print(setmetatable({}, {__tostring = function() return {} end}))"
    with pytest.raises(TaskFailed) as info:
        rt.result(rt.submit(Task.lua(code)), timeout=WAIT)
    assert "__tostring" in str(info.value) and "[llmspell]" not in str(info.value)


def test_a_waiting_spell_call_inside_a_c_callback_says_why_it_cannot(rt: Runtime) -> None:
    code = "local t = {3, 1, 2} table.sort(t, function(a, b) spell.sleep(0) return a < b end)"
    with pytest.raises(TaskFailed, match="cannot be made inside a callback that a C function"):
        rt.result(rt.submit(Task.lua(code)), timeout=WAIT)


def test_a_coordination_timeout_bounds_its_rollback_too(rt: Runtime) -> None:
    tasks = [
        Task.lua("return 1", compensate=Task.lua("spell.sleep(3600)")),
        Task.lua("spell.sleep(0.2) error('boom')"),
    ]
    result = rt.coordinate(tasks, Strategy.ALL_OR_NOTHING, timeout=1)
    assert result.ok is False and result.timed_out is True
    assert _wait_for(rt, "running", 0)["running"] == 0  # the compensation was cancelled


def test_a_compensation_id_must_be_new(rt: Runtime) -> None:
    tasks = [
        Task.lua("return 1", id="m1", compensate=Task.lua("return 2", id="m1")),
        Task.lua("error('x')", id="m2"),
    ]
    with pytest.raises(MessageError, match=r"tasks\[0\]\.compensate\.id"):
        rt.coordinate(tasks, Strategy.ALL_OR_NOTHING, timeout=5)


@pytest.mark.parametrize("limit", [1.5, True, "10", 0])
def test_a_subscription_limit_must_be_a_positive_int(rt: Runtime, limit: object) -> None:
    with pytest.raises(MessageError, match="limit: must be an int >= 1"):
        rt.subscribe("x.*", limit=limit)  # type: ignore[arg-type]


def test_a_bad_stream_timeout_submits_nothing(rt: Runtime) -> None:
    with pytest.raises(MessageError, match="timeout"):
        rt.stream(Task.lua("return 1", id="never-submitted"), timeout="x")  # type: ignore[arg-type]
    assert rt.stats()["submitted"] == 0


def test_a_python_hook_that_submits_tasks_does_not_recurse(rt: Runtime) -> None:
    import time

    import targets

    targets.HOOK_RUNTIME["rt"] = rt
    rt.register_hook("task.after", "targets:submitting_hook")
    assert rt.result(rt.submit(Task.lua("return 0")), timeout=WAIT) == 0
    # the task, its hook, the hook's own task (whose end triggers no hook): then quiet
    deadline = time.monotonic() + WAIT
    while rt.stats()["submitted"] < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.5)
    assert rt.stats()["submitted"] == 3


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
