"""Every process of a local runtime ends soon after the process that owns it.

A local runtime's processes (the Thespian admin, its logger, the director and
every actor under it) are forked from the owner, directly or through each
other. The director's own watchdog stops the runtime cleanly when the owner
dies, but it runs only once the runtime has started: an owner killed during
start-up used to leave the admin, the logger and the director running for
good. ``owned_forks()`` closes that gap from the very first fork: while it
is active in the owner, every process forked from it -- and, since they
inherit the setting, every process those fork -- starts a thread that checks
every ``PERIOD`` seconds whether the owner still runs, and ends its process
once the owner has been gone for two checks in a row. The owner's other
forks (the application's own) are left alone.

The check reads ``/proc/<pid>/stat`` (a zombie or a new process that reused
the pid counts as gone); without ``/proc`` it falls back to ``os.kill(pid,
0)``. It takes no lock a fork could leave held. Each such process also moves
what it inherited out of the cyclic garbage collector's sight (``gc.freeze``).
"""

from __future__ import annotations

import contextlib
import gc
import os
import threading
import time
from collections.abc import Iterator

__all__ = ["PERIOD", "die_with_parent", "owned_forks", "owner_alive"]

PERIOD = 0.5  # seconds between two looks at the owner
START_THREAD = "llmspell-start"  # _driver's thread a local runtime forks its processes from

_registered = False
_parent = 0  # die_with_parent(): the pid of the process that forked this one
_armed = False  # forks belong to a runtime being started (inherited by children)
_owner: tuple[int, str] = (0, "")  # pid and start time of the owning process


def _stat(pid: int) -> tuple[str, str] | None:
    """(state, start time) of ``pid`` from /proc, None when it does not exist."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return None
    except OSError:
        return ("?", "")
    fields = raw[raw.rfind(b")") + 2 :].split()  # the name may hold spaces or ')'
    if len(fields) < 20:
        return ("?", "")
    return (fields[0].decode(), fields[19].decode())


def owner_alive(pid: int, start: str) -> bool:
    """True while ``pid`` runs and is the process that started at ``start``."""
    if os.path.isdir("/proc/self"):
        found = _stat(pid)
        if found is None:
            return False
        state, started = found
        return state not in ("Z", "X") and (not start or not started or started == start)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _watch(pid: int, start: str) -> None:
    missed = 0
    while True:
        time.sleep(PERIOD)
        missed = 0 if owner_alive(pid, start) else missed + 1
        if missed >= 2:
            os._exit(1)  # the owner is gone: so is its runtime
        if _parent and os.getppid() != _parent:
            os._exit(1)  # (die_with_parent) the process that forked this one is gone


def die_with_parent() -> None:
    """From now on this process ends once the process that forked it is gone (its
    watchdog sees it reparented, within ``PERIOD`` seconds): an engine whose
    supervisor died can be reached by nobody."""
    global _parent
    _parent = os.getppid()


def _after_fork_in_child() -> None:
    # (a fork copies only the thread that forked: each child starts its own)
    global _parent
    _parent = 0  # die_with_parent() is the forking process's, not its children's
    if not _armed:
        return
    me = threading.current_thread()
    if me.name == START_THREAD:  # the runtime forks from a thread of its own: in the
        me.name = "MainThread"  # child that thread is the main one, and says so
    pid, start = _owner
    if not pid or pid == os.getpid():
        return
    # What came with the fork (the owner's modules and data, the application's
    # with them) is never this process's garbage to find: the collector stops
    # walking it (every full collection of a scheduler or an engine did, ~15 % of
    # the scheduler's time per task in a batch). Objects freed by their reference
    # counts are freed as before.
    gc.freeze()
    threading.Thread(target=_watch, args=(pid, start), name="llmspell-owner", daemon=True).start()


@contextlib.contextmanager
def owned_forks() -> Iterator[None]:
    """While active, processes forked from this one watch it (see the module)."""
    global _registered, _armed, _owner
    if not hasattr(os, "register_at_fork"):  # pragma: no cover - no fork here
        yield
        return
    if not _registered:
        os.register_at_fork(after_in_child=_after_fork_in_child)
        _registered = True
    found = _stat(os.getpid())
    _owner = (os.getpid(), found[1] if found else "")
    _armed = True
    try:
        yield
    finally:
        _armed = False
