"""``Runtime`` and ``AsyncRuntime``: the embedding facade over an actor system.

Both shells share one I/O-free core (``_Core``): it validates tasks, turns them
into wire specs, keeps one view per submitted task and matches replies to
requests. The actor system itself is owned by a driver (``_driver.py``); the
core hands it messages and gets every message addressed to the outside back
on the driver thread.

Lifecycle: ``Runtime()`` starts the actor system at once; ``close()`` cancels
what is unfinished, stops every actor and is idempotent; calls on a closed
runtime raise ``RuntimeClosed``; a closed runtime cannot be reopened.

Registrations (``register_tool``/``agent``/``hook``/``executor``) are sent to
the scheduler and answered before the call returns, so a task submitted after
them sees them, in every mode. Streams: the chunks of a streaming agent task
reach the facade that submitted it; ``stream()`` reads them and acknowledges
each one as it is taken (a slow reader holds the agent at ``buffer_size``
chunks in flight); chunks nobody reads are acknowledged on arrival and kept
for a later ``stream()`` call.
"""

from __future__ import annotations

import asyncio
import atexit
import dataclasses
import enum
import itertools
import os
import threading
import uuid
import weakref
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from ._actor import log
from ._clock import now
from ._context import current_task_id
from ._exceptions import (
    JournalError,
    LlmspellError,
    MessageError,
    RuntimeClosed,
    RuntimeDegraded,
    error_from_outcome,
)
from ._options import check_options, did_you_mean
from ._task import (
    CoordinationResult,
    Event,
    Handle,
    Progress,
    Strategy,
    Task,
    TaskInfo,
    new_task_id,
)
from .messages import Message, check_data, encode
from .messages.codec import encode_item, encode_with_items
from .messages.options import timeout_problem
from .messages.types import (
    STATUSES,
    TERMINAL,
    Ack,
    CancelReply,
    CancelTasks,
    Coordinate,
    CoordinationDone,
    EventDelivery,
    EventInterest,
    ProgressReply,
    Publish,
    PublishBatch,
    QueryProgress,
    QueryStats,
    QueryStatus,
    QueryTasks,
    Register,
    Registered,
    Replaced,
    SpanRecords,
    StatsReply,
    StatusReply,
    StreamAck,
    StreamChunks,
    SubmitRejected,
    SubmitTasks,
    Subscribe,
    SupervisorEvent,
    TaskError,
    TaskOutcome,
    TaskOutcomes,
    TaskSpec,
    TasksReply,
    TraceTo,
    Unsubscribe,
    WatchTasks,
)

__all__ = ["AsyncRuntime", "Runtime", "RuntimeState", "Subscription"]

_MODES = ("embedded", "local", "cluster")
_CONFIG = frozenset(
    (
        "python_threads",
        "python_capacity",
        "lua_capacity",
        "js_capacity",
        "engines",
        "workers",
        "address",
        "port",
        "lua_memory",
        "js_memory",
        "step_budget",
        "retry_backoff",
        "retry_backoff_cap",
        "supervision",
        "quantum",
        "quantum_steps",
        "python_inline",
        "seed",
        "engine_memory",
        "throttle_share",
        "resource_interval",
        "history",
        "script_python",
        "tracing",
        "metrics_port",
        "secret",
        "max_frame_bytes",
        "journal",
        "replay_check",  # Simulation.replay_journal: replays stop where their record does
        "host",
    )
)


class RuntimeState(enum.Enum):
    STARTING = "starting"
    OPEN = "open"
    CLOSED = "closed"


class _View:
    """A task someone waits for (``result``, ``stream``, an async result), or
    a finished task's outcome handed out by ``_Core.view``. The event and the
    callback list are made only when needed; ``_Core.lock`` guards them."""

    __slots__ = ("callbacks", "event", "handle", "outcome")

    def __init__(self, handle: Handle | None = None) -> None:
        self.outcome: TaskOutcome | None = None
        self.event: threading.Event | None = None
        self.callbacks: list[Callable[[TaskOutcome], None]] | None = None
        self.handle = handle  # submit's handle: it gets the outcome too


class _Core:
    """Validation, ids, task views and reply matching. No I/O of its own."""

    def __init__(self, mode: str, config: dict[str, Any]) -> None:
        if mode not in _MODES:
            raise MessageError(
                f"unknown mode {mode!r}{did_you_mean(mode, _MODES)}; use one of "
                f"{', '.join(_MODES)}",
                where="mode",
            )
        unknown = sorted(set(config) - _CONFIG)
        if unknown:
            raise MessageError(
                f"unknown runtime option {unknown[0]!r}{did_you_mean(unknown[0], _CONFIG)}"
            )
        if config.get("host") is not None and mode != "cluster":
            raise MessageError(
                "host= is the address a cluster leader binds to (mode='cluster'); "
                f"a {mode} runtime binds to 127.0.0.1",
                where="host",
            )
        if isinstance(config.get("journal"), os.PathLike):
            config = dict(config, journal=os.fspath(config["journal"]))
        check_options(config)
        if mode == "embedded":  # settings that only another mode reads: said, not ignored
            if config.get("address") is not None:
                raise MessageError(
                    "attaching to a served runtime needs mode='local': "
                    "Runtime(mode='local', address=...)",
                    where="address",
                )
            for key in ("secret", "max_frame_bytes"):
                if config.get(key) is not None:
                    raise MessageError(
                        f"{key}= protects the frames between the processes of "
                        "mode='local'; an embedded runtime has no such frames",
                        where=key,
                    )
            if config.get("workers") is not None:
                raise MessageError(
                    "workers= is the number of processes per engine in mode='local'; "
                    "an embedded runtime runs its engines in this process (for more Lua "
                    "or JS VMs here: engines={'lua': 2})",
                    where="workers",
                )
        if config.get("journal") is not None:
            if config.get("address") is not None:
                raise MessageError(
                    "a client attached to a served runtime uses the server's journal "
                    "(`llmspell serve --journal PATH`); it has none of its own",
                    where="journal",
                )
            from .journal import Journal

            # every bad journal is one JournalError here, before anything starts
            # (the scheduler opens it again, for good, without checking every
            # page a second time)
            Journal.open(config["journal"]).close()
            config = dict(config, journal_checked=True)
        workers = config.get("workers")
        history = config.get("history")
        self.mode = mode
        self.config = {k: v for k, v in config.items() if v is not None}  # None: the default
        # never in a message or a process's arguments: the local driver keeps it
        self.secret: str | bytes | None = self.config.pop("secret", None)
        if self.config.get("metrics_port") is not None:
            self.config["metrics"] = True  # the scheduler keeps its figures
        if mode in ("local", "cluster"):
            per_engine = int(workers or os.cpu_count() or 1)
            # An engine process has a core to itself, and every quantum boundary costs
            # a flush over TCP: longer quanta (cancels still land between them).
            self.config.setdefault("quantum", 0.1)
        else:
            per_engine = 1
        self.config.setdefault("engines", _default_engines(per_engine))
        self.runtime_id = uuid.uuid4().hex
        self.state = RuntimeState.STARTING
        # task id -> submit's Handle or None (running, nobody waits), a _View
        # (someone waits) or, once it ended, its outcome as a plain tuple (status,
        # value, error, usage) that submit's Handle holds too: no object of the
        # runtime's own per running task, and once ended one the garbage collector
        # stops tracking. Ended entries are forgotten oldest first beyond
        # ``keep_ended`` (as many as the scheduler keeps tombstones for); a
        # Handle keeps its own outcome, so result(handle) still answers then.
        self.views: dict[str, _View | _Ended | Handle | None] = {}
        self.ended: deque[str] = deque()
        self.keep_ended = max(100 * int(history if history is not None else 1000), 100)
        self.lock = threading.Lock()
        self.refs = itertools.count(1)
        self.replies: dict[int, Callable[[Message], None]] = {}
        self.addresses: dict[str, Any] = {}
        self.subscriptions: dict[str, Subscription] = {}
        self.coordinations: dict[str, _Waiter] = {}
        self.streams: dict[str, _Stream] = {}
        self.ack: Callable[[str, int], None] | None = None  # set by the runtime
        # a runtime process was restarted (local mode; set by the runtime)
        self.replaced: Callable[[Replaced], None] | None = None
        self.owner: Any = None  # the Runtime its handles are bound to (set by the runtime)
        self.spans: Any = None  # a _tracing.Spans when this runtime traces its tasks
        # why the runtime is degraded (a supervisor gave up), or "": every later call raises
        self.degraded = ""

    # -- building requests --------------------------------------------------

    def specs(self, tasks: Iterable[Task]) -> list[TaskSpec]:
        self.check_open()
        _check_task_list(tasks)
        parent = current_task_id()  # submitted by a Python task: its child
        specs = []
        for i, task in enumerate(tasks):
            if type(task) is not Task and not isinstance(task, Task):
                raise MessageError(
                    f"expected a Task, got {type(task).__name__}", where=f"tasks[{i}]"
                )
            specs.append(task.to_spec(parent=parent))
        self.trace(specs)
        return self.register_specs(specs)

    def trace(self, specs: list[TaskSpec]) -> None:
        """Give ``specs`` (and their compensations) the caller's current span as
        their parent span, when this runtime traces."""
        if self.spans is None:
            return
        tp = self.spans.traceparent()
        if tp is None:
            return
        for spec in specs:
            if spec.trace is None:
                spec.trace = tp
            if spec.compensate is not None and spec.compensate.trace is None:
                spec.compensate.trace = tp

    def register_specs(self, specs: list[TaskSpec]) -> list[TaskSpec]:
        """Claim the ids of specs (all or none); a duplicate raises."""
        self.register_ids([spec.id for spec in specs])
        return specs

    def register_ids(self, ids: list[str], handles: list[Handle] | None = None) -> None:
        """Claim task ids (all or none); a duplicate raises. ``handles`` (one
        per id) are the ones submit returns: they get their outcomes."""
        fresh: dict[str, Handle | None] = (
            dict.fromkeys(ids) if handles is None else dict(zip(ids, handles, strict=True))
        )
        with self.lock:
            views = self.views
            if len(fresh) != len(ids) or not views.keys().isdisjoint(fresh):
                seen: set[str] = set()
                for task_id in ids:
                    if task_id in views or task_id in seen:
                        raise MessageError(f"duplicate task id {task_id!r}", where="id")
                    seen.add(task_id)
            views.update(fresh)

    def submit_message(self, specs: list[TaskSpec]) -> bytes:
        return encode(SubmitTasks(specs, notify=True))

    def submit_payload(self, tasks: Iterable[Task]) -> tuple[list[Handle], list[bytes]]:
        """Validate ``tasks``, claim their ids and encode their ``SubmitTasks``,
        one task at a time: no spec of a big batch outlives its own encoding
        (the garbage collector never has to walk thousands of them).

        Everything is checked and encoded before anything is sent (all or
        none). A big batch without dependencies goes as several messages of
        ``_SUBMIT_CHUNK`` tasks, so the first ones run while the scheduler takes
        in the rest and less of the batch is in memory at once; a batch with
        dependencies goes whole (a task may name one listed after it)."""
        self.check_open()
        _check_task_list(tasks)
        parent = current_task_id()  # submitted by a Python task: its child
        ids: list[str] = []
        parts: list[bytes] = []
        linked = False
        tp = self.spans.traceparent() if self.spans is not None else None
        for i, task in enumerate(tasks):
            if type(task) is not Task and not isinstance(task, Task):
                raise MessageError(
                    f"expected a Task, got {type(task).__name__}", where=f"tasks[{i}]"
                )
            spec = task.to_spec()
            if parent is not None and spec.parent is None:
                spec.parent = parent
            if tp is not None:
                spec.trace = tp
            ids.append(spec.id)
            linked = linked or spec.deps is not None
            parts.append(encode_item(spec))
        owner = self.owner
        handles = [_handle(task_id, owner) for task_id in ids]
        self.register_ids(ids, handles)
        # (local mode: one message, as TCP between two actors may reorder several)
        k = len(parts) if linked or self.mode != "embedded" else _SUBMIT_CHUNK
        if len(parts) <= k:
            return handles, [encode_with_items(SubmitTasks, parts)]
        return handles, [
            encode_with_items(SubmitTasks, parts[i : i + k]) for i in range(0, len(parts), k)
        ]

    def request(
        self, build: Callable[[int], Message], on_reply: Callable[[Message], None]
    ) -> bytes:
        ref = next(self.refs)
        with self.lock:
            self.replies[ref] = on_reply
        return encode(build(ref))

    def check_open(self) -> None:
        if self.state is not RuntimeState.OPEN:
            raise RuntimeClosed("this runtime is closed; create a new Runtime")
        if self.degraded:
            raise RuntimeDegraded(self.degraded)

    def check_degraded(self) -> None:
        if self.degraded and self.state is RuntimeState.OPEN:
            raise RuntimeDegraded(self.degraded)

    def degrade(self, reason: str) -> None:
        """A supervisor gave up: from now on every call raises
        ``RuntimeDegraded``; whoever waits is woken to get it."""
        if self.degraded:
            return
        self.degraded = reason
        log.error("the runtime is degraded: %s", reason)
        with self.lock:
            waiting = [task_id for task_id, entry in self.views.items() if type(entry) is not tuple]
            coordinations = list(self.coordinations.values())
            self.coordinations.clear()
        error = TaskError(f"the runtime is degraded: {reason}", kind="degraded").wire()
        self.resolve_many([TaskOutcome(task_id, "failed", error=error) for task_id in waiting])
        for waiter in coordinations:
            waiter(None)

    def view(self, handle: Handle | str) -> tuple[str, _View]:
        if self.degraded:
            self.check_degraded()
        if isinstance(handle, Handle):
            task_id = handle.id
            if handle._ended is not None:
                entry: Any = handle._ended
            else:
                entry = self.views.get(task_id, _UNKNOWN)
        else:
            task_id = handle
            if not isinstance(task_id, str):
                raise MessageError(f"expected a Handle or task id, got {handle!r}", where="handle")
            entry = self.views.get(task_id, _UNKNOWN)
        if type(entry) is _View:
            return task_id, entry
        if entry is _UNKNOWN:
            raise MessageError(
                f"unknown task {task_id!r}: it was not submitted to this runtime, or it "
                f"ended before the last {self.keep_ended} tasks that ended (the runtime "
                "forgets older ones by id; the Handle submit returned keeps its outcome)",
                where="handle",
            )
        if entry is None or type(entry) is Handle:
            with self.lock:  # someone waits for it now: it gets a view of its own
                entry = self.views[task_id]
                if entry is None or type(entry) is Handle:
                    v = self.views[task_id] = _View(entry)
                    return task_id, v
                if type(entry) is _View:
                    return task_id, entry
        done = _View()  # it ended: a view for this caller alone
        done.outcome = _outcome(task_id, entry)
        return task_id, done

    def outcome(self, task_id: str) -> TaskOutcome | None:
        entry = self.views.get(task_id)
        if type(entry) is tuple:
            return _outcome(task_id, entry)
        return entry.outcome if type(entry) is _View else None

    # -- messages from the actor system (driver thread) ----------------------

    def on_message(self, msg: Any) -> None:
        if type(msg) is TaskOutcomes:
            self.resolve_many(msg.items)
        elif isinstance(msg, SubmitRejected):
            self.resolve(TaskOutcome(msg.task_id, "rejected", error=TaskError(msg.message).wire()))
        elif isinstance(msg, CoordinationDone):
            with self.lock:
                w = self.coordinations.pop(msg.coord_id, None)
            if w is not None:
                w(msg)
        elif type(msg) is SpanRecords:
            if self.spans is not None:
                self.spans.on_records(msg)
        elif isinstance(msg, EventDelivery):
            subscription = self.subscriptions.get(msg.sub_id)
            if subscription is not None:
                subscription._deliver(msg.events)
        elif isinstance(
            msg, (StatusReply, ProgressReply, StatsReply, CancelReply, Registered, Ack, TasksReply)
        ):
            with self.lock:
                cb = self.replies.pop(msg.ref, None)
            if cb is not None:
                cb(msg)
        elif isinstance(msg, StreamChunks):
            self.on_chunks(msg)
        elif isinstance(msg, SupervisorEvent) and msg.what == "escalate":
            self.degrade(f"supervisor {msg.supervisor!r} gave up: {msg.detail}")
        elif type(msg) is Replaced and self.replaced is not None:
            self.replaced(msg)

    def on_served_message(self, msg: Any) -> None:
        """``on_message`` of a client attached to a served runtime: a task the
        served runtime cancelled as it shut down ends with ``RuntimeClosed``."""
        if type(msg) is TaskOutcomes and any((o.error or {}).get("shutdown") for o in msg.items):
            msg = TaskOutcomes([_closed_by_shutdown(o) for o in msg.items])
        self.on_message(msg)

    def on_chunks(self, msg: StreamChunks) -> None:
        with self.lock:
            s = self.streams.get(msg.task_id)
            if s is None:
                s = self.streams[msg.task_id] = _Stream()
        with s.cond:
            if msg.attempt < s.attempt:
                return  # from a run that died: its re-run sends these chunks again
            restarted = msg.attempt > s.attempt
            if restarted:  # a re-run numbers its chunks from 0 again
                s.attempt, s.pos = msg.attempt, 0
                s.early.clear()
            # batches can overtake each other (local mode): put them in seq order
            if msg.seq > s.pos:
                s.early[msg.seq] = msg.chunks
            elif msg.seq == s.pos:
                s.add(msg.chunks)
                while s.pos in s.early:
                    s.add(s.early.pop(s.pos))
            attached, pos, taken = s.attached, s.pos, s.taken
            s.cond.notify_all()
        if self.ack is None:
            return
        if not attached:  # nobody reads now: do not hold the agent
            self.ack(msg.task_id, pos)
        elif restarted:  # the re-run may run buffer_size past what the reader took
            self.ack(msg.task_id, taken)

    def resolve_many(self, outcomes: list[TaskOutcome]) -> None:
        """Settle a batch of outcomes under one lock; wake waiters after."""
        views, ended = self.views, self.ended
        woken: list[tuple[TaskOutcome, threading.Event | None, list[Any] | None]] = []
        with self.lock:
            for o in outcomes:
                task_id = o.task_id
                v = views.get(task_id, _UNKNOWN)
                if v is None:
                    views[task_id] = (o.status, o.value, o.error, o.usage)
                elif type(v) is Handle:
                    _SET_ENDED(v, (o.status, o.value, o.error, o.usage))
                    views[task_id] = v._ended
                elif type(v) is _View and v.outcome is None:
                    v.outcome = o
                    views[task_id] = t = (o.status, o.value, o.error, o.usage)
                    if v.handle is not None:
                        _SET_ENDED(v.handle, t)
                    if v.event is not None or v.callbacks is not None:
                        woken.append((o, v.event, v.callbacks))
                        v.callbacks = None
                else:
                    continue
                ended.append(task_id)
            if len(ended) > self.keep_ended:
                # forget the oldest ended tasks (in batches: not one per outcome)
                drop = len(ended) - self.keep_ended + self.keep_ended // 10
                popleft, pop = ended.popleft, views.pop
                for _ in range(min(drop, len(ended))):
                    pop(popleft(), None)
        for o, event, callbacks in woken:
            if event is not None:
                event.set()
            for cb in callbacks or ():
                try:
                    cb(o)
                except Exception:  # one failing waiter must not keep the others waiting
                    log.exception("a callback waiting for task %s failed", o.task_id)
        if self.streams:
            for o in outcomes:
                s = self.streams.get(o.task_id)
                if s is not None:
                    with s.cond:
                        s.cond.notify_all()

    def resolve(self, o: TaskOutcome) -> None:
        self.resolve_many([o])

    def off_done(self, v: _View, cb: Callable[[TaskOutcome], None]) -> None:
        with self.lock:
            if v.callbacks is not None and cb in v.callbacks:
                v.callbacks.remove(cb)

    def on_done(self, v: _View, cb: Callable[[TaskOutcome], None]) -> None:
        with self.lock:
            if v.outcome is None:
                if v.callbacks is None:
                    v.callbacks = []
                v.callbacks.append(cb)
                return
        cb(v.outcome)

    def wait(self, v: _View, timeout: float | None) -> bool:
        if v.outcome is not None:
            return True
        with self.lock:
            if v.outcome is not None:
                return True
            if v.event is None:
                v.event = threading.Event()
            event = v.event
        return event.wait(timeout)

    @staticmethod
    def value_of(task_id: str, o: TaskOutcome) -> Any:
        if o.status == "succeeded":
            return o.value
        if o.status == "rejected":
            raise MessageError(str((o.error or {}).get("message")), where="id")
        if (o.error or {}).get("kind") == _CLOSED_KIND:  # the served runtime went away
            raise RuntimeClosed(str((o.error or {}).get("message")))
        raise error_from_outcome(task_id, o.status, o.error)


_UNKNOWN: Any = object()
_CLOSED_KIND = "runtime_closed"  # an outcome's error kind: its runtime went away


def _closed_by_shutdown(o: TaskOutcome) -> TaskOutcome:
    """A task the served runtime cancelled as it shut down: it ends with
    ``RuntimeClosed`` for an attached client."""
    if not (o.error or {}).get("shutdown"):
        return o
    why = (o.error or {}).get("message")
    message = f"the served runtime stopped ({why}); create a new Runtime"
    return dataclasses.replace(o, error=dict(o.error or {}, kind=_CLOSED_KIND, message=message))


_new = object.__new__
_SET_ID, _SET_ENDED, _SET_OWNER = (Handle.__dict__[f].__set__ for f in ("id", "_ended", "_owner"))


def _check_task_list(tasks: Any) -> None:
    if isinstance(tasks, (Task, str, bytes, Mapping)) or not isinstance(tasks, Iterable):
        raise MessageError(f"expected a list of Tasks, got {type(tasks).__name__}", where="tasks")


def _wait_time(timeout: Any) -> float | None:
    """A caller's ``timeout`` for waiting: None (or one too long for the platform's
    waits, infinity included) waits for ever; a negative one is zero (look and go
    back, like ``threading.Event.wait``); anything but a number is a MessageError."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout != timeout:
        raise MessageError(f"must be a number of seconds or None, got {timeout!r}", where="timeout")
    if timeout >= threading.TIMEOUT_MAX:
        return None
    return max(0.0, float(timeout))


def _handle(task_id: str, owner: Any = None) -> Handle:
    """``Handle(task_id)`` without the frozen dataclass's ``__init__`` (a third of
    the cost; one per submitted task), bound to ``owner``."""
    h = _new(Handle)
    _SET_ID(h, task_id)
    _SET_ENDED(h, None)
    _SET_OWNER(h, owner)
    return h


_RETURN_WHEN = ("all", "first")


def _handle_list(handles: Any) -> list[Handle | str]:
    """The handles of a ``wait``/``as_completed`` call, each task once (first
    mention kept)."""
    if isinstance(handles, (Handle, str, bytes, Mapping)) or not isinstance(handles, Iterable):
        raise MessageError(
            f"expected a list of Handles or task ids, got {type(handles).__name__}",
            where="handles",
        )
    seen: set[str] = set()
    out: list[Handle | str] = []
    for i, h in enumerate(handles):
        if not isinstance(h, (Handle, str)):
            raise MessageError(
                f"expected a Handle or task id, got {type(h).__name__}", where=f"handles[{i}]"
            )
        key = h.id if isinstance(h, Handle) else h
        if key not in seen:
            seen.add(key)
            out.append(h)
    return out


def _check_return_when(return_when: Any) -> None:
    if return_when not in _RETURN_WHEN:
        raise MessageError(f"must be 'all' or 'first', got {return_when!r}", where="return_when")


_SUBMIT_CHUNK = 512  # tasks per SubmitTasks message of a batch without dependencies
_Ended = tuple[str, Any, "dict[str, Any] | None", "dict[str, Any] | None"]


def _outcome(task_id: str, ended: _Ended) -> TaskOutcome:
    status, value, error, usage = ended
    return TaskOutcome(task_id, status, value, error, usage)


def _default_engines(per_engine: int) -> dict[str, int]:
    from ._imports import import_target
    from .actors.director import ENGINE_CLASSES

    engines = {}
    for name in ("python", "lua", "js"):
        try:
            import_target(ENGINE_CLASSES[name])
        except (ImportError, AttributeError):
            continue
        engines[name] = per_engine
    return engines


class _Stream:
    """The chunks of one streaming agent task that reached this facade.

    A re-run of the task (its engine died; it had retries left) sends its
    chunks again from 0: those before ``received`` were delivered already
    and are skipped (an agent that streams the same chunks for the same
    input is assumed), the rest are delivered as usual."""

    __slots__ = ("attached", "attempt", "chunks", "cond", "early", "pos", "received", "taken")

    def __init__(self, attached: bool = False) -> None:
        self.chunks: deque[Any] = deque()
        self.cond = threading.Condition()
        self.attached = attached  # a stream() reader acknowledges as it takes
        self.received = 0  # chunks that arrived in order (over all runs)
        self.taken = 0  # chunks a reader took
        self.attempt = 0  # the latest run of the task chunks came from
        self.pos = 0  # chunks of that run that arrived in order
        self.early: dict[int, list[Any]] = {}  # batches that arrived before their turn

    def add(self, chunks: list[Any]) -> None:
        """Chunks ``pos``... of the latest run, in order (under ``cond``)."""
        skip = min(len(chunks), max(0, self.received - self.pos))
        if skip < len(chunks):
            self.chunks.extend(chunks[skip:] if skip else chunks)
        self.pos += len(chunks)
        self.received = max(self.received, self.pos)


class Subscription:
    """Events whose names match a glob pattern, from ``Runtime.subscribe``.

    Iterating yields events until the subscription is closed. The queue holds
    at most ``limit`` events; when it is full the *oldest* event is dropped and
    counted in ``dropped`` (and in ``Runtime.stats()["events"]["dropped"]``),
    so a slow reader never holds up the runtime.
    """

    def __init__(self, runtime: Runtime, sub_id: str, pattern: str, limit: int) -> None:
        import collections

        self._runtime = runtime
        self.sub_id = sub_id
        self.pattern = pattern
        self.limit = limit
        self._queue: collections.deque[Event] = collections.deque()
        self._cond = threading.Condition()
        self.dropped = 0
        self.closed = False
        self._on_event: Callable[[str, Any, float], None] | None = None

    def _deliver(self, events: list[dict[str, Any]]) -> None:
        if self._on_event is not None:  # e.g. a simulation's trace
            for e in events:
                self._on_event(str(e.get("name")), e.get("payload"), float(e.get("time") or 0.0))
            return
        with self._cond:
            for e in events:
                if len(self._queue) >= self.limit:
                    self._queue.popleft()
                    self.dropped += 1
                    self._runtime._dropped_events += 1
                self._queue.append(
                    Event(str(e.get("name")), e.get("payload"), float(e.get("time") or 0.0))
                )
            self._cond.notify_all()

    def get(self, timeout: float | None = None) -> Event:
        """The next event. Raises the builtin ``TimeoutError`` when none came
        within ``timeout`` seconds, ``RuntimeClosed`` once closed and empty."""
        wait = _wait_time(timeout)
        with self._cond:
            pump = self._runtime._pump
            if pump is not None:  # a simulation: run the world until an event comes
                self._cond.release()
                try:
                    pump(lambda: bool(self._queue) or self.closed, wait)
                finally:
                    self._cond.acquire()
            if not self._cond.wait_for(
                lambda: self._queue or self.closed, 0 if pump is not None else wait
            ):
                raise TimeoutError(f"no event matching {self.pattern!r} within {timeout} s")
            if self._queue:
                return self._queue.popleft()
            raise RuntimeClosed("the subscription is closed")

    def __iter__(self) -> Iterator[Event]:
        while True:
            try:
                yield self.get()
            except RuntimeClosed:
                return

    def close(self) -> None:
        """Stop receiving events (idempotent); iteration ends once the queue is empty."""
        with self._cond:
            if self.closed:
                return
            self.closed = True
            self._cond.notify_all()
        self._runtime._unsubscribe(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_open_runtimes: weakref.WeakSet[Runtime] = weakref.WeakSet()


@atexit.register
def _close_open_runtimes() -> None:
    """Interpreter exit closes every runtime still open (no process left behind)."""
    for rt in list(_open_runtimes):
        try:
            rt.close()
        except Exception:  # pragma: no cover - best effort at exit
            pass


class _Waiter:
    """A one-shot reply slot for a blocking request."""

    __slots__ = ("event", "lost", "msg", "what")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.msg: Any = None
        self.lost = ""  # why no answer comes: the process asked died (local mode)
        self.what: tuple[str, int] = ("", 0)  # a coordination's strategy and size

    def __call__(self, msg: Any) -> None:
        self.msg = msg
        self.event.set()


class _Report:
    """An ``on_done`` callback that puts its index on a queue (``as_completed``)."""

    __slots__ = ("index", "queue")

    def __init__(self, queue: Any, index: int) -> None:
        self.queue = queue
        self.index = index

    def __call__(self, _o: TaskOutcome) -> None:
        self.queue.put(self.index)


class Runtime:
    """A running llmspell actor system, for threaded or plain code.

    ``Runtime(mode="embedded")`` starts the actors in this process on a driver
    thread of their own. Every method is thread-safe. Use it as a context
    manager, or call ``close()``.
    """

    def __init__(self, mode: str = "embedded", **config: Any) -> None:
        self._core = _Core(mode, config)
        # Set by a simulation: run the world until a condition holds (virtual time).
        self._pump: Callable[[Callable[[], bool], float | None], bool] | None = None
        self._metrics: Any = None
        self._dropped_events = 0
        port = self._core.config.get("metrics_port")
        if port is not None:  # first: a taken port fails before any process starts
            from ._metrics import MetricsServer

            self._metrics = MetricsServer(int(port), self._metric_figures)
        self._stopped = False  # close() ran
        self._gone = ""  # why the served runtime went away (an attached client)
        self._driver: Any = self._make_driver()
        # an embedded driver lets a waiting caller run the actors itself
        self._driver_drive: Callable[..., bool] | None = getattr(self._driver, "drive", None)
        try:
            addresses = self._driver.start()
        except BaseException:
            if self._metrics is not None:
                self._metrics.close()
            raise
        _open_runtimes.add(self)
        self._core.addresses = addresses
        self._scheduler = addresses["scheduler"]
        self._events = addresses["events"]
        self._emits: list[Publish] = []
        self._emit_lock = threading.Lock()
        self._core.ack = self._ack
        self._core.replaced = self._replaced
        self._core.owner = self
        self._core.state = RuntimeState.OPEN
        if self._gone:  # the served runtime stopped while this one attached
            self._lost(self._gone)
            self.close()
            raise RuntimeClosed(self._gone)
        if self._core.config.get("journal") is not None:
            self._journal_opened()
        self._start_tracing()

    def _journal_opened(self) -> None:
        """The scheduler opened the journal for good: raise its ``JournalError``
        if it could not (another runtime took the file after the check in
        ``_Core``), rather than hand back a runtime degraded from the start."""
        reply: StatsReply = self._ask(lambda ref: QueryStats(ref))
        degraded = str(reply.stats.get("degraded") or "")
        path = str(self._core.config["journal"])
        if path.startswith("memory:"):
            where = path
        else:
            where = os.path.abspath(path)
        prefix = f"the journal cannot be used: journal {where}: "
        if degraded.startswith(prefix):
            self.close()
            raise JournalError(degraded[len(prefix) :], path=where)

    def _start_tracing(self) -> None:
        """Trace this runtime's tasks when the application configured a tracer
        provider (looked at once, here) and ``tracing`` is not False."""
        from ._tracing import Spans, tracer_for

        tracer = tracer_for(bool(self._core.config.get("tracing", True)))
        if tracer is None:
            return
        self._core.spans = Spans(tracer)
        try:
            self._ask(lambda ref: TraceTo(ref, True))
        except BaseException:
            self.close()
            raise

    def _sync(self) -> Runtime:
        """The runtime a handle's blocking calls go to."""
        return self

    def _drive(self, done: Callable[[], bool], wait: float | None) -> float | None:
        """Run the actors on this thread until ``done()`` or ``wait`` seconds
        (None: for ever), where this runtime lets a waiting caller do that (a
        simulation moves its virtual time; an embedded runtime whose loop no
        other thread runs now). Returns how long to wait still for ``done``
        (0 when this thread ran them until it held or the time was up)."""
        if self._pump is not None:
            self._pump(done, wait)
            return 0
        drive = self._driver_drive
        if drive is not None and drive(done, wait):
            return 0
        return wait

    def _make_driver(self) -> Any:
        from ._driver import EmbeddedDriver, LocalDriver

        core = self._core
        if core.mode == "embedded":
            return EmbeddedDriver(core.runtime_id, core.config, core.on_message)
        driver: type[LocalDriver] = LocalDriver
        if core.mode == "cluster":
            from ._cluster import ClusterDriver

            driver = ClusterDriver
        attach = core.config.get("address")
        return driver(
            core.runtime_id,
            core.config,
            core.on_served_message if attach else core.on_message,
            attach=attach,
            secret=core.secret,
            on_lost=self._lost,
        )

    # -- lifecycle ----------------------------------------------------------

    @property
    def state(self) -> RuntimeState:
        """The runtime's lifecycle state (``RuntimeState``); reads memory, never blocks."""
        return self._core.state

    @property
    def mode(self) -> str:
        """``"embedded"``, ``"local"`` or ``"cluster"``; never blocks."""
        return self._core.mode

    def close(self) -> None:
        """Cancel every unfinished task and stop the actor system. Idempotent;
        blocks until the actors are stopped (up to 10 s)."""
        if self._stopped:
            return
        self._stopped = True
        spans = self._core.spans
        if spans is not None and getattr(self._driver, "mode", "") == "local":
            try:  # an attached runtime's scheduler lives on: stop sending us records
                self._driver.send(self._scheduler, encode(TraceTo(0, False)))
            except Exception:
                pass
        self._core.state = RuntimeState.CLOSED
        _open_runtimes.discard(self)
        if self._metrics is not None:
            self._metrics.close()
        self._driver.stop()
        if spans is not None:
            spans.end_all()
        for subscription in list(self._core.subscriptions.values()):
            subscription.close()
        for waiter in list(self._core.coordinations.values()):
            waiter(None)
        self._core.coordinations.clear()
        closed = TaskError("the runtime was closed").wire()
        self._core.resolve_many(
            [
                TaskOutcome(task_id, "cancelled", error=closed)
                for task_id, entry in list(self._core.views.items())
                if type(entry) is not tuple
            ]
        )

    def _lost(self, why: str) -> None:
        """An attached client's served runtime went away (driver thread): every
        call from now on, and every one blocked now, raises ``RuntimeClosed``."""
        core = self._core
        if core.state is RuntimeState.STARTING:
            self._gone = why  # __init__ finishes, then ends it
            return
        if core.state is not RuntimeState.OPEN:
            return
        core.state = RuntimeState.CLOSED
        for subscription in list(core.subscriptions.values()):
            subscription.close()
        with core.lock:
            waiters: list[Callable[[Any], None]] = [
                *core.coordinations.values(),
                *core.replies.values(),
            ]
            core.coordinations.clear()
            core.replies.clear()
        for waiter in waiters:
            waiter(None)
        gone = TaskError(f"{why}; create a new Runtime", kind=_CLOSED_KIND).wire()
        core.resolve_many(
            [
                TaskOutcome(task_id, "cancelled", error=gone)
                for task_id, entry in list(core.views.items())
                if type(entry) is not tuple
            ]
        )

    def _replaced(self, msg: Replaced) -> None:
        """local mode: a runtime process died and the director restarted it
        (driver thread). Calls go to the new one from now on; what this
        facade waits on is asked again (a new scheduler resumed it from the
        journal) or ends saying which process crashed."""
        core = self._core
        core.addresses[msg.role] = msg.address
        why = msg.crashed
        log.warning("%s; it was restarted", why)
        if msg.role in ("scheduler", "events", "resources"):
            with core.lock:  # a question to it, or its answer, is lost with it
                replies = list(core.replies.values())
                core.replies.clear()
            for reply in replies:
                if isinstance(reply, _Waiter):  # (the only kind there is)
                    reply.lost = why
                    reply(None)
        if msg.role == "scheduler":
            self._scheduler = msg.address
            with core.lock:
                waiting = [task_id for task_id, e in core.views.items() if type(e) is not tuple]
            if msg.journaled:
                if waiting:
                    self._driver.send(msg.address, encode(WatchTasks(waiting)))
            else:
                error = {"message": f"{why}; the task was lost with it", "kind": "failed"}
                core.resolve_many([TaskOutcome(t, "failed", error=dict(error)) for t in waiting])
            if core.spans is not None:
                self._driver.send(msg.address, encode(TraceTo(0, True)))
        elif msg.role == "events":
            self._events = msg.address
            for sub in list(core.subscriptions.values()):
                self._driver.send(
                    msg.address, encode(Subscribe(sub.sub_id, sub.pattern, sub.limit))
                )
        elif msg.role == "coordinator":
            from .actors.aggregators import empty_result

            with core.lock:
                coordinations = dict(core.coordinations)
                core.coordinations.clear()
            message = f"{why} while the coordination ran"
            for coord_id, waiter in coordinations.items():
                strategy, n = waiter.what
                waiter(CoordinationDone(coord_id, empty_result(strategy, n, message)))

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Runtime mode={self.mode!r} state={self.state.value!r}>"

    # -- tasks --------------------------------------------------------------

    def submit(self, task: Task) -> Handle:
        """Queue ``task``; returns its handle at once.

        Raises:
            MessageError: the task is malformed or its id is already used;
                nothing was queued.
            RuntimeClosed: the runtime is closed.
        """
        return self.submit_many([task])[0]

    def submit_many(self, tasks: Iterable[Task]) -> list[Handle]:
        """Queue several tasks; all or none are queued (every task is checked
        before any is sent). Never blocks on the tasks themselves: embedded, a
        big batch without dependencies goes to the scheduler in several
        messages (the first tasks run while it takes in the rest); otherwise in
        one. Raises
        ``MessageError`` for the first bad task (nothing queued) and
        ``RuntimeClosed`` on a closed runtime."""
        handles, payloads = self._core.submit_payload(tasks)
        for payload in payloads:
            self._driver.send(self._scheduler, payload)
        return handles

    def result(self, handle: Handle | str, timeout: float | None = None) -> Any:
        """Wait for the task and return its value.

        Raises:
            TaskFailed: the task failed (``ScriptError``, ``ResourceLimitExceeded``
                for scripts and limits).
            TaskCancelled: the task was cancelled.
            TaskTimeout: the task's own ``timeout`` ran out.
            TimeoutError: *this call's* ``timeout`` ran out; the task goes on.
        """
        core = self._core
        if self._pump is None and type(handle) is Handle and not core.degraded:  # it succeeded
            ended = handle._ended
            if ended is not None and ended[0] == "succeeded":
                return ended[1]
        try:
            task_id, v = core.view(handle)
        except MessageError:
            if not isinstance(handle, str):
                raise
            task_id, v = core.view(self._adopt(handle))
        wait = _wait_time(timeout)
        if v.outcome is None:
            wait = self._drive(lambda: v.outcome is not None or bool(core.degraded), wait)
        if not core.wait(v, wait):
            core.check_degraded()
            raise TimeoutError(
                f"task {task_id!r} did not finish within {timeout} s (it is still running)"
            )
        core.check_degraded()  # woken because the runtime degraded
        assert v.outcome is not None
        return _Core.value_of(task_id, v.outcome)

    def cancel(self, handle: Handle | str) -> bool:
        """Cancel the task. Returns True if it had not finished (it then ends
        ``cancelled``, and tasks depending on it fail); False if it had
        already ended. Idempotent. A task id this runtime did not submit (one
        ``tasks()`` lists: another client's, a task's child) is cancelled too."""
        try:
            task_id, v = self._core.view(handle)
        except MessageError:
            task_id = self._foreign(handle)
            reply_: CancelReply = self._ask(lambda ref: CancelTasks([task_id], ref=ref))
            return task_id in reply_.cancelled
        if v.outcome is not None:
            return False
        self._core.check_open()
        reply: CancelReply = self._ask(lambda ref: CancelTasks([task_id], ref=ref))
        return task_id in reply.cancelled

    def status(self, handle: Handle | str) -> str:
        """``pending``, ``running``, ``succeeded``, ``failed``, ``cancelled`` or
        ``timed_out``."""
        try:
            task_id, v = self._core.view(handle)
        except MessageError:
            return _public_status(self._foreign_status(self._foreign(handle)))
        if v.outcome is not None:
            return _public_status(v.outcome.status)
        if self._core.state is not RuntimeState.OPEN:
            return "cancelled"
        reply: StatusReply = self._ask(lambda ref: QueryStatus(ref, [task_id]))
        status = reply.statuses.get(task_id, "pending")
        return "pending" if status == "unknown" else status

    def is_completed(self, handle: Handle | str) -> bool:
        """True when the task has ended (its ``status`` is terminal). Blocks as ``status``
        does (at most one round trip to the scheduler) and raises what it raises."""
        return self.status(handle) in TERMINAL

    def progress(self, handle: Handle | str) -> Progress | None:
        """The task's last reported progress and resource use; None before it
        reported anything. A finished task keeps its final figures."""
        try:
            task_id, v = self._core.view(handle)
        except MessageError:
            task_id = self._foreign(handle)
            reply_: ProgressReply = self._ask(lambda ref: QueryProgress(ref, task_id))
            return None if reply_.progress is None else Progress.from_dict(reply_.progress)
        self._core.check_open()
        reply: ProgressReply = self._ask(lambda ref: QueryProgress(ref, task_id))
        if reply.progress is not None:
            return Progress.from_dict(reply.progress)
        if v.outcome is not None:  # the scheduler forgot it (history): its final usage
            return Progress.from_dict({"resource_usage": v.outcome.usage})
        return None

    def wait(
        self,
        handles: Iterable[Handle | str],
        timeout: float | None = None,
        return_when: str = "all",
    ) -> tuple[list[Handle | str], list[Handle | str]]:
        """Wait until all (``return_when="all"``) or the first
        (``"first"``) of ``handles`` ended, or ``timeout`` seconds passed.

        Returns ``(done, pending)``: the handles that ended and those that did
        not, each list in the order given (a task named twice counts once).
        A timeout that runs out is not an error here: ``pending`` says what
        is left. Nothing is cancelled.
        """
        _check_return_when(return_when)
        items = _handle_list(handles)
        wait = _wait_time(timeout)
        views = self._views(items)
        if not views:
            return [], []
        need = len(views) if return_when == "all" else 1
        lock = threading.Lock()
        enough = threading.Event()
        ended = [0]

        def one_ended(_o: TaskOutcome) -> None:
            with lock:
                ended[0] += 1
                if ended[0] >= need:
                    enough.set()

        for v in views:
            self._core.on_done(v, one_ended)
        try:
            if self._pump is not None:
                self._pump(enough.is_set, wait)
            else:
                enough.wait(wait)
        finally:
            for v in views:
                self._core.off_done(v, one_ended)
        done = [h for h, v in zip(items, views, strict=True) if v.outcome is not None]
        pending = [h for h, v in zip(items, views, strict=True) if v.outcome is None]
        return done, pending

    def as_completed(
        self, handles: Iterable[Handle | str], timeout: float | None = None
    ) -> Iterator[Handle | str]:
        """Yield ``handles`` as their tasks end (ended ones first, in the order
        given). ``timeout`` bounds the whole iteration: when it runs out with
        tasks still running, the builtin ``TimeoutError`` is raised (the tasks
        go on). Bad arguments raise at the call, not at the first ``next``."""
        items = _handle_list(handles)
        wait = _wait_time(timeout)
        views = self._views(items)
        return self._as_completed(items, views, wait, timeout)

    def _as_completed(
        self,
        items: list[Handle | str],
        views: list[_View],
        wait: float | None,
        timeout: float | None,
    ) -> Iterator[Handle | str]:
        import queue

        ended: queue.SimpleQueue[int] = queue.SimpleQueue()
        callbacks = []
        for i, v in enumerate(views):
            cb = _Report(ended, i)
            callbacks.append(cb)
            self._core.on_done(v, cb)
        deadline = None if wait is None else now() + wait
        try:
            for n in range(len(items)):
                left = None if deadline is None else max(0.0, deadline - now())
                if self._pump is not None:
                    self._pump(lambda: not ended.empty(), left)
                    left = 0.0
                try:
                    i = ended.get(timeout=left) if left != 0.0 else ended.get_nowait()
                except queue.Empty:
                    raise TimeoutError(
                        f"{len(items) - n} of {len(items)} tasks did not finish within "
                        f"{timeout} s (they are still running)"
                    ) from None
                yield items[i]
        finally:
            for v, cb in zip(views, callbacks, strict=True):
                self._core.off_done(v, cb)

    def stats(self) -> dict[str, Any]:
        """Counters: ``submitted``, ``running``, per-status totals, ``restarts``
        and ``engines``."""
        self._core.check_open()
        reply: StatsReply = self._ask(lambda ref: QueryStats(ref))
        bus: StatsReply = self._ask(lambda ref: QueryStats(ref), to=self._events)
        stats = dict(reply.stats)
        stats["events"] = dict(bus.stats, dropped=self._dropped_events)
        tracker = self._core.addresses.get("resources")
        if tracker is not None:
            res: StatsReply = self._ask(lambda ref: QueryStats(ref), to=tracker)
            resources = dict(res.stats)
            procs = {(e["engine"], e["index"]): e for e in resources.pop("engines", [])}
            for e in stats.get("engines", []):
                proc = procs.get((e.get("engine"), e.get("index")))
                if proc is not None:
                    e["rss"] = proc["rss"]
                    e["cpu_percent"] = proc["cpu_percent"]
                    e["over_memory"] = proc["over_memory"]
            stats["resources"] = resources
        director = self._core.addresses.get("director")
        if self._core.mode == "local" and director is not None:
            pids: StatsReply = self._ask(lambda ref: QueryStats(ref), to=director)
            stats["processes"] = dict(pids.stats.get("processes") or {})
        return stats

    def tasks(self, status: str | None = None) -> list[TaskInfo]:
        """The tasks the runtime knows, oldest first: every unfinished one and
        the last ``history`` (a runtime option, default 1,000) that ended.
        ``status`` (``pending``, ``running``, ``succeeded``, ``failed``,
        ``cancelled``, ``timed_out``) keeps only those.

        Raises:
            MessageError: ``status`` is not one of those.
            RuntimeClosed: the runtime is closed.
        """
        if status is not None and status not in STATUSES:
            raise MessageError(
                f"unknown status {status!r}; use one of {', '.join(STATUSES)}", where="status"
            )
        self._core.check_open()
        reply: TasksReply = self._ask(lambda ref: QueryTasks(ref, status))
        return [
            TaskInfo(
                str(row[0]),
                str(row[1]),
                _public_status(str(row[2])),
                int(row[3]),
                float(row[4]),
                None if row[5] is None else float(row[5]),
            )
            for row in reply.tasks
        ]

    def _foreign(self, handle: Handle | str) -> str:
        """The id of a task this facade did not submit, if the scheduler knows it;
        else the ``MessageError`` of an unknown task, again."""
        self._core.check_open()
        if isinstance(handle, str) and self._foreign_status(handle) != "unknown":
            return handle
        self._core.view(handle)  # raises the usual "unknown task" error
        raise MessageError(f"unknown task {handle!r}", where="handle")  # pragma: no cover

    def _views(self, items: list[Handle | str]) -> list[_View]:
        """The views of ``items`` to wait on; an id this facade did not submit
        (an earlier process's, another client's) is adopted, as ``result`` does."""
        core = self._core
        views = []
        for h in items:
            try:
                views.append(core.view(h)[1])
            except MessageError:
                if not isinstance(h, str):
                    raise
                views.append(core.view(self._adopt(h))[1])
        return views

    def _adopt(self, handle: str) -> str:
        """Wait on a task this facade did not submit (another client's, a task's
        child, one of an earlier process on the same journal): known to the
        scheduler, or the usual ``MessageError``. Returns its id."""
        task_id = self._foreign(handle)
        core = self._core
        with core.lock:
            if task_id not in core.views:
                core.views[task_id] = None
        self._driver.send(self._scheduler, encode(WatchTasks([task_id])))
        return task_id

    def _foreign_status(self, task_id: str) -> str:
        reply: StatusReply = self._ask(lambda ref: QueryStatus(ref, [task_id]))
        return str(reply.statuses.get(task_id, "unknown"))

    def _metric_figures(self) -> dict[str, Any]:
        """The scheduler's metric figures and the events this facade dropped
        (``llmspell._metrics``; called at each scrape, on the server's thread)."""
        if self._core.state is not RuntimeState.OPEN:
            return {}
        reply: TasksReply = self._ask(lambda ref: QueryTasks(ref, metrics=True))
        figures = dict(reply.metrics or {})
        figures["dropped"] = self._dropped_events
        return figures

    # -- registrations --------------------------------------------------------

    def register_tool(
        self,
        name: str,
        target: Any,
        schema: Mapping[str, Any] | None = None,
        *,
        description: str | None = None,
    ) -> None:
        """Register tool ``name``: ``"module:function"`` (called with the params
        as keyword arguments) or a ``Task.lua``/``Task.js`` template (params as
        ``spell.args``). ``schema`` (JSON-schema-like, see ``llmspell.schema``)
        checks every call's params; ``description`` is what agents tell a model.
        Registering a name again replaces it."""
        from .actors.registry import wire_target

        self._register("tool", name, wire_target("tool", target, schema, description))

    def register_agent(self, name: str, target: Any) -> None:
        """Register agent ``name``: ``"module:attribute"`` naming an object (or a
        class made with no arguments) with ``run(input)`` or ``stream(input)``,
        or an object with ``llmspell_spec()`` (``llmspell.agents.OpenAIChat``)."""
        from .actors.registry import wire_target

        self._register("agent", name, wire_target("agent", target))

    def register_hook(self, point: str, target: Any) -> None:
        """Run ``target`` at hook ``point`` (see ``docs/events-and-hooks.md``):
        ``"module:function"`` gets the payload as keyword arguments, a
        ``Task.lua``/``Task.js`` template as ``spell.args``. Hooks add up."""
        from .actors.registry import HOOK_POINTS, wire_target

        if point not in HOOK_POINTS:
            raise MessageError(
                f"unknown hook point {point!r}; use one of {', '.join(HOOK_POINTS)}",
                where="point",
            )
        self._register("hook", point, wire_target("hook", target))

    def register_executor(self, kind: str, target: Any) -> None:
        """Run ``Task.custom(kind, payload)`` with ``target`` (a dict payload as
        keyword arguments / ``spell.args``, anything else as ``payload``)."""
        from .actors.registry import wire_target

        self._register("executor", kind, wire_target("executor", target))

    def _register(self, what: str, name: str, target: dict[str, Any]) -> None:
        self._core.check_open()
        if not isinstance(name, str) or not name:
            raise MessageError(f"must be a non-empty str, got {name!r}", where="name")
        reply: Registered = self._ask(lambda ref: Register(ref, what, name, target))
        if reply.error:
            raise MessageError(reply.error, where=what)

    # -- streams --------------------------------------------------------------

    def stream(self, task: Task | Handle | str, *, timeout: float | None = None) -> Iterator[Any]:
        """The chunks of a streaming agent task, as they come.

        Given a ``Task`` it is submitted with this reader attached from the
        start; given a handle, the reader gets every chunk not yet read. Each
        chunk is acknowledged when taken, so the agent runs at most its
        ``buffer_size`` chunks ahead of this reader. Iteration ends when the
        task ends (raising its error if it failed, like ``result``); a
        ``timeout`` that runs out before the next chunk raises ``TimeoutError``.
        Leaving the loop early releases the agent (chunks are then no longer
        held for this reader).
        """
        core = self._core
        wait = _wait_time(timeout)  # checked before anything is submitted
        if isinstance(task, Task):
            (spec,) = core.specs([task])
            s = core.streams[spec.id] = _Stream(attached=True)
            self._driver.send(self._scheduler, core.submit_message([spec]))
            task_id, v = core.view(spec.id)
        else:
            task_id, v = core.view(task)
            with core.lock:
                found = core.streams.get(task_id)
                if found is None:
                    found = core.streams[task_id] = _Stream()
            s = found
            with s.cond:
                s.attached = True
        return self._read_stream(task_id, v, s, wait)

    def _read_stream(
        self, task_id: str, v: _View, s: _Stream, timeout: float | None
    ) -> Iterator[Any]:
        def more() -> bool:
            return bool(s.chunks) or (v.outcome is not None and s.taken >= _streamed(v.outcome))

        try:
            while True:
                if self._pump is not None:
                    self._pump(more, timeout)
                with s.cond:
                    if not s.cond.wait_for(more, timeout):
                        if v.outcome is None:
                            raise TimeoutError(f"no chunk of task {task_id!r} within {timeout} s")
                        break  # ended; chunks it announced never came
                    if not s.chunks:
                        break
                    chunk = s.chunks.popleft()
                    s.taken += 1
                    taken = s.taken
                self._ack(task_id, taken)
                yield chunk
            assert v.outcome is not None
            if v.outcome.status != "succeeded":
                self._core.check_degraded()
                _Core.value_of(task_id, v.outcome)
        finally:
            with s.cond:
                s.attached = False
                pos = s.pos
            if v.outcome is None:
                self._ack(task_id, pos)

    def _ack(self, task_id: str, seq: int) -> None:
        if self._core.state is RuntimeState.OPEN:
            self._driver.send(self._scheduler, encode(StreamAck(task_id, seq)))

    # -- coordination ---------------------------------------------------------

    def coordinate(
        self,
        tasks: Iterable[Task],
        strategy: Strategy | str,
        *,
        timeout: float | None = None,
        inputs: list[Any] | None = None,
    ) -> CoordinationResult:
        """Run ``tasks`` under one strategy (see ``Strategy``) and wait for the
        ``CoordinationResult``. Blocks; a coordination ``timeout`` cancels what
        is left and returns a result with ``timed_out`` set (it does not raise).
        """
        strat = Strategy.parse(strategy)
        problem = timeout_problem(timeout)
        if problem is not None:
            raise MessageError(problem, where="timeout")
        if inputs is not None:
            if isinstance(inputs, (str, bytes, dict)) or not isinstance(inputs, Iterable):
                raise MessageError(
                    f"must be a list of inputs, got {type(inputs).__name__}", where="inputs"
                )
            if strat is not Strategy.PIPELINE:
                raise MessageError("inputs=... is for Strategy.PIPELINE only", where="inputs")
            inputs = list(inputs)
            check_data(inputs, "inputs")
        spans = self._core.spans
        if spans is None:
            specs = self._core.specs(tasks)
            self._check_compensations(specs)
            return self._coordinate(specs, strat.value, timeout, inputs)
        with spans.workflow(strat.value) as span:
            specs = self._core.specs(tasks)
            self._check_compensations(specs)
            result = self._coordinate(specs, strat.value, timeout, inputs)
            spans.coordination_ended(span, result)
            return result

    def _check_compensations(self, specs: list[TaskSpec]) -> None:
        """A compensation's id must be new: one taken by a member, another
        compensation or an earlier task would never run (the scheduler refuses a
        taken id) and the rollback would wait for it."""
        seen = {spec.id for spec in specs}
        for i, spec in enumerate(specs):
            comp = spec.compensate
            if comp is None:
                continue
            if comp.id in seen or comp.id in self._core.views:
                raise MessageError(
                    f"task id {comp.id!r} is already used", where=f"tasks[{i}].compensate.id"
                )
            seen.add(comp.id)

    def _coordinate(
        self, specs: list[TaskSpec], strategy: str, timeout: float | None, inputs: list[Any] | None
    ) -> CoordinationResult:
        coordinator = self._core.addresses.get("coordinator")
        if coordinator is None:
            raise LlmspellError("this runtime has no coordinator")
        coord_id = f"coord-{new_task_id()}"  # a simulation's repeat with its seed
        w = _Waiter()
        w.what = (strategy, len(specs))
        with self._core.lock:
            self._core.coordinations[coord_id] = w
        self._driver.send(
            coordinator, encode(Coordinate(coord_id, specs, strategy, timeout, inputs))
        )
        if self._pump is not None:
            self._pump(w.event.is_set, None)
        w.event.wait()
        self._core.check_degraded()
        if w.msg is None:
            raise RuntimeClosed("the runtime closed while the coordination ran")
        result = w.msg.result
        self._settle_views(specs, result, inputs is not None)
        return CoordinationResult.from_dict(result)

    def _settle_views(self, specs: list[TaskSpec], result: dict[str, Any], staged: bool) -> None:
        """Give the coordinated tasks' handles their outcomes, so ``result(h)``
        and ``status(h)`` answer for them like for any submitted task."""
        failed = {int(i): str(m) for i, m in result.get("failed", [])}
        cancelled = {int(i) for i in result.get("cancelled", [])}
        values = result.get("results") or []
        statuses = result.get("statuses") or []
        errors = result.get("errors") or []
        for i, spec in enumerate(specs):
            if not staged and i < len(statuses) and statuses[i] != "succeeded":
                error = errors[i] if i < len(errors) and isinstance(errors[i], dict) else None
                if error is None and i in failed:
                    error = TaskError(failed[i]).wire()
                elif error is None:
                    error = TaskError("cancelled by its coordination").wire()
                o = TaskOutcome(spec.id, str(statuses[i]), None, error)
            elif staged:  # pipeline over inputs: the stages ran as per-input clones
                o = (
                    TaskOutcome(spec.id, "succeeded")
                    if result.get("ok")
                    else TaskOutcome(
                        spec.id, "failed", error=TaskError("the pipeline did not succeed").wire()
                    )
                )
            elif i in failed:
                o = TaskOutcome(spec.id, "failed", error=TaskError(failed[i]).wire())
            elif i in cancelled:
                o = TaskOutcome(
                    spec.id, "cancelled", error=TaskError("cancelled by its coordination").wire()
                )
            else:
                o = TaskOutcome(spec.id, "succeeded", values[i] if i < len(values) else None)
            self._core.resolve(o)

    def run_workflow(self, path_or_dict: str | Path | Mapping[str, Any]) -> CoordinationResult:
        """Run a workflow file (YAML or JSON) or dict; see API.md "Workflow files".

        Raises ``MessageError`` listing every problem of a malformed workflow,
        before anything runs.
        """
        from .workflow import load_workflow

        return self._run_loaded_workflow(load_workflow(path_or_dict))

    def _run_loaded_workflow(self, wf: Any) -> CoordinationResult:
        """Run a ``workflow.Workflow`` already loaded (its task ids are known to
        the caller: the CLI's progress display polls them)."""
        self._core.check_open()
        spans = self._core.spans
        if spans is None:
            return self._coordinate(
                self._core.register_specs(wf.tasks), wf.strategy, wf.timeout, None
            )
        with spans.workflow(str(wf.name)) as span:
            self._core.trace(wf.tasks)
            specs = self._core.register_specs(wf.tasks)
            result = self._coordinate(specs, wf.strategy, wf.timeout, None)
            spans.coordination_ended(span, result)
            return result

    def _inject_crash(self, engine: str, index: int = 0) -> None:
        """Fault injection for tests: make engine ``engine``/``index`` die now."""
        from .messages.types import CrashEngine

        self._core.check_open()
        self._driver.send(self._scheduler, encode(CrashEngine(engine, index)))

    def _request_stop(self) -> None:
        """Ask the process serving this (attached) runtime to shut it down."""
        from .messages.types import RequestStop

        if self._core.state is not RuntimeState.OPEN:  # a degraded runtime can still be stopped
            raise RuntimeClosed("this runtime is closed; create a new Runtime")
        self._driver.send(self._scheduler, encode(RequestStop("stop requested by a client")))

    # -- events -------------------------------------------------------------

    def emit(self, event: str, payload: Any = None) -> None:
        """Publish an event (glob subscribers and waiting scripts see it)."""
        self._core.check_open()
        if not isinstance(event, str) or not event:
            raise MessageError("must be a non-empty str", where="event")
        check_data(payload, "payload")
        # Emits that follow each other faster than the driver takes them travel as one
        # PublishBatch (one decode, one match pass, one delivery per subscriber).
        with self._emit_lock:
            self._emits.append(Publish(event, payload, now()))
            if len(self._emits) > 1:
                return
        self._driver.call(self._flush_emits)

    def _flush_emits(self) -> None:
        """Send the emits not sent yet; every other message to the bus goes after
        this, so it sees them in order."""
        with self._emit_lock:
            batch, self._emits = self._emits, []
        if len(batch) == 1:
            self._driver.send(self._events, encode(batch[0]))
        elif batch:
            self._driver.send(self._events, encode(PublishBatch(batch)))

    def subscribe(self, pattern: str, *, limit: int = 1000) -> Subscription:
        """Events whose names match ``pattern`` (a glob: ``*``, ``?``, ``[..]``)
        from now on. See ``Subscription`` for the overflow policy."""
        self._core.check_open()
        if not isinstance(pattern, str) or not pattern:
            raise MessageError("must be a non-empty str", where="pattern")
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise MessageError(f"must be an int >= 1, got {limit!r}", where="limit")
        sub_id = f"facade-{uuid.uuid4().hex}"
        subscription = Subscription(self, sub_id, pattern, limit)
        self._core.subscriptions[sub_id] = subscription
        self._flush_emits()
        self._driver.send(self._events, encode(Subscribe(sub_id, pattern, limit)))
        # Tell the scheduler directly and wait until it has it, so the runtime's own
        # events of work submitted after this call are published (messages to two
        # actors, or even to one, may arrive in any order in local mode).
        self._ask(lambda ref: EventInterest([pattern], [], ref=ref))
        # ...and wait until the event bus answers after the Subscribe, so an event
        # another process publishes once this returns finds the subscription there
        self._ask(lambda ref: QueryStats(ref), to=self._events)
        return subscription

    def _unsubscribe(self, subscription: Subscription) -> None:
        self._core.subscriptions.pop(subscription.sub_id, None)
        if self._core.state is RuntimeState.OPEN:
            self._flush_emits()
            self._driver.send(self._events, encode(Unsubscribe(subscription.sub_id)))

    def _ask(self, build: Callable[[int], Message], timeout: float = 30.0, to: Any = None) -> Any:
        w = _Waiter()
        data = self._core.request(build, w)
        self._core.check_open()  # (the runtime may have gone away just now)
        if to is not None and to is self._events:
            self._flush_emits()
        self._driver.send(self._scheduler if to is None else to, data)
        if not w.event.wait(self._drive(w.event.is_set, timeout)):
            raise TimeoutError("the runtime did not answer in time")
        if w.msg is None and w.lost:
            raise LlmspellError(f"{w.lost} before it answered; it was restarted: ask again")
        if w.msg is None:
            raise RuntimeClosed("the runtime went away before it answered; create a new Runtime")
        return w.msg


def _public_status(status: str) -> str:
    return "failed" if status == "rejected" else status


def _streamed(o: TaskOutcome) -> int:
    """How many chunks a streaming agent task sent in all (0 when unknown)."""
    n = (o.usage or {}).get("streamed")
    return int(n) if isinstance(n, int) else 0


async def _aiter_stream(it: Iterator[Any]) -> AsyncIterator[Any]:
    loop = asyncio.get_running_loop()
    end = object()
    try:
        while True:
            chunk = await loop.run_in_executor(None, next, it, end)
            if chunk is end:
                return
            yield chunk
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            await loop.run_in_executor(None, close)


class AsyncRuntime:
    """``Runtime`` for asyncio applications: the same calls, as coroutines.

    ``async with AsyncRuntime() as rt: h = await rt.submit(t); await rt.result(h)``.
    Waiting never blocks the event loop: answers from the actor system are
    handed to the loop with ``call_soon_threadsafe``.
    """

    _awaitable_handles = True  # ``await handle`` works on its handles

    def __init__(self, mode: str = "embedded", **config: Any) -> None:
        self._mode = mode
        self._config = config
        self._rt: Runtime | None = None

    def _sync(self) -> Runtime:
        """The runtime a handle's blocking calls go to."""
        return self._runtime()

    async def start(self) -> AsyncRuntime:
        """Start the runtime (``Runtime(mode, **config)``) in a worker thread: waits as long as
        that takes (engines started, seconds in local mode). Raises ``RuntimeClosed`` when
        already started, and what ``Runtime(...)`` raises (``MessageError`` for a bad option)."""
        if self._rt is not None:
            raise RuntimeClosed("this AsyncRuntime was already started")
        loop = asyncio.get_running_loop()
        self._rt = await loop.run_in_executor(None, lambda: Runtime(self._mode, **self._config))
        return self

    async def __aenter__(self) -> AsyncRuntime:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _runtime(self) -> Runtime:
        if self._rt is None:
            raise RuntimeClosed("start the AsyncRuntime first (async with AsyncRuntime() ...)")
        return self._rt

    async def close(self) -> None:
        """``Runtime.close`` in a worker thread: cancels what is unfinished and stops the
        actor system (waits for that, about a second at most). Idempotent."""
        if self._rt is not None:
            rt = self._rt
            await asyncio.get_running_loop().run_in_executor(None, rt.close)

    async def submit(self, task: Task) -> Handle:
        """``Runtime.submit`` without blocking the loop (queues at once); the handle is
        awaitable (``await h`` is ``await rt.result(h)``). Raises ``MessageError``,
        ``RuntimeClosed``, ``RuntimeDegraded`` as ``Runtime.submit``."""
        (h,) = await self.submit_many([task])
        return h

    async def submit_many(self, tasks: Iterable[Task]) -> list[Handle]:
        """``Runtime.submit_many``: all the tasks or none (queued at once, no waiting);
        awaitable handles. Raises as ``Runtime.submit_many``."""
        handles = self._runtime().submit_many(tasks)
        for h in handles:
            _SET_OWNER(h, self)  # awaitable: ``await h``
        return handles

    def _future(
        self, loop: asyncio.AbstractEventLoop, v: _View
    ) -> tuple[asyncio.Future[TaskOutcome], Callable[[TaskOutcome], None]]:
        """A future of this loop that gets the task's outcome, and the callback
        that sets it (to take off the view when nobody waits any more)."""
        fut: asyncio.Future[TaskOutcome] = loop.create_future()

        def done(o: TaskOutcome) -> None:
            def settle() -> None:
                if not fut.done():
                    fut.set_result(o)

            try:
                loop.call_soon_threadsafe(settle)
            except RuntimeError:  # that event loop is closed: nobody waits there now
                pass

        self._runtime()._core.on_done(v, done)
        return fut, done

    async def wait(
        self,
        handles: Iterable[Handle | str],
        timeout: float | None = None,
        return_when: str = "all",
    ) -> tuple[list[Handle | str], list[Handle | str]]:
        """``Runtime.wait`` as a coroutine: ``done, pending = await rt.wait(hs)``."""
        _check_return_when(return_when)
        rt = self._runtime()
        items = _handle_list(handles)
        wait = _wait_time(timeout)
        loop = asyncio.get_running_loop()
        views = await loop.run_in_executor(None, rt._views, items)
        if not views:
            return [], []
        futures = [self._future(loop, v) for v in views]
        try:
            await asyncio.wait(
                [f for f, _ in futures],
                timeout=wait,
                return_when=asyncio.ALL_COMPLETED
                if return_when == "all"
                else asyncio.FIRST_COMPLETED,
            )
        finally:
            for v, (_, cb) in zip(views, futures, strict=True):
                rt._core.off_done(v, cb)
        done = [h for h, v in zip(items, views, strict=True) if v.outcome is not None]
        pending = [h for h, v in zip(items, views, strict=True) if v.outcome is None]
        return done, pending

    def as_completed(
        self, handles: Iterable[Handle | str], timeout: float | None = None
    ) -> AsyncIterator[Handle | str]:
        """``Runtime.as_completed`` as an async iterator: ``async for h in
        rt.as_completed(hs)``; ``TimeoutError`` when ``timeout`` runs out first."""
        rt = self._runtime()
        items = _handle_list(handles)
        wait = _wait_time(timeout)
        views = rt._views(items)  # a round trip only for an id this facade did not submit
        return self._as_completed(rt, items, views, wait, timeout)

    async def _as_completed(
        self,
        rt: Runtime,
        items: list[Handle | str],
        views: list[_View],
        wait: float | None,
        timeout: float | None,
    ) -> AsyncIterator[Handle | str]:
        loop = asyncio.get_running_loop()
        futures = [self._future(loop, v) for v in views]
        index = {id(f): i for i, (f, _) in enumerate(futures)}
        waiting = {f for f, _ in futures}
        deadline = None if wait is None else loop.time() + wait
        try:
            while waiting:
                left = None if deadline is None else max(0.0, deadline - loop.time())
                ended, waiting = await asyncio.wait(
                    waiting, timeout=left, return_when=asyncio.FIRST_COMPLETED
                )
                if not ended:
                    raise TimeoutError(
                        f"{len(waiting)} of {len(items)} tasks did not finish within "
                        f"{timeout} s (they are still running)"
                    )
                for i in sorted(index[id(f)] for f in ended):
                    yield items[i]
        finally:
            for v, (_, cb) in zip(views, futures, strict=True):
                rt._core.off_done(v, cb)

    async def result(self, handle: Handle | str, timeout: float | None = None) -> Any:
        """The task's value: awaits its end (up to ``timeout`` seconds, None: for ever)
        without blocking the loop. Raises what the task ended with (``TaskFailed``,
        ``TaskCancelled``, ``TaskTimeout``), the builtin ``TimeoutError`` when ``timeout``
        runs out (the task goes on), ``RuntimeDegraded``/``RuntimeClosed``."""
        rt = self._runtime()
        try:
            task_id, v = rt._core.view(handle)
        except MessageError:
            if not isinstance(handle, str):
                raise
            loop = asyncio.get_running_loop()
            task_id, v = rt._core.view(await loop.run_in_executor(None, rt._adopt, handle))
        wait = _wait_time(timeout)
        # embedded: the await never runs the actors itself: a script's one resume
        # may compute for up to its step budget, and the event loop must go on
        if v.outcome is not None:
            rt._core.check_degraded()
            return _Core.value_of(task_id, v.outcome)
        fut, done = self._future(asyncio.get_running_loop(), v)
        try:
            outcome = await asyncio.wait_for(asyncio.shield(fut), wait)
        except TimeoutError:
            raise TimeoutError(
                f"task {task_id!r} did not finish within {timeout} s (it is still running)"
            ) from None
        finally:
            rt._core.off_done(v, done)  # a cancelled or timed-out await leaves nothing behind
        rt._core.check_degraded()  # woken because the runtime degraded
        return _Core.value_of(task_id, outcome)

    async def cancel(self, handle: Handle | str) -> bool:
        """``Runtime.cancel`` in a worker thread: True if the task had not finished (it
        ends ``cancelled``), False if it had already ended."""
        rt = self._runtime()
        return await asyncio.get_running_loop().run_in_executor(None, rt.cancel, handle)

    async def status(self, handle: Handle | str) -> str:
        """``Runtime.status`` in a worker thread (at most one round trip to the scheduler;
        none once the task's end is known here)."""
        rt = self._runtime()
        return await asyncio.get_running_loop().run_in_executor(None, rt.status, handle)

    async def is_completed(self, handle: Handle | str) -> bool:
        """True when the task has ended (``status`` is terminal); as ``status``."""
        return await self.status(handle) in TERMINAL

    async def progress(self, handle: Handle | str) -> Progress | None:
        """``Runtime.progress`` in a worker thread: the task's last progress, or None."""
        rt = self._runtime()
        return await asyncio.get_running_loop().run_in_executor(None, rt.progress, handle)

    async def stats(self) -> dict[str, Any]:
        """``Runtime.stats`` in a worker thread (a round trip to each actor asked)."""
        rt = self._runtime()
        return await asyncio.get_running_loop().run_in_executor(None, rt.stats)

    async def tasks(self, status: str | None = None) -> list[TaskInfo]:
        """``Runtime.tasks`` as a coroutine."""
        rt = self._runtime()
        return await asyncio.get_running_loop().run_in_executor(None, rt.tasks, status)

    async def coordinate(
        self,
        tasks: Iterable[Task],
        strategy: Strategy | str,
        *,
        timeout: float | None = None,
        inputs: list[Any] | None = None,
    ) -> CoordinationResult:
        """``Runtime.coordinate`` in a worker thread: awaits until every task ended or
        ``timeout`` ran out (then ``timed_out`` is set; it does not raise). Raises
        ``MessageError`` for a bad strategy, timeout or inputs."""
        rt = self._runtime()
        tasks = list(tasks)
        return await asyncio.get_running_loop().run_in_executor(
            None, lambda: rt.coordinate(tasks, strategy, timeout=timeout, inputs=inputs)
        )

    async def run_workflow(
        self, path_or_dict: str | Path | Mapping[str, Any]
    ) -> CoordinationResult:
        """``Runtime.run_workflow`` in a worker thread: awaits the workflow's end.
        Raises ``MessageError`` for a malformed workflow (nothing runs then)."""
        rt = self._runtime()
        return await asyncio.get_running_loop().run_in_executor(None, rt.run_workflow, path_or_dict)

    async def emit(self, event: str, payload: Any = None) -> None:
        """``Runtime.emit``: publishes at once, no waiting."""
        self._runtime().emit(event, payload)

    async def register_tool(
        self,
        name: str,
        target: Any,
        schema: Mapping[str, Any] | None = None,
        *,
        description: str | None = None,
    ) -> None:
        """``Runtime.register_tool`` in a worker thread (awaits the registry's answer).
        Raises ``MessageError`` for a bad name, target or schema."""
        rt = self._runtime()
        await asyncio.get_running_loop().run_in_executor(
            None, lambda: rt.register_tool(name, target, schema, description=description)
        )

    async def register_agent(self, name: str, target: Any) -> None:
        """``Runtime.register_agent`` in a worker thread (awaits the registry's answer)."""
        rt = self._runtime()
        await asyncio.get_running_loop().run_in_executor(None, rt.register_agent, name, target)

    async def register_hook(self, point: str, target: Any) -> None:
        """``Runtime.register_hook`` in a worker thread (awaits the registry's answer).
        Raises ``MessageError`` for an unknown hook point."""
        rt = self._runtime()
        await asyncio.get_running_loop().run_in_executor(None, rt.register_hook, point, target)

    async def register_executor(self, kind: str, target: Any) -> None:
        """``Runtime.register_executor`` in a worker thread (awaits the registry's answer)."""
        rt = self._runtime()
        await asyncio.get_running_loop().run_in_executor(None, rt.register_executor, kind, target)

    def stream(
        self, task: Task | Handle | str, *, timeout: float | None = None
    ) -> AsyncIterator[Any]:
        """``Runtime.stream`` as an async iterator: ``async for chunk in rt.stream(t)``.
        A ``Task`` is submitted at once, with the reader attached."""
        it = self._runtime().stream(task, timeout=timeout)
        return _aiter_stream(it)

    def subscribe(self, pattern: str, *, limit: int = 1000) -> Subscription:
        """``Runtime.subscribe``: a ``Subscription`` at once (no waiting); read it with
        ``get(timeout=...)`` or iterate."""
        return self._runtime().subscribe(pattern, limit=limit)
