"""Property: random task graphs with random failures and cancels. Every task
ends in exactly one terminal state, ``result`` agrees with ``status``, and no
task runs before its dependencies succeeded."""

from __future__ import annotations

import itertools

import pytest
import targets
from hypothesis import given
from hypothesis import strategies as st

from llmspell import Runtime, Task, TaskCancelled, TaskFailed, TaskTimeout

TERMINAL = {"succeeded", "failed", "cancelled", "timed_out"}
_run = itertools.count()


@st.composite
def task_graphs(draw: st.DrawFn) -> list[dict[str, object]]:
    n = draw(st.integers(min_value=1, max_value=10))
    nodes = []
    for i in range(n):
        nodes.append(
            {
                "kind": draw(st.sampled_from(["ok", "ok", "fail", "slow"])),
                "deps": sorted(draw(st.sets(st.integers(0, i - 1), max_size=3))) if i else [],
                "cancel": draw(st.booleans()) and draw(st.booleans()),
                "timeout": draw(st.sampled_from([None, None, None, 0.01])),
                "priority": draw(st.sampled_from(["low", "normal", "high", "critical"])),
            }
        )
    return nodes


@pytest.mark.slow
@given(task_graphs())
def test_every_task_reaches_one_terminal_state(graph: list[dict[str, object]]) -> None:
    run = next(_run)
    prefix = f"g{run}-"
    targets.log.clear()
    with Runtime(python_threads=2) as rt:
        tasks = [
            Task.python(
                "targets:logged_outcome",
                args={"name": f"{prefix}{i}", "kind": node["kind"], "value": i},
                id=f"{prefix}{i}",
                deps=[f"{prefix}{d}" for d in node["deps"]],  # type: ignore[attr-defined]
                timeout=node["timeout"],
                priority=node["priority"],
            )
            for i, node in enumerate(graph)
        ]
        handles = rt.submit_many(tasks)
        for h, node in zip(handles, graph, strict=True):
            if node["cancel"]:
                rt.cancel(h)
        outcomes = {}
        for i, h in enumerate(handles):
            try:
                outcomes[i] = ("succeeded", rt.result(h, timeout=30))
            except TaskCancelled:
                outcomes[i] = ("cancelled", None)
            except TaskTimeout:
                outcomes[i] = ("timed_out", None)
            except TaskFailed as exc:
                outcomes[i] = ("failed", exc.message)
        statuses = {i: rt.status(h) for i, h in enumerate(handles)}
        stats = rt.stats()
    started = [name for name in targets.log if name.startswith(prefix)]

    for i, node in enumerate(graph):
        status, value = outcomes[i]
        # result() agrees with status(), and the state is terminal
        assert statuses[i] == status
        assert status in TERMINAL
        deps_ok = all(outcomes[d][0] == "succeeded" for d in node["deps"])  # type: ignore[attr-defined]
        if status == "succeeded":
            assert value == i
            assert deps_ok
            assert node["kind"] != "fail"
        if not deps_ok and status == "failed":
            assert "dependency" in value  # type: ignore[operator]
        if not node["cancel"] and deps_ok and node["timeout"] is None:
            assert status == ("failed" if node["kind"] == "fail" else "succeeded")
        # nothing ran before its dependencies succeeded
        name = f"{prefix}{i}"
        if name in started:
            for d in node["deps"]:  # type: ignore[attr-defined]
                assert f"{prefix}{d}" in started[: started.index(name)]
                assert outcomes[d][0] == "succeeded"
        # each task ran at most once (no retries here)
        assert started.count(name) <= 1
    assert stats["running"] == 0 and stats["pending"] == 0
    assert sum(stats[s] for s in TERMINAL) == len(graph)
