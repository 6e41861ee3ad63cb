"""Thespian's transmit queue in llmspell's processes: an actor with thousands
of messages waiting to go out keeps its timers and loses no message.

Unchanged, Thespian 4.0.1 drains a queue of 950 in a nested "transmit-only"
run that takes the timer wake-ups due meanwhile and discards them, and drops
every message above 1,050 (a scheduler re-running a crashed engine's tasks
under CPU load lost its retry wake-ups: tasks stayed pending for good).
``llmspell._frames.install`` lifts both limits."""

from __future__ import annotations

import time
from collections.abc import Iterator

import psutil
import pytest
from queue_actors import Flooder, Slow
from thespian.actors import ActorSystem

from llmspell import _frames, _loopback
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
