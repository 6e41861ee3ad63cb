"""Thespian's transmit queue in llmspell's processes: an actor with thousands
of messages waiting to go out keeps its timers and loses no message.

Unchanged, Thespian 4.0.1 drains a queue of 950 in a nested "transmit-only"
run that takes the timer wake-ups due meanwhile and discards them, and drops
every message above 1,050 (a scheduler re-running a crashed engine's tasks
under CPU load lost its retry wake-ups: tasks stayed pending for good).
``llmspell._frames.install`` lifts both limits; the scheduler keeps its own
timers (one heap, one wake-up for the earliest), which also fire on the next
message it handles and are dropped once their tasks are forgotten."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import psutil
import pytest
from queue_actors import Flooder, Slow
from thespian.actors import ActorSystem

from llmspell import Runtime, Task, _frames, _loopback
from llmspell._driver import _LOG_DEFS, _listener_pid, _reap, free_port

pytestmark = pytest.mark.slow

N = 2_500  # > 1,050: Thespian would drop some and drain (losing the timer)


@pytest.fixture
def asys(monkeypatch: pytest.MonkeyPatch) -> Iterator[ActorSystem]:
    _loopback.install()
    _frames.install()  # what LocalDriver and cluster members do first
    monkeypatch.setenv("THESPIAN_BASE_IPADDR", "127.0.0.1")
    port = free_port()
    system = ActorSystem(
        "multiprocTCPBase", {"Admin Port": port}, transientUnique=True, logDefs=_LOG_DEFS
    )
    admin = _listener_pid(port)
    procs = [psutil.Process(admin)] if admin else []
    try:
        yield system
    finally:
        if procs:
            procs += procs[0].children(recursive=True)
        system.shutdown()
        _reap(procs, 10)


def test_a_flooding_actor_keeps_its_timer_and_every_message_arrives(asys: ActorSystem) -> None:
    slow = asys.createActor(Slow)
    flooder = asys.createActor(Flooder)
    assert asys.ask(flooder, (slow, N), 30) == "woke"
    deadline = time.monotonic() + 60
    got = 0
    while got < N and time.monotonic() < deadline:
        got = asys.ask(slow, "count", 10)
        time.sleep(0.2)
    assert got == N


def test_a_timer_whose_wake_up_is_lost_fires_at_the_next_message(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Thespian could lose a wake-up (its transmit-only drain did); the scheduler's
    # time-outs and retries then still come due on the next message it handles
    from llmspell.actors.scheduler import Scheduler

    def lost(self: Scheduler, seconds: float, payload: Any) -> None:
        pass  # every wake-up the scheduler asks for is lost

    monkeypatch.setattr(Scheduler, "wake_after", lost)
    with Runtime(engines={"lua": 1}) as rt:
        h = rt.submit(Task.lua("spell.sleep(30) return 1", timeout=0.2))
        deadline = time.monotonic() + 20
        while rt.status(h) != "timed_out":  # each status is a message to the scheduler
            assert time.monotonic() < deadline, rt.status(h)
            time.sleep(0.05)


def test_timers_of_ended_tasks_are_dropped_and_live_ones_still_fire() -> None:
    # 5,000 quick tasks with an hour's timeout leave 5,000 timers behind them; the
    # scheduler drops them once they outnumber the tasks it keeps, never a live one
    import gc

    from llmspell.actors.scheduler import Scheduler

    with Runtime(engines={"lua": 1}, history=10) as rt:
        quick = rt.submit_many([Task.lua("return 1", timeout=3600) for _ in range(5_000)])
        assert all(rt.result(h, timeout=60) == 1 for h in quick)
        slow = rt.submit(Task.lua("spell.sleep(30) return 1", timeout=2))
        early = rt.submit(Task.lua("spell.sleep(30) return 1", timeout=0.3))
        assert rt.status(early) in ("pending", "running")
        deadline = time.monotonic() + 20
        while rt.status(slow) != "timed_out":
            assert time.monotonic() < deadline, rt.status(slow)
            time.sleep(0.05)
        assert rt.status(early) == "timed_out"
        (scheduler,) = [o for o in gc.get_objects() if isinstance(o, Scheduler)]
        assert len(scheduler._timers) < 100


def test_the_poll_selector_fails_on_a_closed_fd_as_epoll_does() -> None:
    # Thespian drops a watched fd that a select fails on with EBADF; poll alone would
    # report a closed fd ready on every turn of its loop (a busy loop for ever)
    import errno
    import selectors

    from llmspell._frames import _PollSelector

    r, w = os.pipe()
    sel = _PollSelector()
    try:
        sel.register(r, selectors.EVENT_READ)
        os.write(w, b"x")
        assert [key.fd for key, _ in sel.select(0)] == [r]  # an open fd: as poll says
        os.close(r)
        with pytest.raises(OSError) as caught:
            sel.select(0)
        assert caught.value.errno == errno.EBADF
    finally:
        sel.close()
        os.close(w)
