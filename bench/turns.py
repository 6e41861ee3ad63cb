"""Many Lua tasks taking turns: ``python bench/turns.py [N] [--hog]``.

N tasks (default 100,000) each run ``for i = 1, 5 do spell.sleep(0) end`` in one embedded
runtime; progress is printed every 2 s, then the time taken. ``--hog`` runs a second
process spinning a core meanwhile (it is stopped at the end). A stress run for the Lua
engine's batches of ``sleep(0)``s (issue 15, session 9): with a batch that took every ready
task it crawled under load; now it ends in seconds. Not a pass/fail test.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time

from llmspell import Runtime, Task

CODE = "for i = 1, 5 do spell.sleep(0) end return spell.task_id"


def main(argv: list[str]) -> None:
    n = int(next((a for a in argv if a.isdigit()), "100000"))
    hog = None
    if "--hog" in argv:
        hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        with Runtime() as rt:
            t0 = time.monotonic()
            hs = rt.submit_many([Task.lua(CODE) for _ in range(n)])
            done = threading.Event()

            def progress() -> None:
                while not done.wait(2.0):
                    s = rt.stats()
                    print(f"{time.monotonic() - t0:6.1f} s: {s['succeeded']} succeeded, "
                          f"{s['running']} running", flush=True)  # fmt: skip

            watcher = threading.Thread(target=progress, daemon=True)
            watcher.start()
            try:
                wrong = sum(rt.result(h, timeout=120) != h.id for h in hs)
            finally:
                done.set()
                watcher.join()
            print(f"{n} tasks in {time.monotonic() - t0:.1f} s, {wrong} wrong results")
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()


if __name__ == "__main__":
    main(sys.argv[1:])
