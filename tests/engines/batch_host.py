"""What the batch tests of both script VMs share (tests/engines/test_lua_batch.py,
test_js_batch.py): a host that records every call with its task, and tasks started
and resumed once (a batch takes only tasks that already ran a step)."""

from __future__ import annotations

import time
from typing import Any


class Host:
    """Records every host call, in order, with the task it was made for."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Any]] = []

    def submit(self, parent_id: str, spec: dict[str, Any]) -> str:
        self.calls.append((parent_id, "submit", spec))
        return f"child-of-{parent_id}"

    def emit(self, task_id: str, name: str, payload: Any) -> None:
        self.calls.append((task_id, "emit", [name, payload]))

    def progress(self, task_id: str, done: float, total: float | None, message: str | None) -> None:
        self.calls.append((task_id, "progress", done))

    def log(self, task_id: str, level: str, message: str) -> None:
        self.calls.append((task_id, "log", message))

    def clock(self, task_id: str, fn: str, value: Any) -> None:
        self.calls.append((task_id, "clock", fn))


def started(vm: Any, codes: list[str], prefix: str = "t") -> list[str]:
    """Start one task per code and resume each once; each must sleep 0 first."""
    ids = []
    for i, code in enumerate(codes):
        tid = f"{prefix}{i}"
        assert vm.start(tid, code) is None
        assert vm.resume(tid) is type(vm).SLEEP0, "each test task sleeps 0 first"
        ids.append(tid)
    return ids


def later() -> float:
    """A batch's ``until`` far enough away never to be met."""
    return time.perf_counter() + 30.0
