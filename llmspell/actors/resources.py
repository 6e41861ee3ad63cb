"""The resource tracker actor: engine processes, throttled tasks, engine memory.

* **Sampling.** The scheduler forwards every ``EngineReady`` here, so the
  tracker knows each engine's process id. It samples each process with
  ``psutil`` (resident memory, CPU % since the previous sample): on every
  ``stats()`` query, and every ``resource_interval`` seconds (default 1.0)
  while an ``engine_memory`` limit is configured or a task waits. In
  ``embedded`` mode every engine is this same process. An engine on a cluster
  member (its ``EngineReady`` names the member) runs on another machine,
  whose processes the tracker cannot see: it measures itself there and
  reports (``EngineUsage``, each time the leader's cluster manager pings it,
  twice a second), and the tracker keeps its last report. ``stats()["engines"]``
  entries gain ``rss`` and ``cpu_percent`` (and ``host``, where measured);
  ``stats()["resources"]`` has the tracker's own counters.
* **Per-task accounting** is done by the engines, which know what each task
  used (CPU of its steps, VM memory, network bytes through ``llmspell.net``)
  and report it with progress and outcomes; the tracker decides only when a
  parked task may go on.
* **Throttle.** An engine parks a task that went over a limit with
  ``on_exceed="throttle"`` and sends ``ResourceWait``; the tracker answers
  ``ResourceGrant``:

  - ``cpu_seconds``: after ``step * (1/share - 1)`` seconds, ``step`` being
    the CPU the task used since its last grant and ``share`` the runtime's
    ``throttle_share`` (default 0.25): over its budget a task gets about that
    share of a CPU;
  - ``memory_bytes``: after a back-off (50 ms doubling to 1 s per wait in a
    row); the engine then checks again and parks it again while still over;
  - ``requested`` (a script's ``spell.resource_wait()``): at once, unless the
    engine is over ``engine_memory``;

  and never while the task's engine process is over ``engine_memory``: such
  grants wait until a sample shows it back under. The first wait of a task
  publishes ``llmspell.resource.throttle``.
* **Engine memory.** With ``engine_memory`` (bytes) configured, an engine
  process whose RSS goes over it gets no new tasks: the tracker tells the
  scheduler (``EngineLoad``, repeated with every sample so that a message
  overtaken by an older one is corrected) and again when it is back under, and
  publishes ``llmspell.resource.engine`` both times.
"""

from __future__ import annotations

import heapq
import itertools
import os
from typing import Any

import psutil
from thespian.actors import ActorAddress

from .._actor import WireActor, log
from .._clock import now
from ..messages.config import DEFAULTS
from ..messages.types import (
    EngineEvent,
    EngineLoad,
    EngineReady,
    EngineUsage,
    Introduce,
    Publish,
    QueryStats,
    Replaced,
    ResourceGrant,
    ResourceWait,
    StatsReply,
)

__all__ = ["ResourceTracker"]

_BACKOFF_BASE = 0.05
_BACKOFF_CAP = 1.0
_WAITING_INTERVAL = 0.1  # seconds between samples while grants wait for engine memory


class _Engine:
    __slots__ = ("cpu_percent", "engine", "host", "index", "over", "pid", "remote", "rss")

    def __init__(self, engine: str, index: int, pid: int, host: str = "", remote: bool = False):
        self.engine = engine
        self.index = index
        self.pid = pid
        self.host = host  # cluster mode: the member's host (the pid is a process there)
        self.remote = remote  # measured by itself on its member (EngineUsage), not here
        self.rss = 0
        self.cpu_percent = 0.0
        self.over = False


class _Wait:
    __slots__ = ("address", "msg")

    def __init__(self, msg: ResourceWait, address: ActorAddress) -> None:
        self.msg = msg
        self.address = address


class ResourceTracker(WireActor):
    role = "resource tracker"

    def __init__(self) -> None:
        super().__init__()
        self.addresses: dict[str, ActorAddress] = {}
        self.engines: dict[tuple[str, int], _Engine] = {}
        self.procs: dict[int, psutil.Process] = {}
        self.engine_memory: int | None = None
        self.share = DEFAULTS.throttle_share
        self.interval = DEFAULTS.resource_interval
        self.timers: list[tuple[float, int, _Wait]] = []  # (due, seq, wait)
        self.held: list[_Wait] = []  # due, but their engine is over its memory
        self.seq = itertools.count()
        self.armed: float | None = None
        self.sampling = False
        self.counts = {"waits": 0, "grants": 0, "throttled_tasks": 0, "engine_over": 0}
        self.throttled: set[str] = set()
        self._events: list[Publish] = []

    # -- set-up -------------------------------------------------------------------------

    def on_introduce(self, msg: Introduce, sender: ActorAddress) -> None:
        self.addresses.update(msg.addresses)
        cfg = msg.config
        if cfg.get("engine_memory") is not None:
            self.engine_memory = int(cfg["engine_memory"])
        self.share = min(1.0, max(0.01, float(cfg.get("throttle_share", self.share))))
        self.interval = max(0.01, float(cfg.get("resource_interval", self.interval)))
        if self.engine_memory is not None:
            self._sample_soon(self.interval)

    def on_replaced(self, msg: Replaced, sender: ActorAddress) -> None:
        self.addresses[msg.role] = msg.address

    def on_engine_ready(self, msg: EngineReady, sender: ActorAddress) -> None:
        remote = bool(msg.member)
        host = msg.host if remote else ""
        self.engines[(msg.engine, msg.index)] = _Engine(
            msg.engine, msg.index, msg.pid, host, remote
        )

    def on_engine_usage(self, msg: EngineUsage, sender: ActorAddress) -> None:
        """An engine on a cluster member measured its own process."""
        e = self.engines.get((msg.engine, msg.index))
        if e is None or not e.remote or e.pid != msg.pid:
            return  # an engine not (or no longer) registered under that name
        e.rss, e.cpu_percent = int(msg.rss), float(msg.cpu_percent)
        self._judge(e)

    def on_engine_event(self, msg: EngineEvent, sender: ActorAddress) -> None:
        pass  # the engine's next EngineReady (after a restart) replaces its entry

    # -- sampling -------------------------------------------------------------------------

    def _proc(self, pid: int) -> psutil.Process | None:
        p = self.procs.get(pid)
        if p is None:
            try:
                p = psutil.Process(pid)
                p.cpu_percent(None)  # the first call only starts the measurement
            except psutil.Error:
                return None
            self.procs[pid] = p
        return p

    def sample(self) -> None:
        """Measure every engine process of this machine once (one measurement
        per pid); an engine on a cluster member keeps its last report."""
        seen: dict[int, tuple[int, float]] = {}
        for e in self.engines.values():
            if e.remote:
                self._judge(e)
                continue
            if e.pid not in seen:
                p = self._proc(e.pid)
                if p is None:
                    seen[e.pid] = (0, 0.0)
                else:
                    try:
                        seen[e.pid] = (int(p.memory_info().rss), float(p.cpu_percent(None)))
                    except psutil.Error:
                        self.procs.pop(e.pid, None)
                        seen[e.pid] = (0, 0.0)
            e.rss, e.cpu_percent = seen[e.pid]
            self._judge(e)
        for pid in list(self.procs):
            if pid not in seen:
                del self.procs[pid]

    def _judge(self, e: _Engine) -> None:
        """With ``engine_memory``: is ``e`` over it (the scheduler told either way)."""
        if self.engine_memory is None:
            return
        over = e.rss > self.engine_memory
        if over != e.over:
            e.over = over
            self._engine_changed(e)
        else:  # again: a stale EngineLoad that overtook the last one gets corrected
            self._tell_scheduler(e)

    def _engine_changed(self, e: _Engine) -> None:
        if e.over:
            self.counts["engine_over"] += 1
            log.warning(
                "%s engine %d (pid %d%s) holds %d bytes, over engine_memory=%d: "
                "it takes no new tasks until it is back under",
                e.engine,
                e.index,
                e.pid,
                f" on {e.host}" if e.host else "",
                e.rss,
                self.engine_memory,
            )
        self._tell_scheduler(e)
        self._publish(
            "llmspell.resource.engine",
            {
                "engine": e.engine,
                "index": e.index,
                "pid": e.pid,
                **({"host": e.host} if e.remote else {}),
                "rss": e.rss,
                "limit": self.engine_memory,
                "over": e.over,
            },
        )

    def _tell_scheduler(self, e: _Engine) -> None:
        scheduler = self.addresses.get("scheduler")
        if scheduler is not None:
            self.send_msg(scheduler, EngineLoad(e.engine, e.index, e.over, e.rss))

    def _sample_soon(self, seconds: float) -> None:
        if not self.sampling:
            self.sampling = True
            self.wake_after(seconds, "sample")

    # -- waits and grants -----------------------------------------------------------------

    def on_resource_wait(self, msg: ResourceWait, sender: ActorAddress) -> None:
        self.counts["waits"] += 1
        wait = _Wait(msg, sender)
        if msg.resource == "requested":
            delay = 0.0
        else:
            if msg.task_id not in self.throttled:
                self.throttled.add(msg.task_id)
                self.counts["throttled_tasks"] += 1
                self._publish(
                    "llmspell.resource.throttle",
                    {
                        "task_id": msg.task_id,
                        "engine": msg.engine,
                        "resource": msg.resource,
                        "used": msg.used,
                        "limit": msg.limit,
                    },
                )
            if msg.resource == "cpu_seconds":
                delay = max(0.0, msg.step) * (1.0 / self.share - 1.0)
            else:
                delay = min(_BACKOFF_CAP, _BACKOFF_BASE * 2 ** min(msg.waits, 10))
        if delay <= 0:
            self._grant_or_hold(wait)
            return
        heapq.heappush(self.timers, (now() + delay, next(self.seq), wait))
        self._arm()

    def _grant_or_hold(self, wait: _Wait) -> None:
        e = self.engines.get((wait.msg.engine, wait.msg.index))
        if e is not None and e.over:
            self.held.append(wait)
            self._sample_soon(_WAITING_INTERVAL)
            return
        self.counts["grants"] += 1
        m = wait.msg
        self.send_msg(wait.address, ResourceGrant(m.task_id, m.attempt, m.resource))

    def _arm(self) -> None:
        if not self.timers:
            return
        first = self.timers[0][0]
        if self.armed is None or first < self.armed - 0.0005:
            self.armed = first
            self.wake_after(first - now(), "grants")

    def on_wakeup(self, payload: Any) -> None:
        if payload == "grants":
            self.armed = None
            t = now()
            while self.timers and self.timers[0][0] <= t + 0.0005:
                _, _, wait = heapq.heappop(self.timers)
                self._grant_or_hold(wait)
            self._arm()
        elif payload == "sample":
            self.sampling = False
            self.sample()
            held, self.held = self.held, []
            for wait in held:
                self._grant_or_hold(wait)
            if self.held:
                self._sample_soon(_WAITING_INTERVAL)
            elif self.engine_memory is not None:
                self._sample_soon(self.interval)

    # -- queries ---------------------------------------------------------------------------

    def on_query_stats(self, msg: QueryStats, sender: ActorAddress) -> None:
        self.sample()
        stats = {
            "engines": [
                {
                    "engine": e.engine,
                    "index": e.index,
                    "pid": e.pid,
                    "rss": e.rss,
                    "cpu_percent": e.cpu_percent,
                    "over_memory": e.over,
                    **({"host": e.host} if e.remote else {}),
                }
                for e in self.engines.values()
            ],
            "engine_memory": self.engine_memory,
            "throttle_share": self.share,
            "waiting": len(self.timers) + len(self.held),
            "tracker_pid": os.getpid(),
            **self.counts,
        }
        self.send_msg(sender, StatsReply(msg.ref, stats))

    # -- sending ---------------------------------------------------------------------------

    def _publish(self, name: str, payload: Any) -> None:
        self._events.append(Publish(name, payload, now()))

    def flush(self) -> None:
        if self._events:
            events, self._events = self._events, []
            bus = self.addresses.get("events")
            if bus is not None:
                for ev in events:
                    self.send_msg(bus, ev)
