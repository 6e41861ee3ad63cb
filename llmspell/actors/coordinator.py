"""The coordinator actor: one aggregator per coordination, and the workflow engine.

* ``Coordinate(coord_id, tasks, strategy, timeout, inputs)`` from the facade
  or a script engine: the coordinator checks the request, creates one
  aggregator actor for it as its child (``aggregators.AGGREGATORS`` by
  strategy) and sends it ``StartAggregation`` naming the requester; the
  aggregator answers the requester with ``CoordinationDone``. A request that
  cannot run (unknown strategy, bad timeout, ``inputs`` without PIPELINE) is
  answered at once with a result whose ``ok`` is False, every task listed in
  ``failed``, and ``error`` saying what was wrong; nothing runs then.
* It serves kind ``"workflow"`` as an engine: it registers with the scheduler
  (``EngineReady(engine="workflow")``), loads each dispatched
  ``Task.workflow`` (a dict payload, or ``name`` = a file path), runs it as an
  aggregation it requests itself, and reports the task ``succeeded`` with the
  ``CoordinationResult`` dict as its value when the result is ``ok``, or
  ``failed`` naming the steps that did not succeed. A workflow that does not
  load fails its task with the loader's message. ``StopTasks`` (the task was
  cancelled or timed out) stops the aggregation, which cancels its tasks.
* An aggregator reports ``AggregationEnded`` once it answered; the
  coordinator then stops it. One that exits without having answered (it
  crashed) gets its tasks cancelled and its requester answered with a
  failure, so nobody waits forever.
"""

from __future__ import annotations

import os
from typing import Any

from thespian.actors import ActorAddress, ActorExitRequest

from .._actor import WireActor, addr_key, log
from .._exceptions import MessageError
from ..messages.options import strategy_name
from ..messages.types import (
    AggregationEnded,
    CancelTasks,
    Coordinate,
    CoordinationDone,
    DispatchBatch,
    EngineReady,
    EngineResults,
    Introduce,
    Replaced,
    StartAggregation,
    StopAggregation,
    StopTasks,
    TaskError,
    TaskOutcome,
    TaskSpec,
)
from .aggregators import AGGREGATORS, empty_result

__all__ = ["WORKFLOW_CAPACITY", "Coordinator", "check_request"]

#: how many workflow tasks may run at once (the scheduler queues the rest)
WORKFLOW_CAPACITY = 10_000


def check_request(
    strategy: str, timeout: float | None, inputs: list[Any] | None
) -> tuple[str, str | None]:
    """The strategy's canonical name, and what is wrong with the request (or None)."""
    try:
        strat = strategy_name(strategy)
    except MessageError as exc:
        return strategy, str(exc)
    if timeout is not None and timeout <= 0:
        return strat, f"timeout must be a positive number of seconds, got {timeout:g}"
    if inputs is not None and strat != "pipeline":
        return strat, "inputs are for the pipeline strategy only"
    return strat, None


class _Run:
    """One aggregation the coordinator started."""

    __slots__ = ("address", "coord_id", "ended", "requester", "strategy", "task_ids")

    def __init__(
        self,
        coord_id: str,
        address: ActorAddress,
        requester: ActorAddress,
        strategy: str,
        task_ids: list[str],
    ) -> None:
        self.coord_id = coord_id
        self.address = address
        self.requester = requester
        self.strategy = strategy
        self.task_ids = task_ids
        self.ended = False  # it answered (or was stopped): its exit is expected


class _Workflow:
    """A ``Task.workflow`` task the coordinator runs as an engine."""

    __slots__ = ("attempt", "name", "steps", "task_id")

    def __init__(self, task_id: str, attempt: int, name: str, steps: list[str]) -> None:
        self.task_id = task_id
        self.attempt = attempt
        self.name = name
        self.steps = steps


class Coordinator(WireActor):
    role = "coordinator"

    def __init__(self) -> None:
        super().__init__()
        self.addresses: dict[str, ActorAddress] = {}
        self.runs: dict[str, _Run] = {}  # coord id -> run
        self.children: dict[str, str] = {}  # addr_key(aggregator) -> coord id
        self.workflows: dict[str, _Workflow] = {}  # coord id -> workflow task
        self.by_task: dict[str, str] = {}  # workflow task id -> coord id
        self._results: list[TaskOutcome] = []
        self.closing = False
        self.journaled = False  # the runtime has a journal (Runtime(journal=...))
        self.capacity = WORKFLOW_CAPACITY

    # -- set-up -------------------------------------------------------------------

    def on_introduce(self, msg: Introduce, sender: ActorAddress) -> None:
        self.addresses.update(msg.addresses)
        self.journaled = bool(msg.config.get("journal"))
        self.capacity = int(msg.config.get("workflow_capacity", WORKFLOW_CAPACITY))
        scheduler = self.addresses.get("scheduler")
        if scheduler is not None:
            self.send_msg(scheduler, EngineReady("workflow", 0, os.getpid(), self.capacity))

    def on_replaced(self, msg: Replaced, sender: ActorAddress) -> None:
        """A runtime process died and was restarted (local mode). A new
        scheduler knows none of the tasks the running coordinations wait on:
        each ends now, its requester told why; workflow tasks are the
        scheduler's to run again or fail; the coordinator registers again."""
        self.addresses[msg.role] = msg.address
        if msg.role != "scheduler":
            return
        runs, self.runs = self.runs, {}
        self.children.clear()
        self.workflows.clear()
        self.by_task.clear()
        self._results.clear()
        for run in runs.values():
            self.send(run.address, ActorExitRequest())
            if not run.ended and run.requester != self.myAddress:
                message = f"{msg.crashed} while the coordination ran"
                self._answer(
                    run.requester,
                    run.coord_id,
                    empty_result(run.strategy, len(run.task_ids), message),
                )
        self.send_msg(msg.address, EngineReady("workflow", 0, os.getpid(), self.capacity))

    # -- coordination requests ----------------------------------------------------

    def on_coordinate(self, msg: Coordinate, sender: ActorAddress) -> None:
        self.start(
            msg.coord_id, sender, msg.tasks, msg.strategy, msg.timeout, msg.inputs, msg.replayed
        )

    def start(
        self,
        coord_id: str,
        requester: ActorAddress,
        tasks: list[TaskSpec],
        strategy: str,
        timeout: float | None,
        inputs: list[Any] | None,
        replayed: bool = False,
    ) -> None:
        """Create the aggregator for one coordination (or answer at once when
        the request cannot run). ``replayed``: its tasks may be known to the
        scheduler already (a run resumed from a journal), and are then taken
        as they are."""
        scheduler = self.addresses.get("scheduler")
        strategy, problem = check_request(strategy, timeout, inputs)
        if problem is None and scheduler is None:
            problem = "the runtime has no scheduler"
        if problem is not None or scheduler is None:
            self._answer(requester, coord_id, empty_result(strategy, len(tasks), str(problem)))
            return
        if coord_id in self.runs:
            self._answer(
                requester,
                coord_id,
                empty_result(strategy, len(tasks), f"duplicate coordination id {coord_id!r}"),
            )
            return
        address = self.createActor(AGGREGATORS[strategy])
        run = _Run(coord_id, address, requester, strategy, [t.id for t in tasks])
        self.runs[coord_id] = run
        self.children[addr_key(address)] = coord_id
        self.send_msg(
            address,
            StartAggregation(
                coord_id,
                requester,
                scheduler,
                tasks,
                strategy,
                timeout,
                inputs,
                self.addresses.get("events"),
                replayed,
            ),
        )

    def on_aggregation_ended(self, msg: AggregationEnded, sender: ActorAddress) -> None:
        run = self.runs.get(msg.coord_id)
        if run is not None:
            run.ended = True
        self.send(sender, ActorExitRequest())

    def on_child_exited(self, child: ActorAddress) -> None:
        coord_id = self.children.pop(addr_key(child), None)
        run = self.runs.pop(coord_id, None) if coord_id is not None else None
        if run is None or run.ended or self.closing:
            return
        log.error("coordinator: the %s aggregator of %s stopped unanswered", run.strategy, coord_id)
        scheduler = self.addresses.get("scheduler")
        if scheduler is not None and run.task_ids:
            self.send_msg(
                scheduler, CancelTasks(run.task_ids, "the coordination's aggregator stopped")
            )
        message = "the coordination's aggregator stopped before it answered"
        self._answer(
            run.requester, run.coord_id, empty_result(run.strategy, len(run.task_ids), message)
        )

    def _answer(self, requester: ActorAddress, coord_id: str, result: dict[str, Any]) -> None:
        if requester == self.myAddress:
            self.on_coordination_done(CoordinationDone(coord_id, result), requester)
        else:
            self.send_msg(requester, CoordinationDone(coord_id, result))

    # -- the workflow engine ------------------------------------------------------

    def on_dispatch(self, msg: DispatchBatch, sender: ActorAddress) -> None:
        from ..workflow import load_workflow

        for spec, attempt in zip(msg.tasks, msg.attempts, strict=False):
            source = spec.payload if spec.payload is not None else spec.name
            prefix = spec.id if attempt == 0 else f"{spec.id}~{attempt}"
            try:
                if source is None:
                    raise MessageError("a workflow task needs a path or a workflow dict")
                wf = load_workflow(source, run_prefix=prefix, parent=spec.id)
            except MessageError as exc:
                self._report(spec.id, attempt, "failed", error=_error(str(exc)))
                continue
            except Exception as exc:  # a loader bug fails the task, never the actor
                log.exception("coordinator: loading workflow task %s failed", spec.id)
                self._report(spec.id, attempt, "failed", error=_error(f"{exc!r}"))
                continue
            coord_id = f"workflow:{prefix}"
            self.workflows[coord_id] = _Workflow(spec.id, attempt, wf.name, wf.steps)
            self.by_task[spec.id] = coord_id
            # With a journal, a workflow task that runs again after its process died
            # keeps its attempt, so its steps keep their ids: the steps of the earlier
            # run (resumed or ended) are taken as they are, not run twice.
            self.start(
                coord_id,
                self.myAddress,
                wf.tasks,
                wf.strategy,
                wf.timeout,
                None,
                self.journaled,
            )

    def on_coordination_done(self, msg: CoordinationDone, sender: ActorAddress) -> None:
        wf = self.workflows.pop(msg.coord_id, None)
        if wf is None:
            return  # stopped meanwhile: the scheduler already decided its end
        self.by_task.pop(wf.task_id, None)
        result = msg.result
        usage = result.get("resource_usage")
        if result.get("ok"):
            self._report(wf.task_id, wf.attempt, "succeeded", value=result, usage=usage)
        else:
            self._report(
                wf.task_id, wf.attempt, "failed", error=_error(_why(wf, result)), usage=usage
            )

    def on_stop(self, msg: StopTasks, sender: ActorAddress) -> None:
        for task_id in msg.task_ids:
            coord_id = self.by_task.pop(task_id, None)
            if coord_id is None:
                continue
            self.workflows.pop(coord_id, None)
            run = self.runs.get(coord_id)
            if run is not None and not run.ended:
                run.ended = True
                self.send_msg(run.address, StopAggregation(coord_id, f"workflow {msg.reason}"))

    def _report(
        self,
        task_id: str,
        attempt: int,
        status: str,
        *,
        value: Any = None,
        error: dict[str, Any] | None = None,
        usage: dict[str, Any] | None = None,
    ) -> None:
        self._results.append(TaskOutcome(task_id, status, value, error, usage, attempt))

    # -- lifecycle ----------------------------------------------------------------

    def on_shutdown(self, msg: Any, sender: ActorAddress) -> None:
        self.closing = True

    def on_exit(self) -> None:
        self.closing = True

    def flush(self) -> None:
        if self._results:
            results, self._results = self._results, []
            scheduler = self.addresses.get("scheduler")
            if scheduler is not None:
                self.send_msg(scheduler, EngineResults(results))


def _error(message: str) -> dict[str, Any]:
    return TaskError(message, kind="failed", engine="workflow").wire()


def _why(wf: _Workflow, result: dict[str, Any]) -> str:
    """Why a workflow's coordination is not ``ok``, naming its steps."""

    def step(i: Any) -> str:
        return wf.steps[i] if isinstance(i, int) and 0 <= i < len(wf.steps) else str(i)

    if result.get("error"):
        return f"workflow {wf.name!r}: {result['error']}"
    parts = [f"step {step(i)!r} failed: {m}" for i, m in result.get("failed") or ()]
    cancelled = result.get("cancelled") or []
    if cancelled:
        parts.append("cancelled: " + ", ".join(repr(step(i)) for i in cancelled))
    if result.get("timed_out"):
        parts.insert(0, "timed out")
    detail = "; ".join(parts) if parts else "no step succeeded"
    return f"workflow {wf.name!r} did not succeed ({result.get('strategy')}): {detail}"
