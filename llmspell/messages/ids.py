"""Task ids: made by the facade, the scheduler and the engines alike."""

from __future__ import annotations

import itertools
import os
import uuid

__all__ = ["new_task_id"]

_ID_PREFIX = uuid.uuid4().hex[:12]
_id_counter = itertools.count(1)


def _new_id_prefix(prefix: str | None = None) -> None:
    """A forked process (an engine in local mode) must not repeat its parent's
    ids; a simulation sets a prefix of its own so that ids repeat with the seed."""
    global _ID_PREFIX, _id_counter
    _ID_PREFIX = prefix or uuid.uuid4().hex[:12]
    _id_counter = itertools.count(1)


os.register_at_fork(after_in_child=lambda: _new_id_prefix())


def new_task_id() -> str:
    """A fresh task id, unique across processes: a random per-process prefix
    (new in every forked process) and a counter (a uuid4 per task costs 10x
    more)."""
    return f"{_ID_PREFIX}-{next(_id_counter)}"
