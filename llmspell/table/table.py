"""The task table: every task's state, changed only by events.

``TaskTable.apply(event)`` is the one way a task changes. It does no I/O,
reads no clock (each event carries its time) and knows no actor: what the
outside world must do about a change, it leaves in the table's effect lists,
which its owner (the scheduler actor) drains:

* ``ready``: tasks whose dependencies all succeeded (``spec.input`` filled for
  ``deps_input``), to be routed to an engine;
* ``ended``: tasks that just reached a terminal state, in order (tell their
  watchers ``rec.outcome``; a task ended while on an engine still holds its
  ``slot``: free it, and stop it there if it was cancelled or timed out);
* ``retried``: ``(rec, delay)`` of each task going back to pending for another
  run, ``delay`` the backoff before it may be queued again;
* ``warnings``: messages to log (a script's submit refused by the sandbox).

The events (``llmspell.table.events``):

* ``Submitted``: new tasks, one batch. Duplicates are refused; children are
  tied to their parent (depth, sandbox); dependencies are linked after the
  whole batch is known; a cycle (only a batch can close one) fails each of its
  tasks with an error naming the cycle; an unknown or failed dependency fails
  the task with a dependency error.
* ``Dispatched``: pending -> running (attempt n).
* ``Ended``: running or pending -> a terminal state; with ``may_retry`` a
  failure with retries left is a ``Retried`` instead.
* ``Retried``: running -> pending, attempt + 1, backoff
  ``min(retry_cap, retry_base * 2 ** (attempt - 1))``.
* ``Cancelled``: the named tasks end cancelled (unknown ones remembered).
* ``Restored`` / ``Tombstoned``: resume from storage (see their docstrings).
* ``Unrecorded``: the journal failed to record these ends; they read failed
  (the one change of a terminal state: storage never had it).

Invariants (tests/table/ checks them over random event sequences):

* status moves pending -> running -> exactly one terminal state (running ->
  pending only by ``Retried``) and never leaves a terminal state (but by
  ``Unrecorded``, to ``failed``);
* a task is never ready, so never dispatched, before all its dependencies
  succeeded; a dependency that failed, was cancelled or timed out fails its
  dependents with a ``"dependency"`` error naming it and the first cause;
* a task runs at most ``1 + spec.retries`` times;
* ending a task ends what it sets off (dependents failed, children of a
  cancelled or timed-out parent cancelled, dependents made ready) in order
  through one work list, never by recursion: a chain of any length is safe;
* finished records are kept whole for the last ``history`` tasks that ended
  (longer while a parent or a ``deps_input`` dependent that will read them has
  not ended), then shrink to a tombstone; tombstones are kept for the last
  ``100 x history`` (at least 100).

``log``: None (no cost), or a list to which every durable event is appended in
the order applied: ``Submitted`` (its ``accepted`` specs), ``Dispatched``,
``Retried`` and ``Ended`` (one per task: ends set off by others, cancels and
cycle failures are logged as ``Ended`` events of their own). Tasks made with
``durable=False`` never appear in it.
"""

from __future__ import annotations

import itertools
from collections import defaultdict, deque
from collections.abc import Callable
from typing import Any

from ..messages.config import DEFAULTS
from ..messages.types import TaskError, TaskOutcome, TaskSpec
from .events import (
    Cancelled,
    Dispatched,
    Ended,
    Event,
    Restored,
    Retried,
    Submitted,
    Tombstoned,
    Unrecorded,
)
from .records import Rec, Tombstone
from .status import PLAIN, STATUS, TERMINAL, TaskStatus

__all__ = [
    "FORGOTTEN",
    "HISTORY",
    "MAX_DEPTH",
    "TaskTable",
    "dep_error",
    "err",
    "input_key",
]

PENDING = TaskStatus.PENDING
RUNNING = TaskStatus.RUNNING
SUCCEEDED = TaskStatus.SUCCEEDED
FAILED = TaskStatus.FAILED
CANCELLED = TaskStatus.CANCELLED
TIMED_OUT = TaskStatus.TIMED_OUT

HISTORY = DEFAULTS.history  # finished task records kept by default (Runtime(history=...))
MAX_DEPTH = 256  # parents above a task at the most
_FORGET_BATCH = 256  # records are forgotten in batches (up to this many, history/8)
FORGOTTEN = "its result is no longer kept (the scheduler keeps 100 x `history` finished tasks)"
_ENDED = {"failed": "failed", "cancelled": "was cancelled", "timed_out": "timed out"}


class TaskTable:
    """Every task's record, the dependency graph, retries and retention."""

    __slots__ = (
        "_cascade",
        "_ended_ids",
        "_handlers",
        "counts",
        "ended",
        "gone",
        "history",
        "log",
        "precancelled",
        "ready",
        "retried",
        "retry_base",
        "retry_cap",
        "script_python",
        "tasks",
        "warnings",
    )

    def __init__(
        self,
        *,
        history: int = HISTORY,
        retry_base: float = DEFAULTS.retry_backoff,
        retry_cap: float = DEFAULTS.retry_backoff_cap,
    ) -> None:
        self.tasks: dict[str, Rec] = {}
        # forgotten task -> tombstone, oldest first
        self.gone: dict[str, Tombstone] = {}
        self.history = history
        self.retry_base = retry_base  # seconds before the first re-run; doubles per attempt
        self.retry_cap = retry_cap
        # "submitted", "retries", "restored" and one per terminal status
        self.counts: dict[str, int] = defaultdict(int)
        self.log: list[Event] | None = None
        # Python targets a script may run (a match function), None: none
        self.script_python: Callable[[str], Any] | None = None
        self.precancelled: dict[str, str] = {}  # cancelled before submitted -> reason
        # effects, drained by the owner
        self.ready: list[Rec] = []
        self.ended: list[Rec] = []
        self.retried: list[tuple[Rec, float]] = []
        self.warnings: list[str] = []
        self._ended_ids: deque[str] = deque()  # finished ids, oldest first
        self._cascade: list[tuple[Rec, TaskStatus | None, dict[str, Any] | None]] | None = None
        self._handlers: dict[type, Callable[[Any], None]] = {
            Submitted: self._submitted,
            Dispatched: self._dispatched,
            Ended: self._ended,
            Retried: self._retried,
            Cancelled: self._cancelled,
            Restored: self._restored,
            Tombstoned: self._tombstoned,
            Unrecorded: self._unrecorded,
        }

    def apply(self, event: Event) -> None:
        """Apply one event (see the module docstring); its effects are left in
        ``ready``, ``ended``, ``retried`` and ``warnings``."""
        self._handlers[type(event)](event)

    # -- queries -------------------------------------------------------------

    def status(self, task_id: str) -> str:
        """The task's status, its tombstone's, or ``"unknown"``."""
        rec = self.tasks.get(task_id)
        if rec is not None:
            return rec.status
        gone = self.gone.get(task_id)
        return gone[0] if gone is not None else "unknown"

    def backoff(self, attempt: int) -> float:
        """Seconds before run ``attempt`` (1, 2, ...) may start: base, 2 x base,
        4 x base ... up to the cap."""
        return min(self.retry_cap, self.retry_base * 2.0 ** (attempt - 1))

    # -- submission ------------------------------------------------------------

    def _submitted(self, ev: Submitted) -> None:
        if self.log is not None and ev.durable:
            self.log.append(ev)
        cascade = self._open()
        try:
            self._take(ev)
            if cascade is not None:
                self._run(cascade, ev.t)
        finally:
            if cascade is not None:
                self._cascade = None

    def _take(self, ev: Submitted) -> None:
        tasks, gone, t = self.tasks, self.gone, ev.t
        fresh: list[Rec] = []
        watchers = ev.watchers  # one list for the batch: replaced, never appended to
        accepted = ev.accepted
        for spec in ev.specs:
            task_id = spec.id
            if task_id in tasks or task_id in gone:
                if ev.replayed:
                    ev.known.append(task_id)
                else:
                    ev.rejected.append((task_id, f"duplicate task id {task_id!r}"))
                continue
            rec = Rec(spec, t)
            tasks[task_id] = rec
            rec.watchers = watchers
            if not ev.durable:
                rec.durable = False
            accepted.append(spec)
            self.counts["submitted"] += 1
            if spec.parent is not None:
                self._adopt(rec, t)
            if self.precancelled and task_id in self.precancelled:
                reason = self.precancelled.pop(task_id)
                self._end(rec, CANCELLED, t, error=err(reason, kind="cancelled"))
            fresh.append(rec)
        if ev.cancelled is not None:  # an aggregator's tasks that will never run
            for rec in fresh:
                self._end(rec, CANCELLED, t, error=err(ev.cancelled, kind="cancelled"))
            return
        self._link_all(fresh, t)

    def _restored(self, ev: Restored) -> None:
        cascade = self._open()
        try:
            self._take_restored(ev)
            if cascade is not None:
                self._run(cascade, ev.t)
        finally:
            if cascade is not None:
                self._cascade = None

    def _take_restored(self, ev: Restored) -> None:
        # (a resume may bring back 100,000s of tasks: the loop is kept lean)
        tasks, gone, t = self.tasks, self.gone, ev.t
        fresh: list[Rec] = []
        add, accept = fresh.append, ev.accepted.append
        for spec, attempt, created in ev.tasks:
            task_id = spec.id
            if task_id in tasks or task_id in gone:
                ev.rejected.append((task_id, f"task id {task_id!r} is known already"))
                continue
            rec = Rec(spec, created)
            if attempt:
                rec.attempt = attempt
            tasks[task_id] = rec
            accept(spec)
            if spec.parent is not None:
                self._adopt(rec, t)
            add(rec)
        self.counts["restored"] += len(ev.accepted)
        self._link_all(fresh, t)

    def _tombstoned(self, ev: Tombstoned) -> None:
        status = STATUS.get(ev.status)
        if status is None or status not in TERMINAL:
            raise ValueError(f"a tombstone's status must be terminal, not {ev.status!r}")
        self.gone[ev.task_id] = (PLAIN[status], ev.value, ev.error, ev.key or ev.task_id)

    def _unrecorded(self, ev: Unrecorded) -> None:
        for task_id in ev.task_ids:
            rec = self.tasks.get(task_id)
            if rec is not None and rec.status in TERMINAL:
                self.counts[rec.status] -= 1
                self.counts[FAILED] += 1
                rec.status = FAILED
                rec.outcome = TaskOutcome(task_id, FAILED, None, dict(ev.error), None, rec.attempt)
            elif task_id in self.gone:
                self.gone[task_id] = (PLAIN[FAILED], None, dict(ev.error), self.gone[task_id][3])

    def _link_all(self, fresh: list[Rec], t: float) -> None:
        # a child of a task that was cancelled or timed out, or nested too deeply
        fresh = [rec for rec in fresh if rec.status is PENDING]
        # Dependencies are resolved after the whole batch is known, so a batch
        # may list a task before the task it depends on.
        ready = self.ready
        for rec in fresh:
            if rec.spec.deps:
                self._link(rec, t)
            else:  # (what _link and _ready come to for a task without dependencies)
                ready.append(rec)
        # Only a batch can close a cycle (a task may name only tasks already
        # known or listed with it): fail the tasks of each cycle, which would
        # otherwise wait for each other forever. On a cycle every task waits
        # and is waited for by one of the batch (nothing earlier can depend on
        # it): with no such task there is no walk (the usual fan-in, or a
        # resume of many tasks behind one).
        if any(rec.waiting and rec.dependents and rec.status is PENDING for rec in fresh):
            self._fail_cycles(fresh, t)

    def _fail_cycles(self, fresh: list[Rec], t: float) -> None:
        waiting = {r.spec.id: r for r in fresh if r.waiting and r.status is PENDING}
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
            error = err("dependency cycle: " + " -> ".join(cycle), kind="dependency")
            error["cause"] = error["message"]
            for task_id in cycle[:-1]:
                rec = self.tasks.get(task_id)
                if rec is not None and rec.status is PENDING:
                    self._end(rec, FAILED, t, error=error)

    def _adopt(self, rec: Rec, t: float) -> None:
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
        refused = self._refused(rec.spec) if rec.scripted else None
        if refused is not None:
            # said where it cannot be missed: a race or best-effort may swallow the failure
            self.warnings.append(
                f"task {rec.spec.id} (submitted by {parent.spec.id}) refused: {refused}"
            )
            self._end(rec, FAILED, t, error=err(refused))
        elif rec.depth > MAX_DEPTH:
            self._end(
                rec,
                FAILED,
                t,
                error=err(
                    f"tasks nested more than {MAX_DEPTH} levels deep (a task or workflow "
                    "that submits itself?)"
                ),
            )
        elif parent.status is CANCELLED or parent.status is TIMED_OUT:
            self._end(rec, CANCELLED, t, error=_parent_gone(parent))
        elif parent.status not in TERMINAL:
            if parent.kids is None:
                parent.kids = []
            parent.kids.append(rec.spec.id)

    def _refused(self, spec: TaskSpec) -> str | None:
        """Why a task a script submitted (directly or through a workflow or a
        coordination) may not run: scripts are sandboxed, so they reach Python
        only through registered tools and agents and the targets the runtime
        allows, and they read no files."""
        if spec.kind == "python":
            target = spec.target or ""
            allowed = self.script_python
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

    def _link(self, rec: Rec, t: float) -> None:
        for dep_id in rec.spec.deps or ():
            dep = self.tasks.get(dep_id)
            if dep is None:
                gone = self.gone.get(dep_id)
                if gone is not None and gone[0] == "succeeded":
                    continue  # its value, for deps_input, is in the tombstone
                if gone is None:
                    error = err(f"unknown dependency {dep_id!r}")
                else:
                    error = dep_error(dep_id, gone[0], gone[2])
                self._end(rec, FAILED, t, error=error)
                return
            if dep.status is not SUCCEEDED:
                if dep.status in TERMINAL:
                    self._end(rec, FAILED, t, error=_dep_error(dep))
                    return
                rec.waiting += 1
                if dep.dependents is None:
                    dep.dependents = []
                dep.dependents.append(rec.spec.id)
        if rec.waiting == 0:
            self._ready(rec, t)

    def _ready(self, rec: Rec, t: float) -> None:
        """All of ``rec``'s dependencies succeeded: fill its ``deps_input`` and
        hand it to the owner."""
        spec = rec.spec
        if spec.deps_input and spec.deps:
            values: dict[str, Any] = {}  # deps_input key -> value
            for d in spec.deps:
                dep = self.tasks.get(d)
                if dep is not None and dep.outcome is not None:
                    values[input_key(dep.spec)] = dep.outcome.value
                elif d in self.gone:
                    _, value, _, key = self.gone[d]
                    values[key] = value
                else:  # older than its tombstone (held while this waited: not expected)
                    error = err(f"dependency {d!r} ended too long ago: {FORGOTTEN}")
                    self._end(rec, FAILED, t, error=error)
                    return
            # one dependency: its value; several: keyed by workflow step id (or task id)
            spec.input = next(iter(values.values())) if len(spec.deps) == 1 else values
        self.ready.append(rec)

    # -- running, retrying, ending ----------------------------------------------
    # (dispatch and ran: the scheduler's hot path, one run's start and its
    # engine's outcome, each as apply() would take its event)

    def dispatch(self, rec: Rec, t: float) -> None:
        """``apply(Dispatched(id, rec.attempt, t))`` for a pending ``rec`` of this
        table, the event made only for the log."""
        if self.log is not None or rec.status is not PENDING:
            self._dispatched(Dispatched(rec.spec.id, rec.attempt, t))
            return
        rec.status = RUNNING
        rec.started_at = t

    def ran(self, rec: Rec, o: TaskOutcome, t: float, may_retry: bool) -> None:
        """``apply(Ended(id, o.status, t, o.value, o.error, o.usage, o, may_retry))``
        for a running ``rec`` of this table and its engine's outcome ``o``. A
        success that sets nothing off (no dependents, children or log) is
        taken here as ``_end`` would take it, without the event (``_retire`` keeps it
        for a parent still running as before)."""
        usage = o.usage
        if (
            o.status != "succeeded"
            or rec.status is not RUNNING
            or self.log is not None
            or self._cascade is not None
            or rec.dependents
            or rec.kids
            or o.error is not None
        ):
            self._ended(Ended(o.task_id, o.status, t, o.value, o.error, usage, o, may_retry))
            return
        rec.status = SUCCEEDED
        rec.ended_at = t
        if usage is None:
            usage = o.usage = {}
        if rec.started_at is not None and "duration" not in usage:
            usage["duration"] = t - rec.started_at
        o.status = SUCCEEDED
        rec.outcome = o
        self.counts[SUCCEEDED] += 1
        self.ended.append(rec)
        rec.dependents = rec.kids = None
        self._retire(rec)

    def _dispatched(self, ev: Dispatched) -> None:
        rec = self.tasks[ev.task_id]
        if rec.status is not PENDING or rec.attempt != ev.attempt:
            raise ValueError(
                f"task {ev.task_id!r} dispatched as attempt {ev.attempt} while "
                f"{rec.status} at attempt {rec.attempt}"
            )
        rec.status = RUNNING
        rec.started_at = ev.t
        if self.log is not None and rec.durable:
            self.log.append(ev)

    def _retried(self, ev: Retried) -> None:
        rec = self.tasks[ev.task_id]
        if rec.status is not RUNNING:
            raise ValueError(f"task {ev.task_id!r} retried while {rec.status}")
        if rec.errors is None:
            rec.errors = []
        rec.errors.append(ev.error)
        rec.attempt += 1
        ev.attempt = rec.attempt
        rec.status = PENDING
        self.counts["retries"] += 1
        self.retried.append((rec, self.backoff(rec.attempt)))
        if self.log is not None and rec.durable:
            self.log.append(ev)

    def _ended(self, ev: Ended) -> None:
        rec = self.tasks.get(ev.task_id)
        if rec is None or rec.status in TERMINAL:
            return  # the first terminal state wins
        status = STATUS.get(ev.status)
        error = ev.error
        if status is None or status not in TERMINAL:
            status = FAILED
            error = err(f"the task was reported {ev.status!r}, which is not an end state")
        if (
            ev.may_retry
            and status is FAILED
            and rec.status is RUNNING
            and rec.attempt < rec.spec.retries
        ):
            message = str((error or {}).get("message", "failed"))
            self._retried(Retried(ev.task_id, message, ev.t))
            return
        cascade = self._open()
        try:
            self._end(rec, status, ev.t, ev.value, error, ev.usage, ev.outcome, ev)
            if cascade is not None:
                self._run(cascade, ev.t)
        finally:
            if cascade is not None:
                self._cascade = None

    def _cancelled(self, ev: Cancelled) -> None:
        cascade = self._open()
        try:
            for task_id in ev.task_ids:
                rec = self.tasks.get(task_id)
                if rec is not None and rec.status not in TERMINAL:
                    error = err(ev.reason, kind="cancelled")
                    if ev.shutdown:
                        error["shutdown"] = True
                    self._end(rec, CANCELLED, ev.t, error=error)
                    ev.done.append(task_id)
                elif rec is None and ev.early and task_id not in self.gone:
                    # The facade cancels only ids it handed out, so one unknown here is
                    # not submitted yet (a coordination's later member, or a submit
                    # the cancel overtook): it ends cancelled the moment it comes.
                    self.precancelled[task_id] = ev.reason
                    if len(self.precancelled) > 10_000:
                        self.precancelled.pop(next(iter(self.precancelled)))
                    ev.done.append(task_id)
            if cascade is not None:
                self._run(cascade, ev.t)
        finally:
            if cascade is not None:
                self._cascade = None

    def _open(self) -> list[tuple[Rec, TaskStatus | None, dict[str, Any] | None]] | None:
        """Start the work list of what ends set off, unless one is open (then
        the outermost event runs it): the new list, or None."""
        if self._cascade is not None:
            return None
        self._cascade = []
        return self._cascade

    def _run(
        self, cascade: list[tuple[Rec, TaskStatus | None, dict[str, Any] | None]], t: float
    ) -> None:
        """What ends set off, in order, each entry possibly adding more: a
        failure at the head of a chain of 10,000 tasks must not exhaust the
        stack, so nothing here recurses."""
        i = 0
        while i < len(cascade):
            child, what, error = cascade[i]
            i += 1
            if what is None:  # its last dependency succeeded
                if child.status is PENDING:
                    self._ready(child, t)
            elif what is FAILED:
                if child.status is PENDING:
                    self._end(child, FAILED, t, error=error)
            else:
                self._end(child, what, t, error=error)

    def _end(
        self,
        rec: Rec,
        status: TaskStatus,
        t: float,
        value: Any = None,
        error: dict[str, Any] | None = None,
        usage: dict[str, Any] | None = None,
        reuse: TaskOutcome | None = None,
        ev: Ended | None = None,
    ) -> None:
        """End ``rec`` in ``status`` (the first terminal state wins). ``reuse``:
        the engine's outcome this came from, kept as the record's own. What the
        end sets off goes on the open work list (the caller opened one)."""
        if rec.status in TERMINAL:
            return
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
            reuse.status = status
            rec.outcome = reuse
        else:
            rec.outcome = TaskOutcome(rec.spec.id, status, value, error, usage, rec.attempt)
        self.counts[status] += 1
        self.ended.append(rec)
        if self.log is not None and rec.durable:
            if ev is None:
                ev = Ended(rec.spec.id, status, t, value, error)
            ev.status, ev.error = status, error
            ev.attempt = rec.attempt
            self.log.append(ev)
        cascade = self._cascade
        if cascade is None:  # not inside an event's work list: a list of its own
            cascade = self._cascade = []
            try:
                self._set_off(rec, status, cascade)
                self._run(cascade, t)
            finally:
                self._cascade = None
            return
        self._set_off(rec, status, cascade)

    def _set_off(
        self,
        rec: Rec,
        status: TaskStatus,
        cascade: list[tuple[Rec, TaskStatus | None, dict[str, Any] | None]],
    ) -> None:
        """Put what ``rec``'s end sets off on ``cascade`` and retire it."""
        dependents, rec.dependents = rec.dependents, None
        holder = None  # a dependent that will still read this task's value
        tasks = self.tasks
        for dep_id in dependents or ():
            child = tasks.get(dep_id)
            if child is None or child.status is not PENDING:
                continue
            if status is SUCCEEDED:
                child.waiting -= 1
                if child.waiting == 0:
                    cascade.append((child, None, None))
                elif child.spec.deps_input and holder is None:
                    holder = child
            else:
                cascade.append((child, FAILED, _dep_error(rec)))
        kids, rec.kids = rec.kids, None
        if kids and (status is CANCELLED or status is TIMED_OUT):
            gone = _parent_gone(rec)
            for kid_id in kids:
                kid = tasks.get(kid_id)
                if kid is not None and kid.status not in TERMINAL:
                    cascade.append((kid, CANCELLED, gone))
        self._retire(rec, holder)

    # -- retention -----------------------------------------------------------------

    def _retire(self, rec: Rec, holder: Rec | None = None) -> None:
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
        ended = self._ended_ids
        ended.append(spec.id)
        if rec.children is not None:
            ended.extend(rec.children)
            rec.children = None
        if len(ended) > self.history + min(_FORGET_BATCH, self.history >> 3):
            self._forget(len(ended) - self.history)

    def _forget(self, count: int) -> None:
        """Forget the ``count`` oldest finished records (in one go: cheaper per task)."""
        ended, tasks, gone = self._ended_ids, self.tasks, self.gone
        pop, take = tasks.pop, ended.popleft
        for _ in range(count):
            task_id = take()
            rec = pop(task_id, None)
            if rec is not None and rec.outcome is not None:
                o = rec.outcome
                # a plain status: a tuple of atoms the garbage collector can untrack
                gone[task_id] = (PLAIN[o.status], o.value, o.error, input_key(rec.spec))
        if len(gone) > max(100 * self.history, 100):  # keep the newer half (insertion order)
            self.gone = dict(itertools.islice(gone.items(), len(gone) // 2, None))


def input_key(spec: TaskSpec) -> str:
    """The key of a dependency's value in a ``deps_input`` map: its workflow
    step id (``metadata["step"]``, set by ``llmspell.workflow``) or its task id."""
    md = spec.metadata
    step = md.get("step") if md else None
    return step if isinstance(step, str) else spec.id


def err(message: str, *, kind: str = "failed", engine: str = "runtime") -> dict[str, Any]:
    """An error dict as outcomes carry it."""
    return TaskError(message, kind=kind, engine=engine).wire()


def _parent_gone(parent: Rec) -> dict[str, Any]:
    ended = _ENDED.get(parent.status, parent.status)
    return err(f"its parent task {parent.spec.id!r} {ended}", kind="cancelled")


def _dep_error(dep: Rec) -> dict[str, Any]:
    return dep_error(dep.spec.id, dep.status, dep.outcome.error if dep.outcome else None)


def dep_error(dep_id: str, status: str, error: dict[str, Any] | None) -> dict[str, Any]:
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
    e = err(message, kind="dependency")
    e["cause"] = cause
    return e
