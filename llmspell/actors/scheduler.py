"""The scheduler actor: owns every task's lifecycle.

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
import itertools
import re
from collections import defaultdict, deque
from collections.abc import Callable
from typing import Any

from thespian.actors import ActorAddress

from .._actor import WireActor, addr_key, log
from .._clock import now
from .._options import ENGINES
from .._task import new_task_id
from ..messages.types import (
    TERMINAL,
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
from .events import compile_pattern
from .registry import REGISTERED_KINDS, Registry, RegistryError

__all__ = ["Scheduler"]

# kind -> engine that runs it
_ROUTES = {"python": "python", "lua": "lua", "js": "js", "workflow": "workflow"}


class _Rec:
    """One task, as the scheduler tracks it."""

    __slots__ = (
        "attempt",
        "children",
        "dependents",
        "depth",
        "ended_at",
        "engine",
        "errors",
        "kids",
        "outcome",
        "progress",
        "scripted",
        "sink",
        "slot",
        "spec",
        "started_at",
        "status",
        "submitted_at",
        "waiting",
        "watchers",
    )

    def __init__(self, spec: TaskSpec, t: float) -> None:
        self.spec = spec
        # Invariant: status moves pending -> running -> one terminal state,
        # (running -> pending again only for a retry) and never leaves a terminal state.
        self.status = "pending"
        self.waiting = 0  # dependencies not yet succeeded
        self.dependents: list[str] | None = None
        self.children: list[str] | None = None  # ended children kept until this ends
        self.kids: list[str] | None = None  # children submitted while it ran
        self.depth = 0  # how many parents above it
        self.scripted = False  # a Lua or JS script submitted it, or one of its parents
        self.watchers: list[ActorAddress] | None = None
        self.outcome: TaskOutcome | None = None
        self.progress: dict[str, Any] | None = None
        self.engine = _ROUTES.get(spec.kind, "")
        self.slot: _Slot | None = None
        self.attempt = 0
        self.errors: list[str] | None = None
        self.submitted_at = t
        self.started_at: float | None = None
        self.ended_at: float | None = None
        # who gets its span records (tracing): (address, addr_key(address))
        self.sink: tuple[ActorAddress, str] | None = None


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
        "index",
        "key",
        "paused",
        "pid",
        "restarts",
        "running",
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


class Scheduler(WireActor):
    role = "scheduler"

    def __init__(self) -> None:
        super().__init__()
        self.tasks: dict[str, _Rec] = {}
        self.history = _HISTORY  # finished records kept (oldest forgotten first)
        self._ended: deque[str] = deque()  # finished ids, oldest first
        # forgotten task -> (status, value, error, deps_input key), oldest first
        self._gone: dict[str, tuple[str, Any, dict[str, Any] | None, str]] = {}
        self.slots: dict[str, list[_Slot]] = defaultdict(list)
        self.ready: dict[str, _Ready] = defaultdict(_Ready)
        self.addresses: dict[str, ActorAddress] = {}
        self.counts: dict[str, int] = defaultdict(int)
        # outgoing batches, keyed by addr_key(address): (address, items)
        self._out: dict[str, tuple[ActorAddress, list[TaskOutcome]]] = {}
        self._last_watcher: ActorAddress | None = None  # _notify's last batch, for speed
        self._last_batch: list[TaskOutcome] | None = None
        self._dispatch: dict[str, tuple[ActorAddress, list[_Rec]]] = {}
        self._dirty: set[str] = set()  # engines whose queue may move
        self._events: list[Publish] = []
        self.degraded = ""
        self._interest: set[str] = set()  # event patterns someone subscribed to
        self._wanted: Callable[[str], Any] | None = None
        # planned task faults (simulation): [id matcher, dispatches left, fault]
        self.faults: list[list[Any]] = []
        self.stop_requested = False
        self.retry_base = 0.02  # seconds before the first re-run; doubles per attempt
        self.retry_cap = 1.0
        # registrations, hooks, streams (see the module docstring)
        self.registry = Registry()
        self._extras = False  # hooks registered or streams seen: _finish has more to do
        self._hooks_due: list[tuple[str, dict[str, Any]]] = []
        self._hook_ids: set[str] = set()  # hook tasks and what they submitted
        self._hook_parent: dict[str, tuple[str, int]] = {}  # hook task -> (Task.hook id, slot)
        self._fanin: dict[str, list[Any]] = {}  # Task.hook id -> [left, results]
        self.hook_counts = {"runs": 0, "errors": 0}
        self._consumers: dict[str, ActorAddress] = {}  # agent task -> who gets its chunks
        self._coordination_sub = False
        # watches that arrived before the task's submit (local mode: a script engine's
        # WatchTasks can overtake its SubmitTasks on the way here)
        self._early: dict[str, list[ActorAddress]] = {}
        self.absent: set[str] = set()  # engines this runtime does not start
        self._precancelled: dict[str, str] = {}  # cancelled before submitted -> reason
        # Python targets a script may run (Runtime(script_python=[patterns])): none by default
        self._script_python: Callable[[str], Any] | None = None
        self._cascade: list[tuple[_Rec, str, dict[str, Any] | None]] | None = None
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
        # durable scripts (Runtime(journal=...)): the host calls of unfinished script
        # tasks, task id -> n -> [n, op, call, result, error, done] (see on_host_calls)
        self._journaled = False
        self._calls: dict[str, dict[int, list[Any]]] = {}

    # -- set-up -------------------------------------------------------------

    def on_introduce(self, msg: Introduce, sender: ActorAddress) -> None:
        self.addresses.update(msg.addresses)
        self.retry_base = float(msg.config.get("retry_backoff", self.retry_base))
        self.retry_cap = float(msg.config.get("retry_backoff_cap", self.retry_cap))
        self.history = int(msg.config.get("history", self.history))
        allowed = msg.config.get("script_python") or ()
        self._script_python = (
            re.compile("|".join(f"(?:{compile_pattern(str(p)).pattern})" for p in allowed)).match
            if allowed
            else None
        )
        self._journaled = bool(msg.config.get("journal"))
        if msg.config.get("metrics") and self._metrics is None:
            self._metrics = _Metrics()
        engines = msg.config.get("engines")
        if isinstance(engines, dict):  # a task for an engine the runtime never starts fails
            self.absent = {e for e in ENGINES if int(engines.get(e, 0) or 0) < 1}

    def on_engine_ready(self, msg: EngineReady, sender: ActorAddress) -> None:
        if self.degraded:  # restarted just before its supervisor gave up: being stopped
            return
        slots = self.slots[msg.engine]
        fresh = _Slot(msg, sender)
        for i, s in enumerate(slots):
            if s.index == msg.index:
                self._lose_slot(s, "engine process was replaced while running this task")
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
            for s in self.slots.get(msg.engine, ()):
                if s.index == msg.index:
                    s.capacity = 0  # takes nothing until it registers again
                    self._lose_slot(s, f"engine was {msg.detail} while running this task")
            return
        if msg.what != "crash":
            return
        for s in self.slots.get(msg.engine, ()):
            if s.index == msg.index:
                s.capacity = 0  # takes nothing until it registers again
                s.restarts += 1
                self._lose_slot(s, "engine process crashed while running this task")
        self.counts["crashes"] += 1
        self._publish(
            "llmspell.engine.crash",
            {"engine": msg.engine, "index": msg.index, "detail": msg.detail},
        )

    def _lose_slot(self, slot: _Slot, message: str) -> None:
        """Everything in flight on ``slot`` is lost: re-run it if it has retries
        left, else fail it with ``message``. Never both, never neither."""
        for task_id in list(slot.running):
            rec = self.tasks.get(task_id)
            slot.running.discard(task_id)
            if rec is None or rec.status != "running":
                continue
            rec.slot = None
            if rec.sink is not None:
                self._span_event(
                    rec, "llmspell.engine.crash", {"engine": slot.engine, "index": slot.index}
                )
            lost = TaskOutcome(
                task_id, "failed", error=_err(message, engine=slot.engine), attempt=rec.attempt
            )
            if rec.attempt < rec.spec.retries:
                self._retry(rec, lost)
            else:
                self._finish(rec, "failed", error=lost.error)
        self._dirty.add(slot.engine)

    def on_crash_engine(self, msg: Any, sender: ActorAddress) -> None:
        for s in self.slots.get(msg.engine, ()):
            if s.index == msg.index:
                self.send_msg(s.address, msg)

    def on_request_stop(self, msg: Any, sender: ActorAddress) -> None:
        self.stop_requested = True

    def on_supervisor_event(self, msg: SupervisorEvent, sender: ActorAddress) -> None:
        if msg.what == "escalate" and not self.degraded:
            self.degraded = f"supervisor {msg.supervisor!r} gave up: {msg.detail}"
            self._publish("llmspell.runtime.degraded", {"reason": self.degraded})
            self._degrade()

    def _degrade(self) -> None:
        """The engines' supervisor stopped its engines for good: no engine
        takes work again, so every unfinished task fails now, saying why (a
        retry has nowhere to run)."""
        for slots in self.slots.values():
            for s in slots:
                s.capacity = 0
        error = _err(f"the runtime is degraded: {self.degraded}", kind="degraded")
        for rec in list(self.tasks.values()):
            if rec.status not in TERMINAL:
                self._finish(rec, "failed", error=dict(error))

    # -- submission ---------------------------------------------------------

    def on_submit(self, msg: SubmitTasks, sender: ActorAddress) -> None:
        t = now()
        fresh: list[_Rec] = []
        # one list for the whole batch: watcher lists are replaced, never appended to
        watchers = [sender] if msg.notify else None
        for spec in msg.tasks:
            if spec.id in self.tasks or spec.id in self._gone:
                if msg.replayed:  # a replayed script submits its child again: known, kept
                    continue
                self.send_msg(sender, SubmitRejected(spec.id, f"duplicate task id {spec.id!r}"))
                continue
            rec = _Rec(spec, t)
            self.tasks[spec.id] = rec
            rec.watchers = watchers
            if spec.kind == "agent":  # its chunks go to whoever submitted it
                self._consumers[spec.id] = sender
                self._extras = True
            if self._early:
                early = self._early.pop(spec.id, None)
                if early:
                    rec.watchers = [*(rec.watchers or ()), *early]
            self.counts["submitted"] += 1
            if self._sink is not None:
                self._trace_open(rec, sender)
            if spec.parent is not None:
                self._adopt(rec)
            if self._precancelled and spec.id in self._precancelled:
                reason = self._precancelled.pop(spec.id)
                self._finish(rec, "cancelled", error=_err(reason, kind="cancelled"))
            fresh.append(rec)
        if msg.cancelled is not None:  # an aggregator's tasks that will never run
            for rec in fresh:
                self._finish(rec, "cancelled", error=_err(msg.cancelled, kind="cancelled"))
            return
        # a child of a task that was cancelled or timed out, or nested too deeply
        fresh = [rec for rec in fresh if rec.status == "pending"]
        # Dependencies are resolved after the whole batch is known, so a batch
        # may list a task before the task it depends on.
        for rec in fresh:
            self._link(rec)
        # Only a batch can close a cycle (a task may name only tasks already
        # known or listed with it): fail the tasks of each cycle, which would
        # otherwise wait for each other forever.
        if any(rec.waiting and rec.status == "pending" for rec in fresh):
            self._fail_cycles(fresh)

    def _fail_cycles(self, fresh: list[_Rec]) -> None:
        waiting = {r.spec.id: r for r in fresh if r.waiting and r.status == "pending"}
        state: dict[str, int] = {}  # 1: on the current path, 2: explored
        cycles: list[list[str]] = []
        for root in waiting:
            if root in state:
                continue
            state[root] = 1
            path = [root]
            stack = [iter(waiting[root].spec.deps or ())]
            while stack:
                for dep in stack[-1]:
                    if dep not in waiting:
                        continue
                    if state.get(dep) == 1:
                        cycles.append([*path[path.index(dep) :], dep])
                    elif dep not in state:
                        state[dep] = 1
                        path.append(dep)
                        stack.append(iter(waiting[dep].spec.deps or ()))
                        break
                else:
                    state[path.pop()] = 2
                    stack.pop()
        for cycle in cycles:
            error = _err("dependency cycle: " + " -> ".join(cycle), kind="dependency")
            error["cause"] = error["message"]
            for task_id in cycle[:-1]:
                rec = self.tasks.get(task_id)
                if rec is not None and rec.status == "pending":
                    self._finish(rec, "failed", error=error)

    def _adopt(self, rec: _Rec) -> None:
        """Tie a child task to its parent: the parent's depth + 1 (too deep fails
        it: a task that submits itself for ever), and a parent that is cancelled
        or times out cancels the children it submitted that are still going."""
        parent = self.tasks.get(rec.spec.parent or "")
        if parent is None:
            return
        rec.depth = parent.depth + 1
        # a script's children and theirs (through workflows, coordinations) are
        # sandboxed; the children of Python code are the application's own again
        rec.scripted = parent.engine in ("lua", "js") or (
            parent.scripted and parent.engine != "python"
        )
        refused = self._refused(rec) if rec.scripted else None
        if refused is not None:
            # said where it cannot be missed: a race or best-effort may swallow the failure
            log.warning(
                "task %s (submitted by %s) refused: %s", rec.spec.id, parent.spec.id, refused
            )
            self._finish(rec, "failed", error=_err(refused))
        elif rec.depth > _MAX_DEPTH:
            self._finish(
                rec,
                "failed",
                error=_err(
                    f"tasks nested more than {_MAX_DEPTH} levels deep (a task or workflow "
                    "that submits itself?)"
                ),
            )
        elif parent.status in ("cancelled", "timed_out"):
            self._finish(rec, "cancelled", error=_parent_gone(parent))
        elif parent.status not in TERMINAL:
            if parent.kids is None:
                parent.kids = []
            parent.kids.append(rec.spec.id)

    def _refused(self, rec: _Rec) -> str | None:
        """Why a task a script submitted (directly or through a workflow or a
        coordination) may not run: scripts are sandboxed, so they reach Python
        only through registered tools and agents and the targets the runtime
        allows, and they read no files."""
        spec = rec.spec
        if spec.kind == "python":
            target = spec.target or ""
            allowed = self._script_python
            if allowed is None or not allowed(target):
                return (
                    f"a script may not run the Python target {target!r}: list the targets "
                    "scripts may run in Runtime(script_python=['package.module:*', ...]) or "
                    "`llmspell run --allow-python 'package.module:*'` (none by default; "
                    "registered tools and agents are always allowed)"
                )
        elif spec.kind == "workflow":
            steps = spec.payload.get("steps") if isinstance(spec.payload, dict) else None
            if not isinstance(spec.payload, dict) or (
                isinstance(steps, list) and any(isinstance(x, dict) and "file" in x for x in steps)
            ):
                return (
                    "a script may not load a workflow file or a step's file: pass the "
                    "workflow itself (a table/object with its steps and their code)"
                )
        return None

    def _link(self, rec: _Rec) -> None:
        for dep_id in rec.spec.deps or ():
            dep = self.tasks.get(dep_id)
            if dep is None:
                gone = self._gone.get(dep_id)
                if gone is not None and gone[0] == "succeeded":
                    continue  # its value, for deps_input, is in the tombstone
                if gone is None:
                    error = _err(f"unknown dependency {dep_id!r}")
                else:
                    error = _dep_error_of(dep_id, gone[0], gone[2])
                self._finish(rec, "failed", error=error)
                return
            if dep.status in TERMINAL and dep.status != "succeeded":
                self._finish(rec, "failed", error=_dep_error(dep))
                return
            if dep.status != "succeeded":
                rec.waiting += 1
                if dep.dependents is None:
                    dep.dependents = []
                dep.dependents.append(rec.spec.id)
        if rec.waiting == 0:
            self._make_ready(rec)

    def _make_ready(self, rec: _Rec) -> None:
        spec = rec.spec
        if spec.deps_input and spec.deps:
            values: dict[str, Any] = {}  # deps_input key -> value
            for d in spec.deps:
                dep = self.tasks.get(d)
                if dep is not None and dep.outcome is not None:
                    values[_input_key(dep)] = dep.outcome.value
                elif d in self._gone:
                    _, value, _, key = self._gone[d]
                    values[key] = value
                else:  # older than its tombstone (held while this waited: not expected)
                    error = _err(f"dependency {d!r} ended too long ago: {_FORGOTTEN}")
                    self._finish(rec, "failed", error=error)
                    return
            # one dependency: its value; several: keyed by workflow step id (or task id)
            spec.input = next(iter(values.values())) if len(spec.deps) == 1 else values
        if spec.kind == "event":
            self._publish(spec.name or "", spec.payload, always=True)  # the user's own event
            self._finish(rec, "succeeded", value=None)
            return
        if not rec.engine and spec.kind in REGISTERED_KINDS and not self._resolve(rec):
            return
        if not rec.engine:
            self._finish(
                rec,
                "failed",
                error=_err(f"no engine runs {spec.kind!r} tasks yet", kind="failed"),
            )
            return
        if self.degraded:
            self._finish(
                rec,
                "failed",
                error=_err(f"the runtime is degraded: {self.degraded}", kind="degraded"),
            )
            return
        if rec.engine in self.absent:
            self._finish(
                rec,
                "failed",
                error=_err(
                    f"this runtime has no {rec.engine} engine (Runtime(engines=...) left it "
                    "out), so the task cannot run",
                    kind="failed",
                ),
            )
            return
        self.ready[rec.engine].push(spec.priority, spec.id)
        self._dirty.add(rec.engine)

    # -- dispatch -----------------------------------------------------------

    def _pump(self) -> None:
        t = now()
        tasks = self.tasks
        for engine in self._dirty:
            slots = self.slots.get(engine)
            queue = self.ready.get(engine)
            if not slots or not queue:
                continue
            if len(slots) == 1:
                slot = slots[0]
                room = 0 if slot.paused else slot.capacity - len(slot.running)
                while queue and room > 0:
                    rec = tasks.get(queue.pop())
                    if rec is None or rec.status != "pending":
                        continue
                    self._start(rec, slot, t)
                    room -= 1
                continue
            while queue:  # several engines: each task to the least loaded one
                slot = min(slots, key=_load)
                if len(slot.running) >= slot.capacity or slot.paused:
                    break
                rec = self.tasks.get(queue.pop())
                if rec is None or rec.status != "pending":
                    continue
                self._start(rec, slot, t)
        self._dirty.clear()

    def _start(self, rec: _Rec, slot: _Slot, t: float) -> None:
        task_id = rec.spec.id
        if self.faults and self._apply_fault(rec):
            return
        rec.status = "running"
        rec.slot = slot
        rec.started_at = t
        slot.running.add(task_id)
        batch = self._dispatch.get(slot.key)
        if batch is None:
            batch = self._dispatch[slot.key] = (slot.address, [])
        batch[1].append(rec)
        if rec.spec.timeout is not None:
            self.wake_after(rec.spec.timeout, ("timeout", task_id, rec.attempt))
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

    def _apply_fault(self, rec: _Rec) -> bool:
        """Apply a fault planned for ``rec`` as it would be dispatched; True
        if it is not dispatched now."""
        f = self._fault_for(rec.spec.id)
        if f is None:
            return False
        kind, task_id = f["kind"], rec.spec.id
        self._publish(f"llmspell.fault.{kind}", {"task_id": task_id})
        if kind == "slow_step":
            delay = float(f.get("delay") or 0.0)
            self.wake_after(delay, ("retry", task_id, rec.attempt))
            return True
        rec.status = "running"
        rec.started_at = now()
        if kind == "task_timeout":
            self._finish(
                rec, "timed_out", error=_err("injected fault: task timed out", kind="timeout")
            )
            return True
        if kind == "script_error":
            error = _err("injected fault: script error", kind="script", engine=rec.engine)
        else:
            error = _err(
                "injected fault: resource limit exceeded", kind="resource", engine=rec.engine
            )
        if rec.attempt < rec.spec.retries:  # a failure like any other: retried as one
            self._retry(rec, TaskOutcome(task_id, "failed", error=error))
        else:
            self._finish(rec, "failed", error=error)
        return True

    def flush(self) -> None:
        if self._hooks_due:
            self._run_hooks()
        if self._dirty:
            self._pump()
        if self._hooks_due:  # task.before of what was just started
            self._run_hooks()
            if self._dirty:
                self._pump()
        if self._dispatch:
            batches, self._dispatch = self._dispatch, {}
            for addr, recs in batches.values():
                for i in range(0, len(recs), 500):
                    chunk = recs[i : i + 500]
                    self.send_msg(
                        addr,
                        DispatchBatch(
                            [r.spec for r in chunk],
                            [r.attempt for r in chunk],
                            self._replays(chunk) if self._calls else None,
                        ),
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
                for i in range(0, len(outcomes), 500):
                    self.send_msg(addr, TaskOutcomes(outcomes[i : i + 500]))
        if self._events and "events" in self.addresses:
            events, self._events = self._events, []
            self.send_msg(self.addresses["events"], PublishBatch(events))
        else:
            self._events.clear()

    # -- results ------------------------------------------------------------

    def on_engine_results(self, msg: EngineResults, sender: ActorAddress) -> None:
        for o in msg.items:
            rec = self.tasks.get(o.task_id)
            if rec is None or rec.status != "running" or o.attempt != rec.attempt:
                continue  # late: the task already ended (cancel, timeout) or was retried
            usage = o.usage
            if usage is not None and ("spans" in usage or "first_chunk" in usage):
                self._take_extras(rec, usage)
            if (
                o.status == "failed"
                and rec.attempt < rec.spec.retries
                and (o.error or {}).get("kind") != "divergence"  # would diverge again
            ):
                self._retry(rec, o)
                continue
            self._finish(rec, o.status, value=o.value, error=o.error, usage=o.usage, reuse=o)

    # -- durable scripts: host calls (in memory until the journal keeps them) -----------

    def on_host_calls(self, msg: HostCalls, sender: ActorAddress) -> None:
        """A script engine's host calls (only with a journal): kept per unfinished task
        (upsert by n) for its next dispatch; an emit is published here, once."""
        if not self._journaled:
            return
        for item in msg.items:
            if not isinstance(item, list) or len(item) != 8:
                log.warning("scheduler: a malformed host call record was dropped: %r", item)
                continue
            task_id, attempt, n, op, call, result, error, done = item
            rec = self.tasks.get(task_id) if isinstance(task_id, str) else None
            if rec is None or rec.status != "running" or rec.attempt != attempt:
                continue  # late: the task ended or runs again
            calls = self._calls.setdefault(task_id, {})
            before = calls.get(n)
            calls[n] = [n, op, call, result, error, bool(done)]
            if op == "emit" and done and before is None and isinstance(call, dict):
                if "events" in self.addresses:
                    self._events.append(Publish(str(call.get("name")), call.get("payload"), now()))

    def _replays(self, recs: list[_Rec]) -> list[list[list[Any]] | None] | None:
        """The recorded host calls of these tasks (by n), for their dispatch."""
        out: list[list[list[Any]] | None] = []
        for r in recs:
            calls = self._calls.get(r.spec.id)
            out.append([calls[n] for n in sorted(calls)] if calls else None)
        return out if any(out) else None

    def _retry(self, rec: _Rec, o: TaskOutcome) -> None:
        if rec.errors is None:
            rec.errors = []
        rec.errors.append(str((o.error or {}).get("message", "failed")))
        if rec.sink is not None:
            self._span_event(
                rec, "llmspell.task.retry", {"attempt": rec.attempt + 1, "error": rec.errors[-1]}
            )
        self._release(rec)
        rec.attempt += 1
        rec.status = "pending"
        self.counts["retries"] += 1
        self._publish(
            "llmspell.task.retry",
            {"task_id": rec.spec.id, "attempt": rec.attempt, "error": rec.errors[-1]},
        )
        if self._extras:
            self._task_hook("task.retry", rec, "pending", error=rec.errors[-1])
        # exponential backoff between attempts: base, 2*base, 4*base ... up to the cap
        delay = min(self.retry_cap, self.retry_base * 2 ** (rec.attempt - 1))
        if delay > 0:
            self.wake_after(delay, ("retry", rec.spec.id, rec.attempt))
        else:
            self._requeue(rec)

    def _requeue(self, rec: _Rec) -> None:
        self.ready[rec.engine].push(rec.spec.priority, rec.spec.id)
        self._dirty.add(rec.engine)

    def _release(self, rec: _Rec) -> None:
        if rec.slot is not None:
            rec.slot.running.discard(rec.spec.id)
            self._dirty.add(rec.slot.engine)
            rec.slot = None

    def _finish(
        self,
        rec: _Rec,
        status: str,
        *,
        value: Any = None,
        error: dict[str, Any] | None = None,
        usage: dict[str, Any] | None = None,
        reuse: TaskOutcome | None = None,
    ) -> None:
        """End ``rec`` in ``status`` (the first terminal state wins). ``reuse``:
        the engine's outcome this came from, kept as the record's own."""
        if rec.status in TERMINAL:
            return
        if self._calls:
            self._calls.pop(rec.spec.id, None)
        was_running = rec.status == "running"
        slot = rec.slot
        self._release(rec)
        if was_running and status in ("cancelled", "timed_out") and slot is not None:
            reason = "timed out" if status == "timed_out" else "cancelled"
            self.send_msg(slot.address, StopTasks([rec.spec.id], reason))
        t = now()
        rec.status = status
        rec.ended_at = t
        if error is not None and rec.errors:
            error = dict(error)
            error["attempts"] = [*rec.errors, str(error.get("message", ""))]
        if usage is None:
            usage = {}
        if rec.started_at is not None and "duration" not in usage:
            usage["duration"] = t - rec.started_at
        if reuse is not None and reuse.error is error:
            reuse.usage = usage
            rec.outcome = reuse
        else:
            rec.outcome = TaskOutcome(rec.spec.id, status, value, error, usage, rec.attempt)
        self.counts[status] += 1
        if self._metrics is not None:
            self._metrics.ended(rec, status, t)
        if rec.sink is not None:
            self._trace_close(rec, status, t, error)
        if rec.watchers is not None:
            for w in rec.watchers:
                self._notify(w, rec.outcome)
            rec.watchers = None
        if self._wanted is not None:
            self._publish(
                f"llmspell.task.{status}",
                {"task_id": rec.spec.id, "kind": rec.spec.kind, "status": status},
            )
        if self._extras:
            self._finished(rec, status, error)
        dependents, rec.dependents = rec.dependents, None
        holder = None  # a dependent that will still read this task's value
        # What this end sets off (dependents made ready or failed) is done by the
        # outermost _finish, in order, not by recursion: a failure at the head of
        # a chain of 10,000 tasks must not exhaust the stack.
        cascade = self._cascade
        outer = cascade is None
        if cascade is None:
            cascade = self._cascade = []
        for dep_id in dependents or ():
            child = self.tasks.get(dep_id)
            if child is None or child.status != "pending":
                continue
            if status == "succeeded":
                child.waiting -= 1
                if child.waiting == 0:
                    cascade.append((child, "ready", None))
                elif child.spec.deps_input and holder is None:
                    holder = child
            else:
                cascade.append((child, "failed", _dep_error(rec)))
        kids, rec.kids = rec.kids, None
        if kids and status in ("cancelled", "timed_out"):
            gone = _parent_gone(rec)
            for kid_id in kids:
                kid = self.tasks.get(kid_id)
                if kid is not None and kid.status not in TERMINAL:
                    cascade.append((kid, "cancelled", gone))
        self._retire(rec, holder)
        if outer:
            try:
                i = 0
                while i < len(cascade):
                    child, what, err = cascade[i]
                    i += 1
                    if what == "ready":
                        if child.status == "pending":
                            self._make_ready(child)
                    elif what == "failed":
                        if child.status == "pending":
                            self._finish(child, "failed", error=err)
                    else:
                        self._finish(child, what, error=err)
            finally:
                self._cascade = None

    def _retire(self, rec: _Rec, holder: _Rec | None = None) -> None:
        """Queue a finished record to be forgotten after ``history`` more ends;
        kept longer while ``holder`` (a dependent that takes its value) or its
        parent task has not ended."""
        spec = rec.spec
        if holder is not None:
            if holder.children is None:
                holder.children = []
            holder.children.append(spec.id)
            return
        if spec.parent is not None:
            parent = self.tasks.get(spec.parent)
            if parent is not None and parent.status not in TERMINAL:
                if parent.children is None:
                    parent.children = []
                parent.children.append(spec.id)
                return
        ended = self._ended
        ended.append(spec.id)
        if rec.children is not None:
            ended.extend(rec.children)
            rec.children = None
        if len(ended) > self.history + min(_FORGET_BATCH, self.history >> 3):
            self._forget(len(ended) - self.history)

    def _forget(self, count: int) -> None:
        """Forget the ``count`` oldest finished records (in one go: cheaper per task)."""
        ended, tasks, gone = self._ended, self.tasks, self._gone
        pop, take = tasks.pop, ended.popleft
        for _ in range(count):
            task_id = take()
            rec = pop(task_id, None)
            if rec is not None and rec.outcome is not None:
                o = rec.outcome
                gone[task_id] = (o.status, o.value, o.error, _input_key(rec))
        if len(gone) > max(100 * self.history, 100):  # keep the newer half (insertion order)
            self._gone = dict(itertools.islice(gone.items(), len(gone) // 2, None))

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
        cancelled = []
        for task_id in msg.task_ids:
            rec = self.tasks.get(task_id)
            if rec is not None and rec.status not in TERMINAL:
                # marked: a client attached to a served runtime raises RuntimeClosed
                error = dict(_err(msg.reason, kind="cancelled"), shutdown=True)
                self._finish(rec, "cancelled", error=error)
                cancelled.append(task_id)
            elif rec is None and msg.ref and task_id not in self._gone:
                # The facade cancels only ids it handed out, so one unknown here is
                # not submitted yet (a coordination's later member, or a submit
                # the cancel overtook): it ends cancelled the moment it comes.
                self._precancelled[task_id] = msg.reason
                if len(self._precancelled) > 10_000:
                    self._precancelled.pop(next(iter(self._precancelled)))
                cancelled.append(task_id)
        if msg.ref:
            self.send_msg(sender, CancelReply(msg.ref, cancelled))

    def on_wakeup(self, payload: Any) -> None:
        if isinstance(payload, tuple) and payload and payload[0] == "watch":
            unknown = _err(f"unknown task id {payload[1]!r}")
            for watcher in self._early.pop(payload[1], ()):
                self._notify(watcher, TaskOutcome(payload[1], "failed", error=unknown))
            return
        if isinstance(payload, tuple) and payload and payload[0] == "retry":
            _, task_id, attempt = payload
            rec = self.tasks.get(task_id)
            if rec is not None and rec.status == "pending" and rec.attempt == attempt:
                self._requeue(rec)
            return
        if isinstance(payload, tuple) and payload and payload[0] == "timeout":
            _, task_id, attempt = payload
            rec = self.tasks.get(task_id)
            if rec is not None and rec.status == "running" and rec.attempt == attempt:
                limit = rec.spec.timeout
                self._finish(
                    rec,
                    "timed_out",
                    error=_err(
                        f"task did not finish within its timeout of {limit:g} s", kind="timeout"
                    ),
                )

    # -- watching, progress, queries ----------------------------------------

    def on_watch(self, msg: WatchTasks, sender: ActorAddress) -> None:
        for task_id in msg.task_ids:
            rec = self.tasks.get(task_id)
            if rec is None and task_id in self._gone:
                status, value, error, _ = self._gone[task_id]
                self._notify(sender, TaskOutcome(task_id, status, value, error))
            elif rec is None:  # its submit may still be on the way: wait a little
                self._early.setdefault(task_id, []).append(sender)
                self.wake_after(_EARLY_WATCH_GRACE, ("watch", task_id))
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
        statuses = {}
        for task_id in msg.task_ids:
            rec = self.tasks.get(task_id)
            statuses[task_id] = (
                rec.status if rec is not None else self._gone.get(task_id, ("unknown",))[0]
            )
        self.send_msg(sender, StatusReply(msg.ref, statuses))

    def on_query_progress(self, msg: QueryProgress, sender: ActorAddress) -> None:
        rec = self.tasks.get(msg.task_id)
        self.send_msg(sender, ProgressReply(msg.ref, msg.task_id, self._progress_of(rec)))

    def _progress_of(self, rec: _Rec | None) -> dict[str, Any] | None:
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
    def _eta(rec: _Rec, prog: dict[str, Any]) -> float | None:
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
        running = sum(1 for r in self.tasks.values() if r.status == "running")
        pending = sum(1 for r in self.tasks.values() if r.status == "pending")
        engines = [
            {
                "engine": s.engine,
                "index": s.index,
                "pid": s.pid,
                "restarts": s.restarts,
                "running": len(s.running),
                "capacity": s.capacity,
                "paused": s.paused,
            }
            for name, slots in self.slots.items()
            if name in _SCRIPT_AND_PYTHON
            for s in slots
        ]
        coordinators = self.slots.get("workflow", [])
        stats = {
            "submitted": self.counts["submitted"],
            "running": running,
            "pending": pending,
            "succeeded": self.counts["succeeded"],
            "failed": self.counts["failed"],
            "cancelled": self.counts["cancelled"],
            "timed_out": self.counts["timed_out"],
            "retries": self.counts["retries"],
            "restarts": sum(s.restarts for slots in self.slots.values() for s in slots),
            "queued": {e: len(q) for e, q in self.ready.items()},
            "engines": engines,
            "coordinations_running": sum(len(s.running) for s in coordinators),
            "bad_messages": self.bad_messages,
            "crashes": self.counts["crashes"],
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
        for rec in list(self.tasks.values()):
            if rec.status not in TERMINAL:
                self._finish(rec, "cancelled", error=_err(msg.reason, kind="cancelled"))

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
        error = self.registry.register(msg.what, msg.name, msg.target)
        if error is None and msg.what == "hook":
            self._extras = True
            bus = self.addresses.get("events")
            if msg.name.startswith("coordination.") and not self._coordination_sub and bus:
                # aggregators publish llmspell.coordination.before/after on the bus
                self._coordination_sub = True
                self.send_msg(bus, Subscribe("scheduler.hooks", "llmspell.coordination.*"))
        self.send_msg(sender, Registered(msg.ref, error))

    def _resolve(self, rec: _Rec) -> bool:
        """Fill in a tool/agent/custom task from its registration (True), or
        fan a ``Task.hook`` out / fail the task (False)."""
        spec = rec.spec
        if spec.kind == "hook":
            self._fan_out(rec)
            return False
        try:
            rec.engine = self.registry.resolve(spec)
        except RegistryError as exc:
            self._finish(rec, "failed", error=_err(str(exc)))
            return False
        return True

    def _fan_out(self, rec: _Rec) -> None:
        """A submitted ``Task.hook(point)``: one hook task per hook at ``point``;
        its value is their values in registration order (None where one failed)."""
        spec = rec.spec
        targets = self.registry.hooks.get(spec.name or "", [])
        if not targets:
            self._finish(rec, "succeeded", value=[])
            return
        rec.status = "running"
        rec.started_at = now()
        self._fanin[spec.id] = [len(targets), [None] * len(targets)]
        payload = spec.payload if spec.payload is not None else {}
        if isinstance(payload, dict):
            payload = dict(payload, point=spec.name)
        for i, target in enumerate(targets):
            child = self._spawn_hook(spec.name or "", payload, target, spec.id)
            self._hook_parent[child.spec.id] = (spec.id, i)
            self._make_ready(child)

    def _hook(self, point: str, payload: dict[str, Any]) -> None:
        if point in self.registry.hooks:
            self._hooks_due.append((point, {**payload, "point": point}))

    def _task_hook(self, point: str, rec: _Rec, status: str, **extra: Any) -> None:
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
                self._make_ready(self._spawn_hook(point, payload, target, None))

    def _spawn_hook(
        self, point: str, payload: Any, target: dict[str, Any], parent: str | None
    ) -> _Rec:
        spec = TaskSpec(
            id=new_task_id(),
            kind="hook",
            name=point,
            payload=payload,
            timeout=_HOOK_TIMEOUT,
            parent=parent,
        )
        rec = _Rec(spec, now())
        rec.engine = self.registry.hook_task(spec, target)
        self.tasks[spec.id] = rec
        self._hook_ids.add(spec.id)
        self.counts["submitted"] += 1
        self.hook_counts["runs"] += 1
        if self._sink is not None:
            self._trace_open(rec, None)
        return rec

    def _finished(self, rec: _Rec, status: str, error: dict[str, Any] | None) -> None:
        """Hooks, fan-in and stream bookkeeping of a task that just ended."""
        spec = rec.spec
        if self._consumers:
            self._consumers.pop(spec.id, None)
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

    def _fan_in(self, parent: tuple[str, int], child: _Rec, status: str) -> None:
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
                self._finish(prec, "succeeded", value=fan[1])

    def on_event_delivery(self, msg: EventDelivery, sender: ActorAddress) -> None:
        """Coordination events from the bus: run the coordination hooks."""
        for ev in msg.events:
            point = str(ev.get("name", "")).removeprefix("llmspell.")
            if point in ("coordination.before", "coordination.after"):
                payload = ev.get("payload")
                self._hook(point, dict(payload, point=point) if isinstance(payload, dict) else {})

    def on_stream_chunks(self, msg: StreamChunks, sender: ActorAddress) -> None:
        rec = self.tasks.get(msg.task_id)
        if rec is None or rec.status != "running":
            return  # ended: the engine was told to stop it
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

    def _trace_open(self, rec: _Rec, sender: ActorAddress | None) -> None:
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

    def _trace_close(self, rec: _Rec, status: str, t: float, error: dict[str, Any] | None) -> None:
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

    def _span_item(self, rec: _Rec, item: list[Any]) -> None:
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

    def _span_event(self, rec: _Rec, name: str, attrs: dict[str, Any]) -> None:
        self._span_events.setdefault(rec.spec.id, []).append([name, now(), attrs])

    def _take_extras(self, rec: _Rec, usage: dict[str, Any]) -> None:
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

    def ended(self, rec: _Rec, status: str, t: float) -> None:
        kind = rec.spec.kind
        self.totals[(kind, status)] += 1
        if rec.started_at is not None:
            h = self.durations.get(kind)
            if h is None:
                h = self.durations[kind] = _Histogram()
            h.observe(max(0.0, t - rec.started_at))


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


def _input_key(dep: _Rec) -> str:
    """The key of a dependency's value in a ``deps_input`` map: its workflow
    step id (``metadata["step"]``, set by ``llmspell.workflow``) or its task id."""
    md = dep.spec.metadata
    step = md.get("step") if md else None
    return step if isinstance(step, str) else dep.spec.id


_SCRIPT_AND_PYTHON = frozenset(("python", "lua", "js"))
_HOOK_TIMEOUT = 30.0  # seconds a hook task may run
_EARLY_WATCH_GRACE = 5.0  # seconds a watch of a task not (yet) submitted waits for it
_TASK_FAULTS = frozenset(("script_error", "slow_step", "task_timeout", "resource_breach"))


def _load(slot: _Slot) -> tuple[int, float]:
    """Least loaded first: fewest running tasks, then the emptiest."""
    if not slot.capacity or slot.paused:
        return (1 << 62, 1.0)
    return (len(slot.running), len(slot.running) / slot.capacity)


def _err(message: str, *, kind: str = "failed", engine: str = "runtime") -> dict[str, Any]:
    return {"message": message, "kind": kind, "engine": engine}


_HISTORY = 1_000  # finished task records kept by default (Runtime(history=...))
_MAX_DEPTH = 256  # parents above a task at the most
_FORGET_BATCH = 256  # records are forgotten in batches (up to this many, history/8)
_FORGOTTEN = "its result is no longer kept (the scheduler keeps 100 x `history` finished tasks)"
_ENDED = {"failed": "failed", "cancelled": "was cancelled", "timed_out": "timed out"}


def _could_be_ours(pattern: str) -> bool:
    """Can the glob ``pattern`` match a name the scheduler publishes (all start
    with "llmspell.")? Only its literal head, before any wildcard, decides."""
    head = re.split(r"[*?\[]", pattern, maxsplit=1)[0]
    return _OURS.startswith(head) or head.startswith(_OURS)


_OURS = "llmspell."


def _parent_gone(parent: _Rec) -> dict[str, Any]:
    ended = _ENDED.get(parent.status, parent.status)
    return _err(f"its parent task {parent.spec.id!r} {ended}", kind="cancelled")


def _dep_error(dep: _Rec) -> dict[str, Any]:
    return _dep_error_of(dep.spec.id, dep.status, dep.outcome.error if dep.outcome else None)


def _dep_error_of(dep_id: str, status: str, error: dict[str, Any] | None) -> dict[str, Any]:
    """The error of a task whose dependency ``dep_id`` ended ``status``. Along a
    chain it names the direct dependency and the first failure (its ``cause``),
    never every link: a failure at the head of a chain of 10,000 tasks gives
    each one a message of constant size."""
    ended = _ENDED.get(status, status)
    cause = error.get("cause") if error else None
    if cause:
        message = f"dependency {dep_id!r} {ended} (because {cause})"
    else:
        reason = f": {error.get('message', '')}" if error else ""
        message = f"dependency {dep_id!r} {ended}{reason}"
        cause = f"{dep_id!r} {ended}{reason}"
    e = _err(message, kind="dependency")
    e["cause"] = cause
    return e
