"""One task's record in the table, and the tombstone an old one shrinks to."""

from __future__ import annotations

from typing import Any

from ..messages.types import TaskOutcome, TaskSpec
from .status import TaskStatus

__all__ = ["ROUTES", "Rec", "Tombstone"]

#: task kind -> the engine that runs it ("" for kinds resolved by registration)
ROUTES = {"python": "python", "lua": "lua", "js": "js", "workflow": "workflow"}


class Rec:
    """One task. The table alone changes ``status``, ``attempt``, ``outcome``
    and the graph fields; ``slot``, ``sink``, ``progress`` and ``watchers`` are
    the shell's, carried here so the hot path needs one lookup per task (the
    table never reads them, except that ``Submitted`` sets ``watchers``)."""

    __slots__ = (
        "attempt",
        "children",
        "dependents",
        "depth",
        "durable",
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
        self.status = TaskStatus.PENDING
        self.waiting = 0  # dependencies not yet succeeded
        self.dependents: list[str] | None = None
        self.children: list[str] | None = None  # ended children kept until this ends
        self.kids: list[str] | None = None  # children submitted while it ran
        self.depth = 0  # how many parents above it
        self.scripted = False  # a Lua or JS script submitted it, or one of its parents
        self.durable = True  # its events go to the table's log (hook tasks: no)
        self.watchers: list[Any] | None = None
        self.outcome: TaskOutcome | None = None
        self.progress: dict[str, Any] | None = None
        self.engine = ROUTES.get(spec.kind, "")
        self.slot: Any = None
        self.attempt = 0
        self.errors: list[str] | None = None  # messages of the failed attempts before
        self.submitted_at = t
        self.started_at: float | None = None
        self.ended_at: float | None = None
        self.sink: Any = None


#: what is kept of a task whose record was forgotten: (status, value, error,
#: key of its value in a dependent's deps_input map). A plain tuple: cheap to
#: make, and not tracked by the garbage collector when its contents are plain.
Tombstone = tuple[str, Any, dict[str, Any] | None, str]
