"""Drivers: the one thread that talks to the actor system for a runtime.

``simpleSystemBase`` moves only inside ``tell``/``listen`` of the thread that
owns it, so an embedded runtime gets one driver thread that owns the system.
Every other thread (callers, Python worker threads finishing a call) hands it
``(address, bytes)`` through a queue; the driver sleeps on that queue until
there is work or the next Thespian wake-up is due, so an idle runtime costs no
CPU and a submission never waits for a timer.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from thespian.actors import ActorSystem
from thespian.system import isInternalActorSystemMessage

from ._actor import log, set_sink
from ._exceptions import LlmspellError
from .actors.director import DIRECTOR_NAME, Director
from .engines import _doorbell
from .messages import decode, encode
from .messages.codec import copy_data
from .messages.types import (
    Introduce,
    Poll,
    Shutdown,
    SupervisorEvent,
    TaskOutcome,
    TaskOutcomes,
)

__all__ = ["EmbeddedDriver"]

_STOP = object()
_NOOP = encode(Poll())
# Actors hand their messages for the facade straight to it (see _direct); False
# sends them through Thespian's external requester as before (kept for A/B
# measurements in bench/latency.py)
DIRECT_REPLIES = True
# A script engine runs the first quantum of what it was just given at once when
# nothing waits in the driver's queue (else it rings, as before); for A/B too
INLINE_FIRST_QUANTUM = True
_SCALARS = (type(None), bool, int, float, str, bytes)


class EmbeddedDriver:
    """Owns a ``simpleSystemBase`` actor system on a thread of its own."""

    mode = "embedded"

    def __init__(
        self, runtime_id: str, config: dict[str, Any], on_message: Callable[[Any], None]
    ) -> None:
        self.runtime_id = runtime_id
        self.config = config
        self.on_message = on_message
        self.inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.addresses: dict[str, Any] = {}
        self.director: Any = None
        self._ready = threading.Event()
        self._stopped = threading.Event()
        self._error: BaseException | None = None
        self.thread = threading.Thread(
            target=self._run, name=f"llmspell-driver-{runtime_id[:8]}", daemon=True
        )

    # -- any thread ---------------------------------------------------------

    def start(self, timeout: float = 30.0) -> dict[str, Any]:
        _doorbell.install(
            self.runtime_id, self.send, self.inbox.empty if INLINE_FIRST_QUANTUM else None
        )
        self.thread.start()
        if not self._ready.wait(timeout):
            raise LlmspellError("the embedded actor system did not start in time")
        if self._error is not None:
            raise LlmspellError(f"the actor system failed to start: {self._error}")
        return self.addresses

    def send(self, address: Any, data: bytes) -> None:
        """Deliver ``data`` to the actor at ``address`` (thread-safe)."""
        self.inbox.put((address, data))

    def call(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the driver thread."""
        self.inbox.put(fn)

    def stop(self, timeout: float = 10.0) -> None:
        if self.thread.is_alive():
            self.inbox.put(_STOP)
            self._stopped.wait(timeout)
        _doorbell.remove(self.runtime_id)

    # -- the driver thread --------------------------------------------------

    def _run(self) -> None:
        try:
            asys = ActorSystem("simpleSystemBase", transientUnique=True, logDefs=False)
        except Exception as exc:  # pragma: no cover - thespian failing to start
            self._error = exc
            self._ready.set()
            self._stopped.set()
            return
        self.asys = asys
        try:
            self.director = asys.createActor(Director, globalName=DIRECTOR_NAME)
            asys.tell(self.director, encode(Introduce(self.runtime_id, {}, self.config)))
            reply = self._collect(expect=Introduce)
            self.addresses = dict(reply.addresses) if reply is not None else {}
            requester = getattr(getattr(asys, "_systemBase", None), "actorRegistry", {}).get(
                "System:ExternalRequester"
            )
            if DIRECT_REPLIES and requester is not None:
                set_sink(lambda to, msg: self._direct(requester, to, msg))
        except Exception as exc:
            self._error = exc
            log.exception("the embedded actor system failed to start")
        self._ready.set()
        if self._error is None:
            self._loop(asys)
        try:
            set_sink(None)
            asys.shutdown()
        finally:
            self._stopped.set()

    def _loop(self, asys: Any) -> None:
        while True:
            try:
                if self._turn(asys):
                    return
            except Exception:  # never let one bad turn stop the runtime's only thread
                log.exception("driver: a turn of its loop failed")
                time.sleep(0.01)

    def _turn(self, asys: Any) -> bool:
        """Deliver what is queued (waiting for it or the next wake-up first);
        True once the runtime is shut down."""
        inbox = self.inbox
        wait = self._next_wakeup(asys)
        try:
            # (a far wake-up is waited for an hour at a time: the wait overflows)
            item = inbox.get(timeout=None if wait is None else min(wait, 3600.0))
        except queue.Empty:
            item = None
        items = [item] if item is not None else []
        for _ in range(10_000):
            try:
                items.append(inbox.get_nowait())
            except queue.Empty:
                break
        if not items:  # a wake-up is due: any tell lets it fire
            asys.tell(self.director, _NOOP)
        for it in items:
            if it is _STOP:
                self._shutdown(asys)
                return True
            try:
                if callable(it):
                    it()
                else:
                    asys.tell(it[0], it[1])
            except Exception:
                log.exception("driver: delivering a message failed")
        self._collect()
        return False

    def _collect(self, expect: type | None = None) -> Any:
        """Hand every message addressed to the outside to ``on_message``."""
        found = None
        while True:
            raw = self.asys.listen(0)
            if raw is None:
                return found
            try:
                msg = decode(raw) if isinstance(raw, (bytes, bytearray)) else raw
            except Exception as exc:
                log.warning("driver dropped a malformed reply: %s", exc)
                continue
            if expect is not None and isinstance(msg, expect) and found is None:
                found = msg
                continue
            self._deliver(msg)

    def _deliver(self, msg: Any) -> None:
        try:
            self.on_message(msg)
        except Exception:
            log.exception("driver: handling a reply failed")

    def _direct(self, requester: Any, to: Any, msg: Any) -> bool:
        """An actor's message for the facade (driver thread, inside a ``tell``):
        handed to ``on_message`` at once, without its encoding, a pass through
        Thespian's queue and the decoding after ``listen``. What reached the
        external requester before it is handed over first, so the facade sees
        every actor's messages in the order they were sent. The facade gets
        its own copy of any container in it (the sender may keep the original).
        False: ``to`` is not the facade (the actor sends the message itself)."""
        if to != requester.address:
            return False
        queued = getattr(requester.instance, "responses", None)
        while queued:
            raw = queued.pop(0)
            if not isinstance(raw, (bytes, bytearray)):
                if not isInternalActorSystemMessage(raw):
                    self._deliver(raw)  # as _collect does
                continue
            try:
                msg_before = decode(raw)
            except Exception as exc:
                log.warning("driver dropped a malformed reply: %s", exc)
                continue
            self._deliver(msg_before)
        if type(msg) is TaskOutcomes:
            msg = TaskOutcomes(
                [
                    TaskOutcome(
                        o.task_id, o.status, _own(o.value), _own(o.error), _own(o.usage), o.attempt
                    )
                    for o in msg.items
                ]
            )
        else:
            msg = decode(encode(msg))
        self._deliver(msg)
        return True

    def _next_wakeup(self, asys: Any) -> float | None:
        base = getattr(asys, "_systemBase", None)
        next_wakeup = getattr(base, "_next_wakeup", None)
        if next_wakeup is None:
            return 0.01  # pragma: no cover - poll if thespian's internals change
        timer = next_wakeup()
        if timer is None:
            return None
        remaining = timer.view().remaining()
        secs = remaining.total_seconds() if isinstance(remaining, timedelta) else 0.0
        return max(0.0, secs)

    def _shutdown(self, asys: Any) -> None:
        try:
            asys.tell(self.director, encode(Shutdown()))
            self._collect()
        except Exception:
            log.exception("driver: shutdown of the actor tree failed")


def _own(value: Any) -> Any:
    """``value`` itself when it is a scalar, else a copy of it (msgpack data)."""
    if type(value) in _SCALARS:
        return value
    if type(value) is dict and all(type(v) in _SCALARS for v in value.values()):
        return dict(value)
    return copy_data(value)


# Thespian's multiproc bases need a logging configuration (False is not
# accepted there); actor processes log warnings and worse to stderr.
_LOG_DEFS: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(name)s %(levelname)s %(message)s"}},
    "handlers": {
        "stderr": {"class": "logging.StreamHandler", "formatter": "plain", "level": "WARNING"}
    },
    "root": {"level": "WARNING", "handlers": ["stderr"]},
}


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (on ``host``)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def parse_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise LlmspellError(f"address must be 'host:port', got {address!r}")
    return host or "127.0.0.1", int(port)


def _listener_pid(port: int, host: str = "") -> int:
    """The pid of the process (not this one) listening on port (on ``host``)."""
    import os

    import psutil

    for proc in psutil.process_iter():
        if proc.pid == os.getpid():
            continue
        try:
            for c in proc.net_connections(kind="tcp"):
                if (
                    c.status == psutil.CONN_LISTEN
                    and c.laddr
                    and c.laddr.port == port
                    and (not host or c.laddr.ip in (host, "0.0.0.0", "::"))
                ):
                    return int(proc.pid)
        except psutil.Error:
            continue
    return 0


def _attach_secret(host: str, port: int, given: str | bytes | None) -> str | bytes:
    """The secret to attach to the runtime at ``host:port`` with: ``given``
    (``secret=``), else ``LLMSPELL_SECRET``, else one this process already
    holds for that port, else the served runtime's secret file. Checked with
    the runtime at once: the wrong one is one clear error."""
    import os

    from . import _frames

    secret: str | bytes | None = given or os.environ.get("LLMSPELL_SECRET") or None
    where = "secret=" if given else "LLMSPELL_SECRET"
    if secret is None:
        secret = _frames.registered(port)
        where = "this process"
    if secret is None:
        path = _frames.secret_path(port)
        try:
            secret = _frames.read_secret(port)
        except (OSError, UnicodeDecodeError) as exc:
            raise LlmspellError(f"cannot use the secret file of {host}:{port}: {exc}") from None
        where = str(path)
        if secret is None:
            if _frames.probe(host, port, _frames.new_secret()) == "silent":
                raise LlmspellError(
                    f"no llmspell runtime answered at {host}:{port} (something else listens there)"
                )
            raise LlmspellError(
                f"no secret for the llmspell runtime at {host}:{port}: {path} does not "
                "exist (it is written by `llmspell serve`); pass secret= or set "
                "LLMSPELL_SECRET"
            )
    answer = _frames.probe(host, port, secret)
    if answer == "wrong":
        raise LlmspellError(
            f"the llmspell runtime at {host}:{port} refused this client's secret "
            f"(from {where}): it is not that runtime's secret"
        )
    if answer != "ok":
        raise LlmspellError(
            f"no llmspell runtime answered at {host}:{port} (something else listens there)"
        )
    return secret


def _reap(procs: list[Any], timeout: float) -> None:
    """Wait up to ``timeout`` s for the runtime's processes to exit; kill (by
    pid) what is left."""
    import psutil

    if not procs:
        return
    _, alive = psutil.wait_procs(procs, timeout=max(0.0, timeout))
    for p in alive:
        try:
            log.warning("local runtime: process %d did not exit; killing it", p.pid)
            p.kill()
        except psutil.Error:
            pass
    deadline = time.monotonic() + 2.0  # a killed process not ours stays a zombie a while
    while any(_running(p) for p in alive) and time.monotonic() < deadline:
        time.sleep(0.02)


def _shutdown_timeout(config: dict[str, Any]) -> float:
    """``supervision.shutdown_timeout`` (default 5 s): how long close() lets
    the runtime's processes stop before it kills them."""
    value = (config.get("supervision") or {}).get("shutdown_timeout", 5.0)
    return max(0.0, float(value))


def _close_transport(asys: Any) -> None:
    """Close this process's endpoint of ``asys`` without asking its admin."""
    try:
        asys._systemBase.transport.close()
    except Exception:  # pragma: no cover - best effort; thespian internals
        log.debug("local driver: closing the transport failed", exc_info=True)


def _running(proc: Any) -> bool:
    """``proc`` (a psutil.Process) still runs: not gone, not a zombie."""
    import psutil

    try:
        return bool(proc.is_running()) and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _children() -> list[Any]:
    import psutil

    try:
        return list(psutil.Process().children())
    except psutil.Error:
        return []


def _reap_forked(pids: set[int]) -> None:
    """Collect the exit status of this process's own children among ``pids``
    (zombies otherwise); a child still running is waited for briefly."""
    import os
    import time

    deadline = time.monotonic() + 2.0
    left = set(pids)
    while left:
        for pid in list(left):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:  # not ours, or already collected
                done = pid
            if done:
                left.discard(pid)
        if not left or time.monotonic() > deadline:
            return
        time.sleep(0.02)


class LocalDriver:
    """A ``multiprocTCPBase`` actor system on 127.0.0.1: every actor in a
    process of its own, the admin on a loopback port.

    Callers' messages go out through one private endpoint (under a lock),
    wrapped in ``Via`` so that answers and outcomes come back to the
    driver's own endpoint, which a listener thread reads. With ``attach``
    (``"host:port"``) it joins a runtime served by ``llmspell serve`` instead
    of starting one, and leaves it running on ``stop``.
    """

    mode = "local"
    #: the address every socket of the runtime binds to (cluster mode: ``host=``)
    host = "127.0.0.1"

    def __init__(
        self,
        runtime_id: str,
        config: dict[str, Any],
        on_message: Callable[[Any], None],
        *,
        attach: str | None = None,
        secret: str | bytes | None = None,
        on_lost: Callable[[str], None] | None = None,
    ) -> None:
        self.runtime_id = runtime_id
        self.on_lost = on_lost  # an attached client: the served runtime went away
        self.secret = secret
        self.config = config
        self.on_message = on_message
        self.attach = attach
        self.addresses: dict[str, Any] = {}
        self.port = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self.thread = threading.Thread(
            target=self._listen, name=f"llmspell-listener-{runtime_id[:8]}", daemon=True
        )
        self.asys: Any = None
        self._sender: Any = None
        self._sender_cm: Any = None
        self.me: Any = None
        self.admin_pid = 0
        self.served_config: dict[str, Any] = {}
        self._director_gone = False

    def start(self, timeout: float = 30.0) -> dict[str, Any]:
        import contextlib
        import os

        from . import _frames, _loopback, _watchdog
        from .messages.types import Hello, Via

        self._via = Via
        self._before = {c.pid for c in _children()}
        self._forked: set[int] = set()
        self._seen: dict[int, Any] = {}  # pid -> psutil.Process of this runtime
        _loopback.install()
        if self.attach:
            host, port = parse_address(self.attach)
            self._check_attach_host(host)
            if not port_in_use(port, host):
                raise LlmspellError(f"no llmspell runtime is served at {host}:{port}")
            self.secret = _attach_secret(host, port, self.secret)
            self.host = host
        else:
            port = int(self.config.get("port") or free_port(self.host))
            if port_in_use(port, self.host):
                raise LlmspellError(f"port {port} on {self.host} is already in use")
            if self.secret is None:
                self.secret = _frames.new_secret()
        self.port = port
        # before Thespian starts: the admin and every actor process inherit it
        _frames.install()
        _frames.register(
            port, self.secret, int(self.config.get("max_frame_bytes") or _frames.DEFAULT_MAX_FRAME)
        )
        os.environ["THESPIAN_BASE_IPADDR"] = self._bind_host()
        caps = {"Admin Port": port, "llmspell.runtime": self.runtime_id, **self._capabilities()}
        try:
            # every process this forks (the admin, its logger, the actors they fork)
            # ends once this process is gone, from the very first fork
            with contextlib.nullcontext() if self.attach else _watchdog.owned_forks():
                self.asys = ActorSystem(
                    "multiprocTCPBase", caps, transientUnique=True, logDefs=_LOG_DEFS
                )
        except Exception as exc:
            if self.attach:  # something that is not an llmspell runtime listens there
                raise LlmspellError(
                    f"no llmspell runtime answered at {self.host}:{port} ({exc})"
                ) from None
            raise
        try:
            director = self.asys.createActor(Director, globalName=DIRECTOR_NAME)
            self.director = director
            if self.attach:
                request = encode(Hello(self.runtime_id))
            else:
                cfg = dict(self.config, owner_pid=os.getpid(), mode="local", port=port)
                cfg.update(self._actor_config())
                request = encode(Introduce(self.runtime_id, {}, cfg))
            raw = self.asys.ask(director, request, timeout)
            if raw is None:
                raise LlmspellError("the local runtime did not answer in time")
            reply = decode(raw)
            assert isinstance(reply, Introduce)
            self.addresses = dict(reply.addresses)
            self.me = reply.config.get("you")
            self.served_config = dict(reply.config)
        except BaseException:
            if not self.attach:
                self.asys.shutdown()
            raise
        self._sender_cm = self.asys.private()
        self._sender = self._sender_cm.__enter__()
        self.admin_pid = _listener_pid(port, self.host)
        # processes Thespian forked from this one (the admin, its logger): this process
        # must reap them once they exit, or each runtime leaves a zombie behind
        self._forked = {c.pid for c in _children()} - self._before
        if not self.attach:
            self.processes()  # the admin noted at once: stop() must know if it died
        self.thread.start()
        return self.addresses

    def _check_attach_host(self, host: str) -> None:
        from . import _loopback

        if not _loopback.is_loopback(host):
            raise LlmspellError("llmspell attaches to runtimes on 127.0.0.1 only")

    def _actor_config(self) -> dict[str, Any]:
        """What the director is told beyond the runtime's configuration."""
        return {}

    def _bind_host(self) -> str:
        """The address this process's sockets bind to (a cluster client: its own)."""
        return self.host

    def _capabilities(self) -> dict[str, Any]:
        """Thespian capabilities beyond the admin port (a cluster client: the leader's host)."""
        return {}

    def processes(self) -> list[Any]:
        """The runtime's processes: the Thespian admin and every actor under it."""
        import psutil

        if not self.admin_pid:
            return []
        try:
            admin = psutil.Process(self.admin_pid)
            found = [admin, *admin.children(recursive=True)]
        except psutil.Error:
            return []
        for p in found:  # remembered: an actor whose parent died is no longer under it
            self._seen.setdefault(p.pid, p)
        return found

    def _remembered(self) -> list[Any]:
        """Every process of this runtime seen so far that still runs (psutil
        checks the creation time, so a reused pid is never taken for one)."""
        alive = []
        for p in self._seen.values():
            try:
                if p.is_running():
                    alive.append(p)
            except Exception:
                pass
        return alive

    def send(self, address: Any, data: bytes) -> None:
        wrapped = encode(self._via(self.me, data))
        with self._lock:
            self._sender.tell(address, wrapped)

    def call(self, fn: Callable[[], None]) -> None:
        fn()

    def _served_admin(self) -> Any:
        """The served runtime's admin process (attached clients), or None."""
        import psutil

        try:
            return psutil.Process(self.admin_pid) if self.admin_pid else None
        except psutil.Error:
            return None

    def _lost(self, why: str) -> None:
        """An attached client: the served runtime is gone; stop listening."""
        self._stopping.set()
        log.warning("local driver: %s", why)
        if self.on_lost is not None:
            try:
                self.on_lost(why)
            except Exception:
                log.exception("local driver: handling the runtime's end failed")

    def _listen(self) -> None:
        import time

        look = 0.0
        admin = self._served_admin() if self.attach else None
        where = f"{self.host}:{self.port}"
        while not self._stopping.is_set():
            if time.monotonic() >= look:
                look = time.monotonic() + (0.5 if self.attach else 1.0)
                if not self.attach:
                    try:  # note the runtime's processes while they are all under the admin
                        self.processes()
                    except Exception:
                        pass
                    self._watch_director()
                elif admin is not None and not _running(admin):
                    self._lost(f"the served runtime at {where} is gone (its admin process exited)")
                    return
            try:
                raw = self.asys.listen(0.2)
            except Exception:
                if self._stopping.is_set():
                    return
                log.exception("local driver: listening failed")
                continue
            if raw is None:
                continue
            try:
                msg = decode(raw) if isinstance(raw, (bytes, bytearray)) else raw
            except Exception as exc:
                log.warning("local driver dropped a malformed message: %s", exc)
                continue
            if self.attach and type(msg) is Shutdown:  # the director says it stops
                self._lost(f"the served runtime at {where} stopped")
                return
            try:
                self.on_message(msg)
            except Exception:
                log.exception("local driver: handling a message failed")

    def _watch_director(self) -> None:
        """The director restarts every other runtime process; its own death
        (its process killed) degrades the runtime, saying so, rather than
        leaving calls to wait for what nobody restarts."""
        import psutil

        pid = int(self.served_config.get("director_pid") or 0)
        if not pid or self._director_gone:
            return
        try:
            gone = psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        except psutil.Error:
            gone = True
        if gone:
            self._director_gone = True
            detail = f"the director process (pid {pid}) died"
            log.error("local runtime: %s", detail)
            self.on_message(SupervisorEvent("llmspell", "director", "escalate", detail))

    def stop(self, timeout: float = 10.0) -> None:
        if self.asys is None:
            return
        if not self.attach:
            try:
                self.send(self.director, encode(Shutdown()))
            except Exception:
                log.exception("local driver: could not ask the director to shut down")
        self._stopping.set()
        if self.thread.is_alive():
            self.thread.join(timeout)
        try:
            if self._sender_cm is not None:
                self._sender_cm.__exit__(None, None, None)
        except Exception:  # pragma: no cover - best effort
            pass
        if not self.attach:
            current = self.processes()
            # and those an actor left behind when its parent was killed (orphans)
            procs = list({p.pid: p for p in [*current, *self._remembered()]}.values())
            admin = self._seen.get(self.admin_pid)
            if admin is None or _running(admin):
                self.asys.shutdown()
                # an engine stuck in a call (holding the GIL, say) never stops:
                # what has not exited within shutdown_timeout is killed by pid
                _reap(procs, min(timeout, _shutdown_timeout(self.config)))
            else:
                # Thespian's shutdown would retry the dead admin for ~15 s: the
                # actors were told to stop above; what has not exited soon is killed
                log.warning("local runtime: its admin process is gone; stopping the rest")
                _close_transport(self.asys)
                _reap(procs, min(timeout, 2.0))
            from . import _frames

            if self.secret is not None:
                _frames.unregister(self.port, self.secret)
            _reap_forked(self._forked)
        self.asys = None
