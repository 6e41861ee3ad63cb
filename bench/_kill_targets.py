"""The Python step of bench/kills.py: one file per run."""

from __future__ import annotations

import os
import time


def mark(dir: str, n: int, sleep: float = 0.0) -> int:
    time.sleep(sleep)
    with open(os.path.join(dir, f"{n}.{os.getpid()}.{os.urandom(4).hex()}"), "w"):
        pass
    return n
