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
"""

from __future__ import annotations

import heapq
import itertools
from collections import defaultdict
from typing import Any

from thespian.actors import ActorAddress

from .._actor import WireActor, addr_key
from .._clock import now
from ..messages.types import (
    TERMINAL,
    CancelReply,
    CancelTasks,
    DispatchBatch,
    EngineEvent,
    EngineReady,
    EngineResults,
    InjectFaults,
    Introduce,
    ProgressBatch,
    ProgressReply,
    Publish,
    PublishBatch,
    QueryProgress,
    QueryStats,
    QueryStatus,
    StatsReply,
    StatusReply,
    StopTasks,
    SubmitRejected,
    SubmitTasks,
    SupervisorEvent,
    TaskOutcome,
    TaskOutcomes,
    TaskSpec,
    WatchTasks,
)

__all__ = ["Scheduler"]

# kind -> engine that runs it
_ROUTES = {"python": "python", "lua": "lua", "js": "js", "workflow": "workflow"}


class _Rec:
    """One task, as the scheduler tracks it."""

    __slots__ = (
        "attempt",
        "dependents",
        "ended_at",
        "engine",
        "errors",
        "outcome",
        "progress",
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


class _Slot:
    """One engine actor and the tasks it runs."""

    __slots__ = ("address", "capacity", "engine", "index", "key", "pid", "restarts", "running")

    def __init__(self, ready: EngineReady, address: ActorAddress) -> None:
        self.engine = ready.engine
        self.index = ready.index
        self.pid = ready.pid
        self.capacity = ready.capacity
        self.restarts = ready.restarts
        self.address = address
        self.key = addr_key(address)
        self.running: set[str] = set()


class Scheduler(WireActor):
    role = "scheduler"

    def __init__(self) -> None:
        super().__init__()
        self.tasks: dict[str, _Rec] = {}
        self.slots: dict[str, list[_Slot]] = defaultdict(list)
        self.ready: dict[str, list[tuple[int, int, str]]] = defaultdict(list)
        self.seq = itertools.count()
        self.addresses: dict[str, ActorAddress] = {}
        self.counts: dict[str, int] = defaultdict(int)
        # outgoing batches, keyed by addr_key(address): (address, items)
        self._out: dict[str, tuple[ActorAddress, list[TaskOutcome]]] = {}
        self._dispatch: dict[str, tuple[ActorAddress, list[_Rec]]] = {}
        self._dirty: set[str] = set()  # engines whose queue may move
        self._events: list[Publish] = []
        self.degraded = ""
        self.faults: dict[str, dict[str, Any]] = {}  # task id -> planned fault (simulation)
        self.stop_requested = False
        self.retry_base = 0.02  # seconds before the first re-run; doubles per attempt
        self.retry_cap = 1.0

    # -- set-up -------------------------------------------------------------

    def on_introduce(self, msg: Introduce, sender: ActorAddress) -> None:
        self.addresses.update(msg.addresses)
        self.retry_base = float(msg.config.get("retry_backoff", self.retry_base))
        self.retry_cap = float(msg.config.get("retry_backoff_cap", self.retry_cap))

    def on_engine_ready(self, msg: EngineReady, sender: ActorAddress) -> None:
        slots = self.slots[msg.engine]
        fresh = _Slot(msg, sender)
        for i, s in enumerate(slots):
            if s.index == msg.index:
                self._lose_slot(s, "engine process was replaced while running this task")
                slots[i] = fresh
                break
        else:
            slots.append(fresh)
        if msg.restarts:
            self._publish(
                "llmspell.engine.restart",
                {
                    "engine": msg.engine,
                    "index": msg.index,
                    "pid": msg.pid,
                    "restarts": msg.restarts,
                },
            )
        self._dirty.add(msg.engine)

    def on_engine_event(self, msg: EngineEvent, sender: ActorAddress) -> None:
        """The engines' supervisor saw an engine die (or restarted it)."""
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
        if msg.what == "escalate":
            self.degraded = f"supervisor {msg.supervisor!r} gave up: {msg.detail}"
            self._publish("llmspell.runtime.degraded", {"reason": self.degraded})

    # -- submission ---------------------------------------------------------

    def on_submit(self, msg: SubmitTasks, sender: ActorAddress) -> None:
        t = now()
        fresh: list[_Rec] = []
        for spec in msg.tasks:
            if spec.id in self.tasks:
                self.send_msg(sender, SubmitRejected(spec.id, f"duplicate task id {spec.id!r}"))
                continue
            rec = _Rec(spec, t)
            self.tasks[spec.id] = rec
            if msg.notify:
                rec.watchers = [sender]
            self.counts["submitted"] += 1
            fresh.append(rec)
        if msg.cancelled is not None:  # an aggregator's tasks that will never run
            for rec in fresh:
                self._finish(rec, "cancelled", error=_err(msg.cancelled, kind="cancelled"))
            return
        # Dependencies are resolved after the whole batch is known, so a batch
        # may list a task before the task it depends on.
        for rec in fresh:
            self._link(rec)

    def _link(self, rec: _Rec) -> None:
        for dep_id in rec.spec.deps or ():
            dep = self.tasks.get(dep_id)
            if dep is None:
                self._finish(rec, "failed", error=_err(f"unknown dependency {dep_id!r}"))
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
            deps = [self.tasks[d] for d in spec.deps]
            if len(deps) == 1:
                spec.input = deps[0].outcome.value  # type: ignore[union-attr]
            else:  # keyed by each dependency's workflow step id where it has one
                spec.input = {_input_key(d): d.outcome.value for d in deps}  # type: ignore[union-attr]
        if spec.kind == "event":
            self._publish(spec.name or "", spec.payload)
            self._finish(rec, "succeeded", value=None)
            return
        if not rec.engine:
            self._finish(
                rec,
                "failed",
                error=_err(f"no engine runs {spec.kind!r} tasks yet", kind="failed"),
            )
            return
        heapq.heappush(self.ready[rec.engine], (-spec.priority, next(self.seq), spec.id))
        self._dirty.add(rec.engine)

    # -- dispatch -----------------------------------------------------------

    def _pump(self) -> None:
        for engine in self._dirty:
            slots = self.slots.get(engine)
            queue = self.ready.get(engine)
            if not slots or not queue:
                continue
            if len(slots) == 1:
                slot = slots[0]
                room = slot.capacity - len(slot.running)
                while queue and room > 0:
                    _, _, task_id = heapq.heappop(queue)
                    rec = self.tasks.get(task_id)
                    if rec is None or rec.status != "pending":
                        continue
                    self._start(rec, slot)
                    room -= 1
                continue
            while queue:  # several engines: each task to the least loaded one
                slot = min(slots, key=_load)
                if len(slot.running) >= slot.capacity:
                    break
                _, _, task_id = heapq.heappop(queue)
                rec = self.tasks.get(task_id)
                if rec is None or rec.status != "pending":
                    continue
                self._start(rec, slot)
        self._dirty.clear()

    def _start(self, rec: _Rec, slot: _Slot) -> None:
        task_id = rec.spec.id
        if self.faults and task_id in self.faults and self._apply_fault(rec):
            return
        rec.status = "running"
        rec.slot = slot
        rec.started_at = now()
        slot.running.add(task_id)
        self._dispatch.setdefault(slot.key, (slot.address, []))[1].append(rec)
        if rec.spec.timeout is not None:
            self.wake_after(rec.spec.timeout, ("timeout", task_id, rec.attempt))
        if rec.attempt == 0:
            self._publish("llmspell.task.running", {"task_id": task_id})

    # -- injected faults (simulation) ---------------------------------------------------

    def on_inject_faults(self, msg: InjectFaults, sender: ActorAddress) -> None:
        for f in msg.faults:
            if f.get("kind") in _TASK_FAULTS and isinstance(f.get("task"), str):
                self.faults[f["task"]] = f

    def _apply_fault(self, rec: _Rec) -> bool:
        """Apply the fault planned for ``rec`` as it would be dispatched; True
        if it is not dispatched now."""
        f = self.faults.pop(rec.spec.id)
        kind, task_id = f["kind"], rec.spec.id
        self._publish(f"llmspell.fault.{kind}", {"task_id": task_id})
        if kind == "slow_step":
            delay = float(f.get("delay") or 0.0)
            self.wake_after(delay, ("retry", task_id, rec.attempt))
            return True
        rec.status = "running"
        rec.started_at = now()
        if kind == "script_error":
            self._finish(
                rec,
                "failed",
                error=_err("injected fault: script error", kind="script", engine=rec.engine),
            )
        elif kind == "task_timeout":
            self._finish(
                rec, "timed_out", error=_err("injected fault: task timed out", kind="timeout")
            )
        else:
            self._finish(
                rec,
                "failed",
                error=_err(
                    "injected fault: resource limit exceeded", kind="resource", engine=rec.engine
                ),
            )
        return True

    def flush(self) -> None:
        if self._dirty:
            self._pump()
        if self._dispatch:
            batches, self._dispatch = self._dispatch, {}
            for addr, recs in batches.values():
                for i in range(0, len(recs), 500):
                    chunk = recs[i : i + 500]
                    self.send_msg(
                        addr, DispatchBatch([r.spec for r in chunk], [r.attempt for r in chunk])
                    )
        if self._out:
            out, self._out = self._out, {}
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
            if o.status == "failed" and rec.attempt < rec.spec.retries:
                self._retry(rec, o)
                continue
            self._finish(rec, o.status, value=o.value, error=o.error, usage=o.usage)

    def _retry(self, rec: _Rec, o: TaskOutcome) -> None:
        if rec.errors is None:
            rec.errors = []
        rec.errors.append(str((o.error or {}).get("message", "failed")))
        self._release(rec)
        rec.attempt += 1
        rec.status = "pending"
        self.counts["retries"] += 1
        self._publish(
            "llmspell.task.retry",
            {"task_id": rec.spec.id, "attempt": rec.attempt, "error": rec.errors[-1]},
        )
        # exponential backoff between attempts: base, 2*base, 4*base ... up to the cap
        delay = min(self.retry_cap, self.retry_base * 2 ** (rec.attempt - 1))
        if delay > 0:
            self.wake_after(delay, ("retry", rec.spec.id, rec.attempt))
        else:
            self._requeue(rec)

    def _requeue(self, rec: _Rec) -> None:
        heapq.heappush(self.ready[rec.engine], (-rec.spec.priority, next(self.seq), rec.spec.id))
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
    ) -> None:
        if rec.status in TERMINAL:
            return
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
        if rec.started_at is not None:
            usage.setdefault("duration", t - rec.started_at)
        rec.outcome = TaskOutcome(rec.spec.id, status, value, error, usage, rec.attempt)
        self.counts[status] += 1
        for w in rec.watchers or ():
            self._notify(w, rec.outcome)
        rec.watchers = None
        self._publish(
            f"llmspell.task.{status}",
            {"task_id": rec.spec.id, "kind": rec.spec.kind, "status": status},
        )
        dependents, rec.dependents = rec.dependents, None
        for dep_id in dependents or ():
            child = self.tasks.get(dep_id)
            if child is None or child.status != "pending":
                continue
            if status == "succeeded":
                child.waiting -= 1
                if child.waiting == 0:
                    self._make_ready(child)
            else:
                self._finish(child, "failed", error=_dep_error(rec))

    def _notify(self, watcher: ActorAddress, outcome: TaskOutcome) -> None:
        self._out.setdefault(addr_key(watcher), (watcher, []))[1].append(outcome)

    # -- cancel, timeout ----------------------------------------------------

    def on_cancel(self, msg: CancelTasks, sender: ActorAddress) -> None:
        cancelled = []
        for task_id in msg.task_ids:
            rec = self.tasks.get(task_id)
            if rec is not None and rec.status not in TERMINAL:
                self._finish(rec, "cancelled", error=_err(msg.reason, kind="cancelled"))
                cancelled.append(task_id)
        if msg.ref:
            self.send_msg(sender, CancelReply(msg.ref, cancelled))

    def on_wakeup(self, payload: Any) -> None:
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
            if rec is None:
                self._notify(
                    sender,
                    TaskOutcome(task_id, "failed", error=_err(f"unknown task id {task_id!r}")),
                )
            elif rec.outcome is not None:
                self._notify(sender, rec.outcome)
            elif rec.watchers is None:
                rec.watchers = [sender]
            elif sender not in rec.watchers:
                rec.watchers.append(sender)

    def on_progress_batch(self, msg: ProgressBatch, sender: ActorAddress) -> None:
        for p in msg.items:
            rec = self.tasks.get(p.task_id)
            if rec is None or rec.status in TERMINAL:
                continue
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
            statuses[task_id] = rec.status if rec is not None else "unknown"
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
        }
        self.send_msg(sender, StatsReply(msg.ref, stats))

    # -- shutdown -----------------------------------------------------------

    def on_shutdown(self, msg: Any, sender: ActorAddress) -> None:
        for rec in list(self.tasks.values()):
            if rec.status not in TERMINAL:
                self._finish(rec, "cancelled", error=_err(msg.reason, kind="cancelled"))

    def _publish(self, name: str, payload: Any) -> None:
        if "events" in self.addresses:
            self._events.append(Publish(name, payload, now()))


def _input_key(dep: _Rec) -> str:
    """The key of a dependency's value in a ``deps_input`` map: its workflow
    step id (``metadata["step"]``, set by ``llmspell.workflow``) or its task id."""
    md = dep.spec.metadata
    step = md.get("step") if md else None
    return step if isinstance(step, str) else dep.spec.id


_SCRIPT_AND_PYTHON = frozenset(("python", "lua", "js"))
_TASK_FAULTS = frozenset(("script_error", "slow_step", "task_timeout", "resource_breach"))


def _load(slot: _Slot) -> tuple[int, float]:
    """Least loaded first: fewest running tasks, then the emptiest."""
    if not slot.capacity:
        return (1 << 62, 1.0)
    return (len(slot.running), len(slot.running) / slot.capacity)


def _err(message: str, *, kind: str = "failed", engine: str = "runtime") -> dict[str, Any]:
    return {"message": message, "kind": kind, "engine": engine}


def _dep_error(dep: _Rec) -> dict[str, Any]:
    what = {"failed": "failed", "cancelled": "was cancelled", "timed_out": "timed out"}
    reason = ""
    if dep.outcome is not None and dep.outcome.error:
        reason = f": {dep.outcome.error.get('message', '')}"
    msg = f"dependency {dep.spec.id!r} {what.get(dep.status, dep.status)}{reason}"
    return _err(msg, kind="dependency")
