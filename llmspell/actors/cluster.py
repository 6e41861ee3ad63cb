"""Cluster mode, the leader's side: engines placed on members by capability.

A cluster is a Thespian *convention*: the leader's admin (``llmspell serve
--cluster``) is the convention leader, and each member (``llmspell join``)
starts an admin of its own whose capabilities name the convention leader
(``Convention Address.IPv4``) and describe the member: ``llmspell.member``
(its id), ``llmspell.engines``, ``llmspell.tags``, ``llmspell.workers``,
``llmspell.host`` and ``llmspell.pid`` (see ``llmspell._cluster``).

The ``ClusterManager`` (created by the director on the leader) asks the
leader's admin for convention updates (``notifyOnSystemRegistrationChanges``).
For each member that registers it creates the member's engine actors with
``createActor(..., targetActorRequirements={"llmspell.member": id})``: the
engine classes here accept only an actor system whose ``llmspell.member`` is
that id (``actorSystemCapabilityCheck``), so Thespian's admin forwards the
creation to that member and the engine runs there, in a process of the
member's admin. Engines register with the scheduler as in local mode, their
``EngineReady`` carrying the member, its host and its tags; the scheduler
places each task on the least loaded engine of its kind whose member has all
the task's ``tags``.

Deaths. The member's admin tells the manager when one engine exited
(Thespian forwards ``ChildActorExited`` to the actor that asked for the
creation): the scheduler re-runs or fails its tasks and the engine is
created again on the same member. A member that left (deregistered) or went
silent is *lost*: the manager pings every engine each ``BEAT`` seconds and
probes every member's admin (``_frames.identify``, from a thread: an engine
busy with ready scripts may leave a ping unread for seconds, its member's admin
answers at once), and a member from which neither an engine's answer nor its
admin's came for ``LOST_AFTER`` seconds (or whose join process is gone, seen by
its convention deregistration) is dropped; its in-flight tasks re-run elsewhere
per ``retries`` or fail with an error naming the member. A member that joins
later gets engines and takes new work.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from thespian.actors import ActorAddress, ActorExitRequest, ActorSystemConventionUpdate

from .._actor import WireActor, log
from ..engines.js import JsEngine
from ..engines.lua import LuaEngine
from ..engines.python import PythonEngine
from ..messages.types import EngineEvent, EngineUsage, Introduce, Ping, Pong, Shutdown

__all__ = [
    "BEAT",
    "LOST_AFTER",
    "MEMBER_CAP",
    "ClusterJsEngine",
    "ClusterLuaEngine",
    "ClusterManager",
    "ClusterPythonEngine",
]

MEMBER_CAP = "llmspell.member"
BEAT = 0.5  # seconds between two pings of every engine
LOST_AFTER = 3.0  # a member none of whose engines answered for this long is lost


def _placed_on(capabilities: dict[str, Any], requirements: dict[str, Any]) -> bool:
    """Thespian's placement test: only the member the leader chose runs it."""
    wanted = requirements.get(MEMBER_CAP)
    return wanted is not None and capabilities.get(MEMBER_CAP) == wanted


class _OnMember:
    """What a cluster engine adds to its kind: it runs only on the member the
    leader chose, and measures its own process there for the resource tracker
    (``EngineUsage``) each time the cluster manager pings it."""

    addresses: dict[str, ActorAddress]
    config: dict[str, Any]
    engine: str
    index: int
    _own_process: Any = None  # psutil.Process of this process, once measured

    @staticmethod
    def actorSystemCapabilityCheck(capabilities: Any, requirements: Any) -> bool:
        return _placed_on(capabilities, requirements)

    def on_ping(self, msg: Ping, sender: ActorAddress) -> None:
        super().on_ping(msg, sender)  # type: ignore[misc]
        if msg.role == "cluster":
            self._report_usage()

    def _report_usage(self) -> None:
        import os

        import psutil

        tracker = self.addresses.get("resources")
        if tracker is None:
            return
        try:
            if self._own_process is None:
                self._own_process = psutil.Process()
                self._own_process.cpu_percent(None)  # the first call only starts the measurement
            rss = int(self._own_process.memory_info().rss)
            cpu = float(self._own_process.cpu_percent(None))
        except psutil.Error as exc:  # pragma: no cover - its own process
            log.warning(
                "cluster: %s engine %d cannot measure itself: %s", self.engine, self.index, exc
            )
            return
        host = str(self.config.get("host", ""))
        usage = EngineUsage(self.engine, self.index, os.getpid(), rss, cpu, host)
        self.send_msg(tracker, usage)  # type: ignore[attr-defined]


class ClusterPythonEngine(_OnMember, PythonEngine):
    pass


class ClusterLuaEngine(_OnMember, LuaEngine):
    pass


class ClusterJsEngine(_OnMember, JsEngine):
    pass


CLASSES: dict[str, type[WireActor]] = {
    "python": ClusterPythonEngine,
    "lua": ClusterLuaEngine,
    "js": ClusterJsEngine,
}


class _Member:
    __slots__ = ("admin", "engines", "host", "id", "pid", "port", "seen", "tags", "workers")

    def __init__(self, admin: ActorAddress, caps: dict[str, Any]) -> None:
        self.admin = admin
        self.id = str(caps[MEMBER_CAP])
        self.host = str(caps.get("llmspell.host", ""))
        self.pid = int(caps.get("llmspell.pid", 0) or 0)
        self.engines = [e for e in caps.get("llmspell.engines") or () if e in CLASSES]
        self.tags = sorted(str(t) for t in caps.get("llmspell.tags") or ())
        self.workers = max(1, int(caps.get("llmspell.workers", 1) or 1))
        self.port = int(caps.get("Admin Port", 0) or 0)  # its admin's, on ``host``
        self.seen = time.monotonic()

    def describe(self) -> str:
        return f"cluster member {self.id} (host {self.host}, pid {self.pid})"


def _gone_here(member: _Member) -> bool:
    """The member runs on this machine and its process is gone (on another host
    only its heartbeat can tell)."""
    if not member.pid or not member.host:
        return False
    import socket

    import psutil

    try:  # an address of this machine: a socket can bind to it
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((member.host, 0))
    except OSError:
        return False

    try:
        return psutil.Process(member.pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
    except psutil.Error:
        return False


class _Engine:
    __slots__ = ("address", "engine", "index", "member", "pid", "restarts")

    def __init__(self, engine: str, index: int, member: _Member) -> None:
        self.engine = engine
        self.index = index
        self.member = member
        self.address: ActorAddress | None = None
        self.restarts = 0
        self.pid = 0  # its process on its member, once it answered a heartbeat


class _Prober:
    """A thread probing every member's admin each ``BEAT`` seconds; ``answered``
    holds when each last answered with the cluster's secret."""

    def __init__(self, key: bytes) -> None:
        self.key = key
        self.members: dict[str, tuple[str, int]] = {}  # id -> (host, admin port)
        self.answered: dict[str, float] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()
        threading.Thread(target=self._run, name="llmspell-member-probe", daemon=True).start()

    def watch(self, member: _Member) -> None:
        if member.host and member.port:
            with self.lock:
                self.members[member.id] = (member.host, member.port)

    def forget(self, member_id: str) -> None:
        with self.lock:
            self.members.pop(member_id, None)
            self.answered.pop(member_id, None)

    def last(self, member_id: str) -> float:
        with self.lock:
            return self.answered.get(member_id, 0.0)

    def _run(self) -> None:
        from .. import _frames

        while not self.stop.wait(BEAT):
            with self.lock:
                members = list(self.members.items())
            for member_id, (host, port) in members:
                if _frames.probe(host, port, self.key, timeout=1.0) == "ok":
                    with self.lock:
                        if member_id in self.members:
                            self.answered[member_id] = time.monotonic()


class ClusterManager(WireActor):
    role = "cluster"

    def __init__(self) -> None:
        super().__init__()
        self.runtime_id = ""
        self.addresses: dict[str, ActorAddress] = {}
        self.config: dict[str, Any] = {}
        self.members: dict[str, _Member] = {}
        self.engines: list[_Engine] = []
        self.next_index: dict[str, int] = {}
        self.stopping = False
        self.prober: _Prober | None = None

    # -- Thespian's convention updates come as objects, not wire bytes --------------

    def _dispatch_message(self, msg: Any, sender: ActorAddress) -> None:
        if isinstance(msg, ActorSystemConventionUpdate):
            self.on_convention_update(msg)
            return
        super()._dispatch_message(msg, sender)

    def on_introduce(self, msg: Introduce, sender: ActorAddress) -> None:
        self.runtime_id = msg.runtime_id
        self.addresses = dict(msg.addresses)
        self.config = dict(msg.config)
        from .. import _frames

        key = _frames.registered(int(self.config.get("port") or 0))
        if key is not None and self.prober is None:
            self.prober = _Prober(key)
        self.notifyOnSystemRegistrationChanges(True)
        self.wake_after(BEAT, "beat")

    def on_convention_update(self, msg: ActorSystemConventionUpdate) -> None:
        caps = msg.remoteCapabilities or {}
        if MEMBER_CAP not in caps or self.stopping:
            return
        member_id = str(caps[MEMBER_CAP])
        if not msg.remoteAdded:
            member = self.members.get(member_id)
            if member is not None:
                self._lose(member, "left the cluster")
            return
        if member_id in self.members:
            return  # a re-registration
        member = _Member(msg.remoteAdminAddress, caps)
        self.members[member_id] = member
        if self.prober is not None:
            self.prober.watch(member)
        log.warning(
            "cluster: %s joined, offering %s with tags %s",
            member.describe(),
            ", ".join(f"{member.workers} x {e}" for e in member.engines) or "no engines",
            member.tags,
        )
        for engine in member.engines:
            for _ in range(member.workers):
                index = self.next_index.get(engine, 0)
                self.next_index[engine] = index + 1
                eng = _Engine(engine, index, member)
                self.engines.append(eng)
                self._start(eng)

    def _start(self, eng: _Engine) -> None:
        member = eng.member
        eng.address = self.createActor(
            CLASSES[eng.engine], targetActorRequirements={MEMBER_CAP: member.id}
        )
        cfg = dict(self.config)
        cfg.pop("owner_pid", None)
        cfg.update(
            engine=eng.engine,
            index=eng.index,
            restarts=eng.restarts,
            member=member.id,
            host=member.host,
            tags=member.tags,
            mode="local",  # an engine in a process of its own, as in local mode
        )
        self.send_msg(eng.address, Introduce(self.runtime_id, self.addresses, cfg))

    # -- liveness ---------------------------------------------------------------------

    def on_wakeup(self, payload: Any) -> None:
        if payload != "beat" or self.stopping:
            return
        t = time.monotonic()
        for member in list(self.members.values()):
            if self.prober is not None:
                member.seen = max(member.seen, self.prober.last(member.id))
            if t - member.seen > LOST_AFTER:
                self._lose(member, f"answered no heartbeat for {LOST_AFTER:g} s")
        for eng in self.engines:
            if eng.address is not None:
                self.send_msg(eng.address, Ping("cluster"))
        self.wake_after(BEAT, "beat")

    def on_pong(self, msg: Pong, sender: ActorAddress) -> None:
        eng = self._find(sender)
        if eng is not None:
            eng.member.seen = time.monotonic()
            eng.pid = int(msg.pid or 0)

    def _find(self, address: ActorAddress) -> _Engine | None:
        for eng in self.engines:
            if eng.address is not None and eng.address == address:
                return eng
        return None

    def on_child_exited(self, child: ActorAddress) -> None:
        """One engine of a member exited (its member's admin says so): its tasks
        re-run or fail, and it is created again on the same member."""
        eng = self._find(child)
        if eng is None or self.stopping:
            return
        member = eng.member
        log.warning("cluster: %s engine %d on %s died", eng.engine, eng.index, member.describe())
        eng.address = None
        pid, eng.pid = eng.pid, 0
        if member.id in self.members and _gone_here(member):
            # its member's process is dead (an engine exits when its member's process
            # dies): the member is lost now, not re-created on, to be lost again later
            self._lose(member, "process exited")
            return
        scheduler = self.addresses.get("scheduler")
        if scheduler is not None:
            self.send_msg(
                scheduler,
                # with its pid (if it told it): a word that comes after the
                # replacement's EngineReady then leaves the replacement alone
                EngineEvent(
                    eng.engine, eng.index, "crash", f"the engine on {member.describe()} died", pid
                ),
            )
        if member.id in self.members:
            eng.restarts += 1
            self._start(eng)

    def _lose(self, member: _Member, why: str) -> None:
        self.members.pop(member.id, None)
        if self.prober is not None:
            self.prober.forget(member.id)
        detail = f"{member.describe()} {why}"
        log.warning("cluster: %s; its engines are dropped", detail)
        scheduler = self.addresses.get("scheduler")
        mine = [e for e in self.engines if e.member is member]
        self.engines = [e for e in self.engines if e.member is not member]
        for eng in mine:
            if scheduler is not None:
                self.send_msg(scheduler, EngineEvent(eng.engine, eng.index, "lost", detail))
            if eng.address is not None:  # if it still runs somewhere: stop it
                self.send(eng.address, ActorExitRequest())
                eng.address = None

    # -- shutdown ---------------------------------------------------------------------

    def on_shutdown(self, msg: Shutdown, sender: ActorAddress) -> None:
        self._stop_all()

    def on_exit(self) -> None:
        self._stop_all()

    def _stop_all(self) -> None:
        if self.stopping:
            return
        self.stopping = True
        if self.prober is not None:
            self.prober.stop.set()
        for eng in self.engines:
            if eng.address is not None:
                self.send_msg(eng.address, Shutdown("the cluster leader stopped"))
                self.send(eng.address, ActorExitRequest())
                eng.address = None
        try:
            self.notifyOnSystemRegistrationChanges(False)
        except Exception:  # pragma: no cover - the admin may be gone already
            pass
