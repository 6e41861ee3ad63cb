"""The embedded Runtime, through its public API: values, dependencies, cancel,
timeouts, priorities, result timeouts, bad input, lifecycle."""

from __future__ import annotations

import asyncio
import time

import pytest
import targets
from helpers import WAIT, stats_when

from llmspell import (
    AsyncRuntime,
    Handle,
    MessageError,
    Runtime,
    RuntimeClosed,
    Task,
    TaskCancelled,
    TaskFailed,
    TaskTimeout,
)


def wait_status(rt: Runtime, h: Handle, status: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while rt.status(h) != status:
        assert time.monotonic() < deadline, f"status stayed {rt.status(h)!r}, wanted {status!r}"
        time.sleep(0.005)


# -- values ---------------------------------------------------------------------


def test_sync_callable_returns_its_value(rt: Runtime) -> None:
    h = rt.submit(Task.python("targets:add", args={"x": 20, "y": 22}))
    assert rt.result(h, timeout=5) == 42
    assert rt.status(h) == "succeeded"
    assert rt.is_completed(h)


def test_async_callable_returns_its_value(rt: Runtime) -> None:
    h = rt.submit(Task.python("targets:aadd", args={"x": 1, "y": 2}))
    assert rt.result(h, timeout=5) == 3


def test_function_object_is_accepted_as_target(rt: Runtime) -> None:
    h = rt.submit(Task.python(targets.add, args={"x": 2, "y": 3}))
    assert rt.result(h, timeout=5) == 5


def test_structured_values_round_trip(rt: Runtime) -> None:
    value = {"a": [1, 2.5, None, True, "s", b"\x00\xff"], "b": {"c": -(2**40)}}
    h = rt.submit(Task.python("targets:echo", args={"value": value}))
    assert rt.result(h, timeout=5) == {"value": value, "input": None}


def test_failure_raises_task_failed_with_message_and_traceback(rt: Runtime) -> None:
    h = rt.submit(Task.python("targets:fail", args={"message": "no good"}))
    with pytest.raises(TaskFailed) as info:
        rt.result(h, timeout=5)
    assert info.value.message == "ValueError: no good"
    assert info.value.engine == "python"
    assert "targets.py" in info.value.traceback
    assert rt.status(h) == "failed"


def test_async_failure_raises_task_failed(rt: Runtime) -> None:
    h = rt.submit(Task.python("targets:afail"))
    with pytest.raises(TaskFailed, match="RuntimeError: async boom"):
        rt.result(h, timeout=5)


def test_unimportable_target_fails_clearly(rt: Runtime) -> None:
    h = rt.submit(Task.python("no_such_module_xyz:f"))
    with pytest.raises(TaskFailed, match="cannot import 'no_such_module_xyz:f'"):
        rt.result(h, timeout=5)
    h2 = rt.submit(Task.python("targets:not_callable"))
    with pytest.raises(TaskFailed, match="not callable"):
        rt.result(h2, timeout=5)


def test_wrong_arguments_fail_the_task(rt: Runtime) -> None:
    h = rt.submit(Task.python("targets:add", args={"x": 1}))
    with pytest.raises(TaskFailed, match="TypeError"):
        rt.result(h, timeout=5)


def test_return_value_that_is_not_msgpack_data_fails_the_task(rt: Runtime) -> None:
    h = rt.submit(Task.python("targets:not_msgpack"))
    with pytest.raises(TaskFailed, match="not msgpack data"):
        rt.result(h, timeout=5)
    # the engine goes on
    assert rt.result(rt.submit(Task.python("targets:add", args={"x": 1, "y": 1})), 5) == 2


def test_submit_many_returns_handles_in_order(rt: Runtime) -> None:
    hs = rt.submit_many([Task.python("targets:add", args={"x": i, "y": 0}) for i in range(50)])
    assert [rt.result(h, timeout=10) for h in hs] == list(range(50))


def test_own_task_id_is_used(rt: Runtime) -> None:
    h = rt.submit(Task.python("targets:add", args={"x": 1, "y": 1}, id="mine"))
    assert h == Handle("mine")
    assert rt.result("mine", timeout=5) == 2


# -- dependencies ----------------------------------------------------------------


def test_dependency_chain_runs_in_order(rt: Runtime) -> None:
    targets.log.clear()
    a = rt.submit(Task.python("targets:record", args={"name": "a"}))
    b = rt.submit(Task.python("targets:record", args={"name": "b"}, deps=[a]))
    c = rt.submit(Task.python("targets:record", args={"name": "c"}, deps=[b]))
    assert rt.result(c, timeout=5) == "c"
    assert targets.log == ["a", "b", "c"]


def test_failed_dependency_fails_dependents_with_clear_error(rt: Runtime) -> None:
    a = rt.submit(Task.python("targets:fail", args={"message": "root cause"}))
    b = rt.submit(Task.python("targets:add", args={"x": 1, "y": 1}, deps=[a]))
    c = rt.submit(Task.python("targets:add", args={"x": 1, "y": 1}, deps=[b]))
    with pytest.raises(TaskFailed) as info:
        rt.result(b, timeout=5)
    assert f"dependency {a.id!r} failed" in info.value.message
    assert "root cause" in info.value.message
    with pytest.raises(TaskFailed, match=f"dependency {b.id!r} failed"):
        rt.result(c, timeout=5)


def test_cancelled_dependency_fails_dependents(rt: Runtime) -> None:
    a = rt.submit(Task.python("targets:wait_gate", args={"name": "never-dep"}))
    b = rt.submit(Task.python("targets:add", args={"x": 1, "y": 1}, deps=[a]))
    assert rt.cancel(a)
    with pytest.raises(TaskFailed, match=f"dependency {a.id!r} was cancelled"):
        rt.result(b, timeout=5)
    assert rt.status(b) == "failed"
    targets.gate("never-dep").set()


def test_dependency_on_finished_task_runs(rt: Runtime) -> None:
    a = rt.submit(Task.python("targets:add", args={"x": 1, "y": 1}))
    rt.result(a, timeout=5)
    b = rt.submit(Task.python("targets:add", args={"x": 2, "y": 2}, deps=[a.id]))
    assert rt.result(b, timeout=5) == 4


def test_dependency_listed_before_it_is_submitted_in_one_batch(rt: Runtime) -> None:
    first = Task.python("targets:add", args={"x": 1, "y": 1}, id="later")
    dependent = Task.python("targets:add", args={"x": 5, "y": 5}, deps=["later"])
    hs = rt.submit_many([dependent, first])
    assert rt.result(hs[0], timeout=5) == 10


def test_unknown_dependency_fails_the_task(rt: Runtime) -> None:
    h = rt.submit(Task.python("targets:add", args={"x": 1, "y": 1}, deps=["nope"]))
    with pytest.raises(TaskFailed, match="unknown dependency 'nope'"):
        rt.result(h, timeout=5)


# -- cancel ------------------------------------------------------------------------


def test_cancel_pending_task(rt: Runtime) -> None:
    blocker = rt.submit(Task.python("targets:wait_gate", args={"name": "cp-block"}))
    waiting = rt.submit(Task.python("targets:add", args={"x": 1, "y": 1}, deps=[blocker]))
    assert rt.status(waiting) == "pending"
    assert rt.cancel(waiting) is True
    assert rt.status(waiting) == "cancelled"
    with pytest.raises(TaskCancelled):
        rt.result(waiting, timeout=5)
    targets.gate("cp-block").set()
    assert rt.result(blocker, timeout=5) == "cp-block"


def test_cancel_running_sync_task_ends_it_cancelled_at_once(rt: Runtime) -> None:
    h = rt.submit(Task.python("targets:wait_gate", args={"name": "cr-sync"}))
    wait_status(rt, h, "running")
    assert rt.cancel(h) is True
    with pytest.raises(TaskCancelled):
        rt.result(h, timeout=1)
    targets.gate("cr-sync").set()  # the thread finishes later; its value is dropped
    time.sleep(0.05)
    assert rt.status(h) == "cancelled"


def test_cancel_running_async_task_cancels_the_coroutine(rt: Runtime) -> None:
    h_name = "cr-async"
    h = rt.submit(Task.python("targets:await_forever", args={"name": h_name}))
    wait_status(rt, h, "running")
    assert rt.cancel(h)
    with pytest.raises(TaskCancelled):
        rt.result(h, timeout=1)
    deadline = time.monotonic() + 5
    while h_name not in targets.cancelled_coroutines:
        assert time.monotonic() < deadline, "the coroutine never saw CancelledError"
        time.sleep(0.01)


def test_cancel_finished_task_returns_false(rt: Runtime) -> None:
    h = rt.submit(Task.python("targets:add", args={"x": 1, "y": 1}))
    rt.result(h, timeout=5)
    assert rt.cancel(h) is False
    assert rt.status(h) == "succeeded"


def test_cancel_is_idempotent(rt: Runtime) -> None:
    h = rt.submit(Task.python("targets:wait_gate", args={"name": "idem"}))
    assert rt.cancel(h) is True
    assert rt.cancel(h) is False
    targets.gate("idem").set()


# -- timeouts ----------------------------------------------------------------------


def test_task_timeout_ends_it_timed_out(rt: Runtime) -> None:
    h = rt.submit(Task.python("targets:sleep", args={"seconds": 3}, timeout=0.2))
    with pytest.raises(TaskTimeout, match=r"within its timeout of 0\.2 s"):
        rt.result(h, timeout=5)
    assert rt.status(h) == "timed_out"


def test_async_task_timeout_cancels_the_coroutine(rt: Runtime) -> None:
    h = rt.submit(Task.python("targets:await_forever", args={"name": "to-async"}, timeout=0.1))
    with pytest.raises(TaskTimeout):
        rt.result(h, timeout=5)
    deadline = time.monotonic() + 5
    while "to-async" not in targets.cancelled_coroutines:
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_result_timeout_raises_builtin_timeout_error_and_leaves_task_running(rt: Runtime) -> None:
    h = rt.submit(Task.python("targets:wait_gate", args={"name": "rt-timeout"}))
    with pytest.raises(TimeoutError) as info:
        rt.result(h, timeout=0.1)
    assert not isinstance(info.value, TaskTimeout)
    assert rt.status(h) == "running"
    targets.gate("rt-timeout").set()
    assert rt.result(h, timeout=5) == "rt-timeout"


def test_fast_task_beats_its_timeout(rt: Runtime) -> None:
    h = rt.submit(Task.python("targets:add", args={"x": 1, "y": 1}, timeout=5))
    assert rt.result(h, timeout=5) == 2


# -- worker threads --------------------------------------------------------------------


def test_slow_sync_calls_run_in_parallel_threads(rt: Runtime) -> None:
    # each call returns only when all eight run at the same time
    hs = rt.submit_many(
        [Task.python("targets:meet", args={"name": "eight", "parties": 8}) for _ in range(8)]
    )
    assert sorted(rt.result(h, timeout=15) for h in hs) == list(range(8))


def test_calls_queued_behind_long_calls_get_threads_of_their_own(rt: Runtime) -> None:
    # two batches: the second arrives while the first's calls block their threads
    first = rt.submit_many(
        [Task.python("targets:meet", args={"name": "two-batches", "parties": 6}) for _ in range(3)]
    )
    wait_status(rt, first[0], "running")
    second = rt.submit_many(
        [Task.python("targets:meet", args={"name": "two-batches", "parties": 6}) for _ in range(3)]
    )
    assert sorted(rt.result(h, timeout=15) for h in first + second) == list(range(6))


def test_thread_pool_size_caps_parallel_calls() -> None:
    with Runtime(python_threads=2) as rt:
        hs = rt.submit_many(
            [Task.python("targets:meet", args={"name": "capped", "parties": 3, "timeout": 1})] * 3
        )
        errors = []
        for h in hs:
            with pytest.raises(TaskFailed) as info:
                rt.result(h, timeout=15)
            errors.append(str(info.value))
    assert all("BrokenBarrierError" in e for e in errors)


# -- priorities ----------------------------------------------------------------------


def test_higher_priority_runs_first_when_work_is_queued() -> None:
    targets.log.clear()
    with Runtime(python_threads=1) as rt:
        blocker = rt.submit(Task.python("targets:wait_gate", args={"name": "prio"}))
        wait_status(rt, blocker, "running")
        order = ["low", "normal", "high", "critical", "low", "high"]
        hs = [
            rt.submit(Task.python("targets:record", args={"name": f"{p}{i}"}, priority=p))
            for i, p in enumerate(order)
        ]
        targets.gate("prio").set()
        for h in hs:
            rt.result(h, timeout=5)
    assert targets.log == ["critical3", "high2", "high5", "normal1", "low0", "low4"]


# -- retries ------------------------------------------------------------------------


def test_retries_rerun_a_failed_task(rt: Runtime) -> None:
    h = rt.submit(Task.python("targets:flaky", args={"key": "r1", "failures": 2}, retries=2))
    assert rt.result(h, timeout=5) == 3


def test_retries_run_out_and_the_error_lists_every_attempt(rt: Runtime) -> None:
    h = rt.submit(Task.python("targets:flaky", args={"key": "r2", "failures": 5}, retries=1))
    with pytest.raises(TaskFailed) as info:
        rt.result(h, timeout=5)
    assert info.value.attempts == [
        "RuntimeError: attempt 1 failed",
        "RuntimeError: attempt 2 failed",
    ]


# -- progress and stats ----------------------------------------------------------------


def test_progress_of_finished_task_keeps_its_figures(rt: Runtime) -> None:
    h = rt.submit(Task.python("targets:sleep", args={"seconds": 0.05}))
    rt.result(h, timeout=5)
    p = rt.progress(h)
    assert p is not None
    assert p.resource_usage.duration >= 0.04
    assert p.estimated_completion is not None


def test_progress_is_none_before_anything_was_reported(rt: Runtime) -> None:
    h = rt.submit(Task.python("targets:wait_gate", args={"name": "prog"}))
    assert rt.progress(h) is None
    targets.gate("prog").set()
    rt.result(h, timeout=5)


def test_stats_count_tasks_per_status(rt: Runtime) -> None:
    ok = rt.submit(Task.python("targets:add", args={"x": 1, "y": 1}))
    bad = rt.submit(Task.python("targets:fail"))
    rt.result(ok, timeout=5)
    with pytest.raises(TaskFailed):
        rt.result(bad, timeout=5)
    stats = rt.stats()
    assert stats["submitted"] == 2
    assert stats["succeeded"] == 1
    assert stats["failed"] == 1
    assert stats["running"] == 0
    assert stats["restarts"] == 0
    engines = {e["engine"] for e in stats["engines"]}
    assert "python" in engines
    assert all(isinstance(e["pid"], int) for e in stats["engines"])


# -- bad input --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "where"),
    [
        (lambda: Task.python("targets:add", args={"x": object()}), "args.x"),
        (lambda: Task.python("targets:add", args={"x": {1: 2}}), "args.x"),
        (lambda: Task.python("targets:add", args={"x": 2**70}), "args.x"),
        (lambda: Task.python("targets:add", colour="red"), None),
        (lambda: Task.python("targets:add", priority="urgent"), "priority"),
        (lambda: Task.python("targets:add", timeout=-1), "timeout"),
        (lambda: Task.python("targets:add", retries=-1), "retries"),
        (lambda: Task.python("targets:add", deps="abc"), "deps"),
        (lambda: Task.python("no colon"), "target"),
        (lambda: Task.lua(42), "code"),  # type: ignore[arg-type]
    ],
)
def test_malformed_tasks_raise_message_error_at_once(make, where) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(MessageError) as info:
        make()
    assert info.value.where == where


def test_cyclic_args_are_rejected() -> None:
    args: dict[str, object] = {}
    args["self"] = args
    with pytest.raises(MessageError, match="cycle"):
        Task.python("targets:add", args=args)


def test_duplicate_id_raises_and_queues_nothing(rt: Runtime) -> None:
    rt.submit(Task.python("targets:add", args={"x": 1, "y": 1}, id="dup"))
    with pytest.raises(MessageError, match="duplicate task id 'dup'"):
        rt.submit(Task.python("targets:add", args={"x": 2, "y": 2}, id="dup"))
    with pytest.raises(MessageError, match="duplicate"):
        rt.submit_many([Task.python("targets:add", args={"x": 1, "y": 1}, id="twin")] * 2)
    assert rt.result("dup", timeout=5) == 2
    assert rt.stats()["submitted"] == 1


def test_unknown_handle_is_a_message_error(rt: Runtime) -> None:
    with pytest.raises(MessageError, match="unknown task"):
        rt.result("never-submitted")


def test_unknown_runtime_option_or_mode() -> None:
    with pytest.raises(MessageError, match="unknown runtime option"):
        Runtime(colour="blue")
    with pytest.raises(MessageError, match="unknown mode"):
        Runtime(mode="galactic")


def test_kinds_without_an_engine_yet_fail_clearly(rt: Runtime) -> None:
    h = rt.submit(Task.custom("nobody-registered", {"x": 1}))
    with pytest.raises(TaskFailed, match="custom"):
        rt.result(h, timeout=5)


def test_event_task_succeeds_and_can_be_a_dependency(rt: Runtime) -> None:
    e = rt.submit(Task.event("my.event", {"x": 1}))
    after = rt.submit(Task.python("targets:add", args={"x": 1, "y": 2}, deps=[e]))
    assert rt.result(after, timeout=5) == 3
    assert rt.result(e, timeout=5) is None


# -- lifecycle ------------------------------------------------------------------------------


def test_close_is_idempotent_and_later_calls_raise() -> None:
    rt = Runtime()
    h = rt.submit(Task.python("targets:wait_gate", args={"name": "close"}))
    rt.close()
    rt.close()
    with pytest.raises(RuntimeClosed):
        rt.submit(Task.python("targets:add", args={"x": 1, "y": 1}))
    with pytest.raises(TaskCancelled):
        rt.result(h, timeout=1)
    targets.gate("close").set()


def test_context_manager_closes() -> None:
    with Runtime() as rt:
        assert rt.state.value == "open"
    assert rt.state.value == "closed"


def test_two_runtimes_in_one_process_are_independent() -> None:
    with Runtime() as a, Runtime() as b:
        ha = a.submit(Task.python("targets:add", args={"x": 1, "y": 1}, id="same"))
        hb = b.submit(Task.python("targets:add", args={"x": 2, "y": 2}, id="same"))
        assert a.result(ha, timeout=5) == 2
        assert b.result(hb, timeout=5) == 4


# -- AsyncRuntime -----------------------------------------------------------------------------


def test_async_runtime_offers_the_same_calls() -> None:
    async def main() -> None:
        async with AsyncRuntime() as rt:
            h = await rt.submit(Task.python("targets:aadd", args={"x": 2, "y": 3}))
            assert await rt.result(h) == 5
            assert await rt.status(h) == "succeeded"
            slow = await rt.submit(Task.python("targets:wait_gate", args={"name": "async-rt"}))
            with pytest.raises(TimeoutError):
                await rt.result(slow, timeout=0.05)
            assert await rt.cancel(slow)
            with pytest.raises(TaskCancelled):
                await rt.result(slow)
            hs = await rt.submit_many(
                [Task.python("targets:add", args={"x": i, "y": i}) for i in range(20)]
            )
            assert await asyncio.gather(*(rt.result(h) for h in hs)) == [2 * i for i in range(20)]
            assert (await rt.stats())["submitted"] == 22
        targets.gate("async-rt").set()

    asyncio.run(main())


# -- big batches -------------------------------------------------------------------------


def test_a_big_batch_runs_every_task_once_in_submission_order() -> None:
    targets.log.clear()
    with Runtime(python_threads=1) as rt:
        hs = rt.submit_many(
            [Task.python("targets:record", args={"name": f"t{i}"}) for i in range(1500)]
        )
        assert [rt.result(h, timeout=30) for h in hs] == [f"t{i}" for i in range(1500)]
    assert targets.log == [f"t{i}" for i in range(1500)]


def test_a_big_batch_may_depend_on_a_task_listed_after_it(rt: Runtime) -> None:
    tasks = [Task.python("targets:add", args={"x": i, "y": 0}) for i in range(1500)]
    last = Task.python("targets:add", args={"x": 7, "y": 0}, id="big-batch-last")
    first = Task.python("targets:echo", args={"value": 1}, deps=["big-batch-last"])
    hs = rt.submit_many([first, *tasks, last])
    assert rt.result(hs[0], timeout=30) == {"value": 1, "input": None}
    assert rt.result(hs[-1], timeout=30) == 7
    assert sum(rt.result(h, timeout=30) for h in hs[1:-1]) == sum(range(1500))


# -- moved from test_bad_input.py: bad input to this feature ----------------------------


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


_PARENT = """
local child = spell.submit({lang = 'lua', code = 'spell.sleep(30) return 1'})
spell.await(child)
"""


def test_cancelling_a_task_cancels_the_children_it_is_still_running(rt: Runtime) -> None:
    parent = rt.submit(Task.lua(_PARENT))
    assert stats_when(rt, "running", 2)["running"] == 2  # the parent and its child
    assert rt.cancel(parent) is True
    stats = stats_when(rt, "cancelled", 2)
    assert stats["cancelled"] == 2 and stats["running"] == 0


def test_a_task_that_times_out_cancels_its_children(rt: Runtime) -> None:
    parent = rt.submit(Task.lua(_PARENT, timeout=0.3))
    with pytest.raises(TaskTimeout):
        rt.result(parent, timeout=WAIT)
    stats = stats_when(rt, "cancelled", 1)
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
    assert stats_when(rt, "running", 0)["running"] == 0
