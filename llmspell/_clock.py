"""The time every actor reads: epoch seconds, replaceable by a virtual clock.

Actors call ``now()`` rather than ``time.time()``, and ``monotonic()`` rather
than ``time.monotonic()``, so that a simulation can run them on virtual time
(``llmspell.testing``).
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["monotonic", "now", "set_source"]

_source: Callable[[], float] = time.time
_mono: Callable[[], float] = time.monotonic


def now() -> float:
    """Seconds since the epoch, on the current clock."""
    return _source()


def monotonic() -> float:
    """Seconds on a clock that never goes back (``time.monotonic``, or the virtual one)."""
    return _mono()


def set_source(source: Callable[[], float] | None) -> None:
    """Use ``source`` as the clock, for ``now()`` and ``monotonic()`` alike (None
    restores the real clocks)."""
    global _source, _mono
    _source = source or time.time
    _mono = source or time.monotonic
