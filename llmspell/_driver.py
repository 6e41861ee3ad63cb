"""Drivers: what runs a runtime's actors and carries the facade's messages.

Embedded (``EmbeddedDriver``): every actor lives in this process on a
``_loop.Loop``, run by one thread at a time. A caller that waits for a task
(``Runtime.result``) runs the loop itself when nobody else does, so a script
task is submitted, run and answered on the caller's own thread with no hand-off
at all; otherwise the driver's background thread runs it (work nobody waits
for, timers, what other threads send). Local and cluster (``LocalDriver``):
Thespian's ``multiprocTCPBase``, an actor per process.
"""

from __future__ import annotations

import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar, cast

from thespian.actors import ActorSystem

from . import _lanes
from ._actor import log
from ._exceptions import LlmspellError
from ._loop import Loop
from ._watchdog import START_THREAD
from .actors.director import DIRECTOR_NAME, Director
from .engines import _doorbell
from .messages import decode, encode
from .messages.config import DEFAULTS
from .messages.types import (
    Attached,
    Introduce,
    LaneAsk,
    LaneMark,
    LaneOffer,
    Replaced,
    Shutdown,
    SupervisorEvent,
)

__all__ = ["EmbeddedDriver", "LocalDriver"]

#: how long a re-created director may take to take the runtime over (s)
ADOPT_TIMEOUT = 5.0
#: of close()'s time, what is kept for shutting Thespian down and killing what is
#: left once the director has stopped its children (or stopped waiting for it) (s)
_CLOSE_RESERVE = 2.0
_MAX_CLIENTS = 256  # attached clients remembered for a re-created director (the newest)
_LANE_TIMEOUT = 5.0  # a lane's send that takes longer: its scheduler is stuck, the lane goes
_WATCH_GAP = 0.05  # the listener looks at the director's pid at most this often (s)

_STOP = object()
_FOREVER = float("inf")
# The longest an owner waits idle without looking again (a task's outcome set
# by another thread, close() say, does not ring the loop)
_IDLE_LOOK = 0.05
# For _HOT s after a caller's drive ended the background thread looks at least
# every _LAZY_LOOK s, and a send by the thread that drove last does not wake it:
# that thread most likely drives again at once (``result(submit(...))``), and a
# woken background thread would only take the GIL from it; if it does not, the
# background thread takes what it sent within _LAZY_LOOK
_HOT = 0.05
_LAZY_LOOK = 0.001
# ... but not while a caller's drive has gone on longer than this (s): a
# background thread woken then waits for the GIL that the caller gives up and
# takes back at every step of a script (lupa lets it go around each resume),
# which then costs the caller a futex wake at each step
_LONG_DRIVE = 0.002
_MAIN = threading.main_thread().ident
# a caller runs a lone fast Python call itself (engines._doorbell) only while what it
# waits for has more than this many seconds left to run out
_HELP_LEFT = 0.05


class _Sigint:
    """Ctrl-C while the main thread runs a loop: the application's SIGINT
    handler (``KeyboardInterrupt`` by default) runs once the turn is over,
    never inside an actor's code, which it would leave halfway through a
    message (a later task could then get another one's value, or hang).

    Installed in front of that handler by the first driver whose loop the
    main thread runs, put back when the last such driver stops (from the main
    thread; from another one it stays in front, passing every signal on)."""

    def __init__(self) -> None:
        self.prev: Any = None  # the handler this one stands in front of
        self.users = 0  # drivers that installed it and have not stopped
        self.held = False  # the main thread runs a loop now (main thread only)
        self.pending: tuple[int, Any] | None = None  # a SIGINT held back

    def __call__(self, signum: int, frame: Any) -> None:
        if self.held:
            self.pending = (signum, frame)
        else:
            self.prev(signum, frame)

    def install(self) -> bool:
        """(main thread) Stand in front of the SIGINT handler; False where
        there is no Python handler to stand in front of."""
        current: Any = signal.getsignal(signal.SIGINT)
        if current is not self:
            if not callable(current):  # ignored, the default action, or set from C
                return False
            self.prev = current
            signal.signal(signal.SIGINT, self)
        self.users += 1
        return True

    def remove(self) -> None:
        self.users -= 1
        if self.users <= 0 and threading.get_ident() == _MAIN:
            current: Any = signal.getsignal(signal.SIGINT)
            if current is self:
                signal.signal(signal.SIGINT, self.prev)

    def fire(self) -> None:
        """Run the handler of the SIGINT held back (it raises, by default)."""
        if self.pending is not None:
            signum, frame = self.pending
            self.pending = None
            self.prev(signum, frame)


_SIGINT = _Sigint()


class EmbeddedDriver:
    """Runs an embedded runtime's ``Loop``: on the thread of a caller waiting
    for a task when the loop is free, else on a background thread.

    Whoever holds the loop (its *owner*) takes what other threads sent (the
    facade's messages, the engines' worker threads' doorbells, callables),
    fires due timers and delivers messages until none is left; the loop itself
    is never touched by two threads at once. A caller that drives waits idle
    as the owner (woken by a send, a timer or ``_IDLE_LOOK``); the background
    thread never does: it lets go as soon as nothing is left, so the next
    caller can take over.
    """

    mode = "embedded"

    def __init__(
        self, runtime_id: str, config: dict[str, Any], on_message: Callable[[Any], None]
    ) -> None:
        self.runtime_id = runtime_id
        self.config = config
        self.on_message = on_message
        self.addresses: dict[str, Any] = {}
        self.director: Any = None
        self._lock = threading.Lock()
        # an idle owner waits on this lock, held while nobody rang: a bare lock, so
        # a worker thread's doorbell wakes the caller with one release and no
        # condition's bookkeeping on either side
        self._bell = threading.Lock()
        self._bell.acquire()
        # the background thread waits on this one (held while nobody rang it). A
        # caller that sends and then drives the loop itself takes back a ring the
        # background thread has not woken for yet (``_unring``): woken for nothing,
        # it would take the GIL from the thread that runs the task
        self._bg_bell = threading.Lock()
        self._bg_bell.acquire()
        self._bg_waiting = False  # the background thread waits on _bg_bell
        self._bg_rung = False  # _bg_bell was released for it and not yet taken
        self._incoming: deque[Any] = deque()
        self._owner = 0  # ident of the thread that runs the loop now (0: nobody)
        self._idle = False  # the owner waits for something to arrive
        # while it waits: until when (the loop's clock; inf: until rung)
        self._bg_until = _FOREVER
        self._drove_at = -_FOREVER  # when a caller's drive last ended (monotonic)
        self._drive_began = 0.0  # when the caller that owns the loop began (monotonic)
        self._last_driver = 0  # the thread that drove last
        # a caller that owns the loop and runs a queued sync call itself between turns
        # (engines._doorbell: the Python engine leaves it a lone call, waking no worker)
        self._helper = 0
        self._stopped = False
        self._done = threading.Event()
        self._introduced: Introduce | None = None
        self._sigint: bool | None = None  # _SIGINT installed (None: not tried yet)
        self.loop = Loop(self._outside)
        self.thread = threading.Thread(
            target=self._background, name=f"llmspell-driver-{runtime_id[:8]}", daemon=True
        )

    # -- any thread ---------------------------------------------------------

    def start(self, timeout: float = 30.0) -> dict[str, Any]:
        _doorbell.install(self.runtime_id, self.send, self._quiet, self._helping)
        self.director = self.loop.create(Director, None, DIRECTOR_NAME)
        self.send(self.director, encode(Introduce(self.runtime_id, {}, self.config)))
        self.drive(lambda: self._introduced is not None, timeout)
        reply = self._introduced
        if reply is None:
            self.stop(1.0)
            raise LlmspellError("the embedded actor system did not start in time")
        self.addresses = dict(reply.addresses)
        self.thread.start()
        return self.addresses

    def send(self, address: Any, data: Any) -> None:
        """Deliver ``data`` to the actor at ``address`` (thread-safe): bytes, or
        a message object nobody else holds (a worker's ``Poll``, the facade's
        ``SubmitTasks`` of plain tasks: ``_Core.hand_over``)."""
        with self._lock:
            self._incoming.append((address, data))
            if (
                not self._owner
                and self._bg_waiting
                and self._last_driver == threading.get_ident()
                and self._bg_until <= time.monotonic() + _LAZY_LOOK
            ):
                return  # this thread drives again soon, or the background looks
            self._ring()

    def call(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` where the loop runs, in turn with the messages sent."""
        with self._lock:
            self._incoming.append(fn)
            self._ring()

    def _ring(self) -> None:
        """(lock held) Whoever should take what just arrived is woken."""
        if self._owner:
            if self._idle:
                self._idle = False
                self._bell.release()
        else:
            self._ring_bg()

    def _ring_bg(self) -> None:
        """(lock held) Wake the background thread if it waits."""
        if self._bg_waiting and not self._bg_rung:
            self._bg_rung = True
            self._bg_bell.release()

    def _unring(self) -> None:
        """(lock held, by a thread that now owns the loop) Take back a ring of
        the background thread that it has not woken for yet: this owner takes
        what was sent."""
        if self._bg_rung and self._bg_bell.acquire(False):
            self._bg_rung = False

    def _quiet(self) -> bool:
        """Nothing waits to be taken (an engine may go on at once)."""
        return not self._incoming

    def _helping(self) -> bool:
        """The running thread is a caller that drives the loop and runs a queued
        sync call itself when the turn is over."""
        return self._helper == threading.get_ident()

    def drive(self, until: Callable[[], bool], timeout: float | None = None) -> bool:
        """Run the loop on this thread until ``until()`` holds or ``timeout``
        seconds pass (a script's step that is running then ends first: a
        resume that does not yield runs up to its step budget). False at once
        if another thread runs the loop (then wait for what you wait for: that
        thread or the background one delivers it).
        On the main thread a Ctrl-C raises ``KeyboardInterrupt`` between turns."""
        me = threading.get_ident()
        if me != _MAIN:
            return self._drive(me, until, timeout)
        if self._sigint is None:
            self._sigint = _SIGINT.install()
        if not self._sigint or _SIGINT.held:  # (held: an actor's code waits in a drive)
            return self._drive(me, until, timeout)
        _SIGINT.held = True
        try:
            return self._drive(me, until, timeout)
        finally:
            _SIGINT.held = False
            _SIGINT.fire()

    def _drive(self, me: int, until: Callable[[], bool], timeout: float | None) -> bool:
        with self._lock:
            if self._owner or self._stopped:
                return False
            self._owner = me
            self._drive_began = time.monotonic()
            self._unring()
            deadline = None if timeout is None else self._drive_began + timeout
            self._helper = me if timeout is None or timeout > _HELP_LEFT else 0
            # this caller may be left calls (to hand back if it leaves them): from its
            # first turn on, even one that ends its wait before it looks for them
            stole = self._helper == me
        loop = self.loop
        owner = True
        try:
            sigint = _SIGINT if me == _MAIN else None  # a Ctrl-C it holds back ends the drive
            while True:
                if (
                    deadline is not None
                    and self._helper
                    and deadline - time.monotonic() <= _HELP_LEFT
                ):
                    self._helper = 0  # too little of the wait left to spend on a call
                self._turn()
                if until() or self._stopped:
                    return True
                if sigint is not None and sigint.pending is not None:
                    return True
                job = None
                for stealer in _doorbell.stealers(self.runtime_id):
                    job = stealer.steal()
                    if job is not None:
                        break
                if job is not None:
                    # run it off the loop: another thread may drive while it runs
                    # (a Ctrl-C stays held back: it would leave the call's outcome untold)
                    self._let_go(me)
                    owner = False
                    job()
                    with self._lock:
                        if self._owner or self._stopped:
                            return False  # that thread delivers what this one waits for
                        self._owner = me
                        owner = True
                        self._drive_began = now = time.monotonic()
                        self._unring()
                        if deadline is None or deadline - now > _HELP_LEFT:
                            self._helper = me
                            stole = True
                    continue
                with self._lock:
                    now = time.monotonic()
                    if self._incoming:
                        if deadline is not None and deadline <= now:
                            return True
                        continue
                    due = loop.next_due()
                    wait = _IDLE_LOOK if due is None else min(_IDLE_LOOK, due - now)
                    if deadline is not None:
                        if deadline <= now:
                            return True
                        wait = min(wait, deadline - now)
                    if wait > 0:
                        self._idle = True
                        self._lock.release()
                        rang = False
                        try:
                            rang = self._bell.acquire(True, wait)
                        finally:
                            self._lock.acquire()
                            if self._idle:  # nobody rang
                                self._idle = False
                            elif not rang:  # rung after the wait timed out
                                self._bell.acquire(False)
        finally:
            if owner:
                self._let_go(me)
            if stole:  # calls left to this caller go to the worker threads
                for stealer in _doorbell.stealers(self.runtime_id):
                    stealer.kick()

    def _let_go(self, me: int) -> None:
        """(the owner) Stop driving the loop."""
        with self._lock:
            self._owner = self._helper = 0
            self._last_driver = me
            self._drove_at = time.monotonic()
            # what is left, or a timer due before the background thread looks
            # again, is the background's (it is not woken for nothing: it would
            # take the GIL from the next task's worker thread)
            if self._bg_waiting:
                due = self._next_due()
                if self._incoming or (due is not None and due < self._bg_until):
                    self._ring_bg()

    def run_until(self, done: Callable[[], bool], timeout: float | None) -> float | None:
        """Run the actors on the caller's thread until ``done()`` or ``timeout``
        when no other thread runs them (0.0: the caller need not block any
        more); else the caller blocks on its own event for all of ``timeout``
        while that thread delivers (``_runtime.Driver``)."""
        if self.drive(done, timeout) and (done() or not self._stopped):
            return 0.0
        # another thread runs the actors, or they were stopped under this caller
        # (close() on another thread): what it waits for is settled from there
        return timeout

    def stop(self, timeout: float = 10.0) -> None:
        with self._lock:
            if not self._stopped:
                self._incoming.append(_STOP)
                self._ring()
        if not self.drive(self._done.is_set, timeout):
            self._done.wait(timeout)
        _doorbell.remove(self.runtime_id)
        if self._sigint:
            self._sigint = False
            _SIGINT.remove()
        if self.thread.is_alive() and self.thread is not threading.current_thread():
            self.thread.join(timeout)

    # -- the owner of the loop ---------------------------------------------------

    def _turn(self) -> None:
        """Take what was sent, fire due timers, deliver until nothing is left."""
        loop = self.loop
        with self._lock:
            items = self._incoming
            self._incoming = deque()
        for it in items:
            if it is _STOP:
                self._shutdown()
                return
            try:
                if callable(it):
                    it()
                else:
                    loop.post(it[0], it[1], loop.outside)
            except Exception:
                log.exception("driver: taking a message in failed")
            if self._stopped:
                return
        try:
            loop.fire_timers()
            loop.run()
        except Exception:  # never let one bad turn stop the runtime
            log.exception("driver: a turn of the loop failed")

    def _outside(self, msg: Any) -> None:
        """A message an actor sent the facade."""
        if self._introduced is None and type(msg) is Introduce:
            self._introduced = msg
            return
        try:
            self.on_message(msg)
        except Exception:
            log.exception("driver: handling a reply failed")

    def _shutdown(self) -> None:
        loop = self.loop
        try:
            if self.director is not None:
                loop.post(self.director, encode(Shutdown()), loop.outside)
            loop.run()
            loop.stop_all()
        except Exception:
            log.exception("driver: shutdown of the actor tree failed")
        with self._lock:
            self._stopped = True
            self._incoming.clear()
            self._ring_bg()
        self._done.set()

    def _next_due(self) -> float | None:
        """(any thread) When the loop's earliest timer is due; another thread
        may own the loop meanwhile, so this is a glance, checked again later."""
        try:
            return self.loop.next_due()
        except IndexError:  # emptied under this glance
            return None

    def _bg_wait(self, until: float, wait: float | None) -> None:
        """(lock held, background thread) Wait to be rung, or ``wait`` s."""
        self._bg_until = until
        self._bg_waiting = True
        self._lock.release()
        got = False
        try:
            got = self._bg_bell.acquire(True, -1 if wait is None else wait)
        finally:
            self._lock.acquire()
            self._bg_waiting = False
            if self._bg_rung:
                self._bg_rung = False
                if not got:  # rung after the wait timed out
                    self._bg_bell.acquire(False)

    def _background(self) -> None:
        me = threading.get_ident()
        while True:
            with self._lock:
                while True:
                    if self._stopped:
                        return
                    due = self._next_due()
                    now = time.monotonic()
                    if not self._owner and (self._incoming or (due is not None and due <= now)):
                        break
                    # until the next timer, or until told: by a send while nobody
                    # owns the loop, or by an owner letting go of it with something
                    # left or a timer due earlier than that
                    look = due if due is not None and due > now else _FOREVER
                    if now - self._drove_at < _HOT and (
                        not self._owner or now - self._drive_began < _LONG_DRIVE
                    ):  # (see _LAZY_LOOK)
                        look = min(look, now + _LAZY_LOOK)
                    if look < _FOREVER:
                        self._bg_wait(look, min(look - now, 3600.0))
                    else:
                        self._bg_wait(_FOREVER, None)
                self._owner = me
            try:
                while True:
                    self._turn()
                    with self._lock:
                        if self._stopped or not self._incoming:
                            break
            except Exception:
                log.exception("driver: the background turn failed")
                time.sleep(0.01)
            finally:
                with self._lock:
                    self._owner = 0


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
    try:
        _, alive = psutil.wait_procs(procs, timeout=max(0.0, timeout))
    except ChildProcessError:  # one of ours collected by another thread meanwhile
        end = time.monotonic() + max(0.0, timeout)
        while any(_running(p) for p in procs) and time.monotonic() < end:
            time.sleep(0.02)
        alive = [p for p in procs if _running(p)]
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


class _OwnerLane:
    """The owner's lane to the scheduler: callers write frames under the
    driver's lock; a thread of its own reads (``_lanes``)."""

    __slots__ = ("done", "key", "marked", "max_bytes", "peer", "reader", "sock", "token")

    def __init__(self, sock: Any, peer: Any, token: bytes, max_bytes: int) -> None:
        self.sock = sock
        self.max_bytes = max_bytes
        self.peer = peer
        self.key = _lanes.lane_key(peer)
        self.token = token
        self.marked = threading.Event()  # the scheduler's LaneMark came
        self.done = threading.Event()  # its reader read it to the end (or gave up)
        self.reader: threading.Thread | None = None

    def close(self) -> None:
        import socket

        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            self.sock.close()
        except OSError:
            pass


_T = TypeVar("_T")


def _pad(k: int, make: Callable[[], _T]) -> _T:
    """``make()`` ``k`` calls deeper (see ``_STACK_PAD``)."""
    if k <= 0:
        return make()
    return _pad(k - 1, make)


# How many calls deeper than the fresh thread's own the admin is forked: where the
# engines' hot calls fall against the 16 KiB frame chunks (``_from_a_fresh_thread``).
# Measured on CPython 3.11.7 (a Python engine's page faults and CPU per task in
# 3,000-task batches): 0 -> 0.5 faults, ~9 us; 1-3 -> 2-2.6 faults, 20-26 us;
# 4 -> 0.35; 6 and 8 -> 0.01 faults, 4.2-4.7 us; 12 -> 0.1. bench/latency.py prints
# the engines' faults per task: a change on their hot path may call for another.
_STACK_PAD = 8


def _from_a_fresh_thread(make: Callable[[], _T]) -> _T:
    """``make()`` on a thread of its own, for the processes it forks.

    A forked process goes on from the stack of the thread that forked it, and
    every actor process of a local runtime descends from the fork that starts the
    admin. CPython 3.11 keeps a thread's frames in 16 KiB chunks, and a call that
    crosses a chunk's end maps a new chunk and unmaps it on return: a hot call
    that happens to sit there does that for every task. Where it sat depended on
    how deep in the application ``Runtime(mode="local")`` was called (the same
    engine cost 5 us a task, or 15, one page fault each). Forked from a new
    thread, every actor process starts at the same depth whatever the caller's,
    ``_STACK_PAD`` calls down."""
    box: list[Any] = []
    done = threading.Event()  # (a Thread.join that Ctrl-C interrupted cannot be retried)

    def run() -> None:
        try:
            box.append((True, _pad(_STACK_PAD, make)))
        except BaseException as exc:  # handed to the caller
            box.append((False, exc))
        finally:
            done.set()

    threading.Thread(target=run, name=START_THREAD, daemon=True).start()
    try:
        done.wait()
    except BaseException:  # (Ctrl-C while it starts) the start goes on: undo it once done
        done.wait()
        if box and box[0][0] and hasattr(box[0][1], "shutdown"):
            try:
                box[0][1].shutdown()
            except Exception:
                log.exception("local runtime: stopping an interrupted start failed")
        raise
    ok, value = box[0]
    if not ok:
        raise value
    return cast(_T, value)


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
        self._director_gone = False  # it died and is not coming back: degraded
        # re-creating a dead director (see _watch_director): what the first was told,
        # and each watched role's address and pid now (kept current by Replaced)
        self._intro: dict[str, Any] = {}
        self._roles: dict[str, Any] = {}
        self._pids: dict[str, int] = {}
        self._director_proc: Any = None
        self._adopting: tuple[int, float] | None = None  # (dead pid, answer deadline)
        self._director_restarts: list[float] = []
        #: (time the death was noticed, time the new director answered) of each restart
        self.director_restarts: list[tuple[float, float]] = []
        # clients attached to this runtime (the director tells of each): a director
        # re-created after its death is told them, and tells them its address
        self._clients: list[Any] = []
        self._closing = False  # stop() asked the director to stop everything
        self._lane: _OwnerLane | None = None  # to the scheduler, once it is up
        self._lane_asked: Any = None  # the scheduler asked for one
        self._stopped_ack = threading.Event()  # the director answered: all its children exited

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
                self.asys = _from_a_fresh_thread(
                    lambda: ActorSystem(
                        "multiprocTCPBase", caps, transientUnique=True, logDefs=_LOG_DEFS
                    )
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
                self._intro = cfg
                request = encode(Introduce(self.runtime_id, {}, cfg))
            raw = self.asys.ask(director, request, timeout)
            if raw is None:
                raise LlmspellError("the local runtime did not answer in time")
            reply = decode(raw)
            assert isinstance(reply, Introduce)
            self.addresses = dict(reply.addresses)
            self.me = reply.config.get("you")
            self.served_config = dict(reply.config)
            self._roles = dict(reply.config.get("roles") or {})
            self._pids = {r: int(p) for r, p in dict(reply.config.get("pids") or {}).items()}
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
        self._ask_lane(self.addresses.get("scheduler"))
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
        wrapped = None
        if self._lane is None:  # (wrapped outside the lock: most sends go one way)
            wrapped = encode(self._via(self.me, data))
        with self._lock:
            # lane or Thespian is decided under the lock _take_lane switches under:
            # a send that saw no lane must not go through Thespian after the mark
            lane = self._lane
            if (
                lane is not None
                and (address is lane.peer or _lanes.lane_key(address) == lane.key)
                and len(data) <= lane.max_bytes
            ):  # (too big a message: Thespian's frames refuse it, saying so)
                try:
                    lane.sock.sendall(_lanes.frame(data))
                    return
                except OSError as exc:  # its scheduler is gone (or stuck): Thespian
                    log.info("local driver: the lane to the scheduler broke (%s)", exc)
                    self._lane = None
                    lane.close()
            if wrapped is None:
                wrapped = encode(self._via(self.me, data))
            self._sender.tell(address, wrapped)

    def call(self, fn: Callable[[], None]) -> None:
        fn()

    def run_until(self, done: Callable[[], bool], timeout: float | None) -> float | None:
        """The actors run in their processes by themselves: the caller blocks on
        its own event for ``done`` for all of ``timeout`` (``_runtime.Driver``)."""
        return timeout

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

        look = watch = 0.0
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
                elif admin is not None and not _running(admin):
                    self._lost(f"the served runtime at {where} is gone (its admin process exited)")
                    return
            # the director's pid: at most every _WATCH_GAP s (a look costs /proc reads,
            # which on every message were a good part of the listener's time)
            if not self.attach and time.monotonic() >= watch:
                watch = time.monotonic() + _WATCH_GAP
                try:
                    self._watch_director()
                except Exception:
                    log.exception("local driver: watching the director failed")
            try:
                raw = self.asys.listen(0.1 if self._adopting else 0.2)
            except Exception:
                if self._stopping.is_set():
                    return
                log.exception("local driver: listening failed")
                continue
            if raw is None:
                continue
            if self._handle(raw):
                return

    def _handle(self, raw: Any) -> bool:
        """A message for this driver (the listener's or the lane's thread); True:
        the served runtime is gone, stop listening."""
        try:
            msg: Any = decode(raw) if isinstance(raw, (bytes, bytearray)) else raw
        except Exception as exc:
            log.warning("local driver dropped a malformed message: %s", exc)
            return False
        kind = type(msg)
        if kind is Shutdown:
            # the director says every child stopped, the scheduler too: what the
            # scheduler wrote on its lane before (its last outcomes: the tasks it
            # cancelled) is read first, as it was when it came through here
            self._finish_lane()
            if self.attach:  # the director says it stops
                self._lost(f"the served runtime at {self.host}:{self.port} stopped")
                return True
            self._stopped_ack.set()  # the owner's stop(): every child has exited
            return False
        if kind is Introduce:  # a new director took the runtime over
            self._adopted(msg)
            return False
        if kind is Attached:  # a client attached (kept for a new director)
            if msg.client not in self._clients:
                self._clients.append(msg.client)
                del self._clients[:-_MAX_CLIENTS]
            return False
        if kind is LaneOffer:
            self._take_lane(msg)
            return False
        if kind is LaneMark:
            lane = self._lane
            if lane is not None and lane.token == msg.token:
                lane.marked.set()
            return False
        if kind is Replaced:
            if msg.role != "director":
                self._roles[msg.role] = msg.address
                self._pids[msg.role] = int(msg.new_pid)
                if msg.role == "scheduler":  # its lane died with it: ask the new one
                    # (its reader reads on to the end: what the dead one sent before
                    # it died may wait there unread, as it would in Thespian's socket)
                    with self._lock:
                        self._lane = None
                    self._ask_lane(msg.address)
            elif self.attach:  # the owner made a new director: it told us
                self.director = msg.address
        try:
            self.on_message(msg)
        except Exception:
            log.exception("local driver: handling a message failed")
        return False

    # -- the lane to the scheduler (``_lanes``) ---------------------------------

    def _ask_lane(self, scheduler: Any) -> None:
        if scheduler is None or not _lanes.available():
            return
        self._lane_asked = scheduler
        try:
            self.send(scheduler, encode(LaneAsk()))
        except Exception:
            log.exception("local driver: asking for a lane failed")

    def _take_lane(self, offer: LaneOffer) -> None:
        """The scheduler's offer: connect, prove, mark, switch (as ``_lanes``
        describes); the scheduler's frames are read once its own mark came."""
        peer = self._lane_asked
        if peer is None:
            return
        try:
            sock = _lanes.connect(offer.name)
            sock.sendall(_lanes.frame(offer.token))
            sock.settimeout(_LANE_TIMEOUT)
        except (OSError, _lanes.LaneError) as exc:
            log.info("local driver: no lane to the scheduler (%s); Thespian it is", exc)
            return
        max_bytes = int(self.config.get("max_frame_bytes") or DEFAULTS.max_frame_bytes)
        lane = _OwnerLane(sock, peer, offer.token, max_bytes)
        mark = encode(self._via(self.me, encode(LaneMark(offer.token))))
        with self._lock:
            self._sender.tell(peer, mark)
            old, self._lane = self._lane, lane
        self._drop_lane(old)
        lane.reader = threading.Thread(
            target=self._read_lane, args=(lane,), name="llmspell-lane", daemon=True
        )
        lane.reader.start()

    def _read_lane(self, lane: _OwnerLane) -> None:
        reader = _lanes.FrameReader(lane.max_bytes)
        try:
            while not lane.marked.wait(0.2):  # what came before it through Thespian first
                if self._stopping.is_set() or self._lane is not lane:
                    return
            while not self._stopping.is_set():
                try:
                    data = lane.sock.recv(262144)
                except TimeoutError:
                    continue
                except OSError:
                    break
                if not data:
                    break
                try:
                    frames = reader.feed(data)
                except _lanes.LaneError as exc:
                    log.warning("local driver closed its lane with the scheduler: %s", exc)
                    break
                for raw in frames:
                    if self._handle(raw):
                        return
        finally:
            lane.done.set()
            self._drop_lane(lane)

    def _finish_lane(self, timeout: float = 2.0) -> None:
        """(The listener thread) wait until the lane's reader has read the lane to
        its end (the scheduler has exited: its end is closed)."""
        lane = self._lane
        if (
            lane is not None
            and lane.marked.is_set()
            and threading.current_thread() is not lane.reader
        ):
            if not lane.done.wait(timeout):
                log.warning("local driver: the scheduler's lane was not read to its end")

    def _drop_lane(self, lane: _OwnerLane | None) -> None:
        if lane is None:
            return
        with self._lock:
            if self._lane is lane:
                self._lane = None
        lane.close()

    def _watch_director(self) -> None:
        """The director restarts every other runtime process; this driver (of
        the process that owns the runtime) restarts the director. Its pid is
        looked at every ``_WATCH_GAP`` s (on the listener's turns: 0.2 s at most); once it is
        gone, a new director is made under the admin and told the runtime's
        configuration and each live process's address and pid (``Introduce``
        with ``config["adopt"]``). It takes them over and tells everyone its
        address (``Replaced``). Too many restarts (as for any runtime
        process), no admin left, or no answer within ``ADOPT_TIMEOUT`` s:
        the runtime is degraded, saying so, rather than leaving calls to wait
        for what nobody restarts."""
        import psutil

        if self._director_gone or self._stopping.is_set() or self._closing:
            return
        if self._adopting is not None:
            pid, deadline = self._adopting
            if time.monotonic() > deadline:
                self._give_up(
                    f"the director process (pid {pid}) died and its replacement did not "
                    f"answer within {ADOPT_TIMEOUT:g} s"
                )
            return
        pid = int(self.served_config.get("director_pid") or 0)
        if not pid:
            return
        proc = self._director_proc
        if proc is None or proc.pid != pid:
            try:
                proc = self._director_proc = psutil.Process(pid)
            except psutil.Error:
                proc = None
        try:
            gone = proc is None or not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
        except psutil.Error:
            gone = True
        if gone:
            self._restart_director(pid)

    def _restart_director(self, pid: int) -> None:
        noticed = time.monotonic()
        log.warning("local runtime: the director process (pid %d) died; restarting it", pid)
        sup = dict(self.config.get("supervision") or {})
        intensity = int(sup.get("intensity", 10))
        period = float(sup.get("period", 30.0))
        self._director_restarts = [t for t in self._director_restarts if noticed - t <= period]
        self._director_restarts.append(noticed)
        if len(self._director_restarts) > intensity:
            self._give_up(
                f"the director process (pid {pid}) died; more than {intensity} restarts of "
                f"the director within {period} s"
            )
            return
        admin = self._seen.get(self.admin_pid)
        if admin is None or not _running(admin) or not self._intro or not self._roles:
            self._give_up(f"the director process (pid {pid}) died and cannot be restarted")
            return
        old = str(self.director)
        director = None
        # the admin forgets the dead director's name once it hears of its exit (soon)
        while time.monotonic() - noticed < ADOPT_TIMEOUT / 2:
            try:
                made = self.asys.createActor(Director, globalName=DIRECTOR_NAME)
            except Exception as exc:
                log.warning("local runtime: creating a new director failed: %s", exc)
                made = None
            if made is not None and str(made) != old:
                director = made
                break
            time.sleep(0.05)
        if director is None:
            self._give_up(f"the director process (pid {pid}) died and cannot be restarted")
            return
        self.director = director
        self._adopting = (pid, noticed + ADOPT_TIMEOUT)
        self._adopt_noticed = noticed
        adopt = {
            "roles": dict(self._roles),
            "pids": dict(self._pids),
            "pid": pid,
            "clients": list(self._clients),
        }
        self.send(director, encode(Introduce(self.runtime_id, {}, dict(self._intro, adopt=adopt))))

    def _adopted(self, msg: Any) -> None:
        """The new director's answer: it watches the runtime's processes now."""
        if self._adopting is None:
            return
        self._adopting = None
        self.served_config.update(
            {k: v for k, v in msg.config.items() if k in ("director_pid", "roles", "pids")}
        )
        self._roles = dict(msg.config.get("roles") or {})
        self._pids = {r: int(p) for r, p in dict(msg.config.get("pids") or {}).items()}
        self.director_restarts.append((self._adopt_noticed, time.monotonic()))
        log.warning(
            "local runtime: a new director (pid %s) took the runtime over",
            msg.config.get("director_pid"),
        )

    def _await_stopped(self, until: float) -> None:
        """Wait for the director's answer to ``Shutdown`` (read by the
        listener thread) until ``until`` (time.monotonic()), or until the
        director's process is gone: it answers nobody then."""
        import psutil

        pid = int(self.served_config.get("director_pid") or 0)
        proc = self._director_proc
        if pid and (proc is None or proc.pid != pid):
            try:
                proc = psutil.Process(pid)
            except psutil.Error:
                return
        while not self._stopped_ack.is_set():
            left = until - time.monotonic()
            if left <= 0 or not self.thread.is_alive():
                log.warning("local runtime: the director did not say it stopped; going on")
                return
            if proc is not None and not _running(proc):
                return
            self._stopped_ack.wait(min(left, 0.05))

    def _give_up(self, detail: str) -> None:
        self._director_gone = True
        self._adopting = None
        log.error("local runtime: %s", detail)
        self.on_message(SupervisorEvent("llmspell", "director", "escalate", detail))

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the runtime (an attached client: only stop listening). The
        director stops its children one at a time, the last started first,
        killing one that is still running ``supervision.shutdown_timeout`` s
        after it was asked; this waits for its answer (at most ``timeout``
        less ``_CLOSE_RESERVE`` s), then shuts Thespian down and kills by pid
        what has not exited by ``timeout``."""
        if self.asys is None:
            return
        deadline = time.monotonic() + timeout
        if not self.attach:
            self._closing = True  # a director dying now is not replaced
            try:
                self.send(self.director, encode(Shutdown()))
            except Exception:
                log.exception("local driver: could not ask the director to shut down")
            else:
                self._await_stopped(deadline - _CLOSE_RESERVE)
        self._stopping.set()
        self._drop_lane(self._lane)
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
            left = max(0.0, deadline - time.monotonic())
            if admin is None or _running(admin):
                self.asys.shutdown()
                # an engine stuck in a call (holding the GIL, say) never stops:
                # what has not exited within shutdown_timeout is killed by pid
                left = max(0.0, deadline - time.monotonic())
                _reap(procs, min(left, _shutdown_timeout(self.config)))
            else:
                # Thespian's shutdown would retry the dead admin for ~15 s: the
                # actors were told to stop above; what has not exited soon is killed
                log.warning("local runtime: its admin process is gone; stopping the rest")
                _close_transport(self.asys)
                _reap(procs, min(left, 2.0))
            from . import _frames

            if self.secret is not None:
                _frames.unregister(self.port, self.secret)
            _reap_forked(self._forked)
        self.asys = None
