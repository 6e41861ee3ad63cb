"""Per-task ``Limits`` as engines enforce them.

An engine measures what a task uses and compares it with the task's limits
(``TaskSpec.limits``: ``memory_bytes``, ``cpu_seconds``, ``on_exceed``):

* script tasks (Lua, JS): after every step. CPU is the time inside the task's
  steps (the VM's ``stats``); memory is the net growth of the VM's allocator
  during the task's own steps (a task's footprint: allocations minus what the
  collector freed while it ran);
* Python calls: CPU of the worker thread running a sync call (sampled every
  ``CHECK_INTERVAL`` seconds) or of the steps of an ``async def`` call; a
  Python process cannot attribute memory to a call, so ``memory_bytes`` is
  not enforced per Python task (use the runtime-wide ``engine_memory``).

On going over (the policy is ``judge``, the one place it is written; the
engines measure and carry out what it says): ``kill`` stops the task and fails
it with kind "resource" (``ResourceLimitExceeded``); ``warn`` logs and
publishes ``llmspell.resource.warn`` (once per resource); ``throttle`` parks
the task and asks the resource tracker (``ResourceWait``), which grants it to
go on later (see ``actors/resources.py``). A running sync Python call cannot
be paused from outside: throttle then warns instead and says so.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any, Literal, NamedTuple

__all__ = [
    "CHECK_INTERVAL",
    "Gate",
    "Limit",
    "Over",
    "Verdict",
    "judge",
    "kill_message",
    "warn_payload",
]

log = logging.getLogger("llmspell")

#: seconds between CPU checks of running Python calls that have limits
CHECK_INTERVAL = 0.02

#: one limit a task went over: ``(resource, used, limit)``
Over = tuple[str, float, float]

_UNITS = {"cpu_seconds": "s of CPU", "memory_bytes": "bytes of memory"}


class Limit:
    """One task's limits and what the engine did about them."""

    __slots__ = (
        "cpu",
        "cpu_at_grant",
        "mem0",
        "mem_used",
        "memory",
        "on_exceed",
        "parked",
        "step_left",
        "waits",
        "warned",
    )

    def __init__(self, cpu: float | None, memory: int | None, on_exceed: str) -> None:
        self.cpu = cpu
        self.memory = memory
        self.on_exceed = on_exceed
        self.warned: set[str] = set()
        self.parked = False
        self.waits = 0
        self.cpu_at_grant = 0.0
        self.mem0 = 0  # VM memory when the current step began
        self.mem_used = 0  # net VM growth during the task's steps
        self.step_left: float | None = None  # CPU the limit left the last step (kill)

    @classmethod
    def of(cls, limits: dict[str, Any] | None) -> Limit | None:
        if not limits:
            return None
        cpu, memory = limits.get("cpu_seconds"), limits.get("memory_bytes")
        if cpu is None and memory is None:
            return None
        return cls(
            float(cpu) if cpu is not None else None,
            int(memory) if memory is not None else None,
            str(limits.get("on_exceed") or "kill"),
        )

    def over(self, cpu: float, memory: int | None) -> list[Over]:
        """``(resource, used, limit)`` for every limit ``cpu``/``memory`` exceed."""
        out: list[Over] = []
        if self.cpu is not None and cpu > self.cpu:
            out.append(("cpu_seconds", cpu, self.cpu))
        if self.memory is not None and memory is not None and memory > self.memory:
            out.append(("memory_bytes", float(memory), float(self.memory)))
        return out


def kill_message(what: str, over: list[Over]) -> str:
    """The failure message of a task killed over its limits (``what``: "lua task")."""
    parts = [
        f"{used:.3f} {_UNITS[r]}, over its limit of {limit:g}"
        if r == "cpu_seconds"
        else f"{int(used)} {_UNITS[r]}, over its limit of {int(limit)}"
        for r, used, limit in over
    ]
    return f"{what} used {' and '.join(parts)} (Limits on_exceed='kill')"


def warn_payload(
    task_id: str, engine: str, resource: str, used: float, limit: float, **extra: Any
) -> dict[str, Any]:
    """The payload of an ``llmspell.resource.warn`` event."""
    return dict(
        {"task_id": task_id, "engine": engine, "resource": resource, "used": used, "limit": limit},
        **extra,
    )


class Verdict(NamedTuple):
    """What ``judge`` says an engine must do about a task's use of its limits.

    ``action``: ``"go"`` (nothing to do), ``"kill"`` (fail the task with kind
    "resource" and ``message``), ``"warn"`` (publish each of ``warnings`` as
    ``llmspell.resource.warn``; the task goes on) or ``"park"`` (hold the task
    and ask the resource tracker for ``over[0]``, see ``EngineActor.park``).
    """

    action: Literal["go", "kill", "warn", "park"]
    over: list[Over]
    message: str = ""
    warnings: list[dict[str, Any]] = []


_GO = Verdict("go", [])


def judge(
    lim: Limit,
    over: list[Over],
    *,
    task_id: str,
    engine: str,
    what: str,
    can_park: bool = True,
) -> Verdict:
    """The limits policy: what to do with a task whose use went ``over`` its limits.

    ``over`` is ``lim.over(...)`` (empty: within its limits, which ends a run of
    throttle waits). ``what`` names the task in messages ("lua task", "agent
    task"); ``can_park`` is False for what cannot be held between steps (a running
    sync Python call): throttle then warns, with a note saying so. A resource is
    warned about once per task (``lim.warned``); a parked task is not parked again.
    """
    if not over:
        lim.waits = 0
        return _GO
    if lim.on_exceed == "kill":
        return Verdict("kill", over, kill_message(what, over))
    if lim.on_exceed == "throttle" and can_park:
        return _GO if lim.parked else Verdict("park", over)
    warnings: list[dict[str, Any]] = []
    for resource, used, limit in over:  # warn (or throttle of what cannot be parked)
        if resource in lim.warned:
            continue
        lim.warned.add(resource)
        extra: dict[str, Any] = {}
        if lim.on_exceed == "throttle":
            extra["note"] = "a running sync Python call cannot be paused; it goes on"
        log.warning(
            "%s %s used %g of %s, over its limit of %g", what, task_id, used, resource, limit
        )
        warnings.append(warn_payload(task_id, engine, resource, used, limit, **extra))
    return Verdict("warn", over, warnings=warnings)


def _settle(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class Gate:
    """Parks an ``async def`` call between its steps (``Timed(gate=...)``).

    ``park()``/``release()`` come from the engine actor's thread; calling the
    gate (on the loop, before each step) returns a future to wait on while
    parked, else None.
    """

    __slots__ = ("_fut", "_lock", "_loop", "_parked")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._parked = False
        self._fut: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def parked(self) -> bool:
        return self._parked

    def park(self) -> None:
        with self._lock:
            self._parked = True

    def release(self) -> None:
        with self._lock:
            self._parked = False
            fut, loop = self._fut, self._loop
            self._fut = self._loop = None
        if fut is not None and loop is not None:
            loop.call_soon_threadsafe(_settle, fut)

    def __call__(self) -> asyncio.Future[None] | None:
        with self._lock:
            if not self._parked:
                return None
            loop = asyncio.get_running_loop()
            fut: asyncio.Future[None] = loop.create_future()
            self._fut, self._loop = fut, loop
            return fut
