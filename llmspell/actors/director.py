"""The director: root of the actor tree (Thespian globalName ``llmspell.director``).

On ``Introduce`` from the facade (the runtime's configuration) it creates the
scheduler, the event bus, the coordinator, the resource tracker and the
engine contexts (through their supervisor), introduces them to each
other, and from then on answers ``Hello`` with the addresses the facade talks
to. On ``Shutdown`` it cancels every unfinished task and stops its children
one at a time, the last started first (the engines' supervisor stops its
engines the same way before it exits), then answers with ``Shutdown``.
"""

from __future__ import annotations

import os
from typing import Any

from thespian.actors import ActorAddress, ActorExitRequest

from .. import _clock
from .._actor import WireActor, addr_key, log
from ..messages.types import (
    Attached,
    Hello,
    Introduce,
    Ping,
    Pong,
    QueryStats,
    Replaced,
    Shutdown,
    StatsReply,
    SupervisorEvent,
)
from ..supervisors.supervisor import ChildSpec, Supervisor, SupervisorSpec
from .coordinator import Coordinator
from .events import EventBus
from .resources import ResourceTracker
from .scheduler import Scheduler

__all__ = ["DIRECTOR_NAME", "ENGINE_CLASSES", "Director"]

DIRECTOR_NAME = "llmspell.director"

# engine name -> "module:class" of its context actor
ENGINE_CLASSES = {
    "python": "llmspell.engines.python:PythonEngine",
    "lua": "llmspell.engines.lua:LuaEngine",
    "js": "llmspell.engines.js:JsEngine",
}


def engine_supervisor_spec(config: dict[str, Any]) -> SupervisorSpec:
    """The engines' supervisor: one child per engine worker, one-for-one."""
    counts: dict[str, int] = config.get("engines", {"python": 1})
    if config.get("cluster"):  # a cluster's engines run on its members (actors.cluster)
        counts = {}
    children = [
        ChildSpec(f"{engine}/{index}", ENGINE_CLASSES[engine], {"engine": engine, "index": index})
        for engine, count in counts.items()
        for index in range(int(count))
    ]
    sup: dict[str, Any] = dict(config.get("supervision") or {})
    return SupervisorSpec(
        name="engines",
        strategy=str(sup.get("strategy", "one_for_one")),
        intensity=int(sup.get("intensity", 10)),
        period=float(sup.get("period", 30.0)),
        backoff_base=float(sup.get("backoff_base", 0.05)),
        backoff_cap=float(sup.get("backoff_cap", 2.0)),
        jitter=float(sup.get("jitter", 0.1)),
        shutdown_timeout=float(sup.get("shutdown_timeout", 5.0)),
        children=tuple(children),
    )


_WATCHDOG_PERIOD = 1.0
WATCH_PERIOD = 0.5  # how often the director looks at its children's processes (s)
STOP_POLL = 0.02  # stopping: how often it looks whether the child asked to stop exited (s)
_KILL_GRACE = 1.0  # s a child killed at shutdown may take to go before the next is stopped
_MAX_CLIENTS = 256  # attached clients remembered (the newest)


def _running(proc: Any) -> bool:
    """``proc`` (a psutil.Process) still runs: not gone, not a zombie."""
    import psutil

    try:
        return bool(proc.is_running()) and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _kill_tree(proc: Any) -> None:
    """Kill ``proc`` (a psutil.Process) and every process under it."""
    import psutil

    try:
        procs = [*proc.children(recursive=True), proc]
    except psutil.Error:
        procs = [proc]
    for p in procs:
        try:
            p.kill()
        except psutil.Error:
            pass


def _shutdown_timeout(config: dict[str, Any]) -> float:
    """``supervision.shutdown_timeout`` (default 5 s)."""
    value = (config.get("supervision") or {}).get("shutdown_timeout", 5.0)
    return max(0.0, float(value))


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _terminate_admin() -> None:
    """Stop the Thespian admin (this actor's parent process) and every actor
    process under it: nothing of an orphaned runtime may stay behind."""
    import os
    import signal

    import psutil

    me = psutil.Process()
    admin = me.parent()
    if admin is None:
        return
    procs = [p for p in admin.children(recursive=True) if p.pid != me.pid]
    for p in procs:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.Error:
            pass
    try:
        admin.send_signal(signal.SIGKILL)
    except psutil.Error:
        pass
    os._exit(0)


_ROLES: dict[str, type[WireActor]] = {
    "events": EventBus,
    "scheduler": Scheduler,
    "coordinator": Coordinator,
    "resources": ResourceTracker,
    "supervisor": Supervisor,
}


class Director(WireActor):
    role = "director"

    def __init__(self) -> None:
        super().__init__()
        self.runtime_id = ""
        self.config: dict[str, Any] = {}
        self.addresses: dict[str, ActorAddress] = {}
        self.engines: list[ActorAddress] = []
        self.children: list[ActorAddress] = []
        self.started = False
        self.expected: set[str] = set()
        self.requester: ActorAddress | None = None
        self.degraded = ""
        self.stopped = False
        # the facades that introduced themselves or said hello: told when the runtime degrades
        self.facades: dict[str, ActorAddress] = {}
        self.escalation: SupervisorEvent | None = None
        # clients attached with Hello (local mode: other processes): told when the
        # runtime shuts down, so their calls end with RuntimeClosed, not a time-out
        self.clients: list[ActorAddress] = []
        # local mode: the processes of the runtime's actors, watched and restarted
        # (see the "watching" section below)
        self.roles: dict[str, ActorAddress] = {}  # role -> its actor now
        self.classes: dict[str, type[WireActor]] = dict(_ROLES)  # role -> its actor class
        self.procs: dict[str, Any] = {}  # role -> psutil.Process of its actor
        self.below: dict[str, list[Any]] = {}  # role -> processes it started (engines...)
        self.restarting: dict[str, int] = {}  # role -> pid of the process that died
        self.restart_times: list[float] = []
        self.watching = False
        # shutdown: the children left to stop, last started first (the first is the one
        # asked now), and who is answered once they are all gone
        self.stop_queue: list[tuple[str, ActorAddress]] = []
        self.stop_phase = ""  # "shutdown": waiting for its answer | "exit": for its exit
        self.stop_deadline = 0.0
        self.stop_killed = 0.0
        self.stop_requesters: list[ActorAddress] = []
        self.stop_done = False

    def on_introduce(self, msg: Introduce, sender: ActorAddress) -> None:
        if self.started:
            self.send_msg(sender, Introduce(self.runtime_id, self.addresses, self.config))
            return
        self.started = True
        self.runtime_id = msg.runtime_id
        self.config = dict(msg.config)
        self.requester = sender
        self.facades[addr_key(sender)] = sender
        # Engines are created by their supervisor: only a parent hears that a child died.
        roles: dict[str, type[WireActor]] = dict(_ROLES)
        if self.config.get("cluster"):  # the leader of a cluster: places engines on members
            from .cluster import ClusterManager

            roles["cluster"] = ClusterManager
        self.classes = roles
        adopt = self.config.pop("adopt", None)
        if isinstance(adopt, dict):
            self._adopt(adopt, sender)
            return
        self.addresses = {"director": self.myAddress}
        self.expected = set(roles)
        for role, cls in roles.items():
            # A new child's address cannot travel in a message until its process is up
            # (multiproc bases): each child answers a ping, and its answer's sender is
            # the address the others get.
            self.send_msg(self.createActor(cls), Ping(role))

    def on_pong(self, msg: Pong, sender: ActorAddress) -> None:
        if msg.role in self.restarting:
            self._replacement_up(msg, sender)
            return
        if msg.role not in self.expected:
            return
        self.expected.discard(msg.role)
        self.roles[msg.role] = sender
        self._note_process(msg.role, msg.pid)
        self.addresses[msg.role] = sender
        if self.expected:
            return
        supervisor = self.addresses.pop("supervisor")
        cluster = self.addresses.pop("cluster", None)
        self.children = [
            self.addresses[r] for r in ("scheduler", "events", "coordinator", "resources")
        ]
        self.engines = [supervisor]
        if cluster is not None:
            self.engines.append(cluster)
            self.send_msg(cluster, Introduce(self.runtime_id, self.addresses, self.config))
        for addr in self.children:
            self.send_msg(addr, Introduce(self.runtime_id, self.addresses, self.config))
        spec = engine_supervisor_spec(self.config)
        self.send_msg(
            supervisor,
            Introduce(
                self.runtime_id, self.addresses, dict(self.config, supervisor=spec.to_dict())
            ),
        )
        self._answer_owner()

    def _answer_owner(self) -> None:
        """The facade that introduced the runtime gets the addresses, and (to
        re-create this director should its process die: local mode) the
        address and pid of every process it watches; then watching starts."""
        assert self.requester is not None
        self.send_msg(
            self.requester,
            Introduce(
                self.runtime_id,
                self.addresses,
                dict(
                    self.config,
                    you=self.requester,
                    director_pid=os.getpid(),
                    roles=dict(self.roles),
                    pids={role: int(p.pid) for role, p in self.procs.items()},
                ),
            ),
        )
        if self.config.get("owner_pid"):
            self.wake_after(_WATCHDOG_PERIOD, "watchdog")
        if self.config.get("mode") == "local":
            self.watching = True
            self.wake_after(WATCH_PERIOD, "watch")

    def _adopt(self, adopt: dict[str, Any], sender: ActorAddress) -> None:
        """local mode: the director's process died and the owner's driver made
        this one in its place (``Introduce`` with ``config["adopt"]``: the
        runtime's processes, each role's address and pid). It takes them over
        as they run: watches their pids (Thespian tells only their dead
        parent when one exits), restarts one that died, and tells everyone
        (children, engines through their supervisor, the facade, the clients
        attached to the runtime: ``config["adopt"]["clients"]``) its address
        with ``Replaced("director", ...)``. A role whose process is gone
        already is restarted at once."""
        roles: dict[str, ActorAddress] = dict(adopt.get("roles") or {})
        self.roles = roles
        for client in list(adopt.get("clients") or [])[-_MAX_CLIENTS:]:
            self.clients.append(client)
            self.facades[addr_key(client)] = client
        self.addresses = {"director": self.myAddress}
        self.addresses.update(
            {r: a for r, a in roles.items() if r not in ("supervisor", "cluster")}
        )
        self.children = [
            roles[r] for r in ("scheduler", "events", "coordinator", "resources") if r in roles
        ]
        self.engines = [roles[r] for r in ("supervisor", "cluster") if r in roles]
        self.expected = set()
        dead = []
        for role, pid in dict(adopt.get("pids") or {}).items():
            if role in roles:
                self._note_process(role, int(pid))
                if role not in self.procs:
                    dead.append(role)
        note = Replaced(
            "director",
            self.myAddress,
            int(adopt.get("pid") or 0),
            bool(self.config.get("journal")),
            os.getpid(),
        )
        for address in [*self.children, *self.engines]:
            self.send_msg(address, note)
        self._answer_owner()
        for address in [sender, *self.clients]:  # the owner, then attached clients
            self.send_msg(address, note)
        for role in dead:
            self._died(role)

    def on_wakeup(self, payload: Any) -> None:
        """local mode: when the process that owns the runtime is gone (killed,
        crashed), stop everything, the admin process included."""
        if payload == "watch":
            self._watch()
            return
        if payload == "stopping":
            self._stop_look()
            return
        if payload != "watchdog" or self.stopped:
            return
        owner = int(self.config.get("owner_pid") or 0)
        if owner and not _alive(owner):
            log.warning("the owner process %d is gone: shutting the runtime down", owner)
            self.on_shutdown(Shutdown("owner process died"), self.myAddress)
            _terminate_admin()
            return
        self.wake_after(_WATCHDOG_PERIOD, "watchdog")

    def on_poll(self, msg: Any, sender: ActorAddress) -> None:
        """A no-op: the embedded driver sends it to let due wake-ups fire."""

    def on_hello(self, msg: Hello, sender: ActorAddress) -> None:
        self.facades[addr_key(sender)] = sender
        if sender not in self.clients:
            self.clients.append(sender)
            del self.clients[:-_MAX_CLIENTS]
            if self.watching and self.requester is not None:
                # the owner keeps it: a director made after this one's death tells it
                self.send_msg(self.requester, Attached(sender))
        self.send_msg(
            sender, Introduce(self.runtime_id, self.addresses, dict(self.config, you=sender))
        )
        if self.escalation is not None:  # a client attaching to a degraded runtime learns it
            self.send_msg(sender, self.escalation)

    def on_supervisor_event(self, msg: SupervisorEvent, sender: ActorAddress) -> None:
        """A supervisor below reports a crash, a restart, or that it gave up."""
        if msg.what == "escalate" and not self.degraded:
            self.degraded = f"supervisor {msg.supervisor!r} gave up: {msg.detail}"
            log.error("runtime degraded: %s", self.degraded)
            # the facades first: a caller woken by a task the scheduler fails now
            # finds its runtime degraded already
            self.escalation = msg
            for facade in self.facades.values():
                self.send_msg(facade, msg)
        scheduler = self.addresses.get("scheduler")
        if scheduler is not None:
            self.send_msg(scheduler, msg)

    def on_shutdown(self, msg: Shutdown, sender: ActorAddress) -> None:
        """Stop the runtime (from the facade; an attached client's runtime, or
        ``llmspell stop``'s, goes through the scheduler's ``RequestStop``):
        attached clients are told, the scheduler cancels every unfinished
        task, and the children are stopped one at a time, the last started
        first, as OTP does: each asked to exit and waited for (its process's
        exit in local mode, Thespian can drop ``ChildActorExited``; its
        ``ChildActorExited`` otherwise) at most ``supervision.shutdown_timeout``
        s, then killed by pid. The engines' supervisor is first asked to stop
        its engines the same way (it answers ``Shutdown``). Once all are
        gone, whoever asked gets ``Shutdown`` back."""
        if self.stopped:
            asked = self.stop_queue[0][1] if self.stop_queue else None
            if self.stop_phase == "shutdown" and asked is not None and sender == asked:
                self._stop_exit()  # the engines' supervisor: its engines are stopped
            elif self.stop_done:
                if sender != self.myAddress:
                    self.send_msg(sender, Shutdown(msg.reason))
            elif sender != self.myAddress and sender not in self.stop_requesters:
                self.stop_requesters.append(sender)
            return
        self.stopped = True
        clients, self.clients = self.clients, []
        for client in clients:  # attached clients first: the runtime is going away
            if client != sender:
                self.send_msg(client, Shutdown(f"the served runtime stopped ({msg.reason})"))
        scheduler = self.addresses.get("scheduler")
        if scheduler is not None:
            self.send_msg(scheduler, msg)
        for addr in self.engines:
            if addr != self.roles.get("supervisor"):  # a cluster's: stops its engines now
                self.send_msg(addr, msg)
        # in reverse start order; a role replaced after a crash keeps its place
        started = [(r, self.roles[r]) for r in reversed(list(self.classes)) if r in self.roles]
        rest = [
            ("", a)
            for a in [*self.engines, *self.children]
            if a not in [addr for _, addr in started]
        ]
        self.stop_queue = [*started, *rest]
        self.engines = []
        self.children = []
        if sender != self.myAddress:
            self.stop_requesters.append(sender)
        self._stop_next()

    def _stop_next(self) -> None:
        """Ask the next child to stop, or, none left, answer who asked."""
        if not self.stop_queue:
            self.stop_done = True
            self.stop_phase = ""
            requesters, self.stop_requesters = self.stop_requesters, []
            for requester in requesters:  # acknowledge: everything is stopped
                self.send_msg(requester, Shutdown("the runtime is stopped"))
            return
        role, address = self.stop_queue[0]
        if self.watching:  # local mode: its process tells
            proc = self.procs.get(role) if role else None
            if proc is None or not _running(proc):
                if proc is None:  # not known (dead, being restarted): cannot be waited for
                    self.send(address, ActorExitRequest())
                self.stop_queue.pop(0)
                self._stop_next()
                return
        timeout = _shutdown_timeout(self.config)
        self.stop_killed = 0.0
        if role == "supervisor":
            # its engines one at a time first: each may take shutdown_timeout
            engines = sum(int(n) for n in dict(self.config.get("engines") or {}).values())
            self.stop_phase = "shutdown"
            self.stop_deadline = _clock.monotonic() + timeout * (engines + 1) + 1.0
            self.send_msg(address, Shutdown("the runtime is stopping"))
        else:
            self._stop_exit()
            return
        if self.watching:
            self.wake_after(STOP_POLL, "stopping")

    def _stop_exit(self) -> None:
        """The child asked now is told to exit."""
        _, address = self.stop_queue[0]
        self.stop_phase = "exit"
        self.stop_deadline = _clock.monotonic() + _shutdown_timeout(self.config)
        self.stop_killed = 0.0
        self.send(address, ActorExitRequest())
        if self.watching:
            self.wake_after(STOP_POLL, "stopping")

    def _stop_look(self) -> None:
        """(local mode, every ``STOP_POLL`` s while stopping) The child asked
        to stop: gone, on to the next; past its time, killed by pid (with what
        it started: an aggregator, an engine); killed and still there after
        ``_KILL_GRACE`` s, left behind (the owner's driver kills what is left)."""
        if not self.stop_queue or self.stop_done:
            return
        role, _ = self.stop_queue[0]
        proc = self.procs.get(role)
        now = _clock.monotonic()
        if proc is None or not _running(proc):
            self.stop_queue.pop(0)
            self._stop_next()
            return
        if now >= self.stop_deadline:
            if not self.stop_killed:
                log.warning(
                    "director: the %s process (pid %d) did not stop within %g s; killing it",
                    role,
                    proc.pid,
                    _shutdown_timeout(self.config),
                )
                self.stop_killed = now
                _kill_tree(proc)
            elif now - self.stop_killed > _KILL_GRACE:
                self.stop_queue.pop(0)
                self._stop_next()
                return
        self.wake_after(STOP_POLL, "stopping")

    def on_child_exited(self, child: ActorAddress) -> None:
        log.debug("director: child %s exited", child)
        if self.stopped:
            if self.stop_queue and not self.stop_done and child == self.stop_queue[0][1]:
                role = self.stop_queue[0][0]
                proc = self.procs.get(role) if self.watching and role else None
                # it said goodbye: the next once its process is gone (the next look)
                if proc is None or not _running(proc):
                    self.stop_queue.pop(0)
                    self._stop_next()
            return
        if not self.watching:
            return
        for role, address in list(self.roles.items()):
            if address == child:
                self._died(role)

    # -- watching: every process of the runtime is restarted when it dies ---------------
    #
    # local mode only (every actor a process of its own). Thespian can drop the
    # ChildActorExited it owes a parent, so the children's pids are polled as well.
    # A dead child is created again (restart intensity as for the engines: more than
    # ``supervision.intensity`` restarts within ``supervision.period`` s and the
    # runtime is degraded), and everyone who holds its address learns the new one
    # (``Replaced``): the other children, the engines (through their supervisor),
    # the facades. What each of them does about the work it lost is theirs to say.

    def on_query_stats(self, msg: QueryStats, sender: ActorAddress) -> None:
        """The pid of each runtime process it watches (local mode), its own too."""
        procs = {role: int(p.pid) for role, p in self.procs.items()}
        if procs:
            procs["director"] = os.getpid()
        self.send_msg(sender, StatsReply(msg.ref, {"processes": procs}))

    def _note_process(self, role: str, pid: int) -> None:
        if not pid:
            return
        import psutil

        try:
            self.procs[role] = psutil.Process(pid)
        except psutil.Error:  # already gone: noticed on the next look
            self.procs.pop(role, None)

    def _watch(self) -> None:
        if self.stopped:
            return
        import psutil

        for role, proc in list(self.procs.items()):
            try:
                dead = not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
            except psutil.Error:
                dead = True
            if dead:
                self._died(role)
                continue
            if role in ("supervisor", "coordinator"):  # engines, aggregators: orphans if it dies
                try:
                    self.below[role] = proc.children(recursive=True)
                except psutil.Error:
                    pass
        self.wake_after(WATCH_PERIOD, "watch")

    def _died(self, role: str) -> None:
        if self.stopped or role in self.restarting or self.degraded:
            return
        proc = self.procs.pop(role, None)
        pid = int(proc.pid) if proc is not None else 0
        log.warning("director: the %s process (pid %d) died", role, pid)
        for orphan in self.below.pop(role, ()):  # what it started cannot be reached now
            try:
                orphan.kill()
            except Exception:
                pass
        sup: dict[str, Any] = dict(self.config.get("supervision") or {})
        intensity = int(sup.get("intensity", 10))
        period = float(sup.get("period", 30.0))
        t = _clock.monotonic()
        self.restart_times = [h for h in self.restart_times if t - h <= period]
        self.restart_times.append(t)
        if len(self.restart_times) > intensity:
            detail = (
                f"the {role} process (pid {pid}) died; more than {intensity} restarts "
                f"of the runtime's processes within {period} s"
            )
            self.on_supervisor_event(
                SupervisorEvent("director", role, "escalate", detail), self.myAddress
            )
            return
        self.restarting[role] = pid
        self.send_msg(self.createActor(self.classes[role]), Ping(role))

    def _replacement_up(self, msg: Pong, sender: ActorAddress) -> None:
        """The new actor of a role that died answers: it gets its introduction,
        and everyone who held the dead one's address the new one."""
        role = msg.role
        pid = self.restarting.pop(role)
        old = self.roles.get(role)
        self.roles[role] = sender
        self._note_process(role, msg.pid)
        if self.stopped:
            self.send(sender, ActorExitRequest())
            return
        note = Replaced(role, sender, pid, bool(self.config.get("journal")), msg.pid)
        if role == "supervisor":
            # the scheduler first loses what ran on the dead engines, then new ones register
            for address in [*self.children, *self.facades.values()]:
                self.send_msg(address, note)
            self.engines = [sender]
            spec = engine_supervisor_spec(self.config)
            self.send_msg(
                sender,
                Introduce(
                    self.runtime_id, self.addresses, dict(self.config, supervisor=spec.to_dict())
                ),
            )
            return
        else:
            self.addresses[role] = sender
            self.children = [sender if c == old else c for c in self.children]
            self.send_msg(sender, Introduce(self.runtime_id, self.addresses, self.config))
            others = [c for c in self.children if c != sender] + list(self.engines)
        for address in [*others, *self.facades.values()]:
            self.send_msg(address, note)
