"""JavaScript tasks end to end through ``Runtime()`` (embedded): values, every ``spell``
call, timers, JS <-> Lua <-> Python tasks, cancellation, timeouts, errors, isolation and
the limits.

The VM itself is tested in ``test_js_vm.py``; here each behaviour is seen the way a user
sees it: ``rt.result``, ``rt.status``, ``rt.progress``, events, logs. Scripts that must be
suspended before the test acts announce it with an event (``test.ready.<tag>``) that the
test waits for, so no test depends on timing; waits are bounded hang guards only.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import SCRIPT_PYTHON
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmspell import Handle, Runtime, ScriptError, Subscription, Task, TaskCancelled, TaskTimeout

WAIT = 10.0  # hang guard for every wait in this file


def run(rt: Runtime, code: str, **opts: Any) -> Any:
    return rt.result(rt.submit(Task.js(code, **opts)), timeout=WAIT)


def script_error(rt: Runtime, code: str, **opts: Any) -> ScriptError:
    h = rt.submit(Task.js(code, **opts))
    with pytest.raises(ScriptError) as info:
        rt.result(h, timeout=WAIT)
    assert rt.status(h) == "failed"
    assert info.value.engine == "js"
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

    def js(self, tag: str) -> str:
        return f"spell.emit('{self.name}', '{tag}');"

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
        ("undefined", None),
        ("null", None),
        ("true", True),
        ("false", False),
        ("42", 42),
        ("-7", -7),
        ("3.0", 3),  # JavaScript has one number type: an integral number comes back an int
        ("7 / 2", 3.5),
        ("2 ** 31", 2**31),
        ("2 ** 53", 2**53),
        ("-(2 ** 53)", -(2**53)),
        ("2 ** 62", 2**62),  # integral and exact as a double: still an int
        ("2 ** 63", 2.0**63),  # beyond int64: a float
        ("1e300", 1e300),
        ("10n", 10),
        ("2n ** 64n - 1n", 2**64 - 1),
        ("-(2n ** 63n)", -(2**63)),
        ("'hello'", "hello"),
        ("'h\\u00e9llo \\u{1F600}'", "h\u00e9llo \U0001f600"),
        ("''", ""),
        ("new Uint8Array([0, 1, 255])", b"\x00\x01\xff"),
        ("new Uint8Array([7, 8]).buffer", b"\x07\x08"),
        ("new Uint8Array(0)", b""),
        ("[]", []),
        ("{}", {}),
        ("[1, [2, [3, []]]]", [1, [2, [3, []]]]),
        ("{x: 1, y: {z: [true, null, 'a']}}", {"x": 1, "y": {"z": [True, None, "a"]}}),
        ("[undefined, null]", [None, None]),
        ("{a: undefined}", {"a": None}),
        ("{'1': 'a', '': 'empty'}", {"1": "a", "": "empty"}),
        ("new Date(0)", "1970-01-01T00:00:00.000Z"),  # toJSON
        ("new (class P { constructor() { this.x = 1 } })()", {"x": 1}),
        ("{toJSON() { return [1, 2] }}", [1, 2]),
    ],
)
def test_result_values(rt: Runtime, expr: str, expected: Any) -> None:
    got = run(rt, f"return {expr};")
    assert got == expected
    assert type(got) is type(expected)


def test_special_floats(rt: Runtime) -> None:
    nan, inf, ninf = run(rt, "return [NaN, Infinity, -Infinity];")
    assert math.isnan(nan) and inf == math.inf and ninf == -math.inf
    assert run(
        rt,
        "return [Number.isNaN(spell.args.n), spell.args.i];",
        args={"n": math.nan, "i": math.inf},
    ) == [True, math.inf]


def test_args_round_trip(rt: Runtime) -> None:
    args = {
        "n": 2**53 - 1,
        "neg": -(2**31),
        "f": 0.25,
        "s": "caf\u00e9 \U0001f600",
        "raw": b"\xff\x00\x01",
        "nested": {"a": [1, [2, [3]], {"b": None, "c": "d"}], "empty": {}, "list": []},
        "flag": False,
        "none": None,
        "odd keys": {"__proto__": 1, "\x00x": 2, "constructor": 3},
    }
    assert run(rt, "return spell.args;", args=args) == args


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


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("return {items: [1, 2, 3, () => 1]};", "result.items[3]: cannot convert a function"),
        ("return [Symbol('s')];", "result[0]: cannot convert a symbol"),
        (
            "const a = {}; a.self = a; return {x: [a]};",
            "result.x[0].self: cannot convert a cycle (it contains itself)",
        ),
        ("return {big: 2n ** 64n};", "result.big: cannot convert a BigInt wider than 64 bits"),
        (
            "return {'odd key': -(2n ** 63n) - 1n};",
            'result["odd key"]: cannot convert a BigInt wider than 64 bits',
        ),
        ("return {m: new Map([[1, 2]])};", "result.m: cannot convert a Map"),
        ("return {s: new Set()};", "result.s: cannot convert a Set"),
        ("return {e: new TypeError('x')};", "result.e: cannot convert a TypeError"),
        ("return {p: Promise.resolve(1)};", "result.p: cannot convert a Promise"),
        ("return new Int32Array(2);", "result: cannot convert an Int32Array"),
    ],
)
def test_unconvertible_results_name_the_path(rt: Runtime, code: str, message: str) -> None:
    err = script_error(rt, code)
    assert err.message == message


def test_a_shared_object_is_not_a_cycle(rt: Runtime) -> None:
    assert run(rt, "const o = {v: 1}; return [o, {o}, [o]];") == [
        {"v": 1},
        {"o": {"v": 1}},
        [{"v": 1}],
    ]


def test_unconvertible_spell_arguments_raise_catchable_errors(rt: Runtime) -> None:
    code = """
    const out = [];
    for (const f of [() => spell.emit('x', {f: [1, () => 1]}),
                     () => spell.submit({lang: 'js', code: 'return 1', args: {s: Symbol()}}),
                     () => spell.run({lang: 'js', code: 'return 1', args: {b: 2n ** 70n}})]) {
      try { await f(); out.push('no error'); } catch (e) { out.push(e.name + ': ' + e.message); }
    }
    return out;
    """
    assert run(rt, code) == [
        "TypeError: spell.emit payload.f[1]: cannot convert a function",
        "TypeError: spell.submit spec.args.s: cannot convert a symbol",
        "TypeError: spell.submit spec.args.b: cannot convert a BigInt wider than 64 bits",
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


def test_args_input_and_task_id(rt: Runtime) -> None:
    h = rt.submit(Task.js("return [spell.task_id, spell.args.a, spell.input];", args={"a": 1}))
    assert rt.result(h, timeout=WAIT) == [h.id, 1, None]
    assert run(rt, "return [spell.args, spell.input];") == [None, None]
    got = run(
        rt,
        "return await spell.run({lang: 'js', code: 'return [spell.input, spell.args];', "
        "input: {k: [1, 2]}, args: {z: 'z'}});",
    )
    assert got == [{"k": [1, 2]}, {"z": "z"}]


def test_input_from_a_pipeline(rt: Runtime) -> None:
    result = rt.coordinate(
        [Task.js("return {n: 20};"), Task.js("return spell.input.n * 2 + 2;")],
        "pipeline",
        timeout=WAIT,
    )
    assert result.ok and result.results == [{"n": 20}, 42]


def test_own_task_id_is_a_fresh_id_for_each_task(rt: Runtime) -> None:
    handles = rt.submit_many([Task.js("return spell.task_id;") for _ in range(5)])
    assert [rt.result(h, timeout=WAIT) for h in handles] == [h.id for h in handles]
    assert run(rt, "return spell.task_id;", id="my-own-js-id") == "my-own-js-id"


def test_submit_and_await_js_children(rt: Runtime) -> None:
    code = """
    const hs = [];
    for (let i = 1; i <= 5; i++) {
      hs.push(spell.submit({lang: 'js', code: 'await spell.yield(); return spell.args.i * 10;',
                            args: {i}}));
    }
    const out = [];
    for (let i = 4; i >= 0; i--) out.push(await spell.await(hs[i]));
    return [typeof hs[0], out];
    """
    assert run(rt, code) == ["string", [50, 40, 30, 20, 10]]


def test_await_the_same_task_twice_and_from_two_tasks(rt: Runtime) -> None:
    child = rt.submit(Task.js("await spell.sleep(0.01); return 'v';"))
    code = "const a = await spell.await(spell.args.h); return a + await spell.await(spell.args.h);"
    handles = rt.submit_many([Task.js(code, args={"h": child.id}) for _ in range(2)])
    assert [rt.result(h, timeout=WAIT) for h in handles] == ["vv", "vv"]


def test_js_awaits_python_tasks(rt: Runtime) -> None:
    code = """
    const a = await spell.run({lang: 'python', target: 'targets:add', args: {x: 2, y: 3}});
    const b = await spell.run({target: 'targets:aadd', args: {x: a, y: 10}});  // lang implied
    const hs = [];
    for (let i = 1; i <= 20; i++) {
      hs.push(spell.submit({lang: 'python', target: 'targets:aadd', args: {x: i, y: 1}}));
    }
    let sum = 0;
    for (const h of hs) sum += await spell.await(h);
    return [a, b, sum];
    """
    assert run(rt, code) == [5, 15, sum(range(1, 21)) + 20]


def test_python_failure_is_a_catchable_js_error(rt: Runtime) -> None:
    code = """
    const h = spell.submit({lang: 'python', target: 'targets:fail', args: {message: 'no good'}});
    try { await spell.await(h); return 'not raised'; }
    catch (e) { return [e instanceof Error, e.message]; }
    """
    is_error, message = run(rt, code)
    assert is_error is True
    assert message.startswith("awaited task ") and message.endswith(" failed: ValueError: no good")
    err = script_error(
        rt, "await spell.run({lang: 'python', target: 'targets:fail', args: {message: 'x'}});"
    )
    assert err.message.endswith("failed: ValueError: x")


def test_bad_submit_specs_fail_the_await_with_a_catchable_error(rt: Runtime) -> None:
    for spec, message in [
        ("{lang: 'js', code: 'return 1', bogus: 1}", "unknown field 'bogus'"),
        ("{lang: 'cobol', code: 'x'}", "say what to run"),
        ("{lang: 'python', target: 'nocolon'}", "target='module:function'"),
        ("{lang: 'js', code: 'return 1', priority: 'urgent'}", "priority must be one of"),
        ("{lang: 'js', code: 'return 1', timeout: -1}", "timeout must be a positive"),
        ("{lang: 'js'}", "a js task needs code"),
    ]:
        code = f"try {{ await spell.run({spec}); return 'ok'; }} catch (e) {{ return e.message; }}"
        got = run(rt, code)
        assert got.startswith("spell.submit failed:") and message in got, (spec, got)
    for bad in ("'not an object'", "[1, 2]", "null"):
        got = run(rt, f"try {{ spell.submit({bad}); }} catch (e) {{ return e.message; }}")
        assert got.startswith("spell.submit: the spec must be an object"), got


def test_await_of_an_unknown_task_fails(rt: Runtime) -> None:
    got = run(rt, "try { await spell.await('no-such-task'); } catch (e) { return e.message; }")
    assert "no-such-task" in got
    got = run(rt, "try { await spell.await(42); } catch (e) { return e.message; }")
    assert got == "spell.await: not a handle: 42"


def test_sleep_and_yield(rt: Runtime) -> None:
    code = """
    let n = 0;
    for (let i = 0; i < 50; i++) { await spell.yield(); n++; }
    const r = await spell.sleep(0.01);
    await spell.sleep(0);
    return [n, r == null];
    """
    assert run(rt, code) == [50, True]
    for bad in ("-1", "'soon'", "undefined", "Infinity"):
        err = script_error(rt, f"await spell.sleep({bad});")
        assert "spell.sleep: expected a number of seconds >= 0" in err.message, err.message


def test_yielding_tasks_interleave(rt: Runtime, ready: Ready) -> None:
    spinner = rt.submit(Task.js(f"{ready.js('spin')} while (true) await spell.yield();"))
    ready.wait("spin")
    code = "let s = 0; for (let i = 1; i <= 10; i++) { await spell.yield(); s += i; } return s;"
    assert run(rt, code) == 55
    assert rt.status(spinner) == "running"
    assert rt.cancel(spinner)


def test_wait_event_without_timeout(rt: Runtime, ready: Ready) -> None:
    h = rt.submit(Task.js(f"{ready.js('w')} return await spell.wait_event('test.js.go.*');"))
    ready.wait("w")
    assert rt.status(h) == "running"
    rt.emit("test.js.other", 1)  # does not match
    rt.emit("test.js.go.now", {"k": [1, 2], "raw": b"\x01"})
    assert rt.result(h, timeout=WAIT) == {
        "name": "test.js.go.now",
        "payload": {"k": [1, 2], "raw": b"\x01"},
    }


def test_wait_event_with_a_timeout_that_does_not_run_out(rt: Runtime, ready: Ready) -> None:
    h = rt.submit(
        Task.js(
            f"{ready.js('w')} const e = await spell.wait_event('test.js.go2', 60);"
            "return [e.name, e.payload];"
        )
    )
    ready.wait("w")
    rt.emit("test.js.go2", "payload")
    assert rt.result(h, timeout=WAIT) == ["test.js.go2", "payload"]


def test_wait_event_timeout_rejects_with_a_catchable_error(rt: Runtime) -> None:
    base = rt.stats()["events"]["subscriptions"]
    code = "try { await spell.wait_event('test.js.never', 0.02); } catch (e) { return e.message; }"
    assert run(rt, code) == "timed out waiting for event"
    err = script_error(rt, "await spell.wait_event('test.js.never', 0);")
    assert "timed out waiting for event" in err.message
    err = script_error(rt, "await spell.wait_event(42);")
    assert "spell.wait_event: the pattern isn't a str" in err.message
    until(lambda: rt.stats()["events"]["subscriptions"] == base, "timed-out waits unsubscribed")


def test_one_js_task_wakes_another(rt: Runtime, ready: Ready) -> None:
    waiter = rt.submit(
        Task.js(f"{ready.js('w')} return (await spell.wait_event('test.js.ping.*')).payload.v;")
    )
    ready.wait("w")
    assert run(rt, "spell.emit('test.js.ping.1', {v: 'from js'}); return 1;") == 1
    assert rt.result(waiter, timeout=WAIT) == "from js"


def test_emit_is_seen_by_subscribers(rt: Runtime) -> None:
    with rt.subscribe("js.test.*") as sub:
        run(
            rt,
            "spell.emit('js.test.a', {list: [1, 2], s: 'x', b: new Uint8Array([1])});"
            "spell.emit('js.test.b');",
        )
        first, second = sub.get(timeout=WAIT), sub.get(timeout=WAIT)
    assert (first.name, first.payload) == ("js.test.a", {"list": [1, 2], "s": "x", "b": b"\x01"})
    assert (second.name, second.payload) == ("js.test.b", None)
    err = script_error(rt, "spell.emit(42);")
    assert "spell.emit: the event name isn't a str" in err.message


def test_progress_while_running_and_after(rt: Runtime, ready: Ready) -> None:
    h = rt.submit(
        Task.js(
            "spell.progress(1, 4, 'first step');"
            f"{ready.js('p')} await spell.wait_event('test.js.progress.go');"
            "spell.progress(4, 4, 'all done'); return 'ok';"
        )
    )
    ready.wait("p")
    p = rt.progress(h)
    assert p is not None
    assert (p.completed_steps, p.total_steps, p.current_operation) == (1, 4, "first step")
    rt.emit("test.js.progress.go")
    assert rt.result(h, timeout=WAIT) == "ok"
    p = rt.progress(h)
    assert p is not None
    assert (p.completed_steps, p.total_steps, p.current_operation) == (4, 4, "all done")
    assert p.resource_usage.memory_bytes > 0
    err = script_error(rt, "spell.progress('one');")
    assert "spell.progress: done must be a number" in err.message


@pytest.mark.parametrize(
    ("call", "kind"),
    [("spell.tool('nope', {a: 1})", "tool"), ("spell.agent('nope', 'hi')", "agent")],
)
def test_tool_and_agent_fail_clearly_when_none_is_registered(
    rt: Runtime, call: str, kind: str
) -> None:
    err = script_error(rt, f"return await {call};")
    assert err.message.startswith("Error: awaited task") and kind in err.message, err.message
    got = run(rt, f"try {{ return await {call}; }} catch (e) {{ return e.message; }}")
    assert got.startswith("awaited task") and kind in got


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


def cancelled_at_once(rt: Runtime, h: Handle) -> None:
    assert rt.status(h) == "running"
    assert rt.cancel(h) is True
    assert rt.status(h) == "cancelled"
    with pytest.raises(TaskCancelled):
        rt.result(h, timeout=WAIT)
    assert rt.cancel(h) is False


def test_cancel_a_sleeping_task(rt: Runtime, ready: Ready) -> None:
    h = rt.submit(Task.js(f"{ready.js('s')} await spell.sleep(3600); return 'woke';"))
    ready.wait("s")
    cancelled_at_once(rt, h)
    assert run(rt, "await spell.sleep(0.01); return 'engine goes on';") == "engine goes on"


def test_cancel_a_task_waiting_on_a_timer(rt: Runtime, ready: Ready) -> None:
    h = rt.submit(
        Task.js(f"{ready.js('t')} await new Promise((r) => setTimeout(r, 3600e3)); return 1;")
    )
    ready.wait("t")
    cancelled_at_once(rt, h)


def test_cancel_an_awaiting_task(rt: Runtime, ready: Ready) -> None:
    child = rt.submit(Task.js(f"{ready.js('child')} await spell.sleep(3600);"))
    ready.wait("child")
    h = rt.submit(
        Task.js(
            f"const h = spell.args.h; {ready.js('a')} return await spell.await(h);",
            args={"h": child.id},
        )
    )
    ready.wait("a")
    cancelled_at_once(rt, h)
    assert rt.status(child) == "running"  # cancelling the awaiter leaves the awaited alone
    cancelled_at_once(rt, child)


def test_cancel_a_task_awaiting_several_requests(rt: Runtime, ready: Ready) -> None:
    h = rt.submit(
        Task.js(
            f"{ready.js('all')} await Promise.all([spell.sleep(3600), "
            "spell.wait_event('test.js.never'), spell.run({lang: 'lua', "
            "code: 'spell.sleep(3600)'})]);"
        )
    )
    ready.wait("all")
    cancelled_at_once(rt, h)


def test_cancel_an_event_waiting_task(rt: Runtime, ready: Ready) -> None:
    base = rt.stats()["events"]["subscriptions"]
    h = rt.submit(Task.js(f"{ready.js('e')} return await spell.wait_event('test.js.cancel.*');"))
    ready.wait("e")
    assert rt.stats()["events"]["subscriptions"] == base + 1
    cancelled_at_once(rt, h)
    until(lambda: rt.stats()["events"]["subscriptions"] == base, "the subscription was dropped")
    rt.emit("test.js.cancel.late")
    assert rt.status(h) == "cancelled"


def test_cancelling_the_awaited_task_rejects_the_awaiter(rt: Runtime, ready: Ready) -> None:
    child = rt.submit(Task.js(f"{ready.js('child')} await spell.sleep(3600);"))
    ready.wait("child")
    catcher = rt.submit(
        Task.js(
            f"const h = spell.args.h; {ready.js('c')}"
            "try { await spell.await(h); return 'not raised'; }"
            "catch (e) { return [e instanceof Error, e.message]; }",
            args={"h": child.id},
        )
    )
    plain = rt.submit(
        Task.js(f"{ready.js('p')} return await spell.await(spell.args.h);", args={"h": child.id})
    )
    ready.wait("c", "p")
    assert rt.cancel(child) is True
    assert rt.result(catcher, timeout=WAIT) == [True, f"awaited task {child.id} was cancelled"]
    with pytest.raises(ScriptError, match=f"awaited task {child.id} was cancelled"):
        rt.result(plain, timeout=WAIT)


def test_task_timeout_of_a_sleeping_script(rt: Runtime) -> None:
    h = rt.submit(Task.js("await spell.sleep(3600); return 'never';", timeout=0.1))
    with pytest.raises(TaskTimeout):
        rt.result(h, timeout=WAIT)
    assert rt.status(h) == "timed_out"
    assert run(rt, "return 'next';") == "next"


def test_timeout_of_an_awaited_task_rejects_the_awaiter(rt: Runtime) -> None:
    code = """
    const h = spell.submit({lang: 'js', code: 'await spell.sleep(3600);', timeout: 0.05});
    try { await spell.await(h); } catch (e) { return e.message; }
    """
    got = run(rt, code)
    assert got.startswith("awaited task ") and " timed out: " in got, got


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


def test_runtime_error_after_waiting_keeps_line_numbers(rt: Runtime) -> None:
    code = "await spell.sleep(0);\nawait spell.run({lang: 'python', target: 'targets:add', args: {x: 1, y: 1}});\n\nundefinedThing();"  # noqa: E501
    err = script_error(rt, code)
    assert err.message == "ReferenceError: undefinedThing is not defined (line 4)"
    assert "task.js:4" in err.traceback


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
            f"spell.args.box.v = 'changed by a'; {ready.js('a')}"
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


OTHER = "let n = 0; for (let i = 1; i <= 20; i++) { await spell.sleep(0.005); n += i; } return n;"


@pytest.mark.parametrize(
    "code",
    [
        "while (true) {}",
        "await spell.yield(); for (;;) {}",
        "await spell.run({lang: 'python', target: 'targets:add', args: {x: 1, y: 1}});"
        "while (true) { try { while (true) {} } catch (e) {} }",
        "setTimeout(() => { while (true) {} }, 0); await spell.sleep(5);",
        "const f = () => Promise.resolve().then(f); f(); await spell.sleep(5);",
    ],
)
def test_endless_loop_fails_its_task_and_others_are_served(limited: Runtime, code: str) -> None:
    rt = limited
    other = rt.submit(Task.js(OTHER))
    loop = rt.submit(Task.js(code))
    with pytest.raises(ScriptError, match=r"more than its step budget of 0\.2 s") as info:
        rt.result(loop, timeout=WAIT)
    assert rt.status(loop) == "failed"
    assert info.value.engine == "js"
    assert rt.result(other, timeout=WAIT) == 210
    assert run(rt, "await spell.yield(); return 'served after';") == "served after"


@pytest.fixture
def small() -> Iterator[Runtime]:
    runtime = Runtime(js_memory=48 * 1024 * 1024)  # the default step budget: 1 s
    try:
        yield runtime
    finally:
        runtime.close()


BOMB = "const s = 'x'.repeat(1e5); const a = []; while (true) a.push(s + a.length);"


def test_memory_bomb_fails_its_task_and_the_engine_goes_on(small: Runtime) -> None:
    rt = small
    ready = Ready(rt)
    other = rt.submit(
        Task.js(
            f"const keep = [1, 2, 3]; {ready.js('o')} await spell.sleep(0.01);return keep.length;"
        )
    )
    ready.wait("o")
    bomb = rt.submit(Task.js(BOMB))
    with pytest.raises(ScriptError, match="out of memory") as info:
        rt.result(bomb, timeout=WAIT)
    assert "48" in info.value.message or str(48 * 1024 * 1024) in info.value.message
    assert rt.status(bomb) == "failed"
    assert rt.result(other, timeout=WAIT) == 3
    assert run(rt, "return 'y'.repeat(1e6).length;") == 1_000_000
    bomb2 = rt.submit(
        Task.js("await spell.yield(); const b = [];while (true) b.push(new Uint8Array(1e6));")
    )
    with pytest.raises(ScriptError, match="out of memory"):
        rt.result(bomb2, timeout=WAIT)
    assert run(rt, "return [1, 2].length;") == 2
    ready.sub.close()


def test_deep_recursion_fails_its_task(limited: Runtime) -> None:
    err = script_error(limited, "function f(n) { return f(n + 1) + 1; } return f(0);")
    assert "stack overflow" in err.message or "RangeError" in err.message, err.message
    assert run(limited, "return 'fine';") == "fine"


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
    st.tuples(st.just("sleep"), st.sampled_from([0, 0.001, 0.005])),
    st.tuples(st.just("python"), st.integers(-1000, 1000)),
    st.tuples(st.just("lua"), st.integers(-1000, 1000)),
    st.tuples(st.just("js"), st.integers(-1000, 1000)),
    st.tuples(st.just("all"), st.integers(1, 3)),
    st.tuples(st.just("await_fail"), st.booleans()),  # caught by try?
    st.tuples(st.just("throw"), st.text("abcxyz ", min_size=1, max_size=8)),
    st.tuples(st.just("return"), st.integers(-5, 5)),
)
program = st.lists(step, max_size=6)


def build(steps: list[tuple[Any, ...]]) -> tuple[str, str, Any]:
    """JS code for ``steps`` and the (status, value or end of the error message) it implies."""
    lines = ["let acc = 0;"]
    acc = 0
    for n, s in enumerate(steps):
        kind = s[0]
        if kind == "yield":
            lines.append("await spell.yield();")
        elif kind == "sleep":
            lines.append(f"await spell.sleep({s[1]});")
        elif kind == "python":
            lines.append(
                "acc = await spell.run({lang: 'python', target: 'targets:add', "
                f"args: {{x: acc, y: {s[1]}}}}});"
            )
            acc += s[1]
        elif kind == "lua":
            lines.append(
                "acc = await spell.run({lang: 'lua', code: 'spell.yield() return "
                f"spell.args.a + {s[1]}', args: {{a: acc}}}});"
            )
            acc += s[1]
        elif kind == "js":
            lines.append(
                "acc = await spell.run({lang: 'js', code: 'await spell.sleep(0); "
                f"return spell.args.a + {s[1]};', args: {{a: acc}}}});"
            )
            acc += s[1]
        elif kind == "all":
            lines.append(
                "acc = (await Promise.all(["
                + ", ".join(
                    "spell.run({lang: 'python', target: 'targets:aadd', args: {x: acc, y: 1}})"
                    for _ in range(s[1])
                )
                + "])).reduce((a, b) => a + b, 0);"
            )
            acc = (acc + 1) * s[1]
        elif kind == "await_fail":
            call = (
                "await spell.run({lang: 'python', target: 'targets:fail', "
                f"args: {{message: 'planned {n}'}}}});"
            )
            if s[1]:
                lines.append(f"try {{ {call} acc = null; }} catch (e) {{}}")
            else:
                lines.append(call)
                return "\n".join(lines), "failed", f"ValueError: planned {n}"
        elif kind == "throw":
            lines.append(f"throw {s[1]!r};")
            return "\n".join(lines), "failed", f"uncaught {s[1]}"
        else:
            lines.append(f"return acc + {s[1]};")
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
    handles = rt.submit_many([Task.js(code) for code, _, _ in built])
    for h, (code, status, expected) in zip(handles, built, strict=True):
        if status == "succeeded":
            assert rt.result(h, timeout=WAIT) == expected, code
        else:
            with pytest.raises(ScriptError) as info:
                rt.result(h, timeout=WAIT)
            assert info.value.message.endswith(expected), (code, info.value.message)
        assert rt.status(h) == status
