"""Run test262 files on a bare QuickJS context and as llmspell JS tasks; compare.

Not a benchmark: a conformance check against a public suite nobody here wrote.
It needs a checkout of tc39/test262 (not shipped with llmspell)::

    python bench/conformance/test262.py /path/to/test262 \
        test/built-ins/Promise test/built-ins/JSON ... [--json out.json] [--show N]

Each test runs twice:

* **bare**: a fresh ``quickjs.Context`` per test, the harness files and the
  test evaluated as a script (strict when the test says ``onlyStrict``), jobs
  drained; async tests report through ``$DONE``.
* **task**: the same text as the body of one llmspell JS task in an embedded
  ``Runtime`` (the body of an async function, strict, frozen built-ins); an
  async test's task waits for its own ``$DONE``.

Outcomes are compared as pass/fail. A difference is put in a class by what the
task's error says (frozen built-ins, no eval/Function, strict mode, the body
wrapping); what fits no class is listed as unexplained. Tests flagged
``module``, ``raw``, ``CanBlockIsTrue`` or negative at the parse phase are
skipped (they have no task form), as are tests needing ``$262`` realms or agents.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import quickjs
import yaml

from llmspell import Runtime, Task, TaskFailed, TaskTimeout

_META = re.compile(r"/\*---(.*?)---\*/", re.S)
_DONE_BARE = """
var __t262 = null;
function $DONE(e) {
  if (__t262 !== null) return;
  __t262 = e ? "fail: " + ((e && e.name) ? e.name + ": " + e.message : String(e)) : "pass";
}
"""
_DONE_TASK = """
let __t262done;
const __t262p = new Promise((r) => { __t262done = r; });
function $DONE(e) {
  __t262done(e ? "fail: " + ((e && e.name) ? e.name + ": " + e.message : String(e)) : "pass");
}
"""
# the print() doneprintHandle.js expects, for files that call it directly
_PRINT = "function print() {}\n"

# what a task's error says -> the by-design class of the difference
_CLASSES = [
    (
        "frozen built-ins",
        re.compile(
            r"read-only|not extensible|cannot change the shared|frozen|could not delete|"
            r"not configurable|descriptor should be|is extensible|isExtensible|"
            r"to have configurable:true|to have writable:true",
            re.I,
        ),
    ),
    (
        "no eval/Function",
        re.compile(r"compiling code at run time|eval is not defined|could not obtain %", re.I),
    ),
    ("strict mode", re.compile(r"strict mode|is not defined|cannot be deleted|arguments", re.I)),
]


def _meta(src: str) -> dict[str, Any]:
    m = _META.search(src)
    if m is None:
        return {}
    try:
        return yaml.safe_load(m.group(1)) or {}
    except yaml.YAMLError:
        return {}


class Suite:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._harness: dict[str, str] = {}

    def harness(self, name: str) -> str:
        if name not in self._harness:
            self._harness[name] = (self.root / "harness" / name).read_text()
        return self._harness[name]

    def prepare(self, path: Path) -> dict[str, Any] | None:
        src = path.read_text()
        meta = _meta(src)
        flags = set(meta.get("flags") or [])
        neg = meta.get("negative") or {}
        if flags & {"module", "raw", "CanBlockIsTrue"} or neg.get("phase") in ("parse", "early"):
            return None
        if "$262.createRealm" in src or "$262.agent" in src or "$262.evalScript" in src:
            return None
        includes = ["assert.js", "sta.js", *(meta.get("includes") or [])]
        pre = "".join(self.harness(n) + "\n" for n in includes if n != "doneprintHandle.js")
        return {
            "name": str(path.relative_to(self.root)),
            "src": src,
            "pre": pre,
            "async": "async" in flags,
            "strict": "onlyStrict" in flags,
            "nostrict": "noStrict" in flags,
            "neg": neg.get("type") if neg.get("phase") == "runtime" else None,
        }


def _verdict(ok: bool, err: str, neg: str | None) -> str:
    if neg is not None:
        return "pass" if not ok and neg in err else f"fail: expected {neg}, got {err or 'no error'}"
    return "pass" if ok else f"fail: {err}"


def run_bare(t: dict[str, Any]) -> str:
    ctx = quickjs.Context()
    ctx.set_memory_limit(256 << 20)
    ctx.set_time_limit(5)
    code = ('"use strict";\n' if t["strict"] else "") + _PRINT + _DONE_BARE + t["pre"] + t["src"]
    try:
        ctx.eval(code)
        for _ in range(100_000):
            if not ctx.execute_pending_job():
                break
    except quickjs.JSException as e:
        return _verdict(False, str(e).split("\n", 1)[0], t["neg"])
    except Exception as e:  # the binding's own errors (conversion of the last value)
        if t["async"]:
            pass
        else:
            return f"fail: {type(e).__name__}: {e}"
    if t["async"]:
        got = ctx.eval("__t262")
        return got if got is not None else "fail: $DONE was never called"
    return _verdict(True, "", t["neg"])


def task_code(t: dict[str, Any]) -> str:
    tail = "\nreturn await __t262p;\n" if t["async"] else '\nreturn "pass";\n'
    # a task cannot define globals: asyncHelpers.js's check that $DONE is one is the harness's
    pre = t["pre"].replace('Object.prototype.hasOwnProperty.call(globalThis, "$DONE")', "true")
    return (_DONE_TASK if t["async"] else "") + pre + t["src"] + tail


def run_tasks(tests: list[dict[str, Any]]) -> list[str]:
    out: list[str] = []
    with Runtime(step_budget=5.0) as rt:
        for i in range(0, len(tests), 200):
            chunk = tests[i : i + 200]
            hs = rt.submit_many([Task.js(task_code(t), timeout=30) for t in chunk])
            for t, h in zip(chunk, hs, strict=True):
                try:
                    v = rt.result(h, timeout=60)
                    out.append(str(v) if t["neg"] is None else _verdict(True, "", t["neg"]))
                except (TaskFailed, TaskTimeout) as e:
                    msg = getattr(e, "message", str(e)).split("\n", 1)[0]
                    out.append(_verdict(False, msg, t["neg"]))
    return out


def classify(t: dict[str, Any], task: str) -> str:
    if t["nostrict"]:
        return "strict mode"
    if task.startswith("fail: SyntaxError") and re.search(r"\bawait\b", t["src"]):
        return "body wrapping"  # `await` is a keyword in the body of an async function
    for name, rx in _CLASSES:
        if rx.search(task):
            return name
    if "Object.isExtensible(" in t["src"] and "Expected true but got false" in task:
        return "frozen built-ins"
    if re.search(r"\bFunction\(|\beval\b", t["pre"] + t["src"]):
        return "no eval/Function"  # the test or its harness compiles code at run time
    if re.search(r"\bthis\b", t["src"]) and "TypeError: cannot read property" in task:
        return "body wrapping"
    return "unexplained"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    p.add_argument("root", type=Path, help="a test262 checkout")
    p.add_argument("dirs", nargs="+", help="directories under the checkout")
    p.add_argument("--json", type=Path, help="write every test's outcomes here")
    p.add_argument("--show", type=int, default=30, help="unexplained differences to print")
    a = p.parse_args(argv)
    suite = Suite(a.root)
    tests = []
    skipped = 0
    for d in a.dirs:
        for path in sorted((a.root / d).rglob("*.js")):
            if path.name.endswith("_FIXTURE.js"):
                continue
            t = suite.prepare(path)
            if t is None:
                skipped += 1
            else:
                tests.append(t)
    bare = [run_bare(t) for t in tests]
    task = run_tasks(tests)
    rows = []
    kinds: Counter[str] = Counter()
    for t, b, k in zip(tests, bare, task, strict=True):
        same = (b == "pass") == (k == "pass")
        cls = "same" if same else classify(t, k)
        kinds[cls] += 1
        rows.append({"test": t["name"], "bare": b, "task": k, "class": cls})
    print(f"{len(tests)} tests run, {skipped} skipped (no task form)")
    for cls, n in kinds.most_common():
        print(f"  {cls:20} {n}")
    shown = [r for r in rows if r["class"] == "unexplained"][: a.show]
    for r in shown:
        print(f"- {r['test']}\n    bare: {r['bare'][:150]}\n    task: {r['task'][:150]}")
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
