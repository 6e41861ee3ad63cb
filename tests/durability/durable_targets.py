"""Python steps of the crash-resume tests: each call leaves a file behind, so
a test counts how often a step really ran (at least once, at most 1 + retries
+ crashes)."""

from __future__ import annotations

import os
import time
import uuid

import llmspell


def count(dir: str, tag: str, delay: float = 0.0) -> str:
    """Record one run of step ``tag`` (a file in ``dir``), then return ``tag``."""
    t = llmspell.current_task()
    key = t.idempotency_key if t is not None else "-"
    with open(os.path.join(dir, f"{tag}.{uuid.uuid4().hex}.{key}"), "w") as f:
        f.write(str(t.attempt if t is not None else -1))
    if delay:
        time.sleep(delay)
    return tag


def runs(dir: str, tag: str) -> int:
    return sum(1 for name in os.listdir(dir) if name.split(".")[0] == tag)


def flaky(dir: str) -> str:
    """Fails the first time it runs (per ``dir``), then succeeds."""
    marker = os.path.join(dir, "flaky.ran")
    if not os.path.exists(marker):
        with open(marker, "w") as f:
            f.write("1")
        raise RuntimeError("flaky the first time")
    return "fine"
