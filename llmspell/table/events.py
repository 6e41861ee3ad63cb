"""The events that change tasks in a ``TaskTable`` (see ``table`` for what
each does). Plain data: ids, specs, values, times; a field marked *filled*
is set by ``TaskTable.apply`` (what it did), the others by whoever makes the
event. ``Submitted``, ``Dispatched``, ``Retried`` and ``Ended`` are the
durable ones: the only kinds that reach the table's ``log``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..messages.types import TaskOutcome, TaskSpec

__all__ = [
    "Cancelled",
    "Dispatched",
    "Ended",
    "Event",
    "Restored",
    "Retried",
    "Submitted",
    "Tombstoned",
    "Unrecorded",
]


@dataclass(slots=True)
class Submitted:
    """New tasks, submitted together (a batch may list a task before a task it
    depends on; a cycle can only close inside one batch).

    ``watchers``: who is told each task's outcome (opaque to the table).
    ``cancelled``: a reason: every task of the batch ends cancelled at once (an
    aggregator's tasks that will never run). ``replayed``: a resumed script
    re-submits a child its first run submitted; a known id is then taken as is,
    not refused. ``durable=False``: tasks the runtime makes for itself (hook
    tasks), never logged."""

    specs: list[TaskSpec]
    t: float
    watchers: list[Any] | None = None
    cancelled: str | None = None
    replayed: bool = False
    durable: bool = True
    #: filled: the specs taken in, in order (what a journal records)
    accepted: list[TaskSpec] = field(default_factory=list)
    #: filled: (task id, why) of each spec refused (a duplicate id)
    rejected: list[tuple[str, str]] = field(default_factory=list)
    #: filled: ids of a ``replayed`` batch that were known already
    known: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Dispatched:
    """A pending task starts: its run number ``attempt`` (0, 1, ...) at ``t``."""

    task_id: str
    attempt: int
    t: float


@dataclass(slots=True)
class Retried:
    """A running task's attempt failed with ``error`` (a message) and it has
    retries left: it is pending again. ``attempt``: filled, the number of the
    run to come."""

    task_id: str
    error: str
    t: float
    attempt: int = 0


@dataclass(slots=True)
class Ended:
    """A task reaches ``status`` (terminal; the first terminal state wins, a
    later one is ignored). ``may_retry``: a failure that is retried instead
    while the task has retries left (applied as a ``Retried``). ``outcome``: the
    engine's own outcome, kept as the record's when its ``error`` is the one
    given. ``attempt``: filled, the run it ended in."""

    task_id: str
    status: str
    t: float
    value: Any = None
    error: dict[str, Any] | None = None
    usage: dict[str, Any] | None = None
    outcome: TaskOutcome | None = None
    may_retry: bool = False
    attempt: int = 0


@dataclass(slots=True)
class Cancelled:
    """Cancel ``task_ids`` with ``reason``: each one not ended yet ends
    cancelled. ``early``: an id not known yet (and not a tombstone) is remembered
    and cancelled the moment it is submitted (the facade cancels only ids it
    handed out). ``shutdown``: marks the error (a client of a served runtime
    raises ``RuntimeClosed``). ``done``: filled, the ids cancelled or
    remembered."""

    task_ids: list[str]
    reason: str
    t: float
    early: bool = False
    shutdown: bool = False
    done: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Restored:
    """Resume: tasks known from storage that had not ended, each as
    ``(spec, attempt, created)``: back in the table pending, with the number of
    runs they already had, linked to their dependencies and parents like a
    batch of ``Submitted`` but not counted or logged as new submissions."""

    tasks: list[tuple[TaskSpec, int, float]]
    t: float
    #: filled: the specs taken in
    accepted: list[TaskSpec] = field(default_factory=list)
    #: filled: (task id, why) of each refused (an id the table knows)
    rejected: list[tuple[str, str]] = field(default_factory=list)


@dataclass(slots=True)
class Tombstoned:
    """Resume: a task that ended in an earlier process, known only from storage,
    kept as a tombstone (dependencies, ``deps_input`` and a late watch work from
    it). ``key``: its value's key in a ``deps_input`` map (its workflow step id,
    else its id)."""

    task_id: str
    status: str
    value: Any = None
    error: dict[str, Any] | None = None
    key: str = ""


@dataclass(slots=True)
class Unrecorded:
    """The journal could not record the ends of ``task_ids`` (its write failed):
    storage still has them unfinished, and the next runtime on it runs them
    again. So this runtime must not show the value of any: each that ended
    reads ``failed`` with ``error`` from now on, its dependents included. The
    one event that changes a terminal state; never logged."""

    task_ids: list[str]
    error: dict[str, Any]


Event = Submitted | Dispatched | Retried | Ended | Cancelled | Restored | Tombstoned | Unrecorded
