"""``LuaVM``: many sandboxed Lua tasks, one coroutine each, in one ``LuaRuntime`` (Lua 5.5).

Semantics (the contract is ``_vm.py``):

* A task's code is the body of a function: ``return v`` gives the result (the first value
  only); its ``...`` is empty, as a main chunk's. ``spell`` is a per-task table
  (``spell.args``, ``spell.input``, ``spell.task_id`` and the API functions). Each task
  has its own globals table (``_G``): it reads the sandbox's globals from a shared base
  until the script looks at the table itself (``pairs``, ``next``, ``rawget``,
  ``rawset``, ``getmetatable``, ``setmetatable``, deleting a global), when they are copied
  in and it becomes a plain table as Lua's ``_G`` (so the strict-globals idiom works);
  tasks never see each other's globals. Code is compiled once per distinct string (LRU
  cache) behind a prefix on its first line, so messages carry the user's line numbers
  (``task:3: ...``).
* Waiting calls (``await``, ``run``, ``tool``, ``agent``, ``sleep``, ``yield``,
  ``wait_event``, ``coordinate``, ``_resource_wait``) yield the task coroutine; they work
  from nested functions, inside ``pcall`` and inside coroutines the script made itself
  (the request is passed up to the host and the answer back down). A resume with
  ``error=msg`` makes the waiting call raise ``msg``, which the script may catch.
  ``submit``, ``emit``, ``progress``, ``log`` (and ``print``, sent to ``Host.log`` at
  ``"info"``) return at once.
* Requests cannot be forged: the script's ``coroutine.yield`` always tags what it yields,
  so a bare ``coroutine.yield(...)`` at the task's top level is only a cooperative yield
  (``Request("yield")``; its values are dropped and it returns nil when resumed).
  ``coroutine.create``/``wrap``/``resume`` work as usual for the script's own coroutines.
  The first resume of a task ignores ``value`` and ``error``.
* Values: Lua -> Python: nil, booleans, integers (int), floats (float), strings (str when
  valid UTF-8, else bytes), tables whose keys are exactly 1..n (list) or all strings
  (dict). The empty table becomes ``{}``. Anything else (functions, coroutines, userdata,
  cycles, mixed, sparse or non-string keys) fails with the path, e.g.
  ``result.items[3]: cannot convert a function``: the task fails (kind ``"conversion"``)
  for a result; the spell call raises a script error for ``submit``/``emit``/...
  Python -> Lua: msgpack data; dicts and lists become tables (``None`` in a list leaves a
  hole), str and bytes become strings.
* Sandbox: the safe base functions, read-only ``string``, ``table``, ``math``, ``utf8``,
  ``coroutine`` and ``os`` (``time``, ``clock``, ``date`` only; shared proxies with
  protected metatables that ``next``/``rawget``/``pairs`` see through); ``load`` of text
  chunks only (default environment: the caller's); ``collectgarbage("count")`` only;
  ``setmetatable`` refuses ``__gc``; no ``io``, ``debug``, ``require``, ``dofile``,
  ``loadfile``, ``package``, ``string.dump``, ``warn``, ``python``; the string metatable
  is hidden. No Python object is ever handed to a script. The wrappers the sandbox puts
  around base and coroutine functions check their arguments as Lua does, so messages
  match bare Lua's (docs/security.md lists what still differs, and why).
* Limits: one ``max_memory`` for the VM (``memory_in_use`` is lupa's allocator count:
  Lua 5.5's ``collectgarbage("count")`` leaves out large strings): a task that runs out
  fails (kind ``"memory"``, unless it catches "not enough memory" itself) and the others
  go on. A cancelled or finished task's memory goes back at the next collection.
  The limit binds the scripts, never the host's own work: lupa makes coroutines, tables,
  registry references and strings outside any protected call, where a failed allocation
  is a Lua panic that aborts the whole process. So a task that finds no room for its
  coroutine (and 64 KiB) does not start (kind ``"memory"``); tables of args, input and
  resume values are made with the limit lifted, and a task they took over the limit
  fails the same way; a string pushed right before a resume, or handed back by a host
  call (``spell.submit``'s id), gets just its room over the limit for that step (a host
  call at most 64 KiB in a step; past that it hands nothing, and the task fails as out
  of memory). The script's next allocation over the limit fails as usual. A task handed
  a string while the VM is over its limit already (what was let in is still held) fails
  as out of memory.
  Each resume has ``step_budget`` seconds of wall time, checked
  every ``hook_count`` VM instructions by a count hook on every task coroutine and every
  coroutine a script makes; a task over budget fails (kind ``"budget"``) even if it tries
  to catch the error. A count hook makes Lua code run slower (about 2-3x for tight
  loops); ``step_budget=None`` installs none. One long C call (a pathological string
  pattern) is not interrupted.
* ``resume_batch`` resumes many tasks' ``spell.sleep(0)``s inside Lua in one call (the
  engine's hot path; see its docstring): the same host calls, results and stats as one
  resume at a time.
* ``stats(task_id)``: ``resumes``, ``yields``, ``cpu_seconds`` (wall time inside resumes,
  the resumes of one ``resume_batch`` sharing its time evenly; ``timing=False`` skips the
  two clock reads per resume) for live tasks and at least the
  10,000 most recently finished ones. ``clock`` replaces ``perf_counter`` for the budget
  and ``cpu_seconds`` (a simulation passes one that counts its reads).
* ``Yielded``/``Request`` objects returned may be shared between tasks: treat them as
  read-only. ``request_id`` is always 0 (one request at a time per task).
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict, deque
from collections.abc import Callable
from time import perf_counter
from typing import Any

import msgpack
from lupa import lua55

from llmspell.engines._vm import Completed, Failed, Host, Request, StepResult, Yielded, read_prelude

__all__ = ["LuaVM"]

_LuaError: Any = lua55.LuaError
_LuaMemoryError: Any = lua55.LuaMemoryError
_log = logging.getLogger("llmspell.engines.lua")
_PRELUDE_POS = re.compile(r"\[llmspell\]:\d+: ")
_MAXINT: int = lua55.LUA_MAXINTEGER
_MININT: int = lua55.LUA_MININTEGER
_STATS_KEPT = 10_000
# room kept for host work done outside a protected call (besides what it is known to need)
_ROOM = 64 * 1024
_REF = 64  # what one more registry reference may cost (the registry's array grows)
_CALL_SLACK = 64 * 1024  # how far over the limit host calls may push strings in a step

_CONTAINERS = (dict, list, tuple)  # what _to_lua makes tables of (sizes unknown up front)

_YIELD = Yielded(Request("yield"))
_SLEEP0 = Yielded(Request("sleep", {"seconds": 0.0}))
_RWAIT = Yielded(Request("resource_wait"))
_COMPLETED_NONE = Completed(None)


class _ConvError(Exception):
    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what
        self.path: list[str] = []  # innermost first

    def message(self, root: str) -> str:
        return root + "".join(reversed(self.path)) + ": " + self.what


class _Task:
    __slots__ = ("co", "cpu", "resumes", "send", "yields")

    def __init__(self, co: Any) -> None:
        self.co: Any = co
        self.send: Any = co.send
        self.resumes = 0
        self.yields = 0
        self.cpu = 0.0


def _text(b: Any) -> str:
    return b.decode("utf-8", "replace") if isinstance(b, bytes) else str(b)


def _unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False)


# The user's code starts on the prefix's line, so line numbers stay the user's; the chunk is
# never run outside a task coroutine (its _ENV upvalue is the prelude's take(), see runner);
# "return nil" spares lupa a StopIteration when the code ends without a return.
_PREFIX = b"local _ENV, spell = _ENV(); do "
_SUFFIX = b"\nend return nil"

_PRELUDE = read_prelude("prelude.lua")


class LuaVM:
    """Runs many sandboxed Lua tasks, one coroutine each, in one Lua 5.5 runtime.

    ``step_budget=None`` installs no hook: scripts run faster (no per-instruction hook
    dispatch) but a script that never waits blocks the VM.
    """

    language = "lua"
    #: what ``resume`` returns for ``spell.sleep(0)`` (always this object): the
    #: engine takes it by identity (``ScriptEngine._run_quantum``)
    SLEEP0 = _SLEEP0

    def __init__(
        self,
        host: Host,
        *,
        max_memory: int = 256 * 1024 * 1024,
        step_budget: float | None = 1.0,
        hook_count: int = 10_000,
        cache_size: int = 256,
        timing: bool = True,
        clock: Callable[[], float] | None = None,
        record_clock: bool = False,
    ) -> None:
        self._host = host
        # record_clock (a journaled runtime): os.time/os.clock/os.date are reported to
        # host.clock; a task started with clock=[values] reads those first (a replay)
        self._times: dict[str, deque[Any]] = {}
        self._clock = clock or perf_counter  # budgets and cpu_seconds (a simulation counts)
        self._max_memory = max_memory
        self._lifted = False  # the limit is not max_memory now (_lift, _let_in)
        self._starved = False  # a host call had no room to hand a string to the script
        self._budget = float("inf") if step_budget is None else step_budget
        self._cur_budget = self._budget  # this step's (resume's budget=)
        self._cache_size = cache_size
        self._cache: OrderedDict[str, Any] = OrderedDict()
        self._tasks: dict[str, _Task] = {}
        self._done: dict[str, _Task] = {}  # two generations of finished tasks' stats
        self._done_old: dict[str, _Task] = {}
        self._current = ""
        self._timing = timing
        self._hook_t0 = 0.0
        self._until = 0.0  # resume_batch's
        self._tripped = False
        self._closed = False
        self._lua: Any = lua55.LuaRuntime(
            encoding=None,
            register_eval=False,
            register_builtins=False,
            unpack_returned_tuples=True,
            max_memory=max_memory,
            attribute_filter=_deny_attributes,
        )
        real_load = self._lua.globals().load
        h = real_load(_PRELUDE.encode(), b"=[llmspell]", b"t")(
            self._over, self._h_submit, self._h_emit, self._h_progress, self._h_log,
            0 if step_budget is None else hook_count, _PREFIX, _SUFFIX,
            self._h_clock if record_clock else None, self._h_current, self._h_due,
        )  # fmt: skip
        self._compile: Any = h.compile
        self._coroutine: Any = h.runner.coroutine
        self._fail_info: Any = h.fail_info
        self._encode: Any = h.encode
        self._drop: Any = h.drop
        self._batch: Any = h.batch
        self._batch_end: Any = h.batch_end
        self._count: Any = h.count
        self._gc: Any = h.gc
        self._table_from: Any = self._lua.table_from
        self._used: Any = self._lua.get_memory_used
        self._set_max: Any = self._lua.set_max_memory

    # ---- the ScriptVM protocol -------------------------------------------------------

    def start(
        self,
        task_id: str,
        code: str,
        args: Any = None,
        input: Any = None,
        source: str | None = None,
        clock: list[Any] | None = None,
    ) -> Failed | None:
        """``source`` is the chunk's name in errors and tracebacks (``"add.lua"`` gives
        ``add.lua:3: ...``); default ``task``. ``clock``: what the task's first clock
        reads return (a replay; only with ``record_clock``)."""
        if self._closed:
            raise RuntimeError("LuaVM is closed")
        if task_id in self._tasks:
            raise ValueError(f"task {task_id!r} already exists in this VM")
        cache = self._cache
        key = code if not source else f"{source}\x00{code}"
        body = cache.get(key)
        if body is None:
            data = code.encode()
            if self._no_room(len(data)):  # the code is pushed outside a protected call
                return self._memory_failed()
            try:
                compiled = self._compile(data, source.encode() if source else None)
            except _LuaMemoryError:
                return self._memory_failed()
            if type(compiled) is tuple:
                body = Failed("syntax", _text(compiled[1]))
            else:
                body = compiled
            cache[key] = body
            if len(cache) > self._cache_size:
                cache.popitem(last=False)
        else:
            cache.move_to_end(key)
        if type(body) is Failed:
            return body
        root = "args"
        # the coroutine, its registry reference and the tables of args and input are made
        # outside a protected call: with no room for the first, the task does not start;
        # the tables (sizes unknown up front) are made with the limit lifted, and a task
        # whose tables took the VM over it does not start either
        if self._no_room(_REF * (len(self._tasks) + len(cache))):
            return self._memory_failed()
        lifted = (type(args) in _CONTAINERS or type(input) in _CONTAINERS) and self._lift()
        try:
            a = None if args is None else self._to_lua(args)
            root = "input"
            i = None if input is None else self._to_lua(input)
            co = self._coroutine(body, task_id.encode(), a, i)
        except _ConvError as e:
            return Failed("conversion", e.message(root))
        except _LuaMemoryError:
            return self._memory_failed()
        finally:
            if lifted:
                self._strict()
        if lifted and self._used() > self._max_memory:
            a = i = co = None
            return self._memory_failed()
        self._tasks[task_id] = _Task(co)
        if clock:
            self._times[task_id] = deque(clock)
        return None

    def resume(
        self,
        task_id: str,
        value: Any = None,
        error: str | None = None,
        request_id: int = 0,
        budget: float | None = None,
    ) -> StepResult:
        """``budget``: seconds this step may run when less than the step budget
        (what the task's CPU limit leaves it)."""
        self._cur_budget = self._budget if budget is None or budget >= self._budget else budget
        try:
            task = self._tasks[task_id]
        except KeyError:
            raise KeyError(f"no task {task_id!r} in this VM") from None
        arg: Any = None
        if not task.resumes:  # the first resume pushes the task's id and the runner's args
            if not self._let_in(len(task_id) + 256):
                return self._failed(task_id, task, _LuaMemoryError("not enough memory"))
        elif value is not None or error is not None:
            if error is not None:
                arg = (None, error.encode())
                if not self._let_in(len(arg[1]) + 256):
                    return self._failed(task_id, task, _LuaMemoryError("not enough memory"))
            else:
                lifted = type(value) in _CONTAINERS and self._lift()
                try:
                    arg = self._to_lua(value)
                except (_ConvError, _LuaMemoryError) as e:
                    self.cancel(task_id)
                    if isinstance(e, _ConvError):
                        return Failed("conversion", e.message("resume value"))
                    return self._memory_failed()
                finally:
                    if lifted:
                        self._strict()
                if lifted and self._used() > self._max_memory:  # it did not fit
                    arg = None
                    self.cancel(task_id)
                    return self._memory_failed()
                if type(arg) is bytes and not self._let_in(len(arg) + 256):
                    arg = None
                    return self._failed(task_id, task, _LuaMemoryError("not enough memory"))
        self._current = task_id
        self._hook_t0 = 0.0  # the budget clock starts at the first hook call of this step
        if self._timing:
            clock = self._clock
            t0 = clock()
            try:
                r = task.send(arg)
            except _LuaError as e:
                task.cpu += clock() - t0
                task.resumes += 1
                return self._failed(task_id, task, e)
            except StopIteration:  # returned nothing
                r = None
            task.cpu += clock() - t0
        else:
            try:
                r = task.send(arg)
            except _LuaError as e:
                task.resumes += 1
                return self._failed(task_id, task, e)
            except StopIteration:
                r = None
        if self._lifted and self._strict() and not self._tripped:
            # a host call had no room to hand the script its answer: the task fails as
            # out of memory even when the script caught that and went on
            task.resumes += 1
            return self._failed(task_id, task, _LuaMemoryError("not enough memory"))
        task.resumes += 1
        if r is None and task.co:  # spell.sleep(0), the hot path (it checks the budget flag)
            task.yields += 1
            return _SLEEP0
        return self._step_end(task_id, task, r)

    def resume_batch(
        self, task_ids: list[str], rounds: bool = False, until: float = 0.0
    ) -> tuple[int, list[int], list[int], list[tuple[int, StepResult]]]:
        """Resume ``task_ids`` (each resumed before and owed no answer) in order, inside
        Lua, while each one only sleeps 0 or returns: one pass, or round after round if
        ``rounds`` (the caller has nothing else to run). It stops after a resume with any
        other result, after one that called the host (``spell.submit``, ``log``, ...) or
        ran long enough to meet the budget hook, and once the VM's clock reads ``until``
        or later (looked at every 64 resumes once every task had a turn; 0: one pass at
        most). A cooperative yield then costs a Lua ``coroutine.resume``, not a crossing
        from Python into Lua and back, and the order is the one resuming them one at a
        time gives.

        Returns ``(n, front, back, done)``: ``n`` resumes were made; ``front`` are the
        positions in ``task_ids`` of the tasks this pass did not reach (to run first),
        ``back`` those that slept 0, in the order they run again; ``done`` the
        ``(position, result)`` of the tasks that returned and, last, of the one that
        stopped the batch, as ``resume`` returns them. ``n`` is 0 when the VM had no
        memory to begin. Raises ``KeyError`` (before resuming any) for a task the VM does
        not hold or has not resumed yet. The tasks' ``cpu_seconds`` share the batch's
        time evenly, by their number of resumes."""
        if self._closed:
            raise RuntimeError("LuaVM is closed")
        tasks = self._tasks
        ring = []
        for t in task_ids:
            task = tasks[t]
            if not task.resumes:
                raise KeyError(f"task {t!r} has not started: resume it first")
            ring.append(task)
        k = len(ring)
        if not k:
            return 0, [], [], []
        self._cur_budget = self._budget
        self._hook_t0 = 0.0
        timing = self._timing
        t0 = self._clock() if timing else 0.0
        self._until = until
        try:
            out = self._batch(rounds and until > 0, *[task.co for task in ring])
        except _LuaMemoryError:
            # the runner itself ran out (moving a result between threads, handing its
            # table over): the resume it was in failed; those before it are as they were
            if self._lifted:
                self._strict()
            out = (*self._batch_end(), True, False, b"not enough memory")
            if not out[0]:
                return 0, [], [], []  # before the first resume: nothing was run
        starved = False
        if self._lifted:  # a host call let a string in
            starved = self._strict()
        elapsed = self._clock() - t0 if timing else 0.0
        n, passes, last, dtable, dn = out[:5]
        last -= 1
        stop = out[6:] if len(out) > 5 else None
        share = elapsed / n if n else 0.0
        ended: dict[int, int] = {}  # position -> the pass it returned in
        returned: list[tuple[int, Any]] = []  # position, first value
        for j in range(1, dn + 1, 3):
            i = dtable[j] - 1
            ended[i] = dtable[j + 1]
            returned.append((i, dtable[j + 2]))
        if stop is not None:
            if last in ended:  # out of memory after it returned: the return stands
                stop = None
            else:
                ended[last] = passes
        if starved and not self._tripped:
            # the last resume made the host call that had no room to hand its answer:
            # that task fails as out of memory whatever it did next (returned included)
            returned = [r for r in returned if r[0] != last]
            ended[last] = passes
            stop = (False, b"not enough memory")
        front: list[int] = []
        back: list[int] = []
        later: list[int] = []  # slept this pass, run again after the ones not reached
        for i, task in enumerate(ring):
            p = ended.get(i)
            if p is None:
                r = passes if i <= last else passes - 1
                (later if i <= last else back if passes > 1 else front).append(i)
            else:
                r = p
                task.yields -= 1  # its last resume returned or stopped the batch
            task.resumes += r
            task.yields += r
            task.cpu += r * share
        back += later
        done: list[tuple[int, StepResult]] = []
        for i, first in returned:
            task_id = task_ids[i]
            self._current = task_id
            done.append((i, self._step_end(task_id, ring[i], first)))
        if stop is not None:
            task_id, task = task_ids[last], ring[last]
            self._current = task_id
            if not stop[0]:  # it raised
                err = stop[1] if len(stop) > 1 else None
                exc = (
                    _LuaMemoryError(err)
                    if (err == b"not enough memory" or starved) and not self._tripped
                    else _LuaError(err)
                )
                done.append((last, self._failed(task_id, task, exc)))
            else:  # five values, the missing ones None
                vals = list(stop[1:])
                while vals and vals[-1] is None:
                    vals.pop()
                v: Any = (
                    None if not vals
                    else vals[0] if len(vals) == 1
                    else (*vals, *(None,) * (5 - len(vals)))
                )  # fmt: skip
                done.append((last, self._step_end(task_id, task, v)))
        return n, front, back, done

    def cancel(self, task_id: str) -> None:
        task = self._tasks.pop(task_id, None)
        if task is None or self._closed:
            return
        co = task.co
        self._remember(task_id, task)
        if task.resumes:  # a coroutine that never ran has nothing to close
            self._current = task_id
            self._hook_t0 = 0.0
            try:
                try:
                    full = self._drop(co)  # True: the prelude had no memory to close it
                except _LuaMemoryError:
                    full = True
                if full:
                    # closing runs the script's __close handlers, which need memory too:
                    # in a VM at its limit the coroutine is left to the collector
                    _log.warning(
                        "task %s was stopped in a Lua VM at its memory limit: its "
                        "to-be-closed variables could not be closed",
                        task_id,
                    )
                    try:
                        self._gc()
                    except _LuaMemoryError:
                        pass
            finally:
                self._tripped = False

    def memory_in_use(self) -> int:
        """Bytes the Lua allocator holds (what ``max_memory`` limits). Lua 5.5's
        ``collectgarbage("count")`` leaves out large strings, so this is lupa's count."""
        if self._closed:
            return 0
        used = self._lua.get_memory_used()
        return int(used) if used is not None else int(self._count() * 1024)

    def close(self) -> None:
        self._closed = True
        self._tasks.clear()
        self._cache.clear()
        self._done.clear()
        self._done_old.clear()
        self._lua = self._compile = self._coroutine = self._fail_info = None
        self._drop = self._count = self._gc = self._table_from = None

    # ---- extras -------------------------------------------------------------------------

    def stats(self, task_id: str) -> dict[str, Any]:
        """``{"resumes", "yields", "cpu_seconds", "running"}`` of a live or recent task.

        ``cpu_seconds`` is the wall time spent inside this task's resumes. Raises
        ``KeyError`` for a task the VM does not know (or finished long ago)."""
        running = True
        task = self._tasks.get(task_id)
        if task is None:
            running = False
            task = self._done.get(task_id) or self._done_old[task_id]
        return {"resumes": task.resumes, "yields": task.yields, "cpu_seconds": task.cpu,
                "running": running}  # fmt: skip

    def tasks(self) -> list[str]:
        """Ids of the tasks the VM holds now."""
        return list(self._tasks)

    # ---- internals -------------------------------------------------------------------

    def _over(self, fresh: bool = False) -> bool:
        now = self._clock()
        if fresh or not self._hook_t0:
            self._hook_t0 = now
        elif now - self._hook_t0 > self._cur_budget:
            self._tripped = True
            return True
        return False

    def _remember(self, task_id: str, task: _Task) -> None:
        """Keep the finished task's figures, not its coroutine."""
        task.co = task.send = None
        if self._times:
            self._times.pop(task_id, None)
        done = self._done
        done[task_id] = task
        if len(done) >= _STATS_KEPT:
            self._done_old, self._done = done, {}

    def _step_end(self, task_id: str, task: _Task, r: Any) -> StepResult:
        if self._tripped:  # it went over budget but swallowed the error: fail it all the same
            return self._failed(task_id, task, None)
        if not task.co:  # the script returned
            return self._completed(task_id, task, r[0] if type(r) is tuple else r)
        task.yields += 1
        t = type(r)
        if r is None:
            return _SLEEP0
        if r is False:
            return _YIELD
        if r is True:
            return _RWAIT
        if t is float:
            return Yielded(Request("sleep", {"seconds": r}))
        if t is bytes:
            return Yielded(Request("await", {"task_id": _text(r)}))
        if t is tuple and type(r[0]) is int:
            if r[0] == 1:  # 1, pattern, timeout
                return Yielded(Request("wait_event", {"pattern": _text(r[1]), "timeout": r[2]}))
            # 2, tasks, strategy, timeout, inputs or nil
            tasks = _unpack(r[1])
            inputs = None if r[4] is None else _unpack(r[4])
            return Yielded(Request("coordinate", {
                "tasks": [] if tasks == {} else tasks,
                "strategy": _text(r[2]),
                "timeout": r[3],
                "inputs": [] if inputs == {} else inputs,
            }))  # fmt: skip
        return _YIELD  # the script's own coroutine.yield(...): USER, ...

    def _completed(self, task_id: str, task: _Task, v: Any) -> Completed | Failed:
        del self._tasks[task_id]
        self._remember(task_id, task)
        t = type(v)
        if v is None:
            return _COMPLETED_NONE
        if t is bytes:
            try:
                return Completed(v.decode())
            except UnicodeDecodeError:
                return Completed(v)
        if t is int or t is float or t is bool:
            return Completed(v)
        try:
            data = self._encode(v)
        except _LuaMemoryError:
            return self._memory_failed()
        if type(data) is tuple:
            return Failed("conversion", _text(data[1]))
        return Completed(_unpack(data))

    def _failed(self, task_id: str, task: _Task, exc: Any) -> Failed:
        if self._lifted and self._strict() and not self._tripped:
            exc = _LuaMemoryError("not enough memory")  # a host call found no room
        co = task.co
        if self._tasks.pop(task_id, None) is not None:
            self._remember(task_id, task)
        tripped = self._tripped
        self._hook_t0 = 0.0  # closing may run the script's __close handlers
        if isinstance(exc, _LuaMemoryError):
            self._tripped = False
            return self._memory_failed(co)
        data = None
        if exc is None:
            try:
                self._drop(co)  # (True: no memory to close it, left to the collector)
            except _LuaMemoryError:
                pass  # the same, found before the prelude could say so
            killed, msg, tb = True, "", ""
        else:
            try:
                info = self._fail_info(co)  # None: no memory to close the thread
            except _LuaMemoryError:
                info = None
            if info is None:
                self._tripped = False
                return self._memory_failed()
            killed, msg, tb, data = info
        self._tripped = False
        tb = _user_traceback(_text(tb))
        if killed or tripped:
            return Failed(
                "budget",
                f"task {task_id} exceeded its step budget of {self._budget:g} s "
                "without waiting (an endless loop?)",
                tb,
            )
        # an error raised inside the sandbox's own wrappers names a line of llmspell's
        # prelude ("[llmspell]:130: ..."), which tells the user nothing
        text = _PRELUDE_POS.sub("", _text(msg))
        if "attempt to yield across a C-call boundary" in text:
            text += (
                " (a spell call that waits, like sleep, await or run, cannot be made inside a"
                " callback that a C function runs: table.sort, string.gsub, a metamethod)"
            )
        return Failed("runtime", text, tb, None if data is None else _unpack(data))

    def _memory_failed(self, co: Any = None) -> Failed:
        """The task ran out of the VM's memory. Closing its coroutine and collecting
        need memory too: each is tried, and what fails is left to the next collection."""
        for step in ((lambda: self._drop(co)) if co is not None else None, self._gc):
            if step is not None:
                try:
                    step()
                except _LuaMemoryError:
                    pass
        return Failed(
            "memory",
            f"Lua memory limit exceeded (max_memory={self._max_memory} bytes for this VM)",
        )

    # ---- the memory limit binds scripts, not the host ------------------------------------

    def _no_room(self, need: int) -> bool:
        """Host work about to allocate about ``need`` bytes outside a protected call
        would come within ``_ROOM`` of the limit, even after a collection."""
        limit = self._max_memory
        if not limit or self._used() + need + _ROOM <= limit:
            return False
        try:
            self._gc()
        except _LuaMemoryError:
            pass
        return bool(self._used() + need + _ROOM > limit)

    def _lift(self) -> bool:
        """No limit until ``_strict``: for host work whose allocations no protected
        call catches. Returns True."""
        if self._max_memory:
            self._set_max(0)
            self._lifted = True
        return True

    def _let_in(self, n: int) -> bool:
        """About ``n`` bytes are pushed right before a resume (lupa pushes its
        arguments outside any protected call): past the limit, the limit moves up by
        just that much for this step (the script's next allocation fails as usual);
        ``_strict`` puts it back when the step ends. False (nothing let in) when the
        VM is over its limit already, even after a collection: what was let in before
        is still held, and letting in more would have no bound."""
        limit = self._max_memory
        if limit:
            used = self._used()
            if used + n > limit:
                if used > limit:
                    try:
                        self._gc()
                    except _LuaMemoryError:
                        pass
                    used = self._used()
                    if used > limit:
                        return False
                self._set_max(used + n)
                self._lifted = True
        return True

    def _strict(self) -> bool:
        """The limit is ``max_memory`` again. Returns whether a host call starved
        meanwhile (it had no room to hand a string to the script)."""
        self._set_max(self._max_memory)
        self._lifted = False
        starved, self._starved = self._starved, False
        return starved

    def _room_for(self, data: bytes) -> bool:
        """A host call (run inside a script's step) is about to hand ``data`` to it,
        which lupa pushes where a failed allocation aborts the process. Past the
        limit, the limit moves up by just that much, up to ``_CALL_SLACK`` over
        ``max_memory`` in one step; False past that (the call hands nothing and the
        task fails as out of memory when its step fails)."""
        limit = self._max_memory
        if not limit:
            return True
        need = self._used() + len(data) + 256
        if need <= (self._lua.get_max_memory() or limit):
            return True
        if need > limit + _CALL_SLACK:
            self._starved = self._lifted = True
            return False
        self._set_max(need)
        self._lifted = True
        return True

    def _to_lua(self, v: Any) -> Any:
        t = type(v)
        if t is str:
            return v.encode()
        if v is None or t is bool or t is float or t is bytes:
            return v
        if t is int:
            if _MININT <= v <= _MAXINT:
                return v
            raise _ConvError(f"integer {v} does not fit in a Lua integer (64 bits)")
        if t is dict:
            d: dict[bytes, Any] = {}
            for k, x in v.items():
                if type(k) is not str:
                    raise _ConvError(f"map keys must be strings, got {type(k).__name__}")
                try:
                    d[k.encode()] = self._to_lua(x)
                except _ConvError as e:
                    e.path.append("." + k)
                    raise
            return self._table_from(d)
        if t is list or t is tuple:
            items = []
            for n, x in enumerate(v, 1):
                try:
                    items.append(self._to_lua(x))
                except _ConvError as e:
                    e.path.append(f"[{n}]")
                    raise
            return self._table_from(items)
        base: Any
        for base in (bool, int, float, str, bytes, dict, list):  # subclasses, e.g. IntEnum
            if isinstance(v, base):
                return self._to_lua(base(v))
        raise _ConvError(f"cannot convert a {t.__name__}")

    def _h_due(self) -> bool:
        """Whether ``resume_batch`` is to stop (its ``until`` has come)."""
        return self._clock() >= self._until

    def _h_current(self, task_id: bytes) -> None:
        """The task that makes the host calls that follow (inside ``resume_batch``)."""
        self._current = task_id.decode()

    # host calls made by the script; they never raise into Lua, they return an error
    def _h_submit(self, data: bytes) -> tuple[Any, ...]:
        spec = _unpack(data)
        if type(spec) is not dict:
            return None, b"spell.submit: spec must be a table with string keys"
        try:
            child = self._host.submit(self._current, spec).encode()
            return (child,) if self._room_for(child) else ()
        except Exception as e:
            why = str(e)  # the host's messages name spell.submit already
            why = why if why.startswith("spell.submit") else f"spell.submit: {why}"
            data = why.encode()
            return (None, data) if self._room_for(data) else ()

    def _h_emit(self, name: bytes, data: bytes) -> bytes | None:
        try:
            self._host.emit(self._current, _text(name), _unpack(data))
        except Exception as e:
            return self._said(f"spell.emit: {e}")
        return None

    def _h_clock(self, fn: bytes, value: Any) -> Any:
        """A clock read (``record_clock``): the replayed value if any is left, else
        ``value`` (what Lua read); reported to ``host.clock`` either way."""
        task_id = self._current
        q = self._times.get(task_id)
        if q:
            value = q.popleft()
        try:
            self._host.clock(task_id, _text(fn), value)
        except Exception:  # the host's trouble is the host's: the script gets its value
            _log.exception("recording a clock read of task %s failed", task_id)
        if type(value) is str:
            value = value.encode()
        return value if type(value) is not bytes or self._room_for(value) else None

    def _said(self, message: str) -> bytes | None:
        """A host call's error message for the script, when there is room for it."""
        data = message.encode()
        return data if self._room_for(data) else None

    def _h_progress(self, done: float, total: float | None, message: Any) -> bytes | None:
        try:
            self._host.progress(
                self._current, done, total, None if message is None else _text(message)
            )
        except Exception as e:
            return self._said(f"spell.progress: {e}")
        return None

    def _h_log(self, level: bytes, message: bytes) -> bytes | None:
        try:
            self._host.log(self._current, _text(level), _text(message))
        except Exception as e:
            return self._said(f"spell.log: {e}")
        return None


def _deny_attributes(obj: Any, name: Any, is_setting: bool) -> Any:
    raise AttributeError("Python attributes are not reachable from Lua")


def _user_traceback(tb: str) -> str:
    """Keep the frames of the user's code; drop the VM's own (``[llmspell]``) and C frames."""
    lines = [
        ln for ln in tb.split("\n")[1:] if "[llmspell]" not in ln and not ln.startswith("\t[C]")
    ]
    while lines and lines[-1] == "\t(...tail calls...)":  # how the VM called the body
        lines.pop()
    return "stack traceback:\n" + "\n".join(lines) if lines else ""
