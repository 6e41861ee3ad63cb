"""Agents, tools, hooks and executors the tests register (importable as ``agent_targets``)."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from llmspell import TaskFailed

# -- tools ---------------------------------------------------------------------------


def weather(city: str, unit: str = "C") -> dict[str, Any]:
    return {"city": city, "temp": 21 if unit == "C" else 70, "unit": unit}


def add(a: int, b: int) -> int:
    return a + b


def broken_tool(**params: Any) -> None:
    raise RuntimeError("the tool broke")


WEATHER_SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "minLength": 1},
        "unit": {"type": "string", "enum": ["C", "F"]},
        "days": {"type": "array", "items": {"type": "integer", "minimum": 1}},
    },
    "required": ["city"],
    "additionalProperties": False,
}

# -- hooks (they write to a file: hooks run in engine processes in local mode) ---------


def record_hook(path: str | None = None, **payload: Any) -> str:
    target = path or os.environ.get("LLMSPELL_HOOK_LOG", "")
    line = f"{payload.get('point')} {payload.get('task_id', '')} {payload.get('status', '')}"
    if target:
        with open(target, "a", encoding="utf-8") as f:
            f.write(line + "\n")
    return line


def failing_hook(**payload: Any) -> None:
    raise RuntimeError(f"hook failed at {payload.get('point')}")


def executor(**payload: Any) -> dict[str, Any]:
    return {"ran": True, "payload": payload}


# -- agents -----------------------------------------------------------------------------


class EchoAgent:
    """async run(input)."""

    async def run(self, input: Any) -> str:
        await asyncio.sleep(0)
        return f"echo: {input}"


class SyncRunAgent:
    def run(self, input: Any) -> dict[str, Any]:
        return {"content": f"sync {input}", "metadata": {"thread": threading.current_thread().name}}


class ToolUser:
    """An async streaming agent that calls the ``weather`` tool mid-stream."""

    async def stream(self, input: Any) -> AsyncIterator[dict[str, Any]]:
        yield {"type": "content", "text": "Let me check. "}
        result = yield {"type": "tool_call", "name": "weather", "params": {"city": input}}
        yield {"type": "content", "text": f"It is {result['temp']} degrees in {result['city']}."}
        yield {"type": "metadata", "model": "fake-1"}


class SyncToolUser:
    """The same as a sync generator."""

    def stream(self, input: Any) -> Iterator[dict[str, Any]]:
        yield {"type": "content", "text": "sync "}
        result = yield {"type": "tool_call", "name": "add", "params": {"a": 2, "b": input}}
        yield {"type": "content", "text": str(result)}


class CatchingAgent:
    """Calls a failing tool and recovers."""

    async def stream(self, input: Any) -> AsyncIterator[dict[str, Any]]:
        try:
            yield {"type": "tool_call", "name": "broken", "params": {}}
        except TaskFailed as exc:
            yield {"type": "content", "text": f"recovered from: {exc.message}"}


class BadChunkAgent:
    async def stream(self, input: Any) -> AsyncIterator[Any]:
        yield {"type": "content", "text": "ok"}
        yield {"kind": "what"}


# Backpressure: the producer records, at each yield, how many chunks it has produced
# and how many the consumer has taken (the consumer increments ``consumed``).
flow: dict[str, Any] = {"produced": 0, "consumed": 0, "max_ahead": 0, "done": False}
flow_lock = threading.Lock()


def reset_flow() -> None:
    with flow_lock:
        flow.update(produced=0, consumed=0, max_ahead=0, done=False)


class Counter:
    """Streams ``input`` numbered chunks as fast as it may."""

    async def stream(self, input: Any) -> AsyncIterator[dict[str, Any]]:
        for i in range(int(input)):
            with flow_lock:
                ahead = flow["produced"] - flow["consumed"]
                flow["max_ahead"] = max(flow["max_ahead"], ahead)
                flow["produced"] += 1
            yield {"type": "content", "text": f"{i},"}
        with flow_lock:
            flow["done"] = True


class SyncCounter:
    def stream(self, input: Any) -> Iterator[dict[str, Any]]:
        for i in range(int(input)):
            with flow_lock:
                ahead = flow["produced"] - flow["consumed"]
                flow["max_ahead"] = max(flow["max_ahead"], ahead)
                flow["produced"] += 1
            yield {"type": "content", "text": f"{i},"}


class ThreadReporter:
    """Says which thread and loop it ran on."""

    async def stream(self, input: Any) -> AsyncIterator[dict[str, Any]]:
        yield {"type": "metadata", "thread": threading.current_thread().name}


class Spinner:
    """Burns CPU between chunks."""

    def stream(self, input: Any) -> Iterator[dict[str, Any]]:
        for i in range(int(input)):
            t = time.thread_time() + 0.02
            while time.thread_time() < t:
                pass
            yield {"type": "content", "text": str(i)}


echo_agent = EchoAgent()


# -- CPU, network ---------------------------------------------------------------------------


def burn(seconds: float) -> float:
    """Use ``seconds`` of CPU time."""
    end = time.thread_time() + seconds
    n = 0
    while time.thread_time() < end:
        n += 1
    return seconds


def idle(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


async def aburn(seconds: float, steps: int = 20) -> float:
    """Use ``seconds`` of CPU in ``steps`` slices, awaiting between them."""
    per = seconds / steps
    for _ in range(steps):
        end = time.thread_time() + per
        while time.thread_time() < end:
            pass
        await asyncio.sleep(0)
    return seconds


def fetch(url: str) -> int:
    from llmspell import net

    with net.Client() as client:
        return len(client.get(url).content)


class WhoAmIAgent:
    """Answers with the task it runs in (``llmspell.current_task()``)."""

    async def run(self, input: Any) -> Any:
        import llmspell

        t = llmspell.current_task()
        return None if t is None else [t.id, t.attempt, t.idempotency_key]
