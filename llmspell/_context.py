"""What an engine tells the user code it runs: the task's meter and, for
agents, the agent's context. Both are ``contextvars``: set by the python
engine around a sync call (on its worker thread) or for an ``async def``
call's own asyncio task, so concurrent calls never see each other's.

* ``Meter``: the task's network bytes (the runtime's HTTP clients in
  ``llmspell.net`` add to it) and, for async calls and agents, CPU time.
* ``AgentContext``: the agent task's id and the catalogue of registered tools
  (name -> ``{"description", "parameters"}``), for agents that offer tools to
  a model (``llmspell.agents.OpenAIChat``).

``current_task()`` (public as ``llmspell.current_task``) reads them: the id,
attempt and idempotency key of the task running the calling code.
"""

from __future__ import annotations

import threading
import uuid
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "AgentContext",
    "Meter",
    "TaskContext",
    "current_agent",
    "current_meter",
    "current_task",
]


class Meter:
    """Resource use of one running task that the engine cannot see itself.
    Thread-safe: an agent's tool results and its HTTP reads may add from
    different threads. One lock serves every meter (adds are rare; a lock per
    task would cost every trivial task its allocation)."""

    __slots__ = ("cpu_seconds", "received", "sent", "spans")

    _lock = threading.Lock()

    def __init__(self) -> None:
        self.sent = 0
        self.received = 0
        self.cpu_seconds = 0.0
        # spans of work inside the task the runtime cannot see (an agent's model
        # requests): [name, start, end, attributes, error], for traces
        self.spans: list[list[Any]] | None = None

    def add_span(
        self, name: str, start: float, end: float, attrs: dict[str, Any], error: str | None
    ) -> None:
        with self._lock:
            if self.spans is None:
                self.spans = []
            self.spans.append([name, start, end, attrs, error])

    def add_io(self, sent: int = 0, received: int = 0) -> None:
        with self._lock:
            self.sent += sent
            self.received += received

    def add_cpu(self, seconds: float) -> None:
        with self._lock:
            self.cpu_seconds += seconds

    def usage(self) -> dict[str, Any]:
        if not (self.sent or self.received):
            return {}
        with self._lock:
            out: dict[str, Any] = {}
            if self.sent:
                out["network_bytes_sent"] = self.sent
            if self.received:
                out["network_bytes_received"] = self.received
            return out


@dataclass(frozen=True, slots=True)
class AgentContext:
    task_id: str
    tools: dict[str, Any] = field(default_factory=dict)
    attempt: int = 0


# uuid5 namespace of idempotency keys (a fixed, random uuid: keys are ours alone)
_KEYS = uuid.UUID("6f1d3c52-8a4e-4b7f-9a0e-2c5d7e31b9a4")


@dataclass(frozen=True, slots=True)
class TaskContext:
    """The task running the calling code (``llmspell.current_task()``).

    ``id``: the task's id. ``attempt``: 0 on its first run, then 1, 2, ... for
    each re-run (a retry after a failure, a re-run after an engine crash or, with
    a journal, after the process that owned the runtime died). ``idempotency_key``:
    a string derived from the id alone, the same on every run of the task, in
    every process: hand it to the services the task calls (a payment API's
    ``Idempotency-Key`` header) so that work done twice happens once.
    """

    id: str
    attempt: int
    idempotency_key: str


def current_task() -> TaskContext | None:
    """The Python task (a ``Task.python`` call, a tool, an agent) running this
    code, or None outside one. Works in sync functions (on the engine's worker
    thread) and in ``async def`` ones alike."""
    meter = _METER.get()
    task_id = getattr(meter, "task_id", None)
    attempt = getattr(meter, "attempt", None)
    if not isinstance(task_id, str):
        agent = _AGENT.get()
        if agent is None:
            return None
        task_id, attempt = agent.task_id, agent.attempt
    key = str(uuid.uuid5(_KEYS, task_id))
    return TaskContext(task_id, int(attempt or 0), key)


_METER: ContextVar[Meter | None] = ContextVar("llmspell_meter", default=None)
_AGENT: ContextVar[AgentContext | None] = ContextVar("llmspell_agent", default=None)


def current_meter() -> Meter | None:
    """The meter of the task running this code, or None outside a task."""
    return _METER.get()


def current_task_id() -> str | None:
    """The id of the Python task (or agent) running this code, or None: what a
    task submits through ``Runtime.submit`` becomes its child (it triggers no
    hooks when the task is a hook; cancelling the task cancels it)."""
    meter = _METER.get()
    task_id = getattr(meter, "task_id", None)
    if isinstance(task_id, str):
        return task_id
    agent = _AGENT.get()
    return agent.task_id if agent is not None else None


def current_agent() -> AgentContext | None:
    """The context of the agent task running this code, or None."""
    return _AGENT.get()
