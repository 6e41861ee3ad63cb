"""How long ``close()`` takes in local mode (issue 14 item 7): an idle runtime,
and one whose Python engine is stuck in a call that holds the GIL (killed
after ``supervision.shutdown_timeout``, 5 s by default; ``close()`` promises
10 s at most). A script, not a test. ``python bench/close.py [RUNS]``.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time

from llmspell import Runtime, Task

RUNS = int(sys.argv[1]) if len(sys.argv) > 1 else 3
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))


def ready(rt: Runtime) -> None:
    deadline = time.monotonic() + 30
    while not all(e.get("pid") for e in rt.stats()["engines"]) or len(rt.stats()["engines"]) < 3:
        if time.monotonic() > deadline:
            raise SystemExit("the engines never started")
        time.sleep(0.05)


def one(stuck: bool) -> float:
    rt = Runtime(mode="local", workers=1)
    ready(rt)
    if stuck:
        scratch = tempfile.mkdtemp(prefix="llmspell-close-")
        began = os.path.join(scratch, "started")
        args = {"started": began, "finished": os.path.join(scratch, "finished"), "seconds": 60}
        rt.submit(Task.python("targets:stuck", args=args))
        while not os.path.exists(began):
            time.sleep(0.02)
    t = time.monotonic()
    rt.close()
    return time.monotonic() - t


def main() -> None:
    for stuck in (False, True):
        times = [one(stuck) for _ in range(RUNS)]
        what = "a stuck python engine" if stuck else "idle"
        print(f"close(), {what}: median {statistics.median(times):.2f} s, max {max(times):.2f} s")


if __name__ == "__main__":
    main()
