"""What only Lua tasks do, end to end through ``Runtime()`` (embedded): Lua values,
Lua's error values and tracebacks, the sandbox, a memory error a script can catch.

What Lua and JavaScript tasks do alike is in ``test_script_tasks.py`` (one test, run in
each language); the VM itself in ``test_lua_vm.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from conftest import SCRIPT_PYTHON
from helpers import WAIT, result
from helpers import script_error as task_error

from llmspell import Runtime, ScriptError, Task, TaskFailed


def run(rt: Runtime, code: str, **opts: Any) -> Any:
    return result(rt, Task.lua(code, **opts))


def script_error(rt: Runtime, code: str, **opts: Any) -> ScriptError:
    return task_error(rt, Task.lua(code, **opts))


# -- values ---------------------------------------------------------------------------------


def test_args_are_lua_values(rt: Runtime) -> None:
    code = (
        "local a = spell.args "
        "return {math.type(a.i), math.type(a.f), type(a.s), #a.list, a.list[2], a.map.k, "
        "        a.s .. '!', a.i + 1}"
    )
    got = run(rt, code, args={"i": 41, "f": 1.0, "s": "x", "list": [1, 2, 3], "map": {"k": "v"}})
    assert got == ["integer", "float", "string", 3, 2, "v", "x!", 42]


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


# -- cancellation and timeouts ------------------------------------------------------------


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


BOMB = "local t = {} while true do t[#t + 1] = string.rep('x', 1e6) .. #t end"


def test_memory_error_can_be_caught_by_the_script(limited: Runtime) -> None:
    ok, e = run(limited, f"return {{pcall(function() {BOMB} end)}}")
    assert ok is False and e == "not enough memory"


# -- moved from test_bad_input.py: bad input to this feature ----------------------------


def test_a_lua_memory_bomb_is_a_memory_failure_not_an_internal_error() -> None:
    with Runtime(lua_memory=32 * 1024 * 1024) as rt:
        for _ in range(2):
            h = rt.submit(Task.lua("local t = {} for i = 1, 1e9 do t[i] = {i} end"))
            with pytest.raises(TaskFailed, match="Lua memory limit exceeded") as info:
                rt.result(h, timeout=60)
            assert "internal error" not in str(info.value)
        assert rt.result(rt.submit(Task.lua("return 1")), timeout=WAIT) == 1


def test_lua_errors_from_the_sandbox_wrappers_name_no_prelude_line(rt: Runtime) -> None:
    code = "print(setmetatable({}, {__tostring = function() return {} end}))"
    with pytest.raises(TaskFailed) as info:
        rt.result(rt.submit(Task.lua(code)), timeout=WAIT)
    assert "__tostring" in str(info.value) and "[llmspell]" not in str(info.value)


def test_a_waiting_spell_call_inside_a_c_callback_says_why_it_cannot(rt: Runtime) -> None:
    code = "local t = {3, 1, 2} table.sort(t, function(a, b) spell.sleep(0) return a < b end)"
    with pytest.raises(TaskFailed, match="cannot be made inside a callback that a C function"):
        rt.result(rt.submit(Task.lua(code)), timeout=WAIT)


# -- many tasks taking turns (the engine resumes their sleep(0)s in batches) -------------------


def test_many_tasks_taking_turns_end_as_alone_with_their_children_and_events(
    rt: Runtime,
) -> None:
    from llmspell import Limits

    sub = rt.subscribe("turns.*")
    turns = (
        "local n = 0 for i = 1, spell.args.k do spell.sleep(0) n = n + i end "
        "if spell.args.k % 7 == 0 then spell.emit('turns.seven', {k = spell.args.k}) end "
        "if spell.args.k % 50 == 0 then return spell.await(spell.submit("
        "{lang = 'lua', code = 'return spell.args.k', args = {k = spell.args.k}})) end "
        "if spell.args.k == 33 then error('thirty-three', 0) end "
        "return n"
    )
    spin = "while true do spell.sleep(0) local x = 0 for i = 1, 1e4 do x = x + i end end"
    hs = rt.submit_many([Task.lua(turns, args={"k": k}) for k in range(200)])
    limited = rt.submit(Task.lua(spin, limits=Limits(cpu_seconds=0.2)))
    for k, h in enumerate(hs):
        if k == 33:
            with pytest.raises(TaskFailed, match="thirty-three"):
                rt.result(h, timeout=WAIT)
        else:
            assert rt.result(h, timeout=WAIT) == (k if k % 50 == 0 and k else k * (k + 1) // 2)
    with pytest.raises(TaskFailed, match="CPU, over its limit"):
        rt.result(limited, timeout=WAIT)
    seen = sorted(sub.get(timeout=WAIT).payload["k"] for _ in range(0, 200, 7))
    assert seen == list(range(0, 200, 7))
    sub.close()
