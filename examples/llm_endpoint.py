"""Where the examples' model lives, and the tools they give it.

Offline by default: a ``llmspell.testing.FakeOpenAI`` on 127.0.0.1 plays a
small scripted model (``scripted_model``). With ``OPENAI_BASE_URL`` set the
examples talk to that endpoint instead, with the model ``OPENAI_MODEL``
(default ``gpt-4o-mini``) and the key in ``OPENAI_API_KEY`` when it is set.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from llmspell.agents import OpenAIChat
from llmspell.testing import Answer, FakeOpenAI

#: the two models of the race: the scripted slow one answers after this long
SLOW_DELAY = 5.0


@dataclass(frozen=True)
class Endpoint:
    base_url: str
    model: str
    real: bool  # a real endpoint: answers vary, assert only their shape
    second_model: str  # the race's other model

    def chat(self, model: str | None = None, **kw: Any) -> OpenAIChat:
        """An ``OpenAIChat`` agent on this endpoint."""
        key = "OPENAI_API_KEY" if self.real and os.environ.get("OPENAI_API_KEY") else None
        return OpenAIChat(self.base_url, model or self.model, api_key_env=key, **kw)


@contextmanager
def endpoint() -> Iterator[Endpoint]:
    base = os.environ.get("OPENAI_BASE_URL")
    if base:
        model = os.environ.get("OPENAI_MODEL", "gpt-4o-mini")
        yield Endpoint(base, model, True, os.environ.get("OPENAI_MODEL_2", model))
        return
    with FakeOpenAI(respond=scripted_model) as server:
        yield Endpoint(server.base_url, "fast-model", False, "slow-model")


# -- the tools (registered as "module:function": they run on the python engine) ------

_WEATHER = {"oslo": 4, "lisbon": 19, "tokyo": 12}


def weather(city: str) -> dict[str, Any]:
    """Current temperature in a city (a fixed table: no network)."""
    key = city.strip().lower()
    if key not in _WEATHER:
        raise ValueError(f"no weather for {city!r}; known: {sorted(_WEATHER)}")
    return {"city": city.strip().title(), "celsius": _WEATHER[key]}


WEATHER_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
    "additionalProperties": False,
}

DOCS = {
    "actors": "An actor owns its state and changes it only in answer to a message.",
    "lua": "Lua coroutines yield to the engine whenever a script waits for the runtime.",
    "races": "In a race the first task to succeed wins and the others are cancelled.",
    "retries": "A task with retries runs again after a failure or an engine crash.",
}


def retrieve(question: str, k: int = 2) -> list[dict[str, str]]:
    """The ``k`` documents sharing the most words with the question."""
    words = set(re.findall(r"[a-z]+", question.lower()))

    def score(item: tuple[str, str]) -> tuple[int, str]:
        name, text = item
        return (-len(words & set(re.findall(r"[a-z]+", text.lower()))), name)

    ranked = sorted(DOCS.items(), key=score)
    return [{"id": name, "text": text} for name, text in ranked[:k]]


# -- the scripted model ------------------------------------------------------------


def scripted_model(request: dict[str, Any]) -> Answer:
    """What the offline model answers to one chat-completions request."""
    messages = request.get("messages") or []
    last = messages[-1] if messages else {}
    user = next((m for m in reversed(messages) if m.get("role") == "user"), {})
    question = str(user.get("content") or "")
    delay = SLOW_DELAY if request.get("model") == "slow-model" else 0.0
    if last.get("role") == "tool":  # the tool's answer came back: say it
        result = json.loads(last.get("content") or "{}")
        if "error" in result:
            return Answer(f"Sorry, I could not look that up: {result['error']}", delay=delay)
        return Answer(f"It is {result['celsius']} degrees in {result['city']}.", delay=delay)
    tools = {t["function"]["name"] for t in request.get("tools") or []}
    if "weather" in tools:
        city = re.findall(r"[A-Z][a-z]+", question)
        return Answer(tool_calls=[("weather", {"city": city[-1] if city else "?"})])
    if "Context:" in question:  # a retrieval prompt: answer from the first passage
        passage = question.split("Context:", 1)[1].strip().splitlines()[0]
        return Answer(f"From the docs: {passage.lstrip('- ')}", delay=delay)
    return Answer(f"{request.get('model')} says: {question}", delay=delay)


class ScriptedAnswerer:
    """``scripted_model`` as an in-process streaming agent, without HTTP: for
    simulations, whose virtual clock cannot drive a real network exchange."""

    async def stream(self, prompt: str) -> AsyncIterator[dict[str, Any]]:
        answer = scripted_model({"messages": [{"role": "user", "content": prompt}]})
        for word in answer.content.split(" "):
            yield {"type": "content", "text": word + " "}
        yield {"type": "metadata", "model": "scripted"}


def scripted_answer(input: str) -> dict[str, Any]:
    """``scripted_model`` as a plain Python step (``input=`` the prompt), shaped
    like an agent's result: the simulation's stand-in for the agent step."""
    return {"content": scripted_model({"messages": [{"role": "user", "content": input}]}).content}
