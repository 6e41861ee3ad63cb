"""The script engine context: one actor driving one ``ScriptVM`` (Lua or JS).

Each script task is a *logical actor* inside the engine: an id, a priority, a
status, a mailbox of resume values (its ready entries) and execution
statistics. The engine actor

* resumes ready tasks in short quanta (``quantum`` seconds, default 5 ms;
  in a simulation ``quantum_steps`` steps, the clock unread) and then sends
  itself a ``_tick`` to go on, so a cancel or new work that
  arrived meanwhile is handled between quanta; with nothing ready it waits
  for messages and wake-ups and never busy-waits;
* turns each request a script makes into the wait it names: ``yield`` (back
  on the ready queue), ``sleep`` (a timer; one Thespian wake-up for the
  earliest), ``await`` (the scheduler tells it when the awaited task ends),
  ``wait_event`` (a one-shot subscription on the event bus, with an optional
  timeout), ``resource_wait`` (the resource tracker's permission:
  ``ResourceWait``/``ResourceGrant``) and ``coordinate`` (the coordinator);
* reports a task's end to the scheduler, with its CPU time and the VM memory
  (and its usage with every ``spell.progress``);
* enforces a task's ``Limits`` after each of its steps (``engines/limits.py``):
  ``kill`` fails it (kind "resource"), ``warn`` publishes
  ``llmspell.resource.warn``, ``throttle`` holds its next resumes until the
  resource tracker grants it to go on (memory: until the VM holds less than
  the task's ``memory_bytes`` again).

Statuses of a logical actor: ``ready`` (in the ready queue), ``running``,
``yielded`` (cooperative yield), ``blocked`` (sleep, await, event, resource),
``completed``, ``error`` and ``suspended`` (stopped by cancel or timeout).
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import json
import logging
import random
import time
from collections import deque
from typing import Any

import msgpack
from thespian.actors import ActorAddress

from .._actor import log
from .._clock import now
from ..messages import encode
from ..messages.config import DEFAULTS
from ..messages.ids import new_task_id
from ..messages.options import lone_surrogate, task_option_problems
from ..messages.types import (
    PRIORITIES,
    Coordinate,
    CoordinationDone,
    DispatchBatch,
    EventDelivery,
    HostCalls,
    ProgressBatch,
    ProgressReport,
    Replaced,
    ResourceGrant,
    ResourceWait,
    StopTasks,
    SubmitRejected,
    SubmitTasks,
    Subscribe,
    TaskOutcomes,
    TaskSpec,
    Tick,
    Unsubscribe,
)
from . import _doorbell
from ._vm import Completed, Failed, Request, ScriptVM, Waiting, Yielded
from .base import EngineActor
from .limits import Limit, judge

__all__ = [
    "ScriptEngine",
    "StepClock",
    "divergence_message",
    "same_call",
    "spec_from_script",
    "vm_clock",
]

_TICK = encode(Tick())
_NPRIO = len(PRIORITIES)  # ready queues, one per priority
_script_log = logging.getLogger("llmspell.script")
_LEVELS = {"debug": 10, "info": 20, "warn": 30, "warning": 30, "error": 40, "critical": 50}
_SPEC_KEYS = frozenset(
    (
        "lang",
        "code",
        "target",
        "args",
        "tool",
        "params",
        "agent",
        "input",
        "timeout",
        "priority",
        "retries",
        "id",
        "name",
        "payload",
        "kind",
    )
)


def spec_from_script(spec: Any, parent: str) -> TaskSpec:
    """A ``spell.submit`` spec (a table/object from a script) as a ``TaskSpec``.

    Raises ``ValueError`` naming what is wrong.
    """
    if not isinstance(spec, dict):
        raise ValueError(f"spell.submit wants a table/object, got {type(spec).__name__}")
    unknown = sorted(set(spec) - _SPEC_KEYS)
    if unknown:
        raise ValueError(f"spell.submit: unknown field {unknown[0]!r}")
    tid = spec.get("id") or new_task_id()
    if not isinstance(tid, str):
        raise ValueError("spell.submit: id must be a string")
    if spec.get("kind") in ("python", "lua", "js"):  # it ran with no code at all
        what = "target='module:function'" if spec["kind"] == "python" else "code"
        raise ValueError(
            f"spell.submit: a {spec['kind']} task is lang={spec['kind']!r} with {what}, "
            f"not kind={spec['kind']!r}"
        )
    picked = [k for k in ("tool", "agent", "kind") if k in spec]
    if picked:
        stray = [k for k in ("lang", "code", "target", *picked[1:]) if k in spec]
        if stray:  # it would be ignored: say so
            raise ValueError(
                f"spell.submit: {stray[0]!r} does not go with {picked[0]}= (a task is one of "
                "lang='lua'|'js' with code, lang='python' with target, tool=, agent=, kind=)"
            )
    if "tool" in spec:
        kind, fields = "tool", {"name": spec["tool"], "payload": spec.get("params")}
    elif "agent" in spec:
        kind, fields = "agent", {"name": spec["agent"], "payload": spec.get("input")}
    elif "kind" in spec:
        kind, fields = str(spec["kind"]), {"name": spec.get("name"), "payload": spec.get("payload")}
    else:
        lang = spec.get("lang") or ("python" if "target" in spec else None)
        if lang in ("lua", "js"):
            if not isinstance(spec.get("code"), str):
                raise ValueError(f"spell.submit: a {lang} task needs code (a string)")
            if not spec["code"].isascii() and lone_surrogate(spec["code"]) is not None:
                raise ValueError(f"spell.submit: the code {lone_surrogate(spec['code'])}")
            kind, fields = lang, {"code": spec["code"]}
        elif lang == "python":
            target = spec.get("target")
            if not isinstance(target, str) or ":" not in target:
                raise ValueError("spell.submit: a python task needs target='module:function'")
            kind, fields = "python", {"target": target}
        else:
            raise ValueError(
                "spell.submit: say what to run: lang='lua'|'js'|'python' (with code or "
                "target), tool=name or agent=name"
            )
    if fields.get("name") is not None and not isinstance(fields["name"], str):
        raise ValueError(f"spell.submit: {kind} name must be a string")
    args = spec.get("args")
    if args is not None and not isinstance(args, dict):
        raise ValueError("spell.submit: args must be a table/object with string keys")
    for name, problem in task_option_problems(spec):
        raise ValueError(f"spell.submit: {name} {problem}")
    priority, timeout = spec.get("priority", "normal"), spec.get("timeout")
    return TaskSpec(
        id=tid,
        kind=kind,
        code=fields.get("code"),
        target=fields.get("target"),
        name=fields.get("name"),
        payload=fields.get("payload"),
        args=args,
        input=spec.get("input"),
        priority=PRIORITIES[priority],
        timeout=float(timeout) if timeout is not None else None,
        retries=spec.get("retries", 0),
        parent=parent,
    )


_Ready = tuple[str, int, Any, "str | None", int]  # task_id, attempt, value, error, rid


class _Script:
    """One logical actor: a script task inside the engine."""

    __slots__ = ("attempt", "id", "j", "limit", "priority", "status", "subs", "waits")

    def __init__(self, task_id: str, attempt: int, priority: int) -> None:
        self.id = task_id
        self.attempt = attempt
        self.priority = priority
        self.status = "ready"
        self.waits = 0  # outstanding requests
        self.subs: list[str] | None = None  # event subscriptions it holds
        self.limit: Limit | None = None  # its Limits, when it has any
        self.j: _Journaled | None = None  # its host calls, in a runtime with a journal


# -- durable scripts (a runtime with a journal) ----------------------------------------
#
# Each host call a script task makes gets the next number n (from 1, afresh on every
# run) and goes to the scheduler as a HostCalls item [task_id, attempt, n, op, call,
# result, error, done] in the engine's flush, before its submits and results. A task
# dispatched with the record of its earlier runs (DispatchBatch.replays) replays it: a
# call recorded and done is answered at once with its recorded result (nothing made; a
# submit is sent again with SubmitTasks(replayed=True) and the same id), one recorded
# but not done is made live with its recorded parameters (a sleep wakes at its recorded
# "until", a wait_event keeps its deadline), one past the record is made live, and one
# that differs from the record at the same n fails the task (kind "divergence").

_RECORDED = frozenset(("sleep", "await", "wait_event", "coordinate"))  # requests
# An answered request's record carries, in its call, the order in which the answers
# of the task came (1, 2, ...): a replay hands recorded answers back in that order,
# one at a time, so a script with several calls outstanding (JS Promise.all/race)
# sees them settle as it did, not in call order (which would diverge spuriously).
_ANSWERED = "~answered"


class _Journaled:
    """A script task's host calls in a journaled runtime."""

    __slots__ = (
        "answers",
        "data",
        "diverged",
        "end",
        "held",
        "inflight",
        "kind",
        "n",
        "order",
        "pending",
        "record",
    )

    def __init__(self, record: list[list[Any]] | None) -> None:
        self.n = 0  # host calls made so far in this run
        # n -> [n, op, call, result, error, done] of the earlier runs
        self.record: dict[int, list[Any]] | None = (
            {int(c[0]): c for c in record} if record else None
        )
        # the order of the recorded answers (see _ANSWERED), those to hand back,
        # and the requests of this run whose recorded answer waits for its turn
        order = sorted(k for k in map(_answered_as, record or ()) if k is not None)
        self.order: deque[int] = deque(order)
        self.answers = order[-1] if order else 0  # answers numbered so far
        self.held: dict[int, tuple[int, Any, str | None]] = {}  # order -> (rid, value, error)
        self.inflight: int | None = None  # the request id of the answer handed back last
        # request id -> (n, op, call) of a call made and not answered yet
        self.pending: dict[int, tuple[int, str, Any]] = {}
        self.diverged: str | None = None  # why the replay failed
        self.kind = "divergence"  # ... as an error kind ("replay_end": see replay_check)
        self.data: dict[str, Any] | None = None  # the divergence: call, recorded, made
        self.end = max(self.record) if self.record else 0  # the last recorded call


def _wire(value: Any) -> Any:
    """``value`` as it comes back from msgpack (tuples become lists, ...), as the
    recorded calls did on their way to the journal."""
    return msgpack.unpackb(
        msgpack.packb(value, use_bin_type=True, unicode_errors="surrogatepass"),
        raw=False,
        strict_map_key=False,
        unicode_errors="surrogatepass",
    )


def _answered_as(record: list[Any]) -> int | None:
    """The place of a recorded request's answer among the task's answers."""
    call = record[2] if len(record) > 5 and record[5] else None
    k = call.get(_ANSWERED) if isinstance(call, dict) else None
    return k if type(k) is int else None


def _call_key(op: str, call: Any) -> Any:
    """What identifies a call: a sleep is its seconds and a wait its pattern and
    timeout, not the wake-up time ("until") that differs on every run, nor when
    it was answered."""
    if isinstance(call, dict):
        if _ANSWERED in call:
            call = {k: v for k, v in call.items() if k != _ANSWERED}
        if op == "sleep":
            return {"seconds": call.get("seconds")}
        if op == "wait_event":
            return {"pattern": call.get("pattern"), "timeout": call.get("timeout")}
        if op == "coordinate" and ("coord_id" in call or "ids" in call):
            return {k: v for k, v in call.items() if k not in ("coord_id", "ids")}
    return call


def same_call(op: str, call: Any, recorded_op: str, recorded_call: Any) -> bool:
    """Whether a call a replayed script makes is the one its journal recorded at
    the same number: the same op and the same arguments (compared as msgpack
    carries them; a submit's spec carries no generated id, a sleep compares its
    seconds, a wait_event its pattern and timeout)."""
    if op != recorded_op:
        return False
    try:
        return bool(_wire(_call_key(op, call)) == _wire(_call_key(recorded_op, recorded_call)))
    except (TypeError, ValueError, msgpack.PackException):
        return False


def _show(op: str, call: Any) -> str:
    try:
        text = json.dumps(_call_key(op, call), sort_keys=True, ensure_ascii=False, default=repr)
    except (TypeError, ValueError):
        text = repr(call)
    if len(text) > 300:
        text = text[:297] + "..."
    return f"{op} {text}"


def divergence_message(n: int, recorded_op: str, recorded_call: Any, op: str, call: Any) -> str:
    """The error of a replay whose call ``n`` is not the recorded one."""
    return (
        f"replay diverged at host call {n}: the journal recorded "
        f"{_show(recorded_op, recorded_call)}, the script now made {_show(op, call)}"
    )


class ScriptEngine(EngineActor):
    """Base of the Lua and JS engine contexts; subclasses make the VM."""

    vm: ScriptVM

    def make_vm(self, config: dict[str, Any]) -> ScriptVM:
        raise NotImplementedError

    def setup(self, config: dict[str, Any]) -> None:
        self.vm = self.make_vm(config)
        # embedded: True while the driver's queue is empty (engines._doorbell)
        self._quiet = _doorbell.quiet(self.runtime_id) if self._bell is not None else None
        # the VM's, per resume
        self.step_budget = float(config.get("step_budget", DEFAULTS.step_budget))
        self.quantum = float(config.get("quantum", DEFAULTS.quantum))
        # simulation: quanta by step count, and a seeded pick among equally ready tasks
        steps = config.get("quantum_steps")
        self.quantum_steps = int(steps) if steps else 0
        seed = config.get("seed")
        self.rng = (
            random.Random(f"{seed}/{self.engine}/{config.get('index', 0)}")
            if seed is not None
            else None
        )
        self.scripts: dict[str, _Script] = {}
        # ready entries, one FIFO per priority (index 0 low .. 3 critical), highest first:
        # (task_id, attempt, value, error, request_id)
        self.ready: list[deque[_Ready]] = [deque() for _ in range(_NPRIO)]
        self._batch_cap = 64  # the most tasks the next _batch_step takes
        self.nready = 0
        self.seq = itertools.count()
        # timers: (deadline, seq, task_id, attempt, request_id, kind)
        self.timers: list[tuple[float, int, str, int, int, str]] = []
        self.armed: float | None = None  # deadline of the pending wake-up
        self.awaiting: dict[str, list[tuple[str, int, int]]] = {}  # child -> waiters
        self.subs: dict[str, tuple[str, int, int]] = {}  # sub id -> (task, attempt, request)
        self.coords: dict[str, tuple[str, int, int]] = {}
        self.patterns: dict[str, str] = {}  # sub id -> its pattern (subscribed again)
        self.ticking = False
        self.resumes = 0
        self.held: dict[str, list[tuple[str, int, Any, str | None, int]]] = {}  # throttled
        self.rwaits: dict[tuple[str, int], list[int]] = {}  # spell.resource_wait requests
        self.rejected: dict[str, str] = {}  # task ids a script submitted, refused -> why
        # durable scripts: record host calls (a runtime with a journal)
        self.journal = bool(config.get("journal"))
        # Simulation.replay_journal: a replay stops where its record does (past its last
        # recorded call, or at one recorded but not answered), ending the task
        self.replay_check = bool(config.get("replay_check"))
        self._calls: list[list[Any]] = []  # HostCalls items not sent yet
        self._resubmits: list[TaskSpec] = []  # replayed submits not sent yet

    # -- work in ------------------------------------------------------------

    def on_dispatch(self, msg: DispatchBatch, sender: ActorAddress) -> None:
        """Start the tasks; embedded, when nothing waits in the driver's queue, run
        their first quantum at once instead of ringing for a tick (one pass
        through the driver less per task). Anything waiting there (a cancel, a
        query) still goes first: the engine rings as before."""
        quiet = self._quiet
        if quiet is None or self.ticking:
            super().on_dispatch(msg, sender)
            return
        self.ticking = True  # no tick while the tasks start
        try:
            super().on_dispatch(msg, sender)
        finally:
            self.ticking = False
        if self.nready:
            if quiet():
                self._run_quantum()
            else:
                self._tick()

    def start(self, spec: TaskSpec, attempt: int, replay: list[list[Any]] | None = None) -> None:
        source = (spec.metadata or {}).get("source")
        name = source if isinstance(source, str) and source else None
        times = None
        if replay and self.journal:  # its clock reads give what the earlier runs read
            replay = sorted(replay, key=lambda c: int(c[0]))
            times = [c[3] for c in replay if c[1] == "time" and c[5]]
        if times:
            failed = self.vm.start(
                spec.id, spec.code or "", spec.args, spec.input, source=name, clock=times
            )
        else:
            failed = self.vm.start(spec.id, spec.code or "", spec.args, spec.input, source=name)
        if failed is not None:
            self._fail(spec.id, attempt, failed)
            return
        priority = min(max(spec.priority, 0), _NPRIO - 1)
        s = self.scripts[spec.id] = _Script(spec.id, attempt, priority)
        if spec.limits:
            s.limit = Limit.of(spec.limits)
        if self.journal:
            s.j = _Journaled(replay)
        self._ready(spec.id, attempt, None, None, 0, priority)

    def start_replay(self, spec: TaskSpec, attempt: int, calls: list[list[Any]]) -> None:
        self.start(spec, attempt, calls)

    def _forget(self, task_id: str) -> None:
        """Drop the task from the VM; a VM that fails at that is logged, never raised."""
        try:
            self.vm.cancel(task_id)
        except Exception:
            log.exception("%s engine: dropping task %s from the VM failed", self.engine, task_id)

    def stop(self, task_id: str, reason: str) -> None:
        s = self.scripts.pop(task_id, None)
        if s is None:
            return
        s.status = "suspended"
        self._forget(task_id)
        self._drop_subs(s)

    def _tick(self) -> None:
        """Go on after other messages had their turn. Embedded: the tick goes
        through the driver's queue (the doorbell), behind the facade's submits,
        cancels and queries; a message to itself would keep the driver inside
        one ``tell`` for as long as any script is ready, starving the facade.
        Local: a zero wake-up, which Thespian's TCP transport handles after
        checking its sockets, without the socket round trip a message to itself
        costs there."""
        self.ticking = True
        if self._bell is not None:
            self._bell(self.myAddress, _TICK)
        else:
            self.wake_after(0, "tick")

    def on_tick(self, msg: Tick, sender: ActorAddress) -> None:
        self.ticking = False
        self._run_quantum()

    def on_wakeup(self, payload: Any) -> None:
        if payload == "tick":
            self.ticking = False
            self._run_quantum()
            return
        if payload == "timers":
            self.armed = None
            self._fire_timers()
        else:
            super().on_wakeup(payload)

    def on_outcomes(self, msg: TaskOutcomes, sender: ActorAddress) -> None:
        """Awaited tasks ended: resume their awaiters."""
        for o in msg.items:
            for task_id, attempt, rid in self.awaiting.pop(o.task_id, ()):
                if o.status == "succeeded":
                    self._answer(task_id, attempt, o.value, None, rid)
                else:
                    self._answer(
                        task_id, attempt, None, _await_error(o.task_id, o.status, o.error), rid
                    )

    def on_submit_rejected(self, msg: SubmitRejected, sender: ActorAddress) -> None:
        """A task a script submitted was refused (its id is taken): whoever awaits
        that id, now or later, learns why instead of waiting for another task."""
        why = f"spell.submit was refused: {msg.message}"
        self.rejected[msg.task_id] = why
        if len(self.rejected) > 10_000:
            self.rejected.pop(next(iter(self.rejected)))
        for task_id, attempt, rid in self.awaiting.pop(msg.task_id, ()):
            self._answer(task_id, attempt, None, why, rid)

    def on_event_delivery(self, msg: EventDelivery, sender: ActorAddress) -> None:
        waiter = self.subs.pop(msg.sub_id, None)
        if waiter is None or not msg.events:
            return
        ev = msg.events[0]
        task_id, attempt, rid = waiter
        self._answer(
            task_id, attempt, {"name": ev.get("name"), "payload": ev.get("payload")}, None, rid
        )

    def on_coordination_done(self, msg: CoordinationDone, sender: ActorAddress) -> None:
        waiter = self.coords.pop(msg.coord_id, None)
        if waiter is not None:
            self._answer(waiter[0], waiter[1], msg.result, None, waiter[2])

    # -- the run loop ---------------------------------------------------------

    def _ready(
        self, task_id: str, attempt: int, value: Any, error: str | None, rid: int, priority: int
    ) -> None:
        self.ready[priority].append((task_id, attempt, value, error, rid))
        self.nready += 1
        if not self.ticking:
            self._tick()

    def _answer(self, task_id: str, attempt: int, value: Any, error: str | None, rid: int) -> None:
        s = self.scripts.get(task_id)
        if s is None or s.attempt != attempt:
            return  # the task ended meanwhile
        if s.j is not None and s.j.pending:
            # recorded as it arrives, not when the script takes it: an event taken
            # off the bus is journaled at the end of this message, not lost in a crash
            # before the script's next step
            self._answered(s, s.j, rid, value, error)
        self._ready(task_id, attempt, value, error, rid, s.priority)

    def _run_quantum(self) -> None:
        rng, steps = self.rng, self.quantum_steps
        if rng is None:
            clock = time.perf_counter
            deadline = clock() + self.quantum
        else:  # simulation: the quantum ends by step count alone, never by the clock
            clock, deadline = _no_clock, _NEVER
        queues, scripts, vm = self.ready, self.scripts, self.vm
        resume = vm.resume
        sleep0 = getattr(vm, "SLEEP0", _NOTHING)  # the VM's one result for spell.sleep(0)
        journal = self.journal
        low, normal, high, critical = queues
        # a run of tasks that only wait for their turn after spell.sleep(0) is resumed in
        # one call into the VM (LuaVM.resume_batch, JsVM.resume_batch); never in a
        # simulation (whose seed picks each step)
        batch = getattr(vm, "resume_batch", None) if rng is None else None
        while self.nready:
            q = critical or high or normal or low
            if batch is not None and len(q) > 1 and self._batch_step(q, batch, sleep0, deadline):
                if clock() >= deadline:
                    break
                continue
            if rng is None:
                task_id, attempt, value, error, rid = q.popleft()
            else:  # simulation: the seed decides which ready task runs next
                i = rng.randrange(len(q))
                task_id, attempt, value, error, rid = q[i]
                del q[i]
                steps -= 1
                if steps <= 0:
                    deadline = 0.0  # end the quantum after this step
            self.nready -= 1
            s = scripts.get(task_id)
            if s is None or s.attempt != attempt:
                continue
            lim = s.limit
            if lim is not None and self._limit_gate(s, lim, (task_id, attempt, value, error, rid)):
                continue  # throttled: held until the resource tracker grants
            s.status = "running"
            if s.waits:
                s.waits -= 1
            if journal and s.j is not None:
                if s.j.pending:
                    self._answered(s, s.j, rid, value, error)
                if s.j.inflight is not None:
                    self._taken(s, s.j, rid)
            self.resumes += 1
            try:
                if lim is not None and lim.cpu is not None and lim.on_exceed == "kill":
                    # the CPU limit is kept inside the step, not only after it: a script
                    # that never yields stops at its limit, not at the step budget
                    lim.step_left = max(lim.cpu - self._cpu(task_id), 1e-3)
                    result = resume(task_id, value, error, rid, budget=lim.step_left)
                else:
                    result = resume(task_id, value, error, rid)
            except KeyError:  # the VM forgot it (e.g. its context was rebuilt)
                result = Failed("runtime", "the script VM lost this task")
            except Exception as exc:  # a VM bug fails this task, never hangs it
                log.exception("%s engine: resuming task %s failed", self.engine, task_id)
                self._forget(task_id)
                result = Failed("runtime", f"internal error in the {self.engine} VM: {exc!r}")
            if journal and s.j is not None and s.j.diverged is not None:
                self._diverged(s, result)  # a call made in this step was not the recorded one
                continue
            if lim is not None and self._limit_check(s, lim, result):
                continue  # killed over its limits
            if result is sleep0:  # the hottest path: as a cooperative yield below
                s.status = "yielded"
                queues[s.priority].append((task_id, attempt, None, None, 0))
                self.nready += 1
                if clock() >= deadline:
                    break
                continue
            if type(result) is Yielded and not result.more:
                req = result.request
                if req.op == "yield" or (req.op == "sleep" and not req.args.get("seconds")):
                    # the hot path: a cooperative yield goes to the back of its queue and runs
                    # again in this quantum once the others ready before it had their turn
                    s.status = "yielded"
                    queues[s.priority].append((task_id, attempt, None, None, req.id))
                    self.nready += 1
                    if clock() >= deadline:
                        break
                    continue
            self._handle(s, result)
            if clock() >= deadline:
                break
        others = getattr(vm, "drain_other_results", None)
        if others is not None:
            for task_id, res in others():
                s = scripts.get(task_id)
                if s is not None:
                    self._handle(s, res)
        if self.nready and not self.ticking:
            self._tick()

    def _batch_step(self, q: deque[_Ready], resume_batch: Any, sleep0: Any, until: float) -> bool:
        """Resume the tasks at the head of ``q`` that wait only for their turn after a
        ``spell.sleep(0)`` (no answer owed, no limits, no journal) in one call into the
        VM: round after round while nothing else is ready, else one pass. What follows
        is what resuming them one at a time would have done: each sleep 0 goes to the
        back of the queue in turn, and the first other result is handled as usual.
        False (``q`` as it was) when fewer than two qualify or the VM could not begin."""
        scripts, journal = self.scripts, self.journal
        es: list[_Ready] = []
        ss: list[_Script] = []
        for e in q:
            task_id, attempt, value, error, rid = e
            if value is not None or error is not None or rid:
                break
            s = scripts.get(task_id)
            if (
                s is None
                or s.attempt != attempt
                or s.status != "yielded"
                or s.waits
                or s.limit is not None
                or (journal and s.j is not None)
            ):
                break
            es.append(e)
            ss.append(s)
            if len(es) >= self._batch_cap:
                break
        k = len(es)
        if k < 2:
            return False
        for _ in range(k):
            q.popleft()
        self.nready -= k
        rounds = not self.nready  # nothing else is ready: the ring may go round
        try:
            n, front, back, done = resume_batch([s.id for s in ss], rounds, until)
        except Exception:
            log.exception(
                "%s engine: a batch of resumes failed; resuming one at a time", self.engine
            )
            n = 0
        if not n:
            q.extendleft(reversed(es))
            self.nready += k
            self._batch_cap = 2
            return False
        self.resumes += n
        # the next batch takes at most twice the resumes this one made: a batch costs
        # Python work for each task it takes, so batches that end early (a host call, a
        # budget hook, the quantum's end) must not take many (that was quadratic)
        self._batch_cap = min(_BATCH_MAX, max(2, 2 * n))
        q.extend([es[i] for i in back])
        if front:
            q.extendleft([es[i] for i in reversed(front)])
        self.nready += len(front) + len(back)
        for i, result in done:
            s = ss[i]
            if result is sleep0:
                q.append(es[i])
                self.nready += 1
            else:
                s.status = "running"
                self._handle(s, result)
        return True

    def _handle(self, s: _Script, result: Any) -> None:
        if type(result) is Yielded:
            self._request(s, result.request)
            for req in result.more:
                if s.status == "completed":  # failed by the one before (a replay diverged)
                    break
                self._request(s, req)
        elif type(result) is Waiting:
            s.status = "blocked"
        elif type(result) is Completed:
            self._finish(s)
            usage = self._usage(s)
            self.report(s.id, s.attempt, "succeeded", result.value, usage=usage)
        else:
            self._finish(s)
            self._fail(s.id, s.attempt, result, self._usage(s))

    def _finish(self, s: _Script) -> None:
        del self.scripts[s.id]
        s.status = "completed"
        self._drop_subs(s)

    def _usage(self, s: _Script) -> dict[str, Any]:
        stats = getattr(self.vm, "stats", None)
        cpu = 0.0
        if stats is not None:
            try:
                cpu = float(stats(s.id).get("cpu_seconds", 0.0))
            except KeyError:
                pass
        return {"cpu_seconds": cpu, "memory_bytes": self.vm.memory_in_use()}

    def _fail(
        self, task_id: str, attempt: int, failed: Failed, usage: dict[str, Any] | None = None
    ) -> None:
        self.report(
            task_id,
            attempt,
            "failed",
            usage=usage,
            error=self.error(
                failed.message, kind="script", traceback=failed.traceback, data=failed.data
            ),
        )

    # -- requests ---------------------------------------------------------------

    def _request(self, s: _Script, req: Request) -> None:
        op, args = req.op, req.args
        s.waits += 1
        if op == "yield" or (op == "sleep" and not args.get("seconds")):
            s.status = "yielded"
            self._ready(s.id, s.attempt, None, None, req.id, s.priority)
            return
        s.status = "blocked"
        if s.j is not None and op in _RECORDED and self._replay_request(s, s.j, req):
            return
        if op == "sleep":
            seconds = _number(args.get("seconds"))
            if seconds is None or seconds < 0:
                self._ready(
                    s.id, s.attempt, None, "spell.sleep wants seconds >= 0", req.id, s.priority
                )
                return
            self._timer(now() + seconds, s, req.id, "sleep")
        elif op == "await":
            child = args.get("task_id")
            problem = (
                "spell.await wants a task handle"
                if not isinstance(child, str)
                else "spell.await: a task cannot await itself (it would wait for ever)"
                if child == s.id
                else self.rejected.get(child)
            )
            if problem is not None:
                self._ready(s.id, s.attempt, None, problem, req.id, s.priority)
                return
            assert isinstance(child, str)
            waiters = self.awaiting.get(child)
            if waiters is None:
                self.awaiting[child] = [(s.id, s.attempt, req.id)]
                self.watch(child)
            else:
                waiters.append((s.id, s.attempt, req.id))
        elif op == "wait_event":
            self._wait_event(s, req)
        elif op == "resource_wait":
            self._resource_request(s, req)
        elif op == "coordinate":
            self._coordinate(s, req)
        else:
            self._ready(s.id, s.attempt, None, f"unknown request {op!r}", req.id, s.priority)

    def _wait_event(self, s: _Script, req: Request, until: float | None = None) -> None:
        pattern = req.args.get("pattern")
        bus = self.addresses.get("events")
        if not isinstance(pattern, str) or not pattern:
            self._ready(
                s.id, s.attempt, None, "spell.wait_event wants a pattern string", req.id, s.priority
            )
            return
        if bus is None:
            self._ready(
                s.id,
                s.attempt,
                None,
                "events are not available in this runtime",
                req.id,
                s.priority,
            )
            return
        sub_id = f"{s.id}#{s.attempt}#{req.id}"
        self.subs[sub_id] = (s.id, s.attempt, req.id)
        self.patterns[sub_id] = pattern
        if len(self.patterns) > 2 * len(self.subs) + 64:  # forget those that ended
            self.patterns = {k: p for k, p in self.patterns.items() if k in self.subs}
        if s.subs is None:
            s.subs = []
        s.subs.append(sub_id)
        self.send_msg(bus, Subscribe(sub_id, pattern, limit=1, once=True))
        timeout = _number(req.args.get("timeout"))
        if until is not None:  # a replay: the deadline of the first run
            self._timer(until, s, req.id, "event:" + sub_id)
        elif timeout is not None:
            self._timer(now() + max(0.0, timeout), s, req.id, "event:" + sub_id)

    def _coordinate(
        self,
        s: _Script,
        req: Request,
        coord_id: str | None = None,
        ids: list[str] | None = None,
        replayed: bool = False,
    ) -> None:
        """``spell.coordinate``. In a journaled runtime ``coord_id`` and the
        tasks' ``ids`` are the ones recorded (a replay makes the call again with
        them and ``replayed``: tasks of the earlier run are taken as they are,
        so a race keeps its winner and nothing runs twice)."""
        coordinator = self.addresses.get("coordinator")
        if coordinator is None:
            self._ready(
                s.id,
                s.attempt,
                None,
                "coordination is not available in this runtime",
                req.id,
                s.priority,
            )
            return
        inputs = req.args.get("inputs")
        try:
            if inputs is not None and not isinstance(inputs, list):
                raise ValueError("spell.coordinate: inputs must be a list (one per pipeline run)")
            tasks = [spec_from_script(t, s.id) for t in req.args.get("tasks") or []]
            if ids is not None and len(ids) == len(tasks):
                tasks = [dataclasses.replace(t, id=i) for t, i in zip(tasks, ids, strict=True)]
        except ValueError as exc:
            self._ready(
                s.id,
                s.attempt,
                None,
                str(exc).replace("spell.submit", "spell.coordinate"),
                req.id,
                s.priority,
            )
            return
        coord_id = coord_id or new_task_id()
        self.coords[coord_id] = (s.id, s.attempt, req.id)
        self.send_msg(
            coordinator,
            Coordinate(
                coord_id,
                tasks,
                str(req.args.get("strategy", "")),
                _number(req.args.get("timeout")),
                req.args.get("inputs"),
                replayed,
            ),
        )

    def _drop_subs(self, s: _Script) -> None:
        if not s.subs:
            return
        bus = self.addresses.get("events")
        for sub_id in s.subs:
            if self.subs.pop(sub_id, None) is not None and bus is not None:
                self.send_msg(bus, Unsubscribe(sub_id))
        s.subs = None

    # -- timers -------------------------------------------------------------------

    def _timer(self, deadline: float, s: _Script, rid: int, kind: str) -> None:
        heapq.heappush(self.timers, (deadline, next(self.seq), s.id, s.attempt, rid, kind))
        self._arm()

    def _arm(self) -> None:
        if not self.timers:
            return
        first = self.timers[0][0]
        if self.armed is None or first < self.armed - 0.0005:
            self.armed = first
            self.wake_after(first - now(), "timers")

    def _fire_timers(self) -> None:
        t = now()
        timers = self.timers
        while timers and timers[0][0] <= t + 0.0005:
            _, _, task_id, attempt, rid, kind = heapq.heappop(timers)
            if kind == "sleep":
                self._answer(task_id, attempt, None, None, rid)
            elif kind.startswith("event:"):
                sub_id = kind[6:]
                if self.subs.pop(sub_id, None) is not None:
                    bus = self.addresses.get("events")
                    if bus is not None:
                        self.send_msg(bus, Unsubscribe(sub_id))
                    self._answer(task_id, attempt, None, "timed out waiting for event", rid)
        self._arm()

    # -- host calls (from inside a step) ----------------------------------------------

    def submit(self, parent_id: str, spec: dict[str, Any]) -> str:
        task = spec_from_script(spec, parent_id)
        if self.journal:
            return self._journal_submit(parent_id, spec, task)
        self.submit_child(task)
        return task.id

    def emit(self, task_id: str, name: str, payload: Any) -> None:
        if self.journal:  # the scheduler publishes it once journaled
            self._journal_sync(task_id, "emit", {"name": str(name), "payload": payload}, None)
            return
        self.publish(str(name), payload)

    def clock(self, task_id: str, fn: str, value: Any) -> None:
        """A clock read by a script (VMs report them only in a journaled runtime)."""
        if self.journal:
            self._journal_sync(task_id, "time", {"fn": str(fn)}, value)

    def progress(self, task_id: str, done: float, total: float | None, message: str | None) -> None:
        self.report_progress(
            ProgressReport(
                task_id,
                _number(done),
                _number(total),
                None if message is None else str(message),
                self._live_usage(task_id),
            )
        )

    def log(self, task_id: str, level: str, message: str) -> None:
        """``spell.log``, Lua ``print``, JS ``console.*``: to the ``llmspell.script``
        logger; the record carries ``task_id``, ``engine`` and the bare ``text``
        (``llmspell run`` prints that, prefixed with the file or step name)."""
        _script_log.log(
            _LEVELS.get(str(level).lower(), 20),
            "[%s %s] %s",
            self.engine,
            task_id,
            message,
            extra={"task_id": task_id, "engine": self.engine, "text": message},
        )

    # -- durable scripts (see _Journaled) ----------------------------------------------

    def _next_call(self, s: _Script, j: _Journaled, op: str, call: Any) -> list[Any] | None:
        """Number a host call of ``s``: its record from the earlier runs, if any;
        a record of another call marks the replay as diverged."""
        j.n += 1
        rec = j.record.get(j.n) if j.record is not None else None
        if rec is not None and not same_call(op, call, str(rec[1]), rec[2]):
            j.diverged = divergence_message(j.n, str(rec[1]), rec[2], op, call)
            j.data = {"call": j.n, "recorded": _show(str(rec[1]), rec[2]), "made": _show(op, call)}
            log.warning("%s task %s: %s", self.engine, s.id, j.diverged)
        elif self.replay_check and (rec is None or not rec[5]):
            j.kind = "replay_end"
            j.diverged = (
                f"replayed {j.n - 1} recorded host call(s) with no divergence "
                f"(call {j.n} is {'past the record' if rec is None else 'not answered in it'})"
            )
        return rec

    def _journal_sync(self, task_id: str, op: str, call: Any, result: Any) -> None:
        """An emit or a clock read: recorded (a replayed one is not recorded again)."""
        s = self.scripts.get(task_id)
        if s is None or s.j is None or s.j.diverged is not None:
            return
        if self._next_call(s, s.j, op, call) is None:
            self._calls.append([s.id, s.attempt, s.j.n, op, call, result, None, True])

    def _journal_submit(self, parent_id: str, spec: dict[str, Any], task: TaskSpec) -> str:
        s = self.scripts.get(parent_id)
        j = s.j if s is not None else None
        if s is None or j is None:
            self.submit_child(task)
            return task.id
        if j.diverged is not None:
            raise ValueError(j.diverged)
        rec = self._next_call(s, j, "submit", spec)
        if j.diverged is not None:
            raise ValueError(j.diverged)
        if rec is not None:  # submitted by an earlier run: the same child, sent again
            child = str(rec[3])
            self._resubmits.append(spec_from_script(dict(spec, id=child), parent_id))
            return child
        self.submit_child(task)
        self._calls.append([s.id, s.attempt, j.n, "submit", spec, task.id, None, True])
        return task.id

    def _replay_request(self, s: _Script, j: _Journaled, req: Request) -> bool:
        """A request that waits (sleep, await, wait_event, coordinate), numbered and
        recorded; True if handled here (answered from the record, made live with its
        recorded parameters, or diverged), False to make it live as usual."""
        op, args = req.op, req.args
        if op == "sleep":
            call: dict[str, Any] = {"seconds": args.get("seconds")}
        elif op == "wait_event":
            call = {"pattern": args.get("pattern"), "timeout": args.get("timeout")}
        else:
            call = dict(args)
        rec = self._next_call(s, j, op, call)
        if j.diverged is not None:
            self._diverged(s, None)
            return True
        if rec is not None and rec[5]:  # answered in an earlier run: the same answer now
            k = _answered_as(rec)
            if k is None:  # recorded without its place among the answers
                self._ready(s.id, s.attempt, rec[3], rec[4], req.id, s.priority)
            else:  # ... in its turn
                j.held[k] = (req.id, rec[3], rec[4])
                self._hand_back(s, j)
            return True
        old = rec[2] if rec is not None and isinstance(rec[2], dict) else None
        j.pending[req.id] = (j.n, op, call)
        if op == "sleep":
            seconds = _number(args.get("seconds"))
            if seconds is None or seconds < 0:
                return False  # answered with the error below
            until = _number(old.get("until")) if old is not None else None
            call["until"] = now() + seconds if until is None else until
            if rec is None:
                self._calls.append([s.id, s.attempt, j.n, op, call, None, None, False])
            self._timer(call["until"], s, req.id, "sleep")
            return True
        if op == "wait_event":
            timeout = _number(args.get("timeout"))
            until = _number(old.get("until")) if old is not None else None
            if until is None and timeout is not None:
                until = now() + max(0.0, timeout)
            call["until"] = until
            if rec is None:
                self._calls.append([s.id, s.attempt, j.n, op, call, None, None, False])
            self._wait_event(s, req, until)
            return True
        if op == "coordinate":
            # the coordination's id and its tasks' ids go in the record, so that a
            # replay makes it again with them (see _coordinate)
            tasks = args.get("tasks")
            old_ids = old.get("ids") if old is not None else None
            if isinstance(old_ids, list):
                ids = [str(i) for i in old_ids]
            else:
                ids = [
                    str(t.get("id")) if isinstance(t, dict) and t.get("id") else new_task_id()
                    for t in (tasks if isinstance(tasks, list) else [])
                ]
            coord_id = str(old.get("coord_id") or "") if old is not None else ""
            call["coord_id"], call["ids"] = coord_id or new_task_id(), ids
            if rec is None:
                self._calls.append([s.id, s.attempt, j.n, op, call, None, None, False])
            self._coordinate(s, req, call["coord_id"], ids, replayed=old is not None)
            return True
        if rec is None:
            self._calls.append([s.id, s.attempt, j.n, op, call, None, None, False])
        return False

    def _answered(self, s: _Script, j: _Journaled, rid: int, value: Any, error: str | None) -> None:
        """A recorded request of ``s`` is answered: record its result, and its
        place among the task's answers."""
        p = j.pending.pop(rid, None)
        if p is not None:
            j.answers += 1
            call = dict(p[2], **{_ANSWERED: j.answers}) if isinstance(p[2], dict) else p[2]
            self._calls.append([s.id, s.attempt, p[0], p[1], call, value, error, True])

    def _hand_back(self, s: _Script, j: _Journaled) -> None:
        """Hand the next recorded answer back to ``s`` when its request was made
        and the one before it was taken."""
        order = j.order
        if j.inflight is None and order and order[0] in j.held:
            rid, value, error = j.held.pop(order.popleft())
            j.inflight = rid
            self._ready(s.id, s.attempt, value, error, rid, s.priority)

    def _taken(self, s: _Script, j: _Journaled, rid: int) -> None:
        """``s`` takes the answer to request ``rid``: the next recorded one may follow."""
        if j.inflight == rid:
            j.inflight = None
            self._hand_back(s, j)

    def _diverged(self, s: _Script, result: Any) -> None:
        """Fail ``s``: its replay made another call than the recorded one."""
        if self.scripts.get(s.id) is not s:
            return
        if type(result) is not Completed and type(result) is not Failed:
            self._forget(s.id)
        self._finish(s)
        assert s.j is not None and s.j.diverged is not None
        self.report(
            s.id,
            s.attempt,
            "failed",
            usage=self._usage(s),
            error=self.error(s.j.diverged, kind=s.j.kind, data=s.j.data),
        )

    def flush(self) -> None:
        if self.scheduler is not None and (self._calls or self._resubmits):
            # before the submits and results of this flush: the scheduler journals them
            # first
            if self._calls:
                calls, self._calls = self._calls, []
                self.send_msg(self.scheduler, HostCalls(calls))
            if self._resubmits:
                again, self._resubmits = self._resubmits, []
                self.send_msg(self.scheduler, SubmitTasks(again, notify=False, replayed=True))
        # Progress before results: the scheduler ignores progress of a task that has
        # ended, and a script's last spell.progress often comes in the step that returns.
        if self._progress and self.scheduler is not None:
            reports, self._progress = self._progress, []
            self.send_msg(self.scheduler, ProgressBatch(reports))
        super().flush()

    # -- limits and resources ----------------------------------------------------------

    def _vm_memory(self) -> int:
        if self.vm.language == "js":  # the JS VM reuses a cached figure unless asked
            return int(self.vm.memory_in_use(exact=True))  # type: ignore[call-arg]
        return self.vm.memory_in_use()

    def _cpu(self, task_id: str) -> float:
        stats = getattr(self.vm, "stats", None)
        if stats is None:
            return 0.0
        try:
            return float(stats(task_id).get("cpu_seconds", 0.0))
        except KeyError:
            return 0.0

    def _live_usage(self, task_id: str) -> dict[str, Any] | None:
        s = self.scripts.get(task_id)
        return self._usage(s) if s is not None else None

    def _limit_gate(
        self, s: _Script, lim: Limit, entry: tuple[str, int, Any, str | None, int]
    ) -> bool:
        """Before a step of a task with limits: hold it while throttled (True)."""
        if lim.parked:
            self.held.setdefault(s.id, []).append(entry)
            return True
        if lim.memory is not None:
            lim.mem0 = self._vm_memory()
        return False

    def _limit_check(self, s: _Script, lim: Limit, result: Any) -> bool:
        """After a step: compare the task's use with its limits and act; True if
        the task was killed (it is then over and reported)."""
        cpu = self._cpu(s.id)
        mem: int | None = None
        if lim.memory is not None:
            lim.mem_used = max(0, lim.mem_used + self._vm_memory() - lim.mem0)
            mem = lim.mem_used
        over = lim.over(cpu, mem)
        cut = (  # the step ran out of what the CPU limit left it (less than the step budget)
            type(result) is Failed
            and result.kind == "budget"
            and lim.cpu is not None
            and lim.step_left is not None
            and lim.step_left < self.step_budget
        )
        if cut:
            over = [("cpu_seconds", max(cpu, lim.cpu or 0.0), lim.cpu or 0.0)] + [
                o for o in over if o[0] != "cpu_seconds"
            ]
        if over and lim.on_exceed == "kill" and type(result) is Failed and not cut:
            return False  # it failed on its own
        v = judge(lim, over, task_id=s.id, engine=self.engine, what=f"{self.engine} task")
        if v.action == "kill":
            if type(result) is not Completed:
                self._forget(s.id)
            self._finish(s)
            usage = {"cpu_seconds": cpu, "memory_bytes": mem if mem is not None else 0}
            self.report(
                s.id, s.attempt, "failed", usage=usage, error=self.error(v.message, kind="resource")
            )
            return True
        for payload in v.warnings:
            self.publish("llmspell.resource.warn", payload)
        if v.action == "park" and type(result) not in (Completed, Failed):
            resource, used, limit = over[0]
            self.park(s.id, s.attempt, lim, resource, used, limit, cpu - lim.cpu_at_grant)
        return False

    def _resource_request(self, s: _Script, req: Request) -> None:
        tracker = self.addresses.get("resources")
        if tracker is None:
            self._ready(s.id, s.attempt, None, None, req.id, s.priority)
            return
        self.rwaits.setdefault((s.id, s.attempt), []).append(req.id)
        self.send_msg(tracker, ResourceWait(s.id, s.attempt, self.engine, self.index, "requested"))

    def on_resource_grant(self, msg: ResourceGrant, sender: ActorAddress) -> None:
        s = self.scripts.get(msg.task_id)
        if msg.resource == "requested":
            rids = self.rwaits.get((msg.task_id, msg.attempt))
            if rids:
                rid = rids.pop(0)
                if not rids:
                    del self.rwaits[(msg.task_id, msg.attempt)]
                if s is not None and s.attempt == msg.attempt:
                    self._ready(s.id, s.attempt, None, None, rid, s.priority)
            return
        if s is None or s.attempt != msg.attempt or s.limit is None:
            self.held.pop(msg.task_id, None)
            return
        lim = s.limit
        if msg.resource == "memory_bytes" and lim.memory is not None:
            vm_memory = self._vm_memory()
            if vm_memory > lim.memory:  # the VM still holds too much: wait on
                lim.parked = False
                self.park(
                    s.id, s.attempt, lim, "memory_bytes", float(vm_memory), float(lim.memory), 0.0
                )
                return
        lim.parked = False
        lim.cpu_at_grant = self._cpu(s.id)
        for entry in self.held.pop(s.id, ()):
            self.ready[s.priority].append(entry)
            self.nready += 1
        if self.nready and not self.ticking:
            self._tick()

    # -- shutdown ------------------------------------------------------------------------

    def busy(self) -> bool:
        return False

    def running_ids(self) -> list[str]:
        return list(self.scripts)

    def replaced(self, msg: Replaced) -> None:
        """A new event bus has none of the ``wait_event`` subscriptions: they
        are made again. A new coordinator has none of the coordinations:
        whoever waits in ``spell.coordinate`` gets an error naming the crash. A
        new resource tracker has none of the waits: they are granted. A new
        scheduler dispatches again what this engine ran (the base class stopped
        those runs): everything they left behind goes too, or a timer or answer
        of an old run would resume the new run of the same task and attempt."""
        if msg.role == "scheduler":
            self.timers.clear()
            self.armed = None
            self.awaiting.clear()
            self.coords.clear()
            self.held.clear()
            self.rwaits.clear()
            self._calls.clear()
            self._resubmits.clear()
            for queue in self.ready:
                queue.clear()
            self.nready = 0
        elif msg.role == "events":
            for sub_id in [k for k in self.patterns if k not in self.subs]:
                del self.patterns[sub_id]
            for sub_id, pattern in self.patterns.items():
                self.send_msg(msg.address, Subscribe(sub_id, pattern, limit=1, once=True))
        elif msg.role == "coordinator":
            coords, self.coords = self.coords, {}
            for task_id, attempt, rid in coords.values():
                self._answer(task_id, attempt, None, f"spell.coordinate: {msg.crashed}", rid)
        elif msg.role == "resources":
            for (task_id, attempt), rids in list(self.rwaits.items()):
                for _ in rids:
                    self.on_resource_grant(
                        ResourceGrant(task_id, attempt, "requested"), self.myAddress
                    )
            for s in list(self.scripts.values()):
                if s.limit is not None and s.limit.parked:
                    self.on_resource_grant(
                        ResourceGrant(s.id, s.attempt, "granted"), self.myAddress
                    )

    def close(self) -> None:
        for task_id in list(self.scripts):
            self.stop(task_id, "engine closed")
        try:
            self.vm.close()
        except Exception:  # pragma: no cover - closing a VM must not stop shutdown
            log.exception("%s engine: closing the VM failed", self.engine)

    def on_stop(self, msg: StopTasks, sender: ActorAddress) -> None:
        for task_id in msg.task_ids:
            self.stop(task_id, msg.reason)


_NEVER = float("inf")


_NOTHING = object()  # no result is this (a VM without a SLEEP0)
# _run_quantum hands runs of sleep(0)s to the VM's resume_batch; each batch takes at most
# _batch_cap tasks (twice the resumes the last one made, at most _BATCH_MAX): taking
# every ready task each time made 100,000 tasks under load crawl (a batch that the
# quantum's end stopped after 64 resumes had cost a pass over 90,000 entries)
_BATCH_MAX = 16384


def _no_clock() -> float:
    """A simulation's quantum clock: it never moves, so only the step count ends a quantum."""
    return 0.0


class StepClock:
    """The clock a simulation gives its script VMs in place of ``perf_counter``:
    every read moves it on by ``tick`` seconds, so what the VMs measure with it
    (step budgets, a task's ``cpu_seconds``, CPU limits) counts work, not time.
    The Lua VM reads it at the start and end of each step and at every count-hook
    call (every 10,000 VM instructions); the JS VM also once per job it runs."""

    __slots__ = ("t", "tick")

    def __init__(self, tick: float = 1e-4) -> None:
        self.t = 0.0
        self.tick = tick

    def __call__(self) -> float:
        self.t += self.tick
        return self.t


def vm_clock(config: dict[str, Any]) -> StepClock | None:
    """The clock for a script VM: a ``StepClock`` in a simulation (a ``seed`` is
    configured), else None (the VM's own real clock)."""
    return StepClock() if config.get("seed") is not None else None


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v)


def _await_error(task_id: str, status: str, error: dict[str, Any] | None) -> str:
    message = str((error or {}).get("message") or status)
    if len(message) > 600:  # awaits nested deep: keep the outer links and the first cause
        message = f"{message[:200]} ... {message[-300:]}"
    if status == "cancelled":
        return f"awaited task {task_id} was cancelled"
    if status == "timed_out":
        return f"awaited task {task_id} timed out: {message}"
    return f"awaited task {task_id} failed: {message}"
