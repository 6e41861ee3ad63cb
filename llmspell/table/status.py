"""Task statuses as an enum whose members are the API's strings."""

from __future__ import annotations

import enum

__all__ = ["PLAIN", "STATUS", "TERMINAL", "TaskStatus"]


class TaskStatus(enum.StrEnum):
    """Where a task is in its life. A member *is* its string (``TaskStatus.PENDING
    == "pending"``, same hash, encoded by msgpack as a plain str), so wire
    messages, the facade and user code that compare with strings are unchanged.

    pending -> running -> one terminal state; running -> pending again only for
    a retry; a terminal state is never left."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"


#: the statuses a task never leaves
TERMINAL = frozenset(
    (TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.TIMED_OUT)
)
#: status string -> member (a dict lookup: calling ``TaskStatus(s)`` is far slower)
STATUS: dict[str, TaskStatus] = {s.value: s for s in TaskStatus}
#: status (member or string) -> the plain string. What records kept for long hold: a
#: member is an object the garbage collector tracks, and a tuple holding one stays
#: tracked for good (every collection walks it); a tuple of plain atoms is untracked
PLAIN: dict[str, str] = {s.value: s.value for s in TaskStatus}
