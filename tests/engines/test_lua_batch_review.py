"""Adversarial checks of LuaVM.resume_batch and the engine's batches (review of fe9c532)."""

from __future__ import annotations

import time
from typing import Any

from llmspell.engines._vm import Completed, Failed
from llmspell.engines.lua_vm import LuaVM


class Host:
    def submit(self, parent_id: str, spec: dict[str, Any]) -> str:
        return "child"

    def emit(self, task_id: str, name: str, payload: Any) -> None:
        pass

    def progress(self, task_id: str, done: float, total: float | None, message: str | None) -> None:
        pass

    def log(self, task_id: str, level: str, message: str) -> None:
        pass


def later() -> float:
    return time.perf_counter() + 30.0


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
