"""The task table: every task's state and the events that change it, with no
actor, no I/O and no clock (see ``table``). The scheduler actor
(``llmspell.actors.scheduler``) is its shell.

Internal: users never import this package. It may import ``messages`` only.
"""

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
from .status import TERMINAL, TaskStatus
from .table import TaskTable

__all__ = [
    "TERMINAL",
    "Cancelled",
    "Dispatched",
    "Ended",
    "Event",
    "Rec",
    "Restored",
    "Retried",
    "Submitted",
    "TaskStatus",
    "TaskTable",
    "Tombstone",
    "Tombstoned",
    "Unrecorded",
]
