"""A tool-calling agent on ``OpenAIChat``: the model asks for the ``weather``
tool, the runtime runs it as a task, the model answers with its result.

Run it: ``python examples/test_tool_agent.py`` (offline, a scripted model) or
with ``OPENAI_BASE_URL``/``OPENAI_MODEL`` set (a real one). ``make test`` runs
``test_*`` below offline.
"""

from __future__ import annotations

from typing import Any

from llm_endpoint import WEATHER_SCHEMA, Endpoint, endpoint

from llmspell import Runtime, Task


def ask(rt: Runtime, ep: Endpoint, question: str) -> dict[str, Any]:
    rt.register_tool(
        "weather", "llm_endpoint:weather", WEATHER_SCHEMA, description="Temperature in a city"
    )
    rt.register_agent(
        "assistant", ep.chat(tools=["weather"], system="Use the weather tool; be brief.")
    )
    h = rt.submit(Task.agent("assistant", question, timeout=120))
    for chunk in rt.stream(h):  # the answer as it streams
        if chunk.get("type") == "content":
            print(chunk["text"], end="", flush=True)
    print()
    answer: dict[str, Any] = rt.result(h)
    return answer


def test_the_agent_calls_the_tool_and_answers_with_its_result() -> None:
    with endpoint() as ep, Runtime() as rt:
        answer = ask(rt, ep, "How warm is it in Oslo right now?")
        call = answer["tool_calls"][0]
        assert call["name"] == "weather"
        assert call["result"] == {"city": "Oslo", "celsius": 4}
        assert "4" in answer["content"]
        assert answer["metadata"]["turns"] == 2  # asked, called the tool, answered


def test_a_failing_tool_goes_back_to_the_model() -> None:
    with endpoint() as ep, Runtime() as rt:
        answer = ask(rt, ep, "And in Atlantis?")
        assert "error" in answer["tool_calls"][0]
        if not ep.real:
            assert "could not look that up" in answer["content"]


if __name__ == "__main__":
    with endpoint() as ep, Runtime() as rt:
        print(ask(rt, ep, "How warm is it in Oslo right now?")["tool_calls"])
