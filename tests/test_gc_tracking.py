"""What a runtime keeps of ended tasks (up to 100 x ``history`` of them, so that
``result``/``status`` still answer) is made of tuples of plain strings and
numbers, which the garbage collector untracks: a long-lived runtime does not add
two tracked objects per task to every full collection of its application (a task
status member or a dict inside a tuple kept it tracked for good)."""

from __future__ import annotations

import gc

from llmspell import Runtime, Task, TaskFailed


def _tracked() -> int:
    gc.collect()
    gc.collect()
    return len(gc.get_objects())


def test_ended_tasks_kept_for_answers_are_not_tracked_by_the_gc() -> None:
    n = 3000
    with Runtime() as rt:

        def batch(start: int) -> list[str]:
            hs = rt.submit_many(
                [Task.python("targets:add", args={"x": start + i, "y": 1}) for i in range(n)]
            )
            assert [rt.result(h, timeout=30) for h in hs] == [start + i + 1 for i in range(n)]
            return [h.id for h in hs]

        batch(0)  # warm: caches, pools, threads
        before = _tracked()
        ids = batch(n)
        grown = _tracked() - before
        # the runtime still answers for every one of them, from what it kept
        assert rt.status(ids[0]) == "succeeded" and rt.result(ids[-1], timeout=5) == 2 * n
        bad = rt.submit(Task.python("targets:boom"))
        try:
            rt.result(bad, timeout=30)
        except TaskFailed as e:
            first = str(e)
        else:
            raise AssertionError("targets:boom did not fail")
        try:  # the same error again, rebuilt from what was kept
            rt.result(bad.id, timeout=5)
        except TaskFailed as e:
            assert str(e) == first
        else:
            raise AssertionError("asked again, the failed task succeeded")
    assert grown < n // 10, f"{grown} more tracked objects after {n} tasks"


def test_a_kept_task_still_tells_its_usage_and_error() -> None:
    # the scheduler keeps 2 records whole: the others' usage comes from what the
    # facade kept (a tuple of two floats, or of the items of a fuller usage)
    with Runtime(history=2) as rt:
        hs = rt.submit_many([Task.python("targets:add", args={"x": i, "y": 1}) for i in range(30)])
        assert [rt.result(h, timeout=30) for h in hs] == list(range(1, 31))
        usage = rt.progress(hs[3]).resource_usage
        assert usage.duration > 0 and usage.cpu_seconds >= 0
        lua = rt.submit(Task.lua("return 1"))
        assert rt.result(lua, timeout=30) == 1
        for h in rt.submit_many([Task.python("targets:add", args={"x": 1, "y": 1})] * 5):
            rt.result(h, timeout=30)
        assert rt.progress(lua).resource_usage.duration > 0


def test_an_ended_python_call_leaves_nothing_for_the_cyclic_gc() -> None:
    # A call in flight was its own meter (call.meter = call): a reference cycle, so
    # every ended call waited for the next collection of the oldest generation it
    # had reached (10,000 tasks left 10,000 of them). Freed now as they end.
    from llmspell.engines.python import _Call

    def calls() -> int:
        return sum(1 for o in gc.get_objects() if type(o) is _Call)

    n = 2000
    with Runtime() as rt:
        rt.result(rt.submit(Task.python("targets:add", args={"x": 1, "y": 1})), timeout=30)
        gc.collect()
        gc.disable()
        try:
            before = calls()
            hs = rt.submit_many(
                [Task.python("targets:add", args={"x": i, "y": 1}) for i in range(n)]
                + [Task.python("targets:aadd", args={"x": i, "y": 1}) for i in range(n // 10)]
            )
            assert [rt.result(h, timeout=30) for h in hs[:n]] == [i + 1 for i in range(n)]
            assert [rt.result(h, timeout=30) for h in hs[n:]] == [i + 1 for i in range(n // 10)]
            left = calls() - before
        finally:
            gc.enable()
    assert left < n // 100, f"{left} of {n + n // 10} ended calls wait for the cyclic GC"
