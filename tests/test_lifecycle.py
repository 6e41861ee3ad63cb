"""Local mode start-up and shutdown (issue 14, item 4): a client attached to a
served runtime that stops, an owner killed while its runtime starts."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from helpers import run_cli, serve

from llmspell import Runtime, RuntimeClosed, Task, TaskCancelled

pytestmark = pytest.mark.slow

TESTS = str(Path(__file__).parent)


@pytest.fixture
def served() -> Iterator[int]:
    """A runtime served by ``llmspell serve`` on a port of its own (the test stops it)."""
    with serve() as server:
        yield server.port
        assert server.process.wait(30) == 0


def test_an_attached_client_gets_runtime_closed_once_the_served_runtime_stops(
    served: int,
) -> None:
    rt = Runtime(mode="local", address=f"127.0.0.1:{served}")
    try:
        done = rt.submit(Task.lua("return 6 * 7"))
        assert rt.result(done, timeout=30) == 42
        blocked = rt.submit(Task.python("targets:sleep", args={"seconds": 120}))
        raised: list[BaseException] = []

        def wait() -> None:
            try:
                rt.result(blocked)  # no timeout: only the runtime's end releases it
            except BaseException as exc:
                raised.append(exc)

        waiter = threading.Thread(target=wait, daemon=True)
        waiter.start()
        stop = run_cli("stop", "--port", str(served))
        assert stop.returncode == 0, stop.stderr
        waiter.join(30)  # a guard against a hang, not a time limit
        assert not waiter.is_alive(), "result() stayed blocked after the runtime stopped"
        assert len(raised) == 1 and isinstance(raised[0], RuntimeClosed), raised
        assert "stopped" in str(raised[0])
        assert rt.state.value == "closed"
        with pytest.raises(RuntimeClosed):
            rt.submit(Task.lua("return 1"))
        with pytest.raises(RuntimeClosed):
            rt.stats()
        assert rt.result(done) == 42  # what ended before is still there
    finally:
        rt.close()


# The owner starts a local runtime and never gets to close it: it is killed.
_OWNER = """# {marker}
import sys
sys.path.insert(0, {tests!r})
from llmspell import Runtime
Runtime(mode="local", workers=1)
print("started", flush=True)
import time
time.sleep(60)
"""


def _processes_of(marker: str) -> list[psutil.Process]:
    """Processes still running whose command line holds ``marker`` (every
    process of the runtime is forked from the owner: they share its)."""
    found = []
    for p in psutil.process_iter():
        try:
            if p.status() != psutil.STATUS_ZOMBIE and any(marker in a for a in p.cmdline()):
                found.append(p)
        except psutil.Error:
            continue
    return found


@pytest.mark.parametrize("kill_at", [1, 2, 3, 5, "started"])
def test_an_owner_killed_during_start_up_leaves_no_process_behind(kill_at: int | str) -> None:
    """Killed once ``kill_at`` processes of the runtime exist (before the
    director answers: the admin, its logger, the director, ...), or once the
    runtime has started."""
    marker = f"llmspell-owner-{uuid.uuid4().hex}"
    owner = subprocess.Popen(
        [sys.executable, "-c", _OWNER.format(marker=marker, tests=TESTS)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        if kill_at == "started":
            assert owner.stdout is not None
            assert owner.stdout.readline().strip() == "started"
            assert len(_processes_of(marker)) > 3  # the owner, the admin, its logger, ...
        else:
            deadline = time.monotonic() + 60
            while len(_processes_of(marker)) < 1 + int(kill_at):
                assert owner.poll() is None and time.monotonic() < deadline
        owner.kill()
        owner.wait(10)
        deadline = time.monotonic() + 10  # a guard: they end within ~1 s
        left = _processes_of(marker)
        while left and time.monotonic() < deadline:
            time.sleep(0.1)
            left = _processes_of(marker)
        assert not left, [(p.pid, p.name()) for p in left]
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait(10)
        for p in _processes_of(marker):  # this test's own processes, should any remain
            p.kill()


def test_an_attached_client_that_cancels_its_task_gets_task_cancelled(served: int) -> None:
    """Only the served runtime's shutdown ends a client's tasks with RuntimeClosed;
    a cancel of its own is a cancel (every cancel used to be marked as a shutdown)."""
    rt = Runtime(mode="local", address=f"127.0.0.1:{served}")
    try:
        for _ in range(3):
            h = rt.submit(Task.python("targets:sleep", args={"seconds": 60}))
            assert rt.cancel(h)
            with pytest.raises(TaskCancelled):
                rt.result(h, timeout=10)
            time.sleep(0.2)  # and once the outcome is in, not only the cancel's reply
            with pytest.raises(TaskCancelled):
                rt.result(h, timeout=10)
        assert rt.result(rt.submit(Task.lua("return 1")), timeout=30) == 1
    finally:
        rt.close()
    assert run_cli("stop", "--port", str(served)).returncode == 0
