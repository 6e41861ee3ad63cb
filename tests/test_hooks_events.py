"""Hooks at every point, with targets in every engine, and the event bus:
patterns, runtime events, ``spell.wait_event`` timeouts, subscriber overflow."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import SCRIPT_PYTHON
from helpers import WAIT

from llmspell import Event, MessageError, Runtime, Subscription, Task, TaskFailed

LUA_HOOK = Task.lua(
    'spell.emit("hook.lua." .. spell.args.point, spell.args) return spell.args.point'
)
JS_HOOK = Task.js('spell.emit("hook.js." + spell.args.point, spell.args); return spell.args.point')


def collect(
    sub: Subscription, done: Callable[[list[Event]], bool], timeout: float = 20
) -> list[Event]:
    """Events from ``sub`` until ``done(events)``; fails after ``timeout`` s."""
    events: list[Event] = []
    deadline = time.monotonic() + timeout
    while not done(events):
        left = deadline - time.monotonic()
        assert left > 0, f"gave up waiting; got {[e.name for e in events]}"
        try:
            events.append(sub.get(timeout=min(left, 0.5)))
        except TimeoutError:
            pass
    return events


def has(name: str, **payload: Any) -> Callable[[list[Event]], bool]:
    def check(events: list[Event]) -> bool:
        return any(
            e.name == name and all(e.payload.get(k) == v for k, v in payload.items())
            for e in events
        )

    return check


def quiet(rt: Runtime, timeout: float = 20) -> dict[str, Any]:
    """Stats once nothing runs or waits."""
    deadline = time.monotonic() + timeout
    while True:
        stats = rt.stats()
        if stats["running"] == 0 and stats["pending"] == 0:
            return stats
        assert time.monotonic() < deadline
        time.sleep(0.02)


@pytest.fixture(scope="module")
def hook_log(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("hooks") / "hooks.log"
    path.touch()
    old = os.environ.get("LLMSPELL_HOOK_LOG")
    os.environ["LLMSPELL_HOOK_LOG"] = str(path)  # engine processes inherit it (local mode)
    try:
        yield path
    finally:
        if old is None:
            os.environ.pop("LLMSPELL_HOOK_LOG", None)
        else:
            os.environ["LLMSPELL_HOOK_LOG"] = old


@pytest.fixture(scope="module", params=["embedded", pytest.param("local", marks=pytest.mark.slow)])
def mrt(request: pytest.FixtureRequest, hook_log: Path) -> Iterator[Runtime]:
    rt = (
        Runtime(mode="local", workers=1, script_python=SCRIPT_PYTHON)
        if request.param == "local"
        else Runtime(script_python=SCRIPT_PYTHON)
    )
    try:
        deadline = time.monotonic() + 30
        while len({e["engine"] for e in rt.stats()["engines"]} & {"python", "lua", "js"}) < 3:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        for point in (
            "task.before",
            "task.after",
            "task.error",
            "task.retry",
            "coordination.before",
            "coordination.after",
        ):
            rt.register_hook(point, LUA_HOOK)
        rt.register_hook("task.after", JS_HOOK)
        rt.register_hook("task.after", "agent_targets:record_hook")
        rt.register_hook("engine.restart", "agent_targets:record_hook")
        rt.register_hook("task.retry", "agent_targets:failing_hook")
        yield rt
    finally:
        rt.close()


def test_task_hooks_for_tasks_of_every_engine(mrt: Runtime, hook_log: Path) -> None:
    sub = mrt.subscribe("hook.*")
    hs = mrt.submit_many(
        [
            Task.python("targets:add", args={"x": 1, "y": 2}),
            Task.lua("return 1"),
            Task.js("return 2"),
        ]
    )
    ids = [h.id for h in hs]
    assert [mrt.result(h, timeout=20) for h in hs] == [3, 1, 2]

    def seen(events: list[Event]) -> bool:
        return all(
            has("hook.lua.task.before", task_id=i, status="running")(events)
            and has("hook.lua.task.after", task_id=i, status="succeeded")(events)
            and has("hook.js.task.after", task_id=i)(events)
            for i in ids
        )

    events = collect(sub, seen)
    kinds = {e.payload["task_id"]: e.payload["kind"] for e in events if e.payload.get("kind")}
    assert [kinds[i] for i in ids] == ["python", "lua", "js"]
    sub.close()
    # the Python hook (keyword arguments) wrote a line per ended task
    deadline = time.monotonic() + 20
    while not all(f"task.after {i} succeeded" in hook_log.read_text() for i in ids):
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_error_and_retry_hooks_and_a_failing_hook(mrt: Runtime) -> None:
    errors_before = quiet(mrt)["hooks"]["errors"]
    sub = mrt.subscribe("hook.lua.task.*")
    failing = mrt.submit(Task.python("targets:fail", args={"message": "nope"}))
    retried = mrt.submit(Task.lua("error('again')", retries=1))
    with pytest.raises(TaskFailed, match="nope"):
        mrt.result(failing, timeout=20)
    with pytest.raises(TaskFailed, match="again"):  # the failing retry hook changed nothing
        mrt.result(retried, timeout=20)
    collect(
        sub,
        lambda ev: (
            has("hook.lua.task.error", task_id=failing.id, status="failed")(ev)
            and has("hook.lua.task.retry", task_id=retried.id, attempt=1)(ev)
            and has("hook.lua.task.error", task_id=retried.id)(ev)
        ),
    )
    sub.close()
    error = [e for e in collect(mrt.subscribe("never.*"), lambda ev: True)]
    assert error == []
    stats = quiet(mrt)
    assert stats["hooks"]["errors"] == errors_before + 1  # agent_targets:failing_hook at retry


def test_coordination_hooks(mrt: Runtime) -> None:
    sub = mrt.subscribe("hook.lua.coordination.*")
    res = mrt.coordinate([Task.lua("return 1"), Task.js("return 2")], "parallel", timeout=20)
    assert res.ok
    events = collect(
        sub,
        lambda ev: (
            has("hook.lua.coordination.before", strategy="parallel", tasks=2)(ev)
            and has("hook.lua.coordination.after", strategy="parallel", ok=True)(ev)
        ),
    )
    assert {e.payload["coord_id"] for e in events} and len(
        {e.payload["coord_id"] for e in events}
    ) == 1
    sub.close()


def test_engine_restart_hook(mrt: Runtime, hook_log: Path) -> None:
    before = hook_log.read_text().count("engine.restart")
    mrt._inject_crash("js")
    deadline = time.monotonic() + 30
    while hook_log.read_text().count("engine.restart") <= before:
        assert time.monotonic() < deadline, "the engine.restart hook never ran"
        time.sleep(0.05)
    assert mrt.result(mrt.submit(Task.js("return 7")), timeout=30) == 7


def test_hooks_do_not_fire_for_hook_tasks(rt: Runtime) -> None:
    rt.register_hook("task.before", Task.lua("spell.run({lang='lua', code='return 1'}) return 1"))
    rt.register_hook("task.after", "agent_targets:record_hook")
    assert rt.result(rt.submit(Task.lua("return 0")), timeout=20) == 0
    stats = quiet(rt)
    # one hook per point for the one task; none for the hooks or what a hook submitted
    assert stats["hooks"]["runs"] == 2
    assert stats["hooks"]["errors"] == 0
    assert stats["hooks"]["registered"] == 2


def test_task_hook_runs_every_hook_at_a_point(rt: Runtime) -> None:
    assert rt.result(rt.submit(Task.hook("task.error", {"x": 1})), timeout=20) == []
    rt.register_hook("task.error", Task.lua("return spell.args.x + 1"))
    rt.register_hook("task.error", Task.js("return spell.args.point"))
    rt.register_hook("task.error", "agent_targets:failing_hook")
    value = rt.result(rt.submit(Task.hook("task.error", {"x": 1})), timeout=20)
    assert value == [2, "task.error", None]  # the failing hook's slot is None
    assert quiet(rt)["hooks"]["errors"] == 1


def test_hook_registration_errors(rt: Runtime) -> None:
    with pytest.raises(MessageError, match=r"unknown hook point 'task\.whenever'"):
        rt.register_hook("task.whenever", "agent_targets:record_hook")
    with pytest.raises(MessageError, match="module:function"):
        rt.register_hook("task.after", 42)


# -- events ---------------------------------------------------------------------------------


def test_glob_patterns(rt: Runtime) -> None:
    star = rt.subscribe("app.*")
    one = rt.subscribe("app.?")
    mid = rt.subscribe("task.*.error")
    for name in ("app.a", "app.bb", "app.x.y", "task.1.error", "task.a.b.error", "task.error"):
        rt.emit(name, {"n": name})
    rt.stats()  # every delivery is in once the bus answered
    assert [e.name for e in _drain(star)] == ["app.a", "app.bb", "app.x.y"]
    assert [e.name for e in _drain(one)] == ["app.a"]
    assert [e.name for e in _drain(mid)] == ["task.1.error", "task.a.b.error"]


def _drain(sub: Subscription) -> list[Event]:
    out = []
    while True:
        try:
            out.append(sub.get(timeout=0))
        except TimeoutError:
            return out


def test_runtime_task_events(rt: Runtime) -> None:
    sub = rt.subscribe("llmspell.task.*")
    ok = rt.submit(Task.lua("return 1"))
    bad = rt.submit(Task.js("throw new Error('x')"))
    rt.result(ok, timeout=20)
    with pytest.raises(TaskFailed):
        rt.result(bad, timeout=20)
    collect(
        sub,
        lambda ev: (
            has("llmspell.task.running", task_id=ok.id, kind="lua")(ev)
            and has("llmspell.task.succeeded", task_id=ok.id, kind="lua")(ev)
            and has("llmspell.task.failed", task_id=bad.id, kind="js", status="failed")(ev)
        ),
    )


def test_subscriber_overflow_drops_the_oldest_and_counts(rt: Runtime) -> None:
    sub = rt.subscribe("flood.*", limit=3)
    for i in range(10):
        rt.emit(f"flood.{i}", i)
    stats = rt.stats()
    assert [e.payload for e in _drain(sub)] == [7, 8, 9]
    assert sub.dropped == 7
    assert stats["events"]["dropped"] >= 7
    assert rt.stats()["events"]["dropped"] >= 7


@pytest.mark.parametrize(
    ("task", "expected"),
    [
        (
            Task.lua(
                'local ok, e = pcall(spell.wait_event, "never.*", 0.05) '
                "return {ok = ok, e = tostring(e)}"
            ),
            "timed out waiting for event",
        ),
        (
            Task.js(
                'try { await spell.wait_event("never.*", 0.05); return {ok: true} } '
                "catch (e) { return {ok: false, e: String(e)} }"
            ),
            "timed out waiting for event",
        ),
    ],
)
def test_wait_event_times_out(rt: Runtime, task: Task, expected: str) -> None:
    r = rt.result(rt.submit(task), timeout=20)
    assert r["ok"] is False and expected in r["e"]


def test_wait_event_in_js_gets_name_and_payload(rt: Runtime) -> None:
    h = rt.submit(
        Task.js('const e = await spell.wait_event("go.*", 10); return [e.name, e.payload]')
    )
    deadline = time.monotonic() + 10
    while True:  # the script subscribes when it runs: publish until it saw one
        rt.emit("go.js", {"v": 1})
        try:
            assert rt.result(h, timeout=0.1) == ["go.js", {"v": 1}]
            return
        except TimeoutError:
            assert time.monotonic() < deadline


def test_event_tasks_order_with_deps(rt: Runtime) -> None:
    sub = rt.subscribe("ordered.*")
    first = rt.submit(Task.lua("return 1"))
    rt.submit(Task.event("ordered.after", {"x": 1}, deps=[first]))
    events = collect(sub, has("ordered.after", x=1))
    assert events[0].payload == {"x": 1}


# -- moved from test_bad_input.py: bad input to this feature ----------------------------


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
