"""``Runtime`` and ``AsyncRuntime``: the embedding facade over an actor system.

Both shells share one I/O-free core (``_Core``): it validates tasks, turns them
into wire specs, keeps one view per submitted task and matches replies to
requests. The actor system itself is owned by a driver (``_driver.py``); the
core hands it messages and gets every message addressed to the outside back
on the driver thread.

Lifecycle: ``Runtime()`` starts the actor system at once; ``close()`` cancels
what is unfinished, stops every actor and is idempotent; calls on a closed
runtime raise ``RuntimeClosed``; a closed runtime cannot be reopened.

Registrations (``register_tool``/``agent``/``hook``/``executor``) are sent to
the scheduler and answered before the call returns, so a task submitted after
them sees them, in every mode. Streams: the chunks of a streaming agent task
reach the facade that submitted it; ``stream()`` reads them and acknowledges
each one as it is taken (a slow reader holds the agent at ``buffer_size``
chunks in flight); chunks nobody reads are acknowledged on arrival and kept
for a later ``stream()`` call.
"""

from __future__ import annotations

import atexit
import os
import threading
import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from .._actor import log
from .._clock import now
from .._exceptions import JournalError, LlmspellError, MessageError, RuntimeClosed
from .._task import CoordinationResult, Handle, Progress, Strategy, Task, TaskInfo, new_task_id
from ..messages import Message, check_data, encode
from ..messages.options import timeout_problem
from ..messages.types import (
    STATUSES,
    TERMINAL,
    CancelReply,
    CancelTasks,
    Coordinate,
    CoordinationDone,
    EventInterest,
    ProgressReply,
    Publish,
    PublishBatch,
    QueryProgress,
    QueryStats,
    QueryStatus,
    QueryTasks,
    Register,
    Registered,
    Replaced,
    StatsReply,
    StatusReply,
    StreamAck,
    Subscribe,
    TaskError,
    TaskOutcome,
    TaskSpec,
    TasksReply,
    TraceTo,
    Unsubscribe,
    WatchTasks,
)
from .core import _CLOSED_KIND, RuntimeState, _Core, _public_status, _Stream, _streamed, _View
from .driver import Driver
from .subscription import Subscription
from .targets import wire_target
from .waiting import _check_return_when, _done_pending, _handle_list, _Report, _wait_time, _Waiter

_open_runtimes: weakref.WeakSet[Runtime] = weakref.WeakSet()


@atexit.register
def _close_open_runtimes() -> None:
    """Interpreter exit closes every runtime still open (no process left behind)."""
    for rt in list(_open_runtimes):
        try:
            rt.close()
        except Exception:  # pragma: no cover - best effort at exit
            pass


class Runtime:
    """A running llmspell actor system, for threaded or plain code.

    ``Runtime(mode="embedded")`` starts the actors in this process on a driver
    thread of their own. Every method is thread-safe. Use it as a context
    manager, or call ``close()``.

    A call that asks an actor (a "round trip": ``cancel``, ``status``,
    ``progress``, ``stats``, ``tasks``, the ``register_*`` calls, ``subscribe``)
    blocks until it answers, up to 30 s, then raises the builtin
    ``TimeoutError``; in local mode it raises ``LlmspellError`` when the process
    asked died before it answered (ask again: it was restarted). A task id this
    runtime did not submit (another client's, a task's child) costs one more
    round trip to the scheduler, to learn that it knows it. Every call but
    ``close``, ``state`` and ``mode`` raises ``RuntimeClosed`` on a closed
    runtime and ``RuntimeDegraded`` once a supervisor gave up.
    """

    def __init__(self, mode: str = "embedded", **config: Any) -> None:
        """Start the actor system; blocks until every actor answered (embedded:
        well under a second; local: seconds, up to 30 s).

        Raises:
            MessageError: an unknown mode or option, a bad value, or a setting
                this mode never reads (nothing was started).
            JournalError: ``journal`` names a file that cannot be used.
            LlmspellError: the actor system did not start (in time), a
                ``metrics_port`` is taken, or the served runtime at ``address``
                did not answer or refused the secret.
            RuntimeClosed: the served runtime stopped while this one attached.
        """
        self._core = _Core(mode, config)
        self._metrics: Any = None
        self._dropped_events = 0
        port = self._core.config.get("metrics_port")
        if port is not None:  # first: a taken port fails before any process starts
            from .._metrics import MetricsServer

            self._metrics = MetricsServer(int(port), self._metric_figures)
        self._stopped = False  # close() ran
        self._gone = ""  # why the served runtime went away (an attached client)
        self._driver: Driver = self._make_driver()
        try:
            addresses = self._driver.start()
        except BaseException:
            if self._metrics is not None:
                self._metrics.close()
            raise
        _open_runtimes.add(self)
        self._core.addresses = addresses
        self._scheduler = addresses["scheduler"]
        self._events = addresses["events"]
        self._emits: list[Publish] = []
        self._emit_lock = threading.Lock()
        self._core.ack = self._ack
        self._core.replaced = self._replaced
        self._core.owner = self
        self._core.state = RuntimeState.OPEN
        if self._gone:  # the served runtime stopped while this one attached
            self._lost(self._gone)
            self.close()
            raise RuntimeClosed(self._gone)
        if self._core.config.get("journal") is not None:
            self._journal_opened()
        self._start_tracing()

    def _journal_opened(self) -> None:
        """The scheduler opened the journal for good: raise its ``JournalError``
        if it could not (another runtime took the file after the check in
        ``_Core``), rather than hand back a runtime degraded from the start."""
        reply: StatsReply = self._ask(lambda ref: QueryStats(ref))
        degraded = str(reply.stats.get("degraded") or "")
        path = str(self._core.config["journal"])
        if path.startswith("memory:"):
            where = path
        else:
            where = os.path.abspath(path)
        prefix = f"the journal cannot be used: journal {where}: "
        if degraded.startswith(prefix):
            self.close()
            raise JournalError(degraded[len(prefix) :], path=where)

    def _start_tracing(self) -> None:
        """Trace this runtime's tasks when the application configured a tracer
        provider (looked at once, here) and ``tracing`` is not False."""
        from .._tracing import Spans, tracer_for

        tracer = tracer_for(bool(self._core.config.get("tracing", True)))
        if tracer is None:
            return
        self._core.spans = Spans(tracer)
        try:
            self._ask(lambda ref: TraceTo(ref, True))
        except BaseException:
            self.close()
            raise

    def _sync(self) -> Runtime:
        """The runtime a handle's blocking calls go to."""
        return self

    def _make_driver(self) -> Driver:
        from .._driver import EmbeddedDriver, LocalDriver

        core = self._core
        if core.mode == "embedded":
            core.hand_over = True  # (EmbeddedDriver.send takes a message object too)
            return EmbeddedDriver(core.runtime_id, core.config, core.on_message)
        driver: type[LocalDriver] = LocalDriver
        if core.mode == "cluster":
            from .._cluster import ClusterDriver

            driver = ClusterDriver
        attach = core.config.get("address")
        return driver(
            core.runtime_id,
            core.config,
            core.on_served_message if attach else core.on_message,
            attach=attach,
            secret=core.secret,
            on_lost=self._lost,
        )

    # -- lifecycle ----------------------------------------------------------

    @property
    def state(self) -> RuntimeState:
        """The runtime's lifecycle state (``RuntimeState``); reads memory, never blocks."""
        return self._core.state

    @property
    def mode(self) -> str:
        """``"embedded"``, ``"local"`` or ``"cluster"``; never blocks."""
        return self._core.mode

    def close(self) -> None:
        """Cancel every unfinished task and stop the actor system. Idempotent;
        blocks until the actors are stopped, up to 10 s (local mode: then kills
        the processes that did not stop within ``supervision.shutdown_timeout``,
        5 s by default). Raises nothing; whoever waits on this runtime is woken
        (its tasks end ``cancelled``, its calls raise ``RuntimeClosed``)."""
        if self._stopped:
            return
        self._stopped = True
        spans = self._core.spans
        if spans is not None and self._driver.mode == "local":
            try:  # an attached runtime's scheduler lives on: stop sending us records
                self._driver.send(self._scheduler, encode(TraceTo(0, False)))
            except Exception:
                pass
        self._core.state = RuntimeState.CLOSED
        _open_runtimes.discard(self)
        if self._metrics is not None:
            self._metrics.close()
        self._driver.stop()
        if spans is not None:
            spans.end_all()
        for subscription in list(self._core.subscriptions.values()):
            subscription.close()
        with self._core.lock:  # questions nobody will answer now: RuntimeClosed
            waiters: list[Callable[[Any], None]] = [
                *self._core.coordinations.values(),
                *self._core.replies.values(),
            ]
            self._core.coordinations.clear()
            self._core.replies.clear()
        for waiter in waiters:
            waiter(None)
        closed = TaskError("the runtime was closed").wire()
        self._core.resolve_many(
            [
                TaskOutcome(task_id, "cancelled", error=closed)
                for task_id, entry in list(self._core.views.items())
                if type(entry) is not tuple
            ]
        )

    def _lost(self, why: str) -> None:
        """An attached client's served runtime went away (driver thread): every
        call from now on, and every one blocked now, raises ``RuntimeClosed``."""
        core = self._core
        if core.state is RuntimeState.STARTING:
            self._gone = why  # __init__ finishes, then ends it
            return
        if core.state is not RuntimeState.OPEN:
            return
        core.state = RuntimeState.CLOSED
        for subscription in list(core.subscriptions.values()):
            subscription.close()
        with core.lock:
            waiters: list[Callable[[Any], None]] = [
                *core.coordinations.values(),
                *core.replies.values(),
            ]
            core.coordinations.clear()
            core.replies.clear()
        for waiter in waiters:
            waiter(None)
        gone = TaskError(f"{why}; create a new Runtime", kind=_CLOSED_KIND).wire()
        core.resolve_many(
            [
                TaskOutcome(task_id, "cancelled", error=gone)
                for task_id, entry in list(core.views.items())
                if type(entry) is not tuple
            ]
        )

    def _replaced(self, msg: Replaced) -> None:
        """local mode: a runtime process died and the director restarted it
        (driver thread). Calls go to the new one from now on; what this
        facade waits on is asked again (a new scheduler resumed it from the
        journal) or ends saying which process crashed."""
        core = self._core
        core.addresses[msg.role] = msg.address
        why = msg.crashed
        log.warning("%s; it was restarted", why)
        if msg.role in ("scheduler", "events", "resources", "director"):
            with core.lock:  # a question to it, or its answer, is lost with it
                replies = list(core.replies.values())
                core.replies.clear()
            for reply in replies:
                if isinstance(reply, _Waiter):  # (the only kind there is)
                    reply.lost = why
                    reply(None)
        if msg.role == "scheduler":
            self._scheduler = msg.address
            with core.lock:
                waiting = [task_id for task_id, e in core.views.items() if type(e) is not tuple]
            if msg.journaled:
                if waiting:
                    self._driver.send(msg.address, encode(WatchTasks(waiting)))
            else:
                error = {"message": f"{why}; the task was lost with it", "kind": "failed"}
                core.resolve_many([TaskOutcome(t, "failed", error=dict(error)) for t in waiting])
            if core.spans is not None:
                self._driver.send(msg.address, encode(TraceTo(0, True)))
        elif msg.role == "events":
            import time

            self._events = msg.address
            # an event published while no bus ran is lost (there is no journal of
            # events): every subscription is told so, whatever its pattern, before
            # the new bus's first event
            lost = {
                "name": "llmspell.events.lost",
                "payload": {
                    "reason": f"{why}; events published before it was restarted were lost",
                    "pid": msg.pid,
                },
                "time": time.time(),
            }
            for sub in list(core.subscriptions.values()):
                sub._deliver([dict(lost)])
                self._driver.send(
                    msg.address, encode(Subscribe(sub.sub_id, sub.pattern, sub.limit))
                )
        elif msg.role == "coordinator":
            from ..actors.aggregators import empty_result

            with core.lock:
                coordinations = dict(core.coordinations)
                core.coordinations.clear()
            message = f"{why} while the coordination ran"
            for coord_id, waiter in coordinations.items():
                strategy, n = waiter.what
                waiter(CoordinationDone(coord_id, empty_result(strategy, n, message)))

    def __enter__(self) -> Runtime:
        """The runtime itself (already started); never blocks."""
        return self

    def __exit__(self, *exc: object) -> None:
        """``close()``: blocks as it does."""
        self.close()

    def __repr__(self) -> str:
        return f"<Runtime mode={self.mode!r} state={self.state.value!r}>"

    # -- tasks --------------------------------------------------------------

    def submit(self, task: Task) -> Handle:
        """Queue ``task``; returns its handle at once (never blocks on the task).

        Raises:
            MessageError: the task is malformed or its id is already used;
                nothing was queued.
            RuntimeClosed: the runtime is closed.
            RuntimeDegraded: a supervisor gave up.
        """
        return self.submit_many([task])[0]

    def submit_many(self, tasks: Iterable[Task]) -> list[Handle]:
        """Queue several tasks; all or none are queued (every task is checked
        before any is sent). Never blocks on the tasks themselves: a big batch
        without dependencies goes to the scheduler in several messages (the
        first tasks run while it takes in the rest); one with dependencies in
        one. Raises ``MessageError`` for the first bad task or a used id
        (nothing queued), ``RuntimeClosed`` on a closed runtime and
        ``RuntimeDegraded`` once a supervisor gave up."""
        handles, payloads = self._core.submit_payload(tasks)
        for payload in payloads:
            self._driver.send(self._scheduler, payload)
        return handles

    def result(self, handle: Handle | str, timeout: float | None = None) -> Any:
        """Wait for the task and return its value. Blocks until the task ends
        or ``timeout`` seconds passed (None: for ever); a task that already
        ended answers at once.

        Raises:
            TaskFailed: the task failed (``ScriptError``, ``ResourceLimitExceeded``
                for scripts and limits).
            TaskCancelled: the task was cancelled (``close()`` cancels).
            TaskTimeout: the task's own ``timeout`` ran out.
            TimeoutError: *this call's* ``timeout`` ran out; the task goes on.
            MessageError: an unknown task, a bad ``timeout``, or a submission
                the scheduler refused.
            RuntimeDegraded: a supervisor gave up (also while waiting).
            RuntimeClosed: an attached client's served runtime went away.
        """
        core = self._core
        if type(handle) is Handle and not core.degraded:  # it succeeded
            ended = handle._ended
            if ended is not None and ended[0] == "succeeded":
                return ended[1]
        try:
            task_id, v = core.view(handle)
        except MessageError:
            if not isinstance(handle, str):
                raise
            task_id, v = core.view(self._adopt(handle))
        wait = _wait_time(timeout)
        if v.outcome is None:
            wait = self._driver.run_until(
                lambda: v.outcome is not None or bool(core.degraded), wait
            )
        if not core.wait(v, wait):
            core.check_degraded()
            raise TimeoutError(
                f"task {task_id!r} did not finish within {timeout} s (it is still running)"
            )
        core.check_degraded()  # woken because the runtime degraded
        assert v.outcome is not None
        return _Core.value_of(task_id, v.outcome)

    def cancel(self, handle: Handle | str) -> bool:
        """Cancel the task. Returns True if it had not finished (it then ends
        ``cancelled``, and tasks depending on it fail); False if it had
        already ended. Idempotent. A task id this runtime did not submit (one
        ``tasks()`` lists: another client's, a task's child) is cancelled too.
        Blocks for one round trip to the scheduler (none when the task had
        ended); raises ``MessageError`` for an unknown task."""
        try:
            task_id, v = self._core.view(handle)
        except MessageError:
            task_id = self._foreign(handle)
            reply_: CancelReply = self._ask(lambda ref: CancelTasks([task_id], ref=ref))
            return task_id in reply_.cancelled
        if v.outcome is not None:
            return False
        self._core.check_open()
        reply: CancelReply = self._ask(lambda ref: CancelTasks([task_id], ref=ref))
        return task_id in reply.cancelled

    def status(self, handle: Handle | str) -> str:
        """``pending``, ``running``, ``succeeded``, ``failed``, ``cancelled`` or
        ``timed_out``. Blocks for at most one round trip to the scheduler (none
        once the task's end is known here; an unfinished task of a closed
        runtime is ``cancelled``). Raises ``MessageError`` for an unknown task."""
        try:
            task_id, v = self._core.view(handle)
        except MessageError:
            return _public_status(self._foreign_status(self._foreign(handle)))
        if v.outcome is not None:
            return _public_status(v.outcome.status)
        if self._core.state is not RuntimeState.OPEN:
            return "cancelled"
        reply: StatusReply = self._ask(lambda ref: QueryStatus(ref, [task_id]))
        status = reply.statuses.get(task_id, "pending")
        return "pending" if status == "unknown" else status

    def is_completed(self, handle: Handle | str) -> bool:
        """True when the task has ended (its ``status`` is terminal). Blocks as ``status``
        does (at most one round trip to the scheduler) and raises what it raises."""
        return self.status(handle) in TERMINAL

    def progress(self, handle: Handle | str) -> Progress | None:
        """The task's last reported progress and resource use; None before it
        reported anything. A finished task keeps its final figures. Blocks for
        one round trip to the scheduler; raises ``MessageError`` for an unknown
        task."""
        try:
            task_id, v = self._core.view(handle)
        except MessageError:
            task_id = self._foreign(handle)
            reply_: ProgressReply = self._ask(lambda ref: QueryProgress(ref, task_id))
            return None if reply_.progress is None else Progress.from_dict(reply_.progress)
        self._core.check_open()
        reply: ProgressReply = self._ask(lambda ref: QueryProgress(ref, task_id))
        if reply.progress is not None:
            return Progress.from_dict(reply.progress)
        if v.outcome is not None:  # the scheduler forgot it (history): its final usage
            return Progress.from_dict({"resource_usage": v.outcome.usage})
        return None

    def wait(
        self,
        handles: Iterable[Handle | str],
        timeout: float | None = None,
        return_when: str = "all",
    ) -> tuple[list[Handle | str], list[Handle | str]]:
        """Wait until all (``return_when="all"``) or the first
        (``"first"``) of ``handles`` ended, or ``timeout`` seconds passed.

        Returns ``(done, pending)``: the handles that ended and those that did
        not, each list in the order given (a task named twice counts once).
        A timeout that runs out is not an error here: ``pending`` says what
        is left. Nothing is cancelled. Blocks until then (``timeout`` None: for
        ever); raises ``MessageError`` for a bad handle list, an unknown task,
        a bad ``timeout`` or ``return_when``.
        """
        _check_return_when(return_when)
        items = _handle_list(handles)
        wait = _wait_time(timeout)
        views = self._views(items)
        if not views:
            return [], []
        need = len(views) if return_when == "all" else 1
        lock = threading.Lock()
        enough = threading.Event()
        ended = [0]

        def one_ended(_o: TaskOutcome) -> None:
            with lock:
                ended[0] += 1
                if ended[0] >= need:
                    enough.set()

        for v in views:
            self._core.on_done(v, one_ended)
        try:
            enough.wait(self._driver.run_until(enough.is_set, wait))
        finally:
            for v in views:
                self._core.off_done(v, one_ended)
        return _done_pending(items, views)

    def as_completed(
        self, handles: Iterable[Handle | str], timeout: float | None = None
    ) -> Iterator[Handle | str]:
        """Yield ``handles`` as their tasks end (ended ones first, in the order
        given). ``timeout`` bounds the whole iteration: when it runs out with
        tasks still running, the builtin ``TimeoutError`` is raised (the tasks
        go on). Each ``next`` blocks until a task ends or ``timeout`` runs out.
        Bad arguments (``MessageError``) raise at the call, not at the first
        ``next``."""
        items = _handle_list(handles)
        wait = _wait_time(timeout)
        views = self._views(items)
        return self._as_completed(items, views, wait, timeout)

    def _as_completed(
        self,
        items: list[Handle | str],
        views: list[_View],
        wait: float | None,
        timeout: float | None,
    ) -> Iterator[Handle | str]:
        import queue

        ended: queue.SimpleQueue[int] = queue.SimpleQueue()
        callbacks = []
        for i, v in enumerate(views):
            cb = _Report(ended, i)
            callbacks.append(cb)
            self._core.on_done(v, cb)
        deadline = None if wait is None else now() + wait
        try:
            for n in range(len(items)):
                left = None if deadline is None else max(0.0, deadline - now())
                left = self._driver.run_until(lambda: not ended.empty(), left)
                try:
                    i = ended.get(timeout=left) if left != 0.0 else ended.get_nowait()
                except queue.Empty:
                    raise TimeoutError(
                        f"{len(items) - n} of {len(items)} tasks did not finish within "
                        f"{timeout} s (they are still running)"
                    ) from None
                yield items[i]
        finally:
            for v, cb in zip(views, callbacks, strict=True):
                self._core.off_done(v, cb)

    def stats(self) -> dict[str, Any]:
        """Counters: ``submitted``, ``running``, per-status totals, ``restarts``
        and ``engines`` (and ``events``, ``resources``; local mode ``processes``).
        Blocks for one round trip to each actor asked (scheduler, event bus,
        resource tracker, local mode's director), one after the other."""
        self._core.check_open()
        reply: StatsReply = self._ask(lambda ref: QueryStats(ref))
        bus: StatsReply = self._ask(lambda ref: QueryStats(ref), to=self._events)
        stats = dict(reply.stats)
        stats["events"] = dict(bus.stats, dropped=self._dropped_events)
        tracker = self._core.addresses.get("resources")
        if tracker is not None:
            res: StatsReply = self._ask(lambda ref: QueryStats(ref), to=tracker)
            resources = dict(res.stats)
            procs = {(e["engine"], e["index"]): e for e in resources.pop("engines", [])}
            for e in stats.get("engines", []):
                proc = procs.get((e.get("engine"), e.get("index")))
                if proc is not None:
                    e["rss"] = proc["rss"]
                    e["cpu_percent"] = proc["cpu_percent"]
                    e["over_memory"] = proc["over_memory"]
            stats["resources"] = resources
        director = self._core.addresses.get("director")
        if self._core.mode == "local" and director is not None:
            pids: StatsReply = self._ask(lambda ref: QueryStats(ref), to=director)
            stats["processes"] = dict(pids.stats.get("processes") or {})
        return stats

    def tasks(self, status: str | None = None) -> list[TaskInfo]:
        """The tasks the runtime knows, oldest first: every unfinished one and
        the last ``history`` (a runtime option, default 1,000) that ended.
        ``status`` (``pending``, ``running``, ``succeeded``, ``failed``,
        ``cancelled``, ``timed_out``) keeps only those. Blocks for one round
        trip to the scheduler.

        Raises:
            MessageError: ``status`` is not one of those.
            RuntimeClosed: the runtime is closed.
        """
        if status is not None and status not in STATUSES:
            raise MessageError(
                f"unknown status {status!r}; use one of {', '.join(STATUSES)}", where="status"
            )
        self._core.check_open()
        reply: TasksReply = self._ask(lambda ref: QueryTasks(ref, status))
        return [
            TaskInfo(
                str(row[0]),
                str(row[1]),
                _public_status(str(row[2])),
                int(row[3]),
                float(row[4]),
                None if row[5] is None else float(row[5]),
            )
            for row in reply.tasks
        ]

    def _foreign(self, handle: Handle | str) -> str:
        """The id of a task this facade did not submit, if the scheduler knows it;
        else the ``MessageError`` of an unknown task, again."""
        self._core.check_open()
        if isinstance(handle, str) and self._foreign_status(handle) != "unknown":
            return handle
        self._core.view(handle)  # raises the usual "unknown task" error
        raise MessageError(f"unknown task {handle!r}", where="handle")  # pragma: no cover

    def _views(self, items: list[Handle | str]) -> list[_View]:
        """The views of ``items`` to wait on; an id this facade did not submit
        (an earlier process's, another client's) is adopted, as ``result`` does."""
        core = self._core
        views = []
        for h in items:
            try:
                views.append(core.view(h)[1])
            except MessageError:
                if not isinstance(h, str):
                    raise
                views.append(core.view(self._adopt(h))[1])
        return views

    def _adopt(self, handle: str) -> str:
        """Wait on a task this facade did not submit (another client's, a task's
        child, one of an earlier process on the same journal): known to the
        scheduler, or the usual ``MessageError``. Returns its id."""
        task_id = self._foreign(handle)
        core = self._core
        with core.lock:
            if task_id not in core.views:
                core.views[task_id] = None
        self._driver.send(self._scheduler, encode(WatchTasks([task_id])))
        return task_id

    def _foreign_status(self, task_id: str) -> str:
        reply: StatusReply = self._ask(lambda ref: QueryStatus(ref, [task_id]))
        return str(reply.statuses.get(task_id, "unknown"))

    def _metric_figures(self) -> dict[str, Any]:
        """The scheduler's metric figures and the events this facade dropped
        (``llmspell._metrics``; called at each scrape, on the server's thread)."""
        if self._core.state is not RuntimeState.OPEN:
            return {}
        reply: TasksReply = self._ask(lambda ref: QueryTasks(ref, metrics=True))
        figures = dict(reply.metrics or {})
        figures["dropped"] = self._dropped_events
        return figures

    # -- registrations --------------------------------------------------------

    def register_tool(
        self,
        name: str,
        target: Any,
        schema: Mapping[str, Any] | None = None,
        *,
        description: str | None = None,
    ) -> None:
        """Register tool ``name``: ``"module:function"`` (called with the params
        as keyword arguments) or a ``Task.lua``/``Task.js`` template (params as
        ``spell.args``). ``schema`` (JSON-schema-like, see ``llmspell.schema``)
        checks every call's params; ``description`` is what agents tell a model.
        Registering a name again replaces it. Blocks until the scheduler took
        it (a round trip), so a task submitted after sees it. Raises
        ``MessageError`` for a bad name, target or schema."""
        self._register("tool", name, wire_target("tool", target, schema, description))

    def register_agent(self, name: str, target: Any) -> None:
        """Register agent ``name``: ``"module:attribute"`` naming an object (or a
        class made with no arguments) with ``run(input)`` or ``stream(input)``,
        or an object with ``llmspell_spec()`` (``llmspell.agents.OpenAIChat``).
        Blocks for a round trip as ``register_tool``; raises ``MessageError``
        for a bad name or target."""
        self._register("agent", name, wire_target("agent", target))

    def register_hook(self, point: str, target: Any) -> None:
        """Run ``target`` at hook ``point`` (see ``docs/events-and-hooks.md``):
        ``"module:function"`` gets the payload as keyword arguments, a
        ``Task.lua``/``Task.js`` template as ``spell.args``. Hooks add up.
        Blocks for a round trip as ``register_tool``; raises ``MessageError``
        for an unknown point or a bad target."""
        from ..messages.options import HOOK_POINTS

        if point not in HOOK_POINTS:
            raise MessageError(
                f"unknown hook point {point!r}; use one of {', '.join(HOOK_POINTS)}",
                where="point",
            )
        self._register("hook", point, wire_target("hook", target))

    def register_executor(self, kind: str, target: Any) -> None:
        """Run ``Task.custom(kind, payload)`` with ``target`` (a dict payload as
        keyword arguments / ``spell.args``, anything else as ``payload``).
        Blocks for a round trip as ``register_tool``; raises ``MessageError``
        for a bad kind or target."""
        self._register("executor", kind, wire_target("executor", target))

    def _register(self, what: str, name: str, target: dict[str, Any]) -> None:
        self._core.check_open()
        if not isinstance(name, str) or not name:
            raise MessageError(f"must be a non-empty str, got {name!r}", where="name")
        reply: Registered = self._ask(lambda ref: Register(ref, what, name, target))
        if reply.error:
            raise MessageError(reply.error, where=what)

    # -- streams --------------------------------------------------------------

    def stream(self, task: Task | Handle | str, *, timeout: float | None = None) -> Iterator[Any]:
        """The chunks of a streaming agent task, as they come.

        Given a ``Task`` it is submitted with this reader attached from the
        start; given a handle, the reader gets every chunk not yet read. Each
        chunk is acknowledged when taken, so the agent runs at most its
        ``buffer_size`` chunks ahead of this reader. Iteration ends when the
        task ends (raising its error if it failed, like ``result``); a
        ``timeout`` that runs out before the next chunk raises ``TimeoutError``.
        Leaving the loop early releases the agent (chunks are then no longer
        held for this reader). The call itself never blocks; it raises
        ``MessageError`` for a bad task, handle or ``timeout`` and
        ``RuntimeClosed``/``RuntimeDegraded`` as ``submit``.
        """
        core = self._core
        wait = _wait_time(timeout)  # checked before anything is submitted
        if isinstance(task, Task):
            (spec,) = core.specs([task])
            s = core.streams[spec.id] = _Stream(attached=True)
            self._driver.send(self._scheduler, core.submit_message([spec]))
            task_id, v = core.view(spec.id)
        else:
            task_id, v = core.view(task)
            with core.lock:
                found = core.streams.get(task_id)
                if found is None:
                    found = core.streams[task_id] = _Stream()
            s = found
            with s.cond:
                s.attached = True
        return self._read_stream(task_id, v, s, wait)

    def _read_stream(
        self, task_id: str, v: _View, s: _Stream, timeout: float | None
    ) -> Iterator[Any]:
        def more() -> bool:
            return bool(s.chunks) or (v.outcome is not None and s.taken >= _streamed(v.outcome))

        def ended_or_more() -> bool:
            return more() or v.outcome is not None

        try:
            while True:
                wait = self._driver.run_until(ended_or_more, timeout)
                with s.cond:
                    if not s.cond.wait_for(ended_or_more, wait):
                        raise TimeoutError(f"no chunk of task {task_id!r} within {timeout} s")
                    late = not more()
                if late:  # ended, its last batch overtaken by its end: soon here
                    wait = self._driver.run_until(more, _LATE_CHUNKS)
                    with s.cond:
                        s.cond.wait_for(more, wait)
                with s.cond:
                    if not s.chunks:
                        assert v.outcome is not None
                        n = _streamed(v.outcome)
                        if v.outcome.status == "succeeded" and s.taken < n:
                            raise LlmspellError(
                                f"task {task_id!r} streamed {n} chunks but {n - s.taken} of "
                                f"them never arrived within {_LATE_CHUNKS:g} s of its end"
                            )
                        break
                    chunk = s.chunks.popleft()
                    s.taken += 1
                    taken = s.taken
                self._ack(task_id, taken)
                yield chunk
            assert v.outcome is not None
            if v.outcome.status != "succeeded":
                self._core.check_degraded()
                _Core.value_of(task_id, v.outcome)
        finally:
            with s.cond:
                s.attached = False
                pos = s.pos
            if v.outcome is None:
                self._ack(task_id, pos)

    def _ack(self, task_id: str, seq: int) -> None:
        if self._core.state is RuntimeState.OPEN:
            self._driver.send(self._scheduler, encode(StreamAck(task_id, seq)))

    # -- coordination ---------------------------------------------------------

    def coordinate(
        self,
        tasks: Iterable[Task],
        strategy: Strategy | str,
        *,
        timeout: float | None = None,
        inputs: list[Any] | None = None,
    ) -> CoordinationResult:
        """Run ``tasks`` under one strategy (see ``Strategy``) and wait for the
        ``CoordinationResult``. Blocks until every task ended (no limit of its
        own); a coordination ``timeout`` cancels what is left and returns a
        result with ``timed_out`` set (it does not raise).

        Raises:
            MessageError: a bad task, strategy, ``timeout`` or ``inputs``, or a
                used id (nothing ran).
            RuntimeClosed: the runtime closed while the coordination ran.
            RuntimeDegraded: a supervisor gave up (also while it ran).
        """
        strat = Strategy.parse(strategy)
        problem = timeout_problem(timeout)
        if problem is not None:
            raise MessageError(problem, where="timeout")
        if inputs is not None:
            if isinstance(inputs, (str, bytes, dict)) or not isinstance(inputs, Iterable):
                raise MessageError(
                    f"must be a list of inputs, got {type(inputs).__name__}", where="inputs"
                )
            if strat is not Strategy.PIPELINE:
                raise MessageError("inputs=... is for Strategy.PIPELINE only", where="inputs")
            inputs = list(inputs)
            check_data(inputs, "inputs")
        spans = self._core.spans
        if spans is None:
            specs = self._core.specs(tasks)
            self._check_compensations(specs)
            return self._coordinate(specs, strat.value, timeout, inputs)
        with spans.workflow(strat.value) as span:
            specs = self._core.specs(tasks)
            self._check_compensations(specs)
            result = self._coordinate(specs, strat.value, timeout, inputs)
            spans.coordination_ended(span, result)
            return result

    def _check_compensations(self, specs: list[TaskSpec]) -> None:
        """A compensation's id must be new: one taken by a member, another
        compensation or an earlier task would never run (the scheduler refuses a
        taken id) and the rollback would wait for it."""
        seen = {spec.id for spec in specs}
        for i, spec in enumerate(specs):
            comp = spec.compensate
            if comp is None:
                continue
            if comp.id in seen or comp.id in self._core.views:
                raise MessageError(
                    f"task id {comp.id!r} is already used", where=f"tasks[{i}].compensate.id"
                )
            seen.add(comp.id)

    def _coordinate(
        self, specs: list[TaskSpec], strategy: str, timeout: float | None, inputs: list[Any] | None
    ) -> CoordinationResult:
        coordinator = self._core.addresses.get("coordinator")
        if coordinator is None:
            raise LlmspellError("this runtime has no coordinator")
        coord_id = f"coord-{new_task_id()}"  # a simulation's repeat with its seed
        w = _Waiter()
        w.what = (strategy, len(specs))
        with self._core.lock:
            self._core.coordinations[coord_id] = w
        self._driver.send(
            coordinator, encode(Coordinate(coord_id, specs, strategy, timeout, inputs))
        )
        w.event.wait(self._driver.run_until(w.event.is_set, None))
        self._core.check_degraded()
        if w.msg is None:
            raise RuntimeClosed("the runtime closed while the coordination ran")
        result = w.msg.result
        self._settle_views(specs, result, inputs is not None)
        return CoordinationResult.from_dict(result)

    def _settle_views(self, specs: list[TaskSpec], result: dict[str, Any], staged: bool) -> None:
        """Give the coordinated tasks' handles their outcomes, so ``result(h)``
        and ``status(h)`` answer for them like for any submitted task."""
        failed = {int(i): str(m) for i, m in result.get("failed", [])}
        cancelled = {int(i) for i in result.get("cancelled", [])}
        values = result.get("results") or []
        statuses = result.get("statuses") or []
        errors = result.get("errors") or []
        for i, spec in enumerate(specs):
            if not staged and i < len(statuses) and statuses[i] != "succeeded":
                error = errors[i] if i < len(errors) and isinstance(errors[i], dict) else None
                if error is None and i in failed:
                    error = TaskError(failed[i]).wire()
                elif error is None:
                    error = TaskError("cancelled by its coordination").wire()
                o = TaskOutcome(spec.id, str(statuses[i]), None, error)
            elif staged:  # pipeline over inputs: the stages ran as per-input clones
                o = (
                    TaskOutcome(spec.id, "succeeded")
                    if result.get("ok")
                    else TaskOutcome(
                        spec.id, "failed", error=TaskError("the pipeline did not succeed").wire()
                    )
                )
            elif i in failed:
                o = TaskOutcome(spec.id, "failed", error=TaskError(failed[i]).wire())
            elif i in cancelled:
                o = TaskOutcome(
                    spec.id, "cancelled", error=TaskError("cancelled by its coordination").wire()
                )
            else:
                o = TaskOutcome(spec.id, "succeeded", values[i] if i < len(values) else None)
            self._core.resolve(o)

    def run_workflow(self, path_or_dict: str | Path | Mapping[str, Any]) -> CoordinationResult:
        """Run a workflow file (YAML or JSON) or dict; see API.md "Workflow files".

        Blocks until the workflow ended, as ``coordinate``. Raises
        ``MessageError`` listing every problem of a malformed workflow, before
        anything runs, and what ``coordinate`` raises.
        """
        from ..workflow import load_workflow

        return self._run_loaded_workflow(load_workflow(path_or_dict))

    def _run_loaded_workflow(self, wf: Any) -> CoordinationResult:
        """Run a ``workflow.Workflow`` already loaded (its task ids are known to
        the caller: the CLI's progress display polls them)."""
        self._core.check_open()
        spans = self._core.spans
        if spans is None:
            return self._coordinate(
                self._core.register_specs(wf.tasks), wf.strategy, wf.timeout, None
            )
        with spans.workflow(str(wf.name)) as span:
            self._core.trace(wf.tasks)
            specs = self._core.register_specs(wf.tasks)
            result = self._coordinate(specs, wf.strategy, wf.timeout, None)
            spans.coordination_ended(span, result)
            return result

    def _inject_crash(self, engine: str, index: int = 0) -> None:
        """Fault injection for tests: make engine ``engine``/``index`` die now."""
        from ..messages.types import CrashEngine

        self._core.check_open()
        self._driver.send(self._scheduler, encode(CrashEngine(engine, index)))

    def _request_stop(self) -> None:
        """Ask the process serving this (attached) runtime to shut it down."""
        from ..messages.types import RequestStop

        if self._core.state is not RuntimeState.OPEN:  # a degraded runtime can still be stopped
            raise RuntimeClosed("this runtime is closed; create a new Runtime")
        self._driver.send(self._scheduler, encode(RequestStop("stop requested by a client")))

    # -- events -------------------------------------------------------------

    def emit(self, event: str, payload: Any = None) -> None:
        """Publish an event (glob subscribers and waiting scripts see it). Never
        waits for an answer (embedded: the driver thread sends it, in order
        with the emits before it); raises ``MessageError`` for a bad name or a
        payload msgpack cannot carry."""
        self._core.check_open()
        if not isinstance(event, str) or not event:
            raise MessageError("must be a non-empty str", where="event")
        check_data(payload, "payload")
        # Emits that follow each other faster than the driver takes them travel as one
        # PublishBatch (one decode, one match pass, one delivery per subscriber).
        with self._emit_lock:
            self._emits.append(Publish(event, payload, now()))
            if len(self._emits) > 1:
                return
        self._driver.call(self._flush_emits)

    def _flush_emits(self) -> None:
        """Send the emits not sent yet; every other message to the bus goes after
        this, so it sees them in order."""
        with self._emit_lock:
            batch, self._emits = self._emits, []
        if len(batch) == 1:
            self._driver.send(self._events, encode(batch[0]))
        elif batch:
            self._driver.send(self._events, encode(PublishBatch(batch)))

    def subscribe(self, pattern: str, *, limit: int = 1000) -> Subscription:
        """Events whose names match ``pattern`` (a glob: ``*``, ``?``, ``[..]``)
        from now on. See ``Subscription`` for the overflow policy. Blocks for a
        round trip to the scheduler and one to the event bus, so an event
        published after the call returns is seen. Raises ``MessageError`` for
        a bad pattern or ``limit``."""
        self._core.check_open()
        if not isinstance(pattern, str) or not pattern:
            raise MessageError("must be a non-empty str", where="pattern")
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise MessageError(f"must be an int >= 1, got {limit!r}", where="limit")
        sub_id = f"facade-{uuid.uuid4().hex}"
        subscription = Subscription(self, sub_id, pattern, limit)
        self._core.subscriptions[sub_id] = subscription
        self._flush_emits()
        self._driver.send(self._events, encode(Subscribe(sub_id, pattern, limit)))
        # Tell the scheduler directly and wait until it has it, so the runtime's own
        # events of work submitted after this call are published (messages to two
        # actors, or even to one, may arrive in any order in local mode).
        self._ask(lambda ref: EventInterest([pattern], [], ref=ref))
        # ...and wait until the event bus answers after the Subscribe, so an event
        # another process publishes once this returns finds the subscription there
        self._ask(lambda ref: QueryStats(ref), to=self._events)
        return subscription

    def _unsubscribe(self, subscription: Subscription) -> None:
        self._core.subscriptions.pop(subscription.sub_id, None)
        if self._core.state is RuntimeState.OPEN:
            self._flush_emits()
            self._driver.send(self._events, encode(Unsubscribe(subscription.sub_id)))

    def _ask(self, build: Callable[[int], Message], timeout: float = 30.0, to: Any = None) -> Any:
        w = _Waiter()
        data = self._core.request(build, w)
        self._core.check_open()  # (the runtime may have gone away just now)
        if to is not None and to is self._events:
            self._flush_emits()
        self._driver.send(self._scheduler if to is None else to, data)
        if not w.event.wait(self._driver.run_until(w.event.is_set, timeout)):
            raise TimeoutError("the runtime did not answer in time")
        if w.msg is None and w.lost:
            raise LlmspellError(f"{w.lost} before it answered; it was restarted: ask again")
        if w.msg is None:
            raise RuntimeClosed("the runtime went away before it answered; create a new Runtime")
        return w.msg


# seconds a stream's reader waits, after its task ended, for chunks it was told of
_LATE_CHUNKS = 5.0
