"""The time every actor reads: epoch seconds, replaceable by a virtual clock.

Actors call ``now()`` rather than ``time.time()`` so that a simulation can run
them on virtual time (``llmspell.testing``).
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["now", "set_source"]

_source: Callable[[], float] = time.time


def now() -> float:
    """Seconds since the epoch, on the current clock."""
    return _source()


def set_source(source: Callable[[], float] | None) -> None:
    """Use ``source`` as the clock (None restores the wall clock)."""
    global _source
    _source = source or time.time
