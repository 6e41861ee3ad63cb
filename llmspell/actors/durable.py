"""The scheduler's journal (``Runtime(journal=path)``): what it writes, when,
and how a runtime opened on a journal picks up where the last one stopped.

The scheduler's task table logs its durable events (``Submitted``,
``Dispatched``, ``Retried``, ``Ended``); script engines send the host calls
their tasks make (``HostCalls``); ``register_*`` calls are registrations. All
of it is buffered here and written in ONE transaction at the scheduler's
commit point, at the end of each message it handles and before anything that
message caused is sent (an outcome to a watcher, a dispatch, a published
event): a record is durable before its effect is visible.

Resume (``Durable.resume``): registrations first (a resumed task finds the
tools it calls), then every unfinished task back in the table, pending, with
the attempt number of the run that was interrupted (a crash of the owning
process is not a retry: ``current_task().attempt`` stays, and ``retries`` are
not spent), linked to the ended tasks it depends on (as tombstones), and, for
scripts, their recorded host calls, handed to the engine with the dispatch so
the script replays them.

Tasks ended in earlier processes are found in the journal when asked for
(``lookup``): a watch, a status, a dependency, a duplicate id. The journal
keeps the newest ``100 x history`` ended tasks (at least 1,000) and forgets
older ones (``Journal.trim``), so it stays bounded however long it runs.
"""

from __future__ import annotations

import gc
from collections.abc import Iterable
from typing import Any

from .._actor import log
from .._exceptions import JournalError
from ..journal import Journal, JournalTask
from ..messages.types import TaskSpec
from ..table import (
    TERMINAL,
    Dispatched,
    Ended,
    Restored,
    Retried,
    Submitted,
    TaskTable,
    Tombstoned,
)
from ..table.table import input_key

__all__ = ["Durable", "crash"]

# the Durables of this process by journal path (a Simulation's restart fault
# stops one from writing as a crash of its process would: ``crash``)
_OPEN: dict[str, Durable] = {}

_SCRIPTS = frozenset(("lua", "js"))


def _first_dispatches(log_: list[Any]) -> dict[str, Dispatched] | None:
    """The first ``Dispatched`` of each task the same log submitted (a task
    queued and started in one message: one row written as running, not a row
    and its update); None when there is none."""
    submitted: set[str] = set()
    for ev in log_:
        if type(ev) is Submitted:
            submitted.update(spec.id for spec in ev.accepted)
    if not submitted:
        return None
    first: dict[str, Dispatched] = {}
    for ev in log_:
        if type(ev) is Dispatched and ev.task_id in submitted and ev.task_id not in first:
            first[ev.task_id] = ev
    return first or None


class Durable:
    """One scheduler's journal. Not thread-safe: the scheduler's thread only."""

    __slots__ = ("_since_trim", "calls", "journal", "keep", "path", "table", "unwritten")

    def __init__(self, path: str, table: TaskTable, *, checked: bool = False) -> None:
        """``checked``: the runtime's facade opened and checked the file a
        moment ago (``Runtime(journal=...)``), so the page-by-page
        ``quick_check`` is not run a second time."""
        self.path = path
        self.journal: Journal | None = Journal.open(path, quick_check=not checked)
        self.table = table
        table.log = []
        # the recorded host calls of unfinished script tasks: id -> n -> record
        self.calls: dict[str, dict[int, list[Any]]] = {}
        self.keep = max(1_000, 100 * table.history)
        self._since_trim = 0
        # ids of the tasks whose end was in the last commit, if it failed
        self.unwritten: list[str] = []
        _OPEN[path] = self

    # -- writing ----------------------------------------------------------------------

    def commit(self) -> None:
        """Write what the table logged and what was recorded since the last
        commit, in one transaction. Raises ``JournalError`` when the file
        cannot be written (the caller degrades the runtime)."""
        j = self.journal
        if j is None:
            return
        log_ = self.table.log
        ended: list[str] = []
        if log_:
            first = _first_dispatches(log_)
            for ev in log_:
                kind = type(ev)
                if kind is Ended:
                    assert isinstance(ev, Ended)
                    j.ended(ev.task_id, str(ev.status), ev.value, ev.error, ev.attempt, ev.t)
                    self.calls.pop(ev.task_id, None)
                    ended.append(ev.task_id)
                elif kind is Dispatched:
                    assert isinstance(ev, Dispatched)
                    if first is None or first.get(ev.task_id) is not ev:  # (else: written)
                        j.dispatched(ev.task_id, ev.attempt, ev.t)
                elif kind is Submitted:
                    assert isinstance(ev, Submitted)
                    t = ev.t
                    if first is None:
                        for spec in ev.accepted:
                            j.submitted(spec, t)
                    else:
                        for spec in ev.accepted:
                            d = first.get(spec.id)
                            j.submitted(spec, t, None if d is None else (d.attempt, d.t))
                elif kind is Retried:
                    assert isinstance(ev, Retried)
                    j.retried(ev.task_id, ev.attempt, ev.error, ev.t)
            log_.clear()
            self._since_trim += len(ended)
        try:
            j.commit()
        except JournalError:
            self.unwritten = ended  # the caller must not let these ends be seen
            raise
        if self._since_trim >= max(1_000, self.keep // 10):
            self._since_trim = 0
            j.trim(self.keep, self._needed())

    def _needed(self) -> set[str]:
        """The dependencies of unfinished tasks (compaction keeps them)."""
        needed: set[str] = set()
        for rec in self.table.tasks.values():
            deps = rec.spec.deps
            if deps and rec.status not in TERMINAL:
                needed.update(deps)
        return needed

    def host_call(self, item: list[Any]) -> bool:
        """Record one host call ``[task_id, attempt, n, op, call, result,
        error, done]`` of a running script task (its next dispatch replays it).
        True when it is new and done: an ``emit`` is then published."""
        task_id, _attempt, n, op, call, result, error, done = item
        calls = self.calls.setdefault(task_id, {})
        before = calls.get(n)
        calls[n] = [n, op, call, result, error, bool(done)]
        if self.journal is not None:
            self.journal.host_call(task_id, n, str(op), call, result, error, bool(done))
        return bool(done) and (before is None or not before[5])

    def failed_run(self, task_id: str) -> None:
        """A script task failed by itself and will run again (``retries``): its
        retry replays the host calls that were answered well up to its first
        failed one, and makes that one and every later one anew (a retry that
        replayed the failure would fail the same way every time). A run cut
        short by a crash is not this: it replays everything recorded."""
        calls = self.calls.get(task_id)
        if not calls:
            return
        failed = [c for c in calls.values() if c[5] and c[4] is not None]
        if not failed:
            return
        cut = min(c[0] for c in failed)
        # an awaited task that failed is made anew too: from the submit that made it
        awaited = {
            c[2].get("task_id") for c in failed if c[1] == "await" and isinstance(c[2], dict)
        }
        for c in calls.values():
            if c[1] == "submit" and c[3] in awaited and c[0] < cut:
                cut = c[0]
        for n in [n for n in calls if n >= cut]:
            del calls[n]
        if self.journal is not None:
            self.journal.calls_dropped(task_id, cut)

    def registered(self, what: str, name: str, target: dict[str, Any]) -> None:
        if self.journal is not None:
            self.journal.registered(what, name, target)

    def replays(self, task_ids: Iterable[str]) -> list[list[list[Any]] | None] | None:
        """The recorded host calls of these tasks (by ``n``) for their dispatch;
        None when none has any."""
        calls = self.calls
        out: list[list[list[Any]] | None] = []
        for task_id in task_ids:
            c = calls.get(task_id)
            out.append([c[n] for n in sorted(c)] if c else None)
        return out if any(out) else None

    # -- reading ----------------------------------------------------------------------

    def lookup(self, task_ids: list[str]) -> list[JournalTask]:
        """Tasks of earlier processes among ``task_ids`` (those the table does
        not know), ended ones made tombstones in the table."""
        j = self.journal
        table = self.table
        unknown = [i for i in task_ids if i not in table.tasks and i not in table.gone]
        if j is None or not unknown:
            return []
        found = j.existing(unknown)
        for jt in found:
            if jt.status in ("succeeded", "failed", "cancelled", "timed_out"):
                error = jt.error
                if error and "gave_up" in error:  # that process degraded, not this one
                    error = {k: v for k, v in error.items() if k != "gave_up"}
                table.apply(Tombstoned(jt.id, jt.status, jt.value, error, input_key(jt.spec)))
        return found

    def earlier_tasks(self, status: str | None) -> list[list[Any]]:
        """``rt.tasks()`` rows of tasks the journal has and the table does not."""
        j = self.journal
        if j is None:
            return []
        tasks = self.table.tasks
        return [row for row in j.listing(status) if row[0] not in tasks]

    # -- resume -----------------------------------------------------------------------

    def resume(self, t: float) -> None:
        """Put the journal's unfinished tasks back in the table (the scheduler
        makes the journal's registrations again first)."""
        j = self.journal
        assert j is not None
        # Tens of thousands of records are made here and all of them live on:
        # the cyclic GC would walk them again and again for nothing (a third of
        # the time of a big resume, more than reading them). So it is off while
        # they are made, and they go straight to its oldest generation (through
        # the permanent one and back: two list splices, no walk), where the
        # next full collection looks at them as at any other old object.
        collecting = gc.isenabled()
        gc.disable()
        try:
            ev = self._restore(j, t)
        finally:
            # (frozen objects stay so: an application's own, or what a process forked
            # for a local runtime inherited; the records then go through the young
            # generations once, as any new object)
            if not gc.get_freeze_count():
                gc.freeze()
                gc.unfreeze()
            if collecting:
                gc.enable()
        if ev is None:
            return
        for task_id, why in ev.rejected:
            log.warning("journal %s: task %s not resumed: %s", self.path, task_id, why)
        log.info("journal %s: resumed %d unfinished task(s)", self.path, len(ev.accepted))

    def _restore(self, j: Journal, t: float) -> Restored | None:
        unfinished = j.resumable()
        if not unfinished:
            return None
        deps: set[str] = set()
        restored: list[tuple[TaskSpec, int, float]] = []
        add = restored.append
        calls = self.calls
        for spec, running, attempts, created in unfinished:
            # the run that was cut short keeps its number; a task waiting for a
            # retry (or never started) is on the number of its next run
            if attempts:
                add((spec, attempts - 1 if running else attempts, created))
                if spec.kind in _SCRIPTS:
                    recorded = j.calls(spec.id)
                    if recorded:
                        calls[spec.id] = {int(c[0]): c for c in recorded}
            else:
                add((spec, 0, created))
            if spec.deps:
                deps.update(spec.deps)
        if deps:  # ended tasks of earlier processes among them become tombstones
            if len(deps) > 500:  # (a few are looked up at once, resumed or not)
                deps.difference_update([spec.id for spec, _, _ in restored])
            if deps:
                self.lookup(sorted(deps))
        ev = Restored(restored, t)
        self.table.apply(ev)
        return ev

    def close(self) -> None:
        """Stop writing (what was not committed is dropped, as in a crash)."""
        j, self.journal = self.journal, None
        self.table.log = None
        if _OPEN.get(self.path) is self:
            del _OPEN[self.path]
        if j is not None:
            try:
                j.close()
            except JournalError:
                log.exception("journal %s: closing failed", self.path)


def crash(path: str) -> bool:
    """Stop the scheduler of this process that writes ``path`` from writing
    anything more, as the death of its process would (what it had not
    committed is dropped). True if there was one."""
    durable = _OPEN.get(path)
    if durable is None:
        return False
    durable.close()
    return True
