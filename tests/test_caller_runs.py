"""Embedded: a caller waiting in ``result()`` runs a lone fast sync Python call itself
(``python_fast_inline``), sparing the hand-off to a worker thread and back; what it
must never cost: a loop that stops while the call runs, a call that is not fast, a
short wait spent running one, an outcome lost or told twice."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import loop_targets
import pytest
from helpers import WAIT, until

from llmspell import AsyncRuntime, Runtime, Task, TaskCancelled


def ident(seconds: float = 0.0) -> Task:
    return Task.python("loop_targets:ident", args={"seconds": seconds})


def warm(rt: Runtime, runs: int = 3) -> None:
    """Three fast runs in a row: the function is one a caller may run."""
    for _ in range(runs):
        rt.result(rt.submit(ident()), timeout=WAIT)


def test_a_lone_fast_call_runs_on_the_waiting_callers_thread() -> None:
    me = threading.get_ident()
    with Runtime() as rt:
        first = [rt.result(rt.submit(ident()), timeout=WAIT) for _ in range(3)]
        assert me not in first  # a function not yet known to be fast: a worker's
        later = [rt.result(rt.submit(ident()), timeout=WAIT) for _ in range(20)]
        assert later.count(me) >= 15  # (the background thread may drive a turn)
        # many calls at once are the worker threads'
        hs = rt.submit_many([ident() for _ in range(50)])
        assert sum(rt.result(h, timeout=WAIT) == me for h in hs) <= 1


def test_python_fast_inline_false_keeps_every_call_on_the_workers() -> None:
    me = threading.get_ident()
    with Runtime(python_fast_inline=False) as rt:
        got = [rt.result(rt.submit(ident()), timeout=WAIT) for _ in range(20)]
        assert me not in got


def test_a_slow_function_or_a_short_wait_is_never_the_callers() -> None:
    me = threading.get_ident()
    with Runtime() as rt:
        slow = [rt.result(rt.submit(ident(0.003)), timeout=WAIT) for _ in range(6)]
        assert me not in slow  # each run took 3 ms: over the 1 ms a caller may take
        warm(rt)
        short = [rt.result(rt.submit(ident()), timeout=0.04) for _ in range(10)]
        assert me not in short  # a wait of 40 ms is not spent running a call


def test_while_the_caller_runs_a_call_the_loop_goes_on() -> None:
    # a function known to be fast that, this once, waits on the caller's thread until
    # another thread's tasks, a timer and a cancel have gone through: they can only if
    # the loop goes on without that caller (the background thread drives); the caller
    # then gets what happened (held loop: the call gives up after 10 s, and fails this)

    me = threading.get_ident()
    with Runtime() as rt:
        for attempt in range(5):  # (the background thread may have dispatched it)
            key, gate = f"victim-{attempt}", f"gate-{attempt}"
            released = loop_targets.EVENTS[gate] = threading.Event()
            for _ in range(3):
                rt.result(rt.submit(Task.python("loop_targets:hold_as", args={"key": "w"})))
            others: dict[str, Any] = {}
            victim = rt.submit(Task.python("loop_targets:hold_as", args={"key": key, "name": gate}))

            def other(
                victim: Any = victim,
                others: dict[str, Any] = others,
                released: Any = released,
                key: str = key,
            ) -> None:
                try:
                    # once the call runs (on the caller or a worker, whoever took it)
                    until(lambda: key in loop_targets.RAN_ON, "the call ran")
                    ticking = rt.submit(Task.lua("spell.sleep(0.05) return 'woke'"))
                    others["lua"] = rt.result(rt.submit(Task.lua("return 7")), timeout=WAIT)
                    others["woke"] = rt.result(ticking, timeout=WAIT)
                    others["cancelled"] = rt.cancel(victim)
                    others["status"] = rt.status(victim)
                finally:
                    released.set()

            helper = threading.Thread(target=other)
            helper.start()
            with pytest.raises(TaskCancelled):
                rt.result(victim, timeout=WAIT)
            helper.join()
            assert others == {"lua": 7, "woke": "woke", "cancelled": True, "status": "cancelled"}
            if loop_targets.RAN_ON[key] == me:
                break  # the caller ran it, and the rest went on meanwhile
        else:
            pytest.fail("the caller never ran the call itself")
        # and the runtime is whole: the next lone fast call is the caller's again
        warm(rt)
        assert rt.result(rt.submit(ident()), timeout=WAIT) == me


def test_a_call_the_caller_runs_can_use_the_runtime() -> None:
    # a fast function that submits a task and asks its status (a query that runs the
    # loop) from the caller's own thread, while that caller has let go of the loop
    me = threading.get_ident()
    with Runtime() as rt:
        loop_targets.RUNTIME = rt  # type: ignore[attr-defined]
        try:
            ran_here = 0
            for i in range(8):
                task = Task.python("loop_targets:submit_from_inside", args={"key": f"in-{i}"})
                child = rt.result(rt.submit(task), timeout=WAIT)
                assert rt.result(child, timeout=WAIT) == 8
                ran_here += loop_targets.RAN_ON[f"in-{i}"] == me
            assert ran_here >= 1  # (its first runs are a worker's: not yet known fast)
        finally:
            del loop_targets.RUNTIME  # type: ignore[attr-defined]


def _event(name: str) -> threading.Event:
    ev = loop_targets.EVENTS[name] = threading.Event()
    return ev


def test_a_call_left_in_the_turn_that_ends_the_wait_still_runs() -> None:
    # a Lua task starts a Python child (a function known to be fast) and returns: its
    # result and the child's call come in the same turn, which ends the caller's wait.
    # The call was left to that caller: it must go to a worker thread, not stay queued
    # until some caller waits again.
    with Runtime(script_python=["loop_targets:*"]) as rt:
        for i in range(3):
            _event(f"warm{i}")
            task = Task.python("loop_targets:set_event", args={"name": f"warm{i}"})
            assert rt.result(rt.submit(task), timeout=WAIT) is True
        for i in range(3):
            ran = _event(f"child{i}")
            parent = Task.lua(
                "spell.submit({lang = 'python', target = 'loop_targets:set_event', "
                f"args = {{name = 'child{i}'}}}}) return 'parent'"
            )
            assert rt.result(rt.submit(parent), timeout=WAIT) == "parent"
            # nobody waits on the runtime now: the background thread and the workers
            # must run the child all the same
            assert ran.wait(WAIT), f"the child call of round {i} never ran"


def _names(rt: Runtime, seconds: float, n: int) -> list[str]:
    task = Task.python("loop_targets:thread_name", args={"seconds": seconds})
    return [rt.result(rt.submit(task), timeout=WAIT) for _ in range(n)]


@pytest.mark.parametrize("fast_inline", [True, False])
def test_local_mode_an_engine_runs_fast_calls_on_its_own_thread(fast_inline: bool) -> None:
    # in mode="local" the engine's own thread takes a call known to be fast (no hand-off
    # to a worker thread and back); a slow function's calls stay on the workers
    with Runtime(mode="local", workers=1, python_fast_inline=fast_inline) as rt:
        first = _names(rt, 0.0, 3)
        assert set(first) == {"llmspell-python"}  # not yet known to be fast
        later = _names(rt, 0.0, 5)
        assert set(later) == ({"MainThread"} if fast_inline else {"llmspell-python"})
        hs = rt.submit_many(
            [Task.python("loop_targets:thread_name", args={"seconds": 0.0}) for _ in range(300)]
        )
        names = [rt.result(h, timeout=WAIT) for h in hs]
        assert len(names) == 300
        # the same function, now slow: its first slow run may still be the engine's,
        # then its calls go to the workers
        slow = _names(rt, 0.003, 5)
        assert set(slow[1:]) == {"llmspell-python"}


def test_an_async_runtime_runs_no_call_on_the_event_loop_nor_the_driver() -> None:
    # an AsyncRuntime's await never drives the actors, and nobody waits on the thread
    # that does (the background one): a call run there that blocks, even one known to
    # be fast, would hold every task, timer and cancel of the runtime, so fast calls
    # are the worker threads' (tried in session 10: ~30 us less a round trip, and the
    # test above froze the runtime for its 10 s)
    async def main() -> tuple[list[str], str]:
        task = Task.python("loop_targets:thread_name", args={"seconds": 0.0})
        async with AsyncRuntime() as rt:
            names = [await rt.result(await rt.submit(task), timeout=WAIT) for _ in range(13)]
        return names, threading.current_thread().name

    names, loop_thread = asyncio.run(main())
    assert set(names) == {"llmspell-python"}, (names, loop_thread)


def test_many_caller_threads_each_get_their_own_values() -> None:
    # eight threads wait in result() at once: whichever drives runs lone fast calls
    # between turns and lets go of the loop meanwhile, others' tasks, scripts and
    # cancels go on; every caller gets its own task's value, none is left waiting
    failures: list[str] = []

    def caller(k: int) -> None:
        try:
            for i in range(300):
                if i % 10 == 0:
                    lua = Task.lua("spell.sleep(0) return spell.args.x + 1", args={"x": i})
                    assert rt.result(rt.submit(lua), timeout=WAIT) == i + 1
                elif i % 37 == 0:
                    rt.cancel(rt.submit(Task.python("targets:add", args={"x": i, "y": k})))
                else:
                    add = Task.python("targets:add", args={"x": i, "y": k})
                    assert rt.result(rt.submit(add), timeout=WAIT) == i + k
        except BaseException as e:  # reported below, by thread
            failures.append(f"caller {k}: {e!r}")

    with Runtime() as rt:
        threads = [threading.Thread(target=caller, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(WAIT)
        assert not any(t.is_alive() for t in threads), "a caller is still waiting"
    assert failures == []
