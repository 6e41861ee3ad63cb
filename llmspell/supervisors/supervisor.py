"""The supervisor actor: OTP-style restarts of the actors it owns.

A supervisor is configured as data (``SupervisorSpec``, carried in the
``introduce`` message's config under ``"supervisor"``) and creates every
child itself, because Thespian tells only an actor's parent that it exited
(``ChildActorExited``).

* **Strategies**: ``one_for_one`` restarts the child that died;
  ``one_for_all`` stops the others and restarts all of them in order;
  ``rest_for_one`` stops and restarts the children started after it.
* **Restart types** per child: ``permanent`` (always restarted),
  ``transient`` (restarted when it died without being asked to stop; an
  engine never stops on its own, so for engines this is the same as
  permanent) and ``temporary`` (never restarted; its tasks fail).
* **Intensity**: more than ``intensity`` restarts within ``period`` seconds
  and the supervisor stops its children and *escalates*: it tells its parent
  (``supervisor_event`` what="escalate"), which reports the runtime as
  degraded rather than dying silently.
* **Backoff**: the n-th restart of a child within the period waits
  ``min(cap, base * 2**(n-1))`` seconds, times a random factor in
  ``[1 - jitter, 1 + jitter]``.
* **Shutdown** (``Shutdown`` from its parent): children are stopped one at a
  time in reverse start order, each sent a ``shutdown`` (to release its
  resources) and then ``ActorExitRequest``; the next is stopped once the
  previous one's process exited (local mode) or its ``ChildActorExited``
  came. One still running ``shutdown_timeout`` s after it was asked (stuck in
  a call that holds the GIL, say) is killed by pid. Then the supervisor
  answers its parent with a ``Shutdown`` of its own: its children are gone.

Every crash and restart is also told to the scheduler (``engine_event``),
which fails or re-dispatches what was in flight on the crashed engine.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from thespian.actors import ActorAddress, ActorExitRequest

from .. import _clock
from .._actor import WireActor, addr_key, log
from .._imports import import_target
from ..messages.types import (
    EngineEvent,
    Introduce,
    Ping,
    Pong,
    Replaced,
    Shutdown,
    SupervisorEvent,
)

__all__ = ["ChildSpec", "Supervisor", "SupervisorSpec"]

# how often a local-mode supervisor looks at its children's processes (s)
WATCH_PERIOD = 0.5
# while stopping its children one at a time: how often it looks whether the
# one asked to stop exited (s), and how long a killed one may take to go
STOP_POLL = 0.02
KILL_GRACE = 1.0

STRATEGIES = ("one_for_one", "one_for_all", "rest_for_one")
RESTARTS = ("permanent", "transient", "temporary")


@dataclass(frozen=True)
class ChildSpec:
    """One supervised actor: ``actor`` is ``"module:Class"``; ``config`` is
    merged into the ``introduce`` it gets (with ``restarts`` = how many times
    it was restarted)."""

    name: str
    actor: str
    config: dict[str, Any] = field(default_factory=dict)
    restart: str = "permanent"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "actor": self.actor,
            "config": self.config,
            "restart": self.restart,
        }


@dataclass(frozen=True)
class SupervisorSpec:
    name: str = "supervisor"
    strategy: str = "one_for_one"
    intensity: int = 5
    period: float = 10.0
    backoff_base: float = 0.05
    backoff_cap: float = 2.0
    jitter: float = 0.1
    shutdown_timeout: float = 5.0
    children: tuple[ChildSpec, ...] = ()

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"supervisor strategy must be one of {STRATEGIES}")
        for c in self.children:
            if c.restart not in RESTARTS:
                raise ValueError(f"child {c.name!r}: restart must be one of {RESTARTS}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "strategy": self.strategy,
            "intensity": self.intensity,
            "period": self.period,
            "backoff_base": self.backoff_base,
            "backoff_cap": self.backoff_cap,
            "jitter": self.jitter,
            "shutdown_timeout": self.shutdown_timeout,
            "children": [c.to_dict() for c in self.children],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SupervisorSpec:
        children = tuple(
            ChildSpec(
                c["name"], c["actor"], dict(c.get("config") or {}), c.get("restart", "permanent")
            )
            for c in d.get("children", ())
        )
        fields = {
            k: d[k]
            for k in (
                "name",
                "strategy",
                "intensity",
                "period",
                "backoff_base",
                "backoff_cap",
                "jitter",
                "shutdown_timeout",
            )
            if k in d
        }
        return cls(children=children, **fields)


def backoff_delay(
    n: int, base: float, cap: float, jitter: float, rng: random.Random | None = None
) -> float:
    """Delay before the n-th restart (n >= 1) within the period."""
    r = rng or random
    delay = min(cap, base * 2 ** max(0, n - 1))
    return max(0.0, float(delay * (1 + r.uniform(-jitter, jitter))))


_ANSWER_GRACE = 1.0  # s a new child has to tell its pid before its process is looked for


class _Child:
    __slots__ = ("address", "asked", "key", "process", "restarts", "spec", "started_at", "state")

    def __init__(self, spec: ChildSpec) -> None:
        self.spec = spec
        self.process: Any = None  # psutil.Process of the child (local mode), once it answered
        self.address: ActorAddress | None = None
        self.key = ""
        self.restarts = 0
        self.state = "down"  # down | up | stopping | waiting
        self.asked = False  # this supervisor asked it to stop: its exit is no crash
        self.started_at = 0.0  # when it was created (time.monotonic())


class Supervisor(WireActor):
    role = "supervisor"

    def __init__(self) -> None:
        super().__init__()
        self.spec = SupervisorSpec()
        self.children: list[_Child] = []
        self.addresses: dict[str, ActorAddress] = {}
        self.runtime_id = ""
        self.config: dict[str, Any] = {}
        self.parent_addr: ActorAddress | None = None
        self.history: list[float] = []  # restart times within the period
        self.stopping = False
        self.stop_deadline = 0.0  # when stopping: children still running then are killed
        # an orderly stop (Shutdown from the parent): the children left to stop, last
        # started first; the first is the one asked now. Who asked, to be answered.
        self.stop_queue: list[_Child] = []
        self.stop_killed = 0.0  # when the one asked now was killed (0: not killed)
        self.stop_requester: ActorAddress | None = None
        self.escalated = False
        self.rng = random.Random()
        self.watching = False

    def on_introduce(self, msg: Introduce, sender: ActorAddress) -> None:
        self.runtime_id = msg.runtime_id
        self.addresses = dict(msg.addresses)
        self.config = dict(msg.config)
        self.parent_addr = sender
        self.spec = SupervisorSpec.from_dict(self.config.get("supervisor") or {})
        if self.config.get("seed") is not None:  # a simulation: jitter follows the seed
            self.rng = random.Random(f"{self.config['seed']}/{self.spec.name}")
        self.role = f"supervisor {self.spec.name}"
        self.children = [_Child(c) for c in self.spec.children]
        # local mode: Thespian can drop ChildActorExited when children die together
        # (thespian issue #85), so the children's pids are watched as well
        self.watching = self.config.get("mode") == "local"
        for child in self.children:
            self._start(child)
        if self.watching:
            self.wake_after(WATCH_PERIOD, "watch")

    def on_replaced(self, msg: Replaced, sender: ActorAddress) -> None:
        """A runtime process died and was restarted: the children started from
        now on get the new address, and those running now are told. A new
        director becomes this supervisor's parent (a crash, a restart or an
        escalation is reported to it; an escalation it may have missed is
        reported again)."""
        self.addresses[msg.role] = msg.address
        if msg.role == "director":
            self.parent_addr = msg.address
            if self.escalated:
                self.send_msg(
                    msg.address,
                    SupervisorEvent(
                        self.spec.name,
                        "",
                        "escalate",
                        f"more than {self.spec.intensity} restarts within {self.spec.period} s",
                    ),
                )
        for child in self.children:
            if child.address is not None and child.state == "up":
                self.send_msg(child.address, msg)

    # -- children --------------------------------------------------------------------

    def _start(self, child: _Child) -> None:
        cls = import_target(child.spec.actor)
        child.address = self.createActor(cls)
        child.key = addr_key(child.address)
        child.state = "up"
        child.asked = False
        child.process = None
        child.started_at = time.monotonic()
        cfg = {k: v for k, v in self.config.items() if k != "supervisor"}
        cfg.update(child.spec.config)
        cfg["restarts"] = child.restarts
        self.send_msg(child.address, Introduce(self.runtime_id, self.addresses, cfg))
        if self.watching:
            self.send_msg(child.address, Ping(child.spec.name))

    def on_pong(self, msg: Pong, sender: ActorAddress) -> None:
        """A child tells its pid (local mode): from now on it is watched."""
        child = self._find(sender)
        if child is None or child.state != "up" or not msg.pid:
            return
        import psutil

        try:
            child.process = psutil.Process(msg.pid)
        except psutil.Error:  # already gone: handled now rather than never
            self.on_child_exited(sender)

    def _watch(self) -> None:
        """Handle the death of every child whose process is gone, whether or
        not Thespian told us."""
        import psutil

        self._watch_unanswered()
        for child in list(self.children):
            proc = child.process
            if child.state != "up" or proc is None or child.address is None:
                continue
            try:
                dead = not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
            except psutil.Error:
                dead = True
            if dead:
                log.warning("%s: child %s (pid %d) is gone", self.role, child.spec.name, proc.pid)
                self.on_child_exited(child.address)

    def _watch_unanswered(self) -> None:
        """A child that has not told its pid yet is watched through this
        process's own child processes: once it has had ``_ANSWER_GRACE`` s to
        answer and no process of this supervisor is left that is not a known
        child's, it died as it started (Thespian may not say so): handled as
        any death (restarted, or the supervisor gives up)."""
        import psutil

        t = time.monotonic()
        waiting = [
            c
            for c in self.children
            if c.state == "up"
            and c.process is None
            and c.address is not None
            and t - c.started_at > _ANSWER_GRACE
        ]
        if not waiting:
            return
        known = {c.process.pid for c in self.children if c.process is not None}
        try:
            mine = psutil.Process().children()
        except psutil.Error:  # pragma: no cover - this process itself
            return
        starting = 0
        for p in mine:
            try:
                if p.pid not in known and p.status() != psutil.STATUS_ZOMBIE:
                    starting += 1
            except psutil.Error:
                pass
        # the oldest first: those still starting are the last ones made
        for child in sorted(waiting, key=lambda c: c.started_at)[: max(0, len(waiting) - starting)]:
            assert child.address is not None
            log.warning("%s: child %s died as it started", self.role, child.spec.name)
            self.on_child_exited(child.address)

    def _stop(self, child: _Child) -> None:
        if child.address is not None and child.state == "up":
            child.state = "stopping"
            child.asked = True
            self.send_msg(child.address, Shutdown("stopped by its supervisor"))
            self.send(child.address, ActorExitRequest())

    def _find(self, address: ActorAddress) -> _Child | None:
        # ActorAddress equality knows a new child's local address and its real
        # one are the same actor; their strings differ.
        for child in self.children:
            if child.address is not None and child.address == address:
                return child
        return None

    def on_child_exited(self, child_addr: ActorAddress) -> None:
        child = self._find(child_addr)
        if child is None:
            return
        was = child.state
        proc = child.process
        child.state = "down"
        child.address = None
        child.process = None
        if self.stopping or was == "stopping" or child.asked:
            # we asked it to stop (shutdown, escalation, or a sibling's restart)
            if self.stop_queue and self.stop_queue[0] is child:
                if proc is not None and _running(proc):
                    child.process = proc  # it said goodbye: the next once it is gone
                else:
                    self.stop_queue.pop(0)
                    self._stop_next()
            return
        log.warning("%s: child %s died", self.role, child.spec.name)
        self._tell_engine_event(child, "crash", "the engine process died", proc)
        self._tell_parent("crash", child)
        if child.spec.restart == "temporary":
            return
        if not self._within_intensity():
            self._escalate(child)
            return
        order = [c.spec.name for c in self.children]
        i = order.index(child.spec.name)
        if self.spec.strategy == "one_for_one":
            group = [child]
        elif self.spec.strategy == "one_for_all":
            group = list(self.children)
        else:
            group = self.children[i:]
        for other in group:
            if other is not child and other.state == "up":
                # its tasks are lost with it, but it did not crash: no crash, no intensity
                self._tell_engine_event(
                    other,
                    "stop",
                    f"stopped by its supervisor ({self.spec.strategy}: {child.spec.name} crashed)",
                    other.process,
                )
                self._stop(other)
        for other in group:
            other.state = "waiting"
        n = len(self.history)
        delay = backoff_delay(
            n, self.spec.backoff_base, self.spec.backoff_cap, self.spec.jitter, self.rng
        )
        self.wake_after(delay, ("restart", [c.spec.name for c in group]))

    def _within_intensity(self) -> bool:
        t = _clock.monotonic()
        self.history = [h for h in self.history if t - h <= self.spec.period]
        self.history.append(t)
        return len(self.history) <= self.spec.intensity

    def on_wakeup(self, payload: Any) -> None:
        if payload == "stopping":
            self._stop_current_exited()
            return
        if payload == "watch":
            if not self.stopping:
                self._watch()
                self.wake_after(WATCH_PERIOD, "watch")
            return
        if not (isinstance(payload, tuple) and payload and payload[0] == "restart"):
            return
        if self.stopping or self.escalated:
            return
        names = payload[1]
        for child in self.children:
            if child.spec.name in names and child.state in ("waiting", "down"):
                if child.state == "stopping":
                    continue
                child.restarts += 1
                self._start(child)
                self._tell_engine_event(child, "restart", "")
                self._tell_parent("restart", child)

    def _escalate(self, child: _Child) -> None:
        self.escalated = True
        log.error(
            "%s: more than %d restarts within %g s; stopping its children and escalating",
            self.role,
            self.spec.intensity,
            self.spec.period,
        )
        for other in reversed(self.children):
            self._stop(other)
        self._tell_parent(
            "escalate",
            child,
            f"more than {self.spec.intensity} restarts within {self.spec.period} s",
        )

    def _tell_parent(self, what: str, child: _Child, detail: str = "") -> None:
        if self.parent_addr is not None:
            self.send_msg(
                self.parent_addr,
                SupervisorEvent(self.spec.name, child.spec.name, what, detail, child.restarts),
            )

    def _tell_engine_event(self, child: _Child, what: str, detail: str, proc: Any = None) -> None:
        """Tell the scheduler what became of an engine child; ``proc`` (its
        ``psutil.Process``, if it had told its pid) names the very process, so
        that a late word never hits the replacement registered meanwhile."""
        engine = child.spec.config.get("engine")
        scheduler = self.addresses.get("scheduler")
        if engine is None or scheduler is None:
            return
        self.send_msg(
            scheduler,
            EngineEvent(
                str(engine),
                int(child.spec.config.get("index", 0)),
                what,
                detail,
                proc.pid if proc is not None else 0,
            ),
        )

    # -- shutdown ----------------------------------------------------------------------
    #
    # As OTP does: the last started child is asked to stop and waited for (its
    # process's exit in local mode, where Thespian can drop ChildActorExited; its
    # ChildActorExited otherwise) at most ``shutdown_timeout`` s, then killed by pid;
    # then the one before it. Embedded runtimes (the actors on an in-process loop)
    # hand ChildActorExited over at once, so the whole stop runs there in one go.

    def on_shutdown(self, msg: Shutdown, sender: ActorAddress) -> None:
        if self.stopping and not self.stop_queue and self.stop_requester is None:
            self.send_msg(sender, Shutdown("its children are stopped"))
            return
        self.stop_requester = sender
        if not self.stopping:
            self.stopping = True
            self.stop_queue = [c for c in reversed(self.children) if c.state in ("up", "stopping")]
            self._stop_next()

    def _stop_next(self) -> None:
        """Ask the next child to stop, or, none left, answer who asked."""
        import psutil

        while self.stop_queue:
            child = self.stop_queue[0]
            if child.state not in ("up", "stopping") or child.address is None:
                self.stop_queue.pop(0)  # gone already
                continue
            if child.state == "up":
                self._stop(child)
            self.stop_deadline = time.monotonic() + self.spec.shutdown_timeout
            self.stop_killed = 0.0
            if self.watching:
                self.wake_after(STOP_POLL, "stopping")
            return
        if self.watching:  # one that never told its pid and did not exit: killed too
            try:
                for proc in psutil.Process().children():
                    proc.kill()
            except psutil.Error:
                pass
        requester, self.stop_requester = self.stop_requester, None
        if requester is not None:
            self.send_msg(requester, Shutdown("its children are stopped"))

    def _stop_current_exited(self) -> None:
        """(local mode, on ``STOP_POLL``) The child asked to stop: gone, it is
        the next one's turn; past ``shutdown_timeout``, it is killed by pid."""
        if not self.stop_queue:
            return
        child = self.stop_queue[0]
        proc = child.process
        if child.state == "down" and (proc is None or not _running(proc)):
            self.stop_queue.pop(0)
            self._stop_next()
            return
        now = time.monotonic()
        if proc is not None and _running(proc) and now >= self.stop_deadline:
            if not self.stop_killed:
                log.warning(
                    "%s: child %s (pid %d) did not stop within %g s; killing it",
                    self.role,
                    child.spec.name,
                    proc.pid,
                    self.spec.shutdown_timeout,
                )
                self.stop_killed = now
                try:
                    proc.kill()
                except Exception:
                    pass
            elif now - self.stop_killed > KILL_GRACE:  # it will not go: on with the rest
                self.stop_queue.pop(0)
                self._stop_next()
                return
        elif (proc is None or not _running(proc)) and (
            child.state == "down" or now >= self.stop_deadline
        ):
            # exited (Thespian may not say so), or no pid known and no word in time
            child.state = "down"
            child.address = None
            child.process = None
            self.stop_queue.pop(0)
            self._stop_next()
            return
        self.wake_after(STOP_POLL, "stopping")

    def on_exit(self) -> None:
        # asked to exit without an orderly stop first, or in the middle of one:
        # every child left is asked at once, and killed if still running later
        self.stop_queue = []
        if not self.stopping:
            self.stopping = True
        self.stop_deadline = time.monotonic() + self.spec.shutdown_timeout
        for child in reversed(self.children):
            self._stop(child)
        if self.watching:  # not blocking here: the stop messages must go out first
            threading.Thread(target=self._kill_stuck, name="llmspell-kill", daemon=True).start()

    def _kill_stuck(self) -> None:
        """local mode, exiting (a thread of its own: the process lives on until
        its children exited): a child still running ``shutdown_timeout`` s
        after it was asked to stop (stuck in a call that holds the GIL, say)
        is killed by pid, so that nothing waits on it."""
        import psutil

        procs = [c.process for c in self.children if c.process is not None]
        left = max(0.0, self.stop_deadline - time.monotonic())
        try:
            _, alive = psutil.wait_procs(procs, timeout=left)
        except psutil.Error:  # pragma: no cover - defensive
            alive = procs
        for proc in alive:
            log.warning(
                "%s: child pid %d did not stop within %g s; killing it",
                self.role,
                proc.pid,
                self.spec.shutdown_timeout,
            )
            try:
                proc.kill()
            except psutil.Error:
                pass


def _running(proc: Any) -> bool:
    """``proc`` (a psutil.Process) still runs: not gone, not a zombie."""
    import psutil

    try:
        return bool(proc.is_running()) and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
