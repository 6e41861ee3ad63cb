"""Per-task overhead of the embedded runtime against a raw Thespian ask.

Runs, in one process and one run:

* 10,000 plain ``simpleSystemBase`` asks to an echo actor (the baseline), and
* submit -> result of 10,000 trivial Python tasks through ``Runtime()``,

and prints the per-task cost of each and their ratio. Target: at most 3x.
Usage: ``python bench/overhead.py [N]``.
"""

from __future__ import annotations

import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _util import paired_rounds, table
from thespian.actors import Actor, ActorSystem

from llmspell import Runtime, Task


class Echo(Actor):  # type: ignore[misc]
    def receiveMessage(self, msg: object, sender: object) -> None:
        if isinstance(msg, int):
            self.send(sender, msg)


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    rounds = 9
    asys = ActorSystem("simpleSystemBase", transientUnique=True, logDefs=False)
    try:
        echo = asys.createActor(Echo)
        with Runtime() as rt:

            def raw_run() -> None:
                for i in range(n):
                    asys.ask(echo, i, 5)

            def rt_run() -> None:
                handles = rt.submit_many(
                    [Task.python("tasks:add", args={"x": i, "y": 1}) for i in range(n)]
                )
                total = sum(rt.result(h, timeout=120) for h in handles)
                assert total == n * (n - 1) // 2 + n

            rt_run()  # warm: imports, first thread
            # paired rounds, the order alternating (bench/_util.paired_rounds)
            raws, rts, ratios, _ = paired_rounds(raw_run, rt_run, rounds)
    finally:
        asys.shutdown()
    print(f"{n} tasks, {rounds} paired rounds (raw asks, then runtime; order alternating)")
    print(
        table(
            [
                ("case", "per task"),
                ("raw simpleSystemBase ask (echo actor), best", f"{min(raws) / n * 1e6:.1f} us"),
                (
                    "Runtime submit_many + result (python task), best",
                    f"{min(rts) / n * 1e6:.1f} us",
                ),
                ("ratio of the bests", f"{min(rts) / min(raws):.2f}x"),
                (
                    "ratio, median of the paired rounds (target <= 3.0)",
                    f"{statistics.median(ratios):.2f}x",
                ),
                ("ratio, range of the paired rounds", f"{min(ratios):.2f}x .. {max(ratios):.2f}x"),
            ]
        )
    )


if __name__ == "__main__":
    main()
