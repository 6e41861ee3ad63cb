"""Adversarial checks of a caller running a lone fast Python call itself (review of
2059179): a call left to a caller must always run, whatever that caller does next."""

from __future__ import annotations

import threading

import loop_targets
from helpers import WAIT

from llmspell import Runtime, Task


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
