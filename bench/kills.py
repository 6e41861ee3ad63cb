"""3,000 mixed tasks with ``retries=1`` while an engine is killed every 0.5 s
for 5 s, local mode (issue 14's figure): tasks lost, hung, and Python tasks
run more than 1 + retries times.

A Python task leaves one file per run in a scratch folder (the count of runs);
a task is *lost* if it never ends, *hung* if ``result`` times out. A script,
not a test: kills land where they land. ``python bench/kills.py [TASKS]``.
"""

from __future__ import annotations

import os
import random
import signal
import sys
import tempfile
import threading
import time
from collections import Counter

from llmspell import LlmspellError, Runtime, Task

TASKS = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> None:
    scratch = tempfile.mkdtemp(prefix="llmspell-kills-")
    sys.path.insert(0, HERE)
    rng = random.Random(7)
    tasks: list[Task] = []
    for i in range(TASKS):
        kind = i % 3
        if kind == 0:
            tasks.append(
                Task.python(
                    "_kill_targets:mark", args={"dir": scratch, "n": i, "sleep": 0.1}, retries=1
                )
            )
        elif kind == 1:
            pause = round(rng.uniform(0.5, 6.0), 2)  # work in flight through the kills
            tasks.append(
                Task.lua(f"spell.sleep({pause}) return spell.args.n", args={"n": i}, retries=1)
            )
        else:
            pause = round(rng.uniform(0.5, 6.0), 2)
            tasks.append(
                Task.js(
                    f"await spell.sleep({pause}); return spell.args.n;", args={"n": i}, retries=1
                )
            )
    kills = 0
    with Runtime(mode="local", workers=2, supervision={"intensity": 1000, "period": 10}) as rt:
        rt.result(rt.submit(Task.lua("return 1")), timeout=30)
        stop = threading.Event()

        def killer() -> None:
            nonlocal kills
            t_end = time.monotonic() + 5.0
            while time.monotonic() < t_end and not stop.is_set():
                time.sleep(0.5)
                engines = [e for e in rt.stats()["engines"] if e.get("capacity")]
                if engines:
                    victim = rng.choice(engines)
                    try:
                        os.kill(int(victim["pid"]), signal.SIGKILL)
                        kills += 1
                    except ProcessLookupError:
                        pass

        t0 = time.monotonic()
        handles = rt.submit_many(tasks)
        k = threading.Thread(target=killer)
        k.start()
        statuses: Counter[str] = Counter()
        hung = 0
        for h in handles:
            try:
                rt.result(h, timeout=120)
                statuses["succeeded"] += 1
            except TimeoutError:
                hung += 1
            except LlmspellError as exc:
                statuses[type(exc).__name__] += 1
        stop.set()
        k.join()
        took = time.monotonic() - t0
    runs = Counter(name.split(".")[0] for name in os.listdir(scratch))
    too_many = sum(1 for n in runs.values() if n > 2)
    ended = sum(statuses.values())
    print(f"tasks {TASKS}, engine kills {kills}, {took:.1f} s")
    print(f"ended {ended} {dict(statuses)}, lost {TASKS - ended - hung}, hung {hung}")
    print(f"python tasks run more than 1 + retries times: {too_many}")


if __name__ == "__main__":
    main()
