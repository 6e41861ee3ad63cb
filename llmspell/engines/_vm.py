"""The contract between a script engine actor and the VM it drives.

A *VM* (``LuaVM`` in ``lua_vm.py``, ``JsVM`` in ``js_vm.py``) knows nothing of
actors, messages or time. It hosts many script tasks ("logical actors": Lua
coroutines, JS promises) and runs one of them for one *step* when asked. A step
ends when the script

* returns (``Completed``),
* fails: syntax error, runtime error, memory limit, step time budget
  (``Failed``), or
* asks for something only the host can give and must wait for it
  (``Yielded`` with a ``Request``), or
* still waits for requests it made in earlier steps and made no new one
  (``Waiting``; only VMs whose tasks can wait on several requests at once, JS).

Calls that need no waiting (``spell.submit``, ``spell.emit``,
``spell.progress``, ``spell.log``) are made synchronously on the ``Host``
object the VM was given; ``Host.submit`` returns the new task's id at once.

The engine actor owns scheduling: which task steps next, timers, awaiting
other tasks, events, cancellation. It resumes a yielded task with
``vm.resume(task_id, value)`` or ``vm.resume(task_id, error=message)``; an
error resumes the script with a script-level error it may catch
(``pcall`` / ``try``).

A JS task may have several requests outstanding (``Promise.all``): each
``Request`` then carries a VM-unique ``id`` (Lua: always 0) and the engine
answers each with ``vm.resume(task_id, value, request_id=request.id)``. When a
task ends, the requests it still had outstanding are abandoned.

Values crossing the boundary are msgpack data only: None, bool, int, float,
str, bytes, list, dict with str keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Literal, Protocol

__all__ = [
    "Completed",
    "Failed",
    "Host",
    "Request",
    "ScriptVM",
    "StepResult",
    "Waiting",
    "Yielded",
    "read_prelude",
]

RequestOp = Literal[
    "yield",  # cooperative yield: resume with None as soon as the engine gets round to it
    "sleep",  # args: {"seconds": float}; resume with None when the time has passed
    "await",  # args: {"task_id": str}; resume with the value, or error=<failure message>
    "wait_event",  # args: {"pattern": str, "timeout": float | None};
    # resume with {"name": str, "payload": Any}, or error="timed out waiting for event ..."
    "resource_wait",  # args: {}; resume with None when the resource tracker allows
    "coordinate",  # args: {"tasks": [spec, ...], "strategy": str, "timeout": float | None,
    # "inputs": list | None}; resume with the CoordinationResult as a dict
]


@dataclass(frozen=True, slots=True)
class Request:
    """What a yielded script waits for."""

    op: RequestOp
    args: dict[str, Any] = field(default_factory=dict)
    id: int = 0  # pass back as resume(..., request_id=id); 0 where one request at a time (Lua)


@dataclass(frozen=True, slots=True)
class Yielded:
    request: Request
    more: tuple[Request, ...] = ()  # further requests made in the same step (JS only)


@dataclass(frozen=True, slots=True)
class Waiting:
    """The task made no new request this step but still waits on earlier ones (JS only)."""


@dataclass(frozen=True, slots=True)
class Completed:
    value: Any


FailureKind = Literal["syntax", "runtime", "memory", "budget", "conversion"]


@dataclass(frozen=True, slots=True)
class Failed:
    """The script task is over and failed.

    ``message`` is one line a user can act on (the engine's own message, e.g.
    ``[string "task"]:3: attempt to index a nil value``); ``traceback`` is the
    script's own traceback (line numbers of the user's code) or "".
    """

    kind: FailureKind
    message: str
    traceback: str = ""
    #: a thrown value that is data (Lua ``error({code = 42})``, JS ``throw {code: 42}``)
    data: Any = None


StepResult = Yielded | Waiting | Completed | Failed


class Host(Protocol):
    """Calls a script makes that return at once. Implemented by the engine actor."""

    def submit(self, parent_id: str, spec: dict[str, Any]) -> str:
        """Queue a child task described by ``spec`` (see API.md ``spell.submit``);
        return its task id. Raises ``ValueError`` with a clear message when the
        spec is malformed (the VM turns that into a script error)."""
        ...

    def emit(self, task_id: str, name: str, payload: Any) -> None: ...

    def progress(
        self, task_id: str, done: float, total: float | None, message: str | None
    ) -> None: ...

    def log(self, task_id: str, level: str, message: str) -> None: ...

    def clock(self, task_id: str, fn: str, value: Any) -> None:
        """A clock read by the script (``os.time``, ``Date.now``, ...; called only by a
        VM made with ``record_clock=True``, in the order of the task's reads):
        ``fn`` names it, ``value`` is what the script got."""
        ...


class ScriptVM(Protocol):
    """One VM hosting many script tasks. Not thread-safe: one actor drives it."""

    language: str  # "lua" or "js"

    def start(
        self,
        task_id: str,
        code: str,
        args: Any = None,
        input: Any = None,
        source: str | None = None,
        clock: list[Any] | None = None,
    ) -> Failed | None:
        """Prepare task ``task_id`` (compile, create its coroutine/promise).

        Returns ``Failed(kind="syntax", ...)`` if the code does not compile,
        else None; the task then waits for its first ``resume``. ``source``
        names the code in its errors and tracebacks (``"add.lua"``, ``"step
        'transform' (flow.yaml:15)"``); None: the VM's default name.
        ``clock`` (a replay, with ``record_clock``): what the task's first clock
        reads return, in order, instead of the real clock.
        """
        ...

    def resume(
        self,
        task_id: str,
        value: Any = None,
        error: str | None = None,
        request_id: int = 0,
        budget: float | None = None,
    ) -> StepResult:
        """Run the task for one step (until it yields, returns or fails).

        The first resume after ``start`` begins the script (value ignored).
        ``request_id`` names the request answered (``Request.id``; a VM with one
        request at a time may ignore it). ``budget``: seconds this step may run
        when less than the VM's step budget (what a task's CPU limit leaves it);
        running out is a ``"budget"`` failure. After ``Completed``/``Failed`` the
        task is forgotten by the VM.
        """
        ...

    def cancel(self, task_id: str) -> None:
        """Forget the task (its coroutine/promise is dropped). Idempotent."""
        ...

    def memory_in_use(self) -> int:
        """Bytes the VM holds now (Lua: collectgarbage("count")*1024)."""
        ...

    def close(self) -> None: ...


def read_prelude(name: str) -> str:
    """The text of a VM's prelude, ``prelude.lua`` or ``prelude.js``: package data next to
    this module (the sandbox each VM runs before any task; read once, when the VM's module
    is imported)."""
    return resources.files("llmspell.engines").joinpath(name).read_text(encoding="utf-8")
