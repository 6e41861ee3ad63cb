"""LuaVM: the spell API, values, sandbox, limits and errors, driven through a fake Host."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmspell.engines._vm import Completed, Failed, Request, StepResult, Yielded
from llmspell.engines.lua_vm import LuaVM


class FakeHost:
    def __init__(self) -> None:
        self.submitted: list[tuple[str, dict[str, Any]]] = []
        self.events: list[tuple[str, str, Any]] = []
        self.progress_reports: list[tuple[str, float, float | None, str | None]] = []
        self.logs: list[tuple[str, str, str]] = []

    def submit(self, parent_id: str, spec: dict[str, Any]) -> str:
        if "bogus" in spec:
            raise ValueError("unknown spec field 'bogus'")
        self.submitted.append((parent_id, spec))
        return f"child-{len(self.submitted)}"

    def emit(self, task_id: str, name: str, payload: Any) -> None:
        self.events.append((task_id, name, payload))

    def progress(self, task_id: str, done: float, total: float | None, message: str | None) -> None:
        self.progress_reports.append((task_id, done, total, message))

    def log(self, task_id: str, level: str, message: str) -> None:
        self.logs.append((task_id, level, message))


@pytest.fixture
def host() -> FakeHost:
    return FakeHost()


@pytest.fixture
def vm(host: FakeHost) -> Iterator[LuaVM]:
    v = LuaVM(host, max_memory=32 * 1024 * 1024, step_budget=0.3)
    yield v
    v.close()


_counter = 0


def run(vm: LuaVM, code: str, args: Any = None, input: Any = None, answers: Any = None) -> Any:
    """Start a task and drive it: yields and sleeps get None, awaits get answers[handle]
    (an Exception instance means error=str(exc)). Returns (outcome, requests)."""
    global _counter
    _counter += 1
    task_id = f"t{_counter}"
    failed = vm.start(task_id, code, args, input)
    if failed is not None:
        return failed, []
    answers = answers or {}
    requests: list[Request] = []
    step = vm.resume(task_id)
    while isinstance(step, Yielded):
        req = step.request
        requests.append(req)
        if req.op == "await" and req.args["task_id"] in answers:
            answer = answers[req.args["task_id"]]
            if isinstance(answer, Exception):
                step = vm.resume(task_id, error=str(answer))
            else:
                step = vm.resume(task_id, answer)
        elif req.op in ("wait_event", "coordinate", "await") and req.op in answers:
            step = vm.resume(task_id, answers[req.op])
        else:
            step = vm.resume(task_id)
    return step, requests


def value(vm: LuaVM, code: str, **kw: Any) -> Any:
    outcome, _ = run(vm, code, **kw)
    assert isinstance(outcome, Completed), outcome
    return outcome.value


def failure(vm: LuaVM, code: str, **kw: Any) -> Failed:
    outcome, _ = run(vm, code, **kw)
    assert isinstance(outcome, Failed), outcome
    return outcome


# ---- basics -------------------------------------------------------------------------------


def test_language_and_result(vm: LuaVM) -> None:
    assert vm.language == "lua"
    assert value(vm, "return spell.args.x * 2", args={"x": 21}) == 42


def test_spell_fields(vm: LuaVM) -> None:
    got = value(vm, "return {spell.task_id, spell.input, spell.args[2]}", args=[1, 2], input="in")
    assert got[1:] == ["in", 2] and got[0].startswith("t")


def test_code_without_return_completes_with_none(vm: LuaVM) -> None:
    assert value(vm, "local x = 1") is None
    assert value(vm, "return") is None
    assert value(vm, "return 1, 2") == 1


def test_sleep_yield_and_resource_wait_requests(vm: LuaVM) -> None:
    outcome, reqs = run(
        vm, "spell.sleep(0) spell.sleep(2) spell.sleep(0.5) spell.yield() spell._resource_wait()"
    )
    assert outcome == Completed(None)
    assert reqs == [
        Request("sleep", {"seconds": 0.0}),
        Request("sleep", {"seconds": 2.0}),
        Request("sleep", {"seconds": 0.5}),
        Request("yield"),
        Request("resource_wait"),
    ]
    assert failure(vm, "spell.sleep(-1)").message == (
        "task:1: spell.sleep: seconds must be a non-negative number"
    )


def test_submit_await_run_tool_agent(vm: LuaVM, host: FakeHost) -> None:
    code = """
    local h = spell.submit({lang = "lua", code = "return 1", args = {x = 1}})
    local a = spell.await(h)
    local b = spell.run({lang = "python", target = "m:f"})
    local c = spell.tool("search", {q = "lua"})
    local d = spell.agent("writer", "hi")
    return {h, a, b, c, d}
    """
    answers = {"child-1": 1, "child-2": {"r": [1, 2]}, "child-3": "found", "child-4": None}
    outcome, reqs = run(vm, code, answers=answers)
    assert outcome == Completed(["child-1", 1, {"r": [1, 2]}, "found"])
    assert [r.args["task_id"] for r in reqs] == ["child-1", "child-2", "child-3", "child-4"]
    parent = host.submitted[0][0]
    assert host.submitted == [
        (parent, {"lang": "lua", "code": "return 1", "args": {"x": 1}}),
        (parent, {"lang": "python", "target": "m:f"}),
        (parent, {"tool": "search", "params": {"q": "lua"}}),
        (parent, {"agent": "writer", "input": "hi"}),
    ]


def test_await_error_is_catchable_and_fails_the_task_when_not(vm: LuaVM) -> None:
    code = "local ok, e = pcall(spell.await, 'c') return {ok, e}"
    assert value(vm, code, answers={"c": RuntimeError("child c failed: boom")}) == [
        False,
        "child c failed: boom",
    ]
    f = failure(vm, "local x = 1\nlocal v = spell.await('c')", answers={"c": RuntimeError("no")})
    assert (f.kind, f.message) == ("runtime", "no")
    assert "task:2:" in f.traceback


def test_spell_calls_from_nested_functions_and_pcall(vm: LuaVM) -> None:
    code = """
    local function deep(n) if n == 0 then return spell.await("h") end return deep(n - 1) end
    local ok, v = pcall(function() return deep(5) end)
    local ok2, v2 = xpcall(function() spell.sleep(1) return spell.await("h") end, print)
    return {ok, v, ok2, v2}
    """
    outcome, reqs = run(vm, code, answers={"h": "V"})
    assert outcome == Completed([True, "V", True, "V"])
    assert [r.op for r in reqs] == ["await", "sleep", "await"]


def test_wait_event_returns_name_and_payload(vm: LuaVM) -> None:
    code = "local n, p = spell.wait_event('job.*', 5) return {n, p}"
    event = {"name": "job.done", "payload": {"id": 7}}
    outcome, reqs = run(vm, code, answers={"wait_event": event})
    assert outcome == Completed(["job.done", {"id": 7}])
    assert reqs == [Request("wait_event", {"pattern": "job.*", "timeout": 5})]
    f = failure(vm, "spell.wait_event(1)")
    assert "pattern must be a string" in f.message


def test_wait_event_timeout_error(vm: LuaVM) -> None:
    vm.start("w", "local ok, e = pcall(spell.wait_event, 'x') return e")
    assert vm.resume("w") == Yielded(Request("wait_event", {"pattern": "x", "timeout": None}))
    assert vm.resume("w", error="timed out waiting for event x") == Completed(
        "timed out waiting for event x"
    )


def test_coordinate_request(vm: LuaVM) -> None:
    code = """
    return spell.coordinate({{lang = "lua", code = "return 1"}, {tool = "t"}}, "race",
                            {timeout = 3, inputs = {1, 2}})
    """
    result = {"success": True, "results": [1, None]}
    outcome, reqs = run(vm, code, answers={"coordinate": result})
    assert outcome == Completed({"success": True, "results": [1]})  # nil ends a Lua list
    assert reqs == [
        Request(
            "coordinate",
            {
                "tasks": [{"lang": "lua", "code": "return 1"}, {"tool": "t"}],
                "strategy": "race",
                "timeout": 3,
                "inputs": [1, 2],
            },
        )
    ]
    _, reqs = run(vm, "spell.coordinate({}, 'parallel')")
    assert reqs[0].args == {"tasks": [], "strategy": "parallel", "timeout": None, "inputs": None}


def test_emit_progress_log_print(vm: LuaVM, host: FakeHost) -> None:
    outcome, _ = run(
        vm,
        "spell.emit('done', {n = 1, l = {1, 2}}) spell.progress(1, 4, 'step one') "
        "spell.progress(2) spell.log('warning', 'careful') print('a', 1, nil, true)",
    )
    assert outcome == Completed(None)
    tid = host.events[0][0]
    assert host.events == [(tid, "done", {"n": 1, "l": [1, 2]})]
    assert host.progress_reports == [(tid, 1, 4, "step one"), (tid, 2, None, None)]
    assert host.logs == [(tid, "warning", "careful"), (tid, "info", "a\t1\tnil\ttrue")]


def test_host_value_error_becomes_a_catchable_script_error(vm: LuaVM) -> None:
    code = "local ok, e = pcall(spell.submit, {bogus = 1}) return e"
    assert value(vm, code) == "spell.submit: unknown spec field 'bogus'"
    f = failure(vm, "local x\nspell.submit({bogus = 1})")
    assert f.message == "task:2: spell.submit: unknown spec field 'bogus'"


def test_interleaved_tasks_keep_their_own_state(vm: LuaVM) -> None:
    ids = [f"i{n}" for n in range(50)]
    for n, tid in enumerate(ids):
        assert vm.start(tid, "local s = 0 for i = 1, 3 do spell.yield() s = s + spell.args.n end "
                             "x = s return x", {"n": n}) is None  # fmt: skip
    results: dict[str, StepResult] = {}
    for _ in range(4):
        for tid in ids:
            if tid not in results:
                step = vm.resume(tid)
                if not isinstance(step, Yielded):
                    results[tid] = step
    assert [results[t] for t in ids] == [Completed(3 * n) for n in range(50)]


# ---- coroutines -----------------------------------------------------------------------------


def test_bare_coroutine_yield_is_a_cooperative_yield_and_cannot_forge(vm: LuaVM) -> None:
    code = """
    coroutine.yield("child-1")
    coroutine.yield(2.5)
    coroutine.yield(true)
    coroutine.yield(false)
    coroutine.yield(1, "evt", 3)
    coroutine.yield(2, "x", "race")
    local r = coroutine.yield()
    return r == nil
    """
    outcome, reqs = run(vm, code)
    assert outcome == Completed(True)
    assert reqs == [Request("yield")] * 7


def test_user_coroutines_work_and_may_call_spell(vm: LuaVM) -> None:
    code = """
    local co = coroutine.create(function(a)
      local b = coroutine.yield(a + 1)
      local v = spell.await("h1")
      coroutine.yield(v)
      spell.sleep(0)
      return b * 2
    end)
    local _, x = coroutine.resume(co, 1)
    local _, v = coroutine.resume(co, 10)
    local ok, r = coroutine.resume(co)
    local gen = coroutine.wrap(function() for i = 1, 3 do coroutine.yield(i) end end)
    local inner = coroutine.wrap(function()
      return coroutine.wrap(function() return spell.await("h2") end)()
    end)
    return {x, v, r, coroutine.status(co), gen() + gen() + gen(), inner()}
    """
    outcome, reqs = run(vm, code, answers={"h1": "V", "h2": "W"})
    assert outcome == Completed([2, "V", 20, "dead", 6, "W"])
    assert [r.op for r in reqs] == ["await", "sleep", "await"]


def test_errors_in_user_coroutines(vm: LuaVM) -> None:
    assert value(
        vm, "return {coroutine.resume(coroutine.create(function() error('x', 0) end))}"
    ) == [
        False,
        "x",
    ]
    f = failure(vm, "coroutine.wrap(function() error('inner', 0) end)()")
    # as in Lua, wrap adds its caller's position to a string error
    assert (f.kind, f.message) == ("runtime", "task:1: inner")


# ---- values ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("nil", None),
        ("true", True),
        ("false", False),
        ("42", 42),
        ("-7", -7),
        ("math.maxinteger", 2**63 - 1),
        ("1.5", 1.5),
        ("2^53", 2.0**53),
        ("1/0", float("inf")),
        ("'héllo'", "héllo"),
        ("'\\xff\\x00'", b"\xff\x00"),
        ("{}", {}),
        ("{1, 2, 3}", [1, 2, 3]),
        ("{a = 1, b = {c = {1, {d = 'x'}}}}", {"a": 1, "b": {"c": [1, {"d": "x"}]}}),
        ("{1, {}, {x = {}}}", [1, {}, {"x": {}}]),
        ("{['\\xff'] = 1}", "conversion"),
        ("(function() local s = {1} return {a = s, b = s} end)()", {"a": [1], "b": [1]}),
        ("{string.rep('a', 70000)}", ["a" * 70000]),
        ("{string.rep('b', 100), string.rep('c', 1000)}", ["b" * 100, "c" * 1000]),
        ("{-1, -200, math.mininteger, 127, 128}", [-1, -200, -(2**63), 127, 128]),
        ("(function() local t = {} for i = 1, 70000 do t[i] = i end return t end)()", "range"),
        ("(function() local t = {} for i = 1, 20 do t['k' .. i] = i end return t end)()", "map"),
        ("{s = string.rep('\\xff', 300)}", {"s": b"\xff" * 300}),
    ],
)
def test_lua_to_python(vm: LuaVM, expr: str, expected: Any) -> None:
    if expected == "conversion":
        assert failure(vm, f"return {expr}").kind == "conversion"
    elif expected == "range":
        assert value(vm, f"return {expr}") == list(range(1, 70001))
    elif expected == "map":
        assert value(vm, f"return {expr}") == {f"k{i}": i for i in range(1, 21)}
    else:
        got = value(vm, f"return {expr}")
        assert got == expected and type(got) is type(expected)


def test_lua_integers_and_floats_keep_their_type(vm: LuaVM) -> None:
    assert value(vm, "return {1, 1.0, 3 // 2, 3 / 2}") == [1, 1.0, 1, 1.5]
    assert [type(x) for x in value(vm, "return {1, 1.0}")] == [int, float]


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("return {f = print}", "result.f: cannot convert a function"),
        ("return {items = {1, 2, print}}", "result.items[3]: cannot convert a function"),
        ("return print", "result: cannot convert a function"),
        ("return {co = coroutine.create(print)}", "result.co: cannot convert a thread"),
        ("return {co = coroutine.running()}", "result.co: cannot convert a thread"),
        ("local t = {} t.self = t return t", "result.self: cannot convert a table that contains"),
        ("return {a = {1, 2, x = 3}}", "result.a: cannot convert a table with mixed keys"),
        ("return {[1] = 1, [3] = 3}", "result: cannot convert a table whose integer keys"),
        ("return {[true] = 1}", "result: cannot convert a table with a boolean key"),
        ("return {[1.5] = 1}", "result: cannot convert a table with a number key"),
        ("return {{[0] = 1}}", "result[1]: cannot convert a table with a number key (0)"),
    ],
)
def test_unconvertible_results(vm: LuaVM, code: str, message: str) -> None:
    f = failure(vm, code)
    assert f.kind == "conversion"
    assert f.message.startswith(message), f.message


def test_python_to_lua_roundtrip(vm: LuaVM) -> None:
    args = {
        "i": 2**62,
        "f": 0.25,
        "s": "ünï",
        "b": b"\x00\xff",
        "t": True,
        "l": [1, "two", [3.0], {"k": "v"}],
        "d": {"nested": {"deep": [True, False]}},
    }
    assert value(vm, "return spell.args", args=args) == args
    assert value(vm, "return spell.args", args=(1, 2)) == [1, 2]
    # a None leaves a hole in the Lua table
    got = value(
        vm, "return {spell.args[1], spell.args[3], spell.args[2] == nil}", args=[1, None, 3]
    )
    assert got == [1, 3, True]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"x": {1, 2}}, "args.x: cannot convert a set"),
        ({"a": [1, object()]}, "args.a[2]: cannot convert a object"),
        ({1: 2}, "args: map keys must be strings, got int"),
        ({"big": 2**64}, "args.big: integer 18446744073709551616 does not fit"),
    ],
)
def test_unconvertible_args(vm: LuaVM, args: Any, message: str) -> None:
    f = vm.start("bad-args", "return 1", args)
    assert f is not None and f.kind == "conversion" and f.message.startswith(message)


def test_unconvertible_input_and_resume_value(vm: LuaVM) -> None:
    f = vm.start("bad-input", "return 1", None, {"x": {1}})
    assert f is not None and f.message == "input.x: cannot convert a set"
    vm.start("r", "return spell.await('h')")
    vm.resume("r")
    f2 = vm.resume("r", {"v": [object()]})
    assert isinstance(f2, Failed) and f2.kind == "conversion"
    assert f2.message == "resume value.v[1]: cannot convert a object"
    assert vm.tasks() == []


def test_resume_value_nested(vm: LuaVM) -> None:
    code = "local v = spell.await('h') return {v.a[2].b, #v.a, v.s}"
    assert value(vm, code, answers={"h": {"a": [1, {"b": "x"}], "s": b"\xff"}}) == ["x", 2, b"\xff"]


@pytest.mark.parametrize(
    ("code", "message"),
    [
        (
            "spell.submit({lang = 'lua', args = {x = print}})",
            "spec.args.x: cannot convert a function",
        ),
        ("spell.run({args = {1, {f = print}}})", "spec.args[2].f: cannot convert a function"),
        ("spell.emit('e', {print})", "payload[1]: cannot convert a function"),
        ("spell.coordinate({{code = print}}, 'parallel')", "tasks[1].code: cannot convert a"),
        ("spell.submit('x')", "spell.submit: spec must be a table"),
        ("spell.submit({1, 2})", "spell.submit: spec must be a table with string keys"),
    ],
)
def test_unconvertible_spell_arguments_raise_script_errors(
    vm: LuaVM, code: str, message: str
) -> None:
    f = failure(vm, f"local x = 1\n{code}")
    assert f.kind == "runtime"
    assert f.message.startswith(f"task:2: {message}"), f.message
    caught = value(vm, f"local ok, e = pcall(function() {code} end) return e")
    assert message in caught


# ---- errors ---------------------------------------------------------------------------------


def test_syntax_error_has_the_users_line_number(vm: LuaVM) -> None:
    f = vm.start("s", "local a = 1\nlocal b = = 2\nreturn b")
    assert f == Failed("syntax", "task:2: unexpected symbol near '='")
    assert vm.tasks() == []
    assert vm.start("s2", "return (") == Failed("syntax", "task:1: unexpected symbol near <eof>")


def test_runtime_error_message_and_traceback(vm: LuaVM) -> None:
    code = (
        "local function f()\n  local t = nil\n  return t.x\nend\n"
        "local function g() return 1 + f() end\nlocal r = g()\nreturn r"
    )
    f = failure(vm, code)
    assert f.kind == "runtime"
    assert f.message == "task:3: attempt to index a nil value (local 't')"
    assert f.traceback.startswith("stack traceback:\n")
    assert "task:3:" in f.traceback and "task:5:" in f.traceback
    assert f.traceback.endswith("task:6: in main chunk")
    assert "[llmspell]" not in f.traceback and "[C]" not in f.traceback


def test_error_values(vm: LuaVM) -> None:
    assert failure(vm, "error('plain', 0)").message == "plain"
    assert failure(vm, "error('here')").message == "task:1: here"
    assert failure(vm, "error(42)").message == "42"
    assert failure(vm, "error({code = 1})").message == "(error object is a table value)"
    assert failure(vm, "error()").kind == "runtime"


def test_bad_spell_arguments(vm: LuaVM) -> None:
    assert failure(vm, "spell.await(123)").message == (
        "task:1: spell.await: expected a task handle (string), got number"
    )
    assert "emit: name must be a string" in failure(vm, "spell.emit(1)").message
    assert "done must be a number" in failure(vm, "spell.progress('x')").message
    assert "strategy must be a string" in failure(vm, "spell.coordinate({}, 1)").message


def test_request_id_is_accepted(vm: LuaVM) -> None:
    vm.start("rid", "return spell.await('h')")
    assert vm.resume("rid") == Yielded(Request("await", {"task_id": "h"}))
    assert vm.resume("rid", 5, request_id=0) == Completed(5)


def test_error_resume_on_the_first_resume_is_ignored(vm: LuaVM) -> None:
    vm.start("first", "return 5")
    assert vm.resume("first", "ignored", error="ignored too") == Completed(5)


def test_unknown_task_and_duplicate_start(vm: LuaVM) -> None:
    with pytest.raises(KeyError):
        vm.resume("nope")
    vm.start("dup", "return 1")
    with pytest.raises(ValueError, match="already exists"):
        vm.start("dup", "return 2")


# ---- sandbox: one test per escape ------------------------------------------------------------


@pytest.mark.parametrize(
    "code",
    [
        "return io.open('/etc/passwd')",
        "return os.execute('true')",
        "return os.getenv('HOME')",
        "return os.remove('/tmp/x')",
        "return os.exit()",
        "return require('os')",
        "return dofile('/etc/passwd')",
        "return loadfile('/etc/passwd')",
        "return debug.getinfo(1)",
        "return package.loaded.os",
        "return python.eval('1')",
        "return python.builtins.open",
        "return string.dump(print)",
        "return ('x').dump(print)",
        "return getmetatable('').__index.dump",
        "return collectgarbage('collect')",
        "return collectgarbage()",
        "return warn('x')",
        "return load(string.char(27) .. 'Lua', 'x', 'b')",
        "return load(function() return nil end, 'x', 'bt')",
    ],
)
def test_escape_is_refused(vm: LuaVM, code: str) -> None:
    f = failure(vm, code)
    assert f.kind == "runtime", f


def test_escape_load_of_bytecode_text_mode(vm: LuaVM) -> None:
    got = value(vm, "local f, e = load(string.char(27) .. 'LuaT\\0', 'x') return {f == nil, e}")
    assert got[0] is True and "binary chunk" in got[1]


def test_escape_globals_that_exist_are_the_safe_ones(vm: LuaVM) -> None:
    got = value(
        vm,
        "return {io == nil, debug == nil, package == nil, python == nil, require == nil, "
        "dofile == nil, loadfile == nil, string.dump == nil, os.time ~= nil, os.clock ~= nil, "
        "os.date ~= nil, os.execute == nil, type(collectgarbage('count'))}",
    )
    assert got == [True] * 12 + ["number"]


def test_escape_string_metatable_is_hidden(vm: LuaVM) -> None:
    assert value(vm, "return getmetatable('')") is False
    assert failure(vm, "getmetatable('').__index.upper = nil").kind == "runtime"
    assert value(vm, "return ('abc'):upper()") == "ABC"


def test_escape_library_tables_are_read_only(vm: LuaVM) -> None:
    for code in (
        "string.upper = function() return 'pwned' end",
        "rawset(string, 'upper', 1)",
        "setmetatable(string, {})",
        "table.insert(os, 'x')",
        "rawset(coroutine, 'yield', print)",
        "math.pi = 3",
    ):
        assert failure(vm, code).kind == "runtime", code
    assert value(vm, "return ('a'):upper() .. string.upper('b') .. math.floor(math.pi)") == "AB3"
    assert "upper" in value(vm, "local n = {} for k in pairs(string) do n[#n + 1] = k end return n")


def test_escape_gc_metamethod_is_refused(vm: LuaVM) -> None:
    f = failure(vm, "setmetatable({}, {__gc = function() while true do end end})")
    assert "__gc" in f.message


def test_escape_globals_do_not_leak_between_tasks(vm: LuaVM) -> None:
    assert value(vm, "leak = 1 _G.leak2 = 2 rawset(_G, 'leak3', 3) return _G == _ENV") is True
    assert value(vm, "return {leak, leak2, leak3, _G.leak}") == {}
    assert value(vm, "print = 1 return print") == 1
    assert value(vm, "return type(print)") == "function"


def test_escape_no_python_object_is_reachable(vm: LuaVM) -> None:
    got = value(
        vm,
        "local r = {} for _, v in pairs(spell) do r[#r + 1] = type(v) end "
        "for _, f in ipairs({spell.submit, spell.sleep, print, load}) do "
        "  r[#r + 1] = type(f) .. tostring(getmetatable(f)) end "
        "r[#r + 1] = tostring(getmetatable(spell)) return r",
        args={"x": 1},
    )
    assert "userdata" not in got
    assert got[-5:] == ["functionnil"] * 4 + ["false"]


def test_load_uses_the_callers_environment(vm: LuaVM) -> None:
    code = """
    x = 5
    local a = load("return x + spell.args.n")()
    local function f() return load("y = 7 return x")() end
    local b = f()
    local c = coroutine.wrap(function() return load("return y")() end)()
    local d = load("return z", "c", "t", {z = 9})()
    return {a, b, c, y, d}
    """
    assert value(vm, code, args={"n": 1}) == [6, 5, 7, 7, 9]


# ---- limits ---------------------------------------------------------------------------------

BOMB = "local t = {} while true do t[#t + 1] = string.rep('x', 1e6) end"


def test_memory_bomb_fails_its_task_and_the_vm_goes_on(vm: LuaVM) -> None:
    vm.start("other", "spell.yield() return 'still here'")
    assert isinstance(vm.resume("other"), Yielded)
    f = failure(vm, BOMB)
    assert f.kind == "memory"
    assert f.message.startswith("Lua memory limit exceeded")
    assert vm.memory_in_use() < 4 * 1024 * 1024
    assert vm.resume("other") == Completed("still here")
    assert value(vm, "return #string.rep('y', 1e6)") == 1_000_000
    assert failure(vm, "return string.rep('x', 1e9)").kind == "memory"


def test_memory_bombs_caught_in_a_loop_hit_the_budget(vm: LuaVM) -> None:
    f = failure(vm, f"while true do pcall(function() {BOMB} end) end")
    assert f.kind == "budget"


def test_memory_error_caught_by_the_script(vm: LuaVM) -> None:
    got = value(vm, f"local ok, e = pcall(function() {BOMB} end) return {{ok, e}}")
    assert got == [False, "not enough memory"]


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "code",
    [
        "while true do end",
        "local n = 0 repeat n = n + 1 until false",
        "while true do pcall(function() while true do end end) end",
        "while true do xpcall(function() while true do end end, function(e) return e end) end",
        "xpcall(function() while true do end end, function() while true do end end)",
        "coroutine.wrap(function() while true do end end)()",
        "while true do coroutine.resume(coroutine.create(function() while true do end end)) end",
        "while true do pcall(function() local x <close> = setmetatable({}, "
        "{__close = function() error('nope') end}) while true do end end) end",
        "local function f() return pcall(f) end while true do f() end",
    ],
)
def test_step_budget(vm: LuaVM, code: str) -> None:
    vm.start("bystander", "spell.yield() return 1")
    vm.resume("bystander")
    f = failure(vm, code)  # the budget stops it (pytest-timeout guards against a hang)
    assert f.kind == "budget"
    assert "exceeded its step budget of 0.3 s" in f.message
    assert vm.resume("bystander") == Completed(1)
    assert value(vm, "local s = 0 for i = 1, 1000 do s = s + i end return s") == 500500


def test_budget_is_per_resume(host: FakeHost) -> None:
    v = LuaVM(host, step_budget=0.5)
    v.start("p", "for i = 1, 4 do local t = os.clock() while os.clock() - t < 0.15 do end "
                 "spell.yield() end")  # fmt: skip
    steps = [v.resume("p") for _ in range(5)]
    assert steps[-1] == Completed(None)  # 0.6 s in all, never 0.5 s in one step
    v.close()


def test_no_budget(host: FakeHost) -> None:
    v = LuaVM(host, step_budget=None, timing=False)
    v.start("a", "local s = 0 for i = 1, 1e5 do s = s + i end return s")
    assert v.resume("a") == Completed(5000050000)
    assert v.stats("a")["cpu_seconds"] == 0.0
    v.close()


# ---- cancel, stats, close, cache ------------------------------------------------------------


def test_cancel_frees_memory_and_is_idempotent(vm: LuaVM) -> None:
    base = vm.memory_in_use()
    vm.start("big", "local s = string.rep('x', 8e6) spell.sleep(10) return #s")
    assert isinstance(vm.resume("big"), Yielded)
    assert vm.memory_in_use() > base + 7_000_000
    vm.cancel("big")
    vm.cancel("big")
    vm.cancel("never-was")
    vm._gc()  # the next collection takes the dropped coroutine's memory back
    assert vm.memory_in_use() < base + 1_000_000
    with pytest.raises(KeyError):
        vm.resume("big")
    vm.start("unstarted", "return 1")
    vm.cancel("unstarted")
    assert vm.tasks() == []


def test_finished_tasks_do_not_hold_memory(vm: LuaVM) -> None:
    vm._gc()
    base = vm.memory_in_use()
    for n in range(100):
        vm.start(f"m{n}", "local s = string.rep('x', 1e5) spell.yield() return #s")
        vm.resume(f"m{n}")
    assert vm.memory_in_use() > base + 9_000_000
    assert {vm.resume(f"m{n}") for n in range(100)} == {Completed(100_000)}
    vm._gc()
    assert vm.memory_in_use() < base + 500_000
    assert vm.stats("m0")["resumes"] == 2


def test_cancel_runs_close_handlers_within_the_budget(vm: LuaVM, host: FakeHost) -> None:
    code = (
        "local a <close> = setmetatable({}, {__close = function() spell.emit('closed', 1) end}) "
        "local b <close> = setmetatable({}, {__close = function() while true do end end}) "
        "spell.sleep(5)"
    )
    vm.start("c", code)
    vm.resume("c")
    vm.cancel("c")  # the endless __close handler is stopped by the budget
    assert host.events == [("c", "closed", 1)]
    assert value(vm, "return 1") == 1


def test_stats(vm: LuaVM) -> None:
    vm.start("s", "spell.yield() spell.sleep(0) coroutine.yield() return 1")
    for _ in range(3):
        vm.resume("s")
    live = vm.stats("s")
    assert (live["resumes"], live["yields"], live["running"]) == (3, 3, True)
    assert vm.resume("s") == Completed(1)
    done = vm.stats("s")
    assert (done["resumes"], done["yields"], done["running"]) == (4, 3, False)
    assert done["cpu_seconds"] > 0
    with pytest.raises(KeyError):
        vm.stats("unknown")


def test_compile_cache(host: FakeHost) -> None:
    v = LuaVM(host, cache_size=2)
    calls: list[bytes] = []
    compile_ = v._compile

    def counting(code: bytes, name: bytes | None = None) -> Any:
        calls.append(code)
        return compile_(code, name)

    v._compile = counting
    for n in range(5):
        v.start(f"a{n}", "return 1")
        v.start(f"b{n}", "return (")
    assert len(calls) == 2
    v.start("c", "return 3")
    v.start("d", "return 1")  # evicted by the LRU bound: compiled again
    assert len(calls) == 4
    assert [v.resume(f"a{n}") for n in range(5)] == [Completed(1)] * 5
    v.close()


def test_close(host: FakeHost) -> None:
    v = LuaVM(host)
    v.start("a", "spell.yield()")
    v.resume("a")
    v.close()
    assert v.memory_in_use() == 0
    with pytest.raises(RuntimeError):
        v.start("b", "return 1")
    v.cancel("a")


# ---- property: random programs end as they imply ----------------------------------------------

json_leaf = (
    st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=8)
    | st.booleans()
)
json_value = st.recursive(
    json_leaf,
    lambda inner: (
        st.lists(inner, min_size=1, max_size=3)
        | st.dictionaries(st.text(max_size=5), inner, min_size=1, max_size=3)
    ),
    max_leaves=6,
)

step = st.one_of(
    st.tuples(st.just("yield")),
    st.tuples(st.just("sleep"), st.sampled_from([0, 0.5, 3])),
    st.tuples(st.just("await"), json_value),
    st.tuples(st.just("await_error"), st.booleans()),  # caught?
    st.tuples(st.just("bare_yield")),
)
wrap = st.sampled_from(["plain", "function", "pcall", "coroutine"])
ending = st.sampled_from(["return", "error", "fall_off"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(st.tuples(step, wrap), max_size=8), end=ending)
def test_random_programs_end_as_they_imply(
    steps: list[tuple[tuple[Any, ...], str]], end: str
) -> None:
    vm = LuaVM(FakeHost())
    lines = ["local acc = {};"]
    expected_requests: list[Request] = []
    answers: dict[str, Any] = {}
    acc: list[Any] = []
    outcome: Any = None
    for n, (s, how) in enumerate(steps):
        kind = s[0]
        if kind == "yield":
            stmt = "spell.yield()"
            expected_requests.append(Request("yield"))
        elif kind == "bare_yield":
            stmt = "coroutine.yield('child-1')"
            if how == "coroutine":
                how = "plain"  # inside a user coroutine it would yield to the script itself
            expected_requests.append(Request("yield"))
        elif kind == "sleep":
            stmt = f"spell.sleep({s[1]})"
            expected_requests.append(Request("sleep", {"seconds": float(s[1])}))
        elif kind == "await":
            stmt = f"acc[#acc + 1] = spell.await('h{n}')"
            answers[f"h{n}"] = s[1]
            acc.append(s[1])
            expected_requests.append(Request("await", {"task_id": f"h{n}"}))
        else:
            answers[f"h{n}"] = RuntimeError(f"failed {n}")
            expected_requests.append(Request("await", {"task_id": f"h{n}"}))
            if s[1]:
                stmt = f"local ok, e = pcall(spell.await, 'h{n}') acc[#acc + 1] = e"
                acc.append(f"failed {n}")
            else:
                stmt = f"spell.await('h{n}')"
                outcome = Failed("runtime", f"failed {n}")
        if how == "function":
            stmt = f"(function() {stmt} end)()"
        elif how == "pcall":
            stmt = f"assert(pcall(function() {stmt} end))" if outcome is None else stmt
        elif how == "coroutine":
            stmt = f"coroutine.wrap(function() {stmt} end)()"
            if outcome is not None:  # as in Lua, wrap adds its caller's position
                outcome = Failed("runtime", f"task:{len(lines) + 1}: {outcome.message}")
        lines.append(stmt + ";")  # ";": "f()\n(function() ... end)()" is one call in Lua
        if outcome is not None:
            break
    if outcome is None:
        if end == "return":
            lines.append("return acc")
            outcome = Completed(acc if acc else {})
        elif end == "error":
            lines.append("error('the end', 0)")
            outcome = Failed("runtime", "the end")
        else:
            outcome = Completed(None)
    got, requests = run(vm, "\n".join(lines), answers=answers)
    assert requests == expected_requests
    if isinstance(outcome, Failed):
        assert isinstance(got, Failed)
        assert (got.kind, got.message) == (outcome.kind, outcome.message)
    else:
        assert got == outcome
    assert vm.tasks() == []
    vm.close()
