"""LuaVM.resume_batch: many tasks' spell.sleep(0)s resumed inside Lua, in one call.

The engine (ScriptEngine._batch_step) hands it the tasks at the head of its ready queue
that wait only for their turn. What it must give: the same host calls in the same order,
the same results and the same stats as resuming them one at a time; limits and errors
as for one resume; and it must stop where one-at-a-time would have done something else.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator
from typing import Any

import pytest
from batch_host import Host, later, started
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmspell.engines._vm import Completed, Failed, StepResult, Yielded
from llmspell.engines.lua_vm import LuaVM


@pytest.fixture
def host() -> Host:
    return Host()


@pytest.fixture
def vm(host: Host) -> Iterator[LuaVM]:
    v = LuaVM(host, max_memory=32 * 1024 * 1024, step_budget=0.3)
    yield v
    v.close()


# ---- the outcome of one batch -------------------------------------------------------------


def test_rounds_run_every_task_to_its_end(vm: LuaVM) -> None:
    codes = [f"for i = 1, {k} do spell.sleep(0) end return {k} * 10" for k in (1, 3, 0, 7, 2)]
    ids = started(vm, ["spell.sleep(0) " + c for c in codes])
    n, front, back, done = vm.resume_batch(ids, rounds=True, until=later())
    assert (front, back) == ([], [])
    assert sorted(done) == [(0, Completed(10)), (1, Completed(30)), (2, Completed(0)),
                            (3, Completed(70)), (4, Completed(20))]  # fmt: skip
    assert n == sum(k + 1 for k in (1, 3, 0, 7, 2))
    assert [i for i, _ in done] == [2, 0, 4, 1, 3]  # in the order they returned
    for tid, k in zip(ids, (1, 3, 0, 7, 2), strict=True):
        s = vm.stats(tid)
        assert (s["resumes"], s["yields"], s["running"]) == (k + 2, k + 1, False)
        assert s["cpu_seconds"] > 0
    assert vm.tasks() == []


def test_one_pass_resumes_each_task_once(vm: LuaVM) -> None:
    ids = started(vm, ["spell.sleep(0) spell.sleep(0) return 1"] * 3)
    n, front, back, done = vm.resume_batch(ids, rounds=False, until=later())
    assert (n, front, back, done) == (3, [], [0, 1, 2], [])
    assert [vm.stats(t)["resumes"] for t in ids] == [2, 2, 2]


def test_a_request_stops_the_batch_where_one_at_a_time_would_handle_it(vm: LuaVM) -> None:
    ids = started(vm, [
        "spell.sleep(0) spell.sleep(0) return 'a'",
        "spell.sleep(0) spell.sleep(2.5) return 'b'",
        "spell.sleep(0) spell.sleep(0) return 'c'",
        "spell.sleep(0) return 'd'",
    ])  # fmt: skip
    # one pass: a sleeps 0, b asks to sleep 2.5 s: c and d were not reached and run first
    n, front, back, done = vm.resume_batch(ids, rounds=False, until=later())
    assert (n, front, back) == (2, [2, 3], [0])
    assert done == [(1, Yielded(_req("sleep", seconds=2.5)))]
    # rounds: c, d (returns), a, c, then a returns, c returns
    n, front, back, done = vm.resume_batch([ids[i] for i in (2, 3, 0)], True, later())
    assert (front, back) == ([], [])
    assert done == [(1, Completed("d")), (2, Completed("a")), (0, Completed("c"))]
    assert vm.resume(ids[1]) == Completed("b")


def _req(op: str, **args: Any) -> Any:
    from llmspell.engines._vm import Request

    return Request(op, args)


def test_the_tasks_a_round_did_not_reach_go_first(vm: LuaVM) -> None:
    ids = started(vm, ["spell.sleep(0) spell.sleep(0) spell.sleep(0) return 1",
                       "spell.sleep(0) spell.sleep(0) spell.sleep(0) return 2",
                       "spell.sleep(0) spell.sleep(0) error('no', 0)"])  # fmt: skip
    n, front, back, done = vm.resume_batch(ids, rounds=True, until=later())
    # round 1: all three sleep; round 2: 0 and 1 sleep, 2 fails: the next turn is 0's
    assert n == 6
    assert (front, back) == ([], [0, 1])
    assert done == [(2, Failed("runtime", "no", done[0][1].traceback))]  # type: ignore[union-attr]


def test_host_calls_are_made_for_the_task_that_makes_them(vm: LuaVM, host: Host) -> None:
    ids = started(vm, [
        "spell.sleep(0) spell.log('info', 'zero') spell.sleep(0) "
        "return spell.submit({lang = 'python', target = 'm:f'})",
        "spell.sleep(0) spell.emit('e1', {x = 1}) spell.sleep(0) print('one') return 1",
        "spell.sleep(0) spell.progress(0.5) return 2",
    ])  # fmt: skip
    results: dict[str, StepResult] = {}
    q = deque(ids)
    while q:
        batch = list(q)
        q.clear()
        n, front, back, done = vm.resume_batch(batch, rounds=True, until=later())
        assert n >= 1
        q.extend(batch[i] for i in front + back)
        results.update((batch[i], r) for i, r in done)
    assert results == {"t0": Completed("child-of-t0"), "t1": Completed(1), "t2": Completed(2)}
    assert host.calls == [
        ("t0", "log", "zero"),
        ("t1", "emit", ["e1", {"x": 1}]),
        ("t2", "progress", 0.5),
        ("t0", "submit", {"lang": "python", "target": "m:f"}),
        ("t1", "log", "one"),
    ]


@pytest.mark.timeout(30)
def test_a_task_over_its_step_budget_fails_alone(vm: LuaVM) -> None:
    ids = started(vm, ["spell.sleep(0) spell.sleep(0) return 'fine'",
                       "spell.sleep(0) while true do end",
                       "spell.sleep(0) spell.sleep(0) return 'also fine'"])  # fmt: skip
    n, front, back, done = vm.resume_batch(ids, rounds=True, until=later())
    assert (n, front, back) == (2, [2], [0])
    ((i, f),) = done
    assert i == 1 and isinstance(f, Failed) and f.kind == "budget"
    assert "exceeded its step budget of 0.3 s" in f.message
    # the budget is per resume: the others were not charged for it
    n, front, back, done = vm.resume_batch([ids[2], ids[0]], rounds=True, until=later())
    assert sorted(done) == [(0, Completed("also fine")), (1, Completed("fine"))]


def test_a_memory_bomb_fails_its_task_and_the_others_go_on(vm: LuaVM) -> None:
    bomb = "local t = {} for i = 1, 1e9 do t[i] = string.rep('x', 1000) .. i end"
    ids = started(vm, ["spell.sleep(0) spell.sleep(0) return 1",
                       "spell.sleep(0) " + bomb,
                       "spell.sleep(0) return 3"])  # fmt: skip
    _, front, back, done = vm.resume_batch(ids, rounds=True, until=later())
    ((i, f),) = done
    assert i == 1 and isinstance(f, Failed) and f.kind == "memory"
    assert vm.memory_in_use() < 4 * 1024 * 1024
    _, _, _, done = vm.resume_batch([ids[i] for i in front + back], True, later())
    assert sorted((r for _, r in done), key=repr) == [Completed(1), Completed(3)]


def test_errors_carry_the_users_message_and_traceback(vm: LuaVM) -> None:
    code = "spell.sleep(0)\nspell.sleep(0)\nlocal x = nil\nreturn x.field"
    ids = started(vm, [code, code])
    n, front, back, done = vm.resume_batch(ids, rounds=True, until=later())
    assert (n, front, back) == (3, [], [1])  # the first to fail stops the batch
    ((i, f),) = done
    assert i == 0
    serial = LuaVM(Host())
    serial.start("s", code)
    while (r := serial.resume("s")) is LuaVM.SLEEP0:
        pass
    assert isinstance(f, Failed) and isinstance(r, Failed)
    assert (f.kind, f.message) == (r.kind, r.message) == ("runtime", f.message)
    assert "task:4:" in f.message
    assert f.traceback == r.traceback and "task:4:" in f.traceback
    serial.close()


@pytest.mark.timeout(30)
def test_the_batch_stops_when_its_time_is_up(host: Host) -> None:
    vm = LuaVM(host, step_budget=None)  # no hook: only the time ends these rounds
    ids = started(vm, ["while true do spell.sleep(0) end"] * 3)
    t0 = time.perf_counter()
    n, front, back, done = vm.resume_batch(ids, rounds=True, until=t0 + 0.05)
    took = time.perf_counter() - t0
    assert n >= 64 and done == [] and sorted(front + back) == [0, 1, 2]
    assert took >= 0.05  # it went round until its time was up, not before
    # until=0: one pass at most
    assert vm.resume_batch(ids, rounds=True, until=0.0) == (3, [], [0, 1, 2], [])
    vm.close()


def test_a_batch_gives_every_task_a_turn_before_it_looks_at_the_time(host: Host) -> None:
    # the engine's work for a batch grows with the tasks it hands over: a quantum that
    # has already run out still lets each of them take its turn (then the batch stops)
    vm = LuaVM(host, step_budget=None)
    ids = started(vm, ["while true do spell.sleep(0) end"] * 150)
    past = time.perf_counter() - 1.0
    n, front, back, done = vm.resume_batch(ids, rounds=True, until=past)
    assert 150 <= n < 300 and done == [] and sorted(front + back) == list(range(150))
    assert all(vm.stats(t)["resumes"] in (2, 3) for t in ids)
    vm.close()


def test_a_task_that_computes_a_while_ends_the_batch(vm: LuaVM) -> None:
    # the budget hook's call (every hook_count instructions) ends a batch after that
    # resume, so a quantum is not held by tasks that compute between their sleeps
    ids = started(vm, ["for i = 1, 3 do spell.sleep(0) end return 1",
                       "for i = 1, 3 do local s = 0 for j = 1, 2e4 do s = s + j end "
                       "spell.sleep(0) end return 2",
                       "for i = 1, 3 do spell.sleep(0) end return 3"])  # fmt: skip
    n, front, back, done = vm.resume_batch(ids, rounds=True, until=later())
    assert (n, front, back, done) == (2, [2], [0, 1], [])


def test_tasks_it_cannot_take_are_refused_before_any_runs(vm: LuaVM) -> None:
    ids = started(vm, ["spell.sleep(0) return 1"])
    vm.start("fresh", "return 2")
    for bad in (["nope"], ["fresh"]):
        with pytest.raises(KeyError):
            vm.resume_batch([ids[0], *bad], rounds=True, until=later())
    assert vm.stats(ids[0])["resumes"] == 1
    assert vm.resume(ids[0]) == Completed(1)
    assert vm.resume_batch([], True, later()) == (0, [], [], [])


def test_a_cancelled_batch_task_frees_its_memory(vm: LuaVM) -> None:
    ids = started(vm, ["local s = string.rep('x', 4e6) while true do spell.sleep(0) end"] * 2)
    vm.resume_batch(ids, rounds=True, until=time.perf_counter() + 0.01)
    for t in ids:
        vm.cancel(t)
    vm._gc()
    assert vm.memory_in_use() < 2 * 1024 * 1024


# fills the VM's memory to the last few bytes (small tables once a big one no longer
# grows), keeps it, and sleeps 0
HOG = """
local t, head = {}, nil
spell.sleep(0)
pcall(function() while true do t[#t + 1] = {} end end)
pcall(function() while true do head = {head} end end)
spell.sleep(0)
spell.sleep(0)
return #t
"""


def test_a_batch_that_has_no_memory_to_begin_reports_nothing_of_the_batch_before() -> None:
    # a batch whose first allocation fails must not read the last batch's outcome as its
    # own (a task of the earlier batch returned 'X' at the slot b now holds)
    vm = LuaVM(Host(), max_memory=4 * 1024 * 1024, step_budget=5.0)
    try:
        for tid, code in (("a0", "spell.sleep(0) return 'X'"),
                          ("a1", "spell.sleep(0) spell.sleep(0) return 'Y'")):  # fmt: skip
            assert vm.start(tid, code) is None
            assert vm.resume(tid) is LuaVM.SLEEP0
        assert vm.resume_batch(["a0", "a1"], False, later()) == (2, [], [1], [(0, Completed("X"))])
        assert vm.start("b", "spell.sleep(0) spell.sleep(0) return 'b'") is None
        assert vm.resume("b") is LuaVM.SLEEP0
        assert vm.start("h", HOG) is None
        assert vm.resume("h") is LuaVM.SLEEP0
        assert vm.resume("h") is LuaVM.SLEEP0  # memory full now
        n, _, _, done = vm.resume_batch(["b", "h"], False, later())
        # whatever ran (the VM is full: a memory error may stop it), nothing of the batch
        # before is handed out again: no 'X' for b, read as spell.await('X')
        for _, r in done:
            assert isinstance(r, Failed) and r.kind == "memory", r
        assert n <= 2 and vm.stats("b")["resumes"] <= 2
    finally:
        vm.close()


# ---- the invariant: the same as one at a time ---------------------------------------------

# a program: steps, each "sleep" (spell.sleep(0)), "log" (a host call), "req" (a request
# the driver answers at once with nothing), "co" (a sleep inside a coroutine the script
# made), then an end
step = st.sampled_from(["sleep", "sleep", "sleep", "log", "req", "co", "yield"])
end = st.sampled_from(["return", "error", "table", "fall_off"])
program = st.tuples(st.lists(step, max_size=6), end)


def _code(steps: list[str], ending: str, me: int) -> str:
    lines = ["spell.sleep(0)"]  # every task's first resume is made one at a time
    for n, s in enumerate(steps):
        lines.append(
            {
                "sleep": "spell.sleep(0)",
                "log": f"spell.log('info', 'task {me} step {n}')",
                "req": "spell.sleep(0.25)",
                "co": "coroutine.wrap(function() spell.sleep(0) end)()",
                "yield": "coroutine.yield('mine')",
            }[s]
        )
    lines.append(
        {
            "return": f"return {me}",
            "error": f"error('task {me} fails', 0)",
            "table": f"return {{me = {me}, list = {{1, 2, {me}}}}}",
            "fall_off": "",
        }[ending]
    )
    return "\n".join(lines)


def _drive(codes: list[str], batched: bool) -> tuple[list[Any], dict[str, Any], dict[str, Any]]:
    """Run the tasks as the engine does (a FIFO ready queue; a task that sleeps or asks
    goes to its back, answered at once); with batched, the tasks at the head that only
    wait for their turn go through resume_batch, with rounds when nothing else waits."""
    host = Host()
    vm = LuaVM(host, step_budget=5.0)
    q: deque[str] = deque()
    turn_only: set[str] = set()  # started, owed nothing
    outcomes: dict[str, Any] = {}
    for i, code in enumerate(codes):
        vm.start(f"t{i}", code)
        q.append(f"t{i}")

    def handle(tid: str, r: StepResult) -> None:
        if isinstance(r, Yielded):
            q.append(tid)
            if r is LuaVM.SLEEP0:
                turn_only.add(tid)
        else:
            outcomes[tid] = (r.kind, r.message) if isinstance(r, Failed) else r

    while q:
        head: list[str] = []
        if batched:
            for tid in q:
                if tid not in turn_only:
                    break
                head.append(tid)
        if len(head) >= 2:
            for _ in head:
                q.popleft()
            n, front, back, done = vm.resume_batch(head, not q, later())
            assert n >= 1
            q.extend(head[i] for i in back)
            q.extendleft(head[i] for i in reversed(front))
            for i, r in done:
                turn_only.discard(head[i])
                handle(head[i], r)
            continue
        tid = q.popleft()
        turn_only.discard(tid)
        handle(tid, vm.resume(tid))
    stats = {}
    for tid in outcomes:
        s = vm.stats(tid)
        stats[tid] = (s["resumes"], s["yields"])
    vm.close()
    return host.calls, outcomes, stats


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(programs=st.lists(program, min_size=1, max_size=7))
def test_a_batch_does_what_one_at_a_time_does(programs: list[tuple[list[str], str]]) -> None:
    codes = [_code(steps, ending, i) for i, (steps, ending) in enumerate(programs)]
    calls_1, outcomes_1, stats_1 = _drive(codes, batched=False)
    calls_b, outcomes_b, stats_b = _drive(codes, batched=True)
    assert calls_b == calls_1  # the same host calls, in the same order, for the same tasks
    assert outcomes_b == outcomes_1
    assert stats_b == stats_1
    assert len(outcomes_1) == len(codes)


# ---- the engine: a batch never takes far more tasks than the last one resumed ------------


def test_the_engine_takes_no_more_tasks_into_a_batch_than_twice_the_last_ones_resumes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # each batch costs Python work for every task it takes: when batches end early (here
    # every resume makes a host call, which ends its batch), taking every ready task each
    # time made 100,000 tasks crawl (quadratic). What the engine takes follows what the
    # last batch did: at most twice its resumes (64 at first).
    from llmspell import Runtime, Task

    calls: list[tuple[int, int]] = []
    real = LuaVM.resume_batch

    def counting(self: LuaVM, task_ids: list[str], rounds: bool = False, until: float = 0.0) -> Any:
        out = real(self, task_ids, rounds, until)
        calls.append((len(task_ids), out[0]))
        return out

    monkeypatch.setattr(LuaVM, "resume_batch", counting)
    chatty = "for i = 1, 4 do spell.log('debug', 'turn') spell.sleep(0) end return spell.args.i"
    quiet = "for i = 1, 4 do spell.sleep(0) end return spell.args.i"
    with Runtime() as rt:
        for code in (chatty, quiet):
            calls.clear()
            hs = rt.submit_many([Task.lua(code, args={"i": i}) for i in range(3000)])
            assert [rt.result(h, timeout=60) for h in hs] == list(range(3000))
            assert calls, "the engine made no batch"
            taken = [k for k, _ in calls]
            made = [n for _, n in calls]
            for i in range(1, len(calls)):
                assert taken[i] <= max(2, 2 * made[i - 1]), (i, calls[i - 1], calls[i])
            assert sum(taken) <= 3 * sum(made) + 64
