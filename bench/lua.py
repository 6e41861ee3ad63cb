"""Lua engine benchmarks: scheduling overhead and memory per suspended coroutine.

(a) ``n`` (default 10,000) concurrent Lua tasks, each calling ``spell.sleep(0)`` ten
    times, submitted with ``rt.submit_many`` and awaited with ``rt.result``, against a
    hand-written loop that drives the same ``n`` lupa coroutines directly in this
    process (compile once, one coroutine per task, round-robin resume until each
    returns: what a minimal scheduler does). A middle row drives ``LuaVM`` (the
    sandboxed VM the engine uses) with the same minimal loop, to show what the VM
    itself adds. Rounds are paired (raw and runtime back to back, the order
    alternating) and the median of the rounds' ratios is the figure, the ratio of the
    bests beside it: the machine is shared and noisy. Target: runtime / raw <= 3x.
    A last row is the floor of the runtime's own path: the same number of tasks that
    only ``return 1`` (no sleep), submitted and awaited the same way.
(b) ``m`` (default 100,000) Lua tasks suspended at once through the runtime (in a long
    ``spell.sleep``), measured by the Lua VM's own allocator count (a probe task reads
    ``collectgarbage("count")`` and reports the VM's figure in its usage) and by the
    process RSS (psutil); both deltas divided by ``m``. Then every task is cancelled.
    Target: < 4 KiB of VM memory per suspended coroutine.

Usage: ``python bench/lua.py [N] [M] [ROUNDS]``.
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
from _util import paired_rounds, table
from lupa import lua55

from llmspell import Runtime, Task
from llmspell.engines._vm import Completed
from llmspell.engines.lua_vm import LuaVM

CODE = "for i = 1, 10 do spell.sleep(0) end return 1"


# -- (a) scheduling overhead ------------------------------------------------------------------


def raw_loop(n: int) -> None:
    """The same code on bare lupa: ``spell.sleep(0)`` is a plain coroutine.yield."""
    lua = lua55.LuaRuntime(encoding=None, register_eval=False, register_builtins=False)
    make = lua.eval(
        "function(code)"
        "  local body = assert(load('local spell = ... ' .. code, 'task', 't'))"
        "  local spell = {sleep = function(s) coroutine.yield(s) end}"
        "  return function() return body(spell) end "
        "end"
    )
    fn = make(CODE.encode())
    ready = deque(fn.coroutine() for _ in range(n))
    done = 0
    while ready:
        co = ready.popleft()
        try:
            co.send(None)
        except StopIteration:
            done += 1
            continue
        if co:
            ready.append(co)
        else:  # returned a value
            done += 1
    assert done == n


class _NoHost:
    def submit(self, parent_id: str, spec: dict[str, Any]) -> str:
        raise ValueError("not in this benchmark")

    def emit(self, task_id: str, name: str, payload: Any) -> None: ...

    def progress(
        self, task_id: str, done: float, total: float | None, message: str | None
    ) -> None: ...

    def log(self, task_id: str, level: str, message: str) -> None: ...


def vm_loop(n: int) -> None:
    """The same code on ``LuaVM`` (sandbox, step budget hook, requests), minimal loop."""
    vm = LuaVM(_NoHost())
    ids = [f"t{i}" for i in range(n)]
    for tid in ids:
        assert vm.start(tid, CODE) is None
    ready = deque(ids)
    done = 0
    resume = vm.resume
    while ready:
        tid = ready.popleft()
        r = resume(tid)
        if type(r) is Completed:
            done += 1
        else:
            ready.append(tid)
    assert done == n
    vm.close()


def bench_overhead(n: int, rounds: int) -> list[tuple[str, str]]:
    with Runtime() as rt:

        def rt_run(code: str = CODE) -> None:
            handles = rt.submit_many([Task.lua(code) for _ in range(n)])
            assert sum(rt.result(h, timeout=300) for h in handles) == n

        rt_run()  # warm up (compile cache, allocations)
        rt_run("return 1")
        raws, rts, ratios, extra = paired_rounds(
            lambda: raw_loop(n),
            rt_run,
            rounds,
            {"vm": lambda: vm_loop(n), "trivial": lambda: rt_run("return 1")},
        )
    raw, rtt, vmt, triv = min(raws), min(rts), min(extra["vm"]), min(extra["trivial"])
    return [
        (f"(a) {n} tasks x 10 spell.sleep(0), {rounds} paired rounds", "per task"),
        ("raw lupa coroutines, round-robin loop, best", f"{raw / n * 1e6:.1f} us"),
        ("LuaVM (sandboxed), same loop, best", f"{vmt / n * 1e6:.1f} us"),
        ("Runtime submit_many + result, best", f"{rtt / n * 1e6:.1f} us"),
        (
            "ratio Runtime / raw loop, median of rounds (target <= 3.0)",
            f"{statistics.median(ratios):.2f}x",
        ),
        ("ratio Runtime / raw loop, of the bests", f"{rtt / raw:.2f}x"),
        ("ratio Runtime / LuaVM loop, of the bests", f"{rtt / vmt:.2f}x"),
        ("floor: Runtime, tasks that only return 1, best", f"{triv / n * 1e6:.1f} us"),
        ("floor / raw loop, of the bests", f"{triv / raw:.2f}x"),
    ]


# -- (b) memory per suspended coroutine ----------------------------------------------------


def _vm_memory(rt: Runtime) -> tuple[int, int]:
    """(collectgarbage("count") in bytes, the VM allocator's bytes) read by a probe task."""
    h = rt.submit(Task.lua("return math.floor(collectgarbage('count') * 1024)"))
    count = rt.result(h, timeout=600)
    progress = rt.progress(h)
    assert progress is not None
    return int(count), int(progress.resource_usage.memory_bytes)


def bench_memory(m: int) -> list[tuple[str, str]]:
    proc = psutil.Process()
    with Runtime(lua_capacity=m + 1000) as rt:
        warm = rt.submit_many([Task.lua("spell.sleep(0) return 1") for _ in range(1000)])
        for h in warm:
            rt.result(h, timeout=60)
        gc.collect()
        count0, alloc0 = _vm_memory(rt)
        rss0 = proc.memory_info().rss
        t0 = time.perf_counter()
        handles = rt.submit_many([Task.lua("spell.sleep(3600) return 1") for _ in range(m)])
        # The probe is a barrier: tasks of one priority start in submission order, so once
        # the probe has run, every sleeper has run up to its spell.sleep and is suspended.
        count1, alloc1 = _vm_memory(rt)
        started = time.perf_counter() - t0
        gc.collect()
        rss1 = proc.memory_info().rss
        t1 = time.perf_counter()
        cancelled = sum(rt.cancel(h) for h in handles)
        cancel_time = time.perf_counter() - t1
        assert cancelled == m, cancelled
        assert all(rt.status(h) == "cancelled" for h in handles[:: max(1, m // 100)])
    return [
        (f"(b) {m} Lua tasks suspended in spell.sleep(3600)", "per task"),
        ("VM allocator (lupa max_memory count) (target < 4 KiB)", f"{(alloc1 - alloc0) / m:.0f} B"),
        ('Lua collectgarbage("count")', f"{(count1 - count0) / m:.0f} B"),
        ("process RSS (whole runtime: views, records, specs, VM)", f"{(rss1 - rss0) / m:.0f} B"),
        ("submit_many until all suspended", f"{started / m * 1e6:.1f} us"),
        ("rt.cancel, one call per task", f"{cancel_time / m * 1e6:.1f} us"),
    ]


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    m = int(sys.argv[2]) if len(sys.argv) > 2 else 100_000
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 5
    rows = [("case", "figure")]
    memory = bench_memory(m)  # first: a fresh process gives a fair RSS delta
    rows += bench_overhead(n, rounds)
    rows += memory
    print(table(rows))


if __name__ == "__main__":
    main()
