"""Python callables the tests run as tasks (importable as ``targets``)."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

# Tests coordinate with running tasks through these (same process in embedded mode).
gates: dict[str, threading.Event] = {}
log: list[str] = []
log_lock = threading.Lock()


def gate(name: str) -> threading.Event:
    return gates.setdefault(name, threading.Event())


def add(x: int, y: int) -> int:
    return x + y


def echo(value: Any = None, input: Any = None) -> Any:
    return {"value": value, "input": input}


def fail(message: str = "boom") -> None:
    raise ValueError(message)


def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


async def asleep(seconds: float) -> float:
    await asyncio.sleep(seconds)
    return seconds


async def aadd(x: int, y: int) -> int:
    await asyncio.sleep(0)
    return x + y


async def afail(message: str = "async boom") -> None:
    await asyncio.sleep(0)
    raise RuntimeError(message)


async def aburn_until(name: str, seconds: float = 0.0) -> str:
    """Use ``seconds`` of CPU in one step, then await until gate ``name`` opens."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass
    opened = gate(name)
    while not opened.is_set():
        await asyncio.sleep(0.001)
    return name


cancelled_coroutines: list[str] = []


async def await_forever(name: str) -> None:
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        cancelled_coroutines.append(name)
        raise


def wait_gate(name: str, timeout: float = 10.0) -> str:
    gate(name).wait(timeout)
    return name


def record(name: str) -> str:
    with log_lock:
        log.append(name)
    return name


def not_msgpack() -> object:
    return object()


def int_keys() -> dict[int, int]:
    return {1: 2}


def raw_bytes() -> bytearray:
    return bytearray(b"\x00\xff")


def flaky(key: str, failures: int) -> int:
    """Fails ``failures`` times per key, then returns the attempt count."""
    with log_lock:
        log.append(key)
        attempts = log.count(key)
    if attempts <= failures:
        raise RuntimeError(f"attempt {attempts} failed")
    return attempts


def outcome(kind: str, value: int = 0) -> int:
    if kind == "fail":
        raise RuntimeError(f"planned failure {value}")
    if kind == "slow":
        time.sleep(0.05)
    return value


not_callable = 42


def logged_outcome(name: str, kind: str, value: int = 0) -> int:
    record(name)
    return outcome(kind, value)


# -- coordination -----------------------------------------------------------------------

#: (tag, stage, item, start, end, waited) per pipeline stage call
stage_log: list[tuple[str, str, str, float, float, bool]] = []


def stage(
    tag: str,
    name: str,
    input: Any = None,
    delay: float = 0.0,
    wait_for: str | None = None,
    fail_on: str | None = None,
) -> str:
    """A pipeline stage: appends ``>name`` to its input and records when it ran.

    The item is the input's first part (``"3>A"`` is item ``"3"``). A stage
    announces itself on the gate ``tag:name:item`` as it starts; with
    ``wait_for`` it first waits (up to 5 s) for stage ``wait_for`` to start
    on the previous item and records whether it did, which shows two stages
    working on different items at once.
    """
    start = time.monotonic()
    item = str(input).split(">")[0]
    gate(f"{tag}:{name}:{item}").set()
    waited = True
    if wait_for is not None and int(item) > 0:
        waited = gate(f"{tag}:{wait_for}:{int(item) - 1}").wait(5.0)
    if delay:
        time.sleep(delay)
    end = time.monotonic()
    with log_lock:
        stage_log.append((tag, name, item, start, end, waited))
    if fail_on is not None and item == fail_on:
        raise RuntimeError(f"stage {name} failed on item {item}")
    return f"{input}>{name}"


def outcome_in(kind: str, value: int = 0, input: Any = None) -> int:
    """``outcome`` that also takes a pipeline ``input`` (and ignores it)."""
    return outcome(kind, value)


def signal(name: str, input: Any = None) -> str:
    """Records ``name`` and opens the gate of that name."""
    record(name)
    gate(name).set()
    return name


def counted_sleep(key: str, seconds: float) -> float:
    record(key)
    time.sleep(seconds)
    return seconds


def append_line(path: str, key: str, seconds: float = 0.0) -> str:
    """Record a run in a file (works across engine processes), then sleep."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(key + "\n")
    time.sleep(seconds)
    return key


def getpid() -> int:
    import os

    return os.getpid()


barriers: dict[str, threading.Barrier] = {}


def meet(name: str, parties: int, timeout: float = 10.0) -> int:
    """Return once ``parties`` calls of the same name run at the same time
    (raises ``BrokenBarrierError`` if they do not within ``timeout``)."""
    with log_lock:
        barrier = barriers.setdefault(name, threading.Barrier(parties))
    return barrier.wait(timeout)


HOOK_RUNTIME: dict[str, Any] = {}


def submitting_hook(**payload: Any) -> None:
    """A hook that submits a task through the runtime it was given."""
    from llmspell import Task

    HOOK_RUNTIME["rt"].submit(Task.lua("return 1"))


def stuck(started: str, finished: str, seconds: int) -> None:
    """Writes ``started``, sleeps in C *holding the GIL* (its engine can
    handle no message meanwhile), then writes ``finished``."""
    import ctypes
    from pathlib import Path

    Path(started).write_text("started")
    ctypes.PyDLL(None).sleep(seconds)  # libc sleep(3), called without releasing the GIL
    Path(finished).write_text("finished")


def whoami() -> dict[str, Any] | None:
    """The task running this, as ``llmspell.current_task()`` sees it."""
    import llmspell

    t = llmspell.current_task()
    return None if t is None else {"id": t.id, "attempt": t.attempt, "key": t.idempotency_key}


async def awhoami() -> dict[str, Any] | None:
    await asyncio.sleep(0)
    return whoami()


def whoami_fails_first() -> dict[str, Any] | None:
    """Fails on its first attempt, then says who it is."""
    import llmspell

    t = llmspell.current_task()
    if t is not None and t.attempt == 0:
        raise RuntimeError("first attempt fails")
    return whoami()


def frozen_objects() -> int:
    """How many objects the garbage collector of this process leaves alone."""
    import gc

    return gc.get_freeze_count()


def main_thread_depth() -> int:
    """How many frames deep the main thread of this process is (an engine's: where
    its message loop runs)."""
    import sys
    import threading

    frame = sys._current_frames().get(threading.main_thread().ident or 0)
    depth = 0
    while frame is not None:
        depth, frame = depth + 1, frame.f_back
    return depth


def fork_and_wait(seconds: float) -> int:
    """Fork a child that sleeps ``seconds`` then exits 0; the child's exit status."""
    import os
    import time

    pid = os.fork()
    if pid == 0:  # the child: plain work, then out
        time.sleep(seconds)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)
