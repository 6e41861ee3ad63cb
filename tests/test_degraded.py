"""A runtime whose engines' supervisor gave up (restart intensity exceeded)
is degraded: its tasks fail, every later call raises ``RuntimeDegraded``
naming the cause, and ``close()`` still stops everything."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from typing import Any

import psutil
import pytest

from llmspell import (
    AsyncRuntime,
    LlmspellError,
    Runtime,
    RuntimeDegraded,
    Strategy,
    Task,
    TaskFailed,
)

LOW = {"intensity": 1, "period": 60, "backoff_base": 0.001}


def _until(predicate: Any, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what} not reached"
        time.sleep(0.02)


def _blocked(call: Any) -> tuple[threading.Thread, list[BaseException]]:
    """Run ``call`` in a thread; what it raised is put in the list."""
    raised: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:
            raised.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, raised


def _every_call_raises_degraded(rt: Runtime, handle: Any) -> None:
    calls = {
        "submit": lambda: rt.submit(Task.python("targets:add", args={"x": 1, "y": 2})),
        "result": lambda: rt.result(handle, timeout=5),
        "status": lambda: rt.status(handle),
        "cancel": lambda: rt.cancel(handle),
        "wait": lambda: rt.wait([handle], timeout=5),
        "stats": rt.stats,
        "tasks": rt.tasks,
        "coordinate": lambda: rt.coordinate([Task.lua("return 1")], Strategy.PARALLEL, timeout=5),
        "subscribe": lambda: rt.subscribe("llmspell.*"),
        "emit": lambda: rt.emit("app.ping", 1),
    }
    for name, call in calls.items():
        with pytest.raises(RuntimeDegraded, match="gave up") as info:
            call()
        assert "more than 1 restarts within 60" in str(info.value), name
        assert isinstance(info.value, LlmspellError)


def test_a_degraded_runtime_fails_its_tasks_and_refuses_every_call() -> None:
    rt = Runtime(supervision=LOW)
    try:
        restarts = rt.subscribe("llmspell.engine.restart")
        ended = rt.subscribe("llmspell.task.*")
        running = rt.submit(Task.lua("spell.sleep(60) return 1"))
        queued = rt.submit_many([Task.lua("spell.sleep(60) return 2") for _ in range(40)])
        after = rt.submit(Task.python("targets:add", args={"x": 1, "y": 1}, deps=[running.id]))
        _until(lambda: rt.status(running) == "running", what="the task running")
        waiter, raised = _blocked(lambda: rt.result(running, timeout=60))
        coordinator, coord_raised = _blocked(
            lambda: rt.coordinate([Task.lua("spell.sleep(60) return 3")], Strategy.PARALLEL)
        )
        rt._inject_crash("python", 0)
        assert restarts.get(timeout=10).payload["engine"] == "python"
        rt._inject_crash("python", 0)  # a second crash within the period: too many
        waiter.join(20)
        coordinator.join(20)
        assert not waiter.is_alive() and not coordinator.is_alive()
        assert len(raised) == 1 and isinstance(raised[0], RuntimeDegraded), raised
        assert "supervisor 'engines' gave up" in str(raised[0])
        assert len(coord_raised) == 1 and isinstance(coord_raised[0], RuntimeDegraded)
        # every task of the stopped engines failed (it did not hang)
        failed: set[str] = set()
        ids = {running.id, after.id, *(h.id for h in queued)}
        deadline = time.monotonic() + 20
        while not ids <= failed:
            assert time.monotonic() < deadline, f"not failed: {ids - failed}"
            event = ended.get(timeout=20)
            if event.name == "llmspell.task.failed":
                failed.add(event.payload["task_id"])
        _every_call_raises_degraded(rt, running)
    finally:
        rt.close()
    assert rt.state.value == "closed"


def test_a_failed_task_that_brings_the_news_first_still_raises_degraded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The scheduler fails the tasks of a degraded runtime, and the supervisor
    tells the facade it gave up: two messages by two paths, in either order in
    local mode. Here the supervisor's word never comes (it is dropped): the
    failed task is the news, and its waiter gets ``RuntimeDegraded``, as does
    every later call (it was a ``TaskFailed``, and later calls went on)."""
    from llmspell._runtime import core as core_module
    from llmspell.messages.types import SupervisorEvent

    dropped: list[Any] = []
    on_message = core_module._Core.on_message

    def late_word(self: Any, msg: Any) -> None:
        if isinstance(msg, SupervisorEvent) and msg.what == "escalate":
            dropped.append(msg)
            return
        on_message(self, msg)

    monkeypatch.setattr(core_module._Core, "on_message", late_word)
    rt = Runtime(supervision=LOW)
    try:
        restarts = rt.subscribe("llmspell.engine.restart")
        running = rt.submit(Task.lua("spell.sleep(60) return 1"))
        _until(lambda: rt.status(running) == "running", what="the task running")
        waiter, raised = _blocked(lambda: rt.result(running, timeout=60))
        rt._inject_crash("python", 0)
        assert restarts.get(timeout=10).payload["engine"] == "python"
        rt._inject_crash("python", 0)
        waiter.join(20)
        assert not waiter.is_alive()
        assert dropped, "the supervisor's word reached the facade another way"
        assert len(raised) == 1 and isinstance(raised[0], RuntimeDegraded), raised
        _every_call_raises_degraded(rt, running)
    finally:
        rt.close()
    assert rt.state.value == "closed"


def test_a_runtime_on_the_journal_of_a_degraded_one_is_not_degraded(tmp_path: Any) -> None:
    """The tasks a degraded runtime failed are in its journal. A new runtime on
    that journal (what the degraded one's error tells the user to make) reads
    them as what they are, tasks that failed: it does not degrade itself."""
    path = str(tmp_path / "runs.db")
    rt = Runtime(supervision=LOW, journal=path)
    try:
        restarts = rt.subscribe("llmspell.engine.restart")
        running = rt.submit(Task.lua("spell.sleep(60) return 1", id="victim"))
        _until(lambda: rt.status(running) == "running", what="the task running")
        rt._inject_crash("python", 0)
        assert restarts.get(timeout=10).payload["engine"] == "python"
        rt._inject_crash("python", 0)
        with pytest.raises(RuntimeDegraded):
            rt.result(running, timeout=20)
    finally:
        rt.close()
    with Runtime(journal=path) as fresh:
        with pytest.raises(TaskFailed, match="degraded") as info:
            fresh.result("victim", timeout=10)
        assert not isinstance(info.value, RuntimeDegraded)
        assert fresh.result(fresh.submit(Task.lua("return 42")), timeout=10) == 42


def test_an_async_runtime_degrades_too() -> None:
    async def main() -> None:
        async with AsyncRuntime(supervision=LOW) as rt:
            restarts = rt.subscribe("llmspell.engine.restart")
            h = await rt.submit(Task.lua("spell.sleep(60) return 1"))
            while await rt.status(h) != "running":
                await asyncio.sleep(0.02)
            waiting = asyncio.ensure_future(rt.result(h, timeout=60))
            rt._runtime()._inject_crash("python", 0)
            await asyncio.get_running_loop().run_in_executor(None, restarts.get, 10)
            rt._runtime()._inject_crash("python", 0)
            with pytest.raises(RuntimeDegraded, match="gave up"):
                await asyncio.wait_for(waiting, 20)
            with pytest.raises(RuntimeDegraded):
                await rt.submit(Task.lua("return 1"))
            with pytest.raises(RuntimeDegraded):
                await rt.stats()

    asyncio.run(main())


@pytest.mark.slow
def test_a_local_runtime_degrades_when_engines_are_killed_too_often() -> None:
    rt = Runtime(mode="local", workers=1, supervision=LOW)
    try:

        def python_pid() -> int:
            for e in rt.stats()["engines"]:
                if e["engine"] == "python" and e["capacity"]:
                    return int(e["pid"])
            return 0

        _until(lambda: python_pid() != 0, what="the python engine up")
        procs = rt._driver.processes()  # type: ignore[attr-defined]
        running = rt.submit(Task.lua("spell.sleep(60) return 1"))
        _until(lambda: rt.status(running) == "running", what="the task running")
        waiter, raised = _blocked(lambda: rt.result(running, timeout=60))
        first = python_pid()
        os.kill(first, signal.SIGKILL)
        _until(lambda: python_pid() not in (0, first), what="the python engine restarted")
        os.kill(python_pid(), signal.SIGKILL)  # too many within the period
        waiter.join(30)
        assert not waiter.is_alive()
        assert len(raised) == 1 and isinstance(raised[0], RuntimeDegraded), raised
        _every_call_raises_degraded(rt, running)
    finally:
        rt.close()
    _, alive = psutil.wait_procs(procs, timeout=10)
    assert not alive
