"""Bad input gets one clear error and loses nothing, never a hang: dependency
cycles, failures at the head of long dependency chains, data nested too deeply,
and ill-typed arguments of the coordination and task options."""

from __future__ import annotations

import pytest
from helpers import WAIT, stats_when

from llmspell import MessageError, Runtime, Strategy, Task


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
        stats_when(rt, "retries", 1)  # its re-run is due in ~300 years
        assert rt.result(rt.submit(Task.lua("return 1")), timeout=WAIT) == 1
        assert rt.status(failing) == "pending"
        assert rt.cancel(failing) is True


@pytest.mark.parametrize("tasks", [None, 5, "abc"])
def test_a_list_of_tasks_is_required(rt: Runtime, tasks: object) -> None:
    with pytest.raises(MessageError, match="tasks: expected a list of Tasks"):
        rt.coordinate(tasks, Strategy.PARALLEL)  # type: ignore[arg-type]
    with pytest.raises(MessageError, match="tasks: expected a list of Tasks"):
        rt.submit_many(tasks)  # type: ignore[arg-type]
    with pytest.raises(MessageError, match="tasks: expected a list of Tasks"):
        rt.coordinate(Task.lua("return 1"), Strategy.PARALLEL)  # type: ignore[arg-type]


# -- scripts are sandboxed: no Python, files or shared globals unless allowed ---------------
