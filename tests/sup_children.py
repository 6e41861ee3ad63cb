"""Actors for the supervisor tests: children that report to a probe."""

from __future__ import annotations

from typing import Any

from thespian.actors import ActorAddress, ActorExitRequest

from llmspell._actor import WireActor
from llmspell.messages.types import Introduce, Publish, QueryStats, StatsReply


class Probe(WireActor):
    """Collects what children report; answers QueryStats with the log."""

    role = "probe"

    def __init__(self) -> None:
        super().__init__()
        self.log: list[list[Any]] = []

    def on_publish(self, msg: Publish, sender: ActorAddress) -> None:
        self.log.append([msg.name, msg.payload])

    def on_query_stats(self, msg: QueryStats, sender: ActorAddress) -> None:
        self.send_msg(sender, StatsReply(msg.ref, {"log": self.log}))


class Child(WireActor):
    """Reports ``started`` (name, restarts) on introduce; dies on ``crash``."""

    role = "child"

    def on_introduce(self, msg: Introduce, sender: ActorAddress) -> None:
        self.name = msg.config.get("name", "?")
        self.probe = msg.addresses["probe"]
        self.send_msg(self.probe, Publish("started", [self.name, msg.config.get("restarts", 0)]))

    def on_publish(self, msg: Publish, sender: ActorAddress) -> None:
        if msg.name == "crash":
            self.send(self.myAddress, ActorExitRequest())

    def on_shutdown(self, msg: Any, sender: ActorAddress) -> None:
        self.send_msg(self.probe, Publish("stopped", [self.name]))
