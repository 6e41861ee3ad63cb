"""Tools, agents, executors: registration, schemas, streaming with backpressure,
tool calls inside a stream, execution modes, and calls from Lua and JS."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import agent_targets as at
import pytest
from conftest import SCRIPT_PYTHON

from llmspell import AsyncRuntime, MessageError, Runtime, Task, TaskFailed


def _ready(rt: Runtime) -> Runtime:
    deadline = time.monotonic() + 30
    while len({e["engine"] for e in rt.stats()["engines"]} & {"python", "lua", "js"}) < 3:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return rt


@pytest.fixture(scope="module", params=["embedded", pytest.param("local", marks=pytest.mark.slow)])
def mrt(request: pytest.FixtureRequest) -> Iterator[Runtime]:
    rt = (
        Runtime(mode="local", workers=1, script_python=SCRIPT_PYTHON)
        if request.param == "local"
        else Runtime(script_python=SCRIPT_PYTHON)
    )
    try:
        _ready(rt)
        rt.register_tool("weather", "agent_targets:weather", schema=at.WEATHER_SCHEMA)
        rt.register_tool("add", at.add)
        rt.register_tool("lua-add", Task.lua("return spell.args.a + spell.args.b"))
        rt.register_tool(
            "js-greet",
            Task.js(
                "return `${spell.args.greeting}, ${spell.args.who}`", args={"greeting": "hello"}
            ),
        )
        rt.register_tool("broken", "agent_targets:broken_tool")
        rt.register_agent("echo", "agent_targets:echo_agent")
        rt.register_agent("tool-user", "agent_targets:ToolUser")
        rt.register_agent("sync-tool-user", "agent_targets:SyncToolUser")
        rt.register_agent("sync-run", "agent_targets:SyncRunAgent")
        rt.register_agent("catching", "agent_targets:CatchingAgent")
        rt.register_agent("bad-chunks", "agent_targets:BadChunkAgent")
        rt.register_agent("counter", "agent_targets:Counter")
        rt.register_agent("where", "agent_targets:ThreadReporter")
        rt.register_executor("shout", "agent_targets:executor")
        rt.register_executor("lua-kind", Task.lua("return spell.args.n * 3"))
        yield rt
    finally:
        rt.close()


# -- tools -----------------------------------------------------------------------------------


def test_tools_of_every_target_kind(mrt: Runtime) -> None:
    hs = mrt.submit_many(
        [
            Task.tool("weather", {"city": "Oslo", "unit": "F"}),
            Task.tool("add", {"a": 40, "b": 2}),
            Task.tool("lua-add", {"a": 1, "b": 2}),
            Task.tool("js-greet", {"who": "world"}),
        ]
    )
    assert [mrt.result(h, timeout=20) for h in hs] == [
        {"city": "Oslo", "temp": 70, "unit": "F"},
        42,
        3,
        "hello, world",
    ]


def test_schema_errors_name_the_field(mrt: Runtime) -> None:
    bad = {
        "city": ("params.city: expected string, got int", {"city": 3}),
        "missing": ("params.city: required but missing", {}),
        "enum": ("params.unit: 'K' is not one of 'C', 'F'", {"city": "x", "unit": "K"}),
        "items": ("params.days[0]: must be >= 1", {"city": "x", "days": [0]}),
        "extra": ("params.colour: unknown field", {"city": "x", "colour": "red"}),
    }
    for expected, params in bad.values():
        with pytest.raises(TaskFailed) as info:
            mrt.result(mrt.submit(Task.tool("weather", params)), timeout=20)
        assert f"tool 'weather': invalid params: {expected}" in info.value.message


def test_unknown_tool_and_failing_tool(mrt: Runtime) -> None:
    with pytest.raises(TaskFailed, match=r"no tool 'nope' is registered .*weather"):
        mrt.result(mrt.submit(Task.tool("nope")), timeout=20)
    with pytest.raises(TaskFailed, match="RuntimeError: the tool broke"):
        mrt.result(mrt.submit(Task.tool("broken")), timeout=20)


def test_scripts_call_tools_and_see_schema_errors(mrt: Runtime) -> None:
    lua = mrt.submit(Task.lua('return spell.tool("add", {a = 1, b = 41})'))
    js = mrt.submit(Task.js('return (await spell.tool("weather", {city: "Rome"})).temp'))
    lua_bad = mrt.submit(
        Task.lua('local ok, e = pcall(spell.tool, "weather", {city = 1}) return tostring(e)')
    )
    assert mrt.result(lua, timeout=20) == 42
    assert mrt.result(js, timeout=20) == 21
    assert "params.city: expected string, got int" in mrt.result(lua_bad, timeout=20)


def test_registration_errors_are_immediate(rt: Runtime) -> None:
    with pytest.raises(MessageError, match="unknown schema keyword 'typ'"):
        rt.register_tool("t", "agent_targets:add", schema={"typ": "object"})
    with pytest.raises(MessageError, match="module:function"):
        rt.register_tool("t", "no-colon")
    with pytest.raises(MessageError, match=r"Task\.lua or Task\.js"):
        rt.register_tool("t", Task.python("agent_targets:add"))
    with pytest.raises(MessageError, match="not a script"):
        rt.register_agent("a", Task.lua("return 1"))
    with pytest.raises(MessageError, match="schema and description are for tools"):
        from llmspell._runtime.targets import wire_target

        wire_target("agent", "m:f", schema={})


def test_executors(mrt: Runtime) -> None:
    assert mrt.result(mrt.submit(Task.custom("shout", {"x": 1})), timeout=20) == {
        "ran": True,
        "payload": {"x": 1},
    }
    assert mrt.result(mrt.submit(Task.custom("shout", 7)), timeout=20) == {
        "ran": True,
        "payload": {"payload": 7},
    }
    assert mrt.result(mrt.submit(Task.custom("lua-kind", {"n": 5})), timeout=20) == 15


# -- agents ----------------------------------------------------------------------------------


def test_run_agents_async_and_sync(mrt: Runtime) -> None:
    echo = mrt.result(mrt.submit(Task.agent("echo", "hi")), timeout=20)
    assert echo["content"] == "echo: hi" and echo["tool_calls"] == []
    assert echo["metadata"]["resource_usage"]["duration"] >= 0
    sync = mrt.result(mrt.submit(Task.agent("sync-run", "x")), timeout=20)
    assert sync["content"] == "sync x"
    assert sync["metadata"]["thread"] == "llmspell-agent"  # a sync run() gets a thread


def test_tool_calls_inside_a_stream(mrt: Runtime) -> None:
    r = mrt.result(mrt.submit(Task.agent("tool-user", "Oslo")), timeout=20)
    assert r == {
        "content": "Let me check. It is 21 degrees in Oslo.",
        "tool_calls": [
            {
                "name": "weather",
                "params": {"city": "Oslo"},
                "result": {"city": "Oslo", "temp": 21, "unit": "C"},
            }
        ],
        "metadata": {"model": "fake-1", "resource_usage": r["metadata"]["resource_usage"]},
    }
    s = mrt.result(mrt.submit(Task.agent("sync-tool-user", 5)), timeout=20)
    assert s["content"] == "sync 7"


def test_stream_relays_every_chunk_in_order(mrt: Runtime) -> None:
    h = mrt.submit(Task.agent("tool-user", "Rome", buffer_size=2))
    chunks = list(mrt.stream(h, timeout=20))
    assert [c["type"] for c in chunks] == [
        "content",
        "tool_call",
        "tool_result",
        "content",
        "metadata",
    ]
    assert chunks[2]["result"]["city"] == "Rome"
    progress = mrt.progress(h)
    assert progress is not None and progress.completed_steps == 5


def test_a_failing_tool_is_thrown_into_the_agent(mrt: Runtime) -> None:
    r = mrt.result(mrt.submit(Task.agent("catching", None)), timeout=20)
    assert r["content"].startswith("recovered from: tool 'broken' failed: RuntimeError")
    assert "the tool broke" in r["tool_calls"][0]["error"]


def test_a_bad_chunk_fails_the_agent(mrt: Runtime) -> None:
    with pytest.raises(TaskFailed, match="yielded \\{'kind': 'what'\\}"):
        mrt.result(mrt.submit(Task.agent("bad-chunks", None)), timeout=20)


def test_unknown_agent(mrt: Runtime) -> None:
    with pytest.raises(TaskFailed, match="no agent 'ghost' is registered"):
        mrt.result(mrt.submit(Task.agent("ghost", None)), timeout=20)


def test_execution_modes(mrt: Runtime) -> None:
    def thread(execution: str | None) -> str:
        opts = {"execution": execution} if execution else {}
        r = mrt.result(mrt.submit(Task.agent("where", None, **opts)), timeout=20)
        return str(r["metadata"]["thread"])

    assert thread(None) == "llmspell-python-async"  # async stream: the engine's loop
    assert thread("single") == "llmspell-python-async"
    assert thread("streaming") == "llmspell-python-async"
    assert thread("threaded") == "llmspell-agent"
    assert thread("distributed") == "llmspell-agent"


def test_scripts_call_agents(mrt: Runtime) -> None:
    lua = mrt.submit(Task.lua('return spell.agent("tool-user", "Oslo").content'))
    js = mrt.submit(Task.js('return (await spell.agent("echo", "js")).content'))
    assert mrt.result(lua, timeout=20) == "Let me check. It is 21 degrees in Oslo."
    assert mrt.result(js, timeout=20) == "echo: js"


def test_agents_inside_a_coordination(mrt: Runtime) -> None:
    res = mrt.coordinate(
        [Task.agent("counter", 40, buffer_size=2), Task.agent("echo", "c")], "parallel", timeout=20
    )
    assert res.ok
    assert res.results[0]["content"].startswith("0,1,2,")


# -- backpressure (embedded: the test sees the producer's counters) ------------------------------


@pytest.mark.parametrize("agent", ["counter", "sync-counter"])
def test_a_slow_consumer_holds_the_producer_at_buffer_size(rt: Runtime, agent: str) -> None:
    rt.register_agent("counter", "agent_targets:Counter")
    rt.register_agent("sync-counter", "agent_targets:SyncCounter")
    at.reset_flow()
    n, buffer = 25, 3
    chunks = rt.stream(Task.agent(agent, n, buffer_size=buffer), timeout=20)
    got: list[str] = []
    while True:
        # the reader is slow: before taking the next chunk it waits until the producer
        # has run as far ahead as it may (``buffer`` chunks past what was taken) ...
        taken = len(got)
        deadline = time.monotonic() + 10
        while at.flow["produced"] < min(n, taken + buffer):
            assert time.monotonic() < deadline, "the producer stopped short of the buffer"
            time.sleep(0.002)
        # ... and the producer is held there: never more than ``buffer`` ahead
        assert at.flow["produced"] <= taken + buffer
        try:
            chunk = next(chunks)
        except StopIteration:
            break
        got.append(chunk["text"])
        with at.flow_lock:
            at.flow["consumed"] += 1
    assert got == [f"{i}," for i in range(n)]


def test_unread_chunks_do_not_hold_the_producer(rt: Runtime) -> None:
    rt.register_agent("counter", "agent_targets:Counter")
    at.reset_flow()
    h = rt.submit(Task.agent("counter", 50, buffer_size=1))
    assert rt.result(h, timeout=20)["content"].count(",") == 50
    # a late reader still gets every chunk
    assert len(list(rt.stream(h, timeout=5))) == 50


def test_leaving_the_stream_early_releases_the_producer(rt: Runtime) -> None:
    rt.register_agent("counter", "agent_targets:Counter")
    at.reset_flow()
    h = rt.submit(Task.agent("counter", 30, buffer_size=2))
    for i, _ in enumerate(rt.stream(h, timeout=20)):
        if i == 3:
            break
    assert rt.result(h, timeout=20)["content"].count(",") == 30


def test_stream_of_a_failed_agent_raises(rt: Runtime) -> None:
    rt.register_agent("bad", "agent_targets:BadChunkAgent")
    it = rt.stream(Task.agent("bad", None), timeout=20)
    assert next(it) == {"type": "content", "text": "ok"}
    with pytest.raises(TaskFailed, match="a chunk is a dict"):
        next(it)


def test_async_runtime_streams() -> None:
    import asyncio

    async def main() -> list[str]:
        async with AsyncRuntime() as rt:
            await rt.register_agent("counter", "agent_targets:Counter")
            await rt.register_tool("add", "agent_targets:add")
            assert await rt.result(await rt.submit(Task.tool("add", {"a": 1, "b": 1}))) == 2
            return [c["text"] async for c in rt.stream(Task.agent("counter", 5, buffer_size=1))]

    assert asyncio.run(main()) == ["0,", "1,", "2,", "3,", "4,"]


def test_stream_runs_in_threads_for_sync_generators(rt: Runtime) -> None:
    rt.register_agent("sync-counter", "agent_targets:SyncCounter")
    at.reset_flow()
    names: list[str] = []
    t = threading.Thread(
        target=lambda: names.extend(
            c["text"] for c in rt.stream(Task.agent("sync-counter", 4), timeout=20)
        )
    )
    t.start()
    t.join(20)
    assert names == ["0,", "1,", "2,", "3,"]
