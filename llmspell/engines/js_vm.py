"""JsVM: JavaScript script tasks as promises in one shared QuickJS context.

The contract is ``_vm.py``; what JavaScript adds:

* Code is the body of ``async function (spell) {...}``, called with ``this`` =
  ``globalThis`` (as a script's top level) and compiled once per code string
  (cached): the strict script that compiles it is first run in a scratch
  context (code escaping the function by unbalanced braces or by comments is
  refused there), then in the shared one, where it is one function expression
  and keeps nothing in the context once the cache forgets it. ``return`` is
  the result, a throw or rejection the failure. The first ``resume`` calls the
  function.
* One context for all tasks: every built-in, ``globalThis`` and the ``spell``
  prototype are frozen, ``eval`` and the function constructors (``Function``,
  async, generator) throw ``EvalError``, values cross as copies, so tasks
  share no object. Assigning a name a frozen built-in has defines an own
  property on the receiver (``p.then = f``; the "override mistake" is
  avoided); assigning it on the built-in itself throws. See
  ``docs/security.md``. The host holds each task's JS record and passes it back
  on every call (no lookup by id in JS). A step drains the job queue to
  empty, so every job run in a step is the stepped task's: ``spell``, timers
  and ``console`` find their task in a "current task" variable, and a step can
  never advance another task (``drain_other_results`` only reports tasks lost
  when a context is rebuilt).
* Waiting calls return Promises and become ``Request``s with VM-unique ids
  (the exceptions, made while the task waits on nothing else: a lone
  ``sleep(0)`` is ``JsVM.SLEEP0``, one object for all tasks, with id 0 (its
  only request), the hot path of ``await spell.sleep(0)``; a lone ``yield``
  uses the task's own negative id, its ``Yielded`` built once per task); a
  task may have several outstanding (``Promise.all``): ``Yielded(first, more)``,
  then ``Waiting()`` while it waits on earlier ones. Answer each with
  ``resume(..., request_id=id)`` (0 = its only one). Answers to unknown ids are
  ignored; a finished task's requests are abandoned; resuming a forgotten task
  raises ``KeyError``. A task with no outstanding request and an unsettled body
  fails ("deadlock").
* The binding refuses calls into Python while a time limit is set, so JS never
  calls Python: ``spell.emit/progress/log/submit`` are queued and performed in
  order after the step. ``spell.submit`` thus returns an opaque handle
  ``"<parent id>/<n>"`` that ``spell.await`` maps to the child's id; a spec the
  host rejects fails that await (and logs a warning).
* ``setTimeout``/``setInterval`` are ``sleep`` requests (nothing busy-waits),
  ``queueMicrotask`` a job, ``console.*`` ``host.log``. Errors thrown by those
  callbacks and a rejected ``spell`` promise nothing listened to are logged as
  warnings; the script's own unhandled rejections are not seen (no tracker in
  the binding). Once the body settles, pending timers never fire.
* Values (msgpack data, as JSON): undefined/null -> None; integral numbers
  below 2**63 -> int (exact), other numbers -> float; NaN/Infinity <-> float
  nan/inf; BigInt within 64 bits -> int; Uint8Array/ArrayBuffer <-> bytes;
  arrays <-> list; plain objects and class instances <-> dict; ``toJSON`` is
  used (Date -> ISO string). Functions, symbols, cycles, wider BigInts,
  Map/Set/Promise/RegExp/Error and other typed arrays fail naming the path:
  ``result.items[3]: cannot convert a function`` (``kind="conversion"``).
* Limits are per VM (one QuickJS runtime): memory (a task hitting it fails
  ``"memory"``; a waiting task's memory counts against all) and stack. The step
  budget is enforced by QuickJS's interrupt (process CPU clock, per job) and,
  for endless microtask chains, by the drain loop (wall clock): ``"budget"``;
  the task's leftover jobs are interrupted and the VM goes on. A context whose
  leftovers cannot be stopped is rebuilt and its tasks fail. ``clock`` replaces
  the drain loop's wall clock and the one of ``cpu_seconds`` (a simulation
  passes one that counts its reads); QuickJS's own interrupt keeps its clock.

Measured on this 2-core VM (noisy; QuickJS 2021, re-measured on QuickJS-ng in
bench/README.md: 2.9 KiB per pending task, boot ~8 ms with the lockdown's
accessors), 10,000 tasks awaiting ``spell.sleep(0)``: one shared context holds
3.1-3.2 KiB (malloc) per pending task against 1.65 KiB for a bare pending async
function, starts a task in ~5 us (compile cached) and boots in ~9 ms. A Context
per task would take ~310 us and ~75 KiB each before any prelude, with no sharing
of compiled code or the frozen realm: one shared context it is. A sleep(0) step
costs ~8-10 us against ~4 us for a hand-written loop resolving bare promises
(``bench/js.py``). Its floor is the binding: a step is four calls into QuickJS
(resolve, run the job, find the queue empty, collect), and the two that run jobs
need the time limit, for which the binding reads the process CPU clock (a ~1.2
us system call here); the Python around them is ~1.5 us. A batched
``resume_many`` (resolve many, drain once) measured no faster, and it would run
one task's jobs in another's step, so there is none. ``resume_batch`` (the
engine's run of ``sleep(0)``s, ``LuaVM.resume_batch``'s contract) makes each
task's step exactly as ``resume`` does, one task after another, and saves the
Python around the steps: the engine's work per yield and ``resume``'s own
(measured: one more yield through the runtime 7.2-7.7 -> 5.9-6.0 us).
"""

from __future__ import annotations

import itertools
import json
import logging
import re
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

import quickjs

from llmspell.engines._vm import (
    Completed,
    Failed,
    Host,
    Request,
    StepResult,
    Waiting,
    Yielded,
    read_prelude,
)
from llmspell.messages.options import lone_surrogate

__all__ = ["JsVM"]

_log = logging.getLogger("llmspell.engines.js")
_clock = time.perf_counter
_TAG = "\x00"
_MiB = 1 << 20
_SHORT = 64 * 1024  # a VM this close to its memory limit may have lost a job for want of it
_EXPORTS = ("start", "run", "begin", "resume", "collect", "count", "kill", "take", "record_clock")
# QuickJS-ng frames: "    at name (<input>:line:column)"; "(native)" for built-ins
_FRAME = re.compile(r"^\s*at (\S+|<anonymous>) \((<input>|native)(?::(\d+))?(?::\d+)?\)\s*$")
_POS = re.compile(r"\s+at <input>:(\d+)(?::\d+)?\s*$", re.M)
_HEAD, _TAIL, _OFFSET = "async function (spell) {\n", "\n}", 1  # user line = JS line - 1

_PRELUDE = read_prelude("prelude.js")


# The scratch context: no code is compiled at run time there either (eval and the function
# constructors throw), so a function whose source is exactly the checked text can only be
# that text parsed as one function expression. Its hook counts calls; the check wants one,
# with exactly the source ``t`` (read with the original Function.prototype.toString, which
# code escaping the function body cannot swap in its own call).
_SCRATCH_PRELUDE = r"""
(function () {
  let last = null, calls = 0;
  const source = Function.prototype.call.bind(Function.prototype.toString);
  const noCode = function () { throw new EvalError("no code is compiled at run time"); };
  for (const f of [function () {}, async function () {}, function* () {}, async function* () {}]) {
    Object.defineProperty(Object.getPrototypeOf(f), "constructor", {value: noCode});
  }
  Object.defineProperty(globalThis, "Function", {value: noCode});
  Object.defineProperty(globalThis, "eval", {value: noCode});
  globalThis.__llmspell_compiled = function (f) { last = f; calls++; };
  return function (t) {
    const f = last, n = calls;
    last = null;
    calls = 0;
    return n === 1 && typeof f === "function" && source(f) === t;
  };
})()
"""
_SCRATCH_USES = 500


class _Task:
    __slots__ = (
        "failed",
        "fid",
        "handles",
        "id",
        "jf0",
        "pending",
        "seconds",
        "source",
        "started",
        "steps",
        "t",
        "yy",
    )

    def __init__(self, task_id: str, fid: int) -> None:
        self.id, self.fid, self.started, self.steps, self.seconds = task_id, fid, False, 0, 0.0
        self.t: Any = None  # the task's record in JS (made by its first step)
        self.pending: tuple[Any, ...] | None = None  # what its record is made of
        self.yy: Yielded | None = None  # Yielded(Request("yield", {}, fid)), reused
        self.handles: dict[str, str] = {}  # spell.submit handle -> child task id
        self.failed: dict[str, str] = {}  # handle -> why its submit failed
        self.source: str | None = None  # where the code came from, for its errors
        self.jf0 = 0  # the VM's count of jobs failed for want of memory when it started


def _hook(d: dict[str, Any]) -> Any:
    if _TAG in d and len(d) == 1:
        tag, p = d[_TAG]
        return (
            p.encode("latin-1")
            if tag == "b"
            else float(p)
            if tag == "f"
            else int(p)
            if tag == "i"
            else dict(p)
        )
    return d


_loads = json.JSONDecoder(object_hook=_hook).decode


def _tagged(v: Any, path: str) -> Any:
    """``v`` as JSON-able data, NaN/inf/bytes/odd keys tagged for the JS side."""
    if v is None or isinstance(v, bool | int | str):
        return v
    if isinstance(v, float):
        return v if v - v == 0 else {_TAG: ["f", "nan" if v != v else "inf" if v > 0 else "-inf"]}
    if isinstance(v, bytes | bytearray | memoryview):
        return {_TAG: ["b", bytes(v).decode("latin-1")]}
    if isinstance(v, list | tuple):
        return [_tagged(x, f"{path}[{i}]") for i, x in enumerate(v)]
    if isinstance(v, dict):
        if not all(isinstance(k, str) for k in v):
            raise TypeError(f"{path}: map keys must be str")
        items = {k: _tagged(x, f"{path}.{k}") for k, x in v.items()}
        if any(k.startswith(_TAG) or k == "__proto__" for k in items):
            return {_TAG: ["o", [[k, x] for k, x in items.items()]]}
        return items
    raise TypeError(f"{path}: cannot convert a {type(v).__name__}")


def _to_js(v: Any, path: str) -> tuple[int, Any]:
    """(kind, payload) for the JS side: 0 = as is, 1 = JSON, 2 = tagged JSON."""
    t = type(v)
    if v is None or t is bool or t is float or (t is int and -(2**31) <= v < 2**31):
        return 0, v
    if t is str and v.isascii() and _TAG not in v:
        return 0, v
    try:
        return 1, json.dumps(v, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError):
        return 2, json.dumps(_tagged(v, path), allow_nan=False, separators=(",", ":"))


def _user_traceback(stack: str) -> tuple[str, int | None]:
    """The JS stack without llmspell's frames, in user line numbers; the first line."""
    lines, first = [], None
    for raw in stack.splitlines():
        m = _FRAME.match(raw)
        if m is None or m.group(1).startswith("ls$") or m.group(1) == "<eval>":
            continue
        name, where, line = m.groups()
        if where == "native":
            lines.append(f"    at {name} (native)")
        elif line is None:
            lines.append(f"    at {name} (task.js)")
        else:
            n = int(line) - _OFFSET
            first = n if first is None else first
            name = "<task>" if name in ("<anonymous>", "anonymous") else name
            lines.append(f"    at {name} (task.js:{n})")
    while lines and lines[-1] == "    at call (native)":  # the runner's fn.call(globalThis)
        lines.pop()
    return "\n".join(lines), first


_LINE = re.compile(r"\(line (\d+)\)$")
_TASK_JS = re.compile(r"\(task\.js(?::(\d+))?\)")


def _at(source: str, line: str | None) -> str:
    if line is None:
        return source
    return f"{source}, line {line}" if " " in source else f"{source}:{line}"


def _relabel(failed: Failed, source: str | None) -> Failed:
    """``failed`` with ``task.js`` / ``(line N)`` named after ``source``."""
    if not source:
        return failed
    msg = _LINE.sub(lambda m: f"({_at(source, m.group(1))})", failed.message)
    tb = _TASK_JS.sub(lambda m: f"({_at(source, m.group(1))})", failed.traceback)
    return Failed(failed.kind, msg, tb)


def _syntax_failure(text: str, code: str) -> Failed:
    first = text.split("\n", 1)[0]
    if "out of memory" in first or "interrupted" in first:
        return Failed("memory" if "memory" in first else "budget", f"{first} while compiling")
    m = _POS.search(text)
    if m is None:
        return Failed("syntax", first)
    n = min(max(int(m.group(1)) - _OFFSET, 1), code.count("\n") + 1)
    return Failed("syntax", f"{first} (line {n})", f"    at <task> (task.js:{n})")


class _Poisoned(Exception):
    pass


# what resume returns for a lone spell.sleep(0) (always this object; id 0: the task's
# only request): the engine takes it by identity (ScriptEngine._run_quantum)
_SLEEP0 = Yielded(Request("sleep", {"seconds": 0.0}))


class JsVM:
    """Many JavaScript tasks in one frozen QuickJS context (see the module docstring)."""

    language = "js"
    #: what ``resume`` returns for a lone ``spell.sleep(0)`` (always this object)
    SLEEP0 = _SLEEP0

    def __init__(
        self,
        host: Host,
        *,
        max_memory: int = 256 * _MiB,
        step_budget: float = 1.0,
        max_stack_size: int = 512 * 1024,
        compile_cache: int = 256,
        clock: Callable[[], float] | None = None,
        record_clock: bool = False,
    ) -> None:
        if step_budget <= 0:
            raise ValueError("step_budget must be > 0 seconds")
        self._host = host
        # a journaled runtime: Date.now/new Date()/Date() reads are reported to host.clock
        self._record_clock = record_clock
        self._now = clock or _clock  # budgets, cpu_seconds (a simulation counts reads)
        self._shrink = clock is None  # QuickJS's CPU-clock limit follows a real clock only
        self._max_memory = max_memory
        self._memory_text = f"out of memory: the JS VM's limit of {max_memory} bytes was reached"
        self._jobs_failed = 0  # jobs that failed outside any promise (out of memory)
        self._budget = float(step_budget)
        self._budget_text = (
            f"the task ran for more than its step budget of {step_budget:g} s "
            "without waiting (a busy loop?)"
        )
        self._max_stack = max_stack_size
        self._cache_size = compile_cache
        self._tasks: dict[str, _Task] = {}
        self._finished: OrderedDict[str, _Task] = OrderedDict()
        self._lost: dict[str, Failed] = {}
        self._slots = itertools.count(1)
        self._closed = False
        self._cur_budget = self._budget  # this step's (resume's budget=)
        self._raised: dict[str, Exception] = {}  # task -> what its step in a batch raised
        self._scratch: Any = None  # the context that checks new code (_check_body)
        self._scratch_take: Any = None
        self._scratch_uses = 0
        self._boot()

    def _boot(self) -> None:
        ctx = quickjs.Context()
        ctx.set_memory_limit(self._max_memory)
        ctx.set_max_stack_size(self._max_stack)
        ctx.eval(_PRELUDE)
        self._js: dict[str, Any] = {k: ctx.get("__ls_" + k) for k in _EXPORTS}
        if self._record_clock:
            self._js["record_clock"]()
        ctx.get("__ls_lockdown")()
        self._ctx: Any = ctx
        self._compiled: OrderedDict[str, Any] = OrderedDict()
        self._js_resume, self._js_collect = self._js["resume"], self._js["collect"]
        self._ex, self._setl = ctx.execute_pending_job, ctx.set_time_limit
        self._mem, self._mem_next = 0, 0.0

    # -- the protocol --------------------------------------------------------

    def start(
        self,
        task_id: str,
        code: str,
        args: Any = None,
        input: Any = None,
        source: str | None = None,
        clock: list[Any] | None = None,
    ) -> Failed | None:
        """``source`` names where the code came from in its errors and stack
        (``"add.js"``, ``"step 'transform' (flow.yaml:15)"``); default ``task.js``.
        ``clock``: what the task's first clock reads return (a replay; with
        ``record_clock``)."""
        self._check_open()
        if task_id in self._tasks:
            raise ValueError(f"JS task {task_id!r} was already started")
        fn = self._compile(code)
        if isinstance(fn, Failed):
            return _relabel(fn, source)
        try:
            kind, payload = (
                (0, None) if args is None and input is None else _to_js([args, input], "start")
            )
        except (TypeError, ValueError) as e:
            msg = str(e).replace("start[0]", "args").replace("start[1]", "input")
            return Failed("conversion", msg)
        rec = _Task(task_id, -next(self._slots))
        rec.source = source
        rec.jf0 = self._jobs_failed
        # its record is made and run by its first step, in one call into JS
        rec.pending = (fn, kind, payload, json.dumps(clock) if clock else None)
        self._tasks[task_id] = rec
        return None

    def resume(
        self,
        task_id: str,
        value: Any = None,
        error: str | None = None,
        request_id: int = 0,
        budget: float | None = None,
    ) -> StepResult:
        """``budget``: seconds this step may run if less than the VM's step budget
        (what is left of the task's CPU limit); running out is a ``"budget"`` failure."""
        rec = self._tasks.get(task_id)
        if rec is None:
            self._check_open()
            if task_id in self._lost:
                return self._lost.pop(task_id)
            raise KeyError(f"no JS task {task_id!r} here (finished, cancelled or never started)")
        if self._raised and task_id in self._raised:  # its step in a batch raised it
            raise self._raised.pop(task_id)
        t0 = self._now()
        rec.steps += 1
        b = self._budget if budget is None or budget >= self._budget else max(budget, 1e-3)
        self._cur_budget = b
        try:
            if not rec.started:
                rec.started = True
                assert rec.pending is not None
                fn, kind, payload, times = rec.pending
                rec.pending = None
                self._ctx.set_time_limit(b)
                try:
                    rec.t = self._js["begin"](rec.fid, task_id, fn, kind, payload, times)
                finally:
                    self._ctx.set_time_limit(-1)
                return self._step(rec, t0 + b, -2, None, False)
            if error is not None:
                r = self._js_resume(rec.t, request_id, 3, str(error))
            elif value is None:
                r = self._js_resume(rec.t, request_id, 0, None)
            else:
                r = self._js_resume(rec.t, request_id, *_to_js(value, "value"))
            if r == 1:
                if error is None:  # the hot path: drain, then a lone sleep(0)/yield?
                    deadline = t0 + b
                    jobs = self._drain(deadline, 0)
                    raw = self._js_collect()
                    if type(raw) is not str and raw and jobs >= 0:
                        return self._fast(rec, raw)
                    return self._step(rec, deadline, jobs, raw, False)
                return self._step(rec, t0 + b, -2, None, True)
            if r == 0:
                return Waiting()
            raise ValueError(
                f"JS task {task_id!r} has several outstanding requests: pass request_id"
            )
        except (quickjs.JSException, _Poisoned) as e:
            return self._broken(rec, e)
        finally:
            rec.seconds += self._now() - t0

    def resume_batch(
        self, task_ids: list[str], rounds: bool = False, until: float = 0.0
    ) -> tuple[int, list[int], list[int], list[tuple[int, StepResult]]]:
        """Resume ``task_ids`` (each resumed before and owed no answer but its turn
        after a lone ``spell.sleep(0)``) in order, each step exactly the one ``resume``
        makes, while each one only sleeps 0 again or returns: one pass, or round after
        round if ``rounds`` (the caller has nothing else to run). It stops after a step
        with any other result, after one that called the host (``spell.submit``,
        ``log``, ...), and once the VM's clock reads ``until`` or later (looked at after
        every step once every task had a turn; 0: one pass at most). The engine's work
        per cooperative yield is then skipped, and the order is the one resuming them
        one at a time gives (every job of a step is still the stepped task's).

        Returns ``(n, front, back, done)``, as ``LuaVM.resume_batch``: ``n`` steps were
        made; ``front`` are the positions in ``task_ids`` of the tasks this pass did not
        reach (to run first), ``back`` those that slept 0, in the order they run again
        (their result, ``SLEEP0``, is never in ``done``); ``done`` the ``(position,
        result)`` of the tasks that returned and, last, of the one that stopped the
        batch, as ``resume`` returns them. ``n`` is 0 when a task was lost to a rebuilt
        context (``resume`` reports it). Raises ``KeyError`` (before resuming any) for
        a task the VM does not hold or has not resumed yet. Stats are those of one
        resume at a time (each step's time is its own)."""
        self._check_open()
        tasks = self._tasks
        ring: list[_Task] = []
        for tid in task_ids:
            rec = tasks.get(tid)
            if rec is None:
                if tid in self._lost:
                    return 0, [], [], []
                raise KeyError(f"no JS task {tid!r} here (finished, cancelled or never started)")
            if not rec.started:
                raise KeyError(f"JS task {tid!r} has not started: resume it first")
            ring.append(rec)
        k = len(ring)
        if not k:
            return 0, [], [], []
        b = self._cur_budget = self._budget
        half, shrink = b / 2, self._shrink
        now, collect, js_resume = self._now, self._js_collect, self._js_resume
        ex, setl, jserror, interrupted = self._ex, self._setl, quickjs.JSException, _interrupted
        go_round = rounds and until > 0
        queue = deque(range(k))
        pop, push = queue.popleft, queue.append
        done: list[tuple[int, StepResult]] = []
        n = held = 0
        t0 = now()
        while queue:
            i = pop()
            rec = ring[i]
            rec.steps += 1
            n += 1
            try:
                try:
                    r = js_resume(rec.t, 0, 0, None)
                    if r == 1:
                        # _drain, inline
                        deadline = t0 + b
                        jobs = 0
                        setl(b)
                        try:
                            while True:
                                try:
                                    if not ex():
                                        break
                                except jserror as e:
                                    if interrupted(e):
                                        jobs = -1
                                        break
                                    self._jobs_failed += 1
                                jobs += 1
                                left = deadline - now()
                                if left <= 0:
                                    jobs = -1
                                    break
                                if left < half and shrink:
                                    setl(left)
                        finally:
                            setl(-1)
                        raw = collect()
                        if raw == -1 and jobs >= 0:  # the hot path: it slept 0 again
                            t1 = now()
                            rec.seconds += t1 - t0
                            t0 = t1
                            push(i)
                            if n >= k and (not go_round or t1 >= until):
                                break
                            continue
                        result, stop = self._batch_end(rec, deadline, jobs, raw)
                    elif r == 0:
                        result, stop = Waiting(), True
                    else:  # not the lone request the caller said it was: left to resume
                        rec.steps -= 1
                        n -= 1
                        queue.appendleft(i)
                        break
                except (jserror, _Poisoned) as e:
                    result, stop = self._broken(rec, e), True
            except Exception as x:  # what resume would have raised: its next resume raises it
                self._raised[rec.id] = x
                rec.seconds += now() - t0
                queue.appendleft(i)
                held = 1
                break
            t1 = now()
            rec.seconds += t1 - t0
            t0 = t1
            done.append((i, result))
            if stop or (n >= k and (not go_round or t1 >= until)):
                break
        rest = list(queue)  # those this pass did not reach come first
        cut = (k - n if n < k else 0) + held
        return n, rest[:cut], rest[cut:], done

    def _batch_end(
        self, rec: _Task, deadline: float, jobs: int, raw: Any
    ) -> tuple[StepResult, bool]:
        """``resume_batch``: a step's result when it did not sleep 0 again, and whether
        the batch stops after it (it goes on after a task that returned and did
        nothing else in its step: no host call)."""
        if type(raw) is not str and raw and jobs >= 0:
            return self._fast(rec, raw), True
        result = self._step(rec, deadline, jobs, raw, False)
        go_on = (
            type(result) is Completed
            and type(raw) is str
            and raw.startswith("d\x1f")
            and "\x1e" not in raw
        )
        return result, not go_on

    def _broken(self, rec: _Task, e: Exception) -> StepResult:
        """The end of ``rec``'s step that raised ``e`` (a QuickJS error or a poisoned
        context)."""
        if isinstance(e, _Poisoned):
            self._reset(str(e))
            self._lost.pop(rec.id, None)
            return self._finish(rec, Failed("budget", str(e)))
        # QuickJS-ng's interrupt cannot be caught, not even by the task's promise:
        # it reaches us from the call that ran the task's code
        if _interrupted(e):
            if rec.t is not None:
                self._stop(rec.t)
            return self._finish(rec, Failed("budget", self._budget_text))
        if rec.t is not None:
            self._js["kill"](rec.t)
        first = _first(e)
        # the task's code runs inside its promise, so what reaches us here is the
        # VM's own trouble: a bare null is QuickJS out of memory even for its error
        if "out of memory" in first or first == "null":
            return self._finish(rec, Failed("memory", self._memory_text))
        return self._finish(rec, Failed("runtime", first))

    def cancel(self, task_id: str) -> None:
        self._lost.pop(task_id, None)
        self._raised.pop(task_id, None)
        rec = self._tasks.pop(task_id, None)
        if rec is not None and not self._closed:
            if rec.t is not None:  # (a task that never ran has no record in JS)
                self._js["kill"](rec.t)
            self._finish(rec, Waiting())

    def memory_in_use(self, exact: bool = False) -> int:
        """QuickJS's malloc'd bytes. Measuring walks the whole heap (17 ms with 10,000
        tasks), so unless ``exact`` the figure is reused for 100x its cost (<= 1% of the
        time; 1.7 s with 10,000 tasks)."""
        self._check_open()
        t0 = self._now()
        if exact or t0 >= self._mem_next:
            self._mem = int(self._ctx.memory()["malloc_size"])
            self._mem_next = t0 + 101 * (self._now() - t0)
        return self._mem

    def close(self) -> None:
        self._closed = True
        self._tasks.clear()
        self._compiled.clear()
        self._js.clear()
        self._scratch = self._scratch_take = None
        self._ctx = self._js_resume = self._js_collect = self._ex = self._setl = None

    # -- extras ----------------------------------------------------------------

    def stats(self, task_id: str) -> dict[str, Any]:
        """``{"steps", "cpu_seconds", "running"}`` of a live or recently ended task;
        ``cpu_seconds`` is the time spent in its steps (JS runs on one thread)."""
        rec = self._tasks.get(task_id)
        running = rec is not None
        if rec is None:
            rec = self._finished[task_id]
        return {"steps": rec.steps, "cpu_seconds": rec.seconds, "running": running}

    def drain_other_results(self) -> list[tuple[str, StepResult]]:
        """Results of tasks that ended outside their own step: only tasks failed
        because the context had to be rebuilt (they also fail on their next resume)."""
        out: list[tuple[str, StepResult]] = list(self._lost.items())
        self._lost.clear()
        return out

    @property
    def tasks(self) -> int:
        """How many tasks this VM holds."""
        return len(self._tasks)

    # -- internals -------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this JsVM is closed")

    def _compile(self, code: str) -> Any:
        if not isinstance(code, str):
            return Failed("syntax", f"the code must be a str, got {type(code).__name__}")
        fn = self._compiled.get(code)
        if fn is not None:
            self._compiled.move_to_end(code)
            return fn
        if not code.isascii() and lone_surrogate(code) is not None:  # no UTF-8 for QuickJS
            return Failed("syntax", f"the code {lone_surrogate(code)}")
        text = _HEAD + code + _TAIL
        refused = self._check_body(code, text)
        if refused is not None:
            return refused
        # Checked: the text is one function expression and nothing else, so evaluating it
        # as a script runs no code of the task's and declares nothing. (A module would keep
        # its record in the context for good: ~1.4 KB per distinct code string.)
        self._ctx.set_time_limit(self._budget)
        try:
            self._ctx.eval(_script(text))
        except quickjs.JSException as e:
            return _syntax_failure(str(e), code)
        finally:
            self._ctx.set_time_limit(-1)
        fn = self._js["take"](text)
        if fn is None:  # not expected after the check; refuse rather than guess
            return Failed(
                "syntax", "SyntaxError: the code is not a function body (unbalanced braces?)"
            )
        self._compiled[code] = fn
        if len(self._compiled) > self._cache_size:
            self._compiled.popitem(last=False)
        return fn

    def _check_body(self, code: str, text: str) -> Failed | None:
        """Evaluate exactly the script the shared context will (``_compile``) in a
        scratch context (not the tasks' one): a syntax error, or code that escapes the
        function by unbalanced braces (what it ran, it ran there), is refused. The same
        text in the same goal parses the same way in both contexts; a module would not
        (``<!--`` and ``-->`` start comments in a script only), so code could pass as a
        module and escape as a script. A scratch context that ran anything but the one
        call is dropped, and every ``_SCRATCH_USES`` checks."""
        sc = self._scratch
        if sc is None or self._scratch_uses >= _SCRATCH_USES:
            sc = quickjs.Context()
            sc.set_memory_limit(min(self._max_memory, 64 * _MiB))
            sc.set_max_stack_size(self._max_stack)
            self._scratch_take = sc.eval(_SCRATCH_PRELUDE)
            self._scratch, self._scratch_uses = sc, 0
        self._scratch_uses += 1
        sc.set_time_limit(self._budget)
        try:
            sc.eval(_script(text))
            ok = self._scratch_take(text)
        except quickjs.JSException as e:
            self._scratch = None
            return _syntax_failure(str(e), code)
        finally:
            sc.set_time_limit(-1)
        if not ok:
            self._scratch = None
            return Failed(
                "syntax", "SyntaxError: the code is not a function body (unbalanced braces?)"
            )
        return None

    def _step(self, rec: _Task, deadline: float, jobs: int, raw: Any, rejected: bool) -> StepResult:
        """Finish a step whose promise was settled: drain (unless ``jobs`` > -2 says
        it was drained, ``raw`` what it collected), perform what the step queued,
        decide its result."""
        if jobs == -2:
            jobs = self._drain(deadline, 0)
            raw = self._js_collect()
        if type(raw) is not str:  # a lone sleep(0) (< 0) or yield (> 0), or nothing (0)
            if jobs >= 0 and raw:
                return self._fast(rec, raw)
            raw = _fast_text(raw, rec.fid)
        if rejected and jobs == 0:
            self._host.log(
                rec.id,
                "warning",
                f"unhandled rejection of a spell promise (nothing awaited it) in task {rec.id}",
            )
        reqs: list[Request] = []
        while True:
            over = jobs < 0 or self._now() >= deadline
            if over:
                self._stop(rec.t)
            end, again = self._apply(rec, raw.split("\x1e") if raw else [], reqs)
            if end is not None:
                return self._finish(rec, end)
            if over:
                return self._finish(rec, Failed("budget", self._budget_text))
            if not again:
                break
            for rid, msg in again:
                self._js_resume(rec.t, rid, 3, msg)
            jobs = self._drain(deadline, 0)
            raw = self._js_collect()
            raw = raw if type(raw) is str else _fast_text(raw, rec.fid)
        if reqs:
            return Yielded(reqs[0], tuple(reqs[1:]))
        if self._js["count"](rec.t):
            return Waiting()
        self._js["kill"](rec.t)
        # QuickJS drops a promise's reaction it has no memory to queue, without a word,
        # or a job fails outside any promise (_drain): the promise never settles
        if self._jobs_failed > rec.jf0 or self.memory_in_use(True) > self._max_memory - _SHORT:
            return self._finish(
                rec,
                Failed(
                    "memory",
                    f"{self._memory_text} (a promise's job was lost for want of memory "
                    "while the task ran, and nothing can settle what it waits for now)",
                ),
            )
        return self._finish(
            rec,
            Failed(
                "runtime",
                "deadlock: the task waits for a promise that nothing can settle "
                "(no spell call or timer of it is pending)",
            ),
        )

    def _drain(self, deadline: float, n: int) -> int:
        """Run jobs until the queue is empty: how many ran, -1 if the budget ran out."""
        ex, setl, budget, clock = self._ex, self._setl, self._cur_budget, self._now
        setl(budget)
        try:
            while True:
                try:
                    if not ex():
                        return n
                except quickjs.JSException as e:
                    if _interrupted(e):  # uncatchable: the job's task is out of budget
                        return -1
                    # else a job failed outside any promise (out of memory): go on
                    self._jobs_failed += 1
                n += 1
                left = deadline - clock()
                if left <= 0:
                    return -1
                if left < budget / 2 and self._shrink:
                    setl(left)
        finally:
            setl(-1)

    def _stop(self, t: Any) -> None:
        """End task ``t`` in JS, then run what it left queued with an instant interrupt."""
        self._js["kill"](t)
        ctx, limit = self._ctx, max(1.0, 2 * self._budget)
        ctx.set_time_limit(0)
        started = self._now()
        try:
            while True:
                try:
                    if not ctx.execute_pending_job():
                        break
                except quickjs.JSException:
                    pass
                if self._now() - started > limit:
                    raise _Poisoned(
                        "a runaway task's jobs could not be stopped; the JS VM "
                        "was reset and its tasks failed"
                    )
        finally:
            ctx.set_time_limit(-1)
        self._js_collect()
        self._js["kill"](t)

    def _apply(
        self, rec: _Task, entries: list[str], reqs: list[Request]
    ) -> tuple[StepResult | None, list[tuple[int, str]]]:
        """Perform a step's output (fields split by \\x1f, user data as JSON). Returns
        the task's end if it ended, and awaits to reject at once (failed submits)."""
        host, tid = self._host, rec.id
        end: StepResult | None = None
        again: list[tuple[int, str]] = []
        for entry in entries:
            tag, *f = entry.split("\x1f")
            if tag == "S":
                reqs.append(Request("sleep", {"seconds": float(f[1])}, int(f[0])))
            elif tag == "Y":
                reqs.append(Request("yield", {}, int(f[0])))
            elif tag == "A":
                h = _loads(f[1])
                if h in rec.failed:
                    again.append((int(f[0]), rec.failed[h]))
                else:
                    reqs.append(Request("await", {"task_id": rec.handles.get(h, h)}, int(f[0])))
            elif tag == "R":
                reqs.append(Request(f[0], _loads(f[2]), int(f[1])))  # type: ignore[arg-type]
            elif tag == "s":
                h = _loads(f[0])
                try:
                    rec.handles[h] = host.submit(tid, _loads(f[1]))
                except Exception as x:
                    rec.failed[h] = f"spell.submit failed: {x}"
                    host.log(tid, "warning", rec.failed[h])
            elif tag == "e":
                host.emit(tid, _loads(f[0]), _loads(f[1]))
            elif tag == "p":
                host.progress(tid, *_loads(f[0]))
            elif tag == "l":
                host.log(tid, *_loads(f[0]))
            elif tag == "T":
                host.clock(tid, f[0], _loads(f[1]))
            elif tag == "d":
                end = Completed(_loads(f[0]))
            else:
                end = _relabel(self._failed(*_loads(f[0])), rec.source)
        return end, again

    def _failed(self, kind: Any, msg: str, stack: str, data: str | None = None) -> Failed:
        """The task's end from what ls$fail recorded; ``data``: a thrown value that is
        not an Error (``throw {code: 42}``), as wire JSON, kept as the error's data."""
        tb, line = _user_traceback(stack)
        if data is not None:
            return Failed(kind, msg, tb, _loads(data))  # msg: "uncaught {...}" as it is
        if kind == "budget":
            msg = self._budget_text
        elif kind == "memory":
            msg = self._memory_text
        elif msg == "uncaught null" and not tb:
            # QuickJS throws null when it cannot even allocate its "out of memory" error
            msg = (
                "uncaught null: the script threw null, or the JS VM ran out of memory "
                f"(its limit is {self._max_memory} bytes)"
            )
        elif line is not None and kind == "runtime":
            msg = f"{msg} (line {line})"
        return Failed(kind, msg, tb)

    def _fast(self, rec: _Task, raw: int) -> Yielded:
        """The step's lone ``sleep(0)`` (raw < 0) or ``yield`` (raw > 0); +-1: the task
        waits on nothing else: ``SLEEP0`` (id 0: its only request), or a ``yield`` with
        the task's own id, made once per task and reused."""
        if raw == -1:
            return _SLEEP0
        if raw == 1:
            y = rec.yy
            if y is None:
                y = rec.yy = Yielded(Request("yield", {}, rec.fid))
            return y
        return _fast_yield(raw)

    def _finish(self, rec: _Task, result: StepResult) -> StepResult:
        """Forget ``rec`` (keeping its stats for a while)."""
        rec.t = rec.yy = rec.pending = None
        self._tasks.pop(rec.id, None)
        self._finished[rec.id] = rec
        if len(self._finished) > 4096:
            self._finished.popitem(last=False)
        return result

    def _reset(self, why: str) -> None:
        lost = list(self._tasks.values())
        self._tasks.clear()
        for rec in lost:
            self._lost[rec.id] = Failed("runtime", why)
            self._finish(rec, Waiting())
        _log.warning("JsVM reset: %s (%d tasks failed)", why, len(lost))
        self._boot()


def _script(text: str) -> str:
    """The script that compiles a task's function (checked first in a scratch context)."""
    return '"use strict";__llmspell_compiled(' + text + ");"


def _interrupted(e: BaseException) -> bool:
    """QuickJS's time limit stopped the code (an uncatchable ``InternalError``)."""
    return str(e).startswith("InternalError: interrupted")


def _first(e: BaseException) -> str:
    return str(e).split("\n", 1)[0]


_new = object.__new__
_req_op, _req_args, _req_id = (Request.__dict__[k].__set__ for k in ("op", "args", "id"))
_y_req, _y_more = (Yielded.__dict__[k].__set__ for k in ("request", "more"))


def _fast_yield(raw: int) -> Yielded:
    """``Yielded(Request("sleep", {"seconds": 0.0}, -raw))`` for raw < 0, else
    ``Yielded(Request("yield", {}, raw))``, built without the frozen dataclasses'
    ``__init__`` (half the cost; this is every ``await spell.sleep(0)``)."""
    r = _new(Request)
    if raw < 0:
        _req_op(r, "sleep")
        _req_args(r, {"seconds": 0.0})
        _req_id(r, int(-raw))
    else:
        _req_op(r, "yield")
        _req_args(r, {})
        _req_id(r, int(raw))
    y = _new(Yielded)
    _y_req(y, r)
    _y_more(y, ())
    return y


def _fast_text(raw: Any, fid: int) -> str:
    """The entry text of collect's numeric answer (a lone sleep(0) or yield, or 0)."""
    if not raw:
        return ""
    rid = fid if raw in (1, -1) else abs(int(raw))
    return f"S\x1f{rid}\x1f0" if raw < 0 else f"Y\x1f{rid}"
