"""Lua tasks end to end through ``Runtime()`` (embedded): values, every ``spell`` call,
Lua <-> Python tasks, cancellation, timeouts, errors, the sandbox and the limits.

The VM itself is tested in ``test_lua_vm.py``; here each behaviour is seen the way a
user sees it: ``rt.result``, ``rt.status``, ``rt.progress``, events. Scripts that must
be suspended before the test acts announce it with an event (``test.ready.<tag>``) that
the test waits for, so no test depends on timing; waits are bounded hang guards only.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import SCRIPT_PYTHON
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmspell import (
    Handle,
    Runtime,
    ScriptError,
    Subscription,
    Task,
    TaskCancelled,
    TaskFailed,
    TaskTimeout,
)

WAIT = 10.0  # hang guard for every wait in this file


def run(rt: Runtime, code: str, **opts: Any) -> Any:
    return rt.result(rt.submit(Task.lua(code, **opts)), timeout=WAIT)


def script_error(rt: Runtime, code: str, **opts: Any) -> ScriptError:
    h = rt.submit(Task.lua(code, **opts))
    with pytest.raises(ScriptError) as info:
        rt.result(h, timeout=WAIT)
    assert rt.status(h) == "failed"
    assert info.value.engine == "lua"
    return info.value


def until(cond: Callable[[], bool], what: str) -> None:
    """Poll ``cond`` (hang guard only: the condition is what is asserted)."""
    deadline = time.monotonic() + WAIT
    while not cond():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.005)


class Ready:
    """Scripts call ``spell.emit(READY, tag)`` right before they block; ``wait(tag)``
    returns once that script is suspended."""

    def __init__(self, rt: Runtime) -> None:
        self.name = f"test.ready.{uuid.uuid4().hex[:8]}"
        self.sub: Subscription = rt.subscribe(self.name)

    def lua(self, tag: str) -> str:
        return f"spell.emit('{self.name}', '{tag}')"

    def wait(self, *tags: str) -> None:
        missing = set(tags)
        while missing:
            ev = self.sub.get(timeout=WAIT)
            missing.discard(ev.payload)


@pytest.fixture
def ready(rt: Runtime) -> Iterator[Ready]:
    r = Ready(rt)
    yield r
    r.sub.close()


# -- values ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("nil", None),
        ("true", True),
        ("false", False),
        ("42", 42),
        ("-7", -7),
        ("1.5", 1.5),
        ("math.maxinteger", 2**63 - 1),
        ("math.mininteger", -(2**63)),
        ("2^63", 2.0**63),  # a float in Lua stays a float
        ("3 // 1", 3),
        ("3 / 1", 3.0),
        ("'hello'", "hello"),
        ("'h\\u{e9}llo \\u{1F600}'", "h\u00e9llo \U0001f600"),
        ("'\\xff\\x00\\xfe'", b"\xff\x00\xfe"),  # not UTF-8: bytes
        ("''", ""),
        ("{}", {}),  # the empty table is an empty map
        ("{1, 2, 3}", [1, 2, 3]),
        ("{'a', {'b', {'c'}}}", ["a", ["b", ["c"]]]),
        ("{x = 1, y = {z = {true, false}}}", {"x": 1, "y": {"z": [True, False]}}),
        ("{list = {}, map = {k = {}}}", {"list": {}, "map": {"k": {}}}),
        ("{[1] = 'a', [2] = 'b'}", ["a", "b"]),
        ("{['1'] = 'a'}", {"1": "a"}),
    ],
)
def test_result_values(rt: Runtime, expr: str, expected: Any) -> None:
    got = run(rt, f"return {expr}")
    assert got == expected
    assert type(got) is type(expected)


def test_args_round_trip(rt: Runtime) -> None:
    args = {
        "n": 2**63 - 1,
        "neg": -(2**63),
        "f": 0.25,
        "s": "caf\u00e9",
        "raw": b"\xff\x01",
        "nested": {"a": [1, [2, [3]], {"b": None, "c": "d"}], "empty": {}},
        "flag": False,
    }
    got = run(rt, "return spell.args", args=args)
    expected = dict(args)
    expected["nested"] = {"a": [1, [2, [3]], {"c": "d"}], "empty": {}}  # nil is no entry
    assert got == expected


def test_args_are_lua_values(rt: Runtime) -> None:
    code = (
        "local a = spell.args "
        "return {math.type(a.i), math.type(a.f), type(a.s), #a.list, a.list[2], a.map.k, "
        "        a.s .. '!', a.i + 1}"
    )
    got = run(rt, code, args={"i": 41, "f": 1.0, "s": "x", "list": [1, 2, 3], "map": {"k": "v"}})
    assert got == ["integer", "float", "string", 3, 2, "v", "x!", 42]


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("return print", "result: cannot convert a function"),
        ("return {a = {1, 2, {b = print}}}", "result.a[3].b: cannot convert a function"),
        ("local t = {} t.self = t return t", "result.self: cannot convert a table that"),
        ("local t = {1} t[2] = {t} return t", "result[2][1]: cannot convert a table that"),
        ("return {x = coroutine.create(print)}", "result.x: cannot convert a thread"),
        ("return {1, nil, 3}", "result: cannot convert a table whose integer keys"),
        ("return {1, x = 2}", "result: cannot convert a table with mixed keys"),
        ("return {[true] = 1}", "result: cannot convert a table with a boolean key (true)"),
        ("return {[1.5] = 1}", "result: cannot convert a table with a number key (1.5)"),
        ("return {a = {[0] = 1}}", "result.a: cannot convert a table with a number key (0)"),
    ],
)
def test_unconvertible_results_name_the_path(rt: Runtime, code: str, message: str) -> None:
    err = script_error(rt, code)
    assert err.message.startswith(message), err.message


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("spell.emit('x', {f = print})", "payload.f: cannot convert a function"),
        ("spell.emit('x', {{}, {print}})", "payload[2][1]: cannot convert a function"),
        (
            "spell.submit{lang = 'lua', code = 'return 1', args = {deep = {print}}}",
            "spec.args.deep[1]: cannot convert a function",
        ),
        ("local t = {} t.t = t spell.emit('x', t)", "payload.t: cannot convert a table that"),
    ],
)
def test_unconvertible_spell_arguments_raise_catchable_errors(
    rt: Runtime, code: str, message: str
) -> None:
    err = script_error(rt, code)
    assert message in err.message
    assert err.message.startswith("task:1:")
    caught = run(rt, f"local ok, e = pcall(function() {code} end) return {{ok, e}}")
    assert caught[0] is False and message in caught[1]


def test_integer_args_beyond_lua_integers_fail_naming_the_path(rt: Runtime) -> None:
    err = script_error(rt, "return 1", args={"outer": {"big": 2**63}})
    assert err.message == (
        "args.outer.big: integer 9223372036854775808 does not fit in a Lua integer (64 bits)"
    )


def test_awaited_value_that_lua_cannot_hold_fails_the_task(rt: Runtime) -> None:
    code = (
        "return spell.run{lang = 'python', target = 'targets:add', "
        "args = {x = 1 << 62, y = 1 << 62}}"
    )
    err = script_error(rt, code)
    assert "does not fit in a Lua integer" in err.message


# -- the spell API --------------------------------------------------------------------------


def test_args_input_and_task_id(rt: Runtime) -> None:
    h = rt.submit(Task.lua("return {spell.task_id, spell.args.a, spell.input}", args={"a": 1}))
    assert rt.result(h, timeout=WAIT) == [h.id, 1]  # no input: nil, the list ends
    got = run(
        rt,
        "return spell.run{lang = 'lua', code = 'return {spell.input, spell.args}', "
        "input = {k = {1, 2}}, args = {z = 'z'}}",
    )
    assert got == [{"k": [1, 2]}, {"z": "z"}]


def test_input_from_a_pipeline(rt: Runtime) -> None:
    result = rt.coordinate(
        [Task.lua("return {n = 20}"), Task.lua("return spell.input.n * 2 + 2")],
        "pipeline",
        timeout=WAIT,
    )
    assert result.ok and result.results == [{"n": 20}, 42]


def test_own_task_id_is_a_fresh_id_for_each_task(rt: Runtime) -> None:
    handles = rt.submit_many([Task.lua("return spell.task_id") for _ in range(5)])
    assert [rt.result(h, timeout=WAIT) for h in handles] == [h.id for h in handles]
    h = rt.submit(Task.lua("return spell.task_id", id="my-own-id"))
    assert rt.result(h, timeout=WAIT) == "my-own-id"


def test_submit_and_await_lua_children(rt: Runtime) -> None:
    code = """
    local hs = {}
    for i = 1, 5 do
      hs[i] = spell.submit{lang = 'lua', code = 'spell.yield() return spell.args.i * 10',
                          args = {i = i}}
    end
    local out = {}
    for i = 5, 1, -1 do out[#out + 1] = spell.await(hs[i]) end
    return {type(hs[1]), out}
    """
    assert run(rt, code) == ["string", [50, 40, 30, 20, 10]]


def test_await_the_same_task_twice_and_from_two_tasks(rt: Runtime) -> None:
    child = rt.submit(Task.lua("spell.sleep(0.01) return 'v'"))
    code = "local a = spell.await(spell.args.h) local b = spell.await(spell.args.h) return a .. b"
    handles = rt.submit_many([Task.lua(code, args={"h": child.id}) for _ in range(2)])
    assert [rt.result(h, timeout=WAIT) for h in handles] == ["vv", "vv"]


def test_run_python_lua_and_nested(rt: Runtime) -> None:
    code = """
    local a = spell.run{lang = 'python', target = 'targets:add', args = {x = 2, y = 3}}
    local b = spell.run{lang = 'lua', code = [[
        return spell.run{lang = 'python', target = 'targets:add', args = {x = 10, y = spell.args.a}}
    ]], args = {a = a}}
    return {a, b}
    """
    assert run(rt, code) == [5, 15]


def test_lua_submits_python_tasks_in_parallel(rt: Runtime) -> None:
    code = """
    local hs = {}
    for i = 1, 20 do
      hs[i] = spell.submit{lang = 'python', target = 'targets:aadd', args = {x = i, y = 1}}
    end
    local sum = 0
    for i = 1, 20 do sum = sum + spell.await(hs[i]) end
    return sum
    """
    assert run(rt, code) == sum(range(1, 21)) + 20


def test_python_failure_is_a_catchable_lua_error(rt: Runtime) -> None:
    code = """
    local h = spell.submit{lang = 'python', target = 'targets:fail', args = {message = 'no good'}}
    local ok, e = pcall(spell.await, h)
    return {ok, e, h}
    """
    ok, message, child = run(rt, code)
    assert ok is False
    assert message == f"awaited task {child} failed: ValueError: no good"
    err = script_error(
        rt, "spell.run{lang = 'python', target = 'targets:fail', args = {message = 'x'}}"
    )
    assert err.message.endswith("failed: ValueError: x")


def test_bad_submit_specs_are_catchable_errors(rt: Runtime) -> None:
    for spec, message in [
        ("{lang = 'lua', code = 'return 1', bogus = 1}", "unknown field 'bogus'"),
        ("{lang = 'cobol', code = 'x'}", "say what to run"),
        ("{lang = 'python', target = 'nocolon'}", "target='module:function'"),
        ("{lang = 'lua', code = 'return 1', priority = 'urgent'}", "priority must be one of"),
        ("{lang = 'lua', code = 'return 1', timeout = -1}", "timeout must be a positive"),
        ("'not a table'", "spec must be a table"),
    ]:
        ok, e = run(rt, f"return {{pcall(spell.submit, {spec})}}")
        assert ok is False and message in e, (spec, e)


def test_await_of_an_unknown_task_fails(rt: Runtime) -> None:
    ok, e = run(rt, "return {pcall(spell.await, 'no-such-task')}")
    assert ok is False and "no-such-task" in e


def test_sleep_and_yield(rt: Runtime) -> None:
    code = """
    local n = 0
    for i = 1, 50 do spell.yield() n = n + 1 end
    local r = spell.sleep(0.01)
    spell.sleep(0)
    return {n, r == nil}
    """
    assert run(rt, code) == [50, True]
    err = script_error(rt, "spell.sleep(-1)")
    assert "seconds must be a non-negative number" in err.message


def test_yielding_tasks_interleave(rt: Runtime, ready: Ready) -> None:
    # a task that yields forever does not starve another one
    spinner = rt.submit(Task.lua(f"{ready.lua('spin')} while true do spell.yield() end"))
    ready.wait("spin")
    assert run(rt, "local s = 0 for i = 1, 10 do spell.yield() s = s + i end return s") == 55
    assert rt.status(spinner) == "running"
    assert rt.cancel(spinner)


def test_wait_event_without_timeout(rt: Runtime, ready: Ready) -> None:
    h = rt.submit(
        Task.lua(f"{ready.lua('w')} local n, p = spell.wait_event('test.go.*') return {{n, p}}")
    )
    ready.wait("w")
    assert rt.status(h) == "running"
    rt.emit("test.other", 1)  # does not match
    rt.emit("test.go.now", {"k": [1, 2]})
    assert rt.result(h, timeout=WAIT) == ["test.go.now", {"k": [1, 2]}]


def test_wait_event_with_a_timeout_that_does_not_run_out(rt: Runtime, ready: Ready) -> None:
    h = rt.submit(
        Task.lua(f"{ready.lua('w')} local n, p = spell.wait_event('test.go2', 60) return {{n, p}}")
    )
    ready.wait("w")
    rt.emit("test.go2", "payload")
    assert rt.result(h, timeout=WAIT) == ["test.go2", "payload"]


def test_wait_event_timeout_raises_a_catchable_error(rt: Runtime) -> None:
    base = rt.stats()["events"]["subscriptions"]
    ok, e = run(rt, "return {pcall(spell.wait_event, 'test.never', 0.02)}")
    assert ok is False and e == "timed out waiting for event"
    err = script_error(rt, "spell.wait_event('test.never', 0)")
    assert "timed out waiting for event" in err.message
    until(lambda: rt.stats()["events"]["subscriptions"] == base, "timed-out waits unsubscribed")


def test_one_lua_task_wakes_another(rt: Runtime, ready: Ready) -> None:
    waiter = rt.submit(
        Task.lua(f"{ready.lua('w')} local n, p = spell.wait_event('test.lua.*') return p.v")
    )
    ready.wait("w")
    assert run(rt, "spell.emit('test.lua.ping', {v = 'from lua'}) return 1") == 1
    assert rt.result(waiter, timeout=WAIT) == "from lua"


def test_emit_is_seen_by_subscribers(rt: Runtime) -> None:
    with rt.subscribe("lua.test.*") as sub:
        run(rt, "spell.emit('lua.test.a', {list = {1, 2}, s = 'x'}) spell.emit('lua.test.b')")
        first, second = sub.get(timeout=WAIT), sub.get(timeout=WAIT)
    assert (first.name, first.payload) == ("lua.test.a", {"list": [1, 2], "s": "x"})
    assert (second.name, second.payload) == ("lua.test.b", None)
    err = script_error(rt, "spell.emit(42)")
    assert "name must be a string" in err.message


def test_progress_while_running_and_after(rt: Runtime, ready: Ready) -> None:
    h = rt.submit(
        Task.lua(
            "spell.progress(1, 4, 'first step') "
            f"{ready.lua('p')} spell.wait_event('test.progress.go') "
            "spell.progress(4, 4, 'all done') return 'ok'"
        )
    )
    ready.wait("p")
    p = rt.progress(h)
    assert p is not None
    assert (p.completed_steps, p.total_steps, p.current_operation) == (1, 4, "first step")
    rt.emit("test.progress.go")
    assert rt.result(h, timeout=WAIT) == "ok"
    p = rt.progress(h)
    assert p is not None
    assert (p.completed_steps, p.total_steps, p.current_operation) == (4, 4, "all done")
    assert p.resource_usage.memory_bytes > 0
    err = script_error(rt, "spell.progress('one')")
    assert "done must be a number" in err.message


@pytest.mark.parametrize(
    ("call", "kind"),
    [("spell.tool('nope', {a = 1})", "tool"), ("spell.agent('nope', 'hi')", "agent")],
)
def test_tool_and_agent_fail_clearly_when_none_is_registered(
    rt: Runtime, call: str, kind: str
) -> None:
    err = script_error(rt, f"return {call}")
    assert err.message.startswith("awaited task") and kind in err.message, err.message
    ok, e = run(rt, f"return {{pcall(function() return {call} end)}}")
    assert ok is False and kind in e


def test_log_goes_to_the_llmspell_logger(rt: Runtime, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="llmspell"):
        h = rt.submit(Task.lua("spell.log('warn', 'careful') print('printed', 2) return 1"))
        assert rt.result(h, timeout=WAIT) == 1
    records = [(r.levelno, r.getMessage()) for r in caplog.records if r.name.startswith("llmspell")]
    assert (logging.WARNING, f"[lua {h.id}] careful") in records
    assert (logging.INFO, f"[lua {h.id}] printed\t2") in records


# -- cancellation and timeouts ------------------------------------------------------------


def cancelled_at_once(rt: Runtime, h: Handle) -> None:
    assert rt.status(h) == "running"
    assert rt.cancel(h) is True
    assert rt.status(h) == "cancelled"
    with pytest.raises(TaskCancelled):
        rt.result(h, timeout=WAIT)
    assert rt.cancel(h) is False


def test_cancel_a_sleeping_task(rt: Runtime, ready: Ready) -> None:
    h = rt.submit(Task.lua(f"{ready.lua('s')} spell.sleep(3600) return 'woke'"))
    ready.wait("s")
    cancelled_at_once(rt, h)
    assert run(rt, "spell.sleep(0.01) return 'engine goes on'") == "engine goes on"


def test_cancel_an_awaiting_task(rt: Runtime, ready: Ready) -> None:
    child = rt.submit(Task.lua(f"{ready.lua('child')} spell.sleep(3600)"))
    ready.wait("child")
    h = rt.submit(Task.lua(f"local h = spell.args.h {ready.lua('a')} return spell.await(h)",
                           args={"h": child.id}))  # fmt: skip
    ready.wait("a")
    cancelled_at_once(rt, h)
    assert rt.status(child) == "running"  # cancelling the awaiter leaves the awaited alone
    cancelled_at_once(rt, child)


def test_cancel_an_event_waiting_task(rt: Runtime, ready: Ready) -> None:
    base = rt.stats()["events"]["subscriptions"]
    h = rt.submit(Task.lua(f"{ready.lua('e')} return spell.wait_event('test.cancel.*')"))
    ready.wait("e")
    assert rt.stats()["events"]["subscriptions"] == base + 1
    cancelled_at_once(rt, h)
    until(lambda: rt.stats()["events"]["subscriptions"] == base, "the subscription was dropped")
    rt.emit("test.cancel.late")
    assert rt.status(h) == "cancelled"


def test_cancelling_the_awaited_task_raises_in_the_awaiter(rt: Runtime, ready: Ready) -> None:
    child = rt.submit(Task.lua(f"{ready.lua('child')} spell.sleep(3600)"))
    ready.wait("child")
    catcher = rt.submit(
        Task.lua(
            f"local h = spell.args.h {ready.lua('c')} local ok, e = pcall(spell.await, h) "
            "return {ok, e}",
            args={"h": child.id},
        )
    )
    plain = rt.submit(Task.lua(f"{ready.lua('p')} return spell.await(spell.args.h)",
                               args={"h": child.id}))  # fmt: skip
    ready.wait("c", "p")
    assert rt.cancel(child) is True
    assert rt.result(catcher, timeout=WAIT) == [False, f"awaited task {child.id} was cancelled"]
    with pytest.raises(ScriptError, match=f"awaited task {child.id} was cancelled"):
        rt.result(plain, timeout=WAIT)


def test_task_timeout_of_a_sleeping_script(rt: Runtime) -> None:
    h = rt.submit(Task.lua("spell.sleep(3600) return 'never'", timeout=0.1))
    with pytest.raises(TaskTimeout):
        rt.result(h, timeout=WAIT)
    assert rt.status(h) == "timed_out"
    assert run(rt, "return 'next'") == "next"


def test_timeout_of_an_awaited_task_raises_in_the_awaiter(rt: Runtime) -> None:
    code = (
        "local h = spell.submit{lang = 'lua', code = 'spell.sleep(3600)', timeout = 0.05} "
        "local ok, e = pcall(spell.await, h) return {ok, e, h}"
    )
    ok, e, child = run(rt, code)
    assert ok is False and e.startswith(f"awaited task {child} timed out")


# -- errors ------------------------------------------------------------------------------------


def test_syntax_error_has_the_users_line_number(rt: Runtime) -> None:
    err = script_error(rt, "local a = 1\nlocal b = 2\nx = = 3\n")
    assert err.message.startswith("task:3:"), err.message
    assert "near '='" in err.message


def test_runtime_error_message_and_traceback(rt: Runtime) -> None:
    code = "local x = 1\n\nlocal function inner()\n  error('deep trouble')\nend\ninner()\n"
    err = script_error(rt, code)
    assert err.message == "task:4: deep trouble"
    lines = err.traceback.splitlines()
    assert lines[0] == "stack traceback:"
    assert any(ln.strip().startswith("task:4:") for ln in lines)
    assert any(ln.strip().startswith("task:6:") for ln in lines)
    assert "[llmspell]" not in err.traceback
    assert isinstance(err, TaskFailed)


def test_runtime_error_after_waiting_keeps_line_numbers(rt: Runtime) -> None:
    err = script_error(rt, "spell.sleep(0)\nspell.yield()\nlocal t = nil\nreturn t.field\n")
    assert err.message.startswith("task:4: attempt to index a nil value")
    assert "task:4:" in err.traceback


def test_error_values_that_are_not_strings(rt: Runtime) -> None:
    assert script_error(rt, "error(42)").message == "42"
    assert script_error(rt, "error({code = 1})").message == "(error object is a table value)"
    assert script_error(rt, "error('plain', 0)").message == "plain"


# -- sandbox -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("return io.open('/etc/passwd')", "attempt to index a nil value (global 'io')"),
        ("return os.execute('true')", "attempt to call a nil value (field 'execute')"),
        ("return os.getenv('HOME')", "attempt to call a nil value (field 'getenv')"),
        ("return os.exit(1)", "attempt to call a nil value (field 'exit')"),
        ("return require('os')", "attempt to call a nil value (global 'require')"),
        ("return dofile('/etc/passwd')", "attempt to call a nil value (global 'dofile')"),
        ("return loadfile('/etc/passwd')", "attempt to call a nil value (global 'loadfile')"),
        ("return debug.getinfo(1)", "attempt to index a nil value (global 'debug')"),
        ("return package.loaded", "attempt to index a nil value (global 'package')"),
        ("return python.eval('1')", "attempt to index a nil value (global 'python')"),
        ("return string.dump(print)", "attempt to call a nil value (field 'dump')"),
        ("return getmetatable('').__index", "attempt to index a boolean value"),
        ("return collectgarbage('collect')", 'only "count" is allowed in the sandbox'),
        ("return load(string.char(27) .. 'Lua', 'x', 'b')", 'only text chunks (mode "t")'),
        ("setmetatable({}, {__gc = function() end})", "__gc metamethods are not allowed"),
        ("string.upper = nil", "attempt to modify read-only table 'string'"),
        ("rawset(math, 'pi', 3)", "attempt to modify a read-only table"),
    ],
)
def test_sandbox_escape_fails_the_task(rt: Runtime, code: str, message: str) -> None:
    err = script_error(rt, code)
    assert message in err.message, err.message


def test_sandbox_what_remains(rt: Runtime) -> None:
    got = run(
        rt,
        "return {type(os.time()), type(os.clock()), type(os.date('%Y')), "
        "string.upper('a'), ('b'):rep(2), math.floor(2.5), #table.concat({'x', 'y'}), "
        "utf8.char(233), type(collectgarbage('count')), select('#', load('return 1')())}",
    )
    assert got == ["number", "number", "string", "A", "bb", 2, 2, "\u00e9", "number", 1]
    got = run(rt, "return {io == nil, debug == nil, require == nil, string.dump == nil}")
    assert got == [True, True, True, True]


def test_sandbox_bytecode_cannot_be_loaded(rt: Runtime) -> None:
    ok, e = run(rt, "local f, e = load(string.char(27) .. 'LuaT\\0', 'x') return {f == nil, e}")
    assert ok is True and "binary chunk" in e


def test_sandbox_globals_do_not_leak_between_tasks(rt: Runtime) -> None:
    assert run(rt, "leak = 1 _G.leak2 = 2 rawset(_G, 'leak3', 3) print = nil return true")
    assert run(rt, "return {type(print), leak, leak2, leak3}") == ["function"]


def test_sandbox_no_python_object_is_reachable(rt: Runtime) -> None:
    code = (
        "local seen = {} "
        "for _, v in pairs(spell) do seen[#seen + 1] = type(v) end "
        "for _, v in pairs(spell.args) do seen[#seen + 1] = type(v) end "
        "return seen"
    )
    assert "userdata" not in run(rt, code, args={"a": {"b": 1}, "c": b"x"})


# -- limits: a runaway script fails its own task, the engine goes on ---------------------------


@pytest.fixture
def limited() -> Iterator[Runtime]:
    runtime = Runtime(step_budget=0.2, lua_memory=64 * 1024 * 1024, script_python=SCRIPT_PYTHON)
    try:
        yield runtime
    finally:
        runtime.close()


@pytest.mark.parametrize(
    "code",
    [
        "while true do end",
        "spell.yield() local n = 0 repeat n = n + 1 until false",
        "while true do pcall(function() while true do end end) end",
    ],
)
def test_endless_loop_fails_its_task_and_others_are_served(limited: Runtime, code: str) -> None:
    rt = limited
    other = rt.submit(Task.lua("local n = 0 for i = 1, 20 do spell.sleep(0.005) n = n + i end "
                               "return n"))  # fmt: skip
    loop = rt.submit(Task.lua(code))
    with pytest.raises(ScriptError, match=r"exceeded its step budget of 0\.2 s") as info:
        rt.result(loop, timeout=WAIT)
    assert "task:1:" in info.value.traceback
    assert rt.result(other, timeout=WAIT) == 210
    assert run(rt, "return 'served after'") == "served after"


BOMB = "local t = {} while true do t[#t + 1] = string.rep('x', 1e6) .. #t end"


def test_memory_bomb_fails_its_task_and_the_engine_goes_on(limited: Runtime) -> None:
    rt = limited
    ready = Ready(rt)
    other = rt.submit(
        Task.lua(f"local keep = {{1, 2, 3}} {ready.lua('o')} spell.sleep(0.01) return #keep")
    )
    ready.wait("o")
    bomb = rt.submit(Task.lua(BOMB))
    with pytest.raises(ScriptError, match="Lua memory limit exceeded"):
        rt.result(bomb, timeout=WAIT)
    assert rt.status(bomb) == "failed"
    assert rt.result(other, timeout=WAIT) == 3
    assert run(rt, "return #string.rep('y', 1e6)") == 1_000_000
    ready.sub.close()


def test_memory_error_can_be_caught_by_the_script(limited: Runtime) -> None:
    ok, e = run(limited, f"return {{pcall(function() {BOMB} end)}}")
    assert ok is False and e == "not enough memory"


# -- property: random programs end in the state they imply ------------------------------------


@pytest.fixture(scope="module")
def shared_rt() -> Iterator[Runtime]:
    runtime = Runtime(script_python=SCRIPT_PYTHON)
    try:
        yield runtime
    finally:
        runtime.close()


step = st.one_of(
    st.tuples(st.just("yield")),
    st.tuples(st.just("sleep"), st.sampled_from([0, 0.001, 0.005, 0.01])),
    st.tuples(st.just("await"), st.integers(-1000, 1000)),
    st.tuples(st.just("await_fail"), st.booleans()),  # caught by pcall?
    st.tuples(st.just("error"), st.text("abcxyz ", min_size=1, max_size=8)),
    st.tuples(st.just("return"), st.integers(-5, 5)),
)
program = st.lists(step, max_size=6)


def build(steps: list[tuple[Any, ...]]) -> tuple[str, str, Any]:
    """Lua code for ``steps`` and the (status, value or error message) it implies."""
    lines = ["local acc = 0"]
    acc = 0
    for n, s in enumerate(steps):
        kind = s[0]
        if kind == "yield":
            lines.append("spell.yield()")
        elif kind == "sleep":
            lines.append(f"spell.sleep({s[1]})")
        elif kind == "await":
            lines.append(
                "acc = spell.await(spell.submit{lang = 'python', target = 'targets:add', "
                f"args = {{x = acc, y = {s[1]}}}}})"
            )
            acc += s[1]
        elif kind == "await_fail":
            call = (
                "spell.await(spell.submit{lang = 'python', target = 'targets:fail', "
                f"args = {{message = 'planned {n}'}}}})"
            )
            if s[1]:
                lines.append(f"if pcall(function() {call} end) then acc = nil end")
            else:
                lines.append(call)
                return "\n".join(lines), "failed", f"ValueError: planned {n}"
        elif kind == "error":
            lines.append(f"error('{s[1]}', 0)")
            return "\n".join(lines), "failed", s[1]
        else:
            lines.append(f"do return acc + {s[1]} end")
            return "\n".join(lines), "succeeded", acc + s[1]
    return "\n".join(lines), "succeeded", None


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(programs=st.lists(program, min_size=1, max_size=4))
def test_random_programs_end_as_they_imply(
    shared_rt: Runtime, programs: list[list[tuple[Any, ...]]]
) -> None:
    rt = shared_rt
    built = [build(p) for p in programs]
    handles = rt.submit_many([Task.lua(code) for code, _, _ in built])
    for h, (code, status, expected) in zip(handles, built, strict=True):
        if status == "succeeded":
            assert rt.result(h, timeout=WAIT) == expected, code
        else:
            with pytest.raises(ScriptError) as info:
                rt.result(h, timeout=WAIT)
            assert info.value.message.endswith(expected), (code, info.value.message)
        assert rt.status(h) == status
