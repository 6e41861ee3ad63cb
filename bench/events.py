"""Events per second through the event bus to one subscriber (embedded mode).

In one process and one run:

* ``rt.emit(name, payload)`` from the main thread while a reader thread takes
  them with ``Subscription.get``: every event crosses the driver queue, the
  msgpack codec twice (publish, delivery) and the bus's glob matching;
* the same payloads through a plain ``queue.Queue`` (``put`` / ``get`` on two
  threads): the floor for any hand-off between two threads.

Prints events/s of both, their ratio, and where the bus stands against the
~90,000 events/s rs-llmspell claims for its (Rust) event bus.
Usage: ``python bench/events.py [N]``.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _util import table

from llmspell import Runtime

RS_LLMSPELL_CLAIM = 90_000  # events/s


def through_bus(rt: Runtime, payloads: list[dict[str, object]]) -> float:
    n = len(payloads)
    sub = rt.subscribe("bench.*", limit=n + 1)
    rt.stats()  # the subscription is in place once the bus answered
    got = 0

    def read() -> None:
        nonlocal got
        for _ in range(n):
            sub.get(timeout=60)
            got += 1

    reader = threading.Thread(target=read)
    t0 = time.perf_counter()
    reader.start()
    for p in payloads:
        rt.emit("bench.tick", p)
    reader.join()
    elapsed = time.perf_counter() - t0
    sub.close()
    assert got == n and sub.dropped == 0
    return elapsed


def through_queue(payloads: list[dict[str, object]]) -> float:
    q: queue.Queue[dict[str, object]] = queue.Queue()
    n = len(payloads)

    def read() -> None:
        for _ in range(n):
            q.get(timeout=60)

    reader = threading.Thread(target=read)
    t0 = time.perf_counter()
    reader.start()
    for p in payloads:
        q.put(p)
    reader.join()
    return time.perf_counter() - t0


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    payloads: list[dict[str, object]] = [{"i": i, "text": "event payload"} for i in range(n)]
    with Runtime() as rt:
        through_bus(rt, payloads[:1000])  # warm up
        bus = min(through_bus(rt, payloads) for _ in range(3))
    base = min(through_queue(payloads) for _ in range(3))
    bus_rate, base_rate = n / bus, n / base
    print(f"{n} events, one subscriber, embedded mode (best of 3)\n")
    print(
        table(
            [
                ("path", "events/s"),
                ("rt.emit -> Subscription.get", f"{bus_rate:,.0f}"),
                ("queue.Queue put -> get", f"{base_rate:,.0f}"),
                ("ratio (queue / bus)", f"{base_rate / bus_rate:.1f}x"),
                (
                    "rs-llmspell claim",
                    f"{RS_LLMSPELL_CLAIM:,} ({bus_rate / RS_LLMSPELL_CLAIM:.0%})",
                ),
            ]
        )
    )


if __name__ == "__main__":
    main()
