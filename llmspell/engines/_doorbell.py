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
from typing import Any

__all__ = ["get", "held", "hold", "install", "quiet", "release", "remove"]

Bell = Callable[[Any, bytes], None]  # called with the engine's address and a message

_bells: dict[str, Bell] = {}
# runtime id -> True while nothing waits in the driver's queue (no submit, cancel or
# query of the facade): an engine may then go on at once instead of ringing
_quiet: dict[str, Callable[[], bool]] = {}
_lock = threading.Lock()


def install(runtime_id: str, bell: Bell, quiet: Callable[[], bool] | None = None) -> None:
    with _lock:
        _bells[runtime_id] = bell
        if quiet is not None:
            _quiet[runtime_id] = quiet


def remove(runtime_id: str) -> None:
    with _lock:
        _bells.pop(runtime_id, None)
        _quiet.pop(runtime_id, None)


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
