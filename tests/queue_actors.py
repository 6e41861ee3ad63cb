"""Plain Thespian actors for tests/test_transport_queues.py: a sender that
queues far more messages than Thespian keeps in flight, to a slow receiver."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

from thespian.actors import Actor, ActorAddress, WakeupMessage


class Slow(Actor):  # type: ignore[misc]
    """Takes 1 ms per message (so it reads, and acknowledges, slowly); answers
    ``"count"`` with how many numbers it got."""

    def __init__(self) -> None:
        super().__init__()
        self.got = 0

    def receiveMessage(self, msg: Any, sender: ActorAddress) -> None:
        if msg == "count":
            self.send(sender, self.got)
        elif isinstance(msg, int):
            self.got += 1
            time.sleep(0.001)


class Flooder(Actor):  # type: ignore[misc]
    """On ``(receiver, n)``: arms a wake-up in 0.2 s, then sends ``n`` numbers
    to ``receiver`` at once; tells whoever asked ``"woke"`` when it wakes."""

    def __init__(self) -> None:
        super().__init__()
        self.asker: ActorAddress | None = None

    def receiveMessage(self, msg: Any, sender: ActorAddress) -> None:
        if isinstance(msg, tuple):
            receiver, n = msg
            self.asker = sender
            self.wakeupAfter(timedelta(seconds=0.2), "timer")
            for i in range(n):
                self.send(receiver, i)
        elif isinstance(msg, WakeupMessage) and self.asker is not None:
            self.send(self.asker, "woke")
