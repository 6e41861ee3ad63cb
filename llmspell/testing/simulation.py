"""``Simulation``: the embedded runtime on a virtual clock, seeded and replayable.

A ``Simulation`` is a ``Runtime`` whose actor system runs on the caller's
thread with no thread of its own:

* **Virtual time.** Sleeps, timeouts, wake-ups, retry and restart backoff and
  ``estimated_completion`` read one virtual clock that starts at 0.0. Time
  moves only while you wait (``result``, ``coordinate``, ``Subscription.get``,
  ``advance``): the simulation runs everything that can run, then jumps the
  clock to the next wake-up. An hour of ``spell.sleep`` costs no real time.
  A wait that nothing can ever end raises ``SimulationDeadlock`` instead of
  hanging.
* **One seed.** The seed drives every choice the runtime makes where order is
  free: which ready coroutine or promise runs next in the Lua and JS engines,
  restart jitter, task and coordination ids. Python callables run inline, on
  the simulation's thread, in dispatch order. ``simpleSystemBase`` delivers
  messages between actors in FIFO order, so that order is fixed by the
  program, not by the seed. Same seed and same program: the same ``trace``
  and the same results, on any machine at any load.
* **No real clock on a decision path.** Script quanta end by step count
  (``quantum_steps``); the script VMs measure step budgets, ``cpu_seconds``
  and CPU limits on a ``StepClock`` (``engines/script.py``) that counts work;
  long wake-ups and supervisor intensity read ``_clock.monotonic()``, here
  the virtual clock. (QuickJS still stops a JS step that computes for
  ``step_budget`` seconds of real CPU without awaiting.)
* **Faults.** ``inject(plan)`` adds seeded faults (``FaultPlan``): an engine
  crash at a virtual time, a script error, a slow step (virtual delay), a
  forced timeout or resource-limit breach for chosen tasks, dropped or
  duplicated event delivery.
* **Trace.** ``trace`` is the list of ``(virtual_time, event, details)`` of
  every runtime event (task status changes, retries, engine crashes and
  restarts, coordinations) and every injected fault, in order.

Only one ``Simulation`` may be open at a time in a process (the virtual clock
replaces Thespian's clock for the process), and no other llmspell runtime
should run meanwhile. Python callables that sleep for real, or ``async def``
callables that await real time, still take real time.
"""

from __future__ import annotations

import dataclasses
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from .. import _clock
from .._exceptions import LlmspellError, MessageError
from .._runtime import Runtime, RuntimeState
from .._task import Handle
from ..messages import decode, encode
from ..messages.types import TERMINAL, Introduce, Poll, QueryStatus, Shutdown, TaskOutcomes

__all__ = [
    "Fault",
    "FaultPlan",
    "ReplayReport",
    "Simulation",
    "SimulationDeadlock",
    "VirtualClock",
]

FAULT_KINDS = (
    "engine_crash",  # engine, index, at (virtual seconds)
    "script_error",  # task: the task fails as if its code raised
    "slow_step",  # task, delay: the task starts ``delay`` virtual seconds late
    "task_timeout",  # task: the task times out as soon as it starts
    "resource_breach",  # task: the task is killed by its limits
    "drop_event",  # pattern, count: the next ``count`` matching events are not delivered
    "duplicate_event",  # pattern, count: ... are delivered twice
    "restart",  # at: the runtime dies and is reopened on its journal (virtual seconds)
)


class SimulationDeadlock(LlmspellError):
    """A simulation wait that nothing can end: no message in flight, no
    wake-up pending, and the awaited thing not done. The program under test
    waits forever (e.g. for an event nobody emits)."""


@dataclass(frozen=True)
class Fault:
    """One injected fault. ``kind`` is one of ``FAULT_KINDS``."""

    kind: str
    task: str | None = None
    engine: str | None = None
    index: int = 0
    at: float | None = None
    delay: float = 0.0
    pattern: str | None = None
    count: int = 1

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise MessageError(f"unknown fault kind {self.kind!r}; use one of {FAULT_KINDS}")
        needs = {
            "engine_crash": ("engine", "at"),
            "script_error": ("task",),
            "slow_step": ("task",),
            "task_timeout": ("task",),
            "resource_breach": ("task",),
            "drop_event": ("pattern",),
            "duplicate_event": ("pattern",),
            "restart": ("at",),
        }[self.kind]
        for name in needs:
            if getattr(self, name) is None:
                raise MessageError(f"a {self.kind} fault needs {name}=...", where=name)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}

    @classmethod
    def restart(cls, at: float) -> Fault:
        """At virtual time ``at`` the runtime dies as if its process were killed
        and is opened again on its journal (see ``Simulation.restart``)."""
        return cls("restart", at=at)


@dataclass(frozen=True)
class FaultPlan:
    """A list of faults to inject, built by hand or by
    ``llmspell.testing.strategies.fault_plans()``."""

    faults: tuple[Fault, ...] = field(default_factory=tuple)

    @classmethod
    def of(cls, *faults: Fault | Mapping[str, Any]) -> FaultPlan:
        return cls(tuple(f if isinstance(f, Fault) else Fault(**dict(f)) for f in faults))


@dataclass(frozen=True)
class ReplayReport:
    """How one recorded script task replayed (``Simulation.replay_journal``).

    ``ok``: it replayed every host call it had recorded (or completed) making
    the same calls. ``divergence``: else, where it first differed: ``{"call":
    n, "recorded": "...", "made": "..."}``. ``calls``: how many host calls the
    journal had recorded for it. ``message``: one line saying what happened.
    """

    task_id: str
    ok: bool
    calls: int
    message: str
    divergence: dict[str, Any] | None = None


class VirtualClock:
    """Seconds since the simulation started; moves only when told to."""

    def __init__(self, start: float = 0.0) -> None:
        self.t = float(start)

    def now(self) -> float:
        return self.t

    def advance_to(self, t: float) -> None:
        if t > self.t:
            self.t = t


def _install_clock(clock: VirtualClock | None) -> None:
    """Point llmspell's and Thespian's clocks at ``clock`` (None: real time)."""
    import time

    import thespian.system.simpleSystemBase as ssb
    import thespian.system.timing as timing

    source = clock.now if clock is not None else time.perf_counter
    timing.currentTime = source
    ssb.currentTime = source  # imported by name there
    _clock.set_source(clock.now if clock is not None else None)


_NOOP = encode(Poll())  # any message lets due wake-ups fire
_MAX_SETTLE_ROUNDS = 200_000
_REAL_WORK_POLLS = 60_000  # 1 ms sleeps while real-time work (an agent's code) runs
_MAX_STEPS_AT_ONE_TIME = 100_000


class _SimDriver:
    """Runs a ``simpleSystemBase`` on the caller's thread, on virtual time."""

    mode = "embedded"

    def __init__(
        self,
        runtime_id: str,
        config: dict[str, Any],
        on_message: Callable[[Any], None],
        clock: VirtualClock,
    ) -> None:
        self.runtime_id = runtime_id
        self.config = config
        self.on_message = on_message
        self.clock = clock
        self.pending: list[tuple[Any, bytes]] = []
        self.timed_faults: list[Fault] = []
        self.on_fault: Callable[[Fault], None] = lambda f: None
        self.asys: Any = None

    def start(self) -> dict[str, Any]:
        from thespian.actors import ActorSystem

        from ..actors.director import DIRECTOR_NAME, Director
        from ..engines import _doorbell

        _doorbell.install(self.runtime_id, lambda addr, data: self.pending.append((addr, data)))
        self.asys = ActorSystem("simpleSystemBase", transientUnique=True, logDefs=False)
        self.director = self.asys.createActor(Director, globalName=DIRECTOR_NAME)
        self.asys.tell(self.director, encode(Introduce(self.runtime_id, {}, self.config)))
        reply = None
        for msg in self._responses():
            if isinstance(msg, Introduce) and reply is None:
                reply = msg
            else:
                self.on_message(msg)
        if reply is None:
            raise LlmspellError("the simulated actor system did not start")
        self.settle()
        return dict(reply.addresses)

    def _responses(self) -> Iterable[Any]:
        while True:
            raw = self.asys.listen(0)
            if raw is None:
                return
            yield decode(raw) if isinstance(raw, (bytes, bytearray)) else raw

    def send(self, address: Any, data: bytes) -> None:
        self.asys.tell(address, data)
        self.settle()

    def call(self, fn: Callable[[], None]) -> None:
        fn()

    def settle(self) -> None:
        """Run until nothing is in flight (without moving the clock). Work that
        never settles (a script that yields forever without sleeping) raises
        ``SimulationDeadlock`` instead of hanging."""
        rounds = 0
        while True:
            for msg in self._responses():
                self.on_message(msg)
            if not self.pending:
                return
            rounds += 1
            if rounds > _MAX_SETTLE_ROUNDS:
                raise SimulationDeadlock(
                    f"at t={self.clock.now():g}: work never settles without time passing "
                    "(a script that yields forever without sleeping?)"
                )
            batch, self.pending = self.pending, []
            for addr, data in batch:
                self.asys.tell(addr, data)

    def _wait_for_real_work(self) -> None:
        from ..engines import _doorbell

        for _ in range(_REAL_WORK_POLLS):  # ~60 s of real time at most
            if not _doorbell.held(self.runtime_id) and not self.pending:
                break
            if self.pending:
                self.settle()
            else:
                time.sleep(0.001)
        self.settle()

    def next_wakeup(self) -> float | None:
        """The virtual time of the next Thespian wake-up. Read from the timer
        itself: its ``remaining()`` is rounded to microseconds, and a clock
        moved by rounded amounts could stop a hair short of a deadline."""
        timer = self.asys._systemBase._next_wakeup()
        if timer is None:
            return None
        due = getattr(timer, "_time_to_quit", None)
        if isinstance(due, (int, float)):
            return max(float(due), self.clock.now())
        remaining = timer.view().remaining()
        secs = remaining.total_seconds() if isinstance(remaining, timedelta) else 0.0
        return self.clock.now() + max(0.0, secs)

    def step(self, limit: float | None = None) -> bool:
        """Jump the clock to the next wake-up or timed fault (not past
        ``limit``), fire what is due and settle. False if nothing was due.

        Work that runs on threads of its own in real time (an agent's own code)
        is waited for first: a jump in virtual time must not time it out."""
        self._wait_for_real_work()
        candidates = []
        due = self.next_wakeup()
        if due is not None:
            candidates.append(due)
        if self.timed_faults:
            candidates.append(min(f.at or 0.0 for f in self.timed_faults))
        if not candidates:
            return False
        target = min(candidates)
        if limit is not None and target > limit:
            self.clock.advance_to(limit)
            return False
        self.clock.advance_to(target)
        fired = [f for f in self.timed_faults if f.at is not None and f.at <= self.clock.now()]
        for f in fired:
            self.timed_faults.remove(f)
            self.on_fault(f)
        self.asys.tell(self.director, _NOOP)
        self.settle()
        return True

    def pump_until(self, done: Callable[[], bool], timeout: float | None) -> bool:
        limit = None if timeout is None else self.clock.now() + timeout
        self.settle()
        stuck, last = 0, self.clock.now()
        while not done():
            if self.clock.now() == last:
                stuck += 1
                if stuck > _MAX_STEPS_AT_ONE_TIME:
                    raise SimulationDeadlock(
                        f"at t={last:g}: {stuck} wake-ups without time moving on "
                        "(something re-arms a zero-delay timer forever?)"
                    )
            else:
                stuck, last = 0, self.clock.now()
            if not self.step(limit):
                if done():
                    return True
                if limit is not None:
                    return False
                raise SimulationDeadlock(
                    f"at t={self.clock.now():g}: nothing can make progress (no message in "
                    "flight, no wake-up pending) and the awaited work is not done"
                )
        return True

    def run_until(self, done: Callable[[], bool], timeout: float | None) -> float | None:
        """``pump_until``: the world runs here, on virtual time; nothing is left
        for the caller to wait for in real time (``_runtime.Driver``)."""
        self.pump_until(done, timeout)
        return 0.0

    def crash(self) -> None:
        """Drop the actor system as a killed process would lose it: no shutdown
        message, nothing more written to the journal (the caller severed it)."""
        if self.asys is not None:
            asys, self.asys = self.asys, None
            self.pending.clear()
            asys.shutdown()

    def stop(self, timeout: float = 10.0) -> None:
        from ..engines import _doorbell

        if self.asys is not None:
            try:
                self.asys.tell(self.director, encode(Shutdown()))
                self.settle()
            finally:
                self.asys.shutdown()
                self.asys = None
        _doorbell.remove(self.runtime_id)


class Simulation(Runtime):
    """An embedded runtime on a virtual clock with one seeded random source.

    ``Simulation(seed=7)`` offers every ``Runtime`` call plus ``trace``,
    ``now()``, ``advance(seconds)``, ``inject(fault_plan)`` and
    ``Simulation.replay(seed)``. Use it as a context manager.
    """

    _active: Simulation | None = None

    def __init__(self, seed: int = 0, **config: Any) -> None:
        if Simulation._active is not None:
            raise LlmspellError("only one Simulation may be open at a time in a process")
        self.seed = int(seed)
        self.rng = random.Random(self.seed)
        self.clock = VirtualClock()
        self.trace: list[tuple[float, str, dict[str, Any]]] = []
        self._faults: list[Fault] = []
        # how many times each task's outcome reached the caller (must be 0 or 1)
        self.deliveries: Counter[str] = Counter()
        config.setdefault("python_inline", True)
        config.setdefault("quantum_steps", 64)
        # process sampling (RSS, CPU of engine processes) means nothing on virtual
        # time and would only add wake-ups: sample once an aeon
        config.setdefault("resource_interval", 1e9)
        config["seed"] = self.seed
        # an in-memory journal, so that a restart (Fault.restart, restart()) has
        # something to resume from; journal=None: none
        if config.get("journal", True) is True:
            config["journal"] = f"memory:simulation-{uuid.uuid4().hex}"
        elif config.get("journal") is None:
            config.pop("journal", None)
        self.restarts = 0
        from .. import _task

        _task._new_id_prefix(f"sim{self.seed}")
        _install_clock(self.clock)
        Simulation._active = self
        try:
            super().__init__("embedded", **config)
        except BaseException:
            Simulation._active = None
            _install_clock(None)
            raise
        self._trace_sub = self.subscribe("*", limit=1_000_000)
        self._trace_sub._on_event = self._record

    # -- driver plumbing -------------------------------------------------------------

    def _make_driver(self) -> _SimDriver:
        driver = _SimDriver(self._core.runtime_id, self._core.config, self._on_message, self.clock)
        driver.on_fault = self._fire_timed_fault
        self._sim = driver  # the facade knows it as a Driver; its own calls are here
        return driver

    def _on_message(self, msg: Any) -> None:
        """Every message addressed to the caller passes here (counted)."""
        if isinstance(msg, TaskOutcomes):
            for o in msg.items:
                self.deliveries[o.task_id] += 1
        self._core.on_message(msg)

    def _scheduler_status(self, task_id: str) -> str:
        """The scheduler's own view of a task (bypassing the caller's copy)."""
        reply: Any = self._ask(lambda ref: QueryStatus(ref, [task_id]))
        return str(reply.statuses.get(task_id, "unknown"))

    def _record(self, name: str, payload: Any, t: float) -> None:
        details = payload if isinstance(payload, dict) else {"payload": payload}
        self.trace.append((t, name, details))

    # -- virtual time ------------------------------------------------------------------

    def now(self) -> float:
        """The virtual time, in seconds since the simulation started."""
        return self.clock.now()

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` of virtual time pass, running everything due."""
        if seconds < 0:
            raise MessageError("must be >= 0", where="seconds")
        self._sim.pump_until(lambda: False, seconds)

    # -- faults ------------------------------------------------------------------------

    def inject(self, plan: FaultPlan | Iterable[Fault | Mapping[str, Any]]) -> None:
        """Add faults. Task faults apply when the named task is dispatched;
        an engine crash happens at its virtual time ``at``; event faults to
        the next matching deliveries."""
        from ..messages.types import InjectFaults

        faults = plan.faults if isinstance(plan, FaultPlan) else FaultPlan.of(*plan).faults
        if any(f.kind == "restart" for f in faults) and not self._core.config.get("journal"):
            raise MessageError(
                "a restart fault needs a journal to resume from: Simulation(journal=None) has none",
                where="restart",
            )
        timed = [f for f in faults if f.kind in ("engine_crash", "restart")]
        sent = [f.to_dict() for f in faults if f.kind not in ("engine_crash", "restart")]
        self._sim.timed_faults.extend(timed)
        self._faults.extend(faults)
        if sent:
            msg = encode(InjectFaults(sent))
            self._driver.send(self._scheduler, msg)
            self._driver.send(self._events, msg)

    def _fire_timed_fault(self, fault: Fault) -> None:
        from ..messages.types import CrashEngine

        if fault.kind == "restart":
            self.restart()
            return
        self.trace.append(
            (
                self.clock.now(),
                "llmspell.fault.engine_crash",
                {"engine": fault.engine, "index": fault.index},
            )
        )
        self._sim.asys.tell(
            self._scheduler,
            encode(CrashEngine(str(fault.engine), fault.index)),
        )

    def restart(self) -> None:
        """Kill the runtime as the death of its process would (no shutdown: its
        tasks are not cancelled, what was not journaled is lost) and open it
        again on its journal at the same virtual time: unfinished tasks resume
        (Python ones run again, scripts replay their host calls), registrations
        come back, and handles, ``result`` and subscriptions of this
        ``Simulation`` go on working. Task faults injected before are not
        carried over (the new runtime is a new process)."""
        from ..actors import durable
        from ..messages.types import EventInterest, Subscribe, TraceTo, WatchTasks

        journal = self._core.config.get("journal")
        if not journal:
            raise MessageError("restart needs a journal; Simulation(journal=None) has none")
        self.check_open_for_restart()
        self.trace.append((self.clock.now(), "llmspell.fault.restart", {"restarts": self.restarts}))
        self.restarts += 1
        durable.crash(str(journal))
        driver = self._sim
        driver.crash()
        addresses = driver.start()
        core = self._core
        core.addresses = addresses
        self._scheduler = addresses["scheduler"]
        self._events = addresses["events"]
        # what this facade waits for or listens to lives on in the new runtime
        subs = list(core.subscriptions.values())
        for sub in subs:
            driver.send(self._events, encode(Subscribe(sub.sub_id, sub.pattern, sub.limit)))
        if subs:
            patterns = sorted({sub.pattern for sub in subs})
            driver.send(self._scheduler, encode(EventInterest(patterns, [])))
        if core.spans is not None:
            driver.send(self._scheduler, encode(TraceTo(0, True)))
        waiting = [task_id for task_id, entry in list(core.views.items()) if _unended(entry)]
        if waiting:
            driver.send(self._scheduler, encode(WatchTasks(waiting)))

    def check_open_for_restart(self) -> None:
        if self._core.state is not RuntimeState.OPEN:
            raise LlmspellError("the simulation is closed")

    # -- lifecycle ---------------------------------------------------------------------

    def close(self) -> None:
        if self._core.state is RuntimeState.CLOSED:
            return
        try:
            super().close()
        finally:
            journal = self._core.config.get("journal")
            if isinstance(journal, str) and journal.startswith("memory:simulation-"):
                from ..journal import Journal

                Journal.drop(journal)  # its own store: gone with it
            Simulation._active = None
            _install_clock(None)
            from .. import _task

            _task._new_id_prefix()  # later runtimes of this process: random ids again

    def __enter__(self) -> Simulation:
        return self

    @classmethod
    def replay_journal(
        cls,
        path: str,
        task_id: str | None = None,
        *,
        code: Mapping[str, str] | Callable[[Any], str | None] | None = None,
        seed: int = 0,
        horizon: float = 1e7,
    ) -> list[ReplayReport]:
        """Replay the Lua and JS tasks a journal recorded against the code of
        today, on the virtual clock: each runs from the top, its recorded host
        calls are answered with their recorded results (nothing is made again:
        no tool runs, no event is published), and it stops where its record
        does. A task whose code now makes another call than the one recorded at
        the same point is reported with the call number and both calls, as it
        would fail with ``ReplayDivergence`` if the runtime resumed it.

        ``task_id``: only that task (else every script task that ran).
        ``code``: the new code of the tasks, by task id (a mapping, or a
        function of the recorded ``TaskSpec`` returning the code or None to keep
        the recorded one): check that a change will not break runs in flight.
        The journal is only read (it may be in use by a live runtime)."""
        from ..journal import Journal

        reports: list[ReplayReport] = []
        name = f"memory:replay-{uuid.uuid4().hex}"
        with Journal.open(path, readonly=True) as src:
            if task_id is not None:
                one = src.get(task_id)
                if one is None:
                    raise MessageError(
                        f"the journal {path} has no task {task_id!r}", where="task_id"
                    )
                chosen = {one.id}
            else:
                chosen = {t.id for t in src.tasks() if t.kind in ("lua", "js") and t.attempts}
            counts: dict[str, int] = {}
            with Journal.open(name) as dst:
                for t in src.tasks():
                    spec = t.spec
                    if t.id in chosen:
                        new = code(spec) if callable(code) else (code or {}).get(t.id)
                        if new is not None:
                            spec = dataclasses.replace(spec, code=new)
                        dst.submitted(spec, t.created)
                        dst.dispatched(t.id, 0, t.created)
                        calls = src.calls(t.id)
                        counts[t.id] = len(calls)
                        for n, op, call, result, error, done in calls:
                            dst.host_call(t.id, n, op, call, result, error, done)
                    else:  # what the replayed tasks awaited: answered from here
                        dst.submitted(spec, t.created)
                        status = t.status if t.status in TERMINAL else "cancelled"
                        dst.ended(t.id, status, t.value, t.error, 0, t.ended or t.created)
                dst.commit()
        try:
            with cls(seed=seed, journal=name, replay_check=True) as sim:
                ids = sorted(chosen)
                sim._sim.pump_until(
                    lambda: all(sim._scheduler_status(i) in TERMINAL for i in ids), horizon
                )
                for i in ids:
                    reports.append(_report(sim, i, counts.get(i, 0)))
        finally:
            Journal.drop(name)
        return reports

    @classmethod
    def replay(cls, seed: int, **config: Any) -> Simulation:
        """A fresh simulation with ``seed``: run the same program against it
        to reproduce a recorded failure step by step."""
        return cls(seed=seed, **config)


def _unended(entry: Any) -> bool:
    """A facade's view of a task that has not told it its end yet."""
    if entry is None:
        return True
    if type(entry) is tuple:
        return False
    if isinstance(entry, Handle):
        return entry._ended is None
    return getattr(entry, "outcome", None) is None


def _report(sim: Simulation, task_id: str, calls: int) -> ReplayReport:
    """How the replay of ``task_id`` ended."""
    outcome = sim._core.outcome(task_id)
    if outcome is None:
        try:
            sim.result(task_id, timeout=0)
        except Exception:
            pass
        outcome = sim._core.outcome(task_id)
    if outcome is None:
        return ReplayReport(task_id, False, calls, "the replay did not end")
    error = outcome.error or {}
    kind = error.get("kind")
    if outcome.status == "succeeded" or kind == "replay_end":
        message = str(error.get("message") or f"completed, replaying {calls} host call(s)")
        return ReplayReport(task_id, True, calls, message)
    if kind == "divergence":
        data = error.get("data") if isinstance(error.get("data"), dict) else None
        return ReplayReport(task_id, False, calls, str(error.get("message")), data)
    return ReplayReport(task_id, False, calls, f"{outcome.status}: {error.get('message')}")
