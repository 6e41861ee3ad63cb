"""How an engine learns that work finished on another thread.

Embedded: the driver's doorbell queues a ``Poll``. Local (one process per
engine, ``multiprocTCPBase``): a pipe that Thespian watches for the actor
(``ThespianWatch``); a worker thread writes one byte, the actor wakes with a
``WatchMessage``, drains the pipe and collects. No timer polls in either mode.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from thespian.actors import ThespianWatch, WatchMessage

from llmspell.engines.base import EngineActor
from llmspell.messages.types import Introduce


class _Engine(EngineActor):
    engine = "test"

    def __init__(self) -> None:
        super().__init__()
        self.polls = 0
        self.wakeups: list[Any] = []

    def start(self, spec: Any, attempt: int) -> None:
        pass

    def stop(self, task_id: str, reason: str) -> None:
        pass

    def poll(self) -> None:
        self.polls += 1

    def wake_after(self, seconds: float, payload: Any) -> None:
        self.wakeups.append(payload)

    def send_msg(self, to: Any, msg: Any) -> None:
        pass


def _local_engine() -> _Engine:
    e = _Engine()
    e.on_introduce(Introduce("rt", {"scheduler": None}, {"mode": "local"}), None)
    return e


def _pending(fd: int) -> bytes:
    os.set_blocking(fd, False)
    try:
        return os.read(fd, 4096)
    except BlockingIOError:
        return b""


def test_local_engine_is_woken_through_a_watched_pipe() -> None:
    e = _local_engine()
    try:
        assert e._pipe is not None
        r = e._pipe[0]
        # every message it handles hands Thespian the pipe to watch
        assert e.watched() == [r]
        assert isinstance(e.receiveMessage(b"\xc1 not msgpack", None), ThespianWatch)
        # handing work to a thread arms no polling timer
        e.work_started()
        assert e.wakeups == []
        # rings from many threads: one byte until the actor has collected
        threads = [threading.Thread(target=e.ring) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert _pending(r) == b"\0"
        e.ring()
        assert _pending(r) == b""  # still rung: not collected yet
        e.receiveMessage(WatchMessage([r]), None)
        assert e.polls == 1
        e.ring()  # rings again once collected
        assert _pending(r) == b"\0"
    finally:
        e.on_exit()
    assert e._pipe is None and e.watched() == []


def test_without_a_pipe_or_bell_the_engine_polls_itself() -> None:
    e = _Engine()
    e.on_introduce(Introduce("rt", {"scheduler": None}, {}), None)  # no driver bell here
    assert e._pipe is None and e.watched() == []
    e.work_started()
    assert e.wakeups == ["poll"]
    e.ring()  # nothing to ring: the poll collects
    e.on_wakeup("poll")
    assert e.polls == 1
