"""What only JavaScript tasks do, end to end through ``Runtime()`` (embedded): JS values
(special floats, deep nesting), console and timers, promises, JS <-> Lua <-> Python
tasks, JS errors and stacks, isolation, typed-array memory bombs and deep recursion.

What Lua and JavaScript tasks do alike is in ``test_script_tasks.py`` (one test, run in
each language); the VM itself in ``test_js_vm.py``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import SCRIPT_PYTHON
from helpers import WAIT, Ready, cancelled_at_once, result, until
from helpers import script_error as task_error

from llmspell import Runtime, ScriptError, Task, TaskFailed


def run(rt: Runtime, code: str, **opts: Any) -> Any:
    return result(rt, Task.js(code, **opts))


def script_error(rt: Runtime, code: str, **opts: Any) -> ScriptError:
    return task_error(rt, Task.js(code, **opts))


# -- values ---------------------------------------------------------------------------------


def test_special_floats(rt: Runtime) -> None:
    nan, inf, ninf = run(rt, "return [NaN, Infinity, -Infinity];")
    assert math.isnan(nan) and inf == math.inf and ninf == -math.inf
    assert run(
        rt,
        "return [Number.isNaN(spell.args.n), spell.args.i];",
        args={"n": math.nan, "i": math.inf},
    ) == [True, math.inf]


def test_args_are_js_values(rt: Runtime) -> None:
    code = """
    const a = spell.args;
    return [typeof a.i, Number.isInteger(a.i), typeof a.f, a.raw instanceof Uint8Array,
            a.raw.length, a.raw[1], Array.isArray(a.list), a.list.length, a.map.k + '!',
            Object.getPrototypeOf(a.map) === Object.prototype, a.none === null, a.i + 1];
    """
    got = run(
        rt,
        code,
        args={
            "i": 41,
            "f": 1.5,
            "raw": b"\x01\x02",
            "list": [1, 2],
            "map": {"k": "v"},
            "none": None,
        },
    )
    assert got == ["number", True, "number", True, 2, 2, True, 2, "v!", True, True, 42]


def test_deep_nesting_round_trips(rt: Runtime) -> None:
    deep: Any = "leaf"
    for i in range(60):
        deep = [deep] if i % 2 else {"k": deep}
    assert run(rt, "return spell.args.d;", args={"d": deep}) == deep


def test_a_shared_object_is_not_a_cycle(rt: Runtime) -> None:
    assert run(rt, "const o = {v: 1}; return [o, {o}, [o]];") == [
        {"v": 1},
        {"o": {"v": 1}},
        [{"v": 1}],
    ]


def test_awaited_values_arrive_as_js_values(rt: Runtime) -> None:
    code = """
    const v = await spell.run({lang: 'python', target: 'targets:echo',
                               args: {value: spell.args.v}});
    return [v.value.raw instanceof Uint8Array, Number.isNaN(v.value.nan), v.value.big, v];
    """
    v = {"raw": b"\x00\xfe", "nan": 1.5, "big": 2**53, "deep": [{"a": [None]}]}
    got = run(rt, code, args={"v": v})
    assert got == [True, False, 2**53, {"value": v, "input": None}]


# -- the spell API --------------------------------------------------------------------------


def test_await_of_something_not_a_handle_fails(rt: Runtime) -> None:
    got = run(rt, "try { await spell.await(42); } catch (e) { return e.message; }")
    assert got == "spell.await: not a handle: 42"


def test_wait_event_without_a_pattern_fails(rt: Runtime) -> None:
    base = rt.stats()["events"]["subscriptions"]
    err = script_error(rt, "await spell.wait_event(42);")
    assert "spell.wait_event: the pattern isn't a str" in err.message
    until(lambda: rt.stats()["events"]["subscriptions"] == base, "nothing left subscribed")


def test_log_and_console_go_to_the_llmspell_logger(
    rt: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="llmspell"):
        h = rt.submit(
            Task.js(
                "spell.log('warn', 'careful'); spell.log('error', {n: 1});"
                "console.log('printed', 2, [3]); console.error('bad'); return 1;"
            )
        )
        assert rt.result(h, timeout=WAIT) == 1
    records = [(r.levelno, r.getMessage()) for r in caplog.records if r.name.startswith("llmspell")]
    assert (logging.WARNING, f"[js {h.id}] careful") in records
    assert (logging.ERROR, f'[js {h.id}] {{"n":1}}') in records
    assert (logging.INFO, f"[js {h.id}] printed 2 [3]") in records
    assert (logging.ERROR, f"[js {h.id}] bad") in records


# -- timers, microtasks, promises -------------------------------------------------------------


def test_set_timeout_clear_timeout_set_interval_and_queue_microtask(rt: Runtime) -> None:
    code = """
    const order = [];
    queueMicrotask(() => order.push('micro'));
    setTimeout((a, b) => order.push('late ' + a + b), 20, 'x', 'y');
    setTimeout(() => order.push('early'), 5);
    const cleared = setTimeout(() => order.push('cleared'), 1);
    clearTimeout(cleared);
    clearTimeout(12345);  // unknown ids are ignored
    order.push('sync');
    let n = 0;
    await new Promise((resolve) => {
      const id = setInterval(() => {
        order.push('tick ' + ++n);
        if (n === 3) { clearInterval(id); resolve(); }
      }, 1);
    });
    await new Promise((resolve) => setTimeout(resolve, 40));
    order.push('end');
    return order;
    """
    order = run(rt, code)
    assert order[:2] == ["sync", "micro"]  # a microtask runs before any timer
    assert order[-1] == "end"
    assert "cleared" not in order
    assert [x for x in order if x.startswith("tick")] == ["tick 1", "tick 2", "tick 3"]
    assert order.index("early") < order.index("late xy")  # timers fire in deadline order
    assert sorted(order) == sorted(
        ["sync", "micro", "early", "late xy", "tick 1", "tick 2", "tick 3", "end"]
    )


def test_timer_callback_errors_are_logged_not_fatal(
    rt: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="llmspell"):
        h = rt.submit(
            Task.js(
                "setTimeout(() => { throw new Error('in a timer') }, 0);"
                "await spell.sleep(0.02); return 'survived';"
            )
        )
        assert rt.result(h, timeout=WAIT) == "survived"
    assert any(
        "uncaught exception in a timer callback: Error: in a timer" in r.getMessage()
        and h.id in r.getMessage()
        for r in caplog.records
    )
    err = script_error(rt, "setTimeout('not a function', 1);")
    assert "setTimeout: the callback must be a function" in err.message


def test_promise_all_over_several_host_requests(rt: Runtime) -> None:
    code = """
    const [a, b, c, d, e, f] = await Promise.all([
      spell.run({lang: 'python', target: 'targets:add', args: {x: 1, y: 2}}),
      spell.run({lang: 'lua', code: 'spell.sleep(0.005) return 10'}),
      spell.run({lang: 'js', code: 'await spell.yield(); return "js";'}),
      spell.sleep(0.01),
      spell.yield(),
      new Promise((resolve) => setTimeout(() => resolve('timer'), 1)),
    ]);
    const settled = await Promise.allSettled([
      spell.run({lang: 'python', target: 'targets:fail', args: {message: 'nope'}}),
      spell.run({lang: 'python', target: 'targets:aadd', args: {x: 1, y: 1}}),
    ]);
    const winner = await Promise.race([spell.sleep(5).then(() => 'slow'),
                                       spell.sleep(0).then(() => 'fast')]);
    return [a, b, c, d, e, f, settled.map((s) => s.status), settled[1].value,
            settled[0].reason.message.endsWith('ValueError: nope'), winner];
    """
    assert run(rt, code) == [
        3,
        10,
        "js",
        None,
        None,
        "timer",
        ["rejected", "fulfilled"],
        2,
        True,
        "fast",
    ]


def test_a_never_settling_promise_is_a_deadlock_error(rt: Runtime) -> None:
    err = script_error(rt, "await new Promise(() => {}); return 1;")
    assert "deadlock" in err.message


# -- across engines ---------------------------------------------------------------------------


def test_lua_awaits_js_that_awaits_lua(rt: Runtime) -> None:
    inner_lua = "spell.sleep(0) return 'lua3(' .. spell.args.v .. ')'"
    js_code = (
        "await spell.yield();"
        f"const v = await spell.run({{lang: 'lua', code: {inner_lua!r},"
        "                            args: {v: spell.args.v + 1}});"
        "return 'js2(' + v + ')';"
    )
    lua_code = (
        "local h = spell.submit{lang = 'js', code = spell.args.js, args = {v = spell.args.v}} "
        "return 'lua1(' .. spell.await(h) .. ')'"
    )
    got = rt.result(rt.submit(Task.lua(lua_code, args={"js": js_code, "v": 1})), timeout=WAIT)
    assert got == "lua1(js2(lua3(2)))"


def test_js_awaits_lua_that_awaits_js(rt: Runtime) -> None:
    inner_js = "await spell.sleep(0); return 'js3(' + spell.args.v + ')';"
    lua_code = (
        "spell.yield() "
        "local v = spell.run{lang = 'js', code = spell.args.inner, args = {v = spell.args.v * 10}} "
        "return 'lua2(' .. v .. ')'"
    )
    js_code = (
        "const h = spell.submit({lang: 'lua', code: spell.args.lua,"
        "                        args: {v: spell.args.v, inner: spell.args.inner}});"
        "return 'js1(' + await spell.await(h) + ')';"
    )
    got = run(rt, js_code, args={"lua": lua_code, "inner": inner_js, "v": 4})
    assert got == "js1(lua2(js3(40)))"


def test_errors_cross_engines_as_catchable_errors(rt: Runtime) -> None:
    # JS catches a Lua error; Lua catches a JS error; both name the failing task's message
    got = run(
        rt,
        "try { await spell.run({lang: 'lua', code: 'error(\"from lua\", 0)'}); }"
        "catch (e) { return e.message; }",
    )
    assert got.endswith("failed: from lua")
    ok, e = rt.result(
        rt.submit(Task.lua("return {pcall(spell.run, {lang = 'js', code = 'null.x'})}")),
        timeout=WAIT,
    )
    assert ok is False and "TypeError: cannot read property 'x' of null" in e


def test_values_cross_engines_unchanged(rt: Runtime) -> None:
    v = {"i": 7, "f": 0.5, "s": "x\u00e9", "raw": b"\x00\xff", "list": [1, [2]], "map": {"k": True}}
    code = (
        "return await spell.run({lang: 'lua', code: 'return spell.args.v',"
        "                        args: {v: spell.args.v}});"
    )
    assert run(rt, code, args={"v": v}) == v
    lua = "return spell.run{lang = 'js', code = 'return spell.args.v;', args = {v = spell.args.v}}"
    assert rt.result(rt.submit(Task.lua(lua, args={"v": v})), timeout=WAIT) == v


# -- cancellation and timeouts ----------------------------------------------------------------


def test_cancel_a_task_waiting_on_a_timer(rt: Runtime, ready: Ready) -> None:
    h = rt.submit(
        Task.js(f"{ready.say('t')} await new Promise((r) => setTimeout(r, 3600e3)); return 1;")
    )
    ready.wait("t")
    cancelled_at_once(rt, h)


def test_cancel_a_task_awaiting_several_requests(rt: Runtime, ready: Ready) -> None:
    h = rt.submit(
        Task.js(
            f"{ready.say('all')} await Promise.all([spell.sleep(3600), "
            "spell.wait_event('test.js.never'), spell.run({lang: 'lua', "
            "code: 'spell.sleep(3600)'})]);"
        )
    )
    ready.wait("all")
    cancelled_at_once(rt, h)


# -- errors -------------------------------------------------------------------------------------


def test_syntax_error_has_the_js_message_and_the_users_line(rt: Runtime) -> None:
    err = script_error(rt, "const a = 1;\n\nlet = ;\n")
    assert err.message == "SyntaxError: variable name expected (line 3)"
    assert "task.js:3" in err.traceback
    err = script_error(rt, "return 1; }); (function () {")
    assert "SyntaxError" in err.message  # escaping the function body is refused


def test_runtime_error_message_and_stack(rt: Runtime) -> None:
    code = "function inner(x) {\n  return x.y.z;\n}\nfunction outer() {\n  return inner({});\n}\nreturn outer();"  # noqa: E501
    err = script_error(rt, code)
    assert err.message == "TypeError: cannot read property 'z' of undefined (line 2)"
    assert err.traceback.splitlines() == [
        "    at inner (task.js:2)",
        "    at outer (task.js:5)",
        "    at <task> (task.js:7)",
    ]
    assert "ls$" not in err.traceback and "<input>" not in err.traceback


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("throw 'plain';", "uncaught plain"),
        ("throw {code: 7};", 'uncaught {"code":7}'),
        ("throw 42;", "uncaught 42"),
        ("throw new RangeError('bad range');", "RangeError: bad range (line 1)"),
        ("class MyErr extends Error {}\nthrow new MyErr('mine');", "Error: mine (line 2)"),
        ("await Promise.reject(new Error('rejected'));", "Error: rejected (line 1)"),
    ],
)
def test_thrown_values(rt: Runtime, code: str, message: str) -> None:
    assert script_error(rt, code).message == message


def test_unhandled_rejection_of_a_spell_promise_is_logged_with_the_task_id(
    rt: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    code = """
    const h = spell.submit({lang: 'python', target: 'targets:fail', args: {message: 'lost'}});
    spell.await(h);  // fire and forget: nothing ever handles its rejection
    try { await spell.await(h); } catch (e) { return 'caught the second one'; }
    """
    with caplog.at_level(logging.WARNING, logger="llmspell"):
        h = rt.submit(Task.js(code))
        assert rt.result(h, timeout=WAIT) == "caught the second one"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("unhandled rejection of a spell promise" in m and h.id in m for m in warnings), (
        warnings
    )


# -- isolation -----------------------------------------------------------------------------------


def test_no_host_access(rt: Runtime) -> None:
    names = [
        "require",
        "std",
        "os",
        "process",
        "fetch",
        "XMLHttpRequest",
        "WebSocket",
        "Deno",
        "Bun",
        "print",
        "load",
        "scriptArgs",
        "Worker",
        "module",
        "exports",
        "importScripts",
        "__ls_resume",
        "__ls_lockdown",
        "WebAssembly",
    ]
    got = run(rt, f"return [{', '.join(f'typeof {n}' for n in names)}];")
    assert got == ["undefined"] * len(names)
    for mod in ("os", "std", "/etc/passwd", "./task.js", "node:fs"):
        got = run(
            rt,
            f"try {{ await import({mod!r}); return 'loaded'; }}catch (e) {{ return String(e); }}",
        )
        assert "could not load module" in got, (mod, got)
    err = script_error(rt, "Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 6e4);")
    assert "cannot block in this thread" in err.message


@pytest.mark.parametrize(
    "code",
    [
        "Function('return 1')",
        "new Function('return 1')",
        "(() => 1).constructor('return 1')",
        "(async () => 1).constructor('return 1')",
        "(function* () {}).constructor('yield 1')",
        "(async function* () {}).constructor('yield 1')",
        "Reflect.construct(Function, ['return 1'])",
    ],
)
def test_no_code_compiled_at_run_time(rt: Runtime, code: str) -> None:
    err = script_error(rt, f"return {code};")
    assert "EvalError: compiling code at run time (eval, Function) is not allowed" in err.message
    # what the replaced constructors still do
    assert run(
        rt,
        "return [(() => 1) instanceof Function, typeof Function, Function.name,"
        " (async () => 1) instanceof Function];",
    ) == [True, "function", "Function", True]


@pytest.mark.parametrize(
    "code",
    [
        "Array.prototype.evil = 1;",
        "globalThis.shared = 1;",
        "sharedVar = 1;",
        "Object.prototype.polluted = 1;",
        "Math.max = () => 0;",
        "JSON.parse = null;",
        "Promise.prototype.then = null;",
        "spell.__proto__.sleep = null;",
        "Object.getPrototypeOf(spell).sleep = null;",
        "delete Object.prototype.toString;",
    ],
)
def test_shared_built_ins_are_frozen(rt: Runtime, code: str) -> None:
    err = script_error(rt, code)
    assert err.message.split(":")[0] in ("TypeError", "ReferenceError"), err.message
    got = run(
        rt,
        "return [typeof [].evil, typeof globalThis.shared, typeof ({}).polluted,"
        " Math.max(1, 2), typeof JSON.parse, typeof Promise.prototype.then];",
    )
    assert got == ["undefined", "undefined", "undefined", 2, "function", "function"]


def test_tasks_do_not_share_state(rt: Runtime, ready: Ready) -> None:
    a = rt.submit(
        Task.js(
            f"spell.args.box.v = 'changed by a'; {ready.say('a')}"
            "await spell.wait_event('test.js.share'); return spell.args.box;",
            args={"box": {"v": "a"}},
        )
    )
    ready.wait("a")
    assert run(rt, "return [typeof box, spell.args.box.v];", args={"box": {"v": "b"}}) == [
        "undefined",
        "b",
    ]
    rt.emit("test.js.share")
    assert rt.result(a, timeout=WAIT) == {"v": "changed by a"}


def test_own_objects_stay_writable(rt: Runtime) -> None:
    code = """
    class Old extends Error {}
    Old.prototype.name = 'Old';
    const o = {}; o.toString = () => 'mine';
    function F() {} F.prototype.constructor = 'x';
    const arr = [3, 1, 2]; arr.sort();
    return [String(new Old('m')), String(o), arr, F.prototype.constructor];
    """
    assert run(rt, code) == ["Old: m", "mine", [1, 2, 3], "x"]


# -- limits: a runaway script fails its own task, the engine goes on ---------------------------


@pytest.fixture
def limited() -> Iterator[Runtime]:
    runtime = Runtime(step_budget=0.2, js_memory=48 * 1024 * 1024, script_python=SCRIPT_PYTHON)
    try:
        yield runtime
    finally:
        runtime.close()


@pytest.fixture
def small() -> Iterator[Runtime]:
    runtime = Runtime(js_memory=48 * 1024 * 1024)  # the default step budget: 1 s
    try:
        yield runtime
    finally:
        runtime.close()


def test_a_typed_array_bomb_after_a_yield_fails_its_task(small: Runtime) -> None:
    rt = small
    bomb = "await spell.yield(); const b = []; while (true) b.push(new Uint8Array(1e6));"
    assert "out of memory" in script_error(rt, bomb).message
    assert run(rt, "return [1, 2].length;") == 2


def test_deep_recursion_fails_its_task(limited: Runtime) -> None:
    err = script_error(limited, "function f(n) { return f(n + 1) + 1; } return f(0);")
    assert "stack overflow" in err.message or "RangeError" in err.message, err.message
    assert run(limited, "return 'fine';") == "fine"


# -- property: random programs end in the state they imply ------------------------------------


# -- moved from test_bad_input.py: bad input to this feature ----------------------------


def test_a_lone_surrogate_in_a_js_string_crosses_and_loses_nothing(rt: Runtime) -> None:
    hs = rt.submit_many(
        [Task.js("return 1") for _ in range(5)]
        + [Task.js("return '\\ud800'"), Task.js("return {'\\udc00': 1}")]
        + [Task.js("return 2") for _ in range(5)]
    )
    values = [rt.result(h, timeout=WAIT) for h in hs]
    assert values == [1] * 5 + ["\ud800", {"\udc00": 1}] + [2] * 5
    with pytest.raises(TaskFailed, match="Error"):
        rt.result(rt.submit(Task.js("throw new Error('\\ud800')")), timeout=WAIT)


@pytest.mark.parametrize(
    "code",
    [
        "let a = []; for (let i = 0; i < 100000; i++) a = [a]; JSON.stringify(a); return 1",
        "let a = []; for (let i = 0; i < 100000; i++) a = [a]; return JSON.stringify(a, ['x'])",
        "const d = {toJSON() { let a = []; for (let i = 0; i < 100000; i++) a = [a]; return a }};"
        " return JSON.stringify({d})",
    ],
)
def test_stringifying_a_deep_js_value_fails_its_task_not_the_process(
    rt: Runtime, code: str
) -> None:
    with pytest.raises(TaskFailed, match="Maximum call stack size exceeded"):
        rt.result(rt.submit(Task.js(code)), timeout=WAIT)
    deep_log = "let a = {}; for (let i = 0; i < 100000; i++) a = {a}; console.log(a); return 2"
    assert rt.result(rt.submit(Task.js(deep_log)), timeout=WAIT) == 2
    assert rt.result(rt.submit(Task.js("return JSON.stringify({a: [1]}, null, 1)")), timeout=WAIT)
