"""Cluster mode figures, on one machine posing as three hosts.

(a) round trip of one trivial Lua task at a time (submit -> result) through
    the leader (127.0.0.1) to an engine on a member (127.0.0.2), against the
    same in ``Runtime(mode="local", workers=1)``, in the same run: the median
    of 300 round trips each, rounds alternating.
(b) throughput of 3,000 trivial Lua tasks (``submit_many``, then every
    result) with one member, then with two (the second on 127.0.0.3), one
    Lua engine per member.

Usage: ``python bench/cluster.py [ROUND_TRIPS] [TASKS]``. Every process it
starts is stopped by pid at the end; nothing listens beyond 127.0.0.x.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from cluster_procs import Cluster

from llmspell import Runtime, Task


def round_trips(rt: Runtime, n: int) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        rt.result(rt.submit(Task.lua("return 1")), timeout=30)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def throughput(rt: Runtime, n: int) -> float:
    t0 = time.perf_counter()
    hs = rt.submit_many([Task.lua("return 1") for _ in range(n)])
    for h in hs:
        rt.result(h, timeout=120)
    return n / (time.perf_counter() - t0)


def main() -> None:
    trips = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    tasks = int(sys.argv[2]) if len(sys.argv) > 2 else 3000
    c = Cluster()
    try:
        c.join("127.0.0.2", engines="lua")
        with (
            Runtime(mode="cluster", address=c.address, secret=c.secret) as crt,
            Runtime(mode="local", workers=1, engines={"lua": 1}) as lrt,
        ):
            c.wait_engines(crt, "127.0.0.2", 1)
            round_trips(crt, 20), round_trips(lrt, 20)  # warm both
            cl, lo = [], []
            for _ in range(3):
                cl.append(round_trips(crt, trips // 3))
                lo.append(round_trips(lrt, trips // 3))
            c_ms, l_ms = statistics.median(cl) * 1e3, statistics.median(lo) * 1e3
            print(f"round trip, trivial Lua task: cluster {c_ms:.2f} ms, local {l_ms:.2f} ms")
            one = statistics.median(throughput(crt, tasks) for _ in range(3))
            c.join("127.0.0.3", engines="lua")
            c.wait_engines(crt, "127.0.0.3", 1)
            two = statistics.median(throughput(crt, tasks) for _ in range(3))
            print(f"{tasks} trivial Lua tasks: one member {one:.0f}/s, two members {two:.0f}/s")
    finally:
        c.stop()


if __name__ == "__main__":
    main()
