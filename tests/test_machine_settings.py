"""``RuntimeStateMachine`` settings: a subclass's ``engines``, ``horizon`` and
``simulation_class`` are what its built-in rules and its teardown use."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any, ClassVar

import pytest
from hypothesis import Phase, settings
from hypothesis.errors import InvalidDefinition
from hypothesis.stateful import rule, run_state_machine_as_test

from llmspell import Handle, Task
from llmspell.testing import RuntimeStateMachine, Simulation

RUNS = settings(max_examples=15, stateful_step_count=12, deadline=None, database=None)


class Recording(Simulation):
    """A simulation that notes the kind of every task the machine hands it and
    every engine it is told to crash (class-wide: one run after another)."""

    kinds: ClassVar[Counter[str]] = Counter()
    crashed: ClassVar[Counter[str]] = Counter()
    opened: ClassVar[int] = 0

    def __init__(self, seed: int = 0, **config: Any) -> None:
        super().__init__(seed, **config)
        Recording.opened += 1

    def submit(self, task: Task) -> Handle:
        Recording.kinds[task.kind] += 1
        return super().submit(task)

    def submit_many(self, tasks: Iterable[Task]) -> list[Handle]:
        tasks = list(tasks)
        Recording.kinds.update(t.kind for t in tasks)
        return super().submit_many(tasks)

    def coordinate(self, tasks: Iterable[Task], *args: Any, **kwargs: Any) -> Any:
        tasks = list(tasks)
        Recording.kinds.update(t.kind for t in tasks)
        return super().coordinate(tasks, *args, **kwargs)

    def _inject_crash(self, engine: str, index: int = 0) -> None:
        Recording.crashed[engine] += 1
        super()._inject_crash(engine, index)


@pytest.fixture(autouse=True)
def fresh_record() -> None:
    Recording.kinds.clear()
    Recording.crashed.clear()
    Recording.opened = 0


@pytest.mark.parametrize("engines", [("lua",), ("js",), ("python",), ("lua", "python")])
def test_the_built_in_rules_use_the_subclass_engines(engines: tuple[str, ...]) -> None:
    class Only(RuntimeStateMachine):
        simulation_class = Recording

    Only.engines = engines  # set after the class is made: what counts is the value at run time
    run_state_machine_as_test(Only, settings=RUNS)
    assert Recording.opened > 0  # the subclass's simulation_class ran
    drawn = set(Recording.kinds)
    assert drawn, "the rules drew no task at all"
    assert drawn <= set(engines), f"engines={engines} but the rules drew {sorted(drawn)}"
    assert set(Recording.crashed) <= set(engines)


def test_engines_set_in_the_class_body_are_used_by_every_rule() -> None:
    class LuaOnly(RuntimeStateMachine):
        engines = ("lua",)
        simulation_class = Recording

    run_state_machine_as_test(LuaOnly, settings=RUNS)
    assert set(Recording.kinds) == {"lua"}
    assert set(Recording.crashed) <= {"lua"}


def test_a_subclass_simulation_class_is_the_one_that_runs() -> None:
    class Recorded(RuntimeStateMachine):
        simulation_class = Recording

    run_state_machine_as_test(Recorded, settings=RUNS)
    assert Recording.opened > 0


class LongSleeper(RuntimeStateMachine):
    """Every run submits a task that sleeps 5,000 virtual seconds, past the
    default horizon (4,000)."""

    engines = ("lua",)

    @rule()
    def sleep_long(self) -> None:
        assert self.sim is not None
        task = Task.lua("spell.sleep(5000) return 1")
        self.track(self.sim.submit(task), task)


@pytest.mark.slow
def test_the_subclass_horizon_bounds_the_final_wait() -> None:
    class Patient(LongSleeper):
        horizon = 6000.0

    run_state_machine_as_test(Patient, settings=RUNS)  # 6,000 s: the sleeper ends

    with pytest.raises(AssertionError, match="was left running after the run ended"):
        # found is enough: no shrinking (it would replay many runs for nothing here)
        quick = settings(RUNS, report_multiple_bugs=False, phases=[Phase.generate])
        run_state_machine_as_test(LongSleeper, settings=quick)


def test_empty_engines_fail_when_the_class_is_defined() -> None:
    with pytest.raises(InvalidDefinition, match="engines is empty"):

        class Nothing(RuntimeStateMachine):
            engines = ()
