"""JsVM.resume_batch: many tasks' spell.sleep(0)s stepped in one call from the engine.

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

from llmspell.engines._vm import Completed, Failed, Request, StepResult, Waiting, Yielded
from llmspell.engines.js_vm import JsVM


@pytest.fixture
def host() -> Host:
    return Host()


@pytest.fixture
def vm(host: Host) -> Iterator[JsVM]:
    v = JsVM(host, max_memory=32 * 1024 * 1024, step_budget=0.3)
    yield v
    v.close()


def sleeps(k: int) -> str:
    return "await spell.sleep(0); " * k


# ---- the outcome of one batch -------------------------------------------------------------


def test_a_lone_sleep_0_is_one_shared_result_with_request_id_0(vm: JsVM) -> None:
    ids = started(vm, [sleeps(2) + "return 1"] * 2)
    assert JsVM.SLEEP0 == Yielded(Request("sleep", {"seconds": 0.0}, 0))
    assert vm.resume(ids[0], request_id=0) is JsVM.SLEEP0
    assert vm.resume(ids[0]) == Completed(1)


def test_rounds_run_every_task_to_its_end(vm: JsVM) -> None:
    ks = (1, 3, 0, 7, 2)
    ids = started(vm, [sleeps(k + 1) + f"return {k} * 10" for k in ks])
    n, front, back, done = vm.resume_batch(ids, rounds=True, until=later())
    assert (front, back) == ([], [])
    assert [i for i, _ in done] == [2, 0, 4, 1, 3]  # in the order they returned
    assert done == [(2, Completed(0)), (0, Completed(10)), (4, Completed(20)),
                    (1, Completed(30)), (3, Completed(70))]  # fmt: skip
    assert n == sum(k + 1 for k in ks)
    for tid, k in zip(ids, ks, strict=True):
        s = vm.stats(tid)
        assert (s["steps"], s["running"]) == (k + 2, False)
        assert s["cpu_seconds"] > 0
    assert vm.tasks == 0


def test_one_pass_resumes_each_task_once(vm: JsVM) -> None:
    ids = started(vm, [sleeps(4) + "return 1"] * 3)
    assert vm.resume_batch(ids, rounds=False, until=later()) == (3, [], [0, 1, 2], [])
    assert [vm.stats(t)["steps"] for t in ids] == [2, 2, 2]
    # until 0 or already past: one pass at most, even with rounds
    assert vm.resume_batch(ids, rounds=True, until=0.0) == (3, [], [0, 1, 2], [])
    past = time.perf_counter() - 1.0
    assert vm.resume_batch(ids, rounds=True, until=past) == (3, [], [0, 1, 2], [])
    assert [vm.resume(t) for t in ids] == [Completed(1)] * 3


def test_a_request_stops_the_batch_where_one_at_a_time_would_handle_it(vm: JsVM) -> None:
    ids = started(vm, [
        sleeps(2) + "return 'a'",
        sleeps(1) + "await spell.sleep(2.5); return 'b'",
        sleeps(2) + "return 'c'",
        sleeps(1) + "return 'd'",
    ])  # fmt: skip
    # one pass: a sleeps 0, b asks to sleep 2.5 s: c and d were not reached and run first
    n, front, back, done = vm.resume_batch(ids, rounds=False, until=later())
    assert (n, front, back) == (2, [2, 3], [0])
    ((i, r),) = done
    assert i == 1 and isinstance(r, Yielded) and not r.more
    assert (r.request.op, r.request.args) == ("sleep", {"seconds": 2.5})
    # rounds: c sleeps, d returns, a returns, c returns
    n, front, back, done = vm.resume_batch([ids[i] for i in (2, 3, 0)], True, later())
    assert (n, front, back) == (4, [], [])
    assert done == [(1, Completed("d")), (2, Completed("a")), (0, Completed("c"))]
    assert vm.resume(ids[1], request_id=r.request.id) == Completed("b")


def test_the_tasks_a_round_did_not_reach_go_first(vm: JsVM) -> None:
    ids = started(vm, [sleeps(4) + "return 1",
                       sleeps(4) + "return 2",
                       sleeps(2) + "throw new Error('no')"])  # fmt: skip
    n, front, back, done = vm.resume_batch(ids, rounds=True, until=later())
    # round 1: all three sleep; round 2: 0 and 1 sleep, 2 fails: the next turn is 0's
    assert n == 6
    assert (front, back) == ([], [0, 1])
    ((i, f),) = done
    assert i == 2 and isinstance(f, Failed) and f.kind == "runtime"
    assert f.message.startswith("Error: no")


def test_other_waits_stop_the_batch(vm: JsVM) -> None:
    ids = started(vm, [
        sleeps(2) + "return 1",
        sleeps(1) + "await spell.yield(); return 2",
        sleeps(1) + "return await Promise.all([spell.sleep(0), spell.sleep(0)]);",
        sleeps(1) + "await new Promise(r => setTimeout(r, 5)); return 4",
    ])  # fmt: skip
    n, front, back, done = vm.resume_batch(ids, rounds=True, until=later())
    assert (n, front, back) == (2, [2, 3], [0])
    assert done == [(1, Yielded(Request("yield", {}, vm._tasks["t1"].fid)))]
    n, front, back, done = vm.resume_batch([ids[2], ids[3]], rounds=True, until=later())
    ((i, r),) = done
    assert (n, front, back, i) == (1, [1], [], 0)
    assert isinstance(r, Yielded) and len(r.more) == 1  # two requests at once
    assert r.request.op == r.more[0].op == "sleep"
    n, front, back, done = vm.resume_batch([ids[3], ids[0]], rounds=True, until=later())
    ((i, r),) = done
    assert (n, front, back, i) == (1, [1], [], 0)
    assert isinstance(r, Yielded) and r.request.args == {"seconds": 0.005}


def test_host_calls_are_made_for_the_task_that_makes_them(vm: JsVM, host: Host) -> None:
    ids = started(vm, [
        "await spell.sleep(0); spell.log('info', 'zero'); await spell.sleep(0); "
        "return spell.submit({lang: 'python', target: 'm:f'});",
        "await spell.sleep(0); spell.emit('e1', {x: 1}); await spell.sleep(0); "
        "console.log('one'); return 1;",
        "await spell.sleep(0); spell.progress(0.5); return 2;",
    ])  # fmt: skip
    results: dict[str, StepResult] = {}
    q = deque(ids)
    while q:
        batch = list(q)
        q.clear()
        n, front, back, done = vm.resume_batch(batch, rounds=True, until=later())
        assert n >= 1
        q.extend(batch[i] for i in front + back)
        for i, r in done:
            if r is JsVM.SLEEP0 or (isinstance(r, Yielded) and r.request.op == "sleep"):
                q.append(batch[i])  # a sleep 0 after a host call: its turn comes again
            else:
                results[batch[i]] = r
    handle = results.pop("t0")
    assert isinstance(handle, Completed) and handle.value.startswith("t0/")
    assert results == {"t1": Completed(1), "t2": Completed(2)}
    assert host.calls == [
        ("t0", "log", "zero"),
        ("t1", "emit", ["e1", {"x": 1}]),
        ("t2", "progress", 0.5),
        ("t0", "submit", {"lang": "python", "target": "m:f"}),
        ("t1", "log", "one"),
    ]


def test_a_host_call_ends_the_batch_after_its_step(vm: JsVM, host: Host) -> None:
    ids = started(vm, [sleeps(3) + "return 0",
                       "await spell.sleep(0); spell.log('info', 'hi'); " + sleeps(2),
                       sleeps(3) + "return 2"])  # fmt: skip
    n, front, back, done = vm.resume_batch(ids, rounds=True, until=later())
    assert (n, front, back) == (2, [2], [0])
    ((i, r),) = done
    assert i == 1 and isinstance(r, Yielded) and r.request.args == {"seconds": 0}
    assert host.calls == [("t1", "log", "hi")]
    # a task that returns goes on to the next, unless its step called the host
    ids = started(vm, [sleeps(1) + "return 0",
                       sleeps(1) + "spell.emit('bye', 1); return 1",
                       sleeps(1) + "return 2"], prefix="u")  # fmt: skip
    n, front, back, done = vm.resume_batch(ids, rounds=True, until=later())
    assert (n, front, back) == (2, [2], [])
    assert done == [(0, Completed(0)), (1, Completed(1))]


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "runaway",
    [
        "await spell.sleep(0); while (true) {}",
        "await spell.sleep(0); try { for (;;) {} } catch (e) {} return 'no'",
        "await spell.sleep(0); const f = () => Promise.resolve().then(f); f(); "
        "await spell.sleep(5);",
        "await spell.sleep(0); setTimeout(() => { while (true) {} }, 0); await spell.sleep(0);"
        "await spell.sleep(5);",
    ],
)
def test_a_task_over_its_step_budget_fails_alone(host: Host, runaway: str) -> None:
    vm = JsVM(host, step_budget=0.3)
    ids = started(vm, [sleeps(2) + "return 'fine'",
                       "await spell.sleep(0); " + runaway,
                       sleeps(2) + "return 'also fine'"])  # fmt: skip
    results: dict[int, StepResult] = {}
    q = [0, 1, 2]
    while q:
        n, front, back, done = vm.resume_batch([ids[i] for i in q], True, later())
        assert n >= 1
        q2 = [q[i] for i in front + back]
        for i, r in done:
            owed = []
            while r is not JsVM.SLEEP0 and isinstance(r, Yielded | Waiting):  # answer at once
                owed += [r.request, *r.more] if isinstance(r, Yielded) else []
                r = vm.resume(ids[q[i]], request_id=owed.pop(0).id)
            if r is JsVM.SLEEP0:
                q2.append(q[i])
            else:
                results[q[i]] = r
        q = q2
    f = results[1]
    assert isinstance(f, Failed) and f.kind == "budget", f
    assert "more than its step budget of 0.3 s" in f.message
    # the budget is per step: the others were not charged for it
    assert (results[0], results[2]) == (Completed("fine"), Completed("also fine"))
    assert vm.tasks == 0
    # the VM goes on
    ids = started(vm, [sleeps(2) + "return 'after'"] * 2, prefix="u")
    assert vm.resume_batch(ids, True, later())[3] == [(0, Completed("after")),
                                                      (1, Completed("after"))]  # fmt: skip
    vm.close()


def test_a_memory_bomb_fails_its_task_and_the_others_go_on(vm: JsVM) -> None:
    bomb = "const b = []; while (true) b.push(new Uint8Array(1e6));"
    ids = started(vm, [sleeps(2) + "return 1", sleeps(1) + bomb, sleeps(1) + "return 3"])
    _, front, back, done = vm.resume_batch(ids, rounds=True, until=later())
    ((i, f),) = done
    assert i == 1 and isinstance(f, Failed) and f.kind == "memory"
    _, _, _, done = vm.resume_batch([ids[i] for i in front + back], True, later())
    assert sorted((r for _, r in done), key=repr) == [Completed(1), Completed(3)]


def test_errors_carry_the_users_message_and_traceback(vm: JsVM, host: Host) -> None:
    code = "await spell.sleep(0);\nawait spell.sleep(0);\nconst x = null;\nreturn x.field;"
    ids = started(vm, [code, code])
    n, front, back, done = vm.resume_batch(ids, rounds=True, until=later())
    assert (n, front, back) == (3, [], [1])  # the first to fail stops the batch
    ((i, f),) = done
    assert i == 0
    serial = JsVM(host)
    serial.start("s", code)
    while (r := serial.resume("s")) is JsVM.SLEEP0:
        pass
    serial.close()
    assert isinstance(f, Failed) and isinstance(r, Failed)
    assert (f.kind, f.message, f.traceback) == (r.kind, r.message, r.traceback)
    assert "(line 4)" in f.message and "task.js:4" in f.traceback


def test_tasks_it_cannot_take_are_refused_before_any_runs(vm: JsVM) -> None:
    ids = started(vm, [sleeps(1) + "return 1"])
    vm.start("fresh", "return 2")
    for bad in (["nope"], ["fresh"]):
        with pytest.raises(KeyError):
            vm.resume_batch([ids[0], *bad], rounds=True, until=later())
    assert vm.stats(ids[0])["steps"] == 1
    assert vm.resume(ids[0]) == Completed(1)
    assert vm.resume_batch([], True, later()) == (0, [], [], [])
    vm.close()
    with pytest.raises(RuntimeError):
        vm.resume_batch(["fresh"], True, later())


def test_a_cancelled_task_is_refused_and_its_request_is_gone(vm: JsVM) -> None:
    ids = started(vm, ["while (true) await spell.sleep(0);"] * 2)
    vm.resume_batch(ids, rounds=False, until=later())
    vm.cancel(ids[0])
    with pytest.raises(KeyError):
        vm.resume_batch(ids, rounds=False, until=later())
    assert vm.resume_batch(ids[1:] * 1, rounds=False, until=later())[0] == 1


# ---- the invariant: the same as one at a time ---------------------------------------------

# a program: steps, each "sleep" (spell.sleep(0)), a host call ("log", "emit"), a request
# the driver answers at once ("req", "yield", "all": two at once, "timer"), jobs that
# stay in the step ("micro"), then an end
step = st.sampled_from(
    ["sleep", "sleep", "sleep", "sleep", "log", "emit", "req", "yield", "all", "timer", "micro"]
)
end = st.sampled_from(["return", "error", "throw_value", "object", "fall_off", "reject"])
program = st.tuples(st.lists(step, max_size=6), end)


def _code(steps: list[str], ending: str, me: int) -> str:
    lines = ["await spell.sleep(0);"]  # every task's first resume is made one at a time
    for n, s in enumerate(steps):
        lines.append(
            {
                "sleep": "await spell.sleep(0);",
                "log": f"spell.log('info', 'task {me} step {n}');",
                "emit": f"spell.emit('e{me}', {{n: {n}}});",
                "req": "await spell.sleep(0.25);",
                "yield": "await spell.yield();",
                "all": "await Promise.all([spell.sleep(0), spell.sleep(0.5)]);",
                "timer": "await new Promise(r => setTimeout(r, 1));",
                "micro": "await Promise.resolve(1); queueMicrotask(() => {});",
            }[s]
        )
    lines.append(
        {
            "return": f"return {me};",
            "error": f"throw new Error('task {me} fails');",
            "throw_value": f"throw {{code: {me}}};",
            "object": f"return {{me: {me}, list: [1, 2, {me}]}};",
            "fall_off": "",
            "reject": f"await Promise.reject(new TypeError('no {me}'));",
        }[ending]
    )
    return "\n".join(lines)


def _drive(codes: list[str], batched: bool) -> tuple[list[Any], dict[str, Any], dict[str, Any]]:
    """Run the tasks as the engine does (a FIFO ready queue of (task, request id); a task
    that sleeps or asks goes to its back, answered at once); with batched, the tasks at
    the head that only wait for their turn go through resume_batch, with rounds when
    nothing else waits."""
    host = Host()
    vm = JsVM(host, step_budget=5.0)
    q: deque[tuple[str, int]] = deque()
    turn_only: set[str] = set()  # its last step slept 0 alone, it is owed nothing else
    outcomes: dict[str, Any] = {}
    for i, code in enumerate(codes):
        assert vm.start(f"t{i}", code) is None
        q.append((f"t{i}", 0))

    def handle(tid: str, r: StepResult) -> None:
        if r is JsVM.SLEEP0:
            q.append((tid, 0))
            turn_only.add(tid)
        elif isinstance(r, Yielded):
            q.extend((tid, req.id) for req in (r.request, *r.more))
        elif isinstance(r, Completed):
            outcomes[tid] = r
        elif isinstance(r, Failed):
            outcomes[tid] = (r.kind, r.message, r.traceback, r.data)
        else:
            assert r == Waiting()

    while q:
        head: list[str] = []
        if batched:
            for tid, rid in q:
                if tid not in turn_only or rid:
                    break
                head.append(tid)
        if len(head) >= 2:
            for _ in head:
                q.popleft()
            n, front, back, done = vm.resume_batch(head, not q, later())
            assert n >= 1
            q.extend((head[i], 0) for i in back)
            q.extendleft((head[i], 0) for i in reversed(front))
            for i, r in done:
                turn_only.discard(head[i])
                handle(head[i], r)
            continue
        tid, rid = q.popleft()
        if tid in outcomes:
            continue  # a request of a task that ended: abandoned
        turn_only.discard(tid)
        handle(tid, vm.resume(tid, request_id=rid))
    stats = {tid: vm.stats(tid)["steps"] for tid in outcomes}
    vm.close()
    return host.calls, outcomes, stats


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(programs=st.lists(program, min_size=1, max_size=7))
def test_a_batch_does_what_one_at_a_time_does(programs: list[tuple[list[str], str]]) -> None:
    codes = [_code(steps, ending, i) for i, (steps, ending) in enumerate(programs)]
    calls_1, outcomes_1, stats_1 = _drive(codes, batched=False)
    calls_b, outcomes_b, stats_b = _drive(codes, batched=True)
    assert calls_b == calls_1  # the same host calls, in the same order, for the same tasks
    assert outcomes_b == outcomes_1
    assert stats_b == stats_1
    assert len(outcomes_1) == len(codes)


# ---- through the engine -------------------------------------------------------------------


def _counting(monkeypatch: pytest.MonkeyPatch) -> list[tuple[list[str], Any]]:
    calls: list[tuple[list[str], Any]] = []
    real = JsVM.resume_batch

    def counting(self: JsVM, task_ids: list[str], rounds: bool = False, until: float = 0.0) -> Any:
        out = real(self, task_ids, rounds, until)
        calls.append((list(task_ids), out))
        return out

    monkeypatch.setattr(JsVM, "resume_batch", counting)
    return calls


def test_the_engine_batches_js_tasks_and_they_take_turns(monkeypatch: pytest.MonkeyPatch) -> None:
    # long tasks first, short ones after: in turns, every short one ends before any long one
    from llmspell import Runtime, Task
    from llmspell.engines.script import ScriptEngine

    calls = _counting(monkeypatch)
    ended: list[str] = []
    real_report = ScriptEngine.report

    def report(self: ScriptEngine, task_id: str, *a: Any, **kw: Any) -> Any:
        ended.append(task_id)
        return real_report(self, task_id, *a, **kw)

    monkeypatch.setattr(ScriptEngine, "report", report)
    code = (
        "let s = 0; for (let i = 0; i < spell.args.n; i++) { await spell.sleep(0); s += i; } "
        "return s;"
    )
    with Runtime() as rt:
        long = rt.submit_many([Task.js(code, args={"n": 300}) for _ in range(20)])
        short = rt.submit_many([Task.js(code, args={"n": 5}) for _ in range(20)])
        assert [rt.result(h, timeout=60) for h in short] == [10] * 20
        assert [rt.result(h, timeout=60) for h in long] == [300 * 299 // 2] * 20
    assert calls, "the engine made no batch"
    assert sum(out[0] for _, out in calls) > 20 * 300 // 2  # most sleeps went through batches
    ids = {h.id for h in long} | {h.id for h in short}
    mine = [t for t in ended if t in ids]
    assert set(mine[:20]) == {h.id for h in short}


@pytest.mark.timeout(60)
def test_a_runaway_task_in_a_batch_fails_budget_and_the_others_go_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from llmspell import Runtime, ScriptError, Task

    calls = _counting(monkeypatch)
    steady = "for (let i = 0; i < 200; i++) await spell.sleep(0); return spell.args.i;"
    runaway = "for (let i = 0; i < 50; i++) await spell.sleep(0); while (true) {}"
    with Runtime(step_budget=0.2) as rt:
        hs = rt.submit_many([Task.js(steady, args={"i": i}) for i in range(10)])
        bad = rt.submit(Task.js(runaway))
        hs += rt.submit_many([Task.js(steady, args={"i": i}) for i in range(10, 20)])
        with pytest.raises(ScriptError) as e:
            rt.result(bad, timeout=30)
        assert "more than its step budget of 0.2 s" in e.value.message
        assert [rt.result(h, timeout=30) for h in hs] == list(range(20))
        assert rt.status(bad) == "failed"
    failed_in_batch = [
        r for ids, out in calls for i, r in out[3] if ids[i] == bad.id and isinstance(r, Failed)
    ]
    assert [f.kind for f in failed_in_batch] == ["budget"]


def test_what_a_step_raises_is_raised_by_that_tasks_next_resume(host: Host) -> None:
    # resume raises what a host call raised (the engine fails that task, "internal
    # error"); in a batch, that task comes first and its next resume raises it
    class Refusing(Host):
        def emit(self, task_id: str, name: str, payload: Any) -> None:
            raise RuntimeError(f"no events for {task_id}")

    vm = JsVM(Refusing())
    ids = started(vm, [sleeps(3) + "return 0",
                       sleeps(2) + "spell.emit('e', 1); return 1",
                       sleeps(3) + "return 2"])  # fmt: skip
    n, front, back, done = vm.resume_batch(ids, rounds=True, until=later())
    assert (n, front, back, done) == (5, [1], [2, 0], [])
    assert [vm.stats(t)["steps"] for t in ids] == [3, 3, 2]
    with pytest.raises(RuntimeError, match="no events for t1"):
        vm.resume(ids[1])
    assert vm.stats(ids[1])["steps"] == 3
    serial = JsVM(Refusing())
    started(serial, [sleeps(2) + "spell.emit('e', 1); return 1"])
    assert serial.resume("t0") is JsVM.SLEEP0
    with pytest.raises(RuntimeError, match="no events for t0"):
        serial.resume("t0")
    assert serial.stats("t0")["steps"] == 3
    serial.close()
    vm.close()
