"""Every error llmspell raises.

The tree::

    LlmspellError                 root: catch this to catch everything of ours
    ├── MessageError              a message or task that cannot be carried
    ├── TaskFailed                the task ran and failed
    │   ├── ScriptError           a Lua/JS syntax or runtime error
    │   │   └── ReplayDivergence  a resumed script made another host call than recorded
    │   └── ResourceLimitExceeded killed by its Limits (on_exceed="kill")
    ├── TaskCancelled             the task was cancelled before it finished
    ├── TaskTimeout               the task's own ``timeout`` ran out
    ├── RuntimeClosed             a call on a Runtime that is closed
    ├── JournalError              a journal file that cannot be used (Runtime(journal=...))
    ├── RuntimeDegraded           a call on a Runtime whose supervisor gave up
    ├── AgentError                (llmspell.agents) an agent got no answer from its server
    └── SimulationDeadlock        (llmspell.testing) a simulation where nothing can happen

These are all the public errors: every other exception class in the package is
internal (raised and caught inside it, or turned into one of these).

``Runtime.result(handle, timeout=...)`` running out of *its* timeout raises the
builtin ``TimeoutError`` instead and leaves the task running: it says "you
stopped waiting", not "the task ended".
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "JournalError",
    "LlmspellError",
    "MessageError",
    "ReplayDivergence",
    "ResourceLimitExceeded",
    "RuntimeClosed",
    "RuntimeDegraded",
    "ScriptError",
    "TaskCancelled",
    "TaskFailed",
    "TaskTimeout",
    "error_from_outcome",
]


class LlmspellError(Exception):
    """Root of every error llmspell raises."""


class MessageError(LlmspellError):
    """A message or task that cannot be carried.

    Raised by ``Runtime.submit`` at once for a malformed task (unknown option,
    duplicate id, bad priority, args that are not msgpack data), and by the
    wire codec for bad bytes. ``where`` names the field ("args.x",
    "priority"); fix it and submit again: nothing was queued.
    """

    def __init__(self, message: str, *, where: str | None = None) -> None:
        self.where = where
        super().__init__(f"{where}: {message}" if where else message)
        self.message = message


class TaskFailed(LlmspellError):
    """The task ran and failed; raised by ``Runtime.result``.

    Attributes:
        task_id: the failed task's id.
        message: what went wrong, in one line.
        engine: ``"python"``, ``"lua"``, ``"js"`` or ``"runtime"`` (the
            scheduler itself, e.g. a failed dependency).
        traceback: the script's or Python callable's own traceback, or "".
        attempts: the error of every attempt when the task had retries.
        data: what a script threw when it was data, not an error object (Lua
            ``error({code = 42})``, JS ``throw {code: 42}``): ``{"code": 42}``;
            else None.
    """

    def __init__(
        self,
        message: str,
        *,
        task_id: str | None = None,
        engine: str = "runtime",
        traceback: str = "",
        attempts: list[str] | None = None,
        data: Any = None,
    ) -> None:
        self.message = message
        self.data = data
        self.task_id = task_id
        self.engine = engine
        self.traceback = traceback
        self.attempts = list(attempts or [])
        where = f"task {task_id!r} ({engine})" if task_id else engine
        super().__init__(f"{where} failed: {message}")


class ScriptError(TaskFailed):
    """A Lua or JavaScript syntax or runtime error. ``traceback`` has the
    script's own traceback, with line numbers of the task's code."""


class ReplayDivergence(ScriptError):
    """A Lua or JS task resumed from a journal made another host call than
    the one recorded at the same point of its earlier run (its code, or what
    it reads, changed). The message names the call number, the recorded call
    and the new one. Nothing of the new call was made."""


class ResourceLimitExceeded(TaskFailed):
    """The task went over its ``Limits`` with ``on_exceed="kill"``."""


class TaskCancelled(LlmspellError):
    """The task was cancelled (by ``Runtime.cancel``, a coordination that no
    longer needed it, or the runtime closing) before it finished."""

    def __init__(self, message: str = "task was cancelled", *, task_id: str | None = None) -> None:
        self.task_id = task_id
        self.message = message
        super().__init__(f"task {task_id!r}: {message}" if task_id else message)


class TaskTimeout(LlmspellError):
    """The task's own ``timeout`` ran out; the task was stopped.

    Not the builtin ``TimeoutError``, which ``Runtime.result(timeout=...)``
    raises when the *caller* stops waiting.
    """

    def __init__(self, message: str = "task timed out", *, task_id: str | None = None) -> None:
        self.task_id = task_id
        self.message = message
        super().__init__(f"task {task_id!r}: {message}" if task_id else message)


class RuntimeClosed(LlmspellError):
    """A call on a ``Runtime`` that was closed (or never started)."""


class RuntimeDegraded(LlmspellError):
    """A call on a ``Runtime`` that is degraded: a supervisor went over its
    restart intensity and stopped its engines for good. ``reason`` says which
    supervisor gave up and why. Only ``close()`` still works; start a new
    ``Runtime`` to run work again."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"the runtime is degraded ({reason}); close it and start a new one")


class JournalError(LlmspellError):
    """``Runtime(journal=path)`` (or ``llmspell journal``) cannot use the file:
    it is not an llmspell journal, is truncated or corrupt, was written by a
    newer llmspell, is held by another live runtime, or cannot be written.
    ``path`` names the file; nothing in it was changed."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        self.path = path
        self.message = message
        super().__init__(f"journal {path}: {message}" if path else message)


_FAILURE_CLASSES: dict[str, type[TaskFailed]] = {
    "failed": TaskFailed,
    "script": ScriptError,
    "divergence": ReplayDivergence,
    "resource": ResourceLimitExceeded,
}


def error_from_outcome(task_id: str, status: str, error: dict[str, Any] | None) -> LlmspellError:
    """Build the exception ``result()`` raises for a task that ended badly.

    ``error`` is the wire form of a failure (``messages.types.TaskError.wire()``,
    with the scheduler's ``attempts``); what it leaves out reads as kind
    ``"failed"``, engine ``"runtime"``.
    """
    err = error or {}
    message = str(err.get("message") or status)
    if status == "cancelled":
        return TaskCancelled(message, task_id=task_id)
    if status == "timed_out":
        return TaskTimeout(message, task_id=task_id)
    cls = _FAILURE_CLASSES.get(str(err.get("kind", "failed")), TaskFailed)
    return cls(
        message,
        task_id=task_id,
        engine=str(err.get("engine", "runtime")),
        traceback=str(err.get("traceback", "")),
        attempts=[str(a) for a in err.get("attempts", [])],
        data=err.get("data"),
    )
