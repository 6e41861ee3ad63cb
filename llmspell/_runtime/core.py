"""The I/O-free core both facades share: validation, ids, task views, reply
matching (``_Core``), and what a task's view and a stream's chunks are.

It runs on the caller's threads and on the driver's thread (``on_message``);
``_Core.lock`` guards its tables. It sends nothing itself: ``Runtime`` hands
what it builds to the driver.
"""

from __future__ import annotations

import dataclasses
import enum
import itertools
import os
import threading
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from .._actor import log
from .._context import current_task_id
from .._exceptions import MessageError, RuntimeClosed, RuntimeDegraded, error_from_outcome
from .._loop import SharedOutcomes, _flat, _own, own_outcome
from .._task import Handle, Task
from ..messages import Message, encode
from ..messages.codec import encode_item, encode_with_items
from ..messages.config import DEFAULTS, LOCAL_DEFAULTS, parse_options
from ..messages.types import (
    Ack,
    CancelReply,
    CoordinationDone,
    EventDelivery,
    ProgressReply,
    Registered,
    Replaced,
    SpanRecords,
    StatsReply,
    StatusReply,
    StreamChunks,
    SubmitRejected,
    SubmitTasks,
    SupervisorEvent,
    TaskError,
    TaskOutcome,
    TaskOutcomes,
    TaskSpec,
    TasksReply,
)
from ..table.status import PLAIN

if TYPE_CHECKING:
    from .subscription import Subscription
    from .waiting import _Waiter


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
        config = parse_options(mode, config)  # one MessageError for a bad option
        if config.get("journal") is not None:
            from ..journal import Journal

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
            for key, value in LOCAL_DEFAULTS.items():
                self.config.setdefault(key, value)
        else:
            per_engine = 1
        self.config.setdefault("engines", _default_engines(per_engine))
        self.runtime_id = uuid.uuid4().hex
        self.state = RuntimeState.STARTING
        # task id -> submit's Handle or None (running, nobody waits), a _View
        # (someone waits) or, once it ended, its outcome as one plain tuple
        # (``_ended_entry``) that submit's Handle holds too: no object of the
        # runtime's own per running task, and once ended one the garbage collector
        # stops tracking. Ended entries are forgotten oldest first beyond
        # ``keep_ended`` (as many as the scheduler keeps tombstones for); a
        # Handle keeps its own outcome, so result(handle) still answers then.
        self.views: dict[str, _View | _Ended | Handle | None] = {}
        self.ended: deque[str] = deque()
        self.keep_ended = max(100 * int(history if history is not None else DEFAULTS.history), 100)
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
        # the driver takes messages as objects (embedded): a batch of plain tasks
        # is handed to the scheduler as a ``SubmitTasks``, not encoded and decoded
        # (set by the runtime)
        self.hand_over = False
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
        if len(ids) == 1:  # one task at a time
            task_id = ids[0]
            with self.lock:
                if task_id in self.views:
                    raise MessageError(f"duplicate task id {task_id!r}", where="id")
                self.views[task_id] = handles[0] if handles is not None else None
            return
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

    def submit_payload(self, tasks: Iterable[Task]) -> tuple[list[Handle], list[Any]]:
        """Validate ``tasks``, claim their ids and encode their ``SubmitTasks``,
        one task at a time: no spec of a big batch outlives its own encoding
        (the garbage collector never has to walk thousands of them).

        Everything is checked and encoded before anything is sent (all or
        none). A big batch without dependencies goes as several messages of
        ``_SUBMIT_CHUNK`` tasks, so the first ones run while the scheduler takes
        in the rest and less of the batch is in memory at once; a batch with
        dependencies goes whole (a task may name one listed after it).

        Embedded (``hand_over``), a batch of tasks without options whose data is
        scalars or maps of them is handed over as ``SubmitTasks`` objects (each
        args map copied: the scheduler's own, as a decode would give it), not
        bytes."""
        self.check_open()
        _check_task_list(tasks)
        parent = current_task_id()  # submitted by a Python task: its child
        ids: list[str] = []
        parts: list[bytes] = []
        plain: list[TaskSpec] | None = [] if self.hand_over else None
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
            if plain is not None:
                if not task.opts and _flat(spec):
                    if type(spec.args) is dict:
                        spec.args = dict(spec.args)
                    plain.append(spec)
                    continue
                parts.extend(encode_item(p) for p in plain)  # not all plain: all encoded
                plain = None
            parts.append(encode_item(spec))
        owner = self.owner
        handles = [_handle(task_id, owner) for task_id in ids]
        self.register_ids(ids, handles)
        if plain:
            n = len(plain)
            k = n if linked else _SUBMIT_CHUNK  # (plain tasks have no dependencies)
            return handles, [SubmitTasks(plain[i : i + k], notify=True) for i in range(0, n, k)]
        # (local mode too: the lane to the scheduler keeps their order; where there is
        # none, Thespian usually does, and independent tasks need none)
        k = len(parts) if linked else _SUBMIT_CHUNK
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

    def degraded_by(self, outcomes: list[TaskOutcome]) -> None:
        """A task the scheduler failed because the runtime degraded can arrive
        before the supervisor's word to this facade (they come by different
        paths): the outcome is the news, so a caller waiting on that task gets
        ``RuntimeDegraded`` as the contract says, not the task's failure."""
        for o in outcomes:
            error = o.error
            if error is not None and error.get("gave_up"):
                self.degrade(str(error["gave_up"]))
                return

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
        if type(msg) is TaskOutcomes or type(msg) is SharedOutcomes:
            if not self.degraded:
                self.degraded_by(msg.items)
            self.resolve_many(msg.items, type(msg) is SharedOutcomes)
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

    def resolve_many(self, outcomes: list[TaskOutcome], shared: bool = False) -> None:
        """Settle a batch of outcomes under one lock; wake waiters after.
        ``shared``: the outcomes are the scheduler's own objects (an embedded
        runtime's ``SharedOutcomes``): what is kept or handed on is copied."""
        views, ended = self.views, self.ended
        woken: list[tuple[TaskOutcome, threading.Event | None, list[Any] | None]] = []
        with self.lock:
            for o in outcomes:
                task_id = o.task_id
                v = views.get(task_id, _UNKNOWN)
                if v is None:
                    views[task_id] = _ended_entry(o, shared)
                elif type(v) is Handle:
                    _SET_ENDED(v, _ended_entry(o, shared))
                    views[task_id] = v._ended
                elif type(v) is _View and v.outcome is None:
                    if shared:
                        o = own_outcome(o)
                    v.outcome = o
                    views[task_id] = t = _ended_entry(o)
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


def _handle(task_id: str, owner: Any = None) -> Handle:
    """``Handle(task_id)`` without the frozen dataclass's ``__init__`` (a third of
    the cost; one per submitted task), bound to ``owner``."""
    h = _new(Handle)
    _SET_ID(h, task_id)
    _SET_ENDED(h, None)
    _SET_OWNER(h, owner)
    return h


_SUBMIT_CHUNK = 512  # tasks per SubmitTasks message of a batch without dependencies
# an ended task as the facade keeps it (up to ``keep_ended`` of them): status, value,
# error (its items), then the usage: most tasks' two numbers (cpu_seconds, duration)
# as the last two fields, any other usage as its items and None (``_ended_entry``). One
# tuple the garbage collector can untrack (plain strings and numbers all through; a dict
# or a status member inside keeps it tracked for good, and every full collection of the
# application walked the 100,000 kept)
_Ended = tuple[str, Any, "tuple[tuple[str, Any], ...] | None", Any, "float | None"]


def _ended_entry(o: TaskOutcome, shared: bool = False) -> _Ended:
    """``shared``: ``o`` is still the sender's (``SharedOutcomes``): its value,
    error and usage are copied unless plain scalars."""
    value, error, usage = o.value, o.error, o.usage
    if shared:
        value = _own(value)
        if error is not None:
            error = _own(error)
    # (a refused submit's "rejected" is no status: kept as it is)
    status = PLAIN.get(o.status, o.status)
    kept_error = None if error is None else tuple(error.items())
    if usage is None:
        return (status, value, kept_error, None, None)
    if usage.keys() == _CPU_DURATION and usage["duration"] is not None:
        return (status, value, kept_error, usage["cpu_seconds"], usage["duration"])
    return (status, value, kept_error, tuple((_own(usage) if shared else usage).items()), None)


_CPU_DURATION = frozenset(("cpu_seconds", "duration"))


def _outcome(task_id: str, ended: _Ended) -> TaskOutcome:
    status, value, error, usage, duration = ended
    u: dict[str, Any] | None
    if duration is not None:
        u = {"cpu_seconds": usage, "duration": duration}
    else:
        u = None if usage is None else dict(usage)
    return TaskOutcome(task_id, status, value, None if error is None else dict(error), u)


def _default_engines(per_engine: int) -> dict[str, int]:
    from .._imports import import_target
    from ..actors.director import ENGINE_CLASSES

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


def _public_status(status: str) -> str:
    return "failed" if status == "rejected" else status


def _streamed(o: TaskOutcome) -> int:
    """How many chunks a streaming agent task sent in all (0 when unknown)."""
    n = (o.usage or {}).get("streamed")
    return int(n) if isinstance(n, int) else 0
