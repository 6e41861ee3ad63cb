"""The task table (``llmspell.table``) driven directly by events, no actor
system: random task graphs, batches, dispatches, results, retries, cancels
and timeouts, checked against the table's invariants after every event."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmspell.messages.codec import decode, encode
from llmspell.messages.types import TaskOutcome, TaskSpec
from llmspell.table import (
    TERMINAL,
    Cancelled,
    Dispatched,
    Ended,
    Rec,
    Restored,
    Retried,
    Submitted,
    TaskStatus,
    TaskTable,
    Tombstoned,
)


class Driver:
    """Plays the scheduler's part over a table: keeps the ready queue, plays
    engines, and checks the invariants after every event."""

    def __init__(self, table: TaskTable) -> None:
        self.table = table
        self.t = 0.0
        self.queue: list[Rec] = []  # ready, not yet dispatched
        self.running: list[str] = []
        self.specs: dict[str, TaskSpec] = {}
        self.ended: dict[str, int] = {}  # task id -> times it was reported ended
        self.final: dict[str, str] = {}  # task id -> its terminal status
        self.runs: dict[str, int] = {}  # task id -> dispatches
        self.cancelled_by_us: set[str] = set()

    def status(self, task_id: str) -> str:
        return self.table.status(task_id)

    def apply(self, ev: Any) -> None:
        self.t += 1.0
        self.table.apply(ev)
        self.drain()
        self.check()

    def drain(self) -> None:
        table = self.table
        for rec in table.ended:
            task_id = rec.spec.id
            self.ended[task_id] = self.ended.get(task_id, 0) + 1
            assert rec.status in TERMINAL
            assert rec.outcome is not None and rec.outcome.status == rec.status
            self.final[task_id] = rec.status
            if task_id in self.running:
                self.running.remove(task_id)
        table.ended.clear()
        for rec, delay in table.retried:
            assert rec.status is TaskStatus.PENDING
            assert delay == table.backoff(rec.attempt)
            self.running.remove(rec.spec.id)
            self.queue.append(rec)  # the backoff has passed: queued again
        table.retried.clear()
        self.queue.extend(table.ready)
        table.ready.clear()
        table.warnings.clear()

    def check(self) -> None:
        for task_id, status in self.final.items():
            assert self.ended[task_id] == 1, f"{task_id} ended {self.ended[task_id]} times"
            assert self.status(task_id) == status, f"{task_id} left {status}"

    def submit(self, specs: list[TaskSpec]) -> Submitted:
        for spec in specs:
            self.specs.setdefault(spec.id, spec)
        ev = Submitted(specs, self.t)
        self.apply(ev)
        return ev

    def dispatch(self, rec: Rec) -> None:
        self.queue.remove(rec)
        if rec.status is not TaskStatus.PENDING:
            return  # ended while queued (cancelled)
        for dep in rec.spec.deps or ():
            assert self.status(dep) == "succeeded", f"{rec.spec.id} ran before {dep}"
        self.runs[rec.spec.id] = self.runs.get(rec.spec.id, 0) + 1
        assert self.runs[rec.spec.id] <= 1 + rec.spec.retries
        self.apply(Dispatched(rec.spec.id, rec.attempt, self.t))
        self.running.append(rec.spec.id)

    def finish(self, task_id: str, ok: bool) -> None:
        attempt = self.table.tasks[task_id].attempt
        if ok:
            outcome = TaskOutcome(task_id, "succeeded", value=task_id, attempt=attempt)
        else:
            error = {"message": f"{task_id} broke", "kind": "failed", "engine": "python"}
            outcome = TaskOutcome(task_id, "failed", error=error, attempt=attempt)
        self.apply(
            Ended(
                task_id,
                outcome.status,
                self.t,
                outcome.value,
                outcome.error,
                outcome.usage,
                outcome,
                may_retry=True,
            )
        )

    def run_out(self) -> None:
        """Run everything left to success: nothing may stay unfinished."""
        while self.queue or self.running:
            while self.queue:
                self.dispatch(self.queue[0])
            while self.running:
                self.finish(self.running[0], ok=True)


@st.composite
def scenarios(draw: st.DrawFn) -> dict[str, Any]:
    n = draw(st.integers(min_value=1, max_value=12))
    ids = [f"t{i}" for i in range(n)]
    specs = []
    for i in range(n):
        # mostly earlier tasks; a later one sometimes (a cycle can close in a batch)
        deps = sorted(draw(st.sets(st.integers(0, n - 1), max_size=3)) - {i})
        deps = [d for d in deps if d < i or draw(st.booleans())]
        parent = draw(st.one_of(st.none(), st.integers(0, i - 1))) if i else None
        specs.append(
            TaskSpec(
                id=ids[i],
                kind="python",
                target="m:f",
                deps=[ids[d] for d in deps] or None,
                retries=draw(st.integers(0, 2)),
                parent=ids[parent] if parent is not None else None,
                deps_input=draw(st.booleans()),
            )
        )
    cuts = sorted(draw(st.sets(st.integers(1, n - 1), max_size=2))) if n > 1 else []
    batches = [specs[a:b] for a, b in zip([0, *cuts], [*cuts, n], strict=True)]
    actions = draw(
        st.lists(
            st.tuples(
                st.sampled_from(["dispatch", "ok", "fail", "cancel", "timeout", "submit"]),
                st.integers(0, 1000),
            ),
            max_size=40,
        )
    )
    return {
        "batches": batches,
        "actions": actions,
        "history": draw(st.sampled_from([1, 2, 1000])),
    }


@given(scenarios())
def test_every_task_ends_once_and_never_runs_before_its_deps(sc: dict[str, Any]) -> None:
    table = TaskTable(history=sc["history"])
    d = Driver(table)
    batches = list(sc["batches"])
    d.submit(batches.pop(0))
    for action, pick in sc["actions"]:
        if action == "submit" and batches:
            d.submit(batches.pop(0))
        elif action == "dispatch" and d.queue:
            d.dispatch(d.queue[pick % len(d.queue)])
        elif action in ("ok", "fail") and d.running:
            d.finish(d.running[pick % len(d.running)], ok=action == "ok")
        elif action == "cancel" and d.specs:
            task_id = sorted(d.specs)[pick % len(d.specs)]
            d.cancelled_by_us.add(task_id)
            d.apply(Cancelled([task_id], "stop", d.t))
        elif action == "timeout" and d.running:
            task_id = d.running[pick % len(d.running)]
            error = {"message": "too slow", "kind": "timeout", "engine": "runtime"}
            d.apply(Ended(task_id, "timed_out", d.t, error=error))
    while batches:
        d.submit(batches.pop(0))
    d.run_out()

    # every task ended, exactly once (the driver checked "once" after every event)
    assert set(d.final) == set(d.specs)
    for task_id, spec in d.specs.items():
        status = d.final[task_id]
        assert d.runs.get(task_id, 0) <= 1 + spec.retries
        dep_statuses = {dep: d.final.get(dep, "unknown") for dep in spec.deps or ()}
        if any(s != "succeeded" for s in dep_statuses.values()):
            # it never ran; it failed for its dependency, unless it was cancelled
            assert task_id not in d.runs
            assert status in ("failed", "cancelled"), (task_id, status, dep_statuses)
        if status == "succeeded":
            assert all(s == "succeeded" for s in dep_statuses.values())
        outcome_error = _error_of(table, task_id)
        if status == "failed" and outcome_error and outcome_error["kind"] == "dependency":
            assert task_id not in d.runs
            assert any(s != "succeeded" for s in dep_statuses.values()) or "cycle" in str(
                outcome_error["message"]
            )


def _error_of(table: TaskTable, task_id: str) -> dict[str, Any] | None:
    rec = table.tasks.get(task_id)
    if rec is not None:
        return rec.outcome.error if rec.outcome else None
    gone = table.gone.get(task_id)
    return gone[2] if gone else None


@given(retries=st.integers(0, 4), fails=st.integers(0, 8))
def test_retries_are_bounded_by_the_spec(retries: int, fails: int) -> None:
    table = TaskTable()
    d = Driver(table)
    d.submit([TaskSpec(id="a", kind="python", target="m:f", retries=retries)])
    for i in range(fails + 1):
        if d.final:
            break
        d.dispatch(d.queue[0])
        d.finish("a", ok=i == fails)
    assert d.runs["a"] == min(fails, retries) + 1
    if fails > retries:
        assert d.final["a"] == "failed"
        error = table.tasks["a"].outcome.error  # type: ignore[union-attr]
        # every attempt's message, the last one included (when there were several)
        assert error.get("attempts", ["a broke"]) == ["a broke"] * (retries + 1)
    else:
        assert d.final["a"] == "succeeded"
        assert table.counts["retries"] == fails


def test_a_failure_at_the_head_of_a_long_chain_fails_it_all_without_recursion() -> None:
    n = 10_000
    table = TaskTable(history=n)
    specs = [
        TaskSpec(id=f"c{i}", kind="python", target="m:f", deps=[f"c{i - 1}"] if i else None)
        for i in range(n)
    ]
    d = Driver(table)
    d.submit(specs)
    assert [r.spec.id for r in d.queue] == ["c0"]
    d.dispatch(d.queue[0])
    d.finish("c0", ok=False)  # a RecursionError here would be the bug
    assert all(d.final[f"c{i}"] == "failed" for i in range(n))
    last = table.tasks[f"c{n - 1}"].outcome
    assert last is not None and last.error is not None
    assert last.error["kind"] == "dependency"
    assert "'c0' failed" in last.error["message"]  # the first cause, not every link


def test_a_long_chain_of_cancelled_parents_cancels_every_child() -> None:
    table = TaskTable()
    d = Driver(table)
    d.submit([TaskSpec(id="p0", kind="python", target="m:f")])
    for i in range(1, 200):  # children submitted while their parent runs
        d.dispatch(d.queue[0])
        d.submit([TaskSpec(id=f"p{i}", kind="python", target="m:f", parent=f"p{i - 1}")])
    d.apply(Cancelled(["p0"], "enough", d.t))
    assert {d.final[f"p{i}"] for i in range(200)} == {"cancelled"}
    kid = table.tasks["p199"].outcome
    assert kid is not None and kid.error is not None
    assert kid.error["message"] == "its parent task 'p198' was cancelled"


def test_a_cycle_in_one_batch_fails_its_tasks_naming_the_cycle() -> None:
    table = TaskTable()
    d = Driver(table)
    d.submit(
        [
            TaskSpec(id="a", kind="python", target="m:f", deps=["c"]),
            TaskSpec(id="b", kind="python", target="m:f", deps=["a"]),
            TaskSpec(id="c", kind="python", target="m:f", deps=["b"]),
            TaskSpec(id="d", kind="python", target="m:f", deps=["a"]),
            TaskSpec(id="e", kind="python", target="m:f"),
        ]
    )
    assert [r.spec.id for r in d.queue] == ["e"]
    for task_id in "abc":
        error = table.tasks[task_id].outcome.error  # type: ignore[union-attr]
        assert error is not None and error["kind"] == "dependency"
        assert error["message"] == "dependency cycle: a -> c -> b -> a"
    error = table.tasks["d"].outcome.error  # type: ignore[union-attr]
    assert error is not None and error["kind"] == "dependency"
    assert "dependency 'a' failed" in error["message"]
    assert d.final == {"a": "failed", "b": "failed", "c": "failed", "d": "failed"}


@given(history=st.integers(1, 40), n=st.integers(0, 6_000))
def test_retention_keeps_at_most_history_records_and_tombstones(history: int, n: int) -> None:
    table = TaskTable(history=history)
    d = Driver(table)
    for i in range(n):
        d.table.apply(Submitted([TaskSpec(id=f"r{i}", kind="python", target="m:f")], d.t))
        d.table.apply(Dispatched(f"r{i}", 0, d.t))
        d.table.apply(Ended(f"r{i}", "succeeded", d.t, value=i))
        d.table.ready.clear()
        d.table.ended.clear()
        assert len(table.tasks) <= history + min(256, history >> 3) + 1
        assert len(table.gone) <= max(100 * history, 100)
    # the newest ones answer, from a record or a tombstone
    for i in range(max(0, n - history), n):
        assert table.status(f"r{i}") == "succeeded"


def test_a_record_a_pending_dependent_reads_is_kept_past_history() -> None:
    table = TaskTable(history=1)
    d = Driver(table)
    d.submit(
        [
            TaskSpec(id="x", kind="python", target="m:f"),
            TaskSpec(id="y", kind="python", target="m:f"),
            TaskSpec(id="z", kind="python", target="m:f", deps=["x", "y"], deps_input=True),
        ]
    )
    d.dispatch(d.queue[0])
    d.finish("x", ok=True)
    for i in range(50):  # many more ends than history, while z waits on y
        d.submit([TaskSpec(id=f"o{i}", kind="python", target="m:f")])
        d.dispatch(d.queue[-1])
        d.finish(f"o{i}", ok=True)
    d.dispatch(d.queue[0])
    d.finish("y", ok=True)
    assert d.queue[0].spec.input == {"x": "x", "y": "y"}


def test_restored_tasks_take_their_place_without_being_new_submissions() -> None:
    table = TaskTable()
    table.log = []
    table.apply(Tombstoned("old", "succeeded", value=41, key="step1"))
    table.apply(Tombstoned("bad", "failed", error={"message": "no", "kind": "failed"}))
    d = Driver(table)
    spec = TaskSpec(id="n", kind="python", target="m:f", deps=["old"], deps_input=True, retries=2)
    spec2 = TaskSpec(id="m", kind="python", target="m:f", deps=["bad"])
    ev = Restored([(spec, 1, 5.0), (spec2, 0, 6.0)], d.t)
    d.apply(ev)
    assert table.counts["submitted"] == 0
    # restored from storage: nothing new to record but the end it set off now
    assert [(type(e).__name__, getattr(e, "task_id", "")) for e in table.log] == [("Ended", "m")]
    (rec,) = d.queue
    assert rec.spec.id == "n" and rec.attempt == 1 and rec.submitted_at == 5.0
    assert rec.spec.input == 41  # from the tombstone
    error = table.tasks["m"].outcome.error  # type: ignore[union-attr]
    assert error is not None and error["kind"] == "dependency"
    assert "dependency 'bad' failed: no" in error["message"]
    # one retry left of two: it runs as attempt 1, then 2, then fails for good
    d.dispatch(rec)
    d.finish("n", ok=False)
    d.dispatch(d.queue[0])
    d.finish("n", ok=False)
    assert d.final["n"] == "failed" and d.runs["n"] == 2
    # a restored id cannot come in again as a new task, nor a tombstone's
    dup = d.submit([TaskSpec(id="n", kind="python"), TaskSpec(id="old", kind="python")])
    assert [task_id for task_id, _ in dup.rejected] == ["n", "old"]
    assert table.status("old") == "succeeded"


def test_a_replayed_submit_of_a_known_id_is_taken_as_is() -> None:
    table = TaskTable()
    d = Driver(table)
    d.submit([TaskSpec(id="k", kind="python", target="m:f")])
    ev = Submitted([TaskSpec(id="k", kind="python", target="m:f")], d.t, replayed=True)
    d.apply(ev)
    assert ev.rejected == [] and ev.known == ["k"] and ev.accepted == []
    assert table.counts["submitted"] == 1


def test_the_log_records_every_durable_change_in_order() -> None:
    table = TaskTable(retry_base=0.0)
    table.log = []
    d = Driver(table)
    d.submit(
        [
            TaskSpec(id="a", kind="python", target="m:f", retries=1),
            TaskSpec(id="b", kind="python", target="m:f", deps=["a"]),
        ]
    )
    d.apply(Submitted([TaskSpec(id="h", kind="hook")], d.t, durable=False))
    d.dispatch(next(r for r in d.queue if r.spec.id == "a"))
    d.finish("a", ok=False)
    d.dispatch(next(r for r in d.queue if r.spec.id == "a"))
    d.finish("a", ok=False)
    d.dispatch(next(r for r in d.queue if r.spec.id == "h"))
    seen = []
    for ev in table.log:
        if isinstance(ev, Submitted):
            seen.append(("submitted", [s.id for s in ev.accepted]))
        elif isinstance(ev, Dispatched):
            seen.append(("dispatched", ev.task_id, ev.attempt))
        elif isinstance(ev, Retried):
            seen.append(("retried", ev.task_id, ev.attempt, ev.error))
        elif isinstance(ev, Ended):
            assert ev.error is not None
            seen.append(("ended", ev.task_id, ev.status, ev.attempt, ev.error["kind"]))
    assert seen == [
        ("submitted", ["a", "b"]),
        ("dispatched", "a", 0),
        ("retried", "a", 1, "a broke"),
        ("dispatched", "a", 1),
        ("ended", "a", "failed", 1, "failed"),
        ("ended", "b", "failed", 0, "dependency"),  # set off by a's end: logged too
    ]


def test_a_task_is_refused_a_status_it_cannot_reach() -> None:
    table = TaskTable()
    table.apply(Submitted([TaskSpec(id="a", kind="python", target="m:f")], 0.0))
    with pytest.raises(ValueError, match="retried while pending"):
        table.apply(Retried("a", "x", 1.0))
    with pytest.raises(ValueError, match="dispatched as attempt 3"):
        table.apply(Dispatched("a", 3, 1.0))
    with pytest.raises(ValueError, match="must be terminal"):
        table.apply(Tombstoned("z", "running"))
    # an end reported with a status that is not one fails the task, saying so
    table.apply(Dispatched("a", 0, 1.0))
    table.apply(Ended("a", "sleeping", 2.0))
    error = table.tasks["a"].outcome.error  # type: ignore[union-attr]
    assert table.status("a") == "failed" and error is not None
    assert "'sleeping', which is not an end state" in error["message"]


def test_statuses_are_plain_strings_on_the_wire() -> None:
    assert TaskStatus.TIMED_OUT == "timed_out" and "timed_out" in TERMINAL
    assert {TaskStatus.CANCELLED: 1}["cancelled"] == 1
    msg = decode(encode(TaskOutcome("a", TaskStatus.SUCCEEDED, value=1)))
    assert isinstance(msg, TaskOutcome)
    assert msg.status == "succeeded" and type(msg.status) is str


def test_random_cancels_and_timeouts_of_a_wide_graph_end_everything() -> None:
    rng = random.Random(7)
    table = TaskTable(history=50)
    d = Driver(table)
    specs = []
    for i in range(2_000):
        deps = sorted({f"w{rng.randrange(i)}" for _ in range(rng.randrange(3))}) if i else []
        specs.append(TaskSpec(id=f"w{i}", kind="python", target="m:f", deps=deps or None))
    d.submit(specs)
    for _ in range(300):
        d.apply(Cancelled([f"w{rng.randrange(2_000)}"], "stop", d.t))
        if d.queue:
            d.dispatch(d.queue[rng.randrange(len(d.queue))])
        if d.running and rng.random() < 0.5:
            d.finish(d.running[rng.randrange(len(d.running))], ok=rng.random() < 0.8)
    d.run_out()
    assert len(d.final) == 2_000


# -- the scheduler's hot path (dispatch, ran) is the event path ----------------------------


def _snapshot(table: TaskTable) -> Any:
    """Everything a table holds and leaves to its owner, as plain data."""

    def outcome(o: TaskOutcome | None) -> Any:
        if o is None:
            return None
        return (o.task_id, type(o.status), o.status, o.value, o.error, o.usage, o.attempt)

    recs = {
        task_id: tuple(
            outcome(rec.outcome)
            if name == "outcome"
            else rec.spec.input
            if name == "spec"
            else (type(rec.status), rec.status)
            if name == "status"
            else getattr(rec, name)
            for name in Rec.__slots__
        )
        for task_id, rec in table.tasks.items()
    }
    log = None
    if table.log is not None:
        log = [repr(ev) for ev in table.log]
    return (
        recs,
        list(table.tasks),
        dict(table.gone),
        dict(table.counts),
        list(table._ended_ids),
        [(r.spec.id, outcome(r.outcome)) for r in table.ended],
        [r.spec.id for r in table.ready],
        [(r.spec.id, delay) for r, delay in table.retried],
        list(table.warnings),
        log,
    )


@st.composite
def hot_path_runs(draw: st.DrawFn) -> dict[str, Any]:
    sc = draw(scenarios())
    sc["log"] = draw(st.booleans())
    sc["actions"] = draw(
        st.lists(
            st.tuples(
                st.sampled_from(["dispatch", "ok", "fail", "end", "cancel", "timeout", "submit"]),
                st.integers(0, 1000),
                st.sampled_from([None, "cpu", "duration", "spans"]),  # the engine's usage
                st.booleans(),  # may_retry
            ),
            max_size=60,
        )
    )
    return sc


def _engine_outcome(task_id: str, attempt: int, how: str, usage: str | None) -> TaskOutcome:
    used: dict[str, Any] | None = {
        None: None,
        "cpu": {"cpu_seconds": 0.5},
        "duration": {"cpu_seconds": 0.5, "duration": 7.0},
        "spans": {"cpu_seconds": 0.5, "network_bytes_sent": 3},
    }[usage]
    if how == "ok":
        return TaskOutcome(task_id, "succeeded", [task_id], None, used, attempt)
    if how == "fail":
        error = {"message": f"{task_id} broke", "kind": "failed", "engine": "python"}
        return TaskOutcome(task_id, "failed", None, error, used, attempt)
    error = {"message": "the coroutine was cancelled", "kind": "failed", "engine": "python"}
    return TaskOutcome(task_id, "cancelled", None, error, used, attempt)


@given(hot_path_runs())
def test_the_hot_path_leaves_the_table_as_the_events_do(sc: dict[str, Any]) -> None:
    # The scheduler starts a run with TaskTable.dispatch and takes its engine's
    # outcome with TaskTable.ran (a plain success without an event object): each
    # must leave the table, its effects and its log exactly as apply(Dispatched)
    # and apply(Ended) would, whatever else runs (parents, dependents, deps_input
    # holders, retries, cancels and timeouts, retention, the durable log).
    def table() -> TaskTable:
        tt = TaskTable(history=sc["history"])
        if sc["log"]:
            tt.log = []
        return tt

    by_events, hot = table(), table()
    both = (by_events, hot)
    batches = [list(b) for b in sc["batches"]]
    t = 0.0
    queue: list[str] = []  # ready, not yet dispatched (by id: the same in both)

    def copies(batch: list[TaskSpec]) -> tuple[list[TaskSpec], list[TaskSpec]]:
        return [decode(encode(s)) for s in batch], [decode(encode(s)) for s in batch]

    def settle() -> None:
        for tt in both:
            tt.ended.clear()
            tt.warnings.clear()
        queue.extend(r.spec.id for r in by_events.ready)
        queue.extend(r.spec.id for r, _ in by_events.retried)
        for tt in both:
            tt.ready.clear()
            tt.retried.clear()

    def submit() -> None:
        a, b = copies(batches.pop(0))
        by_events.apply(Submitted(a, t))
        hot.apply(Submitted(b, t))

    submit()
    assert _snapshot(by_events) == _snapshot(hot)
    settle()
    # the drawn actions, then every batch left and everything run out to success
    rest = [("submit", 0, None, True)] * len(batches) + [("ok", 0, "cpu", True)] * 200
    for action, pick, usage, may_retry in [*sc["actions"], *rest]:
        t += 1.0
        running = [i for i, r in by_events.tasks.items() if r.status is TaskStatus.RUNNING]
        if action == "ok" and not running and queue:
            action = "dispatch"
        if action == "submit" and batches:
            submit()
        elif action == "dispatch" and queue:
            task_id = queue.pop(pick % len(queue))
            rec = by_events.tasks.get(task_id)
            if rec is None or rec.status is not TaskStatus.PENDING:
                continue  # ended while queued
            by_events.apply(Dispatched(task_id, rec.attempt, t))
            hot.dispatch(hot.tasks[task_id], t)
        elif action in ("ok", "fail", "end") and running:
            task_id = running[pick % len(running)]
            attempt = by_events.tasks[task_id].attempt
            a = _engine_outcome(task_id, attempt, action, usage)
            b = _engine_outcome(task_id, attempt, action, usage)
            by_events.apply(Ended(task_id, a.status, t, a.value, a.error, a.usage, a, may_retry))
            hot.ran(hot.tasks[task_id], b, t, may_retry)
        elif action == "cancel":
            ids = sorted(by_events.tasks)
            if not ids:
                continue
            task_id = ids[pick % len(ids)]
            for tt in both:
                tt.apply(Cancelled([task_id], "stop", t))
        elif action == "timeout" and running:
            task_id = running[pick % len(running)]
            for tt in both:
                error = {"message": "too slow", "kind": "timeout", "engine": "runtime"}
                tt.apply(Ended(task_id, "timed_out", t, error=error))
        else:
            continue
        assert _snapshot(by_events) == _snapshot(hot), action
        settle()
