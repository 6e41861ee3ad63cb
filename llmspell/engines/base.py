"""The engine context actor base: what every engine does the same way.

An engine actor registers with the scheduler (``EngineReady``), takes
``DispatchBatch`` messages, stops tasks on ``StopTasks`` and reports ended
tasks and progress back in batches, once per handled message. Subclasses fill
in three hooks: ``setup(config)``, ``start(spec, attempt)``,
``stop(task_id, reason)``, and may override ``poll()`` (collect work finished
on other threads) and ``close()``.
"""

from __future__ import annotations

import abc
import os
from typing import Any

from thespian.actors import ActorAddress, ActorExitRequest

from .. import _watchdog
from .._actor import WireActor, log
from .._exceptions import MessageError
from ..messages import check_data, decode, encode
from ..messages.codec import encode_item, encode_with_items, own_data
from ..messages.config import DEFAULTS
from ..messages.types import (
    DispatchBatch,
    EngineReady,
    EngineResults,
    Introduce,
    LaneAsk,
    Poll,
    ProgressBatch,
    ProgressReport,
    Publish,
    PublishBatch,
    Replaced,
    ResourceWait,
    Shutdown,
    StopTasks,
    SubmitTasks,
    TaskError,
    TaskOutcome,
    TaskSpec,
    WatchTasks,
)
from . import _doorbell
from .limits import Limit

__all__ = ["EngineActor"]

_POLL = encode(Poll())
_POLL_MSG = Poll()  # embedded: handed to the engine as it is (nothing to decode)
_CPU_DURATION = frozenset(("cpu_seconds", "duration"))
# Where neither the driver's doorbell nor a pipe exists, an engine polls itself
# while work runs on other threads: first soon, then at intervals doubling up to
# 1 ms, so a long call costs at most ~1,000 wake-ups a second.
_POLL_FIRST = 0.0001
_POLL_INTERVAL = 0.001


class EngineActor(WireActor, metaclass=abc.ABCMeta):
    """Base of the python, lua and js engine contexts."""

    engine = "?"
    default_capacity = 64
    #: its results' values are the user's (a Python function's): each is checked
    #: before it is sent (``_encode_results``)
    checks_values = False

    def __init__(self) -> None:
        super().__init__()
        self.scheduler: ActorAddress | None = None
        self.addresses: dict[str, ActorAddress] = {}
        self.config: dict[str, Any] = {}
        self.index = 0
        self._results: list[TaskOutcome] = []
        self._progress: list[ProgressReport] = []
        self._submits: list[TaskSpec] = []
        self._watches: list[str] = []
        self._events: list[Publish] = []
        self._bell: Any = None
        # a Poll is on its way. A plain flag is enough: a worker queues its result
        # *before* it reads the flag, and on_poll clears it *before* collecting,
        # so a result is either collected by a pending Poll or rings for one.
        self._rung = False
        self._polling = False
        self._poll_gap = _POLL_FIRST
        # local mode: a pipe Thespian watches (ThespianWatch); a worker thread
        # writes a byte to it to wake the actor, as the doorbell does in embedded
        self._pipe: tuple[int, int] | None = None
        self.closed = False

    # -- set-up -------------------------------------------------------------

    def on_introduce(self, msg: Introduce, sender: ActorAddress) -> None:
        self.addresses = dict(msg.addresses)
        self.scheduler = self.addresses["scheduler"]
        self.config = dict(msg.config)
        self.index = int(self.config.get("index", 0))
        self.runtime_id = msg.runtime_id
        self._bell = _doorbell.get(msg.runtime_id)
        if self._bell is None and self.config.get("mode") == "local" and self._pipe is None:
            r, w = os.pipe()
            os.set_blocking(r, False)
            os.set_blocking(w, False)
            self._pipe = (r, w)
            if os.getpid() != self.config.get("owner_pid"):
                # the engines' supervisor forked this process: if it dies, so does
                # this one (the director also kills what it last saw under it, but a
                # supervisor killed before the director's next look left engines
                # running for good, reachable by nobody)
                _watchdog.die_with_parent()
        self.setup(self.config)
        capacity = int(self.config.get(f"{self.engine}_capacity", self.default_capacity))
        restarts = int(self.config.get("restarts", 0))
        ready = EngineReady(self.engine, self.index, os.getpid(), capacity, restarts)
        if self.config.get("member"):  # cluster mode: where this engine runs
            ready.member = str(self.config["member"])
            ready.host = str(self.config.get("host", ""))
            ready.tags = list(self.config.get("tags") or ()) or None
        self.send_msg(self.scheduler, ready)
        self._ask_lane(self.scheduler)

    def _ask_lane(self, scheduler: ActorAddress) -> None:
        """Local and cluster mode: ask the scheduler for a lane (``_lanes``)."""
        if self.config.get("mode") in ("local", "cluster"):
            max_bytes = int(self.config.get("max_frame_bytes") or DEFAULTS.max_frame_bytes)
            if self.open_lanes(max_bytes) is not None:
                self.send_msg(scheduler, LaneAsk())

    def setup(self, config: dict[str, Any]) -> None:
        """Create the engine's resources (thread pool, VM, ...)."""

    def on_replaced(self, msg: Replaced, sender: ActorAddress) -> None:
        """A runtime process died and was restarted (local mode; told by the
        director through the engines' supervisor). A new scheduler knows
        nothing this engine runs for the dead one: those tasks are dropped (with
        a journal the new scheduler dispatches them again; without one their
        waiters were told they failed) and the engine registers again."""
        self.addresses[msg.role] = msg.address
        if msg.role == "scheduler":
            self.scheduler = msg.address
            for task_id in self.running_ids():
                self.stop(task_id, msg.crashed)
            self._results.clear()
            self._progress.clear()
            self._submits.clear()
            self._watches.clear()
            capacity = int(self.config.get(f"{self.engine}_capacity", self.default_capacity))
            restarts = int(self.config.get("restarts", 0))
            self.send_msg(
                msg.address, EngineReady(self.engine, self.index, os.getpid(), capacity, restarts)
            )
            self._ask_lane(msg.address)
        self.replaced(msg)

    def running_ids(self) -> list[str]:
        """The tasks this engine runs now."""
        return []

    def replaced(self, msg: Replaced) -> None:
        """What an engine of this kind does when ``msg.role`` was restarted."""

    # -- work in ------------------------------------------------------------

    def on_dispatch(self, msg: DispatchBatch, sender: ActorAddress) -> None:
        replays = msg.replays
        for i, (spec, attempt) in enumerate(zip(msg.tasks, msg.attempts, strict=False)):
            try:
                calls = replays[i] if replays is not None and i < len(replays) else None
                if calls:
                    self.start_replay(spec, attempt, calls)
                else:
                    self.start(spec, attempt)
            except Exception as exc:  # a bug in start must fail the task, not vanish it
                log.exception("%s engine could not start task %s", self.engine, spec.id)
                self.report(
                    spec.id,
                    attempt,
                    "failed",
                    error=self.error(f"engine could not start the task: {exc}"),
                )

    def on_stop(self, msg: StopTasks, sender: ActorAddress) -> None:
        for task_id in msg.task_ids:
            self.stop(task_id, msg.reason)

    def on_poll(self, msg: Poll, sender: ActorAddress) -> None:
        self._rung = False
        self.poll()

    def on_fd_ready(self, ready: list[int]) -> None:
        pipe = self._pipe
        if pipe is None or pipe[0] not in ready:
            return
        try:
            while os.read(pipe[0], 4096):
                pass
        except BlockingIOError:
            pass
        self._rung = False  # before collecting, as in on_poll
        self.poll()

    def watched(self) -> list[int]:
        return [self._pipe[0]] if self._pipe is not None else []

    def on_wakeup(self, payload: Any) -> None:
        if payload == "poll":
            self._polling = False
            self.poll()
            if self.busy():
                self._poll_gap = min(2 * self._poll_gap, _POLL_INTERVAL)
                self._arm_poll()
            else:
                self._poll_gap = _POLL_FIRST

    def on_crash_engine(self, msg: Any, sender: ActorAddress) -> None:
        """Fault injection: die now, leaving in-flight work behind (local mode:
        the process exits as if killed; embedded: the actor exits)."""
        import os

        log.warning("%s engine %d: crashing on request", self.engine, self.index)
        if self.config.get("mode") == "local" and os.getpid() != self.config.get("owner_pid"):
            os._exit(70)  # a process of its own: die like a killed process would
        self.close()
        self.closed = True
        self.send(self.myAddress, ActorExitRequest())

    def on_shutdown(self, msg: Shutdown, sender: ActorAddress) -> None:
        self.close()
        self.closed = True
        self._close_pipe()

    def on_exit(self) -> None:
        if not self.closed:
            self.close()
            self.closed = True
        self._close_pipe()

    def _close_pipe(self) -> None:
        pipe, self._pipe = self._pipe, None
        if pipe is not None:
            for fd in pipe:
                try:
                    os.close(fd)
                except OSError:
                    pass

    # -- hooks --------------------------------------------------------------

    @abc.abstractmethod
    def start(self, spec: TaskSpec, attempt: int) -> None:
        """Begin running ``spec`` (its ``attempt``-th try); its end is ``report``ed."""

    @abc.abstractmethod
    def stop(self, task_id: str, reason: str) -> None:
        """Stop the task at once (cancelled, timed out, over a limit); no outcome
        is reported for it. Unknown or ended ids are ignored."""

    def start_replay(self, spec: TaskSpec, attempt: int, calls: list[list[Any]]) -> None:
        """Start a task whose earlier runs made the host ``calls`` (a journal's
        ``[n, op, call, result, error, done]``): script engines replay them; others
        run the task again."""
        self.start(spec, attempt)

    def poll(self) -> None:
        """Collect work finished on other threads."""

    def busy(self) -> bool:
        """True while work runs on other threads (self-polling goes on)."""
        return False

    def close(self) -> None:
        """Release the engine's resources. Called once."""

    # -- work out -----------------------------------------------------------

    def ring(self) -> None:
        """Ask to be polled soon. Safe from any thread."""
        if not self._rung:
            if self._bell is not None:
                self._rung = True
                self._bell(self.myAddress, _POLL if self._host is None else _POLL_MSG)
            elif self._pipe is not None:
                self._rung = True
                try:
                    os.write(self._pipe[1], b"\0")
                except (BlockingIOError, OSError):
                    pass  # full: a wake-up is pending anyway; closed: shutting down

    def work_started(self) -> None:
        """Call (on the actor's thread) after handing work to another thread."""
        if self._bell is None and self._pipe is None:
            self._arm_poll()

    def _arm_poll(self) -> None:
        if not self._polling:
            self._polling = True
            self.wake_after(self._poll_gap, "poll")

    def report(
        self,
        task_id: str,
        attempt: int,
        status: str,
        value: Any = None,
        error: dict[str, Any] | None = None,
        usage: dict[str, Any] | None = None,
    ) -> None:
        self._results.append(TaskOutcome(task_id, status, value, error, usage, attempt))

    def report_progress(self, report: ProgressReport) -> None:
        self._progress.append(report)

    def submit_child(self, spec: TaskSpec) -> None:
        self._submits.append(spec)

    def watch(self, task_id: str) -> None:
        self._watches.append(task_id)

    def publish(self, name: str, payload: Any) -> None:
        from .._clock import now

        self._events.append(Publish(name, payload, now()))

    def park(
        self,
        task_id: str,
        attempt: int,
        lim: Limit,
        resource: str,
        used: float,
        limit: float,
        step: float,
    ) -> bool:
        """Hold a throttled task: ask the resource tracker when it may go on (it
        answers ``ResourceGrant``). False when there is no tracker: the task goes on."""
        tracker = self.addresses.get("resources")
        if tracker is None:
            return False
        lim.parked = True
        self.send_msg(
            tracker,
            ResourceWait(
                task_id, attempt, self.engine, self.index, resource, used, limit, step, lim.waits
            ),
        )
        lim.waits += 1
        return True

    def error(
        self, message: str, *, kind: str = "failed", traceback: str = "", data: Any = None
    ) -> dict[str, Any]:
        return TaskError(message, kind, self.engine, traceback, data).wire()

    def _encode_results(self, items: list[TaskOutcome]) -> bytes:
        """Encode a batch; an outcome that cannot be sent (a value that is not
        msgpack data) fails its own task and no other. Values an engine made
        itself are found out only when encoding fails (the common case pays
        nothing); an engine whose values are the user's (``checks_values``)
        checks each one first, since msgpack packs some that no actor would
        take (a map with an int key: the scheduler would drop the batch)."""
        if not self.checks_values:
            try:
                return encode(EngineResults(items))
            except MessageError:
                pass
        parts = []
        for o in items:
            try:
                check_data(o.value, "result")
                check_data(o.usage, "usage")
                parts.append(encode_item(o))
                continue
            except MessageError as exc:
                why = str(exc)
            failed = TaskOutcome(
                o.task_id,
                "failed",
                None,
                self.error(f"the task's outcome cannot be sent: {why}"),
                None,
                o.attempt,
            )
            parts.append(encode_item(failed))
        return encode_with_items(EngineResults, parts)

    def _owned_results(self, items: list[TaskOutcome]) -> list[TaskOutcome]:
        """``items`` as a trip through the codec would leave them (embedded
        mode, where they are handed over as objects): a value or usage that is
        not msgpack data fails its own task, saying so, and any other is a
        copy nobody else holds (a Python task's function may keep its own)."""
        out = []
        for o in items:
            usage = o.usage
            try:
                value = own_data(o.value, "result")
                # the usual usage, two numbers in a dict the engine made for this
                # outcome alone, is its own already
                if usage is not None and usage.keys() != _CPU_DURATION:
                    usage = own_data(usage, "usage")
            except MessageError as exc:
                why = f"the task's outcome cannot be sent: {exc}"
                o = TaskOutcome(o.task_id, "failed", None, self.error(why), None, o.attempt)
            else:
                if value is not o.value or usage is not o.usage:
                    o = TaskOutcome(o.task_id, o.status, value, o.error, usage, o.attempt)
            out.append(o)
        return out

    def on_poison(self, original: Any, sender: ActorAddress) -> None:
        """Results that could not be delivered (in local mode, together larger
        than ``max_frame_bytes``): sent again one by one; one too large alone
        fails its task, saying so, instead of leaving it running for ever."""
        sched = self.scheduler
        try:
            msg = decode(original) if isinstance(original, bytes) else None
        except MessageError:
            return
        if sched is None or not isinstance(msg, EngineResults) or not msg.items:
            return
        if len(msg.items) > 1:
            for o in msg.items:
                self.send(sched, self._encode_results([o]))
            return
        (o,) = msg.items
        why = (
            "the task's outcome could not be sent (larger than max_frame_bytes, "
            "or the scheduler is gone)"
        )
        if o.error is not None and o.error.get("message") == why:
            return  # even the failure could not be sent: the scheduler is gone
        failed = TaskOutcome(o.task_id, "failed", None, self.error(why), None, o.attempt)
        self.send(sched, self._encode_results([failed]))

    def flush(self) -> None:
        sched = self.scheduler
        if sched is None:
            return
        # Order matters: a child must be submitted before anyone watches it.
        if self._submits:
            subs, self._submits = self._submits, []
            self.send_msg(sched, SubmitTasks(subs, notify=False))
        if self._results:
            res, self._results = self._results, []
            loop = self._host
            if loop is not None:  # embedded: handed over, each value checked and our own
                loop.post(sched, EngineResults(self._owned_results(res)), self.myAddress)
            else:
                for i in range(0, len(res), 500):
                    self.send(sched, self._encode_results(res[i : i + 500]))
        if self._watches:
            w, self._watches = self._watches, []
            self.send_msg(sched, WatchTasks(w))
        if self._progress:
            p, self._progress = self._progress, []
            self.send_msg(sched, ProgressBatch(p))
        if self._events:
            ev, self._events = self._events, []
            bus = self.addresses.get("events")
            if bus is not None:
                self.send_msg(bus, PublishBatch(ev))
