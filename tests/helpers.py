"""Helpers the whole suite shares: bounded waits, the command line in a
subprocess, a served runtime, and the event a script sends when it is about to
block. Fixtures built on them are in ``conftest.py``.

Every wait here is a hang guard: the condition is what a test asserts, the
timeout only keeps a broken build from hanging the suite.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from llmspell import Handle, Runtime, ScriptError, Subscription, Task, TaskCancelled
from llmspell._driver import free_port

WAIT = 10.0  # the default hang guard of a wait
TESTS = Path(__file__).parent  # on PYTHONPATH for a subprocess that runs tests' targets


def until(
    cond: Callable[[], object], what: str, timeout: float = WAIT, every: float = 0.005
) -> None:
    """Ask ``cond`` every ``every`` s until it is true; fail naming ``what`` after
    ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(every)


def stats_when(rt: Runtime, what: str, n: int) -> dict[str, Any]:
    """``rt.stats()`` once its counter ``what`` is ``n`` (a hang guard of ``WAIT`` s)."""
    stats: dict[str, Any] = {}

    def reached() -> bool:
        stats.update(rt.stats())
        return bool(stats[what] == n)

    until(reached, f"stats[{what!r}] == {n}")
    return stats


def with_tests_on_path(env: dict[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's) with ``tests/`` on ``PYTHONPATH``."""
    return dict(os.environ if env is None else env, PYTHONPATH=str(TESTS))


def run_cli(
    *args: str,
    timeout: float = 120,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """``llmspell ARGS`` in a subprocess of this interpreter, its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "llmspell.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=cwd,
    )


@dataclass
class Server:
    """An ``llmspell serve`` subprocess: its port and the JSON line it printed first."""

    port: int
    process: subprocess.Popen[str]
    banner: dict[str, Any]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@contextmanager
def serve(*options: str, env: dict[str, str] | None = None) -> Iterator[Server]:
    """``llmspell serve --port P --workers 1 OPTIONS`` on a free port, ``tests/`` on
    its path. Stopped (SIGTERM, then killed) on exit unless the test stopped it."""
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llmspell.cli",
            "serve",
            "--port",
            str(port),
            "--workers",
            "1",
            *options,
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=with_tests_on_path(env),
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line, f"llmspell serve printed nothing (exit code {process.wait(30)})"
        yield Server(port, process, json.loads(line))
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        if process.stdout is not None:
            process.stdout.close()


class Ready:
    """A script says ``ready.say(tag)`` right before it blocks; ``ready.wait(tag)``
    returns once it has. The call reads the same in Lua and JavaScript."""

    def __init__(self, rt: Runtime) -> None:
        self.name = f"test.ready.{uuid.uuid4().hex[:8]}"
        self.sub: Subscription = rt.subscribe(self.name)

    def say(self, tag: str) -> str:
        return f"spell.emit('{self.name}', '{tag}');"

    def wait(self, *tags: str) -> None:
        missing = set(tags)
        while missing:
            missing.discard(self.sub.get(timeout=WAIT).payload)

    def close(self) -> None:
        self.sub.close()


def result(rt: Runtime, task: Task) -> Any:
    """Submit ``task`` and return its value (a bounded wait)."""
    return rt.result(rt.submit(task), timeout=WAIT)


def script_error(rt: Runtime, task: Task) -> ScriptError:
    """Submit a script ``task`` that must fail; its ``ScriptError``, which names the engine."""
    h = rt.submit(task)
    with pytest.raises(ScriptError) as info:
        rt.result(h, timeout=WAIT)
    assert rt.status(h) == "failed"
    assert info.value.engine == task.kind
    return info.value


def cancelled_at_once(rt: Runtime, h: Handle) -> None:
    """Cancel the running ``h``: cancelled at once, its result raises, a second cancel is False."""
    assert rt.status(h) == "running"
    assert rt.cancel(h) is True
    assert rt.status(h) == "cancelled"
    with pytest.raises(TaskCancelled):
        rt.result(h, timeout=WAIT)
    assert rt.cancel(h) is False
