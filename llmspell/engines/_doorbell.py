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

__all__ = ["get", "install", "remove"]

Bell = Callable[[Any, bytes], None]  # called with the engine's address and a message

_bells: dict[str, Bell] = {}
_lock = threading.Lock()


def install(runtime_id: str, bell: Bell) -> None:
    with _lock:
        _bells[runtime_id] = bell


def remove(runtime_id: str) -> None:
    with _lock:
        _bells.pop(runtime_id, None)


def get(runtime_id: str) -> Bell | None:
    with _lock:
        return _bells.get(runtime_id)
