"""A race between two models: the first answer wins, the other request is
cancelled at once (its HTTP stream is closed, its task ends ``cancelled``).

Offline, the scripted ``slow-model`` takes 5 s to answer and ``fast-model``
answers at once. Against a real endpoint both are ``OPENAI_MODEL`` (or
``OPENAI_MODEL_2`` for the second) and either may win.
"""

from __future__ import annotations

from llm_endpoint import Endpoint, endpoint

from llmspell import CoordinationResult, Runtime, Strategy, Task


def race(rt: Runtime, ep: Endpoint, question: str) -> CoordinationResult:
    rt.register_agent("first", ep.chat(ep.model, tools=[]))
    rt.register_agent("second", ep.chat(ep.second_model, tools=[]))
    return rt.coordinate(
        [
            Task.agent("first", question, id="ask-first"),
            Task.agent("second", question, id="ask-second"),
        ],
        Strategy.RACE,
        timeout=120,
    )


def test_the_fast_model_wins_and_the_slow_one_is_cancelled() -> None:
    with endpoint() as ep, Runtime() as rt:
        r = race(rt, ep, "Say hello.")
        assert r.ok and r.winner is not None
        assert r.results[r.winner]["content"]
        if not ep.real:
            assert r.winner == 0 and r.cancelled == [1]
            assert r.results[0]["content"] == "fast-model says: Say hello."
            assert rt.status("ask-second") == "cancelled"


if __name__ == "__main__":
    with endpoint() as ep, Runtime() as rt:
        r = race(rt, ep, "Say hello.")
        print(
            f"winner: task {r.winner}: {r.results[r.winner]['content']!r}; cancelled {r.cancelled}"
        )
