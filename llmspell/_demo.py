"""The example ``llmspell demo`` runs: a small document pipeline.

Three "fetch" tasks run in parallel, a "summarise" task depends on all of
them, and a deliberately slow task is cancelled by its timeout, so the demo
shows values, dependencies, priorities and timeouts through the same API an
application uses. Then a Lua task awaits a JavaScript task that awaits a
Python task (``cross_engine``): one chain across the three engines.
"""

from __future__ import annotations

import json
import time
from typing import Any

DOCS = {
    "actors": "Actors share nothing and talk only through messages.",
    "lua": "Lua coroutines yield to their host and resume with its answer.",
    "js": "JavaScript promises settle when the host resolves them.",
}


def fetch(name: str) -> dict[str, Any]:
    """Pretend to fetch a document."""
    text = DOCS[name]
    return {"name": name, "words": len(text.split()), "text": text}


def summarise(names: list[str]) -> str:
    """Join the first words of each document."""
    return " / ".join(DOCS[n].split(".")[0] for n in names)


def too_slow() -> str:
    time.sleep(5)
    return "never seen"


# A Lua step awaits a JavaScript step, which awaits a Python step (``fetch``).
_LUA = """
local js = spell.run{lang = 'js', code = spell.args.js, args = {name = spell.args.name}}
return {engine = 'lua', awaited = js}
"""
_JS = """
const doc = await spell.run({lang: 'python', target: 'llmspell._demo:fetch',
                             args: {name: spell.args.name}});
return {engine: 'js', awaited: {engine: 'python', words: doc.words}};
"""


def cross_engine(rt: Any, name: str = "js") -> dict[str, Any]:
    """Lua awaits JavaScript, which awaits Python: the chain's nested results."""
    from . import Task

    h = rt.submit(Task.lua(_LUA, args={"js": _JS, "name": name}))
    value: dict[str, Any] = rt.result(h, timeout=10)
    return value


def run_demo(*, json_only: bool = False) -> int:
    from . import Runtime, Task, TaskTimeout

    t0 = time.monotonic()
    with Runtime() as rt:
        fetches = rt.submit_many(
            [Task.python(fetch, args={"name": n}, priority="high") for n in DOCS]
        )
        summary = rt.submit(Task.python(summarise, args={"names": list(DOCS)}, deps=fetches))
        slow = rt.submit(Task.python(too_slow, timeout=0.2))
        docs = [rt.result(h, timeout=10) for h in fetches]
        text = rt.result(summary, timeout=10)
        try:
            rt.result(slow, timeout=10)
            slow_status = "succeeded"
        except TaskTimeout:
            slow_status = rt.status(slow)
        chain = cross_engine(rt)
        stats = rt.stats()
    result = {
        "documents": [{"name": d["name"], "words": d["words"]} for d in docs],
        "summary": text,
        "slow_task": slow_status,
        "cross_engine": chain,
        "tasks": {k: stats[k] for k in ("submitted", "succeeded", "timed_out")},
        "seconds": round(time.monotonic() - t0, 3),
    }
    if not json_only:
        print("llmspell demo: 3 fetches in parallel, a summary that depends on them,")
        print("a slow task stopped by its own timeout, and a Lua task awaiting a")
        print("JavaScript task awaiting a Python task.\n")
    print(json.dumps(result, indent=None if json_only else 2))
    return 0
