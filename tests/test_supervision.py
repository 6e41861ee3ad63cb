"""Supervisors: strategies, restart types, intensity and escalation, backoff;
engine crashes in embedded mode with retries; a stateful property."""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from thespian.actors import ActorSystem

from llmspell import Runtime, RuntimeDegraded, Task, TaskFailed
from llmspell.messages import decode, encode
from llmspell.messages.types import (
    Introduce,
    Publish,
    QueryStats,
    Shutdown,
    SupervisorEvent,
)
from llmspell.supervisors.supervisor import (
    ChildSpec,
    Supervisor,
    SupervisorSpec,
    backoff_delay,
)

# -- the supervisor actor on its own ----------------------------------------------------

_refs = itertools.count(1)


class World:
    """A simpleSystemBase with a probe and one supervisor of ``Child`` actors."""

    def __init__(self, spec: SupervisorSpec) -> None:
        from sup_children import Probe

        self.asys = ActorSystem("simpleSystemBase", transientUnique=True, logDefs=False)
        self.probe = self.asys.createActor(Probe)
        self.sup = self.asys.createActor(Supervisor)
        self.children: dict[str, Any] = {}
        self.events: list[SupervisorEvent] = []
        self.asys.tell(
            self.sup, encode(Introduce("rt", {"probe": self.probe}, {"supervisor": spec.to_dict()}))
        )
        self.drain()

    def drain(self) -> None:
        while True:
            raw = self.asys.listen(0)
            if raw is None:
                return
            msg = decode(raw)
            if isinstance(msg, SupervisorEvent):
                self.events.append(msg)

    def log(self) -> list[list[Any]]:
        raw = self.asys.ask(self.probe, encode(QueryStats(next(_refs))), 5)
        while True:
            msg = decode(raw)
            if isinstance(msg, SupervisorEvent):
                self.events.append(msg)
                raw = self.asys.listen(1)
                continue
            return msg.stats["log"]  # type: ignore[attr-defined, no-any-return]

    def crash(self, name: str) -> None:
        sup_base = self.asys._systemBase
        # find the child actor by asking every registered actor is overkill: the
        # supervisor's children are the only Child instances; address them by name
        for ref in list(sup_base.actorRegistry.values()):
            inst = getattr(ref, "instance", None)
            if inst is not None and type(inst).__name__ == "Child" and inst.name == name:
                self.asys.tell(ref.address, encode(Publish("crash")))
                break
        else:
            raise AssertionError(f"no live child {name}")

    def wait_for(self, predicate: Any, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, "condition not reached"
            raw = self.asys.listen(0.02)  # lets wake-ups (backoff) fire
            if raw is not None:
                msg = decode(raw)
                if isinstance(msg, SupervisorEvent):
                    self.events.append(msg)
            self.drain()

    def close(self) -> None:
        self.asys.shutdown()


def spec(
    strategy: str = "one_for_one",
    restart: str = "permanent",
    intensity: int = 5,
    names: tuple[str, ...] = ("a", "b", "c"),
) -> SupervisorSpec:
    return SupervisorSpec(
        name="test",
        strategy=strategy,
        intensity=intensity,
        period=60.0,
        backoff_base=0.001,
        backoff_cap=0.01,
        jitter=0.0,
        children=tuple(ChildSpec(n, "sup_children:Child", {"name": n}, restart) for n in names),
    )


@pytest.fixture
def world_factory() -> Iterator[Any]:
    worlds: list[World] = []

    def make(s: SupervisorSpec) -> World:
        w = World(s)
        worlds.append(w)
        return w

    yield make
    for w in worlds:
        w.close()


def starts(log: list[list[Any]]) -> list[tuple[str, int]]:
    return [(p[0], p[1]) for name, p in log if name == "started"]


def test_children_start_in_order(world_factory: Any) -> None:
    w = world_factory(spec())
    assert starts(w.log()) == [("a", 0), ("b", 0), ("c", 0)]


def test_one_for_one_restarts_only_the_dead_child(world_factory: Any) -> None:
    w = world_factory(spec("one_for_one"))
    w.crash("b")
    w.wait_for(lambda: ("b", 1) in starts(w.log()))
    assert starts(w.log())[3:] == [("b", 1)]
    w.wait_for(lambda: [e.what for e in w.events] == ["crash", "restart"])


def test_one_for_all_restarts_every_child(world_factory: Any) -> None:
    w = world_factory(spec("one_for_all"))
    w.crash("b")
    w.wait_for(lambda: len(starts(w.log())) == 6)
    assert starts(w.log())[3:] == [("a", 1), ("b", 1), ("c", 1)]


def test_rest_for_one_restarts_the_child_and_those_after_it(world_factory: Any) -> None:
    w = world_factory(spec("rest_for_one"))
    w.crash("b")
    w.wait_for(lambda: len(starts(w.log())) == 5)
    assert starts(w.log())[3:] == [("b", 1), ("c", 1)]


def test_temporary_child_is_not_restarted(world_factory: Any) -> None:
    w = world_factory(spec(restart="temporary"))
    w.crash("a")
    w.wait_for(lambda: [e.what for e in w.events] == ["crash"])
    time.sleep(0.05)
    w.drain()
    assert starts(w.log()) == [("a", 0), ("b", 0), ("c", 0)]


def test_transient_child_is_restarted_after_a_crash(world_factory: Any) -> None:
    w = world_factory(spec(restart="transient"))
    w.crash("c")
    w.wait_for(lambda: ("c", 1) in starts(w.log()))


def test_intensity_exceeded_stops_children_and_escalates(world_factory: Any) -> None:
    w = world_factory(spec(intensity=2, names=("a",)))
    for n in range(1, 3):
        w.crash("a")
        w.wait_for(lambda n=n: ("a", n) in starts(w.log()))
    w.crash("a")  # third restart within the period: too many
    w.wait_for(lambda: any(e.what == "escalate" for e in w.events))
    assert ("a", 3) not in starts(w.log())
    escalate = next(e for e in w.events if e.what == "escalate")
    assert "more than 2 restarts" in escalate.detail


def test_shutdown_stops_children_last_started_first_then_answers(world_factory: Any) -> None:
    w = world_factory(spec())
    reply = w.asys.ask(w.sup, encode(Shutdown("test")), 5)
    assert reply is not None and isinstance(decode(reply), Shutdown)  # all exited
    assert [p for name, p in w.log() if name == "stopped"] == [["c"], ["b"], ["a"]]
    # asked again once stopped: answered at once
    reply = w.asys.ask(w.sup, encode(Shutdown("again")), 5)
    assert reply is not None and isinstance(decode(reply), Shutdown)


@pytest.mark.parametrize("strategy", ["one_for_all", "rest_for_one"])
def test_siblings_the_supervisor_stops_are_not_crashes(world_factory: Any, strategy: str) -> None:
    """OTP: only the child that died counts toward intensity, not the
    siblings its supervisor stopped to restart them with it."""
    w = world_factory(spec(strategy, intensity=2))
    for n in range(1, 3):  # two real crashes: within an intensity of 2
        w.crash("a")
        w.wait_for(lambda n=n: len(starts(w.log())) == 3 * (n + 1))
    assert [e.what for e in w.events].count("crash") == 2
    assert not any(e.what == "escalate" for e in w.events)
    w.crash("a")  # the third is one too many
    w.wait_for(lambda: any(e.what == "escalate" for e in w.events))


def test_one_for_all_engines_survive_as_many_crashes_as_the_intensity() -> None:
    sup = {"strategy": "one_for_all", "intensity": 2, "backoff_base": 0.001}
    with Runtime(supervision=sup) as rt:
        restarts = rt.subscribe("llmspell.engine.restart")
        for _ in range(2):
            rt._inject_crash("python", 0)
            seen = {(e.payload["engine"], e.payload["index"]) for e in [restarts.get(timeout=10)]}
            while len(seen) < 3:  # every engine restarted with it
                e = restarts.get(timeout=10)
                seen.add((e.payload["engine"], e.payload["index"]))
        stats = rt.stats()  # not degraded
        assert stats["degraded"] is None
        assert stats["crashes"] == 2
        assert rt.result(rt.submit(Task.lua("return 6 * 7")), timeout=10) == 42


def test_tasks_of_a_sibling_stopped_for_a_restart_fail_or_run_again() -> None:
    sup = {"strategy": "one_for_all", "backoff_base": 0.001}
    with Runtime(supervision=sup) as rt:
        lost = rt.submit(Task.lua("spell.sleep(0.3) return 1"))
        again = rt.submit(Task.lua("spell.sleep(0.3) return 2", retries=1))
        deadline = time.monotonic() + 10
        while rt.status(lost) != "running" or rt.status(again) != "running":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        rt._inject_crash("python", 0)
        with pytest.raises(TaskFailed, match=r"stopped by its supervisor \(one_for_all: python/0"):
            rt.result(lost, timeout=10)
        assert rt.result(again, timeout=10) == 2


def test_backoff_grows_and_is_capped() -> None:
    rng = random.Random(1)
    delays = [backoff_delay(n, 0.1, 1.0, 0.0, rng) for n in range(1, 7)]
    assert delays == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    jittered = [backoff_delay(3, 0.1, 1.0, 0.25, rng) for _ in range(200)]
    assert all(0.3 <= d <= 0.5 for d in jittered)
    assert len(set(jittered)) > 1


def test_bad_spec_is_refused() -> None:
    with pytest.raises(ValueError, match="strategy"):
        SupervisorSpec(strategy="all_for_none")
    with pytest.raises(ValueError, match="restart"):
        SupervisorSpec(children=(ChildSpec("x", "m:C", {}, "sometimes"),))


# -- engines crashing in embedded mode ------------------------------------------------------


def test_engine_crash_fails_in_flight_tasks_or_reruns_them_per_retries() -> None:
    with Runtime() as rt:
        no_retry = rt.submit(Task.python("targets:sleep", args={"seconds": 0.3}))
        retry = rt.submit(Task.python("targets:sleep", args={"seconds": 0.3}, retries=1))
        deadline = time.monotonic() + 5
        while rt.status(no_retry) != "running" or rt.status(retry) != "running":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        sub = rt.subscribe("llmspell.engine.*")
        rt._inject_crash("python", 0)
        with pytest.raises(TaskFailed, match="engine process crashed while running this task"):
            rt.result(no_retry, timeout=10)
        assert rt.result(retry, timeout=10) == 0.3
        names = {sub.get(timeout=5).name, sub.get(timeout=5).name}
        assert names == {"llmspell.engine.crash", "llmspell.engine.restart"}
        stats = rt.stats()
        assert stats["restarts"] == 1
        assert [e["engine"] for e in stats["engines"]].count("python") == 1
        # the restarted engine serves new work
        assert rt.result(rt.submit(Task.python("targets:add", args={"x": 1, "y": 1})), 5) == 2


def test_lua_engine_crash_reruns_a_coroutine_from_its_code() -> None:
    with Runtime() as rt:
        h = rt.submit(Task.lua("spell.sleep(0.2) return spell.args.n", args={"n": 7}, retries=1))
        time.sleep(0.05)
        rt._inject_crash("lua", 0)
        assert rt.result(h, timeout=10) == 7


def test_too_many_engine_crashes_mark_the_runtime_degraded() -> None:
    with Runtime(supervision={"intensity": 1, "backoff_base": 0.001}) as rt:
        sub = rt.subscribe("llmspell.runtime.degraded")
        for _ in range(2):
            rt._inject_crash("python", 0)
            time.sleep(0.1)
        event = sub.get(timeout=5)
        assert "gave up" in event.payload["reason"]
        with pytest.raises(RuntimeDegraded, match="gave up"):
            rt.stats()


# -- a stateful property: tasks and crashes ------------------------------------------------


class EngineFaults(RuleBasedStateMachine):
    """Submit tasks with retries and crash engines at random; every task ends
    in one terminal state, never runs more often than 1 + retries, and a
    crash-failed task had no retries left."""

    def __init__(self) -> None:
        super().__init__()
        self.rt = Runtime(supervision={"intensity": 1000, "backoff_base": 0.001}, retry_backoff=0.0)
        self.tasks: dict[str, int] = {}  # task id -> retries
        self.crashes = 0
        self.n = 0

    @rule(
        retries=st.integers(0, 2),
        lang=st.sampled_from(["python", "lua"]),
        seconds=st.sampled_from([0.0, 0.01, 0.05]),
    )
    def submit(self, retries: int, lang: str, seconds: float) -> None:
        self.n += 1
        key = f"sm{id(self)}-{self.n}"
        if lang == "python":
            task = Task.python(
                "targets:counted_sleep",
                args={"key": key, "seconds": seconds},
                retries=retries,
                id=key,
            )
        else:
            task = Task.lua(f"spell.sleep({seconds}) return 1", retries=retries, id=key)
        self.rt.submit(task)
        self.tasks[key] = retries

    @precondition(lambda self: self.crashes < 6)
    @rule(engine=st.sampled_from(["python", "lua"]))
    def crash(self, engine: str) -> None:
        self.crashes += 1
        self.rt._inject_crash(engine, 0)
        time.sleep(0.02)

    @invariant()
    def restarts_within_intensity(self) -> None:
        assert self.rt.stats()["restarts"] <= self.crashes

    def teardown(self) -> None:
        import targets

        try:
            for key, retries in self.tasks.items():
                try:
                    self.rt.result(key, timeout=30)
                    status = "succeeded"
                except TaskFailed as exc:
                    status = "failed"
                    assert "crashed" in exc.message
                    assert len(exc.attempts) in (0, retries + 1)
                assert self.rt.status(key) == status
                runs = targets.log.count(key)
                assert runs <= retries + 1
            stats = self.rt.stats()
            assert stats["running"] == 0 and stats["pending"] == 0
        finally:
            self.rt.close()


EngineFaults.TestCase.settings = settings(max_examples=8, stateful_step_count=12, deadline=None)
test_engine_faults = pytest.mark.slow(EngineFaults.TestCase)
