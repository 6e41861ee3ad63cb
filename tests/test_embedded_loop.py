"""An embedded runtime on its in-process actor loop (``llmspell._loop``), run
by whichever thread waits (``_driver.EmbeddedDriver``): what a user could
break from the outside."""

from __future__ import annotations

import _thread
import asyncio
import itertools
import random
import signal
import threading

import pytest

from llmspell import AsyncRuntime, Runtime, Strategy, Task, TaskFailed


def test_a_retried_stage_gets_the_input_it_was_first_given() -> None:
    # the function writes into its input and fails: the re-run gets the original
    with Runtime() as rt:
        first = Task.python("loop_targets:count_in_input", retries=1)
        piped = rt.coordinate([Task.lua("return {x = 1}"), first], Strategy.PIPELINE, timeout=10)
        assert not piped.ok
        assert piped.failed == [(1, "RuntimeError: run 1 of this input")]
        many = rt.coordinate(
            [Task.python("loop_targets:count_in_input", retries=2)],
            Strategy.PIPELINE,
            inputs=[{"a": 1}, {"b": 2}],
            timeout=10,
        )
        assert many.results == [None, None]


def test_a_retried_agent_gets_the_input_it_was_first_given() -> None:
    with Runtime() as rt:
        rt.register_agent("counting", "loop_targets:CountingAgent")
        h = rt.submit(Task.agent("counting", {"x": 1}, retries=1))
        with pytest.raises(TaskFailed, match="run 1 of this input"):
            rt.result(h, timeout=10)


# A Lua loop that computes for a while without yielding once (~0.1-0.3 s here)
_BUSY = "local x = 0 for i = 1, 8e6 do x = x + i % 7 end return x"


def test_an_await_leaves_the_event_loop_free_while_a_script_computes() -> None:
    # other coroutines go on while an awaited script computes (its one long resume
    # runs on a thread of the runtime's, never on the event loop's)
    async def main() -> list[int]:
        ticks = [0]

        async def ticker() -> None:
            while True:
                await asyncio.sleep(0.001)
                ticks[0] += 1

        seen = []
        async with AsyncRuntime(step_budget=60) as rt:
            beat = asyncio.ensure_future(ticker())
            try:
                for _ in range(3):
                    h = await rt.submit(Task.lua(_BUSY))
                    before = ticks[0]
                    assert await rt.result(h, timeout=60) == 23999998
                    seen.append(ticks[0] - before)
            finally:
                beat.cancel()
        return seen

    seen = asyncio.run(main())
    assert min(seen) > 0, f"ticks while each script computed: {seen}"


def test_ctrl_c_in_a_waiting_main_thread_leaves_the_runtime_whole() -> None:
    # the main thread runs the actors while it waits: a KeyboardInterrupt must stop
    # the wait, never an actor halfway through a message (later tasks end right)
    rng = random.Random(15)
    wrong = []
    handler = signal.getsignal(signal.SIGINT)
    with Runtime() as rt:
        for _ in range(100):
            timer = threading.Timer(rng.random() * 0.01, _thread.interrupt_main)
            try:
                timer.start()  # (a short delay can interrupt this start already)
                for n in itertools.count():
                    task = [
                        Task.lua("return 1"),
                        Task.js("return 1"),
                        Task.python("loop_targets:same", args={"input": 1}),
                    ][n % 3]
                    rt.result(rt.submit(task), timeout=10)
            except KeyboardInterrupt:
                pass
            timer.join()
            after = rt.submit_many(
                [
                    Task.lua("return 2"),
                    Task.js("return 2"),
                    Task.python("loop_targets:same", args={"input": 2}),
                ]
            )
            values = []
            for h in after:
                try:
                    values.append(rt.result(h, timeout=10))
                except Exception as exc:
                    values.append(repr(exc))
            if values != [2, 2, 2]:
                wrong.append(values)
    assert wrong == []
    assert signal.getsignal(signal.SIGINT) is handler  # the application's handler is back


def test_a_task_submitted_by_a_thread_that_then_waits_elsewhere_still_runs() -> None:
    # the thread that drove the loop last submits and then waits on something of its
    # own (no runtime call): the background thread takes the task all the same
    import loop_targets

    with Runtime() as rt:
        for i in range(20):
            name = f"elsewhere-{i}"
            loop_targets.EVENTS[name] = threading.Event()
            assert rt.result(rt.submit(Task.lua("return 1")), timeout=10) == 1  # drove
            h = rt.submit(Task.python("loop_targets:set_event", args={"name": name}))
            assert loop_targets.EVENTS[name].wait(10), f"round {i}: the task never ran"
            assert rt.result(h, timeout=10) is True


def test_a_call_queued_behind_a_blocked_call_gets_a_thread_of_its_own() -> None:
    # the first call waits for the second: the second must not wait for a thread
    # the first holds (its engine adds one when a call is queued behind busy ones)
    import loop_targets

    with Runtime(python_threads=4) as rt:
        for i in range(10):
            name = f"behind-{i}"
            loop_targets.EVENTS[name] = threading.Event()
            hs = rt.submit_many(
                [
                    Task.python("loop_targets:wait_event", args={"name": name}),
                    Task.python("loop_targets:set_event", args={"name": name}),
                ]
            )
            assert [rt.result(h, timeout=30) for h in hs] == [True, True]


def test_changing_a_tasks_args_after_submit_does_not_change_what_runs() -> None:
    with Runtime() as rt:
        task = Task.python("loop_targets:same", args={"input": 1})
        h = rt.submit(task)
        assert task.args is not None
        task.args["input"] = 2
        assert rt.result(h, timeout=10) == 1
        script = Task.lua("return spell.args.n", args={"n": 1})
        h = rt.submit(script)
        assert script.args is not None
        script.args["n"] = 2
        assert rt.result(h, timeout=10) == 1


def test_the_facade_keeps_its_own_copy_of_what_the_scheduler_hands_it() -> None:
    # An embedded runtime hands the facade the scheduler's own outcome objects
    # (SharedOutcomes, never encoded); the scheduler keeps them for dependents. What
    # the facade keeps or gives a caller must be a copy, or a caller that changes
    # a result would change what a later dependent of that task gets.
    from llmspell._loop import own_outcome
    from llmspell._runtime.core import _ended_entry
    from llmspell.messages.types import TaskOutcome

    value = {"items": [1, 2], "nested": {"k": "v"}}
    error = {"message": "no", "data": {"tries": [1]}}
    usage = {"cpu_seconds": 0.1, "duration": 0.2, "spans": [{"name": "x"}]}
    sent = TaskOutcome("t-1", "failed", value, error, usage)
    status, kept_value, kept_error, kept_usage, _ = _ended_entry(sent, shared=True)
    assert (status, kept_value) == ("failed", value) and kept_value is not value
    assert kept_error is not None and dict(kept_error) == error
    assert dict(kept_error)["data"] is not error["data"]
    assert kept_usage is not None and dict(kept_usage)["spans"] is not usage["spans"]
    mine = own_outcome(sent)
    assert mine == sent
    assert mine.value is not value and mine.error is not error and mine.usage is not usage
    plain = TaskOutcome("t-2", "succeeded", 3, None, {"cpu_seconds": 0.1, "duration": 0.2})
    assert _ended_entry(plain, shared=True) == ("succeeded", 3, None, 0.1, 0.2)
