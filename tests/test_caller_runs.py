"""Embedded: a caller waiting in ``result()`` runs a lone fast sync Python call itself
(``python_fast_inline``), sparing the hand-off to a worker thread and back; what it
must never cost: a loop that stops while the call runs, a call that is not fast, a
short wait spent running one, an outcome lost or told twice."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from helpers import WAIT

from llmspell import Runtime, Task, TaskCancelled


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
        assert later.count(me) >= 18  # (the background thread may drive a turn)
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
    # a function known to be fast that, this once, takes 0.6 s on the caller's thread:
    # other threads' tasks, timers and cancels go on meanwhile (the background thread
    # drives), and the caller then gets what happened
    import loop_targets

    me = threading.get_ident()
    with Runtime() as rt:
        for attempt in range(5):  # (the background thread may have dispatched it)
            key = f"victim-{attempt}"
            for _ in range(3):
                rt.result(rt.submit(Task.python("loop_targets:ident_as", args={"key": "w"})))
            others: dict[str, Any] = {}
            victim = rt.submit(
                Task.python("loop_targets:ident_as", args={"key": key, "seconds": 0.6})
            )

            def other(victim: Any = victim, others: dict[str, Any] = others) -> None:
                time.sleep(0.1)
                t0 = time.monotonic()
                ticking = rt.submit(Task.lua("spell.sleep(0.1) return 'woke'"))
                others["lua"] = rt.result(rt.submit(Task.lua("return 7")), timeout=WAIT)
                others["woke"] = rt.result(ticking, timeout=WAIT)
                others["took"] = time.monotonic() - t0
                others["cancelled"] = rt.cancel(victim)

            helper = threading.Thread(target=other)
            helper.start()
            t0 = time.monotonic()
            with pytest.raises(TaskCancelled):
                rt.result(victim, timeout=WAIT)
            waited = time.monotonic() - t0
            helper.join()
            assert others["lua"] == 7 and others["woke"] == "woke"
            assert others["took"] < 0.4, others  # not held up by the 0.6 s call
            assert others["cancelled"] is True
            assert rt.status(victim) == "cancelled"
            if loop_targets.RAN_ON[key] == me:
                assert waited >= 0.5  # the caller itself returns once the call did
                break
            assert waited < 0.5  # a worker ran it: the cancel ended the wait
        else:
            pytest.fail("the caller never ran the call itself")
        # and the runtime is whole: the next lone fast call is the caller's again
        warm(rt)
        assert rt.result(rt.submit(ident()), timeout=WAIT) == me


def test_a_call_the_caller_runs_can_use_the_runtime() -> None:
    with Runtime() as rt:
        import loop_targets

        loop_targets.RUNTIME = rt  # type: ignore[attr-defined]
        try:
            for _ in range(4):
                assert rt.result(rt.submit(Task.python("loop_targets:nested")), timeout=WAIT) == 8
        finally:
            del loop_targets.RUNTIME  # type: ignore[attr-defined]


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
