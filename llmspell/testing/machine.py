"""``RuntimeStateMachine``: a hypothesis state machine over a ``Simulation``,
with the runtime's invariants built in.

Subclass it to model your own workflows: add ``@rule``s that submit your
tasks (through ``self.sim`` and ``self.track(handle, task)``), and the
built-in rules (named after the user calls: ``submit``, ``submit_many``,
``cancel``, ``advance``, ``emit``, ``coordinate``, ``crash_engine``, and
``restart``: the runtime dies and reopens on its journal) and invariants
(checked after every step) come with it:

* every task is in exactly one state, and a terminal state never changes;
* every result is delivered to the caller exactly once;
* no task started before its dependencies succeeded;
* among tasks ready at once, higher priority is dispatched first;
* race and all-or-nothing never report partial success;
* retries never exceed a task's ``retries``; engine restarts never exceed
  the crashes injected; a task starts at most once more per restart of the
  runtime (at least once: what was running when it died runs again);
* when the run ends, no task is left running.

Settings are class attributes a subclass overrides, and the built-in rules
and the teardown read the subclass's values: ``engines`` (the engines the
built-in rules submit, coordinate and crash), ``horizon`` (virtual seconds
the run may take to finish at the end) and ``simulation_class`` (the
``Simulation`` to run).

A failure message carries the seed and how to replay it:
``Simulation.replay(<seed>)``. Misuse fails when the class is defined:
overriding a built-in invariant (``inv_*``) or naming an unknown engine
raises ``InvalidDefinition``.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any, ClassVar

from hypothesis import strategies as st
from hypothesis.errors import InvalidDefinition
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import llmspell.testing.strategies as sts

from .. import Handle, Strategy, Task
from ..messages.types import PRIORITIES, TERMINAL
from .simulation import Simulation

__all__ = ["RuntimeStateMachine"]

_ENGINES = frozenset(("python", "lua", "js"))


def _tasks(retries: bool = True) -> st.SearchStrategy[Task]:
    """A task of the running machine's own ``engines`` (its subclass's setting)."""
    return st.runner().flatmap(lambda m: sts.tasks(m.engines, retries=retries))


class RuntimeStateMachine(RuleBasedStateMachine):
    """Base class: subclass it, add rules for your workflows, run
    ``MyMachine.TestCase`` under pytest."""

    #: engines the built-in rules submit work to
    engines: ClassVar[tuple[str, ...]] = ("python", "lua", "js")
    #: virtual seconds the run may take to finish at the end (longest sleep/timeout)
    horizon: ClassVar[float] = 4000.0
    #: the Simulation class to run (tests of the harness swap in broken ones)
    simulation_class: ClassVar[type[Simulation]] = Simulation

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        own = [n for n in vars(cls) if n.startswith("inv_")]
        if own:
            raise InvalidDefinition(
                f"{cls.__name__} overrides the built-in invariant {own[0]}; add an "
                "@invariant() method with another name instead"
            )
        unknown = set(cls.engines) - _ENGINES
        if not cls.engines:
            raise InvalidDefinition(f"{cls.__name__}.engines is empty; name at least one engine")
        if unknown:
            raise InvalidDefinition(
                f"{cls.__name__}.engines names unknown engines {sorted(unknown)}; "
                f"use some of {sorted(_ENGINES)}"
            )

    def __init__(self) -> None:
        """No simulation yet (``start_simulation`` opens it); never blocks."""
        super().__init__()
        self.sim: Simulation | None = None
        self.seed = 0
        self.tasks: dict[str, Task] = {}
        self.terminal: dict[str, str] = {}
        self.crashes = 0
        self.coordinations = 0
        self.runtime_restarts = 0

    # -- set-up ---------------------------------------------------------------------

    @initialize(seed=st.integers(0, 2**32 - 1))
    def start_simulation(self, seed: int) -> None:
        """Open the run's ``Simulation`` (``simulation_class``) with a drawn seed."""
        self.seed = seed
        self.sim = self.simulation_class(seed=seed)

    def teardown(self) -> None:
        """At the end of a run: let the work run out for at most ``horizon``
        virtual seconds (no real time), check that every result came once and
        no task is left unfinished (but those waiting for an event), and close
        the simulation. Raises ``AssertionError`` naming the seed when an
        invariant fails; ``SimulationDeadlock`` cannot be raised here (the wait
        is bounded)."""
        if self.sim is None:
            return
        try:
            # let the work run out: every task ends or waits for an event (bounded)
            sim = self.sim
            sim._sim.pump_until(
                lambda: all(
                    sim.status(t) in TERMINAL or self._waits_on_event(t) for t in self.tasks
                ),
                self.horizon,
            )
            self.inv_results_delivered_once()
            for task_id in self.tasks:
                status = self.sim.status(task_id)
                self._check(
                    status in TERMINAL or self._waits_on_event(task_id),
                    f"task {task_id} was left {status} after the run ended",
                )
        finally:
            self.sim.close()
            self.sim = None

    def _waits_on_event(self, task_id: str) -> bool:
        code = self.tasks[task_id].code or ""
        return "wait_event" in code

    def track(self, handle: Handle, task: Task) -> None:
        """Have the invariants watch a task your own rules submitted."""
        if not isinstance(task, Task):  # caught here, not as a crash in a later invariant
            raise TypeError(f"track(handle, task): task must be the Task submitted, got {task!r}")
        self.tasks[handle.id] = task

    def _check(self, ok: bool, message: str) -> None:
        if not ok:
            raise AssertionError(
                f"{message} (seed {self.seed}; reproduce with "
                f"llmspell.testing.Simulation.replay({self.seed}) and the steps above)"
            )

    # -- rules named after user calls -----------------------------------------------

    @rule(task=_tasks())
    def submit(self, task: Task) -> None:
        """``sim.submit`` a drawn task of ``engines`` and watch it; returns at once."""
        assert self.sim is not None
        self.track(self.sim.submit(task), task)

    @rule(
        batch=st.lists(_tasks(), min_size=2, max_size=5),
    )
    def submit_many(self, batch: list[Task]) -> None:
        """``sim.submit_many`` 2 to 5 drawn tasks; checks priority order among them."""
        assert self.sim is not None
        handles = self.sim.submit_many(batch)
        for h, t in zip(handles, batch, strict=True):
            self.track(h, t)
        self._check_priority_order(handles, batch)

    @precondition(lambda self: bool(self.tasks))
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        """Cancel a tracked task: True exactly when it had not ended, and then it
        is ``cancelled``. Runs the simulation only as far as the cancel needs."""
        assert self.sim is not None
        task_id = data.draw(st.sampled_from(sorted(self.tasks)))
        was = self.sim.status(task_id)
        cancelled = self.sim.cancel(task_id)
        self._check(
            cancelled == (was not in TERMINAL),
            f"cancel({task_id}) returned {cancelled} for a task that was {was}",
        )
        if cancelled:
            self._check(
                self.sim.status(task_id) == "cancelled",
                f"task {task_id} was cancelled but is {self.sim.status(task_id)}",
            )

    @rule(seconds=st.sampled_from([0.0, 0.5, 1.0, 5.0, 60.0]))
    def advance(self, seconds: float) -> None:
        """Let that much virtual time pass (no real time)."""
        assert self.sim is not None
        self.sim.advance(seconds)

    @rule(name=st.sampled_from(["sim.a", "sim.b", "user.x"]))
    def emit(self, name: str) -> None:
        """Publish an event scripts may wait for (``sim.*``) or none does."""
        assert self.sim is not None
        self.sim.emit(name, {"from": "machine"})

    @rule(
        batch=st.lists(_tasks(retries=False), min_size=1, max_size=4),
        strategy=st.sampled_from(
            [Strategy.RACE, Strategy.ALL_OR_NOTHING, Strategy.PARALLEL, Strategy.BEST_EFFORT]
        ),
    )
    def coordinate(self, batch: list[Task], strategy: Strategy) -> None:
        """Run 1 to 4 drawn tasks under race, all-or-nothing, parallel or
        best-effort and check what the strategy promises; blocks (in virtual
        time, up to an hour) until the coordination answers."""
        assert self.sim is not None
        self.coordinations += 1
        ids = [f"coord{self.coordinations}-{i}" for i in range(len(batch))]
        batch = [_with_id(t, i) for t, i in zip(batch, ids, strict=True)]
        result = self.sim.coordinate(batch, strategy, timeout=3600)
        n = len(batch)
        self._check(len(result.results) == n, "a coordination result has a slot per task")
        if strategy is Strategy.ALL_OR_NOTHING:
            if result.ok:
                self._check(len(result.succeeded) == n, "all-or-nothing ok with a failure")
            else:
                self._check(
                    all(r is None for r in result.results),
                    "all-or-nothing reported partial success",
                )
        if strategy is Strategy.RACE:
            if result.ok:
                w = result.winner
                self._check(
                    w is not None and w in result.succeeded, "race ok without a successful winner"
                )
                # (a loser that finished before it could be cancelled is listed as
                # succeeded too: cancelling cannot undo a finished task)
            else:
                self._check(result.winner is None, "race has a winner but is not ok")
        if strategy is Strategy.PARALLEL:
            self._check(result.ok == (len(result.succeeded) == n), "parallel ok disagrees")
        if strategy is Strategy.BEST_EFFORT:
            self._check(result.ok, "best effort is always ok")
        for task_id in ids:
            scheduled = self.sim._scheduler_status(task_id)
            self._check(
                scheduled in TERMINAL, f"task {task_id} is {scheduled} after its coordination ended"
            )

    @precondition(lambda self: self.crashes < 5)
    @rule(engine=st.runner().flatmap(lambda m: st.sampled_from(m.engines)))
    def crash_engine(self, engine: str) -> None:
        """Crash engine 0 of a drawn engine (at most 5 crashes a run)."""
        assert self.sim is not None
        self.crashes += 1
        self.sim._inject_crash(engine, 0)
        self.sim.advance(0.0)

    @precondition(lambda self: self.runtime_restarts < 3)
    @rule()
    def restart(self) -> None:
        """The runtime dies (as its process would) and is opened again on its
        journal; unfinished work resumes."""
        assert self.sim is not None
        self.runtime_restarts += 1
        self.sim.restart()
        self.sim.advance(0.0)

    # -- invariants ------------------------------------------------------------------

    @invariant()
    def inv_one_terminal_state(self) -> None:
        """Every tracked task is in a known state, and one that ended stays in
        its terminal state. Asks the simulation each task's status (virtual
        time does not move); raises ``AssertionError`` naming the seed."""
        if self.sim is None:
            return
        for task_id in self.tasks:
            status = self.sim.status(task_id)
            self._check(
                status in ("pending", "running", *TERMINAL),
                f"task {task_id} is in no known state ({status!r})",
            )
            before = self.terminal.get(task_id)
            if before is not None:
                self._check(
                    status == before,
                    f"task {task_id} left its terminal state {before} for {status}",
                )
            elif status in TERMINAL:
                self.terminal[task_id] = status

    @invariant()
    def inv_results_delivered_once(self) -> None:
        """No task's outcome reached the caller twice, and one the scheduler
        ended reached it. Virtual time does not move; raises ``AssertionError``
        naming the seed."""
        if self.sim is None:
            return
        for task_id in self.tasks:
            n = self.sim.deliveries[task_id]
            self._check(n <= 1, f"the result of task {task_id} was delivered {n} times")
            if n == 0:
                scheduled = self.sim._scheduler_status(task_id)
                self._check(
                    scheduled not in TERMINAL,
                    f"task {task_id} ended {scheduled} but its result never arrived",
                )

    @invariant()
    def inv_dependencies_respected(self) -> None:
        """No tracked task started before each of its ``deps`` succeeded (read
        from ``trace``: never blocks); raises ``AssertionError`` naming the seed."""
        if self.sim is None:
            return
        succeeded: set[str] = set()
        deps = {tid: set(t.opts.get("deps") or ()) for tid, t in self.tasks.items()}
        for _, name, details in self.sim.trace:
            task_id = str(details.get("task_id"))
            if name == "llmspell.task.succeeded":
                succeeded.add(task_id)
            elif name == "llmspell.task.running" and task_id in deps:
                missing = {d if isinstance(d, str) else d.id for d in deps[task_id]} - succeeded
                self._check(
                    not missing,
                    f"task {task_id} started before its dependencies {missing} succeeded",
                )

    @invariant()
    def inv_retries_within_bounds(self) -> None:
        """No task was retried more than its ``retries``, engines restarted no
        more often than they were crashed, and a task ran no more often than
        allowed. Reads ``trace`` and ``stats()`` (virtual time does not move);
        raises ``AssertionError`` naming the seed."""
        if self.sim is None:
            return
        retries = Counter(
            str(d.get("task_id")) for _, n, d in self.sim.trace if n == "llmspell.task.retry"
        )
        for task_id, count in retries.items():
            task = self.tasks.get(task_id)
            if task is not None:
                allowed = int(task.opts.get("retries", 0))
                self._check(
                    count <= allowed,
                    f"task {task_id} was retried {count} times (retries={allowed})",
                )
        restarts = self.sim.stats()["restarts"]
        self._check(
            restarts <= self.crashes, f"{restarts} engine restarts for {self.crashes} crashes"
        )
        starts = Counter(
            str(d.get("task_id")) for _, n, d in self.sim.trace if n == "llmspell.task.running"
        )
        for task_id, count in starts.items():
            if task_id in self.tasks:
                self._check(
                    count <= 1 + self.runtime_restarts,
                    f"task {task_id} started {count} times in a run with "
                    f"{self.runtime_restarts} restarts of the runtime",
                )

    def _check_priority_order(self, handles: list[Handle], batch: list[Task]) -> None:
        """Tasks submitted together with no dependencies, to one engine, start
        in priority order (highest first), then in submission order."""
        assert self.sim is not None
        free = {h.id: t for h, t in zip(handles, batch, strict=True) if not t.opts.get("deps")}
        order = [
            str(d.get("task_id"))
            for _, n, d in self.sim.trace
            if n == "llmspell.task.running" and d.get("task_id") in free
        ]
        by_engine: dict[str, list[int]] = defaultdict(list)
        for task_id in order:
            t = free[task_id]
            by_engine[t.kind].append(PRIORITIES[t.opts.get("priority", "normal")])
        for engine, prios in by_engine.items():
            self._check(
                prios == sorted(prios, reverse=True),
                f"{engine} tasks started out of priority order: {prios}",
            )


def _with_id(task: Task, task_id: str) -> Task:
    opts = dict(task.opts)
    opts["id"] = task_id
    return Task(task.kind, task.code, task.target, task.name, task.args, task.payload, opts)
