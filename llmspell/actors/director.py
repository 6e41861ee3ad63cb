"""The director: root of the actor tree (Thespian globalName ``llmspell.director``).

On ``Introduce`` from the facade (the runtime's configuration) it creates the
scheduler, the event bus and the engine contexts, introduces them to each
other, and from then on answers ``Hello`` with the addresses the facade talks
to. On ``Shutdown`` it cancels every unfinished task, closes the engines and
stops its children.
"""

from __future__ import annotations

import importlib
from typing import Any

from thespian.actors import ActorAddress, ActorExitRequest

from .._actor import WireActor, log
from ..messages.types import Hello, Introduce, Shutdown
from .events import EventBus
from .scheduler import Scheduler

__all__ = ["DIRECTOR_NAME", "ENGINE_CLASSES", "Director"]

DIRECTOR_NAME = "llmspell.director"

# engine name -> "module:class" of its context actor
ENGINE_CLASSES = {
    "python": "llmspell.engines.python:PythonEngine",
    "lua": "llmspell.engines.lua:LuaEngine",
    "js": "llmspell.engines.js:JsEngine",
}


def _load(path: str) -> Any:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


class Director(WireActor):
    role = "director"

    def __init__(self) -> None:
        super().__init__()
        self.runtime_id = ""
        self.config: dict[str, Any] = {}
        self.addresses: dict[str, ActorAddress] = {}
        self.engines: list[ActorAddress] = []
        self.children: list[ActorAddress] = []
        self.started = False

    def on_introduce(self, msg: Introduce, sender: ActorAddress) -> None:
        if self.started:
            self.send_msg(sender, Introduce(self.runtime_id, self.addresses, self.config))
            return
        self.started = True
        self.runtime_id = msg.runtime_id
        self.config = dict(msg.config)
        events = self.createActor(EventBus)
        scheduler = self.createActor(Scheduler)
        self.addresses = {"director": self.myAddress, "scheduler": scheduler, "events": events}
        self.children = [scheduler, events]
        for addr in self.children:
            self.send_msg(addr, Introduce(self.runtime_id, self.addresses, self.config))
        counts: dict[str, int] = self.config.get("engines", {"python": 1})
        for engine, count in counts.items():
            cls = _load(ENGINE_CLASSES[engine])
            for index in range(int(count)):
                addr = self.createActor(cls)
                self.engines.append(addr)
                cfg = dict(self.config, index=index)
                self.send_msg(addr, Introduce(self.runtime_id, self.addresses, cfg))
        self.send_msg(sender, Introduce(self.runtime_id, self.addresses, self.config))

    def on_poll(self, msg: Any, sender: ActorAddress) -> None:
        """A no-op: the embedded driver sends it to let due wake-ups fire."""

    def on_hello(self, msg: Hello, sender: ActorAddress) -> None:
        self.send_msg(sender, Introduce(self.runtime_id, self.addresses, self.config))

    def on_shutdown(self, msg: Shutdown, sender: ActorAddress) -> None:
        scheduler = self.addresses.get("scheduler")
        if scheduler is not None:
            self.send_msg(scheduler, msg)
        for addr in self.engines:
            self.send_msg(addr, msg)
        for addr in [*self.engines, *self.children]:
            self.send(addr, ActorExitRequest())
        self.engines = []
        self.children = []
        self.send_msg(sender, msg)  # acknowledge: everything is stopped

    def on_child_exited(self, child: ActorAddress) -> None:
        log.debug("director: child %s exited", child)
