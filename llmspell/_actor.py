"""The base every llmspell actor stands on: msgpack in, msgpack out.

``WireActor.receiveMessage`` decodes bytes into a message and calls
``on_<tag>(msg, sender)``. A message that cannot be decoded is logged with what
was wrong and dropped; a handler that raises is logged with its traceback and
the actor goes on (Thespian would otherwise retry the message and then return
it as a ``PoisonMessage``).

Lives beside ``_exceptions`` at the package root because engines (below
actors in the layering) are actors too.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from thespian.actors import (
    Actor,
    ActorAddress,
    ActorExitRequest,
    ChildActorExited,
    PoisonMessage,
    ThespianWatch,
    WakeupMessage,
    WatchMessage,
)

from . import _clock
from ._exceptions import MessageError
from ._lanes import Lanes, lane_key
from ._lanes import available as lanes_available
from .messages import Message, decode, encode
from .messages.types import Pong, StreamAck, Via

__all__ = ["WireActor", "addr_key", "log"]


log = logging.getLogger("llmspell")


def addr_key(address: ActorAddress) -> str:
    """A hashable key for an actor address (Thespian's are not hashable): host
    and port (``_lanes.lane_key``), never ``str(address)`` alone, which leaves
    out a host the process counts as its own (in a member bound to 127.0.0.2,
    127.0.0.1:5000 and 127.0.0.2:5000 would be one key)."""
    return lane_key(address)


class WireActor(Actor):  # type: ignore[misc]
    """An actor that speaks the llmspell wire format."""

    #: role name used in log lines
    role = "actor"
    #: the ``_loop.Loop`` hosting this actor in an embedded runtime (set by it)
    _host: Any = None

    def __init__(self) -> None:
        super().__init__()
        self._handlers: dict[str, Callable[[Any, Any], None]] = {}
        self.bad_messages = 0
        # local mode: direct sockets to the scheduler or from its peers (``_lanes``)
        self._lanes: Lanes | None = None
        self._lane_to: Any = None  # the address last sent to, and its key
        self._lane_key = ""
        self._lane_wake = False  # a wake-up to retry a lane's outbox is armed

    # -- receiving ----------------------------------------------------------

    def receiveMessage(self, msg: Any, sender: ActorAddress) -> ThespianWatch | None:
        try:
            self._dispatch_message(msg, sender)
        except Exception:
            # Never let a handler's bug kill the actor or bounce the message.
            log.exception("%s failed handling a message from %s", self.role, sender)
        try:
            self.flush()
        except Exception:
            log.exception("%s failed sending its replies", self.role)
        # Thespian replaces an actor's watched file descriptors by what each
        # receiveMessage returns (multiprocTCPBase only)
        fds = self.watched()
        lanes = self._lanes
        if lanes is not None:
            if lanes.pending:
                lanes.drain()
                if lanes.pending and not self._lane_wake:
                    self._lane_wake = True
                    self.wakeupAfter(timedelta(seconds=_LANE_RETRY), payload=_LANE_DRAIN)
            fds = fds + lanes.fds()
        return ThespianWatch(fds) if fds else None

    def _dispatch_message(self, msg: Any, sender: ActorAddress) -> None:
        if isinstance(msg, (bytes, bytearray)):
            try:
                decoded = decode(msg)
                if type(decoded) is Via:  # handle the inner message on behalf of reply_to
                    sender = decoded.reply_to
                    decoded = decode(decoded.data)
            except MessageError as exc:
                self.bad_messages += 1
                log.warning("%s dropped a malformed message from %s: %s", self.role, sender, exc)
                return
            self._deliver_to_handler(decoded, sender)
        elif isinstance(msg, Message):  # embedded: handed over by another actor (_loop)
            self._deliver_to_handler(msg, sender)
        elif isinstance(msg, WakeupMessage):
            payload = msg.payload
            if type(payload) is str and payload == _LANE_DRAIN:  # receiveMessage retries the outbox
                self._lane_wake = False
                return
            if type(payload) is _Later:  # a long wait, armed a day at a time: go on
                self.wake_after(payload.at - _clock.monotonic(), payload.payload)
                return
            self.on_wakeup(payload)
        elif isinstance(msg, WatchMessage):
            ready = msg.ready
            if self._lanes is not None:
                ready = self._lanes.on_ready(ready)
            if ready:
                self.on_fd_ready(ready)
        elif isinstance(msg, ChildActorExited):
            self.on_child_exited(msg.childAddress)
        elif isinstance(msg, PoisonMessage):
            log.error("%s: a message it sent could not be handled by %s", self.role, sender)
            self.on_poison(msg.poisonMessage, sender)
        elif isinstance(msg, ActorExitRequest):
            self.on_exit()
        else:
            log.debug("%s ignored %r", self.role, type(msg).__name__)

    def _deliver_to_handler(self, msg: Message, sender: ActorAddress) -> None:
        """``on_<tag>(msg, sender)``; a tag it has no handler for is counted and
        logged."""
        handler = self._handlers.get(msg.TAG)
        if handler is None:
            handler = getattr(self, "on_" + msg.TAG.lstrip("_"), None)
            if handler is None:
                self.bad_messages += 1
                log.warning("%s got a %r message it does not handle", self.role, msg.TAG)
                return
            self._handlers[msg.TAG] = handler
        handler(msg, sender)

    def on_ping(self, msg: Any, sender: ActorAddress) -> None:
        self.send_msg(sender, Pong(msg.role, os.getpid()))

    # -- lanes (``_lanes``: local mode's direct sockets) ----------------------------

    def open_lanes(self, max_bytes: int) -> Lanes | None:
        """This actor's lanes (made once), or None where there can be none
        (embedded, simulation, no abstract sockets)."""
        if self._lanes is None and self._host is None and lanes_available():
            self._lanes = Lanes(
                self.role, max_bytes, self._lane_deliver, self._send_thespian, addr_key
            )
        return self._lanes

    def _lane_deliver(self, data: bytes, peer: ActorAddress) -> None:
        try:
            self._dispatch_message(data, peer)
        except Exception:  # one frame's handler failing loses none of the others
            log.exception("%s failed handling a message from %s", self.role, peer)

    def _send_thespian(self, to: ActorAddress, data: bytes) -> None:
        super().send(to, data)

    def on_lane_offer(self, msg: Any, sender: ActorAddress) -> None:
        lanes = self._lanes
        if lanes is not None:
            lanes.take_offer(sender, msg.name, msg.token)

    def on_lane_mark(self, msg: Any, sender: ActorAddress) -> None:
        if self._lanes is not None:
            self._lanes.on_mark(msg.token)

    def send(self, targetAddr: ActorAddress, msg: Any) -> None:
        """Thespian's ``send``, through a lane when one goes to ``targetAddr``."""
        lanes = self._lanes
        if lanes is not None and lanes.out and type(msg) is bytes:
            if targetAddr is self._lane_to:
                key = self._lane_key
            else:
                key = addr_key(targetAddr)
                self._lane_to, self._lane_key = targetAddr, key
            if lanes.write(key, msg):
                return
        super().send(targetAddr, msg)

    def on_stream_chunks(self, msg: Any, sender: ActorAddress) -> None:
        """Chunks of an agent task this actor submitted: an actor that does not
        read them takes them at once, so the agent is never held for it."""
        self.send_msg(sender, StreamAck(msg.task_id, msg.seq + len(msg.chunks)))

    def on_replaced(self, msg: Any, sender: ActorAddress) -> None:
        """A runtime process died and the director restarted it: the new
        address (``Replaced``) replaces the old one wherever this actor keeps
        addresses. Actors that lost work with it say more."""
        addresses = getattr(self, "addresses", None)
        if isinstance(addresses, dict):
            addresses[msg.role] = msg.address

    # -- hooks subclasses override -------------------------------------------

    def on_wakeup(self, payload: Any) -> None:
        pass

    def on_fd_ready(self, ready: list[int]) -> None:
        """Some of the file descriptors ``watched`` names became readable."""

    def watched(self) -> list[int]:
        """File descriptors Thespian should wake this actor for (multiprocTCPBase
        only; a base without the feature logs an error for a non-empty list)."""
        return []

    def on_child_exited(self, child: ActorAddress) -> None:
        pass

    def on_poison(self, original: Any, sender: ActorAddress) -> None:
        pass

    def on_exit(self) -> None:
        pass

    # -- sending ------------------------------------------------------------

    def send_msg(self, to: ActorAddress, msg: Message) -> None:
        loop = self._host
        if loop is not None:  # embedded: the facade gets the message as an object
            loop.send_msg(self._myRef.address, to, msg)
            return
        self.send(to, encode(msg))

    def flush(self) -> None:
        """Called after every handled message: send what was batched."""

    def wake_after(self, seconds: float, payload: Any) -> None:
        """``on_wakeup(payload)`` after ``seconds`` (any float: a negative or NaN
        wait is none, a huge or infinite one is armed a day at a time, since
        Thespian's timers and select() overflow far sooner)."""
        seconds = max(0.0, seconds)
        if seconds > _MAX_WAKE:
            payload = _Later(_clock.monotonic() + seconds, payload)
            seconds = _MAX_WAKE
        self.wakeupAfter(timedelta(seconds=seconds), payload=payload)


_MAX_WAKE = 86_400.0
_LANE_DRAIN = "_lane_drain"  # the payload of the wake-up that retries lanes' outboxes
_LANE_RETRY = 0.002


class _Later:
    """The payload of a wake-up further away than ``_MAX_WAKE``."""

    __slots__ = ("at", "payload")

    def __init__(self, at: float, payload: Any) -> None:
        self.at = at
        self.payload = payload
