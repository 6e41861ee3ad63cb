"""The in-process actor host of an embedded runtime.

An embedded runtime's actors (director, scheduler, engines, ...) are the same
Thespian ``Actor`` classes local mode runs a process each, but here they all
live in this process and take turns on one loop. Thespian's
``simpleSystemBase`` did that before; it costs ~8 us of its own per message
(pending-send bookkeeping, wake-up checks, a logger lookup) and is bound to the
thread that made it. ``Loop`` does only what llmspell's actors use of an actor
system (``createActor``, ``send``, ``wakeupAfter``, ``myAddress``,
``globalName``; ``ActorExitRequest`` ends an actor, its parent gets
``ChildActorExited`` and its own children are told to exit) and may be run by
any thread, one at a time: the driver (``_driver.EmbeddedDriver``) decides who.

Messages an actor sends to another actor are encoded and decoded as in every
other mode (the codec checks what crosses, and each actor gets data of its
own), but for the two every task crosses: a ``DispatchBatch`` (the scheduler's
specs, which nobody changes once the task is ready, when their data holds no
list or map a task's code could change: args of scalars, no payload or input
that is a container) and an engine's
``EngineResults`` (each value checked and copied by the engine, see
``EngineActor._owned_results``) are handed over as objects. A message for the
facade (``Loop.outside``) is handed to it as an object (``on_outside``), its
values copied where the sender could still hold them.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from thespian.actors import ActorAddress, ActorExitRequest, ChildActorExited, WakeupMessage

from .messages import decode, encode
from .messages.codec import copy_data
from .messages.types import DispatchBatch, TaskOutcome, TaskOutcomes

__all__ = ["Loop", "LoopAddress"]

log = logging.getLogger("llmspell")

_SCALARS = (type(None), bool, int, float, str, bytes)
_OUTSIDE = "outside"  # the id of the facade's address


class LoopAddress(ActorAddress):  # type: ignore[misc]
    """The address of an actor on a ``Loop`` (hashable, compared by id)."""

    def __init__(self, details: str) -> None:
        super().__init__(details)

    def __eq__(self, other: object) -> bool:
        return type(other) is LoopAddress and other._aaddr == self._aaddr

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    def __hash__(self) -> int:
        return hash(self._aaddr)


class _Ref:
    """What a hosted actor reaches the loop through (Thespian calls it the
    actor's ``_myRef``)."""

    __slots__ = ("address", "children", "globalName", "instance", "loop", "parent")

    def __init__(self, loop: Loop, address: LoopAddress, parent: LoopAddress | None) -> None:
        self.loop = loop
        self.address = address
        self.parent = parent
        self.globalName = ""
        self.instance: Any = None
        self.children: list[LoopAddress] = []

    def createActor(  # Thespian names (camelCase) throughout
        self,
        actorClass: Any,
        targetActorRequirements: Any = None,
        globalName: str | None = None,
        sourceHash: Any = None,
    ) -> LoopAddress:
        if targetActorRequirements is not None or sourceHash is not None:
            raise ValueError(
                "an embedded runtime places every actor in this process: "
                "requirements and loaded sources are for the multi-process modes"
            )
        return self.loop.create(actorClass, self.address, globalName)

    def actor_send(self, to: Any, msg: Any) -> None:
        self.loop.post(to, msg, self.address)

    def wakeupAfter(self, period: Any, payload: Any) -> None:
        self.loop.wake(self.address, period, payload)

    def notifyOnSystemRegistrationChanges(self, address: Any, enable: bool) -> None:
        pass  # one process: no other systems to hear of

    def handleDeadLetters(self, address: Any, enable: bool) -> None:
        raise NotImplementedError("an embedded runtime has no dead-letter handling")


class Loop:
    """Actors of one embedded runtime, their queue of messages and their
    timers. Not thread-safe: one thread at a time calls ``post``, ``run``
    and ``create`` (the driver sees to it)."""

    def __init__(
        self,
        on_outside: Callable[[Any], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.on_outside = on_outside
        self.clock = clock
        self._ids = itertools.count(1)
        self.outside = LoopAddress(_OUTSIDE)
        self.refs: dict[LoopAddress, _Ref] = {}
        # the same by the address's id: found without calling LoopAddress's
        # Python-level __hash__ and __eq__ for every message delivered
        self._by_id: dict[str, _Ref] = {}
        self.names: dict[str, LoopAddress] = {}
        self.queue: deque[tuple[Any, Any, Any]] = deque()
        # (due, n, address, delay, payload), earliest first
        self.timers: list[tuple[float, int, LoopAddress, Any, Any]] = []
        self._timer_ids = itertools.count()
        self.delivered = 0

    # -- the actor system's side of an actor --------------------------------

    def create(
        self, cls: Any, parent: LoopAddress | None = None, global_name: str | None = None
    ) -> LoopAddress:
        """Make an actor of ``cls`` (a child of ``parent``); with a global name
        already taken by a live actor, that actor's address."""
        if global_name:
            known = self.names.get(global_name)
            if known is not None and known in self.refs:
                return known
        address = LoopAddress(f"{cls.__name__}-{next(self._ids)}")
        ref = _Ref(self, address, parent)
        instance = cls()
        instance._myRef = ref
        if hasattr(instance, "_host"):
            instance._host = self
        ref.instance = instance
        if global_name:
            ref.globalName = global_name
            self.names[global_name] = address
        self.refs[address] = ref
        self._by_id[address._aaddr] = ref
        if parent is not None:
            parent_ref = self.refs.get(parent)
            if parent_ref is not None:
                parent_ref.children.append(address)
        return address

    def post(self, to: Any, msg: Any, sender: Any) -> None:
        """Queue ``msg`` for ``to``; it is delivered by ``run``."""
        self.queue.append((to, msg, sender))

    def send_msg(self, sender: Any, to: Any, msg: Any) -> None:
        """A ``WireActor`` sends a llmspell message: to the facade as an
        object, to another actor encoded (as on every other base)."""
        if type(to) is LoopAddress and to._aaddr == _OUTSIDE:
            if type(msg) is TaskOutcomes:
                # read at once on this thread: the facade copies what it keeps
                # or hands on (_runtime.core.resolve_many), most values are scalars
                self.on_outside(SharedOutcomes(msg.items))
            else:
                self.on_outside(decode(encode(msg)))
        elif type(msg) is DispatchBatch and all(_flat(spec) for spec in msg.tasks):
            # the scheduler's own specs (decoded from the facade's bytes, never
            # changed once a task is ready) whose data is scalars or maps of
            # them: the engine reads them as they are; a task whose code could
            # change a list or map it was given gets its own copy, encoded
            self.queue.append((to, msg, sender))
        else:
            self.queue.append((to, encode(msg), sender))

    def wake(self, address: LoopAddress, period: Any, payload: Any) -> None:
        seconds = period.total_seconds() if isinstance(period, timedelta) else float(period)
        due = self.clock() + max(0.0, seconds)
        heapq.heappush(self.timers, (due, next(self._timer_ids), address, period, payload))

    def next_due(self) -> float | None:
        """When the earliest timer is due (the loop's clock), or None."""
        return self.timers[0][0] if self.timers else None

    # -- running ------------------------------------------------------------

    def fire_timers(self) -> None:
        """Queue a ``WakeupMessage`` for every timer that is due."""
        timers = self.timers
        if not timers:
            return
        now = self.clock()
        while timers and timers[0][0] <= now:
            _, _, address, period, payload = heapq.heappop(timers)
            self.queue.append((address, WakeupMessage(period, payload), address))

    def run(self) -> int:
        """Deliver queued messages until none is left; how many were."""
        queue = self.queue
        refs, by_id = self.refs, self._by_id
        outside = self.outside
        n = 0
        while queue:
            to, msg, sender = queue.popleft()
            n += 1
            ref = by_id.get(to._aaddr) if type(to) is LoopAddress else refs.get(to)
            if ref is None:
                if to == outside:
                    self._outside(msg)
                else:  # it exited: the message is dropped, as Thespian does
                    log.debug("a message for the ended actor %s was dropped", to)
                continue
            try:
                ref.instance.receiveMessage(msg, sender)
            except Exception:  # a WireActor never raises; anything else must not stop the loop
                log.exception("actor %s failed handling a message", to)
            if type(msg) is ActorExitRequest:
                self._ended(ref)
        self.delivered += n
        return n

    def _outside(self, msg: Any) -> None:
        """A message an actor sent the facade with ``send`` (not ``send_msg``)."""
        if isinstance(msg, (bytes, bytearray)):
            try:
                msg = decode(msg)
            except Exception as exc:
                log.warning("the embedded runtime dropped a malformed reply: %s", exc)
                return
        self.on_outside(msg)

    def _ended(self, ref: _Ref) -> None:
        """``ref``'s actor handled its ``ActorExitRequest``: it is gone; its
        children are told to exit and its parent hears of it."""
        del self.refs[ref.address]
        self._by_id.pop(ref.address._aaddr, None)
        if ref.globalName and self.names.get(ref.globalName) == ref.address:
            del self.names[ref.globalName]
        for child in ref.children:
            if child in self.refs:
                self.queue.append((child, ActorExitRequest(), ref.address))
        if ref.parent is not None:
            parent = self.refs.get(ref.parent)
            if parent is not None:
                if ref.address in parent.children:
                    parent.children.remove(ref.address)
                self.queue.append((ref.parent, ChildActorExited(ref.address), ref.parent))

    def stop_all(self) -> None:
        """Tell every actor still there to exit, children before parents, and
        deliver it (after the director's orderly ``Shutdown``, only what did
        not stop is left)."""
        for address in reversed(list(self.refs)):
            if address in self.refs:
                self.queue.append((address, ActorExitRequest(), self.outside))
                self.run()


def _flat(spec: Any) -> bool:
    """``spec``'s data holds no container a task could change: its args are a
    scalar or a map of scalars (a Python task gets them as keyword arguments,
    a new map), its payload and input scalars (a Python task or an agent gets
    those themselves, to write into; a retry must see them as they were)."""
    args = spec.args
    if type(args) is dict:
        for x in args.values():
            if type(x) not in _SCALARS:
                return False
    elif type(args) not in _SCALARS:
        return False
    return type(spec.payload) in _SCALARS and type(spec.input) in _SCALARS


class SharedOutcomes(TaskOutcomes):
    """Outcomes the scheduler sent the facade of an embedded runtime, handed over
    as the scheduler's own objects (never encoded): the facade must take each one
    before the loop goes on, copying what it keeps (``own_outcome``)."""

    __slots__ = ()


def own_outcome(o: TaskOutcome) -> TaskOutcome:
    """The facade's own copy of an outcome (most values are scalars: themselves)."""
    return TaskOutcome(o.task_id, o.status, _own(o.value), _own(o.error), _own(o.usage), o.attempt)


def _own(value: Any) -> Any:
    """``value`` itself when it is a scalar, else a copy of it (msgpack data)."""
    if type(value) in _SCALARS:
        return value
    if type(value) is dict and all(type(v) in _SCALARS for v in value.values()):
        return dict(value)
    return copy_data(value)
