"""The event bus actor: topics and glob patterns.

``publish`` delivers an event to every subscription whose pattern matches
its name. Patterns are globs over the whole name: ``*`` matches any run of
characters (dots included), ``?`` one character, ``[abc]`` a set; so
``llmspell.task.*`` matches every task event and ``task.*.error`` matches
``task.x.error`` and ``task.a.b.error``. Delivery is in publish order per
subscriber. A ``once`` subscription ends after its first event (how scripts'
``spell.wait_event`` waits).

The bus pushes events as they come; the subscriber's own queue is bounded
(the facade's ``Subscription`` drops the oldest event when full and counts
it).
"""

from __future__ import annotations

import fnmatch
import re
from collections import Counter
from typing import Any

from thespian.actors import ActorAddress

from .._actor import WireActor, addr_key
from ..messages.types import (
    EventDelivery,
    EventInterest,
    InjectFaults,
    Introduce,
    Publish,
    PublishBatch,
    QueryStats,
    Replaced,
    StatsReply,
    Subscribe,
    Unsubscribe,
)

__all__ = ["EventBus", "compile_pattern"]


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """A glob over whole event names, as a compiled regex."""
    return re.compile(fnmatch.translate(pattern))


class _Sub:
    __slots__ = ("address", "key", "match", "once", "pattern")

    def __init__(self, address: ActorAddress, pattern: str, once: bool) -> None:
        self.address = address
        self.key = addr_key(address)
        self.pattern = pattern
        self.match = compile_pattern(pattern).match
        self.once = once


class EventBus(WireActor):
    role = "event bus"

    def __init__(self) -> None:
        super().__init__()
        self.subs: dict[str, _Sub] = {}
        self.published = 0
        self.scheduler: ActorAddress | None = None
        self.patterns: Counter[str] = Counter()  # pattern -> live subscriptions
        self._added: list[str] = []
        self._removed: list[str] = []
        self.faults: list[list[Any]] = []  # [kind, match, remaining] (simulation)
        self.delivered = 0
        self._out: dict[str, tuple[ActorAddress, dict[str, list[dict[str, Any]]]]] = {}

    def on_introduce(self, msg: Introduce, sender: ActorAddress) -> None:
        self.scheduler = msg.addresses.get("scheduler")

    def on_replaced(self, msg: Replaced, sender: ActorAddress) -> None:
        """A new scheduler (local mode, after a crash) learns every pattern
        someone subscribed to: it publishes the events they match."""
        if msg.role == "scheduler":
            self.scheduler = msg.address
            self._added = list(self.patterns)
            self._removed = []

    def on_subscribe(self, msg: Subscribe, sender: ActorAddress) -> None:
        old = self.subs.get(msg.sub_id)
        if old is not None:
            self._drop_pattern(old.pattern)
        self.subs[msg.sub_id] = _Sub(sender, msg.pattern, msg.once)
        self.patterns[msg.pattern] += 1
        if self.patterns[msg.pattern] == 1:
            self._added.append(msg.pattern)

    def on_unsubscribe(self, msg: Unsubscribe, sender: ActorAddress) -> None:
        sub = self.subs.pop(msg.sub_id, None)
        if sub is not None:
            self._drop_pattern(sub.pattern)

    def _drop_pattern(self, pattern: str) -> None:
        self.patterns[pattern] -= 1
        if self.patterns[pattern] <= 0:
            del self.patterns[pattern]
            self._removed.append(pattern)

    def on_publish_batch(self, msg: PublishBatch, sender: ActorAddress) -> None:
        for item in msg.items:
            self.on_publish(item, sender)

    def on_inject_faults(self, msg: InjectFaults, sender: ActorAddress) -> None:
        """Simulation: drop or duplicate the next deliveries of matching events."""
        for f in msg.faults:
            if f.get("kind") in ("drop_event", "duplicate_event") and f.get("pattern"):
                self.faults.append(
                    [f["kind"], compile_pattern(f["pattern"]).match, int(f.get("count", 1))]
                )

    def _fault_for(self, name: str) -> str | None:
        for f in self.faults:
            if f[2] > 0 and f[1](name):
                f[2] -= 1
                return str(f[0])
        return None

    def on_publish(self, msg: Publish, sender: ActorAddress) -> None:
        self.published += 1
        event = {"name": msg.name, "payload": msg.payload, "time": msg.time}
        fault = self._fault_for(msg.name) if self.faults else None
        if fault is not None:
            note_name = f"llmspell.fault.{fault}"
            note: dict[str, Any] = {
                "name": note_name,
                "payload": {"event": msg.name},
                "time": msg.time,
            }
            for sub_id, sub in self.subs.items():
                if sub.match(note_name):
                    per = self._out.setdefault(sub.key, (sub.address, {}))[1]
                    per.setdefault(sub_id, []).append(note)
            if fault == "drop_event":
                return
        copies = 2 if fault == "duplicate_event" else 1
        done = []
        for sub_id, sub in self.subs.items():
            if sub.match(msg.name):
                per_sub = self._out.setdefault(sub.key, (sub.address, {}))[1]
                for _ in range(copies):
                    per_sub.setdefault(sub_id, []).append(event)
                self.delivered += copies
                if sub.once:
                    done.append(sub_id)
        for sub_id in done:
            self._drop_pattern(self.subs.pop(sub_id).pattern)

    def on_query_stats(self, msg: QueryStats, sender: ActorAddress) -> None:
        self.send_msg(
            sender,
            StatsReply(
                msg.ref,
                {
                    "published": self.published,
                    "delivered": self.delivered,
                    "subscriptions": len(self.subs),
                },
            ),
        )

    def flush(self) -> None:
        if (self._added or self._removed) and self.scheduler is not None:
            self.send_msg(self.scheduler, EventInterest(self._added, self._removed))
            self._added, self._removed = [], []
        if not self._out:
            return
        out, self._out = self._out, {}
        for address, per_sub in out.values():
            for sub_id, events in per_sub.items():
                self.send_msg(address, EventDelivery(sub_id, events))
