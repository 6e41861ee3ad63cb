"""Durable scripts (issue 13, engine side): with ``Runtime(journal=...)`` a Lua or
JS task that runs again after its engine died replays the host calls its first run
made (children not submitted twice, emits not published twice, clock reads and
random numbers the same) and goes on live from where the record ends; a replay
that makes another call than the recorded one fails with ``ReplayDivergence``.
``math.random``/``Math.random`` are seeded per task with or without a journal."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import SCRIPT_PYTHON

from llmspell import ReplayDivergence, Runtime, Task
from llmspell.engines.js_vm import JsVM
from llmspell.engines.lua_vm import LuaVM
from llmspell.engines.script import divergence_message, same_call
from llmspell.messages import encode
from llmspell.messages.types import HostCalls

# submit + await a child (a side effect per run), sleep, read the clocks and a random
# number, emit them, then sleep long enough for the test to kill the engine
LUA = """
local v = spell.run{target = "targets:append_line", args = {path = spell.args.path, key = "c"}}
spell.sleep(0.05)
local s = {t = os.time(), c = os.clock(), d = os.date("%Y-%m-%d %H:%M:%S"),
           r = math.random(), n = math.random(1, 1000000)}
spell.emit("probe.state", s)
spell.sleep(1.0)
s.v = v
return s
"""

JS = """
const v = await spell.run({target: "targets:append_line", args: {path: spell.args.path, key: "c"}});
await spell.sleep(0.05);
const s = {t: Date.now(), d: new Date().getTime(), r: Math.random(), n: Math.random()};
spell.emit("probe.state", s);
await spell.sleep(1.0);
s.v = v;
return s;
"""


def _drain(sub: Any, first: Any) -> list[Any]:
    """Every event of ``sub`` so far, ``first`` included."""
    events = [first]
    while True:
        try:
            events.append(sub.get(timeout=0.5))
        except TimeoutError:
            return events


def _crash_midway(
    rt: Runtime, lang: str, tmp_path: Path, kill: Any
) -> tuple[Any, list[Any], list[str]]:
    """Run LUA or JS, ``kill`` its engine once it emitted: (its value, the events
    published, the side effect file's lines)."""
    side = tmp_path / "side.txt"
    side.touch()
    code = LUA if lang == "lua" else JS
    with rt.subscribe("probe.*") as sub:
        make = Task.lua if lang == "lua" else Task.js
        h = rt.submit(make(code, args={"path": str(side)}, retries=1))
        first = sub.get(timeout=30)  # the first run got past its emit
        kill()
        value = rt.result(h, timeout=60)
        events = _drain(sub, first)
    return value, events, side.read_text().split()


@pytest.mark.slow
@pytest.mark.parametrize("lang", ["lua", "js"])
def test_a_script_replays_its_host_calls_after_its_engine_crashed(
    lang: str, tmp_path: Path
) -> None:
    with Runtime(journal=str(tmp_path / "j.db"), script_python=SCRIPT_PYTHON) as rt:
        value, events, lines = _crash_midway(rt, lang, tmp_path, lambda: rt._inject_crash(lang))
        assert rt.stats()["retries"] == 1  # it did run twice
    assert lines == ["c"]  # the child ran once: the replay did not submit it again
    assert [e.name for e in events] == ["probe.state"]  # published once
    assert value.pop("v") == "c"  # the awaited child's value, from the record
    assert value == events[0].payload  # clocks and random numbers as the first run read them


@pytest.mark.slow
def test_local_mode_an_engine_process_killed_midway_replays(tmp_path: Path) -> None:
    with Runtime(
        mode="local",
        engines={"python": 1, "lua": 1, "js": 0},
        journal=str(tmp_path / "j.db"),
        script_python=SCRIPT_PYTHON,
    ) as rt:
        deadline = time.monotonic() + 30
        lua: list[int] = []
        while not lua and time.monotonic() < deadline:  # the engine registers after start
            lua = [int(e["pid"]) for e in rt.stats()["engines"] if e["engine"] == "lua"]
            time.sleep(0.05)
        (pid,) = lua
        assert psutil.pid_exists(pid)

        def kill() -> None:
            os.kill(pid, signal.SIGKILL)

        value, events, lines = _crash_midway(rt, "lua", tmp_path, kill)
    assert lines == ["c"]
    assert [e.name for e in events] == ["probe.state"]
    assert value.pop("v") == "c"
    assert value == events[0].payload


@pytest.mark.slow
def test_without_a_journal_a_crashed_script_runs_again_from_scratch(tmp_path: Path) -> None:
    with Runtime(script_python=SCRIPT_PYTHON) as rt:
        value, events, lines = _crash_midway(rt, "lua", tmp_path, lambda: rt._inject_crash("lua"))
    assert lines == ["c", "c"]  # nothing recorded: the child was submitted again
    assert [e.name for e in events] == ["probe.state", "probe.state"]
    # random numbers are per task all the same: the second run drew the first run's
    assert events[1].payload["r"] == events[0].payload["r"] == value["r"]
    assert events[1].payload["n"] == events[0].payload["n"]


@pytest.mark.parametrize("lang", ["lua", "js"])
def test_a_replay_that_makes_another_call_fails_with_replay_divergence(
    lang: str, tmp_path: Path
) -> None:
    code = {
        "lua": 'spell.emit("probe.ready", 1) spell.sleep(2) return 1',
        "js": 'spell.emit("probe.ready", 1); await spell.sleep(2); return 1;',
    }[lang]
    with Runtime(journal=str(tmp_path / "j.db")) as rt, rt.subscribe("probe.*") as sub:
        make = Task.lua if lang == "lua" else Task.js
        h = rt.submit(make(code, id=f"diverging-{lang}", retries=3))
        sub.get(timeout=30)
        # the journal of an earlier run of other code: its first call was a submit
        recorded = [h.id, 0, 1, "submit", {"lang": "lua", "code": "return 2"}, "x1", None, True]
        rt._driver.send(rt._scheduler, encode(HostCalls([recorded])))
        rt._inject_crash(lang)
        with pytest.raises(ReplayDivergence) as err:
            rt.result(h, timeout=30)
        stats = rt.stats()
    message = err.value.message
    assert "host call 1" in message
    assert 'submit {"code": "return 2", "lang": "lua"}' in message  # the recorded call
    assert 'emit {"name": "probe.ready", "payload": 1}' in message  # the new one
    assert stats["retries"] == 1  # the crash; a divergence is not retried (it would again)


def test_a_replayed_wait_keeps_waiting_and_resumes_on_a_later_event(tmp_path: Path) -> None:
    code = """
    spell.emit("probe.ready", 1)
    local name, payload = spell.wait_event("probe.go")
    return {name, payload}
    """
    with Runtime(journal=str(tmp_path / "j.db")) as rt, rt.subscribe("probe.ready") as sub:
        h = rt.submit(Task.lua(code, retries=1))
        sub.get(timeout=30)
        rt._inject_crash("lua")
        deadline = time.monotonic() + 30
        while h.status() != "succeeded":  # the re-run subscribes again at some point
            assert time.monotonic() < deadline, h.status()
            rt.emit("probe.go", 7)
            time.sleep(0.1)
        assert rt.result(h) == ["probe.go", 7]
        assert rt.stats()["retries"] == 1


# -- the pieces -------------------------------------------------------------------


def test_same_call_compares_what_identifies_a_call() -> None:
    assert same_call("sleep", {"seconds": 1.0}, "sleep", {"seconds": 1.0, "until": 5.0})
    assert not same_call("sleep", {"seconds": 2.0}, "sleep", {"seconds": 1.0, "until": 5.0})
    assert same_call(
        "wait_event",
        {"pattern": "a.*", "timeout": 3},
        "wait_event",
        {"pattern": "a.*", "timeout": 3, "until": 99.0},
    )
    assert not same_call("wait_event", {"pattern": "b.*"}, "wait_event", {"pattern": "a.*"})
    spec = {"lang": "lua", "code": "return 1", "args": {"xs": (1, 2)}}
    assert same_call(
        "submit", spec, "submit", {"code": "return 1", "lang": "lua", "args": {"xs": [1, 2]}}
    )
    assert not same_call("submit", spec, "submit", {"lang": "lua", "code": "return 2"})
    assert not same_call("emit", {"name": "a", "payload": None}, "submit", {"name": "a"})
    assert same_call("time", {"fn": "os.time"}, "time", {"fn": "os.time"})
    assert not same_call("time", {"fn": "os.clock"}, "time", {"fn": "os.time"})


def test_divergence_message_names_the_call_number_and_both_calls() -> None:
    msg = divergence_message(4, "sleep", {"seconds": 1.0, "until": 9.0}, "emit", {"name": "x"})
    assert "host call 4" in msg
    assert 'sleep {"seconds": 1.0}' in msg  # the wake-up time is no part of the call
    assert 'emit {"name": "x"}' in msg
    long = divergence_message(1, "submit", {"code": "x" * 5000}, "emit", {})
    assert len(long) < 800


class _Host:
    def __init__(self) -> None:
        self.reads: list[tuple[str, str, Any]] = []

    def submit(self, parent_id: str, spec: dict[str, Any]) -> str:
        return "child"

    def emit(self, task_id: str, name: str, payload: Any) -> None:
        pass

    def progress(self, task_id: str, done: float, total: float | None, message: str | None) -> None:
        pass

    def log(self, task_id: str, level: str, message: str) -> None:
        pass

    def clock(self, task_id: str, fn: str, value: Any) -> None:
        self.reads.append((task_id, fn, value))


def _run(vm: Any, task_id: str, code: str, **kw: Any) -> Any:
    assert vm.start(task_id, code, **kw) is None
    r = vm.resume(task_id)
    while not hasattr(r, "value"):
        r = vm.resume(task_id)
    return r.value


LUA_RANDOM = """
local co = coroutine.wrap(function() return math.random(6) end)
return {math.random(), math.random(10), math.random(-5, 5), co(), math.random(0)}
"""
JS_RANDOM = "const a = [Math.random()]; await spell.sleep(0); a.push(Math.random()); return a;"


def test_random_numbers_are_per_task_and_the_same_for_the_same_task_id() -> None:
    lua, js = LuaVM(_Host()), JsVM(_Host())
    for vm, code in ((lua, LUA_RANDOM), (js, JS_RANDOM)):
        a1, b, a2 = (_run(vm, tid, code) for tid in ("a", "b", "a"))
        assert a1 == a2
        assert a1 != b
        assert 0 <= a1[0] < 1
    fresh = LuaVM(_Host())  # another VM (a replay runs on a new engine): the same numbers
    assert _run(fresh, "a", LUA_RANDOM) == _run(LuaVM(_Host()), "a", LUA_RANDOM)


def test_lua_randomseed_is_per_task_and_checks_its_arguments() -> None:
    vm = LuaVM(_Host())
    code = """
    math.randomseed(42) local x = math.random(1000)
    math.randomseed(42) local y = math.random(1000)
    local ok1, e1 = pcall(math.random, 3, 1)
    local ok2, e2 = pcall(math.random, 1.5)
    local ok3, e3 = pcall(math.randomseed, {})
    return {x == y, e1, e2, e3, math.type(math.random(5)), select("#", math.randomseed())}
    """
    got = _run(vm, "t", code)
    assert got == [
        True,
        "bad argument #2 to 'random' (interval is empty)",
        "bad argument #1 to 'random' (number has no integer representation)",
        "bad argument #1 to 'randomseed' (number expected, got table)",
        "integer",
        2,
    ]
    other = _run(vm, "u", "math.randomseed(42) return math.random(1000)")
    assert other == _run(vm, "t2", "math.randomseed(42) return math.random(1000)")


def test_recorded_clock_reads_are_reported_and_replayed() -> None:
    host = _Host()
    lua = LuaVM(host, record_clock=True)
    code = "return {os.time(), os.clock(), os.date('!%Y', nil), os.time{year=2020, month=1, day=1}}"
    first = _run(lua, "t", code)
    assert [r[1] for r in host.reads] == ["os.time", "os.clock", "os.date"]
    again = _run(lua, "t", code, clock=[1, 2.5, 0])
    assert again[:3] == [1, 2.5, "1970"] and again[3] == first[3]
    host.reads.clear()
    js = JsVM(host, record_clock=True)
    jcode = "return [Date.now(), new Date().getTime(), typeof Date(), new Date(5).getTime()];"
    _run(js, "t", jcode)
    assert [r[1] for r in host.reads] == ["Date.now", "new Date()", "Date()"]
    assert _run(js, "t", jcode, clock=[10, 20, 30]) == [10, 20, "string", 5]
    # Date stays Date: instanceof, subclasses, dates of a given time
    code = "class D extends Date {} return new Date() instanceof Date && new D(0) instanceof Date;"
    assert _run(js, "inst", code) is True


def test_without_a_journal_clocks_are_not_reported() -> None:
    host = _Host()
    _run(LuaVM(host), "t", "return {os.time(), os.clock(), os.date()}")
    _run(JsVM(host), "t", "return [Date.now(), new Date().getTime()];")
    assert host.reads == []
