"""One process of the crash-resume tests: ``python crash_driver.py PHASE JOURNAL DIR``.

Phase ``start`` opens a runtime on JOURNAL, submits the workflow below and
waits (the test SIGKILLs it somewhere); phase ``resume`` opens a runtime on the
same journal (which resumes what was unfinished), emits the approval the JS
step waits for until it ends, and writes every step's outcome to DIR/results.json.
"""

from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from llmspell import LlmspellError, Runtime, Task

IDS = ("A", "L", "J", "R", "E")

LUA = """
local a = spell.tool("count", {dir = spell.args.dir, tag = "L"})
spell.sleep(0.4)
local t = os.time()
local r = math.random(1000000)
spell.emit("lua.done", {r = r})
local child = spell.run({lang = "lua", code = "spell.sleep(0.2) return 7"})
return {a = a, r = r, t = t, child = child}
"""

JS = """
const n = await spell.tool("count", {dir: spell.args.dir, tag: "J"});
await spell.sleep(0.3);
const ev = await spell.wait_event("approval.*");
return {n, ok: ev.payload.ok, r: Math.random() < 1, now: Date.now() > 0};
"""


def workflow(dir: str) -> list[Task]:
    race = {
        "name": "race",
        "strategy": "race",
        "steps": [
            {"id": "slow", "lang": "lua", "code": "spell.sleep(5) return 'slow'"},
            {"id": "fast", "lang": "js", "code": "await spell.sleep(0.5); return 'fast'"},
        ],
    }
    return [
        Task.python(
            "durable_targets:count", args={"dir": dir, "tag": "A", "delay": 0.3}, id="A", retries=1
        ),
        Task.lua(LUA, args={"dir": dir}, id="L", deps=["A"]),
        Task.js(JS, args={"dir": dir}, id="J"),
        Task.workflow(race, id="R"),
        Task.python(
            "durable_targets:count", args={"dir": dir, "tag": "E"}, id="E", deps=["L", "R"]
        ),
    ]


def main() -> None:
    phase, journal, dir = sys.argv[1:4]
    with Runtime(journal=journal, retry_backoff=0) as rt:
        rt.register_tool("count", "durable_targets:count")
        if phase == "start":
            rt.submit_many(workflow(dir))
            # the scheduler takes messages in order and commits each before it
            # answers: once it answers about the last task, every one is journaled
            rt.status("E")
            print("submitted", flush=True)
            time.sleep(60)  # killed before this ends
            return
        results: dict[str, object] = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and rt.status("J") in ("pending", "running"):
            rt.emit("approval.granted", {"ok": True})
            time.sleep(0.2)
        for task_id in IDS:
            try:
                results[task_id] = {"value": rt.result(task_id, timeout=30)}
            except LlmspellError as exc:
                results[task_id] = {"error": f"{type(exc).__name__}: {exc}"}
        results["tasks"] = [[t.id, t.kind, t.status, t.attempts] for t in rt.tasks()]
        with open(os.path.join(dir, "results.json"), "w") as f:
            json.dump(results, f)


if __name__ == "__main__":
    main()
