"""Resource use and limits: usage figures that move with the work, ``Limits``
with each ``on_exceed`` in every engine, throttling through the resource
tracker, engine processes sampled, engine memory, network bytes."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from llmspell import (
    Limits,
    ResourceLimitExceeded,
    Runtime,
    Subscription,
    Task,
    TaskCancelled,
)

LUA_SPIN = """
local x = 0
for i = 1, spell.args.n do
  for j = 1, 20000 do x = x + j end
  spell.yield()
end
return x
"""
LUA_HOG = """
local t = {}
for i = 1, spell.args.n do
  t[i] = string.rep("x", 1000) .. i
  if i % 50 == 0 then spell.yield() end
end
return #t
"""
JS_SPIN = """
let x = 0;
for (let i = 0; i < spell.args.n; i++) {
  for (let j = 0; j < 20000; j++) x += j;
  await spell.yield();
}
return x;
"""


def wait_for(sub: Subscription, name: str, task_id: str, timeout: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"no {name} event for {task_id}"
        try:
            e = sub.get(timeout=min(0.5, left))
        except TimeoutError:
            continue
        if e.name == name and e.payload.get("task_id") == task_id:
            return dict(e.payload)


# -- usage ---------------------------------------------------------------------------------


def test_cpu_heavy_work_shows_more_cpu_than_idle_work(rt: Runtime) -> None:
    pairs = [
        (Task.lua(LUA_SPIN, args={"n": 100}), Task.lua("spell.sleep(0.1) return 1")),
        (Task.js(JS_SPIN, args={"n": 100}), Task.js("await spell.sleep(0.1); return 1")),
        (
            Task.python("agent_targets:burn", args={"seconds": 0.1}),
            Task.python("agent_targets:idle", args={"seconds": 0.1}),
        ),
        (
            Task.python("agent_targets:aburn", args={"seconds": 0.1}),
            Task.python("targets:asleep", args={"seconds": 0.1}),
        ),
    ]
    for busy, idle in pairs:
        hb, hi = rt.submit(busy), rt.submit(idle)
        rt.result(hb, timeout=30)
        rt.result(hi, timeout=30)
        ub = rt.progress(hb).resource_usage  # type: ignore[union-attr]
        ui = rt.progress(hi).resource_usage  # type: ignore[union-attr]
        assert ub.cpu_seconds > ui.cpu_seconds, (busy, ub, ui)
        assert ub.duration > 0 and ui.duration > 0


def test_script_memory_is_reported(rt: Runtime) -> None:
    h = rt.submit(Task.lua(LUA_HOG, args={"n": 500}))
    assert rt.result(h, timeout=20) == 500
    assert rt.progress(h).resource_usage.memory_bytes > 500_000  # type: ignore[union-attr]


def test_progress_carries_live_usage(rt: Runtime) -> None:
    gate = "usage-live"
    h = rt.submit(
        Task.lua(
            LUA_SPIN.replace(
                "return x", f'spell.progress(1, 2, "half") spell.wait_event("{gate}") return x'
            ),
            args={"n": 50},
        )
    )
    deadline = time.monotonic() + 20
    while True:
        p = rt.progress(h)
        if p is not None and p.completed_steps == 1:
            break
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert p.resource_usage.cpu_seconds > 0 and p.resource_usage.duration > 0
    assert p.current_operation == "half" and rt.status(h) == "running"
    while rt.status(h) == "running":
        rt.emit(gate)
        time.sleep(0.01)


def test_coordination_sums_usage(rt: Runtime) -> None:
    res = rt.coordinate(
        [
            Task.python("agent_targets:burn", args={"seconds": 0.05}),
            Task.python("agent_targets:burn", args={"seconds": 0.05}),
        ],
        "parallel",
        timeout=30,
    )
    assert res.ok and res.resource_usage.cpu_seconds >= 0.09


def test_network_bytes_of_the_runtimes_http_client(rt: Runtime) -> None:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a: Any) -> None:
            pass

        def do_GET(self) -> None:
            body = b"x" * 5000
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/data"
        h = rt.submit(Task.python("agent_targets:fetch", args={"url": url}))
        assert rt.result(h, timeout=20) == 5000
        usage = rt.progress(h).resource_usage  # type: ignore[union-attr]
        assert usage.network_bytes_received > 5000
        assert 0 < usage.network_bytes_sent < 1000
    finally:
        server.shutdown()
        server.server_close()


# -- limits ------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "task",
    [
        Task.lua(LUA_SPIN, args={"n": 5000}, limits=Limits(cpu_seconds=0.02)),
        Task.js(JS_SPIN, args={"n": 5000}, limits=Limits(cpu_seconds=0.02)),
        Task.python("agent_targets:burn", args={"seconds": 30}, limits=Limits(cpu_seconds=0.05)),
        Task.python("agent_targets:aburn", args={"seconds": 30}, limits=Limits(cpu_seconds=0.05)),
        Task.lua(LUA_HOG, args={"n": 100_000}, limits=Limits(memory_bytes=1_000_000)),
    ],
    ids=["lua-cpu", "js-cpu", "python-cpu", "python-async-cpu", "lua-memory"],
)
def test_kill(rt: Runtime, task: Task) -> None:
    h = rt.submit(task)
    with pytest.raises(ResourceLimitExceeded, match="over its limit") as info:
        rt.result(h, timeout=60)
    assert "on_exceed='kill'" in info.value.message
    assert rt.status(h) == "failed"


def test_an_async_call_killed_over_its_limit_as_it_ends_still_fails(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The engine stops a call (a limit's kill, a cancel, a timeout) on its own
    # thread while the call may end on the event loop's thread, whose done
    # callback clears call.future. Here the coroutine ends exactly between the
    # engine's reads of call.future in stop(): the kill must still be reported
    # (it was an AttributeError in stop(), the report never sent, and the
    # task's own end dropped as stopped: the task never ended).
    import targets

    from llmspell.engines import python as engine

    slot = engine._Call.future  # the slot's descriptor
    cleared = threading.Event()

    class EndsAsItIsStopped(engine._Call):
        __slots__ = ()

        def _get(self) -> Any:
            fut = slot.__get__(self, engine._Call)
            if fut is not None and not fut.done() and self.task_id == "racer":
                targets.gate("racer").set()  # the coroutine ends now ...
                assert cleared.wait(10)  # ... and its done callback has run
            return fut

        def _set(self, value: Any) -> None:
            try:
                had = slot.__get__(self, engine._Call)
            except AttributeError:  # (set for the first time in __init__)
                had = None
            slot.__set__(self, value)
            if value is None and had is not None and self.task_id == "racer":
                cleared.set()

        future = property(_get, _set)  # type: ignore[assignment]

    monkeypatch.setattr(engine, "_Call", EndsAsItIsStopped)
    h = rt.submit(
        Task.python(
            "targets:aburn_until",
            args={"name": "racer", "seconds": 0.1},
            id="racer",
            limits=Limits(cpu_seconds=0.02),
        )
    )
    with pytest.raises(ResourceLimitExceeded, match="over its limit"):
        rt.result(h, timeout=30)
    assert cleared.is_set()  # the race was run as described


@pytest.mark.parametrize(
    ("task", "resource"),
    [
        (
            Task.lua(LUA_SPIN, args={"n": 60}, limits=Limits(cpu_seconds=0.01, on_exceed="warn")),
            "cpu_seconds",
        ),
        (
            Task.js(JS_SPIN, args={"n": 60}, limits=Limits(cpu_seconds=0.01, on_exceed="warn")),
            "cpu_seconds",
        ),
        (
            Task.lua(
                LUA_HOG, args={"n": 2000}, limits=Limits(memory_bytes=200_000, on_exceed="warn")
            ),
            "memory_bytes",
        ),
        (
            Task.python(
                "agent_targets:burn",
                args={"seconds": 0.2},
                limits=Limits(cpu_seconds=0.02, on_exceed="warn"),
            ),
            "cpu_seconds",
        ),
    ],
    ids=["lua-cpu", "js-cpu", "lua-memory", "python-cpu"],
)
def test_warn_runs_on_and_publishes(rt: Runtime, task: Task, resource: str) -> None:
    sub = rt.subscribe("llmspell.resource.warn")
    h = rt.submit(task)
    rt.result(h, timeout=60)  # it ran to its end
    warning = wait_for(sub, "llmspell.resource.warn", h.id)
    assert warning["resource"] == resource and warning["used"] > warning["limit"]


@pytest.mark.parametrize(
    "task",
    [
        Task.lua(LUA_SPIN, args={"n": 40}, limits=Limits(cpu_seconds=0.01, on_exceed="throttle")),
        Task.js(JS_SPIN, args={"n": 40}, limits=Limits(cpu_seconds=0.01, on_exceed="throttle")),
        Task.python(
            "agent_targets:aburn",
            args={"seconds": 0.1},
            limits=Limits(cpu_seconds=0.02, on_exceed="throttle"),
        ),
    ],
    ids=["lua", "js", "python-async"],
)
def test_throttle_parks_and_finishes(rt: Runtime, task: Task) -> None:
    sub = rt.subscribe("llmspell.resource.throttle")
    h = rt.submit(task)
    rt.result(h, timeout=60)  # throttled, not killed: it finishes
    event = wait_for(sub, "llmspell.resource.throttle", h.id)
    assert event["resource"] == "cpu_seconds"
    res = rt.stats()["resources"]
    assert res["throttled_tasks"] >= 1 and res["grants"] >= 1


def test_throttled_memory_hog_stays_parked_until_cancelled(rt: Runtime) -> None:
    sub = rt.subscribe("llmspell.resource.throttle")
    h = rt.submit(
        Task.lua(
            LUA_HOG,
            args={"n": 100_000},
            limits=Limits(memory_bytes=1_000_000, on_exceed="throttle"),
        )
    )
    event = wait_for(sub, "llmspell.resource.throttle", h.id)
    assert event["resource"] == "memory_bytes"
    assert rt.status(h) == "running"  # parked, holding its memory: the VM stays over
    assert rt.cancel(h)
    with pytest.raises(TaskCancelled):
        rt.result(h, timeout=10)


def test_a_sync_python_call_cannot_be_paused_so_throttle_warns(rt: Runtime) -> None:
    sub = rt.subscribe("llmspell.resource.warn")
    h = rt.submit(
        Task.python(
            "agent_targets:burn",
            args={"seconds": 0.15},
            limits=Limits(cpu_seconds=0.02, on_exceed="throttle"),
        )
    )
    assert rt.result(h, timeout=30) == 0.15
    assert "cannot be paused" in wait_for(sub, "llmspell.resource.warn", h.id)["note"]


def test_agents_are_killed_over_cpu(rt: Runtime) -> None:
    rt.register_agent("spinner", "agent_targets:Spinner")
    h = rt.submit(Task.agent("spinner", 100, limits=Limits(cpu_seconds=0.05)))
    with pytest.raises(ResourceLimitExceeded, match="agent task used"):
        rt.result(h, timeout=30)


def test_agents_over_cpu_with_warn_run_on_and_publish_once(rt: Runtime) -> None:
    rt.register_agent("spinner", "agent_targets:Spinner")
    sub = rt.subscribe("llmspell.resource.warn")
    h = rt.submit(Task.agent("spinner", 6, limits=Limits(cpu_seconds=0.03, on_exceed="warn")))
    assert rt.result(h, timeout=30)["content"] == "012345"
    warning = wait_for(sub, "llmspell.resource.warn", h.id)
    assert warning["resource"] == "cpu_seconds" and warning["used"] > warning["limit"] == 0.03
    with pytest.raises(TimeoutError):
        sub.get(timeout=0.3)  # once per resource, not once per chunk


def test_agents_over_cpu_with_throttle_are_parked_and_finish(rt: Runtime) -> None:
    rt.register_agent("spinner", "agent_targets:Spinner")
    sub = rt.subscribe("llmspell.resource.throttle")
    h = rt.submit(Task.agent("spinner", 6, limits=Limits(cpu_seconds=0.03, on_exceed="throttle")))
    assert rt.result(h, timeout=60)["content"] == "012345"
    assert wait_for(sub, "llmspell.resource.throttle", h.id)["resource"] == "cpu_seconds"


def test_resource_wait_is_granted_by_the_tracker(rt: Runtime) -> None:
    lua = rt.submit(Task.lua("spell._resource_wait() spell._resource_wait() return 'lua'"))
    js = rt.submit(Task.js("await spell.resource_wait(); return 'js'"))
    assert rt.result(lua, timeout=20) == "lua"
    assert rt.result(js, timeout=20) == "js"
    assert rt.stats()["resources"]["grants"] >= 3


# -- processes, engine memory ---------------------------------------------------------------------


def test_engine_processes_are_sampled(rt: Runtime) -> None:
    engines = rt.stats()["engines"]
    assert engines and all(e["rss"] > 0 and "cpu_percent" in e for e in engines)


def test_an_engine_over_engine_memory_takes_no_new_tasks() -> None:
    with Runtime(engine_memory=1, resource_interval=0.02) as rt:
        deadline = time.monotonic() + 20
        while not all(e.get("paused") for e in rt.stats()["engines"]):
            assert time.monotonic() < deadline, "the engines were never reported over"
            time.sleep(0.02)
        h = rt.submit(Task.lua("return 1"))
        stats = rt.stats()
        assert rt.status(h) == "pending"
        assert all(e["over_memory"] for e in stats["engines"])
        assert stats["resources"]["engine_over"] >= 1


@pytest.fixture(scope="module")
def local_rt() -> Iterator[Runtime]:
    rt = Runtime(mode="local", workers=1)
    try:
        deadline = time.monotonic() + 30
        while len({e["engine"] for e in rt.stats()["engines"]} & {"python", "lua", "js"}) < 3:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        yield rt
    finally:
        rt.close()


@pytest.mark.slow
def test_local_mode_limits_and_processes(local_rt: Runtime) -> None:
    engines = local_rt.stats()["engines"]
    assert len({e["pid"] for e in engines}) == len(engines)  # a process each
    assert all(e["rss"] > 0 for e in engines)
    for task in (
        Task.lua(LUA_SPIN, args={"n": 5000}, limits=Limits(cpu_seconds=0.02)),
        Task.python("agent_targets:burn", args={"seconds": 30}, limits=Limits(cpu_seconds=0.05)),
    ):
        with pytest.raises(ResourceLimitExceeded):
            local_rt.result(local_rt.submit(task), timeout=60)
    sub = local_rt.subscribe("llmspell.resource.throttle")
    # 300 chunks: well over 10 ms of CPU on any machine (30 could finish under it)
    h = local_rt.submit(
        Task.lua(LUA_SPIN, args={"n": 300}, limits=Limits(cpu_seconds=0.01, on_exceed="throttle"))
    )
    local_rt.result(h, timeout=60)
    wait_for(sub, "llmspell.resource.throttle", h.id)
