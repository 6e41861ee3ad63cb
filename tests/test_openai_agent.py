"""``llmspell.agents.OpenAIChat`` end to end, against a local OpenAI-compatible server.

The server (``fake_openai``) streams content and tool-call deltas the way real
servers do; the agent runs through ``Runtime`` in both modes: content, a tool
call, the tool's result sent back as a ``role: tool`` message, the final answer.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from fake_openai import FakeOpenAI, content_events, tool_call_events

from llmspell import Runtime, Task, TaskFailed
from llmspell.agents import AgentError, OpenAIChat

WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
}


@pytest.fixture(scope="module")
def server() -> Iterator[FakeOpenAI]:
    s = FakeOpenAI()
    try:
        yield s
    finally:
        s.close()


@pytest.fixture(scope="module", params=["embedded", pytest.param("local", marks=pytest.mark.slow)])
def mrt(request: pytest.FixtureRequest, server: FakeOpenAI) -> Iterator[Runtime]:
    rt = Runtime(mode="local", workers=1) if request.param == "local" else Runtime()
    try:
        deadline = time.monotonic() + 30
        while "python" not in {e["engine"] for e in rt.stats()["engines"]}:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        rt.register_tool("weather", "agent_targets:weather", WEATHER, description="Weather now")
        rt.register_tool("broken", "agent_targets:broken_tool")
        rt.register_agent(
            "chat", OpenAIChat(server.url, "fake-model", backoff=0.01, system="Be brief.")
        )
        rt.register_agent(
            "weather-only", OpenAIChat(server.url, "fake-model", tools=["weather"], backoff=0.01)
        )
        yield rt
    finally:
        rt.close()


@pytest.fixture(autouse=True)
def fresh(server: FakeOpenAI) -> None:
    server.reset()


def test_the_agent_loop_end_to_end(mrt: Runtime, server: FakeOpenAI) -> None:
    server.sse(tool_call_events([("call_1", "weather", {"city": "Oslo"})], lead="Checking. "))
    server.sse(content_events("It is ", "21 degrees", " in Oslo."))
    h = mrt.submit(Task.agent("weather-only", "Weather in Oslo?"))
    chunks = list(mrt.stream(h, timeout=20))
    result = mrt.result(h, timeout=20)

    assert result["content"] == "Checking. It is 21 degrees in Oslo."
    assert result["tool_calls"] == [
        {
            "name": "weather",
            "params": {"city": "Oslo"},
            "result": {"city": "Oslo", "temp": 21, "unit": "C"},
        }
    ]
    assert result["metadata"]["finish_reason"] == "stop"
    assert result["metadata"]["turns"] == 2
    assert result["metadata"]["resource_usage"]["network_bytes_received"] > 0
    kinds = [c["type"] for c in chunks]
    assert kinds[0] == "content" and "tool_call" in kinds and kinds[-1] == "metadata"

    first, second = (r["body"] for r in server.requests)
    assert all(r["path"] == "/v1/chat/completions" for r in server.requests)
    assert first["stream"] is True and first["model"] == "fake-model"
    assert first["messages"] == [{"role": "user", "content": "Weather in Oslo?"}]
    assert first["tools"] == [
        {
            "type": "function",
            "function": {"name": "weather", "parameters": WEATHER, "description": "Weather now"},
        }
    ]
    assistant, tool = second["messages"][1:]
    assert assistant["role"] == "assistant" and assistant["content"] == "Checking. "
    assert assistant["tool_calls"] == [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "weather", "arguments": '{"city": "Oslo"}'},
        }
    ]
    assert tool["role"] == "tool" and tool["tool_call_id"] == "call_1"
    assert '"temp": 21' in tool["content"]
    progress = mrt.progress(h)
    assert progress is not None and progress.completed_steps == len(chunks)
    assert progress.resource_usage.network_bytes_sent > 0


def test_a_429_then_success(mrt: Runtime, server: FakeOpenAI) -> None:
    server.status(
        429, {"error": {"message": "slow down", "type": "rate_limit"}}, {"Retry-After": "0"}
    )
    server.status(503, {"error": {"message": "overloaded"}})
    server.sse(content_events("fine"))
    result = mrt.result(mrt.submit(Task.agent("chat", "hi")), timeout=20)
    assert result["content"] == "fine"
    assert len(server.requests) == 3
    assert server.requests[0]["body"]["messages"][0] == {"role": "system", "content": "Be brief."}


def test_a_400_fails_with_the_servers_message(mrt: Runtime, server: FakeOpenAI) -> None:
    server.status(400, {"error": {"message": "model 'fake-model' not found", "type": "invalid"}})
    h = mrt.submit(Task.agent("chat", "hi"))
    with pytest.raises(TaskFailed, match="400 Bad Request: model 'fake-model' not found"):
        mrt.result(h, timeout=20)
    assert len(server.requests) == 1  # a 4xx is not retried


def test_a_malformed_stream_fails_clearly(mrt: Runtime, server: FakeOpenAI) -> None:
    server.raw('data: {"choices": [{"index": 0, "delta": {"content": "a"}}]}\n\ndata: {nope\n\n')
    with pytest.raises(TaskFailed, match=r"malformed stream .*not JSON"):
        mrt.result(mrt.submit(Task.agent("chat", "hi")), timeout=20)
    server.sse(content_events("a")[:-1], done=False)  # no finish, no [DONE]
    with pytest.raises(TaskFailed, match="ended before 'data: \\[DONE\\]'"):
        mrt.result(mrt.submit(Task.agent("chat", "hi")), timeout=20)


def test_a_failing_tool_goes_back_to_the_model(mrt: Runtime, server: FakeOpenAI) -> None:
    server.sse(tool_call_events([("c1", "broken", {})]))
    server.sse(content_events("the tool broke"))
    result = mrt.result(mrt.submit(Task.agent("chat", "hi")), timeout=20)
    assert result["content"] == "the tool broke"
    assert "the tool broke" in result["tool_calls"][0]["error"]
    tool_message = server.requests[1]["body"]["messages"][-1]
    assert tool_message["role"] == "tool" and "error" in tool_message["content"]


def test_two_tool_calls_in_one_answer_and_scripts_call_the_agent(
    mrt: Runtime, server: FakeOpenAI
) -> None:
    server.sse(
        tool_call_events(
            [("a", "weather", {"city": "Oslo"}), ("b", "weather", {"city": "Rome", "unit": "F"})]
        )
    )
    server.sse(content_events("done"))
    h = mrt.submit(Task.lua('local r = spell.agent("chat", "two?") return r.tool_calls'))
    calls = mrt.result(h, timeout=20)
    assert [c["result"]["city"] for c in calls] == ["Oslo", "Rome"]
    ids = [m["tool_call_id"] for m in server.requests[1]["body"]["messages"] if m["role"] == "tool"]
    assert ids == ["a", "b"]


def test_retries_run_out(server: FakeOpenAI) -> None:
    agent = OpenAIChat(server.url, "m", max_retries=1, backoff=0.0)
    server.status(500, {"error": "boom"})
    server.status(500, {"error": "boom again"})

    async def drain() -> None:
        async for _ in agent.stream("hi"):
            pass

    import asyncio

    with pytest.raises(AgentError, match="answered 500 Internal Server Error 2 times; last: boom"):
        asyncio.run(drain())


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="base_url"):
        OpenAIChat("localhost:8080", "m")
    assert OpenAIChat("http://h:1/v1", "m").url == "http://h:1/v1/chat/completions"
    assert OpenAIChat("http://h:1", "m").url == "http://h:1/v1/chat/completions"


def test_missing_api_key_is_a_clear_error(rt: Runtime, server: FakeOpenAI) -> None:
    rt.register_agent("keyed", OpenAIChat(server.url, "m", api_key_env="LLMSPELL_NO_SUCH_KEY"))
    with pytest.raises(TaskFailed, match="LLMSPELL_NO_SUCH_KEY"):
        rt.result(rt.submit(Task.agent("keyed", "hi")), timeout=20)
