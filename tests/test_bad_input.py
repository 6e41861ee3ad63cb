"""Bad input gets one clear error and loses nothing, never a hang: dependency
cycles, failures at the head of long dependency chains, data nested too deeply,
and ill-typed arguments of the coordination and task options."""

from __future__ import annotations

import pytest

from llmspell import MessageError, Runtime, Strategy, Task, TaskFailed

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


def test_a_huge_retry_backoff_cap_is_no_problem() -> None:
    with Runtime(retry_backoff_cap=1e12) as rt:
        assert rt.result(rt.submit(Task.lua("return 1")), timeout=WAIT) == 1


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
