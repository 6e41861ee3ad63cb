"""Time from an engine's death to its handling in local mode (issue 14, item 1).

Two engine processes are SIGKILLed within 20 ms, ROUNDS times; for each death
the time until the scheduler counted it (``stats()["crashes"]``) is measured,
polling every 5 ms. Prints the median and the max, and whether every death
was noticed. A script, not a test: the figure depends on the machine's load.
"""

from __future__ import annotations

import os
import signal
import statistics
import sys
import time

from llmspell import Runtime

ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 10


def engines(rt: Runtime) -> list[dict[str, object]]:
    return [e for e in rt.stats()["engines"] if e["capacity"] and e["engine"] in ("lua", "js")]


def main() -> None:
    times: list[float] = []
    missed = 0
    with Runtime(mode="local", engines={"lua": 2, "js": 2}, supervision={"intensity": 1000}) as rt:
        for _ in range(ROUNDS):
            deadline = time.monotonic() + 30
            while len(engines(rt)) < 4 and time.monotonic() < deadline:
                time.sleep(0.05)
            victims = [int(e["pid"]) for e in engines(rt)[:2]]  # type: ignore[call-overload]
            before = rt.stats()["crashes"]
            t0 = time.monotonic()
            os.kill(victims[0], signal.SIGKILL)
            time.sleep(0.01)
            os.kill(victims[1], signal.SIGKILL)
            seen: list[float] = []
            while len(seen) < 2 and time.monotonic() - t0 < 10:
                n = rt.stats()["crashes"] - before
                while len(seen) < n:
                    seen.append(time.monotonic() - t0)
                time.sleep(0.005)
            missed += 2 - len(seen)
            times += seen
            time.sleep(0.5)  # let the restarts register
    print(f"{ROUNDS} double kills: {len(times)} of {2 * ROUNDS} deaths noticed")
    if times:
        print(f"time to notice: median {statistics.median(times):.3f} s, max {max(times):.3f} s")
    print(f"missed: {missed}")


if __name__ == "__main__":
    main()
