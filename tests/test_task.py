"""Task constructors and the values the runtime hands back."""

from __future__ import annotations

import pytest
from helpers import WAIT

from llmspell import (
    CoordinationResult,
    Handle,
    Limits,
    MessageError,
    ResourceUsage,
    Runtime,
    Strategy,
    Task,
)


def test_every_constructor_of_the_contract_exists() -> None:
    tasks = [
        Task.lua("return 1", args={"x": 1}),
        Task.js("return 1"),
        Task.python("m:f", args={"a": 1}),
        Task.tool("search", {"q": "x"}),
        Task.agent("helper", "hi", execution="streaming", buffer_size=4),
        Task.hook("task.before", {"a": 1}),
        Task.event("my.event", {"a": 1}),
        Task.workflow({"name": "w", "steps": []}),
        Task.workflow("flow.yaml"),
        Task.custom("kind", {"a": 1}),
    ]
    kinds = [t.kind for t in tasks]
    assert kinds == [
        "lua",
        "js",
        "python",
        "tool",
        "agent",
        "hook",
        "event",
        "workflow",
        "workflow",
        "custom",
    ]


def test_options_reach_the_wire_spec() -> None:
    dep = Handle("d1")
    comp = Task.python("m:undo")
    spec = Task.lua(  # (a Python task refuses memory_bytes: test_nothing_silent.py)
        "return 1",
        priority="critical",
        timeout=2,
        deps=[dep, "d2"],
        retries=3,
        limits=Limits(memory_bytes=1024, on_exceed="warn"),
        metadata={"k": "v"},
        id="mine",
        compensate=comp,
    ).to_spec()
    assert spec.id == "mine"
    assert spec.priority == 3
    assert spec.timeout == 2.0
    assert spec.deps == ["d1", "d2"]
    assert spec.retries == 3
    assert spec.limits == {"memory_bytes": 1024, "cpu_seconds": None, "on_exceed": "warn"}
    assert spec.metadata == {"k": "v"}
    assert spec.compensate is not None and spec.compensate.target == "m:undo"


def test_fresh_ids_are_unique() -> None:
    t = Task.python("m:f")
    assert len({t.to_spec().id for _ in range(1000)}) == 1000


def test_lambda_is_not_a_target() -> None:
    with pytest.raises(MessageError, match="not a module-level function"):
        Task.python(lambda: 1)


def test_agent_options_only_on_agents() -> None:
    with pytest.raises(MessageError, match="unknown option 'buffer_size'"):
        Task.python("m:f", buffer_size=3)
    with pytest.raises(MessageError, match="buffer_size"):
        Task.agent("a", "x", buffer_size=0)


def test_limits_are_checked() -> None:
    with pytest.raises(MessageError, match="on_exceed"):
        Limits(on_exceed="explode")  # type: ignore[arg-type]
    with pytest.raises(MessageError, match="memory_bytes"):
        Limits(memory_bytes=-5)


def test_strategy_parse() -> None:
    assert Strategy.parse("all-or-nothing") is Strategy.ALL_OR_NOTHING
    assert Strategy.parse("RACE") is Strategy.RACE
    with pytest.raises(MessageError, match="unknown strategy"):
        Strategy.parse("random")


def test_coordination_result_round_trips_as_dict() -> None:
    r = CoordinationResult(
        Strategy.RACE,
        True,
        [None, 2],
        [1],
        [(0, "boom")],
        [],
        1,
        0.5,
        ResourceUsage(cpu_seconds=0.1),
    )
    assert CoordinationResult.from_dict(r.to_dict()) == r


def test_resource_usage_sums() -> None:
    a = ResourceUsage(memory_bytes=10, cpu_seconds=1.0, duration=2.0)
    b = ResourceUsage(memory_bytes=20, cpu_seconds=0.5, network_bytes_sent=3)
    s = a + b
    assert (s.memory_bytes, s.cpu_seconds, s.network_bytes_sent, s.duration) == (20, 1.5, 3, 2.0)


# -- moved from test_bad_input.py: bad input to this feature ----------------------------


@pytest.mark.parametrize("timeout", [float("nan"), float("inf"), -1, "5"])
def test_task_timeout_must_be_finite_seconds(timeout: object) -> None:
    with pytest.raises(MessageError, match="timeout: must be a positive number"):
        Task.lua("return 1", timeout=timeout)


def test_none_options_are_the_defaults(rt: Runtime) -> None:
    t = Task.lua(
        "return 1", deps=None, retries=None, priority=None, timeout=None, limits=None, id=None
    )
    assert rt.result(rt.submit(t), timeout=WAIT) == 1


@pytest.mark.parametrize(
    ("make", "where"),
    [
        (lambda: Task.hook("task.middle"), "point"),
        (lambda: Task.workflow(None), "workflow"),  # type: ignore[arg-type]
        (lambda: Task.workflow(5), "workflow"),  # type: ignore[arg-type]
        (lambda: Task.lua("return 1", priority=["high"]), "priority"),
        (lambda: Task.lua("return 1", retries=10**30), "retries"),
    ],
)
def test_task_constructors_refuse_what_cannot_run(make: object, where: str) -> None:
    with pytest.raises(MessageError) as info:
        make()  # type: ignore[operator]
    assert info.value.where == where


def test_limits_must_fit_the_wire() -> None:
    from llmspell import Limits

    with pytest.raises(MessageError, match=r"limits\.memory_bytes"):
        Limits(memory_bytes=10**30)
    with pytest.raises(MessageError, match=r"limits\.cpu_seconds"):
        Limits(cpu_seconds=float("nan"))


@pytest.mark.parametrize("what", ["tool", "hook", "executor"])
def test_options_on_a_task_template_are_refused_not_dropped(rt: Runtime, what: str) -> None:
    register = getattr(rt, f"register_{what}")
    name = "task.after" if what == "hook" else "templated"
    with pytest.raises(MessageError, match="keeps only its code and args, not retries, timeout"):
        register(name, Task.lua("spell.sleep(5) return 1", timeout=1, retries=3))
    rt.register_tool("templated_ok", Task.lua("return spell.args.a", args={"a": 1}))
    assert rt.result(rt.submit(Task.tool("templated_ok", timeout=5)), timeout=WAIT) == 1
