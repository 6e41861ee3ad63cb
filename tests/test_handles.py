"""Handles as futures: ``h.result/cancel/status/progress``, ``await h``,
``rt.wait`` and ``rt.as_completed``, in ``Runtime``, ``AsyncRuntime`` and a
``Simulation``."""

from __future__ import annotations

import asyncio

import pytest
from helpers import WAIT

from llmspell import (
    AsyncRuntime,
    Handle,
    MessageError,
    Runtime,
    ScriptError,
    Task,
    TaskCancelled,
)
from llmspell.testing import Simulation

SLOW = "spell.sleep(30) return 'slow'"


# -- Runtime -----------------------------------------------------------------------


def test_handle_methods_are_the_runtimes_calls(rt: Runtime) -> None:
    h = rt.submit(Task.lua("spell.progress(1, 2, 'half') return spell.args.x * 2", args={"x": 4}))
    assert h.result(timeout=10) == 8
    assert h.status() == "succeeded"
    progress = h.progress()
    assert progress is not None and progress.completed_steps == 1
    assert h.cancel() is False  # it had ended


def test_handle_cancel_and_its_errors(rt: Runtime) -> None:
    slow = rt.submit(Task.lua(SLOW))
    with pytest.raises(TimeoutError):
        slow.result(timeout=0.05)
    assert slow.status() in ("pending", "running")
    assert slow.cancel() is True
    with pytest.raises(TaskCancelled):
        slow.result(timeout=10)
    assert slow.status() == "cancelled"
    bad = rt.submit(Task.lua("error('boom')"))
    with pytest.raises(ScriptError, match="boom"):
        bad.result(timeout=10)


def test_a_handle_made_by_hand_is_bound_to_no_runtime() -> None:
    with pytest.raises(MessageError, match="bound to no runtime"):
        Handle("t1").result()


def test_a_runtimes_handle_is_not_awaitable(rt: Runtime) -> None:
    h = rt.submit(Task.lua("return 1"))

    async def wait() -> None:
        await h

    with pytest.raises(TypeError, match="not awaitable"):
        asyncio.run(wait())


def test_wait_all_and_first(rt: Runtime) -> None:
    fast = rt.submit_many([Task.lua("return 1"), Task.js("return 2")])
    slow = rt.submit(Task.lua(SLOW))
    done, pending = rt.wait([*fast, slow], return_when="first", timeout=10)
    assert slow not in done and set(done) <= set(fast) and done
    done, pending = rt.wait([*fast, slow], timeout=0.2)
    assert (done, pending) == (fast, [slow])  # the timeout ran out: no error, slow is pending
    rt.cancel(slow)
    done, pending = rt.wait([slow, *fast, fast[0]], timeout=10)  # a task named twice: once
    assert (done, pending) == ([slow, *fast], [])
    assert rt.wait([]) == ([], [])


def test_wait_refuses_bad_arguments(rt: Runtime) -> None:
    h = rt.submit(Task.lua("return 1"))
    with pytest.raises(MessageError, match="return_when"):
        rt.wait([h], return_when="any")
    with pytest.raises(MessageError, match="list of Handles"):
        rt.wait(h)  # type: ignore[arg-type]
    with pytest.raises(MessageError, match="timeout"):
        rt.wait([h], timeout="soon")  # type: ignore[arg-type]
    with pytest.raises(MessageError, match="unknown task"):
        rt.wait(["no-such-task"])


def test_as_completed_yields_in_the_order_tasks_end(rt: Runtime) -> None:
    late = rt.submit(Task.lua("spell.sleep(0.3) return 'late'"))
    early = rt.submit(Task.lua("return 'early'"))
    got = list(rt.as_completed([late, early], timeout=30))
    assert got == [early, late]
    assert [h.result() for h in got] == ["early", "late"]


def test_as_completed_raises_timeout_error_and_the_tasks_go_on(rt: Runtime) -> None:
    quick = rt.submit(Task.lua("return 1"))
    slow = rt.submit(Task.lua(SLOW))
    seen = []
    with pytest.raises(TimeoutError, match="1 of 2 tasks did not finish"):
        for h in rt.as_completed([slow, quick], timeout=0.2):
            seen.append(h)
    assert seen == [quick]
    assert slow.status() in ("pending", "running")
    slow.cancel()


def test_as_completed_checks_its_arguments_at_the_call(rt: Runtime) -> None:
    with pytest.raises(MessageError, match="timeout"):
        rt.as_completed([], timeout=-float("nan"))
    assert list(rt.as_completed([])) == []


# -- AsyncRuntime ------------------------------------------------------------------


def test_async_handles_are_awaitable_and_wait() -> None:
    async def main() -> None:
        async with AsyncRuntime() as rt:
            h = await rt.submit(Task.lua("return 6 * 7"))
            assert await h == 42
            assert h.status() == "succeeded"  # the blocking calls work on it too
            slow = await rt.submit(Task.lua(SLOW))
            quick = await rt.submit(Task.js("return 'quick'"))
            done, pending = await rt.wait([slow, quick], return_when="first", timeout=10)
            assert (done, pending) == ([quick], [slow])
            done, pending = await rt.wait([slow, quick], timeout=0.1)
            assert (done, pending) == ([quick], [slow])
            with pytest.raises(MessageError, match="return_when"):
                await rt.wait([slow], return_when="none")
            order = []
            with pytest.raises(TimeoutError, match="1 of 2"):
                async for x in rt.as_completed([slow, quick], timeout=0.2):
                    order.append(x)
            assert order == [quick]
            assert slow.cancel() is True
            with pytest.raises(TaskCancelled):
                await slow
            got = [x async for x in rt.as_completed([slow, quick])]
            assert got == [slow, quick]  # both had ended: in the order given

    asyncio.run(main())


# -- Simulation (virtual time) ------------------------------------------------------


def test_handles_in_a_simulation_run_on_virtual_time() -> None:
    with Simulation(seed=5) as sim:
        hour = sim.submit(Task.lua("spell.sleep(3600) return 'hour'"))
        minute = sim.submit(Task.lua("spell.sleep(60) return 'minute'"))
        assert list(sim.as_completed([hour, minute])) == [minute, hour]
        assert hour.result() == "hour" and sim.now() >= 3600
        day = sim.submit(Task.lua("spell.sleep(86400) return 'day'"))
        done, pending = sim.wait([day], timeout=10)
        assert (done, pending) == ([], [day])
        assert day.result() == "day"


def test_result_by_id_of_a_task_this_runtime_did_not_submit() -> None:
    """A script's child is reachable by its id (as a task of an earlier
    process on the same journal is): ``result`` waits for it like any other."""
    with Runtime() as rt:
        parent = rt.submit(
            Task.lua('spell.submit({lang="lua", code="spell.sleep(0.05) return 5", id="kid"})')
        )
        rt.result(parent, timeout=10)
        assert rt.result("kid", timeout=10) == 5
        with pytest.raises(MessageError, match="unknown task 'nobody'"):
            rt.result("nobody", timeout=10)


# -- moved from test_bad_input.py: bad input to this feature ----------------------------


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
