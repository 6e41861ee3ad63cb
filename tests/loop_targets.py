"""Python callables of tests/test_embedded_loop.py (importable as ``loop_targets``)."""

from __future__ import annotations

import threading
import time
from typing import Any


def count_in_input(input: dict[str, Any]) -> int:
    """Counts its runs in the input it was given; fails the first run it sees."""
    input["runs"] = input.get("runs", 0) + 1
    if input["runs"] < 2:
        raise RuntimeError(f"run {input['runs']} of this input")
    return int(input["runs"])


class CountingAgent:
    """An agent that writes into its input, then fails the first run it sees."""

    async def run(self, input: Any) -> Any:
        return count_in_input(input)


def same(input: Any = None) -> Any:
    return input


# events the tests below set and wait for, by name (made by the test first)
EVENTS: dict[str, threading.Event] = {}


def set_event(name: str) -> bool:
    EVENTS[name].set()
    return True


def wait_event(name: str) -> bool:
    """True once ``name`` is set; False if that took more than 10 s."""
    return EVENTS[name].wait(10)


def ident(seconds: float = 0.0) -> int:
    """The thread that ran it (after sleeping ``seconds``)."""
    if seconds:
        time.sleep(seconds)
    return threading.get_ident()


RAN_ON: dict[str, int] = {}


def thread_name(seconds: float = 0.0) -> str:
    """The name of the thread that ran it (after sleeping ``seconds``)."""
    if seconds:
        time.sleep(seconds)
    return threading.current_thread().name


def hold_as(key: str, name: str = "") -> bool:
    """Notes its thread under ``key`` in ``RAN_ON``, then waits for ``EVENTS[name]``
    (none: returns at once): True once it is set, False after 10 s."""
    RAN_ON[key] = threading.get_ident()
    return EVENTS[name].wait(10) if name else True


def submit_from_inside(key: str) -> str:
    """Notes its thread under ``key``, submits a Lua task to the runtime a test put here
    and asks its status (a query that runs the loop); returns the task's id."""
    from llmspell import Task

    RAN_ON[key] = threading.get_ident()
    rt = RUNTIME  # type: ignore[name-defined]  # noqa: F821
    h = rt.submit(Task.lua("return 8"))
    rt.status(h)
    return str(h.id)
