"""The scheduler actor: owns every task's lifecycle.

The task state itself (records, statuses, the dependency graph and its cycle
checks, retries, what an end sets off, retention, parent/child ties) is an
I/O-free ``llmspell.table.TaskTable`` that changes only by typed events
(``Submitted``, ``Dispatched``, ``Retried``, ``Ended``, ``Cancelled``,
``Restored``, ``Tombstoned``). This actor is its shell: its ``on_*`` handlers
turn messages into events, and after each message it carries out what the
table left to do (route ready tasks to engines, tell watchers, stop tasks on
engines, arm retry wake-ups, publish events, run hooks), then sends. It owns
what is really actor work: engine slots and dispatch batches, timeouts,
tracing spans, metrics, the registry and hooks, injected faults.

One record per task. A task is *pending* until its dependencies succeeded and
an engine of its kind has room, *running* once dispatched, and then reaches
exactly one terminal state: succeeded, failed, cancelled or timed_out. The
first terminal state wins; anything that arrives later for the same task (a
result after a cancel, a second cancel) is ignored.

Ready tasks wait in one priority queue per engine (higher priority first, then
submission order); an engine gets at most ``capacity`` tasks at once, so
priorities decide the order whenever work is queued. A task's ``timeout`` is
counted from when it is dispatched and enforced with a Thespian wake-up.

Registrations (tools, agents, hooks, executors; ``Register``) live here, in a
``registry.Registry``: a ``tool``/``agent``/``custom`` task is resolved to the
engine and target that run it when it becomes ready. Hooks run as tasks of
their own (kind ``"hook"``, 30 s timeout) at ``task.before`` (first
dispatch), ``task.after`` (every end), ``task.error`` (failed or timed out),
``task.retry``, ``engine.restart`` and, through the event bus,
``coordination.before/after``; never for hook tasks or what they submit, and
never delaying or failing the task they observe (their failures are counted
in ``stats()["hooks"]["errors"]`` and logged). Chunks of a streaming agent
task (``StreamChunks``) are relayed to the address that submitted it and its
``StreamAck``s back to the engine. An engine the resource tracker reports over
``engine_memory`` (``EngineLoad``) gets no new tasks until it is back under.

Finished records are kept whole for the last ``history`` (a runtime option,
default 1,000) tasks that ended; older ones shrink to a tombstone of plain
data (status, value, error), kept for the last ``100 x history`` (at least
100), so memory stays bounded in a long-running process and the garbage
collector does not walk thousands of old records (a tuple of plain data is
not tracked). Dependencies, ``deps_input`` and a late ``spell.await`` work
from a tombstone as from a record; only a task older than its tombstone is
unknown, and asking for its value fails with a clear error. A task submitted
by another task (``spell.submit``) keeps its whole record at least until its
parent ends; a task whose value a pending dependent will take
(``deps_input``) until that dependent ends.
"""

from __future__ import annotations

import bisect
import gc
import heapq
import itertools
import os
import re
from collections import defaultdict, deque
from collections.abc import Callable
from typing import Any

import msgpack
from thespian.actors import ActorAddress

from .._actor import WireActor, addr_key, log
from .._clock import monotonic, now
from .._exceptions import JournalError, MessageError
from .._frames import DEFAULT_MAX_FRAME
from ..messages import decode
from ..messages.codec import encode_item, encode_with_items
from ..messages.config import ENGINES
from ..messages.ids import new_task_id
from ..messages.types import (
    Ack,
    CancelReply,
    CancelTasks,
    DispatchBatch,
    EngineEvent,
    EngineLoad,
    EngineReady,
    EngineResults,
    EventDelivery,
    EventInterest,
    HostCalls,
    InjectFaults,
    Introduce,
    LaneAsk,
    LaneOffer,
    ProgressBatch,
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
    StopTasks,
    StreamAck,
    StreamChunks,
    SubmitRejected,
    SubmitTasks,
    Subscribe,
    SupervisorEvent,
    TaskOutcome,
    TaskOutcomes,
    TaskSpec,
    TasksReply,
    TraceTo,
    WatchTasks,
)
from ..table import (
    TERMINAL,
    Cancelled,
    Dispatched,
    Ended,
    Rec,
    Submitted,
    TaskStatus,
    TaskTable,
    Unrecorded,
)
from ..table.table import err as _err
from .durable import Durable
from .events import compile_pattern
from .registry import REGISTERED_KINDS, Registry, RegistryError

__all__ = ["Scheduler"]

PENDING = TaskStatus.PENDING
RUNNING = TaskStatus.RUNNING
SUCCEEDED = TaskStatus.SUCCEEDED
FAILED = TaskStatus.FAILED
CANCELLED = TaskStatus.CANCELLED
TIMED_OUT = TaskStatus.TIMED_OUT


class _Ready:
    """Ready task ids of one engine: a FIFO per priority (0 low .. 3 critical),
    the highest non-empty one served first. O(1) both ways (a heap over
    thousands of queued tasks cost a dozen tuple comparisons per task)."""

    __slots__ = ("levels", "size")

    def __init__(self) -> None:
        self.levels: tuple[deque[str], ...] = (deque(), deque(), deque(), deque())
        self.size = 0

    def push(self, priority: int, task_id: str) -> None:
        self.levels[min(max(priority, 0), 3)].append(task_id)
        self.size += 1

    def pop(self) -> str:
        """The next task id; call only when not empty."""
        levels = self.levels
        for p in (3, 2, 1, 0):
            if levels[p]:
                self.size -= 1
                return levels[p].popleft()
        raise IndexError("pop from an empty ready queue")

    def __len__(self) -> int:
        return self.size


class _Slot:
    """One engine actor and the tasks it runs."""

    __slots__ = (
        "address",
        "capacity",
        "engine",
        "host",
        "index",
        "key",
        "member",
        "paused",
        "pid",
        "restarts",
        "running",
        "tags",
    )

    def __init__(self, ready: EngineReady, address: ActorAddress) -> None:
        self.engine = ready.engine
        self.index = ready.index
        self.pid = ready.pid
        self.capacity = ready.capacity
        self.restarts = ready.restarts
        self.address = address
        self.key = addr_key(address)
        self.running: set[str] = set()
        self.paused = False  # over the runtime's engine_memory: no new tasks
        # cluster mode: the member running it, its address and tags (llmspell.actors.cluster)
        self.member = ready.member
        self.host = ready.host or "127.0.0.1"
        self.tags = frozenset(ready.tags or ())


class Scheduler(WireActor):
    role = "scheduler"

    def __init__(self) -> None:
        super().__init__()
        # the task state (llmspell.table); self.tasks is its records, by id
        self.table = TaskTable()
        self.tasks = self.table.tasks
        self.slots: dict[str, list[_Slot]] = defaultdict(list)
        self.ready: dict[str, _Ready] = defaultdict(_Ready)
        self.addresses: dict[str, ActorAddress] = {}
        self.crashes = 0
        # outgoing batches, keyed by addr_key(address): (address, items)
        self._out: dict[str, tuple[ActorAddress, list[TaskOutcome]]] = {}
        self._last_watcher: ActorAddress | None = None  # _notify's last batch, for speed
        self._last_batch: list[TaskOutcome] | None = None
        self._dispatch: dict[str, tuple[ActorAddress, list[Rec]]] = {}
        # StopTasks and replies that wait for flush (after the log is committed)
        self._stops: list[tuple[ActorAddress, StopTasks]] = []
        self._replies: list[tuple[ActorAddress, CancelReply | Registered]] = []
        self._dirty: set[str] = set()  # engines whose queue may move
        self._events: list[Publish] = []
        self.degraded = ""
        self._gave_up = False  # degraded because a supervisor gave up (not the journal)
        self._interest: set[str] = set()  # event patterns someone subscribed to
        self._wanted: Callable[[str], Any] | None = None
        # planned task faults (simulation): [id matcher, dispatches left, fault]
        self.faults: list[list[Any]] = []
        self.stop_requested = False
        # registrations, hooks, streams (see the module docstring)
        self.registry = Registry()
        self._extras = False  # hooks registered or streams seen: _finish has more to do
        self._hooks_due: list[tuple[str, dict[str, Any]]] = []
        self._hook_ids: set[str] = set()  # hook tasks and what they submitted
        self._hook_parent: dict[str, tuple[str, int]] = {}  # hook task -> (Task.hook id, slot)
        self._fanin: dict[str, list[Any]] = {}  # Task.hook id -> [left, results]
        self.hook_counts = {"runs": 0, "errors": 0}
        self._consumers: dict[str, ActorAddress] = {}  # agent task -> who gets its chunks
        # agent tasks that ended, with who got their chunks: a last batch that arrives
        # after the end (local mode: it can overtake nothing, but be overtaken) still
        # goes there; the newest _LATE_KEPT only
        self._late: dict[str, ActorAddress] = {}
        self._coordination_sub = False
        # watches that arrived before the task's submit (local mode: a script engine's
        # WatchTasks can overtake its SubmitTasks on the way here)
        self._early: dict[str, list[ActorAddress]] = {}
        self.absent: set[str] = set()  # engines this runtime does not start
        # cluster mode: ready queues of tasks with tags=[...] ("lua#gpu,big"), by engine
        self.cluster = False
        self._tagged: dict[str, set[str]] = defaultdict(set)
        # tracing (see llmspell._tracing): facades that asked for span records, the
        # records not sent yet per facade, the next batch number per facade, and
        # span events (retries, crashes) of unfinished tasks
        self._sinks: dict[str, ActorAddress] = {}
        self._sink: ActorAddress | None = None  # the last to ask: tasks of no tracer
        self._spans: dict[str, tuple[ActorAddress, list[list[Any]]]] = {}
        self._span_seq: dict[str, int] = {}
        self._span_events: dict[str, list[list[Any]]] = {}
        self._opened: set[str] = set()  # tasks whose "open" record was sent
        # metrics (Runtime(metrics_port=...)): None when off (see llmspell._metrics)
        self._metrics: _Metrics | None = None
        # the journal (Runtime(journal=path), llmspell.actors.durable): None without one
        self.durable: Durable | None = None
        self._max_frame = DEFAULT_MAX_FRAME  # local mode's limit on one message
        self._restored_hooks: list[tuple[str, Any]] = []  # hooks the journal gave back
        # time-outs, retry back-offs, watch graces: (due on _clock.monotonic, seq,
        # payload) in one heap, with a Thespian wake-up armed for the earliest only
        # (each due time armed once: ``_armed``). See ``_after``.
        self._timers: list[tuple[float, int, tuple[Any, ...]]] = []
        self._timer_seq = itertools.count()
        self._armed: set[float] = set()

    # -- set-up -------------------------------------------------------------

    def on_introduce(self, msg: Introduce, sender: ActorAddress) -> None:
        self.addresses.update(msg.addresses)
        if msg.config.get("mode") in ("local", "cluster") and os.getpid() != msg.config.get(
            "owner_pid"
        ):
            # a process of its own, running no code but this actor's: its young
            # objects (a batch's specs and records, most alive until their tasks
            # end) are collected ten times less often than by Python's default (700)
            gc.set_threshold(_GC_YOUNG, *gc.get_threshold()[1:])
        table = self.table
        table.retry_base = float(msg.config.get("retry_backoff", table.retry_base))
        table.retry_cap = float(msg.config.get("retry_backoff_cap", table.retry_cap))
        table.history = int(msg.config.get("history", table.history))
        # Python targets a script may run (Runtime(script_python=[patterns])): none by default
        allowed = msg.config.get("script_python") or ()
        table.script_python = (
            re.compile("|".join(f"(?:{compile_pattern(str(p)).pattern})" for p in allowed)).match
            if allowed
            else None
        )
        if msg.config.get("metrics") and self._metrics is None:
            self._metrics = _Metrics()
        self.cluster = bool(msg.config.get("cluster"))
        engines = msg.config.get("engines")
        # a task for an engine the runtime never starts fails (a cluster's members come later)
        if isinstance(engines, dict) and not self.cluster:
            self.absent = {e for e in ENGINES if int(engines.get(e, 0) or 0) < 1}
        self._max_frame = int(msg.config.get("max_frame_bytes") or DEFAULT_MAX_FRAME)
        path = msg.config.get("journal")
        if path and self.durable is None:
            self._open_journal(str(path), bool(msg.config.get("journal_checked")))

    def _open_journal(self, path: str, checked: bool = False) -> None:
        """Open the journal and resume what it left unfinished: registrations
        first (resumed tasks find their tools), then the tasks."""
        try:
            durable = Durable(path, self.table, checked=checked)
            self.durable = durable
            registrations = durable.journal.registrations() if durable.journal else []
            for what, name, target in registrations:
                error = self.registry.register(what, name, target)
                if error is not None:
                    log.warning("journal %s: %s %r not restored: %s", path, what, name, error)
                elif what == "hook":
                    self._restored_hooks.append((name, target))
                    self._hook_registered(name)
            durable.resume(now())
        except JournalError as exc:  # the facade checked it; it went bad since
            self._journal_failed(exc)
            return
        if self._early:  # watches that came before the journal was open (a restart)
            early, self._early = self._early, {}
            for task_id, watchers in early.items():
                for watcher in watchers:
                    self.on_watch(WatchTasks([task_id]), watcher)

    def on_engine_ready(self, msg: EngineReady, sender: ActorAddress) -> None:
        if self.degraded:  # restarted just before its supervisor gave up: being stopped
            return
        slots = self.slots[msg.engine]
        fresh = _Slot(msg, sender)
        for i, s in enumerate(slots):
            if s.index == msg.index:
                self._lose_slot(
                    s,
                    f"the coordinator process (pid {s.pid}) crashed while running this task"
                    if msg.engine == "workflow"
                    else f"engine process (pid {s.pid}) was replaced while running this task",
                )
                slots[i] = fresh
                break
        else:
            slots.append(fresh)
        tracker = self.addresses.get("resources")
        if tracker is not None:
            self.send_msg(tracker, msg)
        if msg.restarts:
            restart = {
                "engine": msg.engine,
                "index": msg.index,
                "pid": msg.pid,
                "restarts": msg.restarts,
            }
            self._publish("llmspell.engine.restart", restart)
            self._hook("engine.restart", restart)
        self._dirty.add(msg.engine)

    def on_engine_event(self, msg: EngineEvent, sender: ActorAddress) -> None:
        """The engines' supervisor saw an engine die, stopped it itself (a
        sibling's restart under one_for_all or rest_for_one), or restarted it."""
        if msg.what == "stop":
            for s in self._slots_of(msg):
                s.capacity = 0  # takes nothing until it registers again
                self._lose_slot(s, f"engine was {msg.detail} while running this task")
            return
        if msg.what == "lost":  # cluster: its member is gone, and the engine with it
            for s in self.slots.get(msg.engine, ()):
                if s.index == msg.index:
                    s.capacity = 0
                    self._lose_slot(s, f"{msg.detail}; it was running this task")
            self.slots[msg.engine] = [
                s for s in self.slots.get(msg.engine, ()) if s.index != msg.index
            ]
            self.crashes += 1
            self._publish(
                "llmspell.engine.crash",
                {"engine": msg.engine, "index": msg.index, "detail": msg.detail},
            )
            return
        if msg.what != "crash":
            return
        for s in self._slots_of(msg):
            s.capacity = 0  # takes nothing until it registers again
            s.restarts += 1
            self._lose_slot(s, "engine process crashed while running this task")
        self.crashes += 1
        self._publish(
            "llmspell.engine.crash",
            {"engine": msg.engine, "index": msg.index, "detail": msg.detail},
        )

    def _slots_of(self, msg: EngineEvent) -> list[_Slot]:
        """The slot a crash or stop is about: none when its replacement has
        registered already (its ``EngineReady``, sent by the new process, can
        overtake the supervisor's word about the old one; the old one's tasks
        were lost when the new one took its place)."""
        return [
            s
            for s in self.slots.get(msg.engine, ())
            if s.index == msg.index and (not msg.pid or s.pid == msg.pid)
        ]

    def _lose_slot(self, slot: _Slot, message: str) -> None:
        """Everything in flight on ``slot`` is lost: re-run it if it has retries
        left, else fail it with ``message``. Never both, never neither."""
        t = now()
        for task_id in list(slot.running):
            rec = self.tasks.get(task_id)
            slot.running.discard(task_id)
            if rec is None or rec.status is not RUNNING:
                continue
            rec.slot = None
            if rec.sink is not None:
                self._span_event(
                    rec, "llmspell.engine.crash", {"engine": slot.engine, "index": slot.index}
                )
            error = _err(message, engine=slot.engine)
            self.table.apply(Ended(task_id, FAILED, t, error=error, may_retry=True))
        self._dirty.add(slot.engine)

    def on_replaced(self, msg: Replaced, sender: ActorAddress) -> None:
        """A runtime process died and the director restarted it (local mode).
        A new event bus gets this scheduler's own subscription again; a new
        resource tracker learns the engines; what ran on a dead coordinator
        (workflow tasks) or on the engines of a dead supervisor is lost like
        the tasks of a crashed engine: run again per retries, or failed."""
        self.addresses[msg.role] = msg.address
        if msg.role == "events":
            if self._coordination_sub:
                self.send_msg(msg.address, Subscribe("scheduler.hooks", "llmspell.coordination.*"))
        elif msg.role == "resources":
            for slots in self.slots.values():
                for s in slots:
                    if s.engine != "workflow":
                        ready = EngineReady(s.engine, s.index, s.pid, s.capacity, s.restarts)
                        if s.member:  # a cluster member's engine: it measures itself there
                            ready.member, ready.host = s.member, s.host
                        self.send_msg(msg.address, ready)
        elif msg.role in ("coordinator", "supervisor"):
            for engine, slots in self.slots.items():
                if (engine == "workflow") != (msg.role == "coordinator"):
                    continue
                for s in slots:
                    if _lost_with(s.pid, msg):  # not the replacement's, registered already
                        s.capacity = 0  # takes nothing until it registers again
                        self._lose_slot(s, f"{msg.crashed} while running this task")
            self.crashes += 1
            self._publish("llmspell.runtime.restart", {"role": msg.role, "pid": msg.pid})

    def on_crash_engine(self, msg: Any, sender: ActorAddress) -> None:
        for s in self.slots.get(msg.engine, ()):
            if s.index == msg.index:
                self.send_msg(s.address, msg)

    def on_request_stop(self, msg: Any, sender: ActorAddress) -> None:
        self.stop_requested = True

    def on_supervisor_event(self, msg: SupervisorEvent, sender: ActorAddress) -> None:
        if msg.what == "escalate" and not self.degraded:
            self.degraded = f"supervisor {msg.supervisor!r} gave up: {msg.detail}"
            self._gave_up = True
            self._publish("llmspell.runtime.degraded", {"reason": self.degraded})
            self._degrade()

    def _degraded_error(self) -> dict[str, Any]:
        error = _err(f"the runtime is degraded: {self.degraded}", kind="degraded")
        if self._gave_up:
            # a supervisor gave up: this outcome may reach a facade before the
            # supervisor's word does, and tells it so (every call of it then
            # raises RuntimeDegraded); a journal that broke leaves the facade be
            error["gave_up"] = self.degraded
        return error

    def _degrade(self) -> None:
        """The engines' supervisor stopped its engines for good: no engine
        takes work again, so every unfinished task fails now, saying why (a
        retry has nowhere to run)."""
        for slots in self.slots.values():
            for s in slots:
                s.capacity = 0
        error = self._degraded_error()
        t = now()
        for rec in list(self.tasks.values()):
            if rec.status not in TERMINAL:
                self.table.apply(Ended(rec.spec.id, FAILED, t, error=dict(error)))

    # -- submission ---------------------------------------------------------

    def on_submit(self, msg: SubmitTasks, sender: ActorAddress) -> None:
        if self.durable is not None:  # ids and dependencies of earlier processes
            ids = [spec.id for spec in msg.tasks]
            for spec in msg.tasks:
                if spec.deps:
                    ids.extend(spec.deps)
            self._lookup(ids)
        ev = Submitted(
            msg.tasks,
            now(),
            [sender] if msg.notify else None,
            msg.cancelled,
            bool(msg.replayed),
        )
        self.table.apply(ev)
        for task_id, why in ev.rejected:
            self.send_msg(sender, SubmitRejected(task_id, why))
        if ev.known and msg.notify:  # a replayed child: the resumed script waits on it
            self.on_watch(WatchTasks(ev.known), sender)
        tasks, early, traced = self.tasks, self._early, self._sink is not None
        for spec in ev.accepted:
            if spec.kind == "agent":  # its chunks go to whoever submitted it
                self._consumers[spec.id] = sender
                self._extras = True
            if early or traced:
                rec = tasks.get(spec.id)
                if rec is None:
                    continue
                if early and spec.id in early:
                    rec.watchers = [*(rec.watchers or ()), *early.pop(spec.id)]
                if traced:
                    self._trace_open(rec, sender)

    def _route(self, rec: Rec) -> None:
        """A task the table made ready (its dependencies succeeded): queue it
        for its engine, or end it here (an event task, nowhere to run)."""
        spec = rec.spec
        if spec.kind == "event":
            self._publish(spec.name or "", spec.payload, always=True)  # the user's own event
            self._end(rec, SUCCEEDED)
            return
        if not rec.engine and spec.kind in REGISTERED_KINDS and not self._resolve(rec):
            return
        if not rec.engine:
            self._end(rec, FAILED, _err(f"no engine runs {spec.kind!r} tasks yet", kind="failed"))
            return
        if self.degraded:
            self._end(rec, FAILED, self._degraded_error())
            return
        if rec.engine in self.absent:
            self._end(
                rec,
                FAILED,
                _err(
                    f"this runtime has no {rec.engine} engine (Runtime(engines=...) left it "
                    "out), so the task cannot run",
                    kind="failed",
                ),
            )
            return
        if spec.tags:
            if not self.cluster:
                why = "tags=[...] places a task on cluster members; this runtime is no cluster"
                self._end(rec, FAILED, _err(why, kind="failed"))
                return
            self._queue_tagged(rec)
            return
        self.ready[rec.engine].push(spec.priority, spec.id)
        self._dirty.add(rec.engine)

    def _queue_tagged(self, rec: Rec) -> None:
        """Cluster mode: a task with ``tags`` waits in a queue of its own, served
        only by engines of members having all of them; with a timeout it times
        out while it waits (no member with those tags may ever come)."""
        key = f"{rec.engine}#{','.join(rec.spec.tags or ())}"
        self._tagged[rec.engine].add(key)
        self.ready[key].push(rec.spec.priority, rec.spec.id)
        self._dirty.add(key)
        if rec.spec.timeout is not None:
            self._after(rec.spec.timeout, ("waiting", rec.spec.id, rec.attempt))

    # -- dispatch -----------------------------------------------------------

    def _pump(self) -> None:
        t = now()
        tasks = self.tasks
        if self._tagged:  # an engine with room may serve its tagged queues too
            for engine in [e for e in self._dirty if e in self._tagged]:
                self._dirty.update(self._tagged[engine])
        for engine in self._dirty:
            slots = self.slots.get(engine)
            queue = self.ready.get(engine)
            if "#" in engine and queue:  # tagged: the engines of members with all the tags
                name, _, tags = engine.partition("#")
                wanted = frozenset(tags.split(","))
                slots = [s for s in self.slots.get(name, ()) if wanted <= s.tags]
            if not slots or not queue:
                continue
            if len(slots) == 1:
                slot = slots[0]
                room = 0 if slot.paused else slot.capacity - len(slot.running)
                while queue and room > 0:
                    rec = tasks.get(queue.pop())
                    if rec is None or rec.status is not PENDING:
                        continue
                    self._start(rec, slot, t)
                    room -= 1
                continue
            while queue:  # several engines: each task to the least loaded one
                slot = min(slots, key=_load)
                if len(slot.running) >= slot.capacity or slot.paused:
                    break
                rec = tasks.get(queue.pop())
                if rec is None or rec.status is not PENDING:
                    continue
                self._start(rec, slot, t)
        self._dirty.clear()

    def _start(self, rec: Rec, slot: _Slot, t: float) -> None:
        task_id = rec.spec.id
        if self.faults and self._apply_fault(rec, t):
            return
        self.table.dispatch(rec, t)
        rec.slot = slot
        slot.running.add(task_id)
        batch = self._dispatch.get(slot.key)
        if batch is None:
            batch = self._dispatch[slot.key] = (slot.address, [])
        batch[1].append(rec)
        if rec.spec.timeout is not None:
            self._after(rec.spec.timeout, ("timeout", task_id, rec.attempt))
        if rec.attempt == 0:
            if self._wanted is not None:
                self._publish("llmspell.task.running", {"task_id": task_id, "kind": rec.spec.kind})
            if self._extras:
                self._task_hook("task.before", rec, "running")

    # -- injected faults (simulation) ---------------------------------------------------

    def on_inject_faults(self, msg: InjectFaults, sender: ActorAddress) -> None:
        """A task fault names a task id or a glob over ids (``"*:fetch"``) and
        applies to its next ``count`` dispatches (attempts)."""
        for f in msg.faults:
            if f.get("kind") in _TASK_FAULTS and isinstance(f.get("task"), str):
                match = compile_pattern(f["task"]).match
                self.faults.append([match, int(f.get("count") or 1), f])

    def _fault_for(self, task_id: str) -> dict[str, Any] | None:
        for entry in self.faults:
            if entry[1] > 0 and entry[0](task_id):
                entry[1] -= 1
                return dict(entry[2])
        return None

    def _apply_fault(self, rec: Rec, t: float) -> bool:
        """Apply a fault planned for ``rec`` as it would be dispatched; True
        if it is not dispatched now."""
        f = self._fault_for(rec.spec.id)
        if f is None:
            return False
        kind, task_id = f["kind"], rec.spec.id
        self._publish(f"llmspell.fault.{kind}", {"task_id": task_id})
        if kind == "slow_step":
            delay = float(f.get("delay") or 0.0)
            self._after(delay, ("retry", task_id, rec.attempt))
            return True
        table = self.table
        table.apply(Dispatched(task_id, rec.attempt, t))
        if kind == "task_timeout":
            error = _err("injected fault: task timed out", kind="timeout")
            table.apply(Ended(task_id, TIMED_OUT, t, error=error))
            return True
        if kind == "script_error":
            error = _err("injected fault: script error", kind="script", engine=rec.engine)
        else:
            error = _err(
                "injected fault: resource limit exceeded", kind="resource", engine=rec.engine
            )
        # a failure like any other: retried as one
        table.apply(Ended(task_id, FAILED, t, error=error, may_retry=True))
        return True

    def flush(self) -> None:
        timers = self._timers
        if timers and timers[0][0] <= monotonic():  # due, whatever became of its wake-up
            self._fire_timers()
        self._settle()
        if self._hooks_due:
            self._run_hooks()
            self._settle()
        while self._dirty:
            self._pump()
            self._settle()
            if self._hooks_due:  # task.before of what was just started, task.after ...
                self._run_hooks()
                self._settle()
        # ---- the commit point: everything the table logged for this message is
        # made durable HERE, before anything below is sent (dispatches, outcomes,
        # stops, replies, published events).
        self._commit_log()
        if self._replies:
            replies, self._replies = self._replies, []
            for addr, reply in replies:
                self.send_msg(addr, reply)
        if self._stops:
            stops, self._stops = self._stops, []
            for addr, stop in stops:
                self.send_msg(addr, stop)
        if self._dispatch:
            batches, self._dispatch = self._dispatch, {}
            for addr, recs in batches.values():
                for i in range(0, len(recs), 500):
                    chunk = recs[i : i + 500]
                    if self.durable is not None and self.durable.calls:
                        self._dispatch_replays(addr, chunk)
                        continue
                    self.send_msg(
                        addr, DispatchBatch([r.spec for r in chunk], [r.attempt for r in chunk])
                    )
        if self._spans:
            spans, self._spans = self._spans, {}
            for key, (addr, items) in spans.items():
                for i in range(0, len(items), 1000):
                    seq = self._span_seq.get(key, 0)
                    self._span_seq[key] = seq + 1
                    self.send_msg(addr, SpanRecords(seq, items[i : i + 1000]))
        if self._out:
            out, self._out = self._out, {}
            self._last_watcher = self._last_batch = None
            for addr, outcomes in out.values():
                if self._host is None and len(outcomes) > 1:
                    self._send_outcomes(addr, outcomes)
                    continue
                for i in range(0, len(outcomes), 500):
                    self.send_msg(addr, TaskOutcomes(outcomes[i : i + 500]))
        if self._events and "events" in self.addresses:
            events, self._events = self._events, []
            self.send_msg(self.addresses["events"], PublishBatch(events))
        else:
            self._events.clear()

    def _send_outcomes(self, addr: ActorAddress, outcomes: list[TaskOutcome]) -> None:
        """(A process of its own) ``TaskOutcomes`` of at most 500 outcomes and
        about half ``max_frame_bytes`` each: outcomes that each fit in a frame but
        not together (big values, several ended in one turn) are never one
        message too large to send, which nobody would hear of."""
        budget = self._max_frame // 2
        parts: list[bytes] = []
        used = 0
        for o in outcomes:
            part = encode_item(o)
            if parts and (used + len(part) > budget or len(parts) == 500):
                self.send(addr, encode_with_items(TaskOutcomes, parts))
                parts, used = [], 0
            parts.append(part)
            used += len(part)
        if parts:
            self.send(addr, encode_with_items(TaskOutcomes, parts))

    def _dispatch_replays(self, addr: ActorAddress, chunk: list[Rec]) -> None:
        """Dispatch ``chunk`` with the host calls their scripts replay, in
        batches of at most half ``max_frame_bytes`` of records each (resumed
        scripts carry every result they had: 500 in one frame could exceed it)."""
        assert self.durable is not None
        replays = self.durable.replays(r.spec.id for r in chunk)
        if replays is None:
            self.send_msg(addr, DispatchBatch([r.spec for r in chunk], [r.attempt for r in chunk]))
            return
        budget = self._max_frame // 2
        start, used = 0, 0
        for i, replay in enumerate(replays):
            size = _size(replay) if replay else 0
            if i > start and used + size > budget:
                part = chunk[start:i]
                self.send_msg(
                    addr,
                    DispatchBatch(
                        [r.spec for r in part], [r.attempt for r in part], replays[start:i]
                    ),
                )
                start, used = i, 0
            used += size
        part = chunk[start:]
        self.send_msg(
            addr, DispatchBatch([r.spec for r in part], [r.attempt for r in part], replays[start:])
        )

    def on_poison(self, original: Any, sender: ActorAddress) -> None:
        """A dispatch that could not be delivered (too large for a frame, an
        engine gone): its tasks fail saying why, rather than run for ever."""
        try:
            msg = decode(original) if isinstance(original, bytes) else None
        except MessageError:
            return
        if not isinstance(msg, DispatchBatch):
            return
        t = now()
        for spec, attempt in zip(msg.tasks, msg.attempts, strict=False):
            rec = self.tasks.get(spec.id)
            if rec is None or rec.status is not RUNNING or rec.attempt != attempt:
                continue
            message = (
                "the task could not be sent to its engine (with the host calls it "
                "replays, it is larger than max_frame_bytes, or the engine is gone)"
            )
            self.table.apply(Ended(spec.id, FAILED, t, error=_err(message, engine=rec.engine)))

    # -- results ------------------------------------------------------------

    def _commit_log(self) -> None:
        """Make the table's log and the host calls recorded by this message
        durable (``llmspell.actors.durable``). Without a journal the log is
        None and this costs nothing. A journal that cannot be written any more
        degrades the runtime: its unfinished tasks stay unfinished in the file
        (the next runtime on it resumes them) and fail here, saying why."""
        durable = self.durable
        if durable is None:
            return
        try:
            durable.commit()
        except JournalError as exc:
            # Nothing this message did is in the file: none of it may be seen. No
            # dispatch goes out (the tasks fail below, as every unfinished one), no
            # event is published, and a task whose end was not written reads failed
            # here (the next runtime on the journal runs it again).
            self._dispatch.clear()
            self._events.clear()
            if durable.unwritten:
                error = _err(
                    f"the runtime is degraded: the journal cannot be used: {exc} "
                    "(this task's end was not recorded)",
                    kind="degraded",
                )
                lost = set(durable.unwritten)
                self.table.apply(Unrecorded(durable.unwritten, error))
                for _, outcomes in self._out.values():
                    for i, o in enumerate(outcomes):
                        if o.task_id in lost:
                            outcomes[i] = TaskOutcome(o.task_id, "failed", None, dict(error))
            self._journal_failed(exc)

    def on_exit(self) -> None:
        if self.durable is not None:  # what was not committed is dropped, as in a crash
            self.durable.close()
            self.durable = None
        if self._lanes is not None:
            self._lanes.close()

    def on_lane_ask(self, msg: LaneAsk, sender: ActorAddress) -> None:
        """An engine or a facade of this host asks for a lane (``_lanes``): offered
        where this process can listen on one; else it stays on Thespian."""
        lanes = self.open_lanes(self._max_frame)
        offer = lanes.offer(sender) if lanes is not None else None
        if offer is not None:
            self.send_msg(sender, LaneOffer(*offer))

    def _journal_failed(self, exc: JournalError) -> None:
        log.error("scheduler: %s; the runtime is degraded", exc)
        if self.durable is not None:
            self.durable.close()
            self.durable = None
        self.table.log = None
        if not self.degraded:
            self.degraded = f"the journal cannot be used: {exc}"
            self._publish("llmspell.runtime.degraded", {"reason": self.degraded})
            self._degrade()
            self._settle()

    def on_host_calls(self, msg: HostCalls, sender: ActorAddress) -> None:
        """Host calls of script tasks (only with a journal): recorded, and
        replayed when the task runs again; an ``emit`` is published here, once,
        after it is journaled."""
        durable = self.durable
        if durable is None:
            return
        tasks = self.tasks
        for item in msg.items:
            if not isinstance(item, list) or len(item) != 8 or not isinstance(item[2], int):
                log.warning("scheduler: a malformed host call record was dropped: %.200r", item)
                continue
            rec = tasks.get(item[0]) if isinstance(item[0], str) else None
            if rec is None or rec.status is not RUNNING or rec.attempt != item[1]:
                continue  # late: the task ended or runs again
            try:
                new = durable.host_call(item)
            except (MessageError, TypeError, ValueError) as exc:
                log.warning(
                    "scheduler: host call %s of task %s not recorded: %s", item[2], item[0], exc
                )
                continue
            call = item[4]
            if item[3] == "emit" and new and isinstance(call, dict) and "events" in self.addresses:
                self._events.append(Publish(str(call.get("name")), call.get("payload"), now()))

    def on_engine_results(self, msg: EngineResults, sender: ActorAddress) -> None:
        tasks, ran, t = self.tasks, self.table.ran, now()
        for o in msg.items:
            rec = tasks.get(o.task_id)
            if rec is None or rec.status is not RUNNING or o.attempt != rec.attempt:
                continue  # late: the task already ended (cancel, timeout) or was retried
            usage = o.usage
            if usage is not None and ("spans" in usage or "first_chunk" in usage):
                self._take_extras(rec, usage)
            # a replay that diverged would diverge again: not retried
            retry = o.error is None or o.error.get("kind") not in ("divergence", "replay_end")
            ran(rec, o, t, retry)
            if rec.status is PENDING and self.durable is not None:  # to be retried
                self.durable.failed_run(o.task_id)

    def _end(
        self, rec: Rec, status: TaskStatus, error: dict[str, Any] | None = None, value: Any = None
    ) -> None:
        self.table.apply(Ended(rec.spec.id, status, now(), value, error))

    def _settle(self) -> None:
        """Carry out what the table left to do, until it leaves nothing (what
        is done here may apply more events: a hook fan-in ends its Task.hook,
        a ready task with nowhere to run fails)."""
        table = self.table
        while table.ended or table.ready or table.retried or table.warnings:
            if table.ended:
                ended, table.ended = table.ended, []
                for rec in ended:
                    self._on_end(rec)
            if table.retried:
                retried, table.retried = table.retried, []
                for rec, delay in retried:
                    self._on_retry(rec, delay)
            if table.ready:
                ready, table.ready = table.ready, []
                for rec in ready:
                    if rec.status is PENDING:
                        self._route(rec)
            if table.warnings:
                for message in table.warnings:
                    log.warning("%s", message)
                table.warnings.clear()

    def _on_retry(self, rec: Rec, delay: float) -> None:
        error = rec.errors[-1] if rec.errors else "failed"
        if rec.sink is not None:
            self._span_event(rec, "llmspell.task.retry", {"attempt": rec.attempt, "error": error})
        self._release(rec)
        self._publish(
            "llmspell.task.retry",
            {"task_id": rec.spec.id, "attempt": rec.attempt, "error": error},
        )
        if self._extras:
            self._task_hook("task.retry", rec, "pending", error=error)
        # exponential backoff between attempts (the table's figure)
        if delay > 0:
            self._after(delay, ("retry", rec.spec.id, rec.attempt))
        else:
            self._requeue(rec)

    def _requeue(self, rec: Rec) -> None:
        if rec.spec.tags:
            self._queue_tagged(rec)
            return
        self.ready[rec.engine].push(rec.spec.priority, rec.spec.id)
        self._dirty.add(rec.engine)

    def _release(self, rec: Rec) -> None:
        slot = rec.slot
        if slot is not None:
            slot.running.discard(rec.spec.id)
            self._dirty.add(slot.engine)
            rec.slot = None

    def _on_end(self, rec: Rec) -> None:
        """Tell the world that ``rec`` ended: free its engine slot (and stop it
        there if it was cancelled or timed out), tell its watchers, metrics,
        traces, events, hooks."""
        status = rec.status
        outcome = rec.outcome
        slot = rec.slot
        if slot is not None:
            slot.running.discard(rec.spec.id)
            self._dirty.add(slot.engine)
            rec.slot = None
            if status is CANCELLED or status is TIMED_OUT:
                reason = "timed out" if status is TIMED_OUT else "cancelled"
                self._stops.append((slot.address, StopTasks([rec.spec.id], reason)))
        error = outcome.error if outcome is not None else None
        t = rec.ended_at if rec.ended_at is not None else now()
        if self._metrics is not None:
            self._metrics.ended(rec, status, t)
        if rec.sink is not None:
            self._trace_close(rec, status, t, error)
        if rec.watchers is not None and outcome is not None:
            for w in rec.watchers:
                self._notify(w, outcome)
            rec.watchers = None
        if self._wanted is not None:
            self._publish(
                f"llmspell.task.{status}",
                {"task_id": rec.spec.id, "kind": rec.spec.kind, "status": status},
            )
        if self._extras:
            self._finished(rec, status, error)

    def _notify(self, watcher: ActorAddress, outcome: TaskOutcome) -> None:
        # the same watcher gets most outcomes in a row: skip str(address) then
        last = self._last_batch
        if watcher is self._last_watcher and last is not None:
            last.append(outcome)
            return
        batch = self._out.setdefault(addr_key(watcher), (watcher, []))[1]
        batch.append(outcome)
        self._last_watcher, self._last_batch = watcher, batch

    # -- cancel, timeout ----------------------------------------------------

    def on_cancel(self, msg: CancelTasks, sender: ActorAddress) -> None:
        # a cancel is a cancel (TaskCancelled), for an attached client too: only the
        # runtime's shutdown (on_shutdown) marks what it ends for RuntimeClosed
        ev = Cancelled(msg.task_ids, msg.reason, now(), early=bool(msg.ref))
        self.table.apply(ev)
        if msg.ref:  # sent in flush, once the cancels are committed
            self._replies.append((sender, CancelReply(msg.ref, ev.done)))

    # -- timers -------------------------------------------------------------

    def _after(self, delay: float, payload: tuple[Any, ...]) -> None:
        """Handle ``payload`` (``_on_timer``) ``delay`` s from now.

        The scheduler keeps its timers in one heap and asks Thespian for one
        wake-up per distinct earliest due time, not one per timer: a thousand
        retries of a crashed engine's tasks come due as one message, one flush,
        one dispatch per engine (they were a thousand messages, each flushed
        alone, and the flood of one-task dispatches could fill Thespian's
        transmit queue). A due timer also fires on the next message handled,
        so a wake-up that never comes delays it no longer than that."""
        due = monotonic() + max(0.0, delay)
        heapq.heappush(self._timers, (due, next(self._timer_seq), payload))
        self._arm()

    def _arm(self) -> None:
        """A wake-up at the earliest timer's due time, unless one is armed for
        then or earlier (one that is long overdue is taken for lost)."""
        if not self._timers:
            return
        due = self._timers[0][0]
        armed = self._armed
        if armed:
            first = min(armed)
            if first <= due:
                if first > monotonic() - _TICK_LOST:
                    return
                armed.discard(first)  # lost on the way: arm another
        armed.add(due)
        self.wake_after(due - monotonic(), ("tick", due))

    def _fire_timers(self, until: float = 0.0) -> None:
        """Handle every timer due by now, or by ``until`` if that is at most a
        millisecond ahead: a wake-up armed for a due time is that time come,
        whatever a clock's rounding says (a simulation's epoch-scale virtual
        clock cannot move by a re-armed 1e-9 s); one that came earlier than
        that is armed again."""
        t = monotonic()
        timers, t = self._timers, max(t, min(until, t + _TICK_EARLY))
        try:
            while timers and timers[0][0] <= t:
                self._on_timer(heapq.heappop(timers)[2])
            if len(timers) > _TIMERS_PRUNE and len(timers) > 4 * len(self.tasks):
                # time-outs of tasks long ended: keep the heap the size of the work
                live = [x for x in timers if self._timer_live(x[2])]
                heapq.heapify(live)
                self._timers = live
        finally:  # (a handler that raised must not leave the rest without a wake-up)
            self._arm()

    def _timer_live(self, payload: tuple[Any, ...]) -> bool:
        if payload[0] == "watch":
            return True
        rec = self.tasks.get(payload[1])
        return rec is not None and rec.status not in TERMINAL and rec.attempt == payload[2]

    def on_wakeup(self, payload: Any) -> None:
        if isinstance(payload, tuple) and payload and payload[0] == "tick":
            self._armed.discard(payload[1])
            self._fire_timers(payload[1])
            return
        self._on_timer(payload)

    def _on_timer(self, payload: Any) -> None:
        if isinstance(payload, tuple) and payload and payload[0] == "watch":
            unknown = _err(f"unknown task id {payload[1]!r}")
            for watcher in self._early.pop(payload[1], ()):
                self._notify(watcher, TaskOutcome(payload[1], "failed", error=unknown))
            return
        if isinstance(payload, tuple) and payload and payload[0] == "retry":
            _, task_id, attempt = payload
            rec = self.tasks.get(task_id)
            if rec is not None and rec.status is PENDING and rec.attempt == attempt:
                self._requeue(rec)
            return
        if isinstance(payload, tuple) and payload and payload[0] == "timeout":
            _, task_id, attempt = payload
            rec = self.tasks.get(task_id)
            if rec is not None and rec.status is RUNNING and rec.attempt == attempt:
                limit = rec.spec.timeout
                message = f"task did not finish within its timeout of {limit:g} s"
                self._end(rec, TIMED_OUT, _err(message, kind="timeout"))
            return
        if isinstance(payload, tuple) and payload and payload[0] == "waiting":
            _, task_id, attempt = payload  # cluster: still no member with its tags
            rec = self.tasks.get(task_id)
            if rec is not None and rec.status is PENDING and rec.attempt == attempt:
                message = (
                    f"task did not start within its timeout of {rec.spec.timeout:g} s: "
                    f"{self._waiting_for(rec)}"
                )
                self._end(rec, TIMED_OUT, _err(message, kind="timeout"))

    def _waiting_for(self, rec: Rec) -> str:
        """Why a ready task of a cluster has not started (for status and time-outs)."""
        tags = rec.spec.tags or []
        if not any(s.capacity for s in self.slots.get(rec.engine, ())):
            return f"no cluster member offers the {rec.engine} engine"
        if tags and not any(
            frozenset(tags) <= s.tags and s.capacity for s in self.slots.get(rec.engine, ())
        ):
            return f"no cluster member with tags {tags} offers the {rec.engine} engine"
        return "waiting for a free engine"

    # -- watching, progress, queries ----------------------------------------

    def _lookup(self, task_ids: list[str]) -> None:
        """Tasks of earlier processes on the journal among ``task_ids`` become
        tombstones in the table (a journal that cannot be read degrades)."""
        if self.durable is None:
            return
        try:
            self.durable.lookup(task_ids)
        except JournalError as exc:
            self._journal_failed(exc)

    def on_watch(self, msg: WatchTasks, sender: ActorAddress) -> None:
        if self.durable is not None:
            self._lookup(list(msg.task_ids))
        for task_id in msg.task_ids:
            rec = self.tasks.get(task_id)
            if rec is None and task_id in self.table.gone:
                status, value, error, _ = self.table.gone[task_id]
                self._notify(sender, TaskOutcome(task_id, status, value, error))
            elif rec is None:  # its submit may still be on the way: wait a little
                self._early.setdefault(task_id, []).append(sender)
                self._after(_EARLY_WATCH_GRACE, ("watch", task_id))
            elif rec.outcome is not None:
                self._notify(sender, rec.outcome)
            elif rec.watchers is None:
                rec.watchers = [sender]
            elif sender not in rec.watchers:
                rec.watchers = [*rec.watchers, sender]

    def on_progress_batch(self, msg: ProgressBatch, sender: ActorAddress) -> None:
        for p in msg.items:
            rec = self.tasks.get(p.task_id)
            if rec is None:
                continue
            # A report for a task that already ended was sent before its end and
            # overtaken by it (multiprocTCPBase does not keep the order of messages
            # between two actors): it still counts.
            prog = rec.progress or {}
            if p.completed_steps is not None:
                prog["completed_steps"] = p.completed_steps
            if p.total_steps is not None:
                prog["total_steps"] = p.total_steps
            if p.current_operation is not None:
                prog["current_operation"] = p.current_operation
            if p.usage is not None:
                prog["resource_usage"] = p.usage
            prog["reported_at"] = now()
            rec.progress = prog

    def on_query_status(self, msg: QueryStatus, sender: ActorAddress) -> None:
        if self.durable is not None:
            self._lookup(list(msg.task_ids))
        status = self.table.status
        statuses = {task_id: status(task_id) for task_id in msg.task_ids}
        self.send_msg(sender, StatusReply(msg.ref, statuses))

    def on_query_progress(self, msg: QueryProgress, sender: ActorAddress) -> None:
        rec = self.tasks.get(msg.task_id)
        self.send_msg(sender, ProgressReply(msg.ref, msg.task_id, self._progress_of(rec)))

    def _progress_of(self, rec: Rec | None) -> dict[str, Any] | None:
        if (
            rec is not None
            and rec.status is PENDING
            and rec.progress is None
            and (rec.spec.tags or any(s.member for s in self.slots.get(rec.engine, ())))
        ):  # cluster: a task waiting to be placed says why
            return {
                "current_operation": f"waiting: {self._waiting_for(rec)}",
                "resource_usage": {},
                "estimated_completion": None,
            }
        if rec is None or (rec.progress is None and rec.outcome is None):
            return None
        prog = dict(rec.progress or {})
        usage = dict(prog.get("resource_usage") or {})
        if rec.outcome is not None and rec.outcome.usage:
            usage.update(rec.outcome.usage)
            if "chunks" in usage:  # an agent's final count rides with its outcome
                prog["completed_steps"] = usage.pop("chunks")
        elif rec.started_at is not None:
            usage["duration"] = now() - rec.started_at
        prog["resource_usage"] = usage
        prog["estimated_completion"] = self._eta(rec, prog)
        prog.pop("reported_at", None)
        return prog

    @staticmethod
    def _eta(rec: Rec, prog: dict[str, Any]) -> float | None:
        if rec.ended_at is not None:
            return rec.ended_at
        done, total = prog.get("completed_steps"), prog.get("total_steps")
        if rec.started_at is None or not done or not total or done <= 0:
            return None
        elapsed = prog.get("reported_at", now()) - rec.started_at
        rate = done / elapsed if elapsed > 0 else 0.0
        if rate <= 0:
            return None
        t = now()
        return float(t + max(0.0, (total - done) / rate - (t - prog["reported_at"])))

    def on_query_stats(self, msg: QueryStats, sender: ActorAddress) -> None:
        running = sum(1 for r in self.tasks.values() if r.status is RUNNING)
        pending = sum(1 for r in self.tasks.values() if r.status is PENDING)
        counts = self.table.counts
        engines = [
            {
                "engine": s.engine,
                "index": s.index,
                "pid": s.pid,
                "restarts": s.restarts,
                "running": len(s.running),
                "capacity": s.capacity,
                "paused": s.paused,
                "host": s.host,
                **({"member": s.member, "tags": sorted(s.tags)} if s.member else {}),
            }
            for name, slots in self.slots.items()
            if name in _SCRIPT_AND_PYTHON
            for s in slots
        ]
        coordinators = self.slots.get("workflow", [])
        stats = {
            "submitted": counts["submitted"],
            "running": running,
            "pending": pending,
            "succeeded": counts["succeeded"],
            "failed": counts["failed"],
            "cancelled": counts["cancelled"],
            "timed_out": counts["timed_out"],
            "retries": counts["retries"],
            "restarts": sum(s.restarts for slots in self.slots.values() for s in slots),
            "queued": {e: len(q) for e, q in self.ready.items()},
            "engines": engines,
            "coordinations_running": sum(len(s.running) for s in coordinators),
            "bad_messages": self.bad_messages,
            "crashes": self.crashes,
            "degraded": self.degraded or None,
            "stop_requested": self.stop_requested,
            "hooks": dict(
                self.hook_counts, registered=sum(len(h) for h in self.registry.hooks.values())
            ),
            "registered": {
                "tools": sorted(self.registry.tools),
                "agents": sorted(self.registry.agents),
                "executors": sorted(self.registry.executors),
            },
        }
        self.send_msg(sender, StatsReply(msg.ref, stats))

    # -- shutdown -----------------------------------------------------------

    def on_shutdown(self, msg: Any, sender: ActorAddress) -> None:
        if self._lanes is not None:
            # what it sends from now on (the cancels below) goes through Thespian, as
            # the director's word to attached clients that the runtime stops does: it
            # comes first, as before lanes; what is on a lane is read to its end
            self._lanes.close(drain_for=1.0)
        if self.durable is not None:
            # With a journal, closing the runtime is not the end of its tasks: they
            # stay unfinished in the file, and the next runtime on it resumes them.
            # Here they end cancelled for this process's waiters only.
            self.durable.close()
            self.durable = None
        t = now()
        for rec in list(self.tasks.values()):
            if rec.status not in TERMINAL:
                error = _err(msg.reason, kind="cancelled")
                # the runtime's shutdown: a client attached to a served runtime
                # raises RuntimeClosed for it (the outcome may reach it before the
                # director's word that the runtime stopped)
                error["shutdown"] = True
                self.table.apply(Ended(rec.spec.id, CANCELLED, t, error=error))

    def _publish(self, name: str, payload: Any, always: bool = False) -> None:
        # Lifecycle events cost per task: publish only what someone subscribed to.
        wanted = self._wanted
        if (always or (wanted is not None and wanted(name))) and "events" in self.addresses:
            self._events.append(Publish(name, payload, now()))

    def on_event_interest(self, msg: EventInterest, sender: ActorAddress) -> None:
        # Only patterns that can match one of our names ("llmspell.…") matter, and the
        # matcher is rebuilt only when they change: scripts waiting on thousands of
        # patterns of their own used to rebuild it per subscription (quadratic).
        before = len(self._interest)
        added = [p for p in msg.added if _could_be_ours(p) and p not in self._interest]
        self._interest.update(added)
        self._interest.difference_update(msg.removed)
        if added or len(self._interest) != before:
            if self._interest:
                joined = "|".join(f"(?:{compile_pattern(p).pattern})" for p in self._interest)
                self._wanted = re.compile(joined).match
            else:
                self._wanted = None
        if msg.ref:
            self.send_msg(sender, Ack(msg.ref))

    # -- registrations, hooks, streams, engine load ------------------------------------

    def on_register(self, msg: Register, sender: ActorAddress) -> None:
        restored = self._restored_hooks
        if msg.what == "hook" and (msg.name, msg.target) in restored:
            # the journal gave it back already: registered again by the resumed
            # application, it still runs once
            restored.remove((msg.name, msg.target))
            error = None
        else:
            error = self.registry.register(msg.what, msg.name, msg.target)
        if error is None and msg.what == "hook":
            self._hook_registered(msg.name)
        if error is None and self.durable is not None:
            self.durable.registered(msg.what, msg.name, msg.target)
            self._replies.append((sender, Registered(msg.ref, error)))  # once journaled
            return
        self.send_msg(sender, Registered(msg.ref, error))

    def _hook_registered(self, point: str) -> None:
        self._extras = True
        bus = self.addresses.get("events")
        if point.startswith("coordination.") and not self._coordination_sub and bus:
            # aggregators publish llmspell.coordination.before/after on the bus
            self._coordination_sub = True
            self.send_msg(bus, Subscribe("scheduler.hooks", "llmspell.coordination.*"))

    def _resolve(self, rec: Rec) -> bool:
        """Fill in a tool/agent/custom task from its registration (True), or
        fan a ``Task.hook`` out / fail the task (False)."""
        spec = rec.spec
        if spec.kind == "hook":
            self._fan_out(rec)
            return False
        try:
            rec.engine = self.registry.resolve(spec)
        except RegistryError as exc:
            self._end(rec, FAILED, _err(str(exc)))
            return False
        return True

    def _fan_out(self, rec: Rec) -> None:
        """A submitted ``Task.hook(point)``: one hook task per hook at ``point``;
        its value is their values in registration order (None where one failed)."""
        spec = rec.spec
        targets = self.registry.hooks.get(spec.name or "", [])
        if not targets:
            self._end(rec, SUCCEEDED, value=[])
            return
        self.table.apply(Dispatched(spec.id, rec.attempt, now()))
        self._fanin[spec.id] = [len(targets), [None] * len(targets)]
        payload = spec.payload if spec.payload is not None else {}
        if isinstance(payload, dict):
            payload = dict(payload, point=spec.name)
        for i, target in enumerate(targets):
            child = self._spawn_hook(spec.name or "", payload, target, spec.id)
            self._hook_parent[child.spec.id] = (spec.id, i)

    def _hook(self, point: str, payload: dict[str, Any]) -> None:
        if point in self.registry.hooks:
            self._hooks_due.append((point, {**payload, "point": point}))

    def _task_hook(self, point: str, rec: Rec, status: str, **extra: Any) -> None:
        spec = rec.spec
        if spec.kind == "hook" or spec.id in self._hook_ids:
            return
        if spec.parent is not None and spec.parent in self._hook_ids:
            self._hook_ids.add(spec.id)  # submitted by a hook: no hooks for it either
            return
        if point not in self.registry.hooks:
            return
        payload: dict[str, Any] = {
            "point": point,
            "task_id": spec.id,
            "kind": spec.kind,
            "status": status,
            "attempt": rec.attempt,
        }
        if spec.name is not None:
            payload["name"] = spec.name
        if spec.parent is not None:
            payload["parent"] = spec.parent
        payload.update(extra)
        self._hooks_due.append((point, payload))

    def _run_hooks(self) -> None:
        due, self._hooks_due = self._hooks_due, []
        for point, payload in due:
            for target in self.registry.hooks.get(point, ()):
                self._spawn_hook(point, payload, target, None)

    def _spawn_hook(
        self, point: str, payload: Any, target: dict[str, Any], parent: str | None
    ) -> Rec:
        spec = TaskSpec(
            id=new_task_id(),
            kind="hook",
            name=point,
            payload=payload,
            timeout=_HOOK_TIMEOUT,
            parent=parent,
        )
        # made ready by the table, routed in _settle (so after its engine is set here)
        self.table.apply(Submitted([spec], now(), durable=False))
        rec = self.tasks[spec.id]
        rec.engine = self.registry.hook_task(spec, target)
        self._hook_ids.add(spec.id)
        self.hook_counts["runs"] += 1
        if self._sink is not None:
            self._trace_open(rec, None)
        return rec

    def _finished(self, rec: Rec, status: str, error: dict[str, Any] | None) -> None:
        """Hooks, fan-in and stream bookkeeping of a task that just ended."""
        spec = rec.spec
        if self._consumers:
            consumer = self._consumers.pop(spec.id, None)
            if consumer is not None:
                self._late[spec.id] = consumer
                if len(self._late) > _LATE_KEPT:
                    del self._late[next(iter(self._late))]
        fan = self._fanin.pop(spec.id, None) if spec.kind == "hook" else None
        if fan is not None:  # a Task.hook ended (e.g. cancelled) before its hooks
            return
        parent = self._hook_parent.pop(spec.id, None)
        if spec.kind == "hook" and spec.id in self._hook_ids:
            if status != "succeeded":
                self.hook_counts["errors"] += 1
                message = (error or {}).get("message", status)
                log.warning("hook %s at %s (%s): %s", spec.id, spec.name, status, message)
            if parent is not None:
                self._fan_in(parent, rec, status)
            return
        message = str((error or {}).get("message", "")) if error else None
        extra: dict[str, Any] = {}
        if message:
            extra["error"] = message
            extra["error_kind"] = str((error or {}).get("kind", "failed"))
        self._task_hook("task.after", rec, status, **extra)
        if status in ("failed", "timed_out"):
            self._task_hook("task.error", rec, status, **extra)

    def _fan_in(self, parent: tuple[str, int], child: Rec, status: str) -> None:
        parent_id, i = parent
        fan = self._fanin.get(parent_id)
        if fan is None:
            return
        if status == "succeeded" and child.outcome is not None:
            fan[1][i] = child.outcome.value
        fan[0] -= 1
        if fan[0] == 0:
            del self._fanin[parent_id]
            prec = self.tasks.get(parent_id)
            if prec is not None:
                self._end(prec, SUCCEEDED, value=fan[1])

    def on_event_delivery(self, msg: EventDelivery, sender: ActorAddress) -> None:
        """Coordination events from the bus: run the coordination hooks."""
        for ev in msg.events:
            point = str(ev.get("name", "")).removeprefix("llmspell.")
            if point in ("coordination.before", "coordination.after"):
                payload = ev.get("payload")
                self._hook(point, dict(payload, point=point) if isinstance(payload, dict) else {})

    def on_stream_chunks(self, msg: StreamChunks, sender: ActorAddress) -> None:
        rec = self.tasks.get(msg.task_id)
        if rec is None:
            return
        if rec.status != "running":
            # the last batch of the attempt that ended the task, overtaken by its
            # result, still goes to the reader (who waits for the count it was told);
            # any other attempt's chunks are stale (the engine was told to stop it)
            late = self._late.get(msg.task_id)
            if late is not None and rec.status in TERMINAL and msg.attempt == rec.attempt:
                self.send_msg(late, msg)
            return
        consumer = self._consumers.get(msg.task_id)
        if consumer is None:  # nobody to hold the producer for
            self.send_msg(sender, StreamAck(msg.task_id, msg.seq + len(msg.chunks)))
        else:
            self.send_msg(consumer, msg)

    def on_stream_ack(self, msg: StreamAck, sender: ActorAddress) -> None:
        rec = self.tasks.get(msg.task_id)
        if rec is not None and rec.slot is not None:
            self.send_msg(rec.slot.address, msg)

    def on_engine_load(self, msg: EngineLoad, sender: ActorAddress) -> None:
        for s in self.slots.get(msg.engine, ()):
            if s.index == msg.index:
                s.paused = msg.over
        self._dirty.add(msg.engine)

    # -- traces, metrics, task listing (llmspell._tracing, llmspell._metrics) ----------

    def on_trace_to(self, msg: TraceTo, sender: ActorAddress) -> None:
        key = addr_key(sender)
        if msg.on:
            self._sinks[key] = sender
            self._span_seq[key] = 0
            self._sink = sender
        else:
            self._sinks.pop(key, None)
            self._span_seq.pop(key, None)
            self._spans.pop(key, None)
            self._sink = next(reversed(self._sinks.values()), None) if self._sinks else None
        self.send_msg(sender, Ack(msg.ref))

    def _trace_open(self, rec: Rec, sender: ActorAddress | None) -> None:
        """Note who traces ``rec``: the facade that submitted it, else its parent's,
        else the last one that asked. Its span record is sent when it ends; its
        parent's "open" record now, if not sent yet (the child's span names it)."""
        sink = None
        parent = self.tasks.get(rec.spec.parent) if rec.spec.parent is not None else None
        if sender is not None:
            key = addr_key(sender)
            if key in self._sinks:
                sink = (sender, key)
        if sink is None and parent is not None:
            sink = parent.sink
        if sink is None and self._sink is not None:
            sink = (self._sink, addr_key(self._sink))
        rec.sink = sink
        if parent is not None and parent.sink is not None and parent.spec.id not in self._opened:
            self._opened.add(parent.spec.id)
            spec = parent.spec
            item: list[Any] = ["open", spec.id, spec.kind, _span_name(spec), spec.parent]
            item += (spec.trace, parent.submitted_at)
            self._span_item(parent, item)

    def _trace_close(self, rec: Rec, status: str, t: float, error: dict[str, Any] | None) -> None:
        spec = rec.spec
        attempts = rec.attempt + 1 if rec.started_at is not None else 0
        events = self._span_events.pop(spec.id, None) if self._span_events else None
        extras = self._span_events.pop("spans:" + spec.id, None) if self._span_events else None
        if spec.id in self._opened:
            self._opened.discard(spec.id)
            item = ["close", spec.id, status, t, attempts, error, events, extras]
        else:
            item = [
                "span",
                spec.id,
                spec.kind,
                _span_name(spec),
                spec.parent,
                spec.trace,
                rec.submitted_at,
                status,
                t,
                attempts,
                error,
                events,
                extras,
            ]
        self._span_item(rec, item)

    def _span_item(self, rec: Rec, item: list[Any]) -> None:
        sink = rec.sink
        if sink is None:
            return
        out = self._spans.get(sink[1])
        if out is None:
            if sink[1] not in self._sinks:  # that facade stopped tracing
                rec.sink = None
                return
            out = self._spans[sink[1]] = (sink[0], [])
        out[1].append(item)

    def _span_event(self, rec: Rec, name: str, attrs: dict[str, Any]) -> None:
        self._span_events.setdefault(rec.spec.id, []).append([name, now(), attrs])

    def _take_extras(self, rec: Rec, usage: dict[str, Any]) -> None:
        """An engine's figures for traces and metrics, off the task's usage: the
        spans of its model requests and an agent's time to its first chunk."""
        spans = usage.pop("spans", None)
        first = usage.pop("first_chunk", None)
        if rec.sink is not None and isinstance(spans, list) and spans:
            self._span_events.setdefault("spans:" + rec.spec.id, []).extend(spans)
        if self._metrics is not None and isinstance(first, (int, float)):
            self._metrics.first_chunk.observe(float(first))

    def on_query_tasks(self, msg: QueryTasks, sender: ActorAddress) -> None:
        if msg.metrics:
            figures = self._metric_figures()
            self.send_msg(sender, TasksReply(msg.ref, [], figures))
            return
        want = msg.status
        rows = [
            [
                r.spec.id,
                r.spec.kind,
                r.status,
                r.attempt + 1 if r.started_at is not None else 0,
                r.submitted_at,
                r.ended_at,
            ]
            for r in self.tasks.values()
            if want is None or r.status == want
        ]
        if self.durable is not None:  # and those of earlier processes on the journal
            try:
                rows = self.durable.earlier_tasks(want) + rows
            except JournalError as exc:
                self._journal_failed(exc)
        self.send_msg(sender, TasksReply(msg.ref, rows))

    def _metric_figures(self) -> dict[str, Any]:
        m = self._metrics
        running: dict[str, int] = defaultdict(int)
        restarts: dict[str, int] = defaultdict(int)
        for name, slots in self.slots.items():
            if name not in _SCRIPT_AND_PYTHON:
                continue
            for slot in slots:
                running[name] += len(slot.running)
                restarts[name] += slot.restarts
        return {
            "tasks": [[k, st, n] for (k, st), n in (m.totals.items() if m else ())],
            "running": dict(running),
            "queued": {e: len(q) for e, q in self.ready.items() if e in _SCRIPT_AND_PYTHON},
            "restarts": dict(restarts),
            "durations": {k: h.to_list() for k, h in (m.durations.items() if m else ())},
            "first_chunk": m.first_chunk.to_list() if m else None,
            "buckets": list(BUCKETS),
        }


BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)


class _Histogram:
    """Counts per bucket (not cumulative; the last one is +Inf), sum, count."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, value)] += 1
        self.sum += value

    def to_list(self) -> list[Any]:
        return [self.counts, self.sum]


class _Metrics:
    """The scheduler's figures for ``Runtime(metrics_port=...)``."""

    __slots__ = ("durations", "first_chunk", "totals")

    def __init__(self) -> None:
        self.totals: dict[tuple[str, str], int] = defaultdict(int)
        self.durations: dict[str, _Histogram] = {}
        self.first_chunk = _Histogram()

    def ended(self, rec: Rec, status: str, t: float) -> None:
        kind = rec.spec.kind
        self.totals[(kind, status)] += 1
        if rec.started_at is not None:
            h = self.durations.get(kind)
            if h is None:
                h = self.durations[kind] = _Histogram()
            h.observe(max(0.0, t - rec.started_at))


def _size(value: Any) -> int:
    """About how many bytes ``value`` takes in a message."""
    try:
        return len(msgpack.packb(value, use_bin_type=True, unicode_errors="surrogatepass"))
    except (TypeError, ValueError, OverflowError):
        return 0


def _span_name(spec: TaskSpec) -> str | None:
    """What a task's span is named after: the workflow's, tool's or agent's
    name, the Python target, the hook point; None for a script."""
    if spec.kind == "workflow":
        payload = spec.payload
        if isinstance(payload, dict) and isinstance(payload.get("name"), str):
            return str(payload["name"])
        return spec.name
    if spec.kind == "python":
        return spec.target
    return spec.name


_SCRIPT_AND_PYTHON = frozenset(("python", "lua", "js"))
_GC_YOUNG = 7000  # objects allocated between two young collections in a process of its own
_HOOK_TIMEOUT = 30.0  # seconds a hook task may run
_LATE_KEPT = 1024  # ended streaming tasks whose reader still gets a late batch
_EARLY_WATCH_GRACE = 5.0  # seconds a watch of a task not (yet) submitted waits for it
_TICK_LOST = 1.0  # seconds past its due time a timer wake-up is taken for lost
_TICK_EARLY = 1e-3  # seconds before its due time a timer wake-up still counts as on time
_TIMERS_PRUNE = 4096  # timers kept before those of ended tasks are dropped
_TASK_FAULTS = frozenset(("script_error", "slow_step", "task_timeout", "resource_breach"))


def _load(slot: _Slot) -> tuple[int, float]:
    """Least loaded first: fewest running tasks, then the emptiest."""
    if not slot.capacity or slot.paused:
        return (1 << 62, 1.0)
    return (len(slot.running), len(slot.running) / slot.capacity)


def _lost_with(pid: int, msg: Replaced) -> bool:
    """Whether the engine process ``pid`` went with the process ``msg`` says
    died: the coordinator itself (the workflow engine), or an engine of the
    dead supervisor, which is stopped here if it still runs (an orphan: the
    new supervisor starts engines of its own)."""
    import psutil

    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return True
        if msg.role == "coordinator" or proc.ppid() == msg.new_pid:
            return False  # the new coordinator, or an engine of the new supervisor
        proc.kill()
    except psutil.Error:
        pass
    return True


def _could_be_ours(pattern: str) -> bool:
    """Can the glob ``pattern`` match a name the scheduler publishes (all start
    with "llmspell.")? Only its literal head, before any wildcard, decides."""
    head = re.split(r"[*?\[]", pattern, maxsplit=1)[0]
    return _OURS.startswith(head) or head.startswith(_OURS)


_OURS = "llmspell."
