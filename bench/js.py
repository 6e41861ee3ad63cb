"""JavaScript engine benchmarks: scheduling overhead and memory per pending task.

(a) ``n`` (default 10,000) concurrent JS tasks, each awaiting ``spell.sleep(0)`` ten
    times, submitted with ``rt.submit_many`` and awaited with ``rt.result``, against a
    hand-written loop that drives ``n`` promises directly in one bare QuickJS context in
    this process (one async function per task whose ``spell.sleep(0)`` returns a promise
    the loop resolves; round-robin until each has settled: what a minimal scheduler
    does). A middle row drives ``JsVM`` (the frozen, budgeted VM the engine uses) with
    the same minimal loop, to show what the VM itself adds. Rounds are paired (raw and
    runtime back to back, the order alternating) and the median of the rounds' ratios
    is the figure, the ratio of the bests beside it: the machine is shared and noisy.
    Target: runtime / raw <= 3x. Two floor rows: the raw loop with a QuickJS time
    limit set while jobs run (what any loop must pay to stop ``while(true){}``: the
    ``quickjs`` binding reads the process CPU clock, a system call, on every call
    made under a limit), and the runtime with tasks that only ``return 1``.
(b) ``m`` (default 10,000) JS tasks pending at once through the runtime (blocked in
    ``spell.wait_event`` or in a long ``spell.sleep``), measured by QuickJS's own malloc
    figure (``JsVM.memory_in_use``, reported as a task's ``memory_bytes``) and by the
    process RSS (psutil); both deltas divided by ``m``. Then every task is cancelled.

Usage: ``python bench/js.py [N] [M] [ROUNDS]``.
"""

from __future__ import annotations

import gc
import os
import statistics
import sys
import time
from collections import deque
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import psutil
import quickjs
from _util import paired_rounds, table

from llmspell import Runtime, Task
from llmspell.engines._vm import Completed, Yielded
from llmspell.engines.js_vm import JsVM

CODE = "for (let i = 0; i < 10; i++) await spell.sleep(0); return 1"

# -- (a) scheduling overhead ------------------------------------------------------------------

_RAW = """
var pending = [], head = 0, done = 0;
var spell = {sleep: function (s) { return new Promise(function (r) { pending.push(r); }); }};
var body = async function (spell) { %s };
function start(n) { for (var i = 0; i < n; i++) body(spell).then(function () { done++; }); }
function step() { var r = pending[head]; pending[head++] = undefined; r(); }
function left() { return pending.length - head; }
function finished() { return done; }
"""


def raw_loop(n: int, limit: float | None = None) -> None:
    """``n`` async functions on a bare QuickJS context; the loop resolves one pending
    promise at a time and drains the job queue, like a scheduler resuming one task.
    With ``limit``, jobs run under a QuickJS time limit of that many seconds."""
    ctx = quickjs.Context()
    ctx.eval(_RAW % CODE)
    start, step, left, finished = (ctx.get(k) for k in ("start", "step", "left", "finished"))
    ex = ctx.execute_pending_job
    start(n)
    while ex():
        pass
    if limit is None:
        while left():
            step()
            while ex():
                pass
    else:
        setl = ctx.set_time_limit
        while left():
            step()
            setl(limit)
            while ex():
                pass
            setl(-1)
    assert finished() == n


class _NoHost:
    def submit(self, parent_id: str, spec: dict[str, Any]) -> str:
        raise ValueError("not in this benchmark")

    def emit(self, task_id: str, name: str, payload: Any) -> None: ...

    def progress(
        self, task_id: str, done: float, total: float | None, message: str | None
    ) -> None: ...

    def log(self, task_id: str, level: str, message: str) -> None: ...


def vm_loop(n: int) -> None:
    """The same code on ``JsVM`` (frozen realm, step budget, requests), minimal loop."""
    vm = JsVM(_NoHost())
    ids = [f"t{i}" for i in range(n)]
    for tid in ids:
        assert vm.start(tid, CODE) is None
    ready: deque[tuple[str, int]] = deque((tid, 0) for tid in ids)
    done = 0
    resume = vm.resume
    while ready:
        tid, rid = ready.popleft()
        r = resume(tid, None, None, rid)
        if type(r) is Yielded:
            ready.append((tid, r.request.id))
        else:
            assert type(r) is Completed, r
            done += 1
    assert done == n
    vm.close()


def bench_overhead(n: int, rounds: int) -> list[tuple[str, str]]:
    with Runtime() as rt:

        def rt_run(code: str = CODE) -> None:
            handles = rt.submit_many([Task.js(code) for _ in range(n)])
            assert sum(rt.result(h, timeout=300) for h in handles) == n

        rt_run()  # warm up (compile cache, allocations)
        rt_run("return 1")
        raws, rts, ratios, extra = paired_rounds(
            lambda: raw_loop(n),
            rt_run,
            rounds,
            {
                "vm": lambda: vm_loop(n),
                "limited": lambda: raw_loop(n, 1.0),
                "trivial": lambda: rt_run("return 1"),
            },
        )
    raw, rtt = min(raws), min(rts)
    vmt, lim, triv = min(extra["vm"]), min(extra["limited"]), min(extra["trivial"])
    return [
        (f"(a) {n} tasks x 10 await spell.sleep(0), {rounds} paired rounds", "per task"),
        ("raw QuickJS promises, hand-written loop, best", f"{raw / n * 1e6:.1f} us"),
        ("JsVM (frozen, budgeted), same loop, best", f"{vmt / n * 1e6:.1f} us"),
        ("Runtime submit_many + result, best", f"{rtt / n * 1e6:.1f} us"),
        (
            "ratio Runtime / raw loop, median of rounds (target <= 3.0)",
            f"{statistics.median(ratios):.2f}x",
        ),
        ("ratio Runtime / raw loop, of the bests", f"{rtt / raw:.2f}x"),
        ("ratio Runtime / JsVM loop, of the bests", f"{rtt / vmt:.2f}x"),
        ("floor: raw loop with a time limit while jobs run, best", f"{lim / n * 1e6:.1f} us"),
        ("floor: Runtime, tasks that only return 1, best", f"{triv / n * 1e6:.1f} us"),
        ("(both floors) / raw loop, of the bests", f"{(lim + triv) / raw:.2f}x"),
    ]


# -- (b) memory per pending task -------------------------------------------------------------


def _vm_memory(rt: Runtime) -> int:
    """The JS VM's malloc'd bytes, as reported in a probe task's usage."""
    h = rt.submit(Task.js("return 1"))
    rt.result(h, timeout=60)
    progress = rt.progress(h)
    assert progress is not None
    return int(progress.resource_usage.memory_bytes)


def _pending(rt: Runtime, m: int, code: str, label: str) -> list[tuple[str, str]]:
    proc = psutil.Process()
    gc.collect()
    time.sleep(2.0)  # the VM's memory figure is reused for up to 100x its cost
    vm0, rss0 = _vm_memory(rt), proc.memory_info().rss
    t0 = time.perf_counter()
    handles = rt.submit_many([Task.js(code) for _ in range(m)])
    # every task has started and is blocked once the stats say so
    while rt.stats()["running"] < m:
        time.sleep(0.2)
        if time.perf_counter() - t0 > 600:
            raise RuntimeError("the pending tasks did not all start in 10 minutes")
    started = time.perf_counter() - t0
    gc.collect()
    time.sleep(2.0)
    vm1, rss1 = _vm_memory(rt), proc.memory_info().rss
    t1 = time.perf_counter()
    cancelled = sum(rt.cancel(h) for h in handles)
    cancel_time = time.perf_counter() - t1
    assert cancelled == m, cancelled
    assert all(rt.status(h) == "cancelled" for h in handles[:: max(1, m // 100)])
    return [
        (f"(b) {m} JS tasks pending in {label}", "per task"),
        ("QuickJS malloc (JsVM.memory_in_use)", f"{(vm1 - vm0) / m:.0f} B"),
        ("process RSS (whole runtime: views, records, specs, VM)", f"{(rss1 - rss0) / m:.0f} B"),
        ("submit_many until all pending", f"{started / m * 1e6:.1f} us"),
        ("rt.cancel, one call per task", f"{cancel_time / m * 1e6:.1f} us"),
    ]


def bench_memory(m: int) -> list[tuple[str, str]]:
    with Runtime(js_capacity=m + 1000) as rt:
        warm = rt.submit_many([Task.js("await spell.sleep(0); return 1") for _ in range(1000)])
        for h in warm:
            rt.result(h, timeout=60)
        rows = _pending(rt, m, "await spell.wait_event('bench.never')", "spell.wait_event")
        rows += _pending(rt, m, "await spell.sleep(3600); return 1", "spell.sleep(3600)")
    return rows


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    m = int(sys.argv[2]) if len(sys.argv) > 2 else 10_000
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 5
    rows = [("case", "figure")]
    memory = bench_memory(m)  # first: a fresh process gives a fair RSS delta
    rows += bench_overhead(n, rounds)
    rows += memory
    print(table(rows))


if __name__ == "__main__":
    main()
