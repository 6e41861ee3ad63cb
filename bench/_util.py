"""Small helpers shared by the benchmarks (not a test)."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable


def best_of(fn: Callable[[], object], repeat: int = 3) -> float:
    """The fastest of ``repeat`` runs of ``fn``, in seconds (least disturbed by
    other load on a shared machine)."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def median_of(fn: Callable[[], object], repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def paired_rounds(
    baseline: Callable[[], object],
    measured: Callable[[], object],
    rounds: int,
    extras: dict[str, Callable[[], object]] | None = None,
) -> tuple[list[float], list[float], list[float], dict[str, list[float]]]:
    """Time ``baseline`` and ``measured`` back to back ``rounds`` times, the order
    alternating (the machine's speed drifts over seconds, so each round's ratio
    compares like with like), and each of ``extras`` once per round. Returns the
    baseline times, the measured times, each round's ratio measured / baseline and
    the extras' times by name."""
    base_t: list[float] = []
    meas_t: list[float] = []
    ratios: list[float] = []
    extra_t: dict[str, list[float]] = {name: [] for name in extras or {}}
    for r in range(rounds):
        for name, fn in (extras or {}).items():
            extra_t[name].append(best_of(fn, 1))
        if r % 2 == 0:
            b, m = best_of(baseline, 1), best_of(measured, 1)
        else:
            m, b = best_of(measured, 1), best_of(baseline, 1)
        base_t.append(b)
        meas_t.append(m)
        ratios.append(m / b)
        gc.collect()
    return base_t, meas_t, ratios, extra_t


def table(rows: list[tuple[str, str]]) -> str:
    width = max(len(a) for a, _ in rows)
    return "\n".join(f"| {a.ljust(width)} | {b} |" for a, b in rows)
