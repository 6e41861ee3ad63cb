"""Bounded memory: the scheduler keeps the last ``history`` finished tasks and
forgets older ones, without the user losing a result they were given."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import targets
from conftest import SCRIPT_PYTHON

from llmspell import MessageError, Runtime, Task, TaskFailed

WAIT = 10


def run_all(rt: Runtime, n: int) -> None:
    """Finish ``n`` trivial tasks (pushing older ones out of the history)."""
    hs = rt.submit_many([Task.python("targets:add", args={"x": i, "y": 0}) for i in range(n)])
    assert [rt.result(h, timeout=WAIT) for h in hs] == list(range(n))


def test_forgotten_tasks_keep_their_results_status_and_usage() -> None:
    with Runtime(history=2, script_python=SCRIPT_PYTHON) as rt:
        first = rt.submit(Task.python("targets:add", args={"x": 40, "y": 2}))
        assert rt.result(first, timeout=WAIT) == 42
        run_all(rt, 10)
        assert rt.result(first) == 42
        assert rt.status(first) == "succeeded"
        progress = rt.progress(first)
        assert progress is not None
        assert progress.resource_usage.duration >= 0


def test_a_dependency_on_a_forgotten_task_goes_by_its_status() -> None:
    with Runtime(history=2, script_python=SCRIPT_PYTHON) as rt:
        ok = rt.submit(Task.python("targets:add", args={"x": 1, "y": 1}))
        bad = rt.submit(Task.python("targets:fail", args={"message": "early"}))
        assert rt.result(ok, timeout=WAIT) == 2
        with pytest.raises(TaskFailed):
            rt.result(bad, timeout=WAIT)
        run_all(rt, 10)
        after_ok = rt.submit(Task.python("targets:add", args={"x": 2, "y": 3}, deps=[ok]))
        assert rt.result(after_ok, timeout=WAIT) == 5
        after_bad = rt.submit(Task.python("targets:add", args={"x": 2, "y": 3}, deps=[bad]))
        with pytest.raises(TaskFailed, match=f"dependency '{bad.id}' failed"):
            rt.result(after_bad, timeout=WAIT)


def test_a_script_can_await_its_child_after_many_other_tasks_ended() -> None:
    code = """
    local child = spell.submit({lang = 'python', target = 'targets:add', args = {x = 2, y = 3}})
    spell.sleep(0.3)
    return spell.await(child)
    """
    with Runtime(history=1, script_python=SCRIPT_PYTHON) as rt:
        parent = rt.submit(Task.lua(code))
        run_all(rt, 20)  # while the parent sleeps: its ended child is kept for it
        assert rt.result(parent, timeout=WAIT) == 5


def test_a_late_await_of_a_forgotten_task_gets_its_value_from_the_tombstone() -> None:
    with Runtime(history=1, script_python=SCRIPT_PYTHON) as rt:
        old = rt.submit(Task.python("targets:add", args={"x": 1, "y": 2}))
        bad = rt.submit(Task.python("targets:fail", args={"message": "gone wrong"}))
        assert rt.result(old, timeout=WAIT) == 3
        with pytest.raises(TaskFailed):
            rt.result(bad, timeout=WAIT)
        run_all(rt, 10)
        late = rt.submit(Task.lua("return spell.await(spell.args.h)", args={"h": old.id}))
        assert rt.result(late, timeout=WAIT) == 3
        caught = rt.submit(
            Task.lua("return {pcall(spell.await, spell.args.h)}", args={"h": bad.id})
        )
        ok, message = rt.result(caught, timeout=WAIT)
        assert ok is False and "gone wrong" in message
        step = rt.submit(Task.python("targets:echo", deps=[old]))
        assert rt.result(step, timeout=WAIT) == {"value": None, "input": None}


def test_a_task_older_than_its_tombstone_is_unknown() -> None:
    with Runtime(history=1, script_python=SCRIPT_PYTHON) as rt:  # tombstones for the last 100 tasks
        old = rt.submit(Task.python("targets:add", args={"x": 1, "y": 2}))
        assert rt.result(old, timeout=WAIT) == 3
        run_all(rt, 250)
        assert rt.result(old) == 3  # the runtime that submitted it still knows it
        step = rt.submit(Task.python("targets:echo", deps=[old]))
        with pytest.raises(TaskFailed, match="unknown dependency"):
            rt.result(step, timeout=WAIT)


def test_stats_count_every_task_after_records_are_forgotten() -> None:
    with Runtime(history=3) as rt:
        run_all(rt, 12)
        stats = rt.stats()
        assert stats["submitted"] == 12
        assert stats["succeeded"] == 12
        assert stats["running"] == stats["pending"] == 0


@pytest.mark.parametrize("bad", [-1, 1.5, "10", True])
def test_history_must_be_a_non_negative_int(bad: object) -> None:
    with pytest.raises(MessageError, match="history"):
        Runtime(history=bad)


def test_a_workflow_step_gets_an_early_dependency_value_after_many_tasks_ended() -> None:
    targets.gate("history-slow").clear()
    workflow = {
        "strategy": "parallel",
        "steps": [
            {"id": "early", "target": "targets:add", "args": {"x": 40, "y": 2}},
            {"id": "slow", "target": "targets:wait_gate", "args": {"name": "history-slow"}},
            {"id": "both", "target": "targets:echo", "deps": ["early", "slow"]},
        ],
    }
    with Runtime(history=1, script_python=SCRIPT_PYTHON) as rt:
        done: list[Any] = []
        runner = threading.Thread(target=lambda: done.append(rt.run_workflow(workflow)))
        runner.start()
        try:
            deadline = time.monotonic() + WAIT
            while targets.gate("history-slow") and time.monotonic() < deadline:
                if rt.stats()["succeeded"] >= 1:  # "early" ended: now push it out
                    break
                time.sleep(0.01)
            run_all(rt, 20)
        finally:
            targets.gate("history-slow").set()
            runner.join(WAIT)
    (result,) = done
    assert result.ok, result
    assert result.results[2] == {"value": None, "input": {"early": 42, "slow": "history-slow"}}


def test_the_runtime_forgets_old_ended_tasks_by_id_but_their_handles_keep_outcomes() -> None:
    with Runtime(
        history=1, script_python=SCRIPT_PYTHON
    ) as rt:  # ended tasks are kept by id for the last 100
        old = rt.submit(Task.python("targets:add", args={"x": 1, "y": 2}))
        bad = rt.submit(Task.python("targets:fail", args={"message": "long ago"}))
        assert rt.result(old, timeout=WAIT) == 3
        run_all(rt, 400)
        # the runtime's own memory stays bounded however many tasks ran
        assert len(rt._core.views) <= 120
        # by id: forgotten, with an error that says why
        with pytest.raises(MessageError, match="forgets older ones by id"):
            rt.result(old.id)
        with pytest.raises(MessageError, match="unknown task"):
            rt.status(bad.id)
        # by the handle submit returned: every answer is still there
        assert rt.result(old) == 3 and rt.status(old) == "succeeded"
        with pytest.raises(TaskFailed, match="long ago"):
            rt.result(bad)
        assert rt.status(bad) == "failed"
        assert rt.cancel(old) is False
        progress = rt.progress(old)
        assert progress is not None and progress.resource_usage.duration >= 0
        # a recent task is known by id too
        recent = rt.submit(Task.python("targets:add", args={"x": 5, "y": 5}))
        assert rt.result(recent.id, timeout=WAIT) == 10


def test_a_batch_bigger_than_the_memory_of_ended_tasks_gives_every_result() -> None:
    with Runtime(
        history=1, script_python=SCRIPT_PYTHON
    ) as rt:  # 100 ended tasks kept by id; a batch of 600
        hs = rt.submit_many([Task.python("targets:add", args={"x": i, "y": 1}) for i in range(600)])
        rt.result(hs[-1], timeout=WAIT)
        time.sleep(0.2)  # the first ones ended long before anyone asks for them
        assert [rt.result(h, timeout=WAIT) for h in hs] == [i + 1 for i in range(600)]


def test_a_waiter_of_a_task_gets_its_outcome_on_the_handle_too() -> None:
    targets.gate("history-wait").clear()
    with Runtime(history=1, script_python=SCRIPT_PYTHON) as rt:
        h = rt.submit(Task.python("targets:wait_gate", args={"name": "history-wait"}))
        got: list[Any] = []
        waiter = threading.Thread(target=lambda: got.append(rt.result(h.id, timeout=WAIT)))
        waiter.start()
        time.sleep(0.1)  # the waiter waits by id: the runtime made it a view
        targets.gate("history-wait").set()
        waiter.join(WAIT)
        assert got == ["history-wait"]
        run_all(rt, 250)
        assert rt.result(h) == "history-wait"
