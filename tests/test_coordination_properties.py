"""Properties of every strategy over random task sets with random outcomes.

Each task is ``targets:outcome_in`` with a kind: ``ok`` (returns its index at
once), ``fail`` (raises) or ``slow`` (returns its index after 50 ms). Whatever
the mix, the result must agree with the strategy's definition (API.md
"Strategies"), and once ``coordinate`` returned no task of it is left
pending or running.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest
import targets
from hypothesis import given
from hypothesis import strategies as st

from llmspell import Runtime, Strategy, Task
from llmspell._task import CoordinationResult

KINDS = st.sampled_from(["ok", "fail", "slow"])
_runs = itertools.count()


@pytest.fixture(scope="module")
def shared() -> Iterator[Runtime]:
    runtime = Runtime()
    try:
        yield runtime
    finally:
        runtime.close()


def run(rt: Runtime, kinds: list[str], strategy: Strategy) -> tuple[CoordinationResult, list[str]]:
    """Runs the tasks; each has a compensation that logs ``<task id>-undo``."""
    prefix = f"prop{next(_runs)}"
    ids = [f"{prefix}-{i}" for i in range(len(kinds))]
    tasks = [
        Task.python(
            "targets:outcome_in",
            args={"kind": k, "value": i},
            id=ids[i],
            compensate=Task.python("targets:record", args={"name": f"{ids[i]}-undo"}),
        )
        for i, k in enumerate(kinds)
    ]
    return rt.coordinate(tasks, strategy, timeout=60), ids


def undone(ids: list[str]) -> set[int]:
    """The tasks whose compensation ran."""
    names = {f"{t}-undo": i for i, t in enumerate(ids)}
    return {names[e] for e in targets.log if e in names}


def check_common(rt: Runtime, r: CoordinationResult, kinds: list[str], ids: list[str]) -> None:
    n = len(kinds)
    succeeded, failed, cancelled = set(r.succeeded), {i for i, _ in r.failed}, set(r.cancelled)
    # each task in exactly one of the three lists
    assert len(r.succeeded) + len(r.failed) + len(r.cancelled) == n
    assert succeeded | failed | cancelled == set(range(n))
    assert len(r.results) == n
    assert not r.timed_out
    # a task's outcome is its own: ok/slow never fail, fail never succeeds
    assert all(kinds[i] != "fail" for i in succeeded)
    assert all(kinds[i] == "fail" for i in failed)
    # nothing of it is left pending or running, and the runtime agrees on each end
    stats = rt.stats()
    assert stats["running"] == 0 and stats["pending"] == 0
    expected = {i: "succeeded" for i in succeeded}
    expected.update({i: "failed" for i in failed})
    expected.update({i: "cancelled" for i in cancelled})
    assert {i: rt.status(ids[i]) for i in range(n)} == expected


@given(st.lists(KINDS, min_size=1, max_size=5), st.sampled_from(list(Strategy)))
def test_every_strategy_agrees_with_its_definition(
    shared: Runtime, kinds: list[str], strategy: Strategy
) -> None:
    r, ids = run(shared, kinds, strategy)
    check_common(shared, r, kinds, ids)
    n = len(kinds)
    fails = [i for i, k in enumerate(kinds) if k == "fail"]
    values = [i if i in r.succeeded else None for i in range(n)]
    assert r.strategy is strategy
    if strategy in (Strategy.SEQUENTIAL, Strategy.PARALLEL, Strategy.BEST_EFFORT):
        # every task runs to its own end
        assert r.cancelled == []
        assert [i for i, _ in r.failed] == fails
        assert r.results == values
        assert r.ok is (strategy is Strategy.BEST_EFFORT or not fails)
        assert r.winner is None
    elif strategy is Strategy.PIPELINE:
        # stages up to the first failure ran; the later ones were cancelled
        first = fails[0] if fails else n
        assert r.succeeded == list(range(first))
        assert [i for i, _ in r.failed] == fails[:1]
        assert r.cancelled == list(range(first + 1, n))
        assert r.results == values
        assert r.ok is (not fails)
    elif strategy is Strategy.RACE:
        if len(fails) == n:
            assert r.winner is None and not r.ok
            assert r.results == [None] * n
        else:
            assert r.ok and r.winner is not None
            assert r.winner in r.succeeded
            assert r.results[r.winner] == r.winner
        assert r.results == values
    else:  # ALL_OR_NOTHING
        assert r.ok is (not fails)
        if fails:
            assert r.results == [None] * n
            assert r.failed  # the failure that rolled it back is reported
            assert undone(ids) == set(r.succeeded)  # every success was compensated
        else:
            assert r.results == list(range(n))
            assert r.cancelled == []
    if strategy is not Strategy.ALL_OR_NOTHING or not fails:
        assert undone(ids) == set()  # compensations run only to roll back


@given(
    st.lists(KINDS, min_size=1, max_size=3),
    st.lists(st.integers(min_value=0, max_value=99), max_size=4),
)
def test_pipeline_with_inputs_reports_one_slot_per_input(
    shared: Runtime, kinds: list[str], inputs: list[int]
) -> None:
    prefix = f"propin{next(_runs)}"
    tasks = [
        Task.python("targets:outcome_in", args={"kind": k, "value": i}, id=f"{prefix}-{i}")
        for i, k in enumerate(kinds)
    ]
    r = shared.coordinate(tasks, Strategy.PIPELINE, inputs=inputs, timeout=60)
    m = len(inputs)
    assert len(r.results) == m
    assert sorted([*r.succeeded, *(k for k, _ in r.failed), *r.cancelled]) == list(range(m))
    if "fail" in kinds:  # every input meets the failing stage
        assert [k for k, _ in r.failed] == list(range(m))
        assert r.results == [None] * m
    else:  # every input comes out of the last stage
        assert r.succeeded == list(range(m))
        assert r.results == [len(kinds) - 1] * m
    assert r.ok is ("fail" not in kinds or m == 0)  # no input: nothing can fail
    stats = shared.stats()
    assert stats["running"] == 0 and stats["pending"] == 0
