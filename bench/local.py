"""``local`` mode against embedded mode and against raw Thespian.

(a) 2,000 CPU-bound Lua tasks (a loop summing 1..200,000) with
    ``Runtime(mode="local", workers=2)`` versus ``Runtime()`` (embedded):
    target a speed-up of at least 1.6x on 2 cores. Both runtimes are up at once
    and the rounds alternate between them; the figure is the median of the
    rounds' ratios (the machine is shared: its speed drifts over seconds).
(b) submit -> result latency of one trivial task at a time in local mode
    versus a raw ``multiprocTCPBase`` ask to an echo actor: target <= 2x. Paired
    rounds again (raw asks, then local submits, then the raw chain below), the
    median of each round's medians. A third row is the floor of the design: a
    raw ask to a forwarding actor that asks a third actor (caller -> scheduler
    -> engine -> scheduler -> caller, four messages against the ask's two, with
    actors that do nothing else).

Usage: ``python bench/local.py [N_CPU_TASKS] [ROUNDS]``. Every actor system it
starts is shut down by it; everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import psutil
from _util import table
from thespian.actors import Actor, ActorSystem

from llmspell import (
    Runtime,
    Task,
    _loopback,
)
from llmspell._driver import _LOG_DEFS, _listener_pid, _reap, free_port

CPU_CODE = "local s = 0 for i = 1, 200000 do s = s + i end return s"


class Echo(Actor):  # type: ignore[misc]
    def receiveMessage(self, msg: object, sender: object) -> None:
        if isinstance(msg, int):
            self.send(sender, msg)


class Relay(Actor):  # type: ignore[misc]
    """Like the scheduler on a task's path: passes a request on to the next actor
    and its answer back to the caller; the last actor in a chain answers."""

    def receiveMessage(self, msg: object, sender: object) -> None:
        if isinstance(msg, tuple) and msg[0] == "next":
            self.next, self.caller = msg[1], None
            self.send(sender, "ok")
        elif isinstance(msg, tuple) and msg[0] == "back":
            self.send(self.caller, msg[1])
        elif isinstance(msg, tuple) and msg[0] == "job":
            self.send(sender, ("back", msg[1]))
        elif isinstance(msg, int):
            self.caller = sender
            self.send(self.next, ("job", msg))


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


def latency_raw(asys: ActorSystem, to: object, n: int) -> float:
    samples = []
    for i in range(n):
        t0 = time.perf_counter()
        assert asys.ask(to, i, 10) == i
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


@contextmanager
def raw_system() -> Iterator[ActorSystem]:
    _loopback.install()
    os.environ["THESPIAN_BASE_IPADDR"] = "127.0.0.1"
    port = free_port()
    asys = ActorSystem(
        "multiprocTCPBase", {"Admin Port": port}, transientUnique=True, logDefs=_LOG_DEFS
    )
    try:
        yield asys
    finally:
        admin = _listener_pid(port)
        procs = []
        if admin:
            p = psutil.Process(admin)
            procs = [p, *p.children(recursive=True)]
        asys.shutdown()
        _reap(procs, 10)


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    emb_t, loc_t, speedups = [], [], []
    raw_l, chain_l, loc_l, lat_ratios = [], [], [], []
    with Runtime(engines={"lua": 1}) as emb, Runtime(mode="local", workers=2) as loc:
        wait_engines(loc, 2)
        cpu_batch(emb, 50)  # warm-up
        cpu_batch(loc, 50)
        for r in range(rounds):
            first, second = (emb, loc) if r % 2 == 0 else (loc, emb)
            a, b = cpu_batch(first, n), cpu_batch(second, n)
            e, lo = (a, b) if r % 2 == 0 else (b, a)
            emb_t.append(e)
            loc_t.append(lo)
            speedups.append(e / lo)
        with raw_system() as asys:
            echo = asys.createActor(Echo)
            head, tail = asys.createActor(Relay), asys.createActor(Relay)
            assert asys.ask(head, ("next", tail), 10) == "ok"
            latency_raw(asys, echo, 20)
            latency_raw(asys, head, 20)
            latency_local(loc, 20)
            for _ in range(max(3, rounds)):
                raw_l.append(latency_raw(asys, echo, 100))
                loc_l.append(latency_local(loc, 100))
                chain_l.append(latency_raw(asys, head, 100))
                lat_ratios.append(loc_l[-1] / raw_l[-1])
    med = statistics.median
    print(
        table(
            [
                ("case", "figure"),
                (f"{n} CPU-bound Lua tasks, embedded, median of {rounds}", f"{med(emb_t):.2f} s"),
                (f"same, local, 2 workers, median of {rounds}", f"{med(loc_t):.2f} s"),
                (
                    "speed-up, median of the rounds' ratios (target >= 1.6x)",
                    f"{med(speedups):.2f}x (rounds: {', '.join(f'{x:.2f}' for x in speedups)})",
                ),
                ("raw multiprocTCPBase ask, median", f"{med(raw_l) * 1e3:.2f} ms"),
                (
                    "raw 4-message chain (the design's floor), median",
                    f"{med(chain_l) * 1e3:.2f} ms",
                ),
                ("local submit -> result, median", f"{med(loc_l) * 1e3:.2f} ms"),
                (
                    "latency ratio local / raw ask, median of rounds (target <= 2.0)",
                    f"{med(lat_ratios):.2f}x",
                ),
                ("ratio raw chain / raw ask", f"{med(chain_l) / med(raw_l):.2f}x"),
                ("ratio local / raw chain", f"{med(loc_l) / med(chain_l):.2f}x"),
            ]
        )
    )


if __name__ == "__main__":
    main()
