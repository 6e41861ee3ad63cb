"""Plain functions the docs run as Python tasks, tools and hook targets."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from typing import Any


def fetch() -> str:
    return "page text"


def two() -> int:
    return 2


def three() -> int:
    return 3


def report(input: Any) -> str:
    return f"report on {input}"


def mirror_a() -> str:
    return "from mirror a"


def mirror_b() -> str:
    return "from mirror b"


def maybe() -> int:
    """Fails about half of the time: for best-effort coordinations."""
    n = random.randint(0, 9)
    if n < 5:
        raise RuntimeError(f"unlucky draw {n}")
    return n


def weather(city: str, unit: str = "C") -> dict[str, Any]:
    return {"city": city, "temperature": 21 if unit == "C" else 70, "unit": unit}


def search(q: str) -> dict[str, str]:
    return {"summary": f"{q!r}: an actor is a unit of state that only answers messages."}


AUDIT: list[dict[str, Any]] = []


def record(**payload: Any) -> None:
    """A ``task.after`` hook: keeps what it was told."""
    AUDIT.append(payload)


class Researcher:
    """A streaming agent that calls the ``search`` tool once."""

    async def stream(self, question: str) -> AsyncIterator[dict[str, Any]]:
        yield {"type": "content", "text": "Looking it up. "}
        found = yield {"type": "tool_call", "name": "search", "params": {"q": question}}
        yield {"type": "content", "text": found["summary"]}
