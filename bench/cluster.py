"""Cluster mode figures, on one machine posing as three hosts.

(a) round trip of one trivial Lua task at a time (submit -> result) through
    the leader (127.0.0.1) to an engine on a member (127.0.0.2), against the
    same in ``Runtime(mode="local", workers=1)``, in the same run: the median
    of 300 round trips each, rounds alternating.
    A client attached from another address (127.0.0.2, as from another
    host) is measured too.
(b) throughput of 3,000 trivial Lua tasks (``submit_many``, then every
    result) with one member, then with two (the second on 127.0.0.3), one
    Lua engine per member.
(c) the same for 200 Lua tasks that each spend ~10 ms of CPU: work a second
    member can take.

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


# ~10 ms of CPU in Lua on this machine
BUSY = "local x = 0 for i = 1, 400000 do x = x + i % 7 end return x"


def busy_throughput(rt: Runtime, n: int) -> float:
    t0 = time.perf_counter()
    hs = rt.submit_many([Task.lua(BUSY) for _ in range(n)])
    for h in hs:
        rt.result(h, timeout=300)
    return n / (time.perf_counter() - t0)


def main() -> None:
    trips = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    tasks = int(sys.argv[2]) if len(sys.argv) > 2 else 3000
    c = Cluster()
    try:
        c.join("127.0.0.2", engines="lua")
        with (
            Runtime(mode="cluster", address=c.address, secret=c.secret) as crt,
            Runtime(mode="cluster", address=c.address, secret=c.secret, host="127.0.0.2") as rrt,
            Runtime(mode="local", workers=1, engines={"lua": 1}) as lrt,
        ):
            c.wait_engines(crt, "127.0.0.2", 1)
            round_trips(crt, 20), round_trips(rrt, 20), round_trips(lrt, 20)  # warm all
            cl, rl, lo = [], [], []
            for _ in range(3):
                cl.append(round_trips(crt, trips // 3))
                rl.append(round_trips(rrt, trips // 3))
                lo.append(round_trips(lrt, trips // 3))
            c_ms, r_ms = statistics.median(cl) * 1e3, statistics.median(rl) * 1e3
            l_ms = statistics.median(lo) * 1e3
            print(f"round trip, trivial Lua task: cluster {c_ms:.2f} ms, local {l_ms:.2f} ms")
            print(f"round trip, cluster client bound to 127.0.0.2: {r_ms:.2f} ms")
            busy = statistics.median(busy_throughput(crt, 20) * 1.0 for _ in range(1))
            print(f"(one busy Lua task ~{1e3 / busy:.1f} ms of CPU)")
            one = statistics.median(throughput(crt, tasks) for _ in range(3))
            one_busy = statistics.median(busy_throughput(crt, 200) for _ in range(3))
            c.join("127.0.0.3", engines="lua")
            c.wait_engines(crt, "127.0.0.3", 1)
            two = statistics.median(throughput(crt, tasks) for _ in range(3))
            two_busy = statistics.median(busy_throughput(crt, 200) for _ in range(3))
            print(f"{tasks} trivial Lua tasks: one member {one:.0f}/s, two members {two:.0f}/s")
            print(f"200 busy Lua tasks: one member {one_busy:.1f}/s, two members {two_busy:.1f}/s")
    finally:
        c.stop()


if __name__ == "__main__":
    main()
