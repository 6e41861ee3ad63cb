"""The Python engine context: runs registered callables.

* A sync callable runs on one of the engine's worker threads
  (``python_threads``, default 32), so a slow one never blocks the actor.
  Calls wait for a free thread in priority order. Python cannot interrupt a
  running thread: cancelling or timing out a running sync call ends its task
  at once, and what the call returns later is dropped.
* An ``async def`` callable runs on an asyncio event loop the engine owns (one
  thread); cancelling or timing it out cancels its asyncio task
  (``CancelledError`` is raised inside it at its next ``await``).

The callable is ``"package.module:attribute.path"``, called with ``**args``
(plus ``input=`` when the task has a pipeline or dependency input). Its return
value must be msgpack data.

Agent tasks (kind ``"agent"``) are driven by ``agent_runner.AgentRunner``.
Usage: a sync call's CPU is its worker thread's CPU time, an async call's the
CPU time of its own steps; network bytes come from the runtime's HTTP clients
(``llmspell.net``). Calls with ``Limits`` are checked every
``limits.CHECK_INTERVAL`` seconds (see ``engines/limits.py``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from typing import Any

from .._actor import log
from .._clock import now
from .._context import _METER, Meter
from .._imports import import_target
from ..messages.config import DEFAULTS
from ..messages.types import (
    ProgressBatch,
    ProgressReport,
    ResourceGrant,
    StreamAck,
    TaskOutcome,
    TaskOutcomes,
    TaskSpec,
)
from . import _doorbell
from .agent_runner import AgentRunner, Timed
from .base import EngineActor
from .limits import CHECK_INTERVAL, Gate, Limit, Over, judge

__all__ = ["PythonEngine", "resolve_target"]


def resolve_target(target: str) -> Callable[..., Any]:
    """Import ``"package.module:attr.path"`` and return the object it names."""
    obj = import_target(target)
    if not callable(obj):
        raise TypeError(f"{target!r} is not callable")
    return obj  # type: ignore[no-any-return]


class _Call(Meter):
    """One call in flight; it is its own task's ``Meter`` (one object per task)."""

    __slots__ = (
        "attempt",
        "clock",
        "cpu0",
        "fn",
        "future",
        "gate",
        "kwargs",
        "limit",
        "priority",
        "queued",
        "started",
        "stopped",
        "sync",
        "task_id",
    )

    def __init__(
        self, task_id: str, attempt: int, fn: Callable[..., Any], kwargs: dict[str, Any], sync: bool
    ) -> None:
        self.task_id = task_id
        self.attempt = attempt
        self.fn = fn
        self.kwargs = kwargs
        self.future: concurrent.futures.Future[Any] | None = None
        self.started = 0.0
        self.queued = 0.0  # when it was queued for a worker thread (monotonic)
        self.priority = 1
        self.sync = sync
        self.stopped = False
        self.sent = 0
        self.received = 0
        self.cpu_seconds = 0.0
        self.limit: Limit | None = None
        self.gate: Gate | None = None
        self.clock: int | None = None  # CPU clock of the thread running a sync call
        self.cpu0 = 0.0


class PythonEngine(EngineActor):
    role = "python engine"
    engine = "python"
    default_capacity = DEFAULTS.python_capacity
    checks_values = True  # what a user's function returned

    def __init__(self) -> None:
        super().__init__()
        # set here, not in setup: every message is flushed, one that comes before
        # the engine was introduced (a ping, a poll) included
        self._to_pool: list[_Call] = []  # sync calls started, not yet handed to the workers

    def setup(self, config: dict[str, Any]) -> None:
        self.threads = int(config.get("python_threads", DEFAULTS.python_threads))
        self.done: queue.SimpleQueue[tuple[_Call, str, Any, Any]] = queue.SimpleQueue()
        self.pool = _Workers(self.threads, self._run_pooled, self.ring)
        # calls known to be fast run where the actors run (python_fast_inline):
        # embedded, on a caller that drives the loop (_doorbell); in a process of its
        # own (local, cluster mode), on the engine's own thread (_run_fast; its CPU clock)
        self._fast: dict[Callable[..., Any], int] = {}
        self.pool.fast = self._fast
        self._stealing = False
        self._own_thread: int | None = None
        if config.get("python_fast_inline", DEFAULTS.python_fast_inline) and not config.get(
            "python_inline", DEFAULTS.python_inline
        ):
            if self._bell is None:
                self._own_thread = _thread_clock()
            else:
                self.pool.helping = _doorbell.helping(self.runtime_id)
                if self.pool.helping is not None:
                    self._stealer = _CallerHelp(self)
                    _doorbell.add_stealer(self.runtime_id, self._stealer)
                    self._stealing = True
        self._unsticking = False  # an "unstick" wake-up is armed (queued calls)
        self.inline = bool(config.get("python_inline", DEFAULTS.python_inline))
        self._inline_loop: asyncio.AbstractEventLoop | None = None
        self.calls: dict[str, _Call] = {}
        self.targets: dict[str, tuple[Callable[..., Any], bool]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        self.agents = AgentRunner(self)
        self._watching = False  # a "watch" wake-up is armed (limits, live usage)

    # -- starting -----------------------------------------------------------

    def start(self, spec: TaskSpec, attempt: int) -> None:
        if spec.kind == "agent":
            self.agents.start(spec, attempt)
            return
        target = spec.target or ""
        try:
            found = self.targets.get(target)
            if found is None:
                fn = resolve_target(target)
                found = self.targets[target] = (fn, not asyncio.iscoroutinefunction(fn))
        except Exception as exc:
            self.report(
                spec.id,
                attempt,
                "failed",
                error=self.error(f"cannot import {target!r}: {type(exc).__name__}: {exc}"),
            )
            return
        # the spec was decoded for this engine alone: its args are ours to pass on
        kwargs = spec.args if spec.args is not None else {}
        if spec.input is not None:
            kwargs = {**kwargs, "input": spec.input}
        call = _Call(spec.id, attempt, found[0], kwargs, found[1])
        if spec.limits:
            call.limit = Limit.of(spec.limits)
            if spec.limits.get("memory_bytes") is not None:  # a tool's: not refusable earlier
                log.warning(
                    "task %s runs in the Python engine, whose memory every task there "
                    "shares: its Limits(memory_bytes=...) is not enforced (use cpu_seconds, "
                    "a Lua/JS tool, or Runtime(engine_memory=...) in mode='local')",
                    spec.id,
                )
            if call.limit is not None and not call.sync:
                call.gate = Gate()
        self.calls[spec.id] = call
        if self.inline:
            self._run_inline(call)
            return
        if not self._watching:
            self._watch_soon()  # limits, live usage
        if not call.sync:
            self._start_async(call)
        else:  # handed to the workers in one go when this message is done (flush)
            call.priority = spec.priority
            self._to_pool.append(call)

    def _run_inline(self, call: _Call) -> None:
        """Simulation: run the call now, on the actor's own thread, so the
        order of everything is decided by the seed alone (``python_inline``).
        ``async def`` callables run to completion on a private event loop."""
        if call.sync:
            self._run_sync(call)
        else:
            if self._inline_loop is None:
                self._inline_loop = asyncio.new_event_loop()
            call.started = now()
            try:
                value = self._inline_loop.run_until_complete(call.fn(**call.kwargs))
                self.done.put((call, "ok", value, 0.0))
            except BaseException as exc:
                self.done.put((call, "error", _describe(exc), 0.0))
        self.poll()

    def _run_pooled(self, call: _Call, clock: int) -> None:
        """A worker thread: run one sync call and queue its outcome; the pool
        rings the engine (``_Workers._work``)."""
        self._run_sync(call, clock, False)

    def _run_sync(self, call: _Call, clock: int | None = None, ring: bool = True) -> None:
        """Run one sync call and queue its outcome (on a worker thread, whose CPU
        clock is ``clock``, or a caller's: ``_CallerHelp``); ``ring``: ask to be
        polled once it is queued."""
        if call.stopped:  # (a caller took it after a cancel)
            return
        t0 = time.thread_time()
        call.started = now()
        call.cpu0 = t0
        call.clock = clock if clock is not None else _thread_clock()
        token = _METER.set(call)
        try:
            value = call.fn(**call.kwargs)
            self.done.put((call, "ok", value, time.thread_time() - t0))
        except BaseException as exc:  # report everything, even SystemExit
            self.done.put((call, "error", _describe(exc), time.thread_time() - t0))
        finally:
            call.clock = None
            _METER.reset(token)
            fast = self._fast  # runs in a row under _FAST_CALL: may a caller run it?
            fast[call.fn] = fast.get(call.fn, 0) + 1 if now() - call.started < _FAST_CALL else 0
            if ring:
                self.ring()

    def _start_async(self, call: _Call) -> None:
        loop = self._ensure_loop()
        call.started = now()
        try:
            coro = call.fn(**call.kwargs)
        except Exception as exc:  # wrong arguments fail before a coroutine exists
            self.report(
                call.task_id,
                call.attempt,
                "failed",
                error=self.error(*_describe(exc)[:1], traceback=_describe(exc)[1]),
            )
            del self.calls[call.task_id]
            return
        fut = asyncio.run_coroutine_threadsafe(_metered(coro, call), loop)
        call.future = fut

        def finished(f: concurrent.futures.Future[Any]) -> None:
            call.future = None  # (the future holds this callback: no cycle left)
            cpu = call.cpu_seconds
            if f.cancelled():
                self.done.put((call, "cancelled", None, cpu))
            elif f.exception() is not None:
                self.done.put((call, "error", _describe(f.exception()), cpu))  # type: ignore[arg-type]
            else:
                self.done.put((call, "ok", f.result(), cpu))
            self.ring()

        fut.add_done_callback(finished)
        self.work_started()

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            loop = asyncio.new_event_loop()
            t = threading.Thread(target=loop.run_forever, name="llmspell-python-async", daemon=True)
            t.start()
            self._loop, self._loop_thread = loop, t
        return self._loop

    # -- finishing ----------------------------------------------------------

    def poll(self) -> None:
        self.agents.poll()
        done = self.done
        if done.empty():
            return
        calls, get, empty, results = self.calls, done.get_nowait, done.empty, self._results
        t = now()
        while not empty():  # (this thread alone takes from it)
            call, how, value, cpu = get()
            task_id = call.task_id
            if calls.get(task_id) is not call:
                continue  # stopped (cancel, timeout): its outcome is already decided
            del calls[task_id]
            usage = {"cpu_seconds": cpu, "duration": t - call.started}
            if call.sent or call.received:
                usage.update(call.usage())
            if how == "ok":
                # msgpack-ability is checked when the batch is encoded (base.flush)
                results.append(TaskOutcome(task_id, "succeeded", value, None, usage, call.attempt))
            elif how == "error":
                message, tb = value
                self.report(
                    call.task_id,
                    call.attempt,
                    "failed",
                    usage=usage,
                    error=self.error(message, traceback=tb),
                )
            else:
                self.report(
                    call.task_id,
                    call.attempt,
                    "failed",
                    usage=usage,
                    error=self.error("the coroutine was cancelled"),
                )

    def busy(self) -> bool:
        return bool(self.calls) or self.agents.busy()

    def running_ids(self) -> list[str]:
        return [*self.calls, *self.agents.runs]

    def stop(self, task_id: str, reason: str) -> None:
        self.agents.stop(task_id)
        call = self.calls.pop(task_id, None)
        if call is None:
            return
        call.stopped = True
        # read once: the call may end on the loop's thread meanwhile (finished clears it)
        fut = call.future
        if fut is not None:
            fut.cancel()  # async: CancelledError inside the coroutine

    def close(self) -> None:
        if getattr(self, "_stealing", False):
            self._stealing = False
            _doorbell.remove_stealer(self.runtime_id, self._stealer)
        self.agents.close()
        for call in list(self.calls.values()):
            call.stopped = True
            fut = call.future  # (read once: see stop)
            if fut is not None:
                fut.cancel()
        self.calls.clear()
        self.pool.shutdown()
        if self._loop is not None:
            # Cancelled tasks need turns of the loop to end: a loop stopped at once left
            # them pending, and their "Task was destroyed" finalizer then ran at some
            # later garbage collection (once inside ast.parse, which CPython 3.11
            # reports as a SystemError there)
            if self._loop.is_running() and not _cancel_all(self._loop, 2.0):
                log.debug("python engine %d: its tasks did not all end", self.index)
            self._loop.call_soon_threadsafe(self._loop.stop)
            if self._loop_thread is not None:
                self._loop_thread.join(timeout=2)
            if not self._loop.is_running():
                self._loop.close()
        log.debug("python engine %d closed", self.index)

    # -- agents, streams, limits ------------------------------------------------------

    def on_outcomes(self, msg: TaskOutcomes, sender: Any) -> None:
        """Tool tasks an agent called have ended."""
        self.agents.on_outcomes(msg.items)

    def on_stream_ack(self, msg: StreamAck, sender: Any) -> None:
        self.agents.on_ack(msg.task_id, msg.seq)

    def on_resource_grant(self, msg: ResourceGrant, sender: Any) -> None:
        call = self.calls.get(msg.task_id)
        if call is not None and call.attempt == msg.attempt and call.limit is not None:
            call.limit.parked = False
            call.limit.cpu_at_grant = self._cpu_of(call)
            if call.gate is not None:
                call.gate.release()
            return
        self.agents.on_grant(msg.task_id, msg.attempt)

    def flush(self) -> None:
        if self._to_pool:
            calls, self._to_pool = self._to_pool, []
            if self._own_thread is not None:  # an engine process: fast calls run here
                calls = self._run_fast(calls)
            if calls:
                waits = self.pool.submit(calls)
                self.work_started()
                if waits and not self._unsticking:
                    self._unsticking = True
                    self.wake_after(_Workers.STALL, "unstick")
        # streamed chunks and progress before the results: a consumer sees every chunk
        # before the end, and the scheduler ignores progress of a task that has ended
        if self.scheduler is not None:
            if self.agents.chunks:
                for chunks in self.agents.take_chunks():
                    self.send_msg(self.scheduler, chunks)
            if self._progress:
                reports, self._progress = self._progress, []
                self.send_msg(self.scheduler, ProgressBatch(reports))
        super().flush()

    def _run_fast(self, calls: list[_Call]) -> list[_Call]:
        """(an engine in a process of its own) Run on this thread the calls whose
        function took under ``_FAST_CALL`` its last ``_FAST_RUNS`` runs, for up to
        ``_INLINE_TURN`` seconds (no hand-off to a worker thread and back, no wake-up
        through the pipe); the others are left for the worker threads."""
        fast, clock, rest = self._fast, self._own_thread, []
        ran = False
        until = now() + _INLINE_TURN
        for call in calls:
            if (
                call.limit is None
                and not call.stopped
                and fast.get(call.fn, 0) >= _FAST_RUNS
                and now() < until
            ):
                self._run_sync(call, clock, False)
                ran = True
            else:
                rest.append(call)
        if ran:
            self.poll()
        return rest

    def on_wakeup(self, payload: Any) -> None:
        if payload == "unstick":
            if self.pool.unstick():
                self.wake_after(_Workers.STALL, "unstick")
            else:
                self._unsticking = False
        elif payload == "watch":
            self._watching = False
            self._watch_calls()
        else:
            super().on_wakeup(payload)

    def _watch_soon(self) -> None:
        if not self._watching:
            self._watching = True
            limited = any(c.limit is not None for c in self.calls.values())
            self.wake_after(CHECK_INTERVAL if limited else _USAGE_INTERVAL, "watch")

    @staticmethod
    def _cpu_of(call: _Call) -> float:
        if call.sync:
            clock = call.clock
            if clock is None:
                return 0.0
            try:
                return time.clock_gettime(clock) - call.cpu0
            except OSError:  # the thread is gone
                return 0.0
        return call.cpu_seconds

    def _watch_calls(self) -> None:
        """Check running calls against their limits; report live usage of long calls."""
        self.poll()  # calls that ended are not judged
        t = now()
        for call in list(self.calls.values()):
            if call.stopped or not call.started:
                continue
            cpu = self._cpu_of(call)
            lim = call.limit
            if lim is not None and not lim.parked:
                over = lim.over(cpu, None)
                if over:
                    self._over(call, lim, over, cpu)
                    continue
            if t - call.started >= _USAGE_INTERVAL:
                usage = {"cpu_seconds": cpu, "duration": t - call.started}
                usage.update(call.usage())
                self.report_progress(ProgressReport(call.task_id, usage=usage))
        if self.calls:
            self._watch_soon()

    def _over(self, call: _Call, lim: Limit, over: list[Over], cpu: float) -> None:
        can_park = call.gate is not None  # a running sync call cannot be held
        v = judge(lim, over, task_id=call.task_id, engine=self.engine, what="task",
                  can_park=can_park)  # fmt: skip
        if v.action == "kill":
            self.stop(call.task_id, "resource limit")
            usage = {"cpu_seconds": cpu, "duration": now() - call.started}
            self.report(
                call.task_id,
                call.attempt,
                "failed",
                usage=usage,
                error=self.error(v.message, kind="resource"),
            )
        elif v.action == "park" and call.gate is not None:
            resource, used, limit = over[0]
            if self.park(
                call.task_id, call.attempt, lim, resource, used, limit, cpu - lim.cpu_at_grant
            ):
                call.gate.park()
        for payload in v.warnings:
            self.publish("llmspell.resource.warn", payload)


_USAGE_INTERVAL = 0.5  # seconds between live usage reports of a running call


def _cancel_all(loop: asyncio.AbstractEventLoop, wait: float) -> bool:
    """Cancel every task of ``loop`` (running on another thread) and wait up to
    ``wait`` seconds for them to end; True if they all did. A plain callback,
    not a coroutine: a loop too busy to run it leaves nothing unawaited."""
    ended = threading.Event()

    def cancel() -> None:
        left = set(asyncio.all_tasks(loop))
        if not left:
            ended.set()
            return

        def one(task: asyncio.Task[Any]) -> None:
            left.discard(task)
            if not left:
                ended.set()

        for task in list(left):
            task.add_done_callback(one)
            task.cancel()

    try:
        loop.call_soon_threadsafe(cancel)
    except RuntimeError:  # closed meanwhile
        return True
    return ended.wait(wait)


async def _metered(coro: Any, call: _Call) -> Any:
    """Run an async call with its meter set, counting the CPU of its steps."""
    token = _METER.set(call)
    try:
        return await Timed(coro, call, call.gate)
    finally:
        _METER.reset(token)


# A caller runs a call itself only when its function ran _FAST_RUNS times in a row in
# under _FAST_CALL seconds: until it returns, that caller sees no cancel, no end of its
# own wait (result(timeout=)) and no Ctrl-C (held back, as during any turn of the
# loop), so only a call that is all but sure to be short is worth saving the two
# thread switches for.
_FAST_CALL = 0.001
_FAST_RUNS = 3
# ... and an engine in a process of its own runs such calls on its own thread for at
# most this long a turn before it hands the rest to the worker threads
_INLINE_TURN = 0.002


class _CallerHelp:
    """(embedded) What a caller that drives the loop takes from this engine between
    turns: the next queued sync call, run on the caller's own thread (engines._doorbell)."""

    def __init__(self, engine: PythonEngine) -> None:
        self.engine = engine

    def steal(self) -> Callable[[], None] | None:
        call = self.engine.pool.steal()
        if call is None:
            return None
        run = self.engine._run_sync
        return lambda: run(call, None, True)

    def kick(self) -> None:
        self.engine.pool.kick()


class _Workers:
    """Worker threads sharing one priority queue of sync calls.

    The actor pushes calls; a worker pops the highest-priority call, runs it,
    queues the outcome and rings the engine's doorbell, then takes the next
    call without a round trip through the actor. Threads are added only as
    the queue needs them: a batch of calls wakes one thread when no awake
    thread is free, and another is woken (or started, up to ``size``) when the
    next queued call has waited ``STALL`` seconds, noticed by a worker taking
    a call or by the engine's ``unstick`` timer (all awake threads may be in
    long calls). So a stream of trivial calls runs on one thread without
    waking sixteen to fight over the GIL, and slow calls still fan out to
    parallel threads within milliseconds. A call stopped before a thread took
    it is skipped.

    A sleeping thread waits on a lock of its own (held while nobody woke it),
    and a thread rings the engine for the outcome of its last call just
    before it goes to sleep: the driving thread woken by that ring does not
    find the GIL still held by this thread's way to sleep.
    """

    STALL = 0.002

    def __init__(
        self, size: int, run: Callable[[_Call, int], None], ring: Callable[[], None]
    ) -> None:
        self.size = size
        self.run = run
        self.ring = ring  # the engine polls the outcomes queued
        # queued calls: a FIFO per priority (0 low .. 3 critical), highest served first
        self.levels: tuple[deque[_Call], ...] = (deque(), deque(), deque(), deque())
        self.queued = 0
        # ``with self.lock`` (C-fast) for the queues and the counts below
        self.lock = threading.Lock()
        self.sleepers: list[threading.Lock] = []  # sleeping threads' locks, latest last
        self.threads: list[threading.Thread] = []
        # Invariant (under lock): ready = awake threads not running a call
        # (including ones notified but not yet running); sleeping = waiting
        # threads not yet notified.
        self.ready = 0
        self.sleeping = 0
        self.closed = False
        # (embedded) whether the running thread is a caller that drives the loop and
        # takes a queued call itself between turns (``steal``)
        self.helping: Callable[[], bool] | None = None
        self.left = False  # submit left a lone call to such a caller
        self.fast: dict[Callable[..., Any], int] = {}  # the engine's, see _run_sync

    def submit(self, calls: list[_Call]) -> bool:
        """Queue calls (by their ``priority``); make sure a thread takes them.
        True when more calls are queued than threads are ready to take them
        (one may wait behind a long call: watch for it with ``unstick``).
        A lone call queued on a caller's thread that drives the loop is left to
        that caller (``steal``; it hands it back with ``kick`` if it leaves)."""
        levels = self.levels
        t = time.monotonic()
        helping = self.helping
        with self.lock:
            for call in calls:
                call.queued = t
                levels[min(max(call.priority, 0), 3)].append(call)
            self.queued += len(calls)
            if (
                self.queued == 1
                and helping is not None
                and calls[0].limit is None
                and self.fast.get(calls[0].fn, 0) >= _FAST_RUNS
                and helping()
            ):
                self.left = True
                return False
            fresh = self._add_thread() if self.ready == 0 else None
            waits = self.queued > self.ready
        if fresh is not None:
            fresh.start()
        return waits

    def steal(self) -> _Call | None:
        """(a caller's thread) The lone call ``submit`` left to it, taken off the
        queue, or None (calls in numbers are the worker threads')."""
        if not self.left:
            return None
        with self.lock:
            self.left = False
            if not self.queued or self.closed:
                return None
            return self._take()

    def kick(self) -> None:
        """(a caller that stops driving) Calls queued while no thread is ready get
        one, as ``submit`` would have done."""
        if not self.left:
            return
        with self.lock:
            self.left = False
            fresh = self._add_thread() if self.queued and self.ready == 0 else None
        if fresh is not None:
            fresh.start()

    def unstick(self) -> bool:
        """Add a thread if queued calls wait while every awake thread is busy.
        True while calls are queued and a thread could still be added (call
        again in ``STALL`` seconds); with every thread awake there is nothing
        to watch for: busy threads take the queued calls as they finish."""
        with self.lock:
            fresh = self._add_thread() if self._stalled() else None
            more = self.queued > 0 and (self.sleeping > 0 or len(self.threads) < self.size)
        if fresh is not None:
            fresh.start()
        return more

    def _stalled(self) -> bool:
        if not self.queued or self.ready:
            return False
        for level in reversed(self.levels):
            if level:
                return time.monotonic() - level[0].queued >= self.STALL
        return False

    def _take(self) -> _Call:
        """Under the lock, with calls queued: the next one (highest priority first)."""
        self.queued -= 1
        for level in reversed(self.levels):
            if level:
                return level.popleft()
        raise IndexError("no call queued")

    def _add_thread(self) -> threading.Thread | None:
        """Under the lock: wake a sleeping thread, or make one (returned, to be
        started once the lock is released)."""
        if self.sleepers:
            self.sleeping -= 1
            self.ready += 1
            self.sleepers.pop().release()  # the one that slept last (its cache is warm)
        elif len(self.threads) < self.size and not self.closed:
            self.ready += 1
            t = threading.Thread(target=self._work, name="llmspell-python", daemon=True)
            self.threads.append(t)
            return t
        return None

    def _work(self) -> None:
        lock, run, ring = self.lock, self.run, self.ring
        clock = _thread_clock()  # this thread's CPU clock, for live usage and limits
        me = threading.Lock()  # held while this thread sleeps and nobody woke it
        me.acquire()
        ran = False  # a call ended: this thread is ready again
        unrung = False  # an outcome was queued and the engine not yet rung for it
        while True:
            fresh = None
            lock.acquire()
            try:
                if ran:
                    ran = False
                    self.ready += 1
                while True:
                    if self.closed:
                        return
                    if self.queued:
                        call = self._take()
                        self.ready -= 1
                        break
                    self.ready -= 1
                    self.sleeping += 1
                    self.sleepers.append(me)
                    lock.release()
                    try:
                        if unrung:  # the last thing before sleeping (see the class)
                            unrung = False
                            ring()
                        me.acquire()
                    finally:
                        lock.acquire()
                if self.queued and self._stalled():
                    fresh = self._add_thread()
            finally:
                lock.release()
            if unrung:  # more calls to run: the engine hears of the last one now
                unrung = False
                ring()
            if fresh is not None:
                fresh.start()
            ran = True
            if not call.stopped:
                run(call, clock)
                unrung = True

    def shutdown(self) -> None:
        with self.lock:
            self.closed = True
            for level in self.levels:
                level.clear()
            self.queued = 0
            for sleeper in self.sleepers:
                sleeper.release()
            self.sleepers.clear()
            self.sleeping = 0


def _thread_clock() -> int:
    return time.pthread_getcpuclockid(threading.get_ident())


def _describe(exc: BaseException) -> tuple[str, str]:
    message = f"{type(exc).__name__}: {exc}"
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return message, tb
