"""A script VM at its memory limit: the host's own work never aborts the
process, and every task that finds no room says it ran out of memory.

Lua:
lupa creates coroutines, tables, registry references and strings outside any
protected call; a failed allocation there is a Lua panic ("PANIC: unprotected
error in call to Lua API (not enough memory)") that aborts the whole Python
process. Each scenario runs in a subprocess, so that a panic shows as its exit
status (SIGABRT) instead of killing the test run. Every task must end in a
value or a ``memory`` failure, and the VM must run a task again afterwards."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from typing import Any

import pytest

from llmspell import Runtime, ScriptError, Task

# Lua: takes every byte of the VM's memory it can get, as live strings in ``keep``
# (which, with ``n`` and ``rep``, the script declares first)
_GRAB = """local function add(size) n = n + 1; keep[n] = rep('y', size) .. n end
local function grab(size)
  while pcall(add, size) do end
  keep[n] = nil; n = n - 1
end
grab(4096); grab(256); grab(16); grab(1)"""

_SCENARIO = textwrap.dedent(
    """
    import json, sys
    from llmspell.engines._vm import Completed, Failed, Yielded
    from llmspell.engines.lua_vm import LuaVM

    class Host:
        def __init__(self, id_size):
            self.id_size, self.n = id_size, 0
        def submit(self, parent, spec):
            self.n += 1
            return f"child-{self.n}-" + "x" * self.id_size
        def emit(self, *a): pass
        def progress(self, *a): pass
        def log(self, *a): pass

    # fills the VM's memory with live strings, to the last bytes it can get
    FILL = '''
    local keep, n, rep = {}, 0, string.rep
    {GRAB}
    keep[1] = nil  -- 4 KB: room for what the script does next, not for what it is handed
    '''
    # the script catches every failed submit and goes on (what it got is lost to it)
    CAUGHT = '''
    local n = 0
    for i = 1, 4 do
      local ok, id = pcall(spell.submit, {kind = 'event', name = 'x'})
      if ok then n = n + 1 end
    end
    return n
    '''
    mode, count, limit = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    vm = LuaVM(Host(30_000), max_memory=limit, step_budget=5.0)
    outcomes = []

    def end(r):
        if isinstance(r, Completed):
            return "value"
        if isinstance(r, Failed):
            return r.kind
        return repr(r)

    for k in range(count):
        tid = f"t{k}"
        if mode == "starts":  # tasks that each hold their coroutine, one after another
            f = vm.start(tid, "spell.sleep(0) return 1", {"pad": "z" * (k % 50)})
            if f is None:
                r = vm.resume(tid)
                outcomes.append("slept" if isinstance(r, Yielded) else end(r))
            else:
                outcomes.append(f.kind)
            continue
        code = {
            "submit": "local id = spell.submit({kind = 'event', name = 'x'}) return #id",
            "await": "local v = spell.await('h') return type(v)",
            "error": "local ok, e = pcall(spell.await, 'h') return type(e)",
            "big_id": "local id = spell.submit({kind = 'event', name = 'x'}) return #id",
            "caught": CAUGHT,
            "caught_batch": "spell.sleep(0)" + CAUGHT,
        }[mode]
        if mode in ("big_id", "caught", "caught_batch"):
            vm._host.id_size = 200_000  # more than a step may take over the limit
        f = vm.start(tid, FILL + code)
        r = f if f is not None else vm.resume(tid)
        while isinstance(r, Yielded):
            if mode == "caught_batch" and r.request.op == "sleep":  # the rest in a batch
                done = vm.resume_batch([tid])[3]
                r = done[-1][1] if done else r
            elif r.request.op != "await":
                r = vm.resume(tid)
            elif mode == "error":
                r = vm.resume(tid, error="e" * 50_000)
            elif k % 2:
                r = vm.resume(tid, value="w" * 100_000)
            else:
                r = vm.resume(tid, value={"rows": ["w" * 1000] * 100})
        outcomes.append(end(r))
        try:
            vm._gc()  # what the task held goes back (the collection may itself run out)
        except Exception:
            pass
    for t in vm.tasks():
        vm.cancel(t)
    vm._gc()
    assert vm.start("last", "return 40 + 2") is None
    last = vm.resume("last")
    print(json.dumps({"outcomes": sorted(set(outcomes)), "last": end(last),
                      "value": getattr(last, "value", None)}))
    """
).replace("{GRAB}", _GRAB)


def _run(mode: str, count: int, limit: int = 1024 * 1024) -> dict[str, object]:
    proc = subprocess.run(
        [sys.executable, "-c", _SCENARIO, mode, str(count), str(limit)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    assert "PANIC" not in proc.stderr
    out: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["last"] == "value" and out["value"] == 42, out
    return out


@pytest.mark.parametrize("limit", [1_500_000, 3_000_000, 3_500_000])
def test_tasks_started_into_a_full_vm_fail_as_out_of_memory_and_the_process_lives(
    limit: int,
) -> None:
    """Each started task holds a coroutine (and a registry reference to it): the VM
    fills after some thousands. A start used to make them where a failed
    allocation aborted the process (at these limits the registry's growth met the
    limit); now a task with no room fails with kind ``memory``."""
    out = _run("starts", 5_000, limit)
    assert out["outcomes"] == ["memory", "slept"], out


@pytest.mark.parametrize(
    ("mode", "ends"),
    [
        # the 30 KB id is let in over the limit for that step: the script reads it
        ("submit", ["value"]),
        # a 100 KB string is let in; a table that took the VM over the limit is not
        ("await", ["memory", "value"]),
        # a 50 KB error message is let in: the script catches it
        ("error", ["value"]),
        # a 200 KB id is more than a step may take over the limit: the task fails
        ("big_id", ["memory"]),
        # so is a script that catches the failed call and goes on: it lost what it made
        ("caught", ["memory"]),
        ("caught_batch", ["memory"]),
    ],
)
def test_a_script_at_its_limit_gets_what_the_host_hands_it_or_fails(
    mode: str, ends: list[str]
) -> None:
    """The script holds every byte it could get, then the host hands it a
    string or a table (an id from ``spell.submit``, an awaited value, an error).
    Handing it over used to abort the process."""
    out = _run(mode, 6)
    assert out["outcomes"] == ends, out


@pytest.mark.parametrize("how", ["value", "error"])
def test_a_script_that_keeps_what_it_awaits_is_bound_by_the_limit(how: str) -> None:
    """An awaited string (a value, or an error the script catches) is let in over
    the limit for one step. A script that kept each one used to hold any number of
    them (40 x 200 KB in a VM of 1 MB, and it succeeded); now the task that is
    handed one more while the VM is over its limit fails as out of memory."""
    from llmspell.engines._vm import Completed, Failed, Yielded
    from llmspell.engines.lua_vm import LuaVM

    class Host:
        def submit(self, parent: str, spec: object) -> str:
            return "c"

        def emit(self, *a: object) -> None: ...
        def progress(self, *a: object) -> None: ...
        def log(self, *a: object) -> None: ...

    limit = 1024 * 1024
    vm = LuaVM(Host(), max_memory=limit, step_budget=5.0)  # type: ignore[arg-type]
    try:
        code = """
            local kept = {}
            for i = 1, 40 do kept[i] = false end
            for i = 1, 40 do
              local ok, v = pcall(spell.await, 'h')
              kept[i] = v
            end
            return #kept
        """
        assert vm.start("t", code) is None
        r = vm.resume("t")
        while isinstance(r, Yielded):
            big = "w" * 200_000
            r = vm.resume("t", value=big) if how == "value" else vm.resume("t", error=big)
        assert isinstance(r, Failed) and r.kind == "memory", r
        assert vm.memory_in_use() < limit + 2 * 200_000
        assert vm.start("next", "return 40 + 2") is None
        assert vm.resume("next") == Completed(42)
    finally:
        vm.close()


def test_js_tasks_that_find_the_vm_full_say_they_ran_out_of_memory() -> None:
    """QuickJS throws a bare null when it cannot even allocate its "out of memory"
    error; such tasks failed with the message "null". Now they say what happened,
    and the VM runs tasks again once the others are gone."""
    code = "for (let i = 0; i < 5; i++) { await spell.sleep(0) } return spell.task_id"
    with Runtime(js_memory=2 * 1024 * 1024) as rt:
        handles = rt.submit_many([Task.js(code) for _ in range(3000)])
        ran, full = 0, 0
        for h in handles:
            try:
                assert rt.result(h, timeout=60) == h.id
                ran += 1
            except ScriptError as e:
                assert "out of memory: the JS VM's limit of 2097152 bytes" in str(e), e
                full += 1
        assert ran and full, (ran, full)
        assert rt.result(rt.submit(Task.js("return 40 + 2")), timeout=30) == 42


# fills a Lua VM's memory to the last bytes it can get, holding a to-be-closed variable
# whose __close handler needs memory too, then waits
_FULL_WITH_A_CLOSE = """
local keep, n, rep = {}, 0, string.rep
local guard <close> = setmetatable({}, {__close = function()
  local s = {} for i = 1, 100 do s[i] = rep('z', 100) .. i end end})
{GRAB}
spell.await('h')
return 1
""".replace("{GRAB}", _GRAB)


class _LoggingHost:
    """A Lua VM's host that keeps what scripts log."""

    def __init__(self) -> None:
        self.logged: list[Any] = []

    def submit(self, parent: str, spec: Any) -> str:
        return "x"

    def emit(self, *a: Any) -> None: ...

    def progress(self, *a: Any) -> None: ...

    def log(self, *a: Any) -> None:
        self.logged.append(a)


def test_a_task_stopped_in_a_full_lua_vm_is_dropped_and_says_what_it_could_not_do(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Stopping a task closes its coroutine, which runs the script's __close handlers:
    # they need memory too. In a VM at its limit cancel() raised LuaMemoryError (the
    # engine logged it as a failure, with a traceback); now the coroutine is left to
    # the collector, a warning says its to-be-closed variables were not closed, and
    # the VM goes on.
    from llmspell.engines._vm import Yielded
    from llmspell.engines.lua_vm import LuaVM

    code = _FULL_WITH_A_CLOSE
    stopped = 0
    caplog.set_level("WARNING", logger="llmspell.engines.lua")
    for k in range(12):
        vm = LuaVM(_LoggingHost(), max_memory=1_000_000 + 7919 * k, step_budget=5.0)
        first = vm.start("t", code)
        if not isinstance(first if first is not None else vm.resume("t"), Yielded):
            continue  # (this limit left no room to get as far as the await)
        vm.cancel("t")  # raised LuaMemoryError at most of these limits
        stopped += 1
        assert "t" not in vm.tasks()
        vm._gc()
        assert vm.start("next", "return 40 + 2") is None
        assert vm.resume("next").value == 42  # type: ignore[union-attr]
        vm.close()
    assert stopped >= 6
    warned = [r for r in caplog.records if "could not be closed" in r.getMessage()]
    assert warned and all(r.levelname == "WARNING" for r in warned)


def test_a_task_after_a_stop_in_a_full_lua_vm_is_still_stopped_at_its_budget() -> None:
    # Closing the stopped task's coroutine ran out of memory after the prelude had
    # marked the VM as "closing" (which keeps the budget's kill from being raised
    # again at every instruction): the mark stayed, and a later task that caught the
    # kill went on past its catch (an endless loop around a pcall was never stopped:
    # the engine hung). After such a stop, the kill comes back at the next
    # instruction outside the catch, as ever: the task makes no more host calls.
    from llmspell.engines._vm import Failed, Yielded
    from llmspell.engines.lua_vm import LuaVM

    host = _LoggingHost()
    logged = host.logged

    code = _FULL_WITH_A_CLOSE
    catcher = """
    for i = 1, 3 do
      pcall(function() while true do end end)
      spell.log("info", "went on " .. i)
    end
    return 1
    """
    stopped = 0
    for k in range(6):
        vm = LuaVM(host, max_memory=1_000_000 + 7919 * k, step_budget=0.05)
        first = vm.start("t", code)
        if not isinstance(first if first is not None else vm.resume("t"), Yielded):
            continue  # (this limit left no room to get as far as the await)
        vm.cancel("t")
        stopped += 1
        vm._gc()
        logged.clear()
        assert vm.start("c", catcher) is None
        r = vm.resume("c")
        assert isinstance(r, Failed) and r.kind == "budget", r
        assert logged == [], (k, logged)
        vm.close()
    assert stopped >= 3
