"""Wake an engine actor from another thread.

Thespian actors may only be touched from the thread that runs them, but
Python tasks finish on worker threads. In ``embedded`` mode the runtime's
driver thread installs a bell for its runtime id: ringing it makes the driver
send a ``Poll`` to the engine, which then collects the finished work. Where no
bell is installed (``local`` mode, one process per engine), engines poll
themselves with short wake-ups while work is in flight.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Protocol

__all__ = [
    "add_stealer",
    "get",
    "held",
    "helping",
    "hold",
    "install",
    "quiet",
    "release",
    "remove",
    "remove_stealer",
    "stealers",
]

Bell = Callable[[Any, bytes], None]  # called with the engine's address and a message

_bells: dict[str, Bell] = {}
# runtime id -> True while nothing waits in the driver's queue (no submit, cancel or
# query of the facade): an engine may then go on at once instead of ringing
_quiet: dict[str, Callable[[], bool]] = {}
_lock = threading.Lock()


# Sync calls a caller's thread may run itself (embedded): a caller that runs the loop
# while it waits for a task takes a call queued for the Python engine's worker threads
# and runs it between turns, instead of handing it to a worker and waiting to be woken
# (two thread switches a round trip). ``helping`` says whether the running thread is
# such a caller (the engine then leaves it the call, waking no worker).
class Stealer(Protocol):
    def steal(self) -> Callable[[], None] | None:
        """The next queued call as a function to run on this thread, or None."""

    def kick(self) -> None:
        """The caller stops driving: calls left for it go to the worker threads."""


_helping: dict[str, Callable[[], bool]] = {}
_stealers: dict[str, list[Stealer]] = {}


def install(
    runtime_id: str,
    bell: Bell,
    quiet: Callable[[], bool] | None = None,
    helping: Callable[[], bool] | None = None,
) -> None:
    with _lock:
        _bells[runtime_id] = bell
        if quiet is not None:
            _quiet[runtime_id] = quiet
        if helping is not None:
            _helping[runtime_id] = helping


def remove(runtime_id: str) -> None:
    with _lock:
        _bells.pop(runtime_id, None)
        _quiet.pop(runtime_id, None)
        _helping.pop(runtime_id, None)
        _stealers.pop(runtime_id, None)


def helping(runtime_id: str) -> Callable[[], bool] | None:
    with _lock:
        return _helping.get(runtime_id)


def add_stealer(runtime_id: str, steal: Stealer) -> None:
    with _lock:
        _stealers[runtime_id] = [*_stealers.get(runtime_id, ()), steal]


def remove_stealer(runtime_id: str, steal: Stealer) -> None:
    with _lock:
        left = [s for s in _stealers.get(runtime_id, ()) if s is not steal]
        if left:
            _stealers[runtime_id] = left
        else:
            _stealers.pop(runtime_id, None)


def stealers(runtime_id: str) -> list[Stealer]:
    """(a snapshot: engines come and go while callers look)"""
    with _lock:
        return _stealers.get(runtime_id, [])


def quiet(runtime_id: str) -> Callable[[], bool] | None:
    with _lock:
        return _quiet.get(runtime_id)


def get(runtime_id: str) -> Bell | None:
    with _lock:
        return _bells.get(runtime_id)


# Work of a runtime that runs on threads of its own in real time (an agent's own
# code), counted so that a simulation waits for it before it moves its virtual
# clock on: otherwise a jump in time would time the work out before it could end.
_held: dict[str, int] = {}


def hold(runtime_id: str) -> None:
    with _lock:
        _held[runtime_id] = _held.get(runtime_id, 0) + 1


def release(runtime_id: str) -> None:
    with _lock:
        n = _held.get(runtime_id, 0) - 1
        if n > 0:
            _held[runtime_id] = n
        else:
            _held.pop(runtime_id, None)


def held(runtime_id: str) -> int:
    """How many pieces of real-time work of the runtime are running now."""
    with _lock:
        return _held.get(runtime_id, 0)
