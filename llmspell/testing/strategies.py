"""Hypothesis strategies for llmspell work: tasks, task graphs, workflows and
fault plans.

Every strategy builds *deterministic* work, so that a ``Simulation`` run of
it depends on the seed alone: scripts sleep on virtual time, and Python tasks
use the callables in ``llmspell.testing.targets`` (no real sleeping).
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from .._task import Task
from .simulation import Fault, FaultPlan

__all__ = ["fault_plans", "js_programs", "lua_programs", "task_graphs", "tasks", "workflows"]

_PRIORITIES = ("low", "normal", "high", "critical")

# one step of a script: (kind, argument)
_steps = st.one_of(
    st.tuples(st.just("sleep"), st.sampled_from([0, 0.5, 1, 5, 60])),
    st.tuples(st.just("yield"), st.none()),
    st.tuples(st.just("emit"), st.sampled_from(["a", "b"])),
)
_ends = st.one_of(
    st.tuples(st.just("return"), st.integers(-100, 100)),
    st.tuples(st.just("error"), st.sampled_from(["boom", "bad input"])),
)


# how each step reads in each language
_SYNTAX = {
    "lua": {
        "sleep": "spell.sleep({})",
        "yield": "spell.yield()",
        "emit": 'spell.emit("sim.{}", {{}})',
        "return": "return {}",
        "error": 'error("{}")',
    },
    "js": {
        "sleep": "await spell.sleep({});",
        "yield": "await spell.yield();",
        "emit": 'spell.emit("sim.{}", {{}});',
        "return": "return {};",
        "error": 'throw new Error("{}");',
    },
}


def _program(lang: str, steps: list[tuple[str, Any]], end: tuple[str, Any]) -> str:
    syntax = _SYNTAX[lang]
    return "\n".join(syntax[kind].format(arg) for kind, arg in [*steps, end])


def _lua(steps: list[tuple[str, Any]], end: tuple[str, Any]) -> str:
    return _program("lua", steps, end)


def _js(steps: list[tuple[str, Any]], end: tuple[str, Any]) -> str:
    return _program("js", steps, end)


@st.composite
def lua_programs(draw: st.DrawFn) -> tuple[str, bool]:
    """``(code, fails)``: a Lua task body from sleep/yield/emit steps, then
    return or error."""
    steps = draw(st.lists(_steps, max_size=5))
    end = draw(_ends)
    return _lua(steps, end), end[0] == "error"


@st.composite
def js_programs(draw: st.DrawFn) -> tuple[str, bool]:
    """``(code, fails)``: the JavaScript twin of ``lua_programs``."""
    steps = draw(st.lists(_steps, max_size=5))
    end = draw(_ends)
    return _js(steps, end), end[0] == "error"


@st.composite
def tasks(
    draw: st.DrawFn,
    engines: tuple[str, ...] = ("python", "lua", "js"),
    retries: bool = True,
) -> Task:
    """One task of any of ``engines``, with a random priority, maybe retries
    and a timeout. Its ``metadata["fails"]`` says whether it is meant to fail."""
    engine = draw(st.sampled_from(engines))
    opts: dict[str, Any] = {"priority": draw(st.sampled_from(_PRIORITIES))}
    if retries and draw(st.booleans()):
        opts["retries"] = draw(st.integers(0, 2))
    if draw(st.integers(0, 4)) == 0:
        opts["timeout"] = draw(st.sampled_from([0.5, 2.0, 30.0]))
    if engine == "python":
        fails = draw(st.booleans())
        target = "llmspell.testing.targets:fail" if fails else "llmspell.testing.targets:echo"
        return Task.python(
            target, args={"value": draw(st.integers(0, 9))}, metadata={"fails": fails}, **opts
        )
    code, fails = draw(lua_programs() if engine == "lua" else js_programs())
    make = Task.lua if engine == "lua" else Task.js
    return make(code, metadata={"fails": fails}, **opts)


@st.composite
def task_graphs(
    draw: st.DrawFn, max_tasks: int = 8, engines: tuple[str, ...] = ("python", "lua", "js")
) -> list[Task]:
    """Tasks with ids ``"g0"``, ``"g1"``, ... where each may depend on earlier
    ones (a DAG), ready for ``submit_many``."""
    n = draw(st.integers(1, max_tasks))
    graph = []
    for i in range(n):
        base = draw(tasks(engines))
        deps = sorted(draw(st.sets(st.integers(0, i - 1), max_size=2))) if i else []
        opts = dict(base.opts)
        opts["id"] = f"g{i}"
        opts["deps"] = [f"g{d}" for d in deps]
        graph.append(
            Task(base.kind, base.code, base.target, base.name, base.args, base.payload, opts)
        )
    return graph


@st.composite
def workflows(draw: st.DrawFn, max_steps: int = 5) -> dict[str, Any]:
    """A workflow dict (API.md "Workflow files") of Lua and JS steps."""
    strategy = draw(
        st.sampled_from(["sequential", "parallel", "race", "best_effort", "all_or_nothing"])
    )
    steps = []
    for i in range(draw(st.integers(1, max_steps))):
        lang = draw(st.sampled_from(["lua", "js"]))
        code, _ = draw(lua_programs() if lang == "lua" else js_programs())
        steps.append({"id": f"s{i}", "lang": lang, "code": code})
    return {"name": "generated", "strategy": strategy, "steps": steps}


@st.composite
def fault_plans(
    draw: st.DrawFn,
    task_ids: list[str] | None = None,
    engines: tuple[str, ...] = ("python", "lua", "js"),
    horizon: float = 60.0,
    max_faults: int = 3,
) -> FaultPlan:
    """Faults of every kind, aimed at ``task_ids`` and ``engines``, with
    engine crashes at virtual times before ``horizon``."""
    kinds = ["engine_crash", "drop_event", "duplicate_event"]
    if task_ids:
        kinds += ["script_error", "slow_step", "task_timeout", "resource_breach"]
    faults = []
    for _ in range(draw(st.integers(0, max_faults))):
        kind = draw(st.sampled_from(kinds))
        if kind == "engine_crash":
            faults.append(
                Fault(
                    kind,
                    engine=draw(st.sampled_from(engines)),
                    at=draw(st.floats(0.0, horizon, allow_nan=False)),
                )
            )
        elif kind in ("drop_event", "duplicate_event"):
            faults.append(
                Fault(
                    kind,
                    pattern=draw(st.sampled_from(["sim.*", "sim.a"])),
                    count=draw(st.integers(1, 3)),
                )
            )
        else:
            assert task_ids is not None
            faults.append(
                Fault(
                    kind,
                    task=draw(st.sampled_from(task_ids)),
                    delay=draw(st.sampled_from([1.0, 10.0])),
                )
            )
    return FaultPlan(tuple(faults))
