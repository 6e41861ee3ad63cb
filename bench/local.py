"""``local`` mode against embedded mode and against raw Thespian.

(a) 2,000 CPU-bound Lua tasks (a loop summing 1..200,000) with
    ``Runtime(mode="local", workers=2)`` versus ``Runtime()`` (embedded):
    target a speed-up of at least 1.6x on 2 cores.
(b) submit -> result latency of one trivial task at a time in local mode
    versus a raw ``multiprocTCPBase`` ask to an echo actor: target <= 2x.

Usage: ``python bench/local.py [N_CPU_TASKS]``. Every actor system it starts
is shut down by it; everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _util import table
from thespian.actors import Actor, ActorSystem

from llmspell import (
    Runtime,
    Task,
    _loopback,
)
from llmspell._driver import _LOG_DEFS, _reap, free_port

CPU_CODE = "local s = 0 for i = 1, 200000 do s = s + i end return s"


class Echo(Actor):  # type: ignore[misc]
    def receiveMessage(self, msg: object, sender: object) -> None:
        if isinstance(msg, int):
            self.send(sender, msg)


def cpu_batch(rt: Runtime, n: int) -> float:
    t0 = time.perf_counter()
    hs = rt.submit_many([Task.lua(CPU_CODE) for _ in range(n)])
    for h in hs:
        assert rt.result(h, timeout=600) == 200000 * 200001 // 2
    return time.perf_counter() - t0


def wait_engines(rt: Runtime, n: int) -> None:
    deadline = time.monotonic() + 30
    while len([e for e in rt.stats()["engines"] if e["engine"] == "lua"]) < n:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def latency_local(rt: Runtime, n: int) -> float:
    samples = []
    for i in range(n):
        t0 = time.perf_counter()
        rt.result(rt.submit(Task.python("tasks:add", args={"x": i, "y": 1})), timeout=30)
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def latency_raw(n: int) -> float:
    _loopback.install()
    os.environ["THESPIAN_BASE_IPADDR"] = "127.0.0.1"
    port = free_port()
    asys = ActorSystem(
        "multiprocTCPBase", {"Admin Port": port}, transientUnique=True, logDefs=_LOG_DEFS
    )
    try:
        echo = asys.createActor(Echo)
        asys.ask(echo, 0, 10)
        samples = []
        for i in range(n):
            t0 = time.perf_counter()
            assert asys.ask(echo, i, 10) == i
            samples.append(time.perf_counter() - t0)
        return statistics.median(samples)
    finally:
        import psutil

        from llmspell._driver import _listener_pid

        admin = _listener_pid(port)
        procs = []
        if admin:
            p = psutil.Process(admin)
            procs = [p, *p.children(recursive=True)]
        asys.shutdown()
        _reap(procs, 10)


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    with Runtime(engines={"lua": 1}) as emb:
        cpu_batch(emb, 50)  # warm-up
        t_emb = cpu_batch(emb, n)
    with Runtime(mode="local", workers=2) as loc:
        wait_engines(loc, 2)
        cpu_batch(loc, 50)
        t_loc = cpu_batch(loc, n)
        latency_local(loc, 20)
        lat_loc = latency_local(loc, 200)
    lat_raw = latency_raw(200)
    print(
        table(
            [
                ("case", "figure"),
                (f"{n} CPU-bound Lua tasks, embedded", f"{t_emb:.2f} s"),
                (f"{n} CPU-bound Lua tasks, local, 2 workers", f"{t_loc:.2f} s"),
                ("speed-up (target >= 1.6x)", f"{t_emb / t_loc:.2f}x"),
                ("raw multiprocTCPBase ask, median", f"{lat_raw * 1e3:.2f} ms"),
                ("local submit -> result, median", f"{lat_loc * 1e3:.2f} ms"),
                ("latency ratio (target <= 2.0)", f"{lat_loc / lat_raw:.2f}x"),
            ]
        )
    )


if __name__ == "__main__":
    main()
