"""Aggregator actors: one per coordination request, one class per strategy.

The coordinator creates an aggregator as its child and sends it
``StartAggregation``. The aggregator submits the tasks to the scheduler
(``SubmitTasks(notify=True)``, so it hears a ``TaskOutcome`` for each), cancels
with ``CancelTasks``, answers the requester with one ``CoordinationDone`` and
then tells the coordinator ``AggregationEnded``, which stops it.

Semantics (the result is a ``CoordinationResult`` as a dict):

* ``results`` has one slot per task, in task order, None where a task has no
  value; ``succeeded`` lists indices, ``failed`` ``[index, message]`` pairs
  (failed or timed out tasks), ``cancelled`` indices. Every task lands in
  exactly one of the three.
* SEQUENTIAL submits task i+1 when task i ended, whatever its end.
  PARALLEL and BEST_EFFORT submit all at once; BEST_EFFORT is ``ok`` unless
  the coordination timed out.
* PIPELINE submits stage i+1 with stage i's value as its ``input`` when stage
  i succeeded; a stage that did not succeed cancels the later stages. With
  ``inputs`` every input flows through every stage: each stage works on one
  item at a time, at most ``PIPELINE_BUFFER`` items wait before a stage (a
  stage whose output has no room waits before taking its next item), each
  stage task runs as a clone of the stage's spec with the id
  ``"<stage id>#<item index>"``, and the slots of ``results``, ``succeeded``,
  ``failed`` and ``cancelled`` are then the *inputs*: ``results[k]`` is the
  last stage's output for input k. A failure ends only its own item.
* RACE submits all; the first task to *succeed* is the ``winner`` and the
  others are cancelled at once. ``ok`` when there is a winner.
* ALL_OR_NOTHING submits all; the first task that does not succeed cancels
  the rest; then the ``compensate`` task of each task that succeeded runs, in
  reverse order of completion, one after another (their ends are listed in
  ``compensated``); ``results`` is then all None.
* A coordination ``timeout`` cancels what runs, records what never started
  as cancelled, sets ``timed_out`` and makes ``ok`` False (ALL_OR_NOTHING
  still compensates).
* ``resource_usage`` sums ``cpu_seconds``, ``duration`` and network bytes
  over every task the aggregator ran (compensations and pipeline clones too)
  and takes the largest ``memory_bytes``; ``duration`` is the coordination's
  wall time.

Tasks that never started still end in one state: they are submitted with
``SubmitTasks(cancelled=reason)``, which the scheduler records as cancelled
without running them. The aggregator answers only when every task it
submitted has reached a terminal state, so no task of a finished
coordination is left running.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Callable
from typing import Any

from thespian.actors import ActorAddress

from .._actor import WireActor, log
from .._clock import now
from ..messages.types import (
    AggregationEnded,
    CancelTasks,
    CoordinationDone,
    Publish,
    StartAggregation,
    StopAggregation,
    SubmitRejected,
    SubmitTasks,
    TaskError,
    TaskOutcome,
    TaskOutcomes,
    TaskSpec,
)

__all__ = [
    "AGGREGATORS",
    "PIPELINE_BUFFER",
    "Aggregator",
    "AllOrNothingAggregator",
    "BestEffortAggregator",
    "ParallelAggregator",
    "PipelineAggregator",
    "RaceAggregator",
    "SequentialAggregator",
    "empty_result",
]

#: how many items may wait before a pipeline stage (pipelines with ``inputs``)
PIPELINE_BUFFER = 2

_TIMEOUT = "coordination-timeout"
_FAILED = ("failed", "timed_out")


def empty_result(strategy: str, n: int, message: str) -> dict[str, Any]:
    """A result for a coordination that could not run at all: every task
    failed with ``message`` (also under ``error``)."""
    return {
        "strategy": strategy,
        "ok": False,
        "results": [None] * n,
        "succeeded": [],
        "failed": [[i, message] for i in range(n)],
        "cancelled": [],
        "winner": None,
        "duration": 0.0,
        "resource_usage": _Usage().to_dict(),
        "timed_out": False,
        "error": message,
    }


class _Usage:
    """Summed resource use of the tasks of one coordination."""

    __slots__ = ("cpu", "duration", "memory", "received", "sent")

    def __init__(self) -> None:
        self.memory = 0
        self.cpu = 0.0
        self.sent = 0
        self.received = 0
        self.duration = 0.0

    def add(self, usage: dict[str, Any] | None) -> None:
        if not usage:
            return
        self.memory = max(self.memory, int(usage.get("memory_bytes") or 0))
        self.cpu += float(usage.get("cpu_seconds") or 0.0)
        self.sent += int(usage.get("network_bytes_sent") or 0)
        self.received += int(usage.get("network_bytes_received") or 0)
        self.duration += float(usage.get("duration") or 0.0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "memory_bytes": self.memory,
            "cpu_seconds": self.cpu,
            "network_bytes_sent": self.sent,
            "network_bytes_received": self.received,
            "duration": self.duration,
        }


def _message(o: TaskOutcome) -> str:
    message = str((o.error or {}).get("message") or o.status)
    return "timed out: " + message if o.status == "timed_out" else message


class Aggregator(WireActor):
    """The bookkeeping every strategy shares; subclasses fill in ``begin``,
    ``ended`` and ``ok``.

    Slot ``i`` is ``tasks[i]``; its status is None until submitted, then
    ``"running"``, then the task's terminal status.
    """

    role = "aggregator"
    strategy = ""

    def __init__(self) -> None:
        super().__init__()
        self.coord_id = ""
        self.requester: ActorAddress | None = None
        self.scheduler: ActorAddress | None = None
        self.events: ActorAddress | None = None
        self.coordinator: ActorAddress | None = None
        self.specs: list[TaskSpec] = []
        self.inputs: list[Any] | None = None
        self.replayed = False  # SubmitTasks(replayed=True): a run resumed from a journal
        self.timeout: float | None = None
        self.ids: dict[str, int] = {}
        self.status: list[str | None] = []
        self.values: list[Any] = []
        self.errors: list[str] = []
        # Invariant: ``live`` holds the ids submitted and not yet ended; the
        # answer goes out only once it is empty.
        self.live: set[str] = set()
        self.usage = _Usage()
        self.started_at = 0.0
        self.timed_out = False
        self.closing = False  # the strategy decided: answer once ``live`` is empty
        self.done = False  # answered or stopped
        self.extra: dict[str, Any] = {}  # strategy-specific result fields
        self._submit: list[TaskSpec] = []
        self._never: list[tuple[str, list[TaskSpec]]] = []
        self._cancel: dict[str, list[str]] = {}
        self._cancel_sent: set[str] = set()
        self._publish: list[Publish] = []
        self._reply: CoordinationDone | None = None
        self._ended = False

    # -- set-up ---------------------------------------------------------------

    def on_start_aggregation(self, msg: StartAggregation, sender: ActorAddress) -> None:
        if self.requester is not None:
            return  # one coordination per aggregator
        self.coord_id = msg.coord_id
        self.requester = msg.requester
        self.scheduler = msg.scheduler
        self.events = msg.events
        self.coordinator = sender
        self.specs = list(msg.tasks)
        self.replayed = msg.replayed
        self.inputs = msg.inputs
        self.timeout = msg.timeout
        n = len(self.specs)
        self.ids = {s.id: i for i, s in enumerate(self.specs)}
        self.status = [None] * n
        self.values = [None] * n
        self.errors = [""] * n
        self.error_of: dict[int, dict[str, Any]] = {}  # slot -> its outcome's error
        self.started_at = now()
        self.run_hook(
            "coordination.before",
            {"coord_id": self.coord_id, "strategy": self.strategy, "tasks": n},
        )
        if msg.timeout is not None:
            self.wake_after(msg.timeout, _TIMEOUT)
        self._guard(self.begin)

    # -- hooks for the strategies ------------------------------------------------

    def begin(self) -> None:
        """Submit the first tasks."""
        raise NotImplementedError

    def ended(self, i: int, o: TaskOutcome) -> None:
        """Slot ``i`` reached a terminal state (already recorded)."""
        raise NotImplementedError

    def ok(self, succeeded: list[int]) -> bool:
        return len(succeeded) == len(self.specs)

    def other_outcome(self, o: TaskOutcome) -> None:
        """An outcome of a task that is not one of the slots (compensations, clones)."""

    def on_timed_out(self, reason: str) -> None:
        """The coordination's timeout ran out: cancel what is left, answer."""
        self.timed_out = True
        self.abort(reason)
        self.finish()

    def result(self) -> dict[str, Any]:
        status = self.status
        succeeded = [i for i, s in enumerate(status) if s == "succeeded"]
        result: dict[str, Any] = {
            "strategy": self.strategy,
            "ok": self.ok(succeeded) and not self.timed_out,
            "results": [v if status[i] == "succeeded" else None for i, v in enumerate(self.values)],
            "succeeded": succeeded,
            "failed": [[i, self.errors[i]] for i, s in enumerate(status) if s in _FAILED],
            "cancelled": [i for i, s in enumerate(status) if s not in _FAILED and s != "succeeded"],
            "winner": None,
            "duration": now() - self.started_at,
            "resource_usage": self.usage.to_dict(),
            "timed_out": self.timed_out,
            # each task's own end, for the caller's handles (timed_out stays timed_out)
            "statuses": [s if s in _ENDS else "cancelled" for s in status],
            "errors": [self.error_of.get(i) for i in range(len(status))],
        }
        steps = [str((s.metadata or {}).get("step", "")) for s in self.specs]
        if steps and all(steps):  # a workflow: the values by step id as well
            result["step_ids"] = steps
            result["steps"] = dict(zip(steps, result["results"], strict=True))
        result.update(self.extra)
        return result

    # -- tools for the strategies ------------------------------------------------

    def submit(self, i: int, spec: TaskSpec | None = None) -> None:
        """Submit slot ``i`` (as ``spec`` when given, e.g. with a pipeline input)."""
        spec = self.specs[i] if spec is None else spec
        self.status[i] = "running"
        self.submit_spec(spec)

    def submit_spec(self, spec: TaskSpec) -> None:
        self.live.add(spec.id)
        self._submit.append(spec)

    def never_run(self, indices: range | list[int], reason: str) -> None:
        """Record the slots that were never submitted as cancelled."""
        specs = []
        for i in indices:
            if self.status[i] is None:
                self.status[i] = "running"
                self.live.add(self.specs[i].id)
                specs.append(self.specs[i])
        if specs:
            self._never.append((reason, specs))

    def cancel_live(self, reason: str) -> None:
        """Cancel every submitted task that has not ended yet."""
        ids = [t for t in self.live if t not in self._cancel_sent]
        if ids:
            self._cancel_sent.update(ids)
            self._cancel.setdefault(reason, []).extend(ids)

    def abort(self, reason: str) -> None:
        """Cancel what runs and record what never started as cancelled."""
        self.cancel_live(reason)
        self.never_run(range(len(self.specs)), reason)

    def finish(self) -> None:
        """The strategy decided; the answer goes out once nothing is left running."""
        self.closing = True
        self._maybe_answer()

    def run_hook(self, point: str, payload: dict[str, Any]) -> None:
        """Hook point ``coordination.before`` / ``coordination.after``.

        Until hooks are wired this publishes ``llmspell.<point>`` on the event
        bus with ``payload`` (plus ``point``); hooks observe, never change, the
        coordination.
        """
        if self.events is not None:
            self._publish.append(Publish(f"llmspell.{point}", dict(payload, point=point), now()))

    # -- messages -----------------------------------------------------------------

    def on_outcomes(self, msg: TaskOutcomes, sender: ActorAddress) -> None:
        for o in msg.items:
            self._outcome(o)
        self._maybe_answer()

    def on_submit_rejected(self, msg: SubmitRejected, sender: ActorAddress) -> None:
        self._outcome(TaskOutcome(msg.task_id, "failed", error=TaskError(msg.message).wire()))
        self._maybe_answer()

    def _outcome(self, o: TaskOutcome) -> None:
        if o.task_id not in self.live or self.done:
            return
        self.live.discard(o.task_id)
        self.usage.add(o.usage)
        i = self.ids.get(o.task_id)
        if i is None:
            self._guard(self.other_outcome, o)
            return
        self.status[i] = o.status
        if o.status == "succeeded":
            self.values[i] = o.value
        else:
            self.errors[i] = _message(o)
            if o.error:
                self.error_of[i] = o.error
        self._guard(self.ended, i, o)

    def on_wakeup(self, payload: Any) -> None:
        if payload == _TIMEOUT and not self.closing and not self.done:
            self._guard(self.on_timed_out, f"the coordination timed out after {self.timeout:g} s")
            self._maybe_answer()

    def on_stop_aggregation(self, msg: StopAggregation, sender: ActorAddress) -> None:
        """The workflow task this runs was cancelled or timed out: cancel, no answer."""
        if self.done:
            return
        self.abort(msg.reason)
        self.done = True
        self._ended = True

    def on_exit(self) -> None:
        if not self.done:  # stopped from outside (shutdown): leave nothing running
            self.abort("the coordination was stopped")
            self.done = True

    def _maybe_answer(self) -> None:
        if not self.closing or self.live or self.done:
            return
        result = self.result()
        self.run_hook(
            "coordination.after",
            {
                "coord_id": self.coord_id,
                "strategy": self.strategy,
                "tasks": len(self.specs),
                "ok": result["ok"],
                "timed_out": self.timed_out,
                "duration": result["duration"],
            },
        )
        self._reply = CoordinationDone(self.coord_id, result)
        self.done = True
        self._ended = True

    def _guard(self, fn: Callable[..., None], *args: Any) -> None:
        """Run a strategy step; a bug in it ends the coordination with an
        error instead of leaving the requester waiting."""
        try:
            fn(*args)
        except Exception as exc:
            log.exception("%s aggregator %s failed", self.strategy, self.coord_id)
            if self.done:
                return
            self.abort("the coordination failed")
            self.extra["error"] = f"internal error in the {self.strategy} aggregator: {exc!r}"
            self.status = [s if s != "running" else "cancelled" for s in self.status]
            self.live.clear()
            self.closing = True
            self._maybe_answer()

    # -- sending ------------------------------------------------------------------

    def flush(self) -> None:
        sched = self.scheduler
        if sched is not None:
            # Order matters: a task is submitted before anyone cancels it.
            if self._submit:
                specs, self._submit = self._submit, []
                self.send_msg(sched, SubmitTasks(specs, notify=True, replayed=self.replayed))
            if self._never:
                never, self._never = self._never, []
                for reason, specs in never:
                    self.send_msg(sched, SubmitTasks(specs, notify=True, cancelled=reason))
            if self._cancel:
                cancel, self._cancel = self._cancel, {}
                for reason, ids in cancel.items():
                    self.send_msg(sched, CancelTasks(ids, reason))
        if self._publish:
            events, self._publish = self._publish, []
            if self.events is not None:
                for ev in events:
                    self.send_msg(self.events, ev)
        if self._reply is not None and self.requester is not None:
            reply, self._reply = self._reply, None
            self.send_msg(self.requester, reply)
        if self._ended and self.coordinator is not None:
            self._ended = False
            self.send_msg(self.coordinator, AggregationEnded(self.coord_id))


# -- the six strategies -------------------------------------------------------------


class SequentialAggregator(Aggregator):
    """One after another: task i+1 starts after task i ended, whatever its end."""

    strategy = "sequential"

    def begin(self) -> None:
        self._next(0)

    def ended(self, i: int, o: TaskOutcome) -> None:
        if not self.closing:
            self._next(i + 1)

    def _next(self, i: int) -> None:
        if i < len(self.specs):
            self.submit(i)
        else:
            self.finish()


class ParallelAggregator(Aggregator):
    """All at once; ``ok`` when all succeeded."""

    strategy = "parallel"

    def begin(self) -> None:
        for i in range(len(self.specs)):
            self.submit(i)
        if not self.specs:
            self.finish()

    def ended(self, i: int, o: TaskOutcome) -> None:
        if not self.live:
            self.finish()


class BestEffortAggregator(ParallelAggregator):
    """All at once; failures are recorded, ``ok`` unless timed out."""

    strategy = "best_effort"

    def ok(self, succeeded: list[int]) -> bool:
        return True


class RaceAggregator(ParallelAggregator):
    """All at once; the first to succeed wins and the rest are cancelled."""

    strategy = "race"

    def __init__(self) -> None:
        super().__init__()
        self.winner: int | None = None

    def ended(self, i: int, o: TaskOutcome) -> None:
        if o.status == "succeeded" and self.winner is None and not self.closing:
            self.winner = i
            self.cancel_live(f"lost the race to task {i} ({self.specs[i].id})")
            self.finish()
        elif not self.live:
            self.finish()

    def ok(self, succeeded: list[int]) -> bool:
        return self.winner is not None

    def result(self) -> dict[str, Any]:
        result = super().result()
        result["winner"] = self.winner
        return result


_ENDS = frozenset(("succeeded", "failed", "cancelled", "timed_out"))


class AllOrNothingAggregator(ParallelAggregator):
    """All at once; the first task that does not succeed cancels the rest and
    the succeeded ones are compensated in reverse order of completion."""

    strategy = "all_or_nothing"

    def __init__(self) -> None:
        super().__init__()
        self.completed: list[int] = []  # succeeded slots, in order of completion
        self.aborting = False
        self.compensating = False
        self.to_compensate: deque[int] = deque()
        self.compensations: dict[str, int] = {}

    def ended(self, i: int, o: TaskOutcome) -> None:
        if o.status == "succeeded":
            self.completed.append(i)
        elif not self.aborting:
            self.aborting = True
            self.cancel_live(f"all-or-nothing: task {i} ({self.specs[i].id}) {o.status}")
        self._settle()

    def on_timed_out(self, reason: str) -> None:
        if self.compensating:
            # the timeout bounds the rollback too: the running compensation is
            # cancelled and the ones not started yet are recorded as not run
            self.timed_out = True
            for i in self.to_compensate:
                spec = self.specs[i].compensate
                self.extra["compensated"].append(
                    {
                        "index": i,
                        "task_id": spec.id if spec is not None else "",
                        "status": "cancelled",
                        "error": "not run: the coordination timed out during the rollback",
                    }
                )
            self.to_compensate.clear()
            self.abort(reason)
            return
        self.timed_out = True
        self.aborting = True
        self.abort(reason)
        self._settle()

    def _settle(self) -> None:
        if self.live or self.compensating:
            return
        if not self.aborting:
            self.finish()
            return
        self.compensating = True
        self.extra["compensated"] = []
        self.to_compensate.extend(
            i for i in reversed(self.completed) if self.specs[i].compensate is not None
        )
        self._compensate_next()

    def _compensate_next(self) -> None:
        if not self.to_compensate:
            self.finish()
            return
        i = self.to_compensate.popleft()
        spec = self.specs[i].compensate
        assert spec is not None
        self.compensations[spec.id] = i
        self.submit_spec(spec)

    def other_outcome(self, o: TaskOutcome) -> None:
        i = self.compensations.pop(o.task_id, None)
        if i is None:
            return
        entry: dict[str, Any] = {"index": i, "task_id": o.task_id, "status": o.status}
        if o.status != "succeeded":
            entry["error"] = _message(o)
        self.extra["compensated"].append(entry)
        self._compensate_next()

    def ok(self, succeeded: list[int]) -> bool:
        return not self.aborting and len(succeeded) == len(self.specs)

    def result(self) -> dict[str, Any]:
        result = super().result()
        if self.aborting:
            result["results"] = [None] * len(self.specs)
        return result


class PipelineAggregator(Aggregator):
    """Stage i+1 gets stage i's value as ``input``; with ``inputs`` every input
    flows through every stage, stages working on different items at once."""

    strategy = "pipeline"

    def __init__(self) -> None:
        super().__init__()
        # streaming mode (``inputs``): per stage, the item it works on, the items
        # waiting before it, and its finished output waiting for room downstream
        self.busy: list[int | None] = []
        self.waiting: list[deque[tuple[int, Any]]] = []
        self.held: list[tuple[int, Any] | None] = []
        self.clones: dict[str, tuple[int, int]] = {}  # clone id -> (stage, item)
        self.next_item = 0
        self.items: list[str | None] = []  # per input: None or a terminal status
        self.item_values: list[Any] = []
        self.item_errors: list[str] = []
        self.items_done = 0

    def begin(self) -> None:
        if self.inputs is None:
            if self.specs:
                self.submit(0)
            else:
                self.finish()
            return
        stages, n = len(self.specs), len(self.inputs)
        self.busy = [None] * stages
        self.waiting = [deque() for _ in range(stages)]
        self.held = [None] * stages
        self.items = [None] * n
        self.item_values = [None] * n
        self.item_errors = [""] * n
        if not stages:  # no stage: every input passes through unchanged
            self.items = ["succeeded"] * n
            self.item_values = list(self.inputs)
            self.finish()
            return
        if n == 0:
            self.never_run(range(stages), "the pipeline got no inputs")
            self.finish()
            return
        self._pump()

    # -- one input through the stages ------------------------------------------------

    def ended(self, i: int, o: TaskOutcome) -> None:
        if self.closing:
            return
        if o.status == "succeeded" and i + 1 < len(self.specs):
            self.submit(i + 1, dataclasses.replace(self.specs[i + 1], input=o.value))
        elif o.status == "succeeded":
            self.finish()
        else:
            self.never_run(range(i + 1, len(self.specs)), f"pipeline stage {i} {o.status}")
            self.finish()

    # -- streaming: every input through every stage ----------------------------------

    def _pump(self) -> None:
        assert self.inputs is not None
        last = len(self.specs) - 1
        moved = True
        while moved and not self.closing:
            moved = False
            for j in range(last, -1, -1):  # downstream first: it frees room upstream
                held = self.held[j]
                if held is not None and len(self.waiting[j + 1]) < PIPELINE_BUFFER:
                    self.waiting[j + 1].append(held)
                    self.held[j] = None
                    moved = True
                if self.busy[j] is not None or self.held[j] is not None:
                    continue
                item: tuple[int, Any] | None = None
                if j == 0:
                    if self.next_item < len(self.inputs):
                        item = (self.next_item, self.inputs[self.next_item])
                        self.next_item += 1
                elif self.waiting[j]:
                    item = self.waiting[j].popleft()
                if item is not None:
                    self._run_stage(j, *item)
                    moved = True

    def _run_stage(self, j: int, k: int, value: Any) -> None:
        stage = self.specs[j]
        clone = dataclasses.replace(stage, id=f"{stage.id}#{k}", input=value)
        self.busy[j] = k
        self.clones[clone.id] = (j, k)
        self.submit_spec(clone)

    def other_outcome(self, o: TaskOutcome) -> None:
        where = self.clones.pop(o.task_id, None)
        if where is None:
            return
        j, k = where
        self.busy[j] = None
        if o.status == "succeeded" and j < len(self.specs) - 1:
            self.held[j] = (k, o.value)
        elif o.status == "succeeded":
            self._item_done(k, "succeeded", o.value, "")
        else:
            self._item_done(k, o.status, None, f"stage {j} ({self.specs[j].id}): {_message(o)}")
        self._pump()

    def _item_done(self, k: int, status: str, value: Any, error: str) -> None:
        if self.items[k] is not None:
            return
        self.items[k] = status
        self.item_values[k] = value
        self.item_errors[k] = error
        self.items_done += 1
        if self.items_done == len(self.items):
            self.finish()

    def on_timed_out(self, reason: str) -> None:
        if self.inputs is None:
            super().on_timed_out(reason)
            return
        self.timed_out = True
        self.cancel_live(reason)
        for k, status in enumerate(self.items):
            if status is None:
                self.items[k] = "cancelled"
        self.finish()

    def result(self) -> dict[str, Any]:
        result = super().result()
        if self.inputs is None:
            return result
        items = self.items
        succeeded = [k for k, s in enumerate(items) if s == "succeeded"]
        result.update(
            ok=len(succeeded) == len(items) and not self.timed_out,
            results=[
                v if items[k] == "succeeded" else None for k, v in enumerate(self.item_values)
            ],
            succeeded=succeeded,
            failed=[[k, self.item_errors[k]] for k, s in enumerate(items) if s in _FAILED],
            cancelled=[k for k, s in enumerate(items) if s not in _FAILED and s != "succeeded"],
        )
        result.pop("steps", None)
        return result


#: strategy value -> its aggregator class
AGGREGATORS: dict[str, type[Aggregator]] = {
    cls.strategy: cls
    for cls in (
        SequentialAggregator,
        ParallelAggregator,
        PipelineAggregator,
        RaceAggregator,
        AllOrNothingAggregator,
        BestEffortAggregator,
    )
}
