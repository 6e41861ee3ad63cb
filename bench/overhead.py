"""Per-task overhead of the embedded runtime against a raw Thespian ask.

Runs, in one process and one run:

* 10,000 plain ``simpleSystemBase`` asks to an echo actor (the baseline), and
* submit -> result of 10,000 trivial Python tasks through ``Runtime()``,

and prints the per-task cost of each and their ratio. Target: at most 3x.
Usage: ``python bench/overhead.py [N]``.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _util import best_of, table  # noqa: E402
from thespian.actors import Actor, ActorSystem  # noqa: E402

from llmspell import Runtime, Task  # noqa: E402


class Echo(Actor):  # type: ignore[misc]
    def receiveMessage(self, msg: object, sender: object) -> None:
        if isinstance(msg, int):
            self.send(sender, msg)


def raw_asks(n: int) -> float:
    asys = ActorSystem("simpleSystemBase", transientUnique=True, logDefs=False)
    try:
        echo = asys.createActor(Echo)

        def run() -> None:
            for i in range(n):
                asys.ask(echo, i, 5)

        return best_of(run)
    finally:
        asys.shutdown()


def runtime_tasks(n: int) -> float:
    with Runtime() as rt:

        def run() -> None:
            handles = rt.submit_many(
                [Task.python("tasks:add", args={"x": i, "y": 1}) for i in range(n)]
            )
            total = sum(rt.result(h, timeout=120) for h in handles)
            assert total == n * (n - 1) // 2 + n

        return best_of(run)


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    raw = raw_asks(n)
    rt = runtime_tasks(n)
    ratio = rt / raw
    print(f"{n} tasks, best of 3 runs")
    print(table([
        ("case", "per task"),
        ("raw simpleSystemBase ask (echo actor)", f"{raw / n * 1e6:.1f} us"),
        ("Runtime submit_many + result (python task)", f"{rt / n * 1e6:.1f} us"),
        ("ratio (target <= 3.0)", f"{ratio:.2f}x"),
    ]))


if __name__ == "__main__":
    main()
