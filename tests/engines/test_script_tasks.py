"""What a Lua task and a JavaScript task do alike, end to end through ``Runtime()``:
each test runs once per language (the ``lang`` fixture), the script written in that
language's words by the small dialect below.

What only one engine does (Lua's sandbox, JavaScript's timers and promises, ...) is in
``test_lua_runtime.py`` and ``test_js_runtime.py``; the VMs alone in ``test_*_vm.py``.
A script that must be suspended before the test acts says so with ``ready.say(tag)``
and the test waits for it, so no test depends on timing: waits are hang guards only.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from conftest import SCRIPT_PYTHON
from helpers import WAIT, Ready, cancelled_at_once, result, until
from helpers import script_error as task_error
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmspell import MessageError, Runtime, ScriptError, Task, TaskFailed, TaskTimeout

# -- the dialect ------------------------------------------------------------------------------


class Raw(str):
    """Code to put in a literal as it is (a variable, an expression)."""


@dataclass(frozen=True)
class Lang:
    """How one script language says each thing the tests need."""

    name: str  # "lua" or "js": the Task constructor and ScriptError.engine
    runaway: str  # a loop that never ends and never waits
    limits: dict[str, Any]  # Runtime options for the memory-limit tests

    @property
    def js(self) -> bool:
        return self.name == "js"

    def pick(self, *, lua: Any, js: Any) -> Any:
        """What differs between the languages: ``lua`` or ``js``."""
        return js if self.js else lua

    def task(self, code: str, **opts: Any) -> Task:
        return Task.js(code, **opts) if self.js else Task.lua(code, **opts)

    def lit(self, value: Any) -> str:
        """A Python value written as a literal of this language."""
        if isinstance(value, Raw):
            return str(value)
        if value is None:
            return self.pick(lua="nil", js="null")
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, int | float):
            return repr(value)
        if isinstance(value, str):
            escaped = value.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n")
            return f"'{escaped}'"
        if isinstance(value, list):
            return self.list(*(self.lit(v) for v in value))
        if isinstance(value, dict):
            sep = self.pick(lua=" = ", js=": ")
            return "{" + ", ".join(f"{k}{sep}{self.lit(v)}" for k, v in value.items()) + "}"
        raise TypeError(f"no literal for {value!r}")

    def list(self, *items: str) -> str:
        inner = ", ".join(items)
        return self.pick(lua=f"{{{inner}}}", js=f"[{inner}]")

    def ret(self, expr: str) -> str:
        return self.pick(lua=f"return {expr}", js=f"return {expr};")

    def local(self, name: str, expr: str) -> str:
        return self.pick(lua=f"local {name} = {expr}", js=f"const {name} = {expr};")

    def concat(self, a: str, b: str) -> str:
        return self.pick(lua=f"{a} .. {b}", js=f"{a} + {b}")

    def sleep(self, seconds: float | str) -> str:
        return self.pick(lua=f"spell.sleep({seconds})", js=f"await spell.sleep({seconds});")

    def yield_(self) -> str:
        return self.pick(lua="spell.yield()", js="await spell.yield();")

    def emit(self, name: str, payload: str | None = None) -> str:
        args = f"'{name}'" if payload is None else f"'{name}', {payload}"
        return self.pick(lua=f"spell.emit({args})", js=f"spell.emit({args});")

    def forever(self, body: str) -> str:
        return self.pick(lua=f"while true do {body} end", js=f"while (true) {{ {body} }}")

    def spec(self, spec: dict[str, Any]) -> str:
        """A task spec table or object: ``code`` is a string of ``spec['lang']``."""
        return self.lit(spec)

    def submit(self, spec: dict[str, Any] | str) -> str:
        s = spec if isinstance(spec, str) else self.spec(spec)
        return self.pick(lua=f"spell.submit{s}", js=f"spell.submit({s})")

    def await_(self, handle: str) -> str:
        return self.pick(lua=f"spell.await({handle})", js=f"(await spell.await({handle}))")

    def run(self, spec: dict[str, Any]) -> str:
        return self.pick(
            lua=f"spell.run{self.spec(spec)}", js=f"(await spell.run({self.spec(spec)}))"
        )

    def wait_event(self, pattern: str, timeout: float | None = None) -> str:
        """The native call: Lua returns name and payload, JavaScript one object."""
        args = f"'{pattern}'" if timeout is None else f"'{pattern}', {timeout}"
        return self.pick(lua=f"spell.wait_event({args})", js=f"(await spell.wait_event({args}))")

    def event(self, name: str, payload: Any) -> Any:
        """What ``return {wait_event(...)}`` / ``return await wait_event(...)`` gives."""
        return self.pick(lua=[name, payload], js={"name": name, "payload": payload})

    def event_pair(self, pattern: str, timeout: float | None = None) -> str:
        """An expression for [name, payload] of the next event matching ``pattern``."""
        call = self.wait_event(pattern, timeout)
        return self.pick(lua=f"{{{call}}}", js=f"((e) => [e.name, e.payload])({call})")

    def caught(self, body: str) -> str:
        """Code that runs ``body`` (statements) and returns [false, the error's message]
        when it raises (rejects), [true, what body returned] when not."""
        return self.pick(
            lua=f"return {{pcall(function() {body} end)}}",
            js=f"try {{ return [true, await (async () => {{ {body} }})()]; }} catch (e) "
            "{ return [false, e instanceof Error ? e.message : 'not an Error: ' + String(e)]; }",
        )

    def where(self, line: int) -> str:
        """How a traceback names line ``line`` of the task's code."""
        return self.pick(lua=f"task:{line}:", js=f"task.js:{line}")


LUA = Lang("lua", runaway="while true do end", limits={"step_budget": 0.2, "lua_memory": 64 << 20})
JS = Lang("js", runaway="while (true) {}", limits={"js_memory": 48 << 20})  # 1 s step budget
LANGS = {"lua": LUA, "js": JS}


@pytest.fixture(params=["lua", "js"])
def lang(request: pytest.FixtureRequest) -> Lang:
    return LANGS[request.param]


def run(rt: Runtime, lang: Lang, code: str, **opts: Any) -> Any:
    return result(rt, lang.task(code, **opts))


def script_error(rt: Runtime, lang: Lang, code: str, **opts: Any) -> ScriptError:
    return task_error(rt, lang.task(code, **opts))


# -- values ---------------------------------------------------------------------------------


VALUES = [
    ("lua", "nil", None),
    ("lua", "true", True),
    ("lua", "false", False),
    ("lua", "42", 42),
    ("lua", "-7", -7),
    ("lua", "1.5", 1.5),
    ("lua", "math.maxinteger", 2**63 - 1),
    ("lua", "math.mininteger", -(2**63)),
    ("lua", "2^63", 2.0**63),  # a float in Lua stays a float
    ("lua", "3 // 1", 3),
    ("lua", "3 / 1", 3.0),
    ("lua", "'hello'", "hello"),
    ("lua", "'h\\u{e9}llo \\u{1F600}'", "h\u00e9llo \U0001f600"),
    ("lua", "'\\xff\\x00\\xfe'", b"\xff\x00\xfe"),  # not UTF-8: bytes
    ("lua", "''", ""),
    ("lua", "{}", {}),  # the empty table is an empty map
    ("lua", "{1, 2, 3}", [1, 2, 3]),
    ("lua", "{'a', {'b', {'c'}}}", ["a", ["b", ["c"]]]),
    ("lua", "{x = 1, y = {z = {true, false}}}", {"x": 1, "y": {"z": [True, False]}}),
    ("lua", "{list = {}, map = {k = {}}}", {"list": {}, "map": {"k": {}}}),
    ("lua", "{[1] = 'a', [2] = 'b'}", ["a", "b"]),
    ("lua", "{['1'] = 'a'}", {"1": "a"}),
    ("js", "undefined", None),
    ("js", "null", None),
    ("js", "true", True),
    ("js", "false", False),
    ("js", "42", 42),
    ("js", "-7", -7),
    ("js", "3.0", 3),  # JavaScript has one number type: an integral number comes back an int
    ("js", "7 / 2", 3.5),
    ("js", "2 ** 31", 2**31),
    ("js", "2 ** 53", 2**53),
    ("js", "-(2 ** 53)", -(2**53)),
    ("js", "2 ** 62", 2**62),  # integral and exact as a double: still an int
    ("js", "2 ** 63", 2.0**63),  # beyond int64: a float
    ("js", "1e300", 1e300),
    ("js", "10n", 10),
    ("js", "2n ** 64n - 1n", 2**64 - 1),
    ("js", "-(2n ** 63n)", -(2**63)),
    ("js", "'hello'", "hello"),
    ("js", "'h\\u00e9llo \\u{1F600}'", "h\u00e9llo \U0001f600"),
    ("js", "''", ""),
    ("js", "new Uint8Array([0, 1, 255])", b"\x00\x01\xff"),
    ("js", "new Uint8Array([7, 8]).buffer", b"\x07\x08"),
    ("js", "new Uint8Array(0)", b""),
    ("js", "[]", []),
    ("js", "{}", {}),
    ("js", "[1, [2, [3, []]]]", [1, [2, [3, []]]]),
    ("js", "{x: 1, y: {z: [true, null, 'a']}}", {"x": 1, "y": {"z": [True, None, "a"]}}),
    ("js", "[undefined, null]", [None, None]),
    ("js", "{a: undefined}", {"a": None}),
    ("js", "{'1': 'a', '': 'empty'}", {"1": "a", "": "empty"}),
    ("js", "new Date(0)", "1970-01-01T00:00:00.000Z"),  # toJSON
    ("js", "new (class P { constructor() { this.x = 1 } })()", {"x": 1}),
    ("js", "{toJSON() { return [1, 2] }}", [1, 2]),
]


@pytest.mark.parametrize(("lang", "expr", "expected"), VALUES, indirect=["lang"])
def test_result_values(rt: Runtime, lang: Lang, expr: str, expected: Any) -> None:
    got = run(rt, lang, lang.ret(expr))
    assert got == expected
    assert type(got) is type(expected)


ARGS: dict[str, Any] = {
    "lua": {
        "n": 2**63 - 1,
        "neg": -(2**63),
        "f": 0.25,
        "s": "caf\u00e9",
        "raw": b"\xff\x01",
        "nested": {"a": [1, [2, [3]], {"b": None, "c": "d"}], "empty": {}},
        "flag": False,
    },
    "js": {
        "n": 2**53 - 1,
        "neg": -(2**31),
        "f": 0.25,
        "s": "caf\u00e9 \U0001f600",
        "raw": b"\xff\x00\x01",
        "nested": {"a": [1, [2, [3]], {"b": None, "c": "d"}], "empty": {}, "list": []},
        "flag": False,
        "none": None,
        "odd keys": {"__proto__": 1, "\x00x": 2, "constructor": 3},
    },
}


def test_args_round_trip(rt: Runtime, lang: Lang) -> None:
    args = ARGS[lang.name]
    expected = dict(args)
    if not lang.js:  # nil is no entry of a Lua table
        expected["nested"] = {"a": [1, [2, [3]], {"c": "d"}], "empty": {}}
    assert run(rt, lang, lang.ret("spell.args"), args=args) == expected


UNCONVERTIBLE_RESULTS = [
    ("lua", "return print", "result: cannot convert a function"),
    ("lua", "return {a = {1, 2, {b = print}}}", "result.a[3].b: cannot convert a function"),
    (
        "lua",
        "local t = {} t.self = t return t",
        "result.self: cannot convert a table that contains itself",
    ),
    (
        "lua",
        "local t = {1} t[2] = {t} return t",
        "result[2][1]: cannot convert a table that contains itself",
    ),
    ("lua", "return {x = coroutine.create(print)}", "result.x: cannot convert a thread"),
    (
        "lua",
        "return {1, nil, 3}",
        "result: cannot convert a table whose integer keys are not exactly 1..n",
    ),
    (
        "lua",
        "return {1, x = 2}",
        "result: cannot convert a table with mixed keys (strings and integers)",
    ),
    (
        "lua",
        "return {[true] = 1}",
        "result: cannot convert a table with a boolean key (true); keys must be strings or "
        "exactly 1..n",
    ),
    (
        "lua",
        "return {[1.5] = 1}",
        "result: cannot convert a table with a number key (1.5); keys must be strings or "
        "exactly 1..n",
    ),
    (
        "lua",
        "return {a = {[0] = 1}}",
        "result.a: cannot convert a table with a number key (0); keys must be strings or "
        "exactly 1..n",
    ),
    ("js", "return {items: [1, 2, 3, () => 1]};", "result.items[3]: cannot convert a function"),
    ("js", "return [Symbol('s')];", "result[0]: cannot convert a symbol"),
    (
        "js",
        "const a = {}; a.self = a; return {x: [a]};",
        "result.x[0].self: cannot convert a cycle (it contains itself)",
    ),
    ("js", "return {big: 2n ** 64n};", "result.big: cannot convert a BigInt wider than 64 bits"),
    (
        "js",
        "return {'odd key': -(2n ** 63n) - 1n};",
        'result["odd key"]: cannot convert a BigInt wider than 64 bits',
    ),
    ("js", "return {m: new Map([[1, 2]])};", "result.m: cannot convert a Map"),
    ("js", "return {s: new Set()};", "result.s: cannot convert a Set"),
    ("js", "return {e: new TypeError('x')};", "result.e: cannot convert a TypeError"),
    ("js", "return {p: Promise.resolve(1)};", "result.p: cannot convert a Promise"),
    ("js", "return new Int32Array(2);", "result: cannot convert an Int32Array"),
]


@pytest.mark.parametrize(("lang", "code", "message"), UNCONVERTIBLE_RESULTS, indirect=["lang"])
def test_unconvertible_results_name_the_path(
    rt: Runtime, lang: Lang, code: str, message: str
) -> None:
    assert script_error(rt, lang, code).message == message


# a spell call given a value it cannot send, and the error it raises (caught, then uncaught)
UNCONVERTIBLE_ARGUMENTS = [
    ("lua", "spell.emit('x', {f = print})", "task:1: payload.f: cannot convert a function"),
    ("lua", "spell.emit('x', {{}, {print}})", "task:1: payload[2][1]: cannot convert a function"),
    (
        "lua",
        "spell.submit{lang = 'lua', code = 'return 1', args = {deep = {print}}}",
        "task:1: spec.args.deep[1]: cannot convert a function",
    ),
    (
        "lua",
        "local t = {} t.t = t spell.emit('x', t)",
        "task:1: payload.t: cannot convert a table that contains itself",
    ),
    (
        "js",
        "spell.emit('x', {f: [1, () => 1]});",
        "spell.emit payload.f[1]: cannot convert a function",
    ),
    (
        "js",
        "spell.submit({lang: 'js', code: 'return 1', args: {s: Symbol()}});",
        "spell.submit spec.args.s: cannot convert a symbol",
    ),
    (
        "js",
        "await spell.run({lang: 'js', code: 'return 1', args: {b: 2n ** 70n}});",
        "spell.submit spec.args.b: cannot convert a BigInt wider than 64 bits",
    ),
]


@pytest.mark.parametrize(("lang", "code", "message"), UNCONVERTIBLE_ARGUMENTS, indirect=["lang"])
def test_unconvertible_spell_arguments_raise_catchable_errors(
    rt: Runtime, lang: Lang, code: str, message: str
) -> None:
    caught = run(
        rt,
        lang,
        lang.pick(
            lua=f"local ok, e = pcall(function() {code} end) return {{ok, e}}",
            js=f"try {{ {code} return [true]; }} "
            "catch (e) { return [false, e.name + ': ' + e.message]; }",
        ),
    )
    assert caught == [False, lang.pick(lua=message, js=f"TypeError: {message}")]
    err = script_error(rt, lang, code)
    assert err.message == lang.pick(lua=message, js=f"TypeError: {message} (line 1)")


# -- the spell API --------------------------------------------------------------------------


def test_args_input_and_task_id(rt: Runtime, lang: Lang) -> None:
    h = rt.submit(
        lang.task(
            lang.ret(lang.list("spell.task_id", "spell.args.a", "spell.input")), args={"a": 1}
        )
    )
    # no input: nil (a Lua list ends there), null in JavaScript
    assert rt.result(h, timeout=WAIT) == lang.pick(lua=[h.id, 1], js=[h.id, 1, None])
    inner = lang.ret(lang.list("spell.input", "spell.args"))
    spec = {"lang": lang.name, "code": inner, "input": {"k": [1, 2]}, "args": {"z": "z"}}
    assert run(rt, lang, lang.ret(lang.run(spec))) == [{"k": [1, 2]}, {"z": "z"}]


def test_no_args_and_no_input(rt: Runtime, lang: Lang) -> None:
    got = run(
        rt,
        lang,
        lang.ret(
            lang.pick(lua="{spell.args == nil, spell.input == nil}", js="[spell.args, spell.input]")
        ),
    )
    assert got == lang.pick(lua=[True, True], js=[None, None])


def test_input_from_a_pipeline(rt: Runtime, lang: Lang) -> None:
    result = rt.coordinate(
        [lang.task(lang.ret(lang.lit({"n": 20}))), lang.task(lang.ret("spell.input.n * 2 + 2"))],
        "pipeline",
        timeout=WAIT,
    )
    assert result.ok and result.results == [{"n": 20}, 42]


def test_own_task_id_is_a_fresh_id_for_each_task(rt: Runtime, lang: Lang) -> None:
    handles = rt.submit_many([lang.task(lang.ret("spell.task_id")) for _ in range(5)])
    assert [rt.result(h, timeout=WAIT) for h in handles] == [h.id for h in handles]
    own = f"my-own-{lang.name}-id"
    assert run(rt, lang, lang.ret("spell.task_id"), id=own) == own


def test_submit_and_await_children(rt: Runtime, lang: Lang) -> None:
    child = f"{lang.yield_()} {lang.ret('spell.args.i * 10')}"
    spec = {"lang": lang.name, "code": child, "args": {"i": Raw("i")}}
    code = lang.pick(
        lua=f"""
        local hs = {{}}
        for i = 1, 5 do hs[i] = {lang.submit(spec)} end
        local out = {{}}
        for i = 5, 1, -1 do out[#out + 1] = spell.await(hs[i]) end
        return {{type(hs[1]), out}}
        """,
        js=f"""
        const hs = [];
        for (let i = 1; i <= 5; i++) hs.push({lang.submit(spec)});
        const out = [];
        for (let i = 4; i >= 0; i--) out.push(await spell.await(hs[i]));
        return [typeof hs[0], out];
        """,
    )
    assert run(rt, lang, code) == ["string", [50, 40, 30, 20, 10]]


def test_await_the_same_task_twice_and_from_two_tasks(rt: Runtime, lang: Lang) -> None:
    child = rt.submit(lang.task(f"{lang.sleep(0.01)} {lang.ret(lang.lit('v'))}"))
    code = " ".join(
        [
            lang.local("a", lang.await_("spell.args.h")),
            lang.local("b", lang.await_("spell.args.h")),
            lang.ret(lang.concat("a", "b")),
        ]
    )
    handles = rt.submit_many([lang.task(code, args={"h": child.id}) for _ in range(2)])
    assert [rt.result(h, timeout=WAIT) for h in handles] == ["vv", "vv"]


def test_python_and_script_tasks_nested(rt: Runtime, lang: Lang) -> None:
    add = {"lang": "python", "target": "targets:add"}
    inner = lang.ret(lang.run({**add, "args": {"x": 10, "y": Raw("spell.args.a")}}))
    code = " ".join(
        [
            lang.local("a", lang.run({**add, "args": {"x": 2, "y": 3}})),
            lang.local("b", lang.run({"lang": lang.name, "code": inner, "args": {"a": Raw("a")}})),
            lang.ret(lang.list("a", "b")),
        ]
    )
    assert run(rt, lang, code) == [5, 15]


def test_script_submits_python_tasks_in_parallel(rt: Runtime, lang: Lang) -> None:
    code = lang.pick(
        lua="""
        local hs = {}
        for i = 1, 20 do
          hs[i] = spell.submit{lang = 'python', target = 'targets:aadd', args = {x = i, y = 1}}
        end
        local sum = 0
        for i = 1, 20 do sum = sum + spell.await(hs[i]) end
        return sum
        """,
        js="""
        const b = await spell.run({target: 'targets:aadd', args: {x: 5, y: 10}});  // lang implied
        const hs = [];
        for (let i = 1; i <= 20; i++) {
          hs.push(spell.submit({lang: 'python', target: 'targets:aadd', args: {x: i, y: 1}}));
        }
        let sum = 0;
        for (const h of hs) sum += await spell.await(h);
        return b === 15 ? sum : 'lang was not implied';
        """,
    )
    assert run(rt, lang, code) == sum(range(1, 21)) + 20


def test_python_failure_is_a_catchable_error(rt: Runtime, lang: Lang) -> None:
    spec = {"lang": "python", "target": "targets:fail", "args": {"message": "no good"}}
    code = lang.caught(
        f"{lang.local('h', lang.submit(spec))} {lang.local('v', lang.await_('h'))} {lang.ret('h')}"
    )
    ok, message = run(rt, lang, code)
    assert ok is False
    assert message.startswith("awaited task ") and message.endswith(" failed: ValueError: no good")
    err = script_error(rt, lang, lang.ret(lang.run({**spec, "args": {"message": "x"}})))
    assert err.message.endswith("failed: ValueError: x")


BAD_SPECS = [
    ({"bogus": 1}, "unknown field 'bogus'"),
    ({"lang": "cobol", "code": "x"}, "say what to run"),
    ({"lang": "python", "code": None, "target": "nocolon"}, "target='module:function'"),
    ({"priority": "urgent"}, "priority must be one of"),
    ({"timeout": -1}, "timeout must be a positive"),
    ({"code": None}, "task needs code"),
    # a Lua/JS task through kind= ran with no code and ended None: refused, saying how
    ({"lang": None, "kind": "lua"}, "a lua task is lang='lua' with code, not kind='lua'"),
    ({"lang": None, "tool": "echo"}, "'code' does not go with tool="),
]


@pytest.mark.parametrize(("spec", "message"), BAD_SPECS)
def test_bad_submit_specs_are_catchable_errors(
    rt: Runtime, lang: Lang, spec: dict[str, Any], message: str
) -> None:
    full = {"lang": lang.name, "code": "return 1", **spec}
    full = {k: v for k, v in full.items() if v is not None}
    ok, e = run(rt, lang, lang.caught(lang.ret(lang.run(full))))
    assert ok is False and message in e, e
    if lang.js:  # JavaScript rejects the await; Lua raises in spell.submit
        assert e.startswith("spell.submit failed:"), e


def test_a_spec_that_is_not_a_table_or_object_is_a_catchable_error(rt: Runtime, lang: Lang) -> None:
    for bad in lang.pick(lua=["'not a table'"], js=["'not an object'", "[1, 2]", "null"]):
        ok, e = run(rt, lang, lang.caught(f"{lang.local('h', lang.submit(bad))} {lang.ret('h')}"))
        assert ok is False
        assert (
            lang.pick(lua="spec must be a table", js="spell.submit: the spec must be an object")
            in e
        )


@pytest.mark.slow
def test_await_of_an_unknown_task_fails(rt: Runtime, lang: Lang) -> None:
    ok, e = run(rt, lang, lang.caught(lang.ret(lang.await_("'no-such-task'"))))
    assert ok is False and "no-such-task" in e


def test_sleep_and_yield(rt: Runtime, lang: Lang) -> None:
    code = lang.pick(
        lua="""
        local n = 0
        for i = 1, 50 do spell.yield() n = n + 1 end
        local r = spell.sleep(0.01)
        spell.sleep(0)
        return {n, r == nil}
        """,
        js="""
        let n = 0;
        for (let i = 0; i < 50; i++) { await spell.yield(); n++; }
        const r = await spell.sleep(0.01);
        await spell.sleep(0);
        return [n, r == null];
        """,
    )
    assert run(rt, lang, code) == [50, True]
    for bad in lang.pick(lua=["-1"], js=["-1", "'soon'", "undefined", "Infinity"]):
        err = script_error(rt, lang, lang.sleep(bad))
        expected = lang.pick(
            lua="seconds must be a non-negative number",
            js="spell.sleep: expected a number of seconds >= 0",
        )
        assert expected in err.message, err.message


def test_yielding_tasks_interleave(rt: Runtime, lang: Lang, ready: Ready) -> None:
    # a task that yields forever does not starve another one
    spinner = rt.submit(lang.task(f"{ready.say('spin')} {lang.forever(lang.yield_())}"))
    ready.wait("spin")
    code = lang.pick(
        lua="local s = 0 for i = 1, 10 do spell.yield() s = s + i end return s",
        js="let s = 0; for (let i = 1; i <= 10; i++) { await spell.yield(); s += i; } return s;",
    )
    assert run(rt, lang, code) == 55
    assert rt.status(spinner) == "running"
    assert rt.cancel(spinner)


# -- events and progress ------------------------------------------------------------------


def test_wait_event_without_timeout(rt: Runtime, lang: Lang, ready: Ready) -> None:
    wait = lang.wait_event("test.go.*")
    h = rt.submit(lang.task(f"{ready.say('w')} {lang.ret(lang.pick(lua=f'{{{wait}}}', js=wait))}"))
    ready.wait("w")
    assert rt.status(h) == "running"
    rt.emit("test.other", 1)  # does not match
    payload = lang.pick(lua={"k": [1, 2]}, js={"k": [1, 2], "raw": b"\x01"})
    rt.emit("test.go.now", payload)
    assert rt.result(h, timeout=WAIT) == lang.event("test.go.now", payload)


def test_wait_event_with_a_timeout_that_does_not_run_out(
    rt: Runtime, lang: Lang, ready: Ready
) -> None:
    h = rt.submit(lang.task(f"{ready.say('w')} {lang.ret(lang.event_pair('test.go2', 60))}"))
    ready.wait("w")
    rt.emit("test.go2", "payload")
    assert rt.result(h, timeout=WAIT) == ["test.go2", "payload"]


def test_wait_event_timeout_raises_a_catchable_error(rt: Runtime, lang: Lang) -> None:
    base = rt.stats()["events"]["subscriptions"]
    ok, e = run(rt, lang, lang.caught(lang.ret(lang.wait_event("test.never", 0.02))))
    assert ok is False and e == "timed out waiting for event"
    err = script_error(rt, lang, lang.ret(lang.wait_event("test.never", 0)))
    assert "timed out waiting for event" in err.message
    until(lambda: rt.stats()["events"]["subscriptions"] == base, "timed-out waits unsubscribed")


def test_one_task_wakes_another(rt: Runtime, lang: Lang, ready: Ready) -> None:
    name, payload = lang.event_pair("test.ping.*"), lang.lit({"v": f"from {lang.name}"})
    waiter = rt.submit(lang.task(f"{ready.say('w')} {lang.ret(name)}"))
    ready.wait("w")
    assert run(rt, lang, f"{lang.emit('test.ping.1', payload)} {lang.ret('1')}") == 1
    assert rt.result(waiter, timeout=WAIT) == ["test.ping.1", {"v": f"from {lang.name}"}]


def test_emit_is_seen_by_subscribers(rt: Runtime, lang: Lang) -> None:
    payload = lang.pick(lua={"list": [1, 2], "s": "x"}, js={"list": [1, 2], "s": "x", "b": b"\x01"})
    written = lang.pick(
        lua="{list = {1, 2}, s = 'x'}", js="{list: [1, 2], s: 'x', b: new Uint8Array([1])}"
    )
    with rt.subscribe("lang.test.*") as sub:
        run(rt, lang, f"{lang.emit('lang.test.a', written)} {lang.emit('lang.test.b')}")
        first, second = sub.get(timeout=WAIT), sub.get(timeout=WAIT)
    assert (first.name, first.payload) == ("lang.test.a", payload)
    assert (second.name, second.payload) == ("lang.test.b", None)
    err = script_error(rt, lang, lang.pick(lua="spell.emit(42)", js="spell.emit(42);"))
    assert (
        lang.pick(lua="name must be a string", js="spell.emit: the event name isn't a str")
        in err.message
    )


def test_progress_while_running_and_after(rt: Runtime, lang: Lang, ready: Ready) -> None:
    def progress(done: int, total: int, what: str) -> str:
        return lang.pick(
            lua=f"spell.progress({done}, {total}, '{what}')",
            js=f"spell.progress({done}, {total}, '{what}');",
        )

    wait = lang.wait_event("test.progress.go")
    h = rt.submit(
        lang.task(
            f"{progress(1, 4, 'first step')} {ready.say('p')} "
            f"{lang.pick(lua=wait, js=wait + ';')} {progress(4, 4, 'all done')} "
            f"{lang.ret(lang.lit('ok'))}"
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
    err = script_error(
        rt, lang, lang.pick(lua="spell.progress('one')", js="spell.progress('one');")
    )
    assert lang.pick(lua="done must be a number", js="spell.progress: done must be a number") in (
        err.message
    )


@pytest.mark.parametrize(
    ("call", "kind"),
    [("spell.tool('nope', {args})", "tool"), ("spell.agent('nope', 'hi')", "agent")],
)
def test_tool_and_agent_fail_clearly_when_none_is_registered(
    rt: Runtime, lang: Lang, call: str, kind: str
) -> None:
    call = call.replace("{args}", lang.lit({"a": 1}))
    call = lang.pick(lua=call, js=f"(await {call})")
    err = script_error(rt, lang, lang.ret(call))
    assert err.message.startswith(lang.pick(lua="awaited task", js="Error: awaited task"))
    assert kind in err.message, err.message
    ok, e = run(rt, lang, lang.caught(lang.ret(call)))
    assert ok is False and e.startswith("awaited task") and kind in e, e


def test_log_goes_to_the_llmspell_logger(
    rt: Runtime, lang: Lang, caplog: pytest.LogCaptureFixture
) -> None:
    printed = lang.pick(lua="print('printed', 2)", js="console.log('printed', 2);")
    with caplog.at_level(logging.DEBUG, logger="llmspell"):
        h = rt.submit(
            lang.task(
                f"{lang.pick(lua='', js=';')} spell.log('warn', 'careful'); "
                f"{printed} {lang.ret('1')}"
            )
        )
        assert rt.result(h, timeout=WAIT) == 1
    records = [(r.levelno, r.getMessage()) for r in caplog.records if r.name.startswith("llmspell")]
    assert (logging.WARNING, f"[{lang.name} {h.id}] careful") in records
    sep = lang.pick(lua="\t", js=" ")
    assert (logging.INFO, f"[{lang.name} {h.id}] printed{sep}2") in records


# -- cancellation and timeouts ------------------------------------------------------------


def test_cancel_a_sleeping_task(rt: Runtime, lang: Lang, ready: Ready) -> None:
    h = rt.submit(lang.task(f"{ready.say('s')} {lang.sleep(3600)} {lang.ret(lang.lit('woke'))}"))
    ready.wait("s")
    cancelled_at_once(rt, h)
    code = f"{lang.sleep(0.01)} {lang.ret(lang.lit('engine goes on'))}"
    assert run(rt, lang, code) == "engine goes on"


def test_cancel_an_awaiting_task(rt: Runtime, lang: Lang, ready: Ready) -> None:
    child = rt.submit(lang.task(f"{ready.say('child')} {lang.sleep(3600)}"))
    ready.wait("child")
    code = f"{lang.local('h', 'spell.args.h')} {ready.say('a')} {lang.ret(lang.await_('h'))}"
    h = rt.submit(lang.task(code, args={"h": child.id}))
    ready.wait("a")
    cancelled_at_once(rt, h)
    assert rt.status(child) == "running"  # cancelling the awaiter leaves the awaited alone
    cancelled_at_once(rt, child)


def test_cancel_an_event_waiting_task(rt: Runtime, lang: Lang, ready: Ready) -> None:
    base = rt.stats()["events"]["subscriptions"]
    h = rt.submit(lang.task(f"{ready.say('e')} {lang.ret(lang.wait_event('test.cancel.*'))}"))
    ready.wait("e")
    assert rt.stats()["events"]["subscriptions"] == base + 1
    cancelled_at_once(rt, h)
    until(lambda: rt.stats()["events"]["subscriptions"] == base, "the subscription was dropped")
    rt.emit("test.cancel.late")
    assert rt.status(h) == "cancelled"


def test_cancelling_the_awaited_task_raises_in_the_awaiter(
    rt: Runtime, lang: Lang, ready: Ready
) -> None:
    child = rt.submit(lang.task(f"{ready.say('child')} {lang.sleep(3600)}"))
    ready.wait("child")
    catch = lang.caught(lang.ret(lang.await_("h")))
    catcher = rt.submit(
        lang.task(
            f"{lang.local('h', 'spell.args.h')} {ready.say('c')} {catch}", args={"h": child.id}
        )
    )
    plain = rt.submit(
        lang.task(f"{ready.say('p')} {lang.ret(lang.await_('spell.args.h'))}", args={"h": child.id})
    )
    ready.wait("c", "p")
    assert rt.cancel(child) is True
    assert rt.result(catcher, timeout=WAIT) == [False, f"awaited task {child.id} was cancelled"]
    with pytest.raises(ScriptError, match=f"awaited task {child.id} was cancelled"):
        rt.result(plain, timeout=WAIT)


def test_task_timeout_of_a_sleeping_script(rt: Runtime, lang: Lang) -> None:
    h = rt.submit(lang.task(f"{lang.sleep(3600)} {lang.ret(lang.lit('never'))}", timeout=0.1))
    with pytest.raises(TaskTimeout):
        rt.result(h, timeout=WAIT)
    assert rt.status(h) == "timed_out"
    assert run(rt, lang, lang.ret(lang.lit("next"))) == "next"


def test_timeout_of_an_awaited_task_raises_in_the_awaiter(rt: Runtime, lang: Lang) -> None:
    spec = {"lang": lang.name, "code": lang.sleep(3600), "timeout": 0.05}
    catch = lang.caught(lang.ret(lang.await_("h")))
    code = f"{lang.local('h', lang.submit(spec))} spell.emit('test.child', h); {catch}"
    with rt.subscribe("test.child") as sub:
        ok, e = run(rt, lang, code)
        child = sub.get(timeout=WAIT).payload
    assert ok is False and e.startswith("awaited task ") and " timed out: " in e, e
    if not lang.js:  # a Lua handle is the task's id (a JS handle is an id of its own)
        assert e.startswith(f"awaited task {child} timed out: "), e


# -- errors ------------------------------------------------------------------------------------


def test_runtime_error_after_waiting_keeps_line_numbers(rt: Runtime, lang: Lang) -> None:
    code = lang.pick(
        lua="spell.sleep(0)\nspell.yield()\nlocal t = nil\nreturn t.field\n",
        js="await spell.sleep(0);\nawait spell.run({lang: 'python', target: 'targets:add', "
        "args: {x: 1, y: 1}});\n\nundefinedThing();",
    )
    err = script_error(rt, lang, code)
    assert err.message == lang.pick(
        lua="task:4: attempt to index a nil value (local 't')",
        js="ReferenceError: undefinedThing is not defined (line 4)",
    )
    assert lang.where(4) in err.traceback
    assert isinstance(err, TaskFailed)


# -- limits: a runaway script fails its own task, the engine goes on ---------------------------


@pytest.fixture
def limited() -> Iterator[Runtime]:
    runtime = Runtime(
        step_budget=0.2,
        lua_memory=64 << 20,
        js_memory=48 << 20,
        script_python=SCRIPT_PYTHON,
    )
    try:
        yield runtime
    finally:
        runtime.close()


ENDLESS = [
    ("lua", "while true do end"),
    ("lua", "spell.yield() local n = 0 repeat n = n + 1 until false"),
    ("lua", "while true do pcall(function() while true do end end) end"),
    ("js", "while (true) {}"),
    ("js", "await spell.yield(); for (;;) {}"),
    (
        "js",
        "await spell.run({lang: 'python', target: 'targets:add', args: {x: 1, y: 1}});"
        "while (true) { try { while (true) {} } catch (e) {} }",
    ),
    ("js", "setTimeout(() => { while (true) {} }, 0); await spell.sleep(5);"),
    ("js", "const f = () => Promise.resolve().then(f); f(); await spell.sleep(5);"),
]


@pytest.mark.parametrize(("lang", "code"), ENDLESS, indirect=["lang"])
def test_endless_loop_fails_its_task_and_others_are_served(
    limited: Runtime, lang: Lang, code: str
) -> None:
    rt = limited
    other = rt.submit(
        lang.task(
            lang.pick(
                lua="local n = 0 for i = 1, 20 do spell.sleep(0.005) n = n + i end return n",
                js="let n = 0; for (let i = 1; i <= 20; i++) { await spell.sleep(0.005); n += i; } "
                "return n;",
            )
        )
    )
    err = script_error(rt, lang, code)
    budget = lang.pick(
        lua="exceeded its step budget of 0.2 s", js="more than its step budget of 0.2 s"
    )
    assert budget in err.message, err.message
    if not lang.js:  # a Lua traceback names the line (a JS loop in a timer has no line of the task)
        assert lang.where(1) in err.traceback
    assert rt.result(other, timeout=WAIT) == 210
    assert run(rt, lang, f"{lang.yield_()} {lang.ret(lang.lit('served after'))}") == "served after"


@pytest.fixture
def memory_limited(lang: Lang) -> Iterator[Runtime]:
    runtime = Runtime(**lang.limits, script_python=SCRIPT_PYTHON)
    try:
        yield runtime
    finally:
        runtime.close()


def test_memory_bomb_fails_its_task_and_the_engine_goes_on(
    memory_limited: Runtime, lang: Lang
) -> None:
    rt = memory_limited
    ready = Ready(rt)
    try:
        other = rt.submit(
            lang.task(
                f"{lang.local('keep', lang.lit([1, 2, 3]))} {ready.say('o')} {lang.sleep(0.01)} "
                f"{lang.ret(lang.pick(lua='#keep', js='keep.length'))}"
            )
        )
        ready.wait("o")
        bomb = lang.pick(
            lua="local t = {} while true do t[#t + 1] = string.rep('x', 1e6) .. #t end",
            js="const s = 'x'.repeat(1e5); const a = []; while (true) a.push(s + a.length);",
        )
        err = script_error(rt, lang, bomb)
        assert lang.pick(lua="Lua memory limit exceeded", js="out of memory") in err.message
        if lang.js:
            assert "48" in err.message or str(48 << 20) in err.message, err.message
        assert rt.result(other, timeout=WAIT) == 3
        big = lang.pick(lua="#string.rep('y', 1e6)", js="'y'.repeat(1e6).length")
        assert run(rt, lang, lang.ret(big)) == 1_000_000
    finally:
        ready.close()


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
    st.tuples(st.just("python"), st.integers(-1000, 1000)),
    st.tuples(st.just("lua"), st.integers(-1000, 1000)),
    st.tuples(st.just("js"), st.integers(-1000, 1000)),
    st.tuples(st.just("all"), st.integers(1, 3)),
    st.tuples(st.just("await_fail"), st.booleans()),  # caught?
    st.tuples(st.just("throw"), st.text("abcxyz ", min_size=1, max_size=8)),
    st.tuples(st.just("return"), st.integers(-5, 5)),
)
program = st.lists(step, max_size=6)


def build(lang: Lang, steps: list[tuple[Any, ...]]) -> tuple[str, str, Any]:
    """Code in ``lang`` for ``steps`` and the (status, value or end of the error message)
    it implies."""
    lines = [lang.pick(lua="local acc = 0", js="let acc = 0;")]
    acc = 0

    def assign(expr: str) -> None:
        lines.append(lang.pick(lua=f"acc = {expr}", js=f"acc = {expr};"))

    def in_lang(child: Lang, n: int) -> str:  # a task in ``child`` adding n to acc
        pause = child.pick(lua=child.yield_(), js=child.sleep(0))
        code = f"{pause} {child.ret(f'spell.args.a + {n}')}"
        return lang.run({"lang": child.name, "code": code, "args": {"a": Raw("acc")}})

    for n, s in enumerate(steps):
        kind = s[0]
        if kind == "yield":
            lines.append(lang.yield_())
        elif kind == "sleep":
            lines.append(lang.sleep(s[1]))
        elif kind == "python":
            assign(
                lang.run(
                    {
                        "lang": "python",
                        "target": "targets:add",
                        "args": {"x": Raw("acc"), "y": s[1]},
                    }
                )
            )
            acc += s[1]
        elif kind in ("lua", "js"):
            assign(in_lang(LANGS[kind], s[1]))
            acc += s[1]
        elif kind == "all":
            one = lang.spec(
                {"lang": "python", "target": "targets:aadd", "args": {"x": Raw("acc"), "y": 1}}
            )
            assign(
                lang.pick(
                    lua="(function() local hs, sum = {}, 0 "
                    f"for i = 1, {s[1]} do hs[i] = spell.submit{one} end "
                    f"for i = 1, {s[1]} do sum = sum + spell.await(hs[i]) end return sum end)()",
                    js=f"(await Promise.all([{', '.join([f'spell.run({one})'] * s[1])}]))"
                    ".reduce((a, b) => a + b, 0)",
                )
            )
            acc = (acc + 1) * s[1]
        elif kind == "await_fail":
            spec = {"lang": "python", "target": "targets:fail", "args": {"message": f"planned {n}"}}
            call = lang.pick(lua=lang.run(spec), js=f"{lang.run(spec)};")
            if s[1]:
                caught = lang.pick(
                    lua=f"if pcall(function() {call} end) then acc = nil end",
                    js=f"try {{ {call} acc = null; }} catch (e) {{}}",
                )
                lines.append(caught)
            else:
                lines.append(call)
                return "\n".join(lines), "failed", f"ValueError: planned {n}"
        elif kind == "throw":
            lines.append(lang.pick(lua=f"error('{s[1]}', 0)", js=f"throw '{s[1]}';"))
            return "\n".join(lines), "failed", lang.pick(lua=s[1], js=f"uncaught {s[1]}")
        else:
            lines.append(lang.pick(lua=f"do return acc + {s[1]} end", js=f"return acc + {s[1]};"))
            return "\n".join(lines), "succeeded", acc + s[1]
    return "\n".join(lines), "succeeded", None


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(programs=st.lists(program, min_size=1, max_size=4))
def test_random_programs_end_as_they_imply(
    shared_rt: Runtime, lang: Lang, programs: list[list[tuple[Any, ...]]]
) -> None:
    rt = shared_rt
    built = [build(lang, p) for p in programs]
    handles = rt.submit_many([lang.task(code) for code, _, _ in built])
    for h, (code, status, expected) in zip(handles, built, strict=True):
        if status == "succeeded":
            assert rt.result(h, timeout=WAIT) == expected, code
        else:
            with pytest.raises(ScriptError) as info:
                rt.result(h, timeout=WAIT)
            assert info.value.message.endswith(expected), (code, info.value.message)
        assert rt.status(h) == status


# -- moved from test_bad_input.py: bad input to this feature ----------------------------


@pytest.mark.parametrize(
    "task",
    [
        Task.lua("return spell.run({lang = 'python', target = 'os:getcwd'})"),
        Task.js("return await spell.run({lang: 'python', target: 'os:getcwd'})"),
        Task.lua("return spell.coordinate({{lang = 'python', target = 'os:getcwd'}}, 'parallel')"),
        Task.lua(
            "return spell.run({kind = 'workflow', payload = {steps = {{id = 'a', "
            "target = 'os:getcwd'}}}})"
        ),
    ],
)
def test_a_script_runs_no_python_target_unless_the_runtime_allows_it(task: Task) -> None:
    with Runtime() as rt:
        h = rt.submit(task)
        try:
            value = rt.result(h, timeout=WAIT)
        except TaskFailed as exc:
            assert "may not run the Python target 'os:getcwd'" in str(exc)
        else:  # a coordination reports its failed tasks instead of raising
            assert value["ok"] is False
            assert "may not run the Python target" in str(value["failed"])
    with Runtime(script_python=["os:getcwd"]) as rt:
        code = "return spell.run({lang = 'python', target = 'os:getcwd'})"
        assert rt.result(rt.submit(Task.lua(code)), timeout=WAIT) == __import__("os").getcwd()


def test_a_script_reads_no_workflow_file(rt: Runtime) -> None:
    code = "return spell.run({kind = 'workflow', payload = spell.args.path})"
    h = rt.submit(Task.lua(code, args={"path": "/etc/hostname"}))
    with pytest.raises(TaskFailed, match="may not load a workflow file"):
        rt.result(h, timeout=WAIT)
    step_file = (
        "return spell.run({kind = 'workflow', "
        "payload = {steps = {{id = 'a', file = '/etc/hostname'}}}})"
    )
    with pytest.raises(TaskFailed, match="may not load a workflow file or a step's file"):
        rt.result(rt.submit(Task.lua(step_file)), timeout=WAIT)


@pytest.mark.parametrize("bad", ["--script-python", ["os"], [5]])
def test_script_python_must_be_patterns(bad: object) -> None:
    with pytest.raises(MessageError, match="script_python"):
        Runtime(script_python=bad)


def test_load_without_a_script_caller_gets_globals_of_its_own(rt: Runtime) -> None:
    writer = "coroutine.wrap(load)(\"secret = 'from A'; tostring = nil\")() return 1"
    assert rt.result(rt.submit(Task.lua(writer)), timeout=WAIT) == 1
    reader = "local s = coroutine.wrap(load)('return secret')() return {type(s), tostring(42)}"
    assert rt.result(rt.submit(Task.lua(reader)), timeout=WAIT) == ["nil", "42"]


@pytest.mark.parametrize(
    ("task", "message"),
    [
        (Task.lua("return spell.await(spell.task_id)"), "cannot await itself"),
        (Task.js("return await spell.await(spell.task_id)"), "cannot await itself"),
        (
            Task.lua(
                "local a = spell.submit({lang = 'lua', code = 'return 1', id = 'twice'})"
                " local b = spell.submit({lang = 'lua', code = 'return 2', id = 'twice'})"
                " spell.await(a) return spell.await(b)"
            ),
            "duplicate task id 'twice'",
        ),
        (
            Task.lua(
                "return spell.coordinate({{lang = 'lua', code = 'return 1'}}, 'pipeline',"
                " {inputs = 'x'})"
            ),
            "inputs must be a list",
        ),
        (
            Task.js(
                "return await spell.coordinate([{lang: 'lua', code: 'return 1'}], 'pipeline',"
                " {inputs: {a: 1}})"
            ),
            "inputs must be a list",
        ),
    ],
)
def test_script_requests_that_could_never_be_answered_fail_at_once(
    rt: Runtime, task: Task, message: str
) -> None:
    with pytest.raises(TaskFailed, match=message):
        rt.result(rt.submit(task), timeout=WAIT)


def test_thousands_of_distinct_wait_event_patterns_do_not_stall_the_runtime(rt: Runtime) -> None:
    # each subscription once rebuilt one matcher of every pattern: minutes for 2,000
    code = (
        "const ps = []; for (let i = 0; i < 2000; i++)"
        " ps.push(spell.wait_event('never.' + i, 0.2).catch(() => 0));"
        " await Promise.all(ps); return 1"
    )
    assert rt.result(rt.submit(Task.js(code)), timeout=60) == 1
    assert rt.result(rt.submit(Task.lua("return 2")), timeout=WAIT) == 2


@pytest.mark.parametrize(
    "task",
    [
        Task.js("return await spell.run({lang: 'lua', code: 'return 1', timeout: NaN})"),
        Task.lua("return spell.run({lang = 'lua', code = 'return 1', timeout = 1/0})"),
        Task.lua("return spell.run({lang = 'lua', code = 'return 1', timeout = 0/0})"),
    ],
)
def test_a_script_submit_timeout_must_be_finite_seconds(rt: Runtime, task: Task) -> None:
    with pytest.raises(TaskFailed, match="timeout must be a positive number of seconds") as info:
        rt.result(rt.submit(task), timeout=WAIT)
    assert "spell.submit: spell.submit" not in str(info.value)


def test_a_nan_wait_event_timeout_is_refused_in_lua_as_in_js(rt: Runtime) -> None:
    with pytest.raises(TaskFailed, match="timeout must be a number of seconds"):
        rt.result(rt.submit(Task.lua("spell.wait_event('x', 0/0)")), timeout=WAIT)
    with pytest.raises(TaskFailed, match="expected a number of seconds"):
        rt.result(rt.submit(Task.js("await spell.wait_event('x', NaN)")), timeout=WAIT)
