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
