"""Tasks as users build them, and the values the runtime hands back.

``Task`` constructors validate everything they can without a runtime and turn
the task into a wire ``TaskSpec`` (``Task.to_spec``); the facade adds what
needs the runtime (id uniqueness, handles to ids).
"""

from __future__ import annotations

import enum
import os
import types
from collections.abc import Callable, Generator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ._exceptions import MessageError
from .messages import check_data

# the ids and the option rules live with the wire (engines and actors use them too);
# named here as well for code that imports them from this module
from .messages.ids import _new_id_prefix as _new_id_prefix
from .messages.ids import new_task_id as new_task_id
from .messages.options import (
    HOOK_POINTS,
    did_you_mean,
    lone_surrogate,
    strategy_name,
    task_option_problems,
)
from .messages.types import PRIORITIES, TaskSpec

__all__ = [
    "CoordinationResult",
    "Event",
    "Handle",
    "Limits",
    "Progress",
    "ResourceUsage",
    "Strategy",
    "Task",
    "TaskInfo",
]

_OPTIONS = frozenset(
    ("priority", "timeout", "deps", "retries", "limits", "metadata", "id", "compensate", "tags")
)
_AGENT_OPTIONS = frozenset(("execution", "buffer_size"))
_NO_OPTS: Mapping[str, Any] = types.MappingProxyType({})  # shared by tasks without options

_EXECUTIONS = ("single", "threaded", "distributed", "streaming")


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-task resource limits.

    ``on_exceed``: ``"kill"`` fails the task with ``ResourceLimitExceeded``,
    ``"throttle"`` parks it until it is back under, ``"warn"`` logs and emits
    ``llmspell.resource.warn``.
    """

    memory_bytes: int | None = None
    cpu_seconds: float | None = None
    on_exceed: Literal["kill", "throttle", "warn"] = "kill"

    def __post_init__(self) -> None:
        if self.on_exceed not in ("kill", "throttle", "warn"):
            raise MessageError(
                f"must be 'kill', 'throttle' or 'warn', not {self.on_exceed!r}"
                f"{did_you_mean(self.on_exceed, ('kill', 'throttle', 'warn'))}",
                where="limits.on_exceed",
            )
        if self.memory_bytes is not None and (
            isinstance(self.memory_bytes, bool)
            or not isinstance(self.memory_bytes, int)
            or not 0 < self.memory_bytes < 2**63
        ):
            raise MessageError(
                f"must be a positive int below 2**63, got {self.memory_bytes!r}",
                where="limits.memory_bytes",
            )
        if self.cpu_seconds is not None and (
            isinstance(self.cpu_seconds, bool)
            or not isinstance(self.cpu_seconds, (int, float))
            or not 0 < self.cpu_seconds < float("inf")
        ):
            raise MessageError(
                f"must be a positive number of seconds, got {self.cpu_seconds!r}",
                where="limits.cpu_seconds",
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "memory_bytes": self.memory_bytes,
            "cpu_seconds": self.cpu_seconds,
            "on_exceed": self.on_exceed,
        }


@dataclass(frozen=True, slots=True)
class Handle:
    """Names a submitted task. Cheap, hashable; pass it to ``Runtime`` calls
    or as a dependency (``deps=[handle]``). A handle returned by ``submit``
    keeps its task's outcome once it ended, so ``result(handle)`` answers for
    as long as the handle lives, even after the runtime forgot the task.

    It is also a future bound to the runtime that made it: ``h.result()``,
    ``h.cancel()``, ``h.status()``, ``h.progress()`` are that runtime's calls
    (blocking ones, also on an ``AsyncRuntime``'s handle); an
    ``AsyncRuntime``'s handle is awaitable (``await h`` is ``await
    rt.result(h)``)."""

    id: str
    # (status, value, error items, cpu_seconds, duration) once the runtime saw the task
    # end; a usage other than those two numbers: its items in the fourth field and None
    # (``_runtime.core._ended_entry``)
    _ended: Any = field(default=None, init=False, repr=False, compare=False)
    # the Runtime or AsyncRuntime that made it (None: made by hand, bound to none)
    _owner: Any = field(default=None, init=False, repr=False, compare=False)

    def __str__(self) -> str:
        return self.id

    def _sync(self) -> Any:
        owner = self._owner
        if owner is None:
            raise MessageError(
                f"handle {self.id!r} is bound to no runtime (it was not returned by submit); "
                "pass it to a runtime's own calls: rt.result(handle)",
                where="handle",
            )
        return owner._sync()

    def result(self, timeout: float | None = None) -> Any:
        """The task's value, as ``rt.result(handle, timeout)``: raises what the
        task ended with, or the builtin ``TimeoutError`` when ``timeout`` runs out."""
        return self._sync().result(self, timeout)

    def cancel(self) -> bool:
        """As ``rt.cancel(handle)``: True if the task had not finished yet."""
        return bool(self._sync().cancel(self))

    def status(self) -> str:
        """As ``rt.status(handle)``."""
        return str(self._sync().status(self))

    def progress(self) -> Progress | None:
        """As ``rt.progress(handle)``."""
        progress: Progress | None = self._sync().progress(self)
        return progress

    def __await__(self) -> Generator[Any, None, Any]:
        owner = self._owner
        if owner is None or not getattr(owner, "_awaitable_handles", False):
            raise TypeError(
                f"handle {self.id!r} is not awaitable: only an AsyncRuntime's handles are "
                "(use handle.result() for a Runtime's)"
            )
        return owner.result(self).__await__()  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True)
class ResourceUsage:
    memory_bytes: int = 0
    cpu_seconds: float = 0.0
    network_bytes_sent: int = 0
    network_bytes_received: int = 0
    duration: float = 0.0

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> ResourceUsage:
        if not d:
            return cls()
        return cls(
            memory_bytes=int(d.get("memory_bytes", 0) or 0),
            cpu_seconds=float(d.get("cpu_seconds", 0.0) or 0.0),
            network_bytes_sent=int(d.get("network_bytes_sent", 0) or 0),
            network_bytes_received=int(d.get("network_bytes_received", 0) or 0),
            duration=float(d.get("duration", 0.0) or 0.0),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "memory_bytes": self.memory_bytes,
            "cpu_seconds": self.cpu_seconds,
            "network_bytes_sent": self.network_bytes_sent,
            "network_bytes_received": self.network_bytes_received,
            "duration": self.duration,
        }

    def __add__(self, other: ResourceUsage) -> ResourceUsage:
        return ResourceUsage(
            max(self.memory_bytes, other.memory_bytes),
            self.cpu_seconds + other.cpu_seconds,
            self.network_bytes_sent + other.network_bytes_sent,
            self.network_bytes_received + other.network_bytes_received,
            self.duration + other.duration,
        )


@dataclass(frozen=True, slots=True)
class Progress:
    """What a task last reported (``spell.progress``), and its resource use.

    ``estimated_completion`` is epoch seconds, extrapolated from the rate of
    completed steps, or None when it cannot be estimated yet.
    """

    completed_steps: float | None
    total_steps: float | None
    current_operation: str | None
    estimated_completion: float | None
    resource_usage: ResourceUsage

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Progress:
        return cls(
            completed_steps=d.get("completed_steps"),
            total_steps=d.get("total_steps"),
            current_operation=d.get("current_operation"),
            estimated_completion=d.get("estimated_completion"),
            resource_usage=ResourceUsage.from_dict(d.get("resource_usage")),
        )


@dataclass(frozen=True, slots=True)
class TaskInfo:
    """One task as ``Runtime.tasks()`` lists it.

    ``attempts`` counts the runs that started (0 while it waits; 2 after one
    retry); ``created`` and ``ended`` are epoch seconds (``ended`` None while
    it is unfinished).
    """

    id: str
    kind: str
    status: str
    attempts: int
    created: float
    ended: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "status": self.status,
            "attempts": self.attempts,
            "created": self.created,
            "ended": self.ended,
        }


@dataclass(frozen=True, slots=True)
class Event:
    """A published event, as a subscriber sees it."""

    name: str
    payload: Any
    time: float


class Strategy(enum.StrEnum):
    """How ``Runtime.coordinate`` runs a set of tasks (see API.md)."""

    SEQUENTIAL = "sequential"
    PARALLEL = "parallel"
    PIPELINE = "pipeline"
    RACE = "race"
    ALL_OR_NOTHING = "all_or_nothing"
    BEST_EFFORT = "best_effort"

    @classmethod
    def parse(cls, value: Strategy | str) -> Strategy:
        if isinstance(value, Strategy):
            return value
        return cls(strategy_name(value))


@dataclass(frozen=True, slots=True)
class CoordinationResult:
    strategy: Strategy
    ok: bool
    results: list[Any]
    succeeded: list[int]
    failed: list[tuple[int, str]]
    cancelled: list[int]
    winner: int | None
    duration: float
    resource_usage: ResourceUsage
    timed_out: bool = False
    #: a workflow's step id for each slot (empty for a plain ``coordinate``)
    step_ids: list[str] = field(default_factory=list)

    @property
    def steps(self) -> dict[str, Any]:
        """A workflow's values by step id (None where a step has no value)."""
        return dict(zip(self.step_ids, self.results, strict=False))

    @property
    def failed_steps(self) -> dict[str, str]:
        """A workflow's failures by step id: ``{step: message}``."""
        return {self.step_ids[i]: m for i, m in self.failed if i < len(self.step_ids)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CoordinationResult:
        return cls(
            strategy=Strategy.parse(d["strategy"]),
            ok=bool(d["ok"]),
            results=list(d.get("results", [])),
            succeeded=[int(i) for i in d.get("succeeded", [])],
            failed=[(int(i), str(m)) for i, m in d.get("failed", [])],
            cancelled=[int(i) for i in d.get("cancelled", [])],
            winner=d.get("winner"),
            duration=float(d.get("duration", 0.0)),
            resource_usage=ResourceUsage.from_dict(d.get("resource_usage")),
            timed_out=bool(d.get("timed_out", False)),
            step_ids=[str(s) for s in d.get("step_ids") or ()],
        )

    def to_dict(self) -> dict[str, Any]:
        out = {
            "strategy": self.strategy.value,
            "ok": self.ok,
            "results": self.results,
            "succeeded": self.succeeded,
            "failed": [[i, m] for i, m in self.failed],
            "cancelled": self.cancelled,
            "winner": self.winner,
            "duration": self.duration,
            "resource_usage": self.resource_usage.to_dict(),
            "timed_out": self.timed_out,
        }
        if self.step_ids:  # a workflow: the same, by step id
            out["step_ids"] = self.step_ids
            out["steps"] = self.steps
            out["failed_steps"] = self.failed_steps
        return out


def _callable_target(target: Any) -> str:
    if isinstance(target, str):
        if ":" not in target or target.startswith(":") or target.endswith(":"):
            raise MessageError(f"must be 'package.module:function', got {target!r}", where="target")
        return target
    if callable(target):
        module = getattr(target, "__module__", None)
        qualname = getattr(target, "__qualname__", "")
        if not module or not qualname or "<" in qualname or module == "__main__":
            if module == "__main__" and "<" not in qualname:
                return f"__main__:{qualname}"
            raise MessageError(
                f"{target!r} is not a module-level function; pass 'module:function'",
                where="target",
            )
        return f"{module}:{qualname}"
    raise MessageError(f"expected 'module:function' or a function, got {target!r}", where="target")


@dataclass(frozen=True, slots=True)
class Task:
    """A unit of work to submit. Build one with a constructor
    (``Task.lua``, ``Task.python``, ...); it holds no runtime state and can be
    submitted to several runtimes (give it no ``id`` then)."""

    kind: str
    code: str | None = None
    target: str | None = None
    name: str | None = None
    args: Any = None
    payload: Any = None
    opts: Mapping[str, Any] = field(default_factory=dict)

    # -- constructors -------------------------------------------------------

    @classmethod
    def lua(cls, code: str, *, args: Mapping[str, Any] | None = None, **opts: Any) -> Task:
        """Lua code, the body of a function; ``spell.args`` holds ``args``. Never
        blocks (the code is compiled when it runs); raises ``MessageError`` for code
        that is not a str, bad ``args`` or a bad option."""
        return cls._make("lua", code=_code(code), args=args, opts=opts)

    @classmethod
    def js(cls, code: str, *, args: Mapping[str, Any] | None = None, **opts: Any) -> Task:
        """JavaScript code, the body of an async function; ``spell.args`` holds
        ``args``. Never blocks (the code is compiled when it runs); raises
        ``MessageError`` for code that is not a str, bad ``args`` or a bad option."""
        return cls._make("js", code=_code(code), args=args, opts=opts)

    @classmethod
    def python(
        cls,
        target: str | Callable[..., Any],
        *,
        args: Mapping[str, Any] | None = None,
        **opts: Any,
    ) -> Task:
        """``"package.module:function"`` (sync or ``async def``), called with
        ``**args``. A module-level function object is turned into that string.
        Never blocks (the target is imported when it runs); raises ``MessageError``
        for a target of another form, bad ``args`` or a bad option."""
        return cls._make("python", target=_callable_target(target), args=args, opts=opts)

    @classmethod
    def tool(cls, name: str, params: Mapping[str, Any] | None = None, **opts: Any) -> Task:
        """A call of the registered tool ``name`` with ``params`` (checked against its
        schema when it runs). Never blocks; raises ``MessageError`` for a bad name or option."""
        return cls._make("tool", name=_name(name), payload=params, opts=opts)

    @classmethod
    def agent(cls, name: str, input: Any, **opts: Any) -> Task:
        """A run of the registered agent ``name`` on ``input`` (``execution=``,
        ``buffer_size=`` too). Never blocks; raises ``MessageError`` for a bad name or option."""
        return cls._make("agent", name=_name(name), payload=input, opts=opts, extra=_AGENT_OPTIONS)

    @classmethod
    def hook(cls, point: str, payload: Any = None, **opts: Any) -> Task:
        """A task that runs the hooks registered at ``point`` (one of ``HOOK_POINTS``)
        with ``payload``. Never blocks; raises ``MessageError`` for an unknown point."""
        if point not in HOOK_POINTS:
            raise MessageError(
                f"unknown hook point {point!r}; use one of {', '.join(HOOK_POINTS)}",
                where="point",
            )
        return cls._make("hook", name=_name(point), payload=payload, opts=opts)

    @classmethod
    def event(cls, name: str, payload: Any = None, **opts: Any) -> Task:
        """A task that publishes the event ``name`` with ``payload``. Never blocks;
        raises ``MessageError`` for a bad name, payload or option."""
        return cls._make("event", name=_name(name), payload=payload, opts=opts)

    @classmethod
    def workflow(
        cls, path_or_dict: str | os.PathLike[str] | Mapping[str, Any], **opts: Any
    ) -> Task:
        """A workflow (a YAML file's path or its dict) as one task; it is read and
        checked when it runs. Never blocks; raises ``MessageError`` for an empty path."""
        if isinstance(path_or_dict, Mapping):
            return cls._make("workflow", payload=dict(path_or_dict), opts=opts)
        if not isinstance(path_or_dict, (str, os.PathLike)) or not str(path_or_dict):
            raise MessageError(
                f"a workflow is a file path or a dict, got {path_or_dict!r}", where="workflow"
            )
        return cls._make("workflow", name=os.fspath(path_or_dict), opts=opts)

    @classmethod
    def custom(cls, kind: str, payload: Any = None, **opts: Any) -> Task:
        """A task of a registered executor's ``kind``. Never blocks; raises
        ``MessageError`` for a bad kind, payload or option."""
        return cls._make("custom", name=_name(kind), payload=payload, opts=opts)

    @classmethod
    def _make(
        cls,
        kind: str,
        *,
        code: str | None = None,
        target: str | None = None,
        name: str | None = None,
        args: Any = None,
        payload: Any = None,
        opts: Mapping[str, Any],
        extra: frozenset[str] = frozenset(),
    ) -> Task:
        if opts:
            unknown = sorted(set(opts) - _OPTIONS - extra)
            if unknown:
                allowed = ", ".join(sorted(_OPTIONS | extra))
                raise MessageError(
                    f"unknown option {unknown[0]!r}"
                    f"{did_you_mean(unknown[0], _OPTIONS | extra)} (options: {allowed})"
                )
            if None in opts.values():  # None is the option's default
                opts = {k: v for k, v in opts.items() if v is not None}
            _check_opts(opts)
            lim = opts.get("limits")
            if kind in ("python", "agent") and lim is not None and lim.memory_bytes is not None:
                raise MessageError(
                    f"a {kind} task runs in the Python engine's process, whose memory is "
                    "shared by every task there, so this limit could not be enforced: use "
                    "cpu_seconds, run the work as a Lua or JS task, or bound the process "
                    "with Runtime(engine_memory=bytes) in mode='local'",
                    where="limits.memory_bytes",
                )
        if args is not None:
            if not isinstance(args, Mapping):
                raise MessageError(f"must be a dict, got {type(args).__name__}", where="args")
            args = dict(args)
            check_data(args, "args")
        if payload is not None:
            check_data(payload, "payload" if kind != "tool" else "params")
        if cls is not Task:  # a subclass: its own __init__
            return cls(kind, code, target, name, args, payload, dict(opts) if opts else _NO_OPTS)
        # the frozen dataclass __init__ (object.__setattr__ per field) was the costliest
        # step of building a trivial task: set the slots through their descriptors
        task: Task = _new(Task)
        _SET_KIND(task, kind)
        _SET_CODE(task, code)
        _SET_TARGET(task, target)
        _SET_NAME(task, name)
        _SET_ARGS(task, args)
        _SET_PAYLOAD(task, payload)
        _SET_OPTS(task, dict(opts) if opts else _NO_OPTS)
        return task

    # -- to the wire --------------------------------------------------------

    def to_spec(self, task_id: str | None = None, *, parent: str | None = None) -> TaskSpec:
        """This task as a wire ``TaskSpec`` (with a fresh id unless it has one).
        Never blocks; raises nothing (the task was checked when it was made)."""
        o = self.opts
        if not o:
            return TaskSpec(
                task_id or new_task_id(),
                self.kind,
                self.code,
                self.target,
                self.name,
                self.args,
                self.payload,
                parent=parent,
            )
        spec = TaskSpec(
            id=task_id or o.get("id") or new_task_id(),
            kind=self.kind,
            code=self.code,
            target=self.target,
            name=self.name,
            args=self.args,
            payload=self.payload,
            parent=parent,
        )
        if "priority" in o:
            spec.priority = PRIORITIES[o["priority"]]
        if o.get("timeout") is not None:
            spec.timeout = float(o["timeout"])
        if "deps" in o:
            spec.deps = [_dep_id(d) for d in o["deps"]]
        spec.retries = int(o.get("retries", 0))
        limits = o.get("limits")
        if isinstance(limits, Limits):
            spec.limits = limits.to_dict()
        if o.get("metadata"):
            spec.metadata = dict(o["metadata"])
        options = {k: o[k] for k in _AGENT_OPTIONS if k in o}
        if options:
            spec.options = options
        compensate = o.get("compensate")
        if isinstance(compensate, Task):
            spec.compensate = compensate.to_spec()
        if o.get("tags"):
            spec.tags = sorted(set(o["tags"]))
        return spec

    @property
    def priority(self) -> str:
        """The task's priority name (``"normal"`` unless given); never blocks."""
        return str(self.opts.get("priority", "normal"))

    def __repr__(self) -> str:
        what = self.code if self.code is not None else (self.target or self.name or "")
        if len(what) > 40:
            what = what[:37] + "..."
        return f"Task.{self.kind}({what!r})"


_new = object.__new__
(_SET_KIND, _SET_CODE, _SET_TARGET, _SET_NAME, _SET_ARGS, _SET_PAYLOAD, _SET_OPTS) = (
    Task.__dict__[f].__set__ for f in ("kind", "code", "target", "name", "args", "payload", "opts")
)


def _code(code: Any) -> str:
    if not isinstance(code, str):
        raise MessageError(f"must be a str, got {type(code).__name__}", where="code")
    bad = lone_surrogate(code)
    if bad is not None:
        raise MessageError(bad, where="code")
    return code


def _name(name: Any) -> str:
    if not isinstance(name, str) or not name:
        raise MessageError(f"must be a non-empty str, got {name!r}", where="name")
    return name


def _dep_id(dep: Any) -> str:
    if isinstance(dep, Handle):
        return dep.id
    if isinstance(dep, str) and dep:
        return dep
    raise MessageError(f"a dependency must be a Handle or a task id, got {dep!r}", where="deps")


def _check_opts(o: Mapping[str, Any]) -> None:
    if not o:
        return
    for name, problem in task_option_problems(o):
        raise MessageError(problem, where=name)
    deps = o.get("deps", ())
    if isinstance(deps, (str, Handle)) or not isinstance(deps, Iterable):
        raise MessageError("must be a list of handles or task ids", where="deps")
    for d in deps:
        _dep_id(d)
    lim = o.get("limits")
    if lim is not None and not isinstance(lim, Limits):
        raise MessageError(f"must be a Limits(...), got {type(lim).__name__}", where="limits")
    md = o.get("metadata")
    if md is not None:
        if not isinstance(md, Mapping):
            raise MessageError("must be a dict", where="metadata")
        check_data(dict(md), "metadata")
    tid = o.get("id")
    if tid is not None and (not isinstance(tid, str) or not tid):
        raise MessageError(f"must be a non-empty str, got {tid!r}", where="id")
    comp = o.get("compensate")
    if comp is not None and not isinstance(comp, Task):
        raise MessageError(f"must be a Task, got {type(comp).__name__}", where="compensate")
    tags = o.get("tags")
    if tags is not None and (
        isinstance(tags, (str, bytes))
        or not isinstance(tags, Iterable)
        or not all(isinstance(t, str) and t and "," not in t for t in tags)
    ):
        raise MessageError(
            "must be a list of non-empty tag names without commas (cluster members' "
            f"--tag), got {tags!r}",
            where="tags",
        )
    ex = o.get("execution")
    if ex is not None and ex not in _EXECUTIONS:
        raise MessageError(
            f"must be one of {', '.join(_EXECUTIONS)}, got {ex!r}{did_you_mean(ex, _EXECUTIONS)}",
            where="execution",
        )
    bs = o.get("buffer_size")
    if bs is not None and (isinstance(bs, bool) or not isinstance(bs, int) or bs < 1):
        raise MessageError("must be an int >= 1", where="buffer_size")
