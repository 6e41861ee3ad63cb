"""Drivers: the one thread that talks to the actor system for a runtime.

``simpleSystemBase`` moves only inside ``tell``/``listen`` of the thread that
owns it, so an embedded runtime gets one driver thread that owns the system.
Every other thread (callers, Python worker threads finishing a call) hands it
``(address, bytes)`` through a queue; the driver sleeps on that queue until
there is work or the next Thespian wake-up is due, so an idle runtime costs no
CPU and a submission never waits for a timer.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from thespian.actors import ActorSystem

from ._actor import log
from ._exceptions import LlmspellError
from .actors.director import DIRECTOR_NAME, Director
from .engines import _doorbell
from .messages import decode, encode
from .messages.types import Introduce, Poll, Shutdown

__all__ = ["EmbeddedDriver"]

_STOP = object()
_NOOP = encode(Poll())


class EmbeddedDriver:
    """Owns a ``simpleSystemBase`` actor system on a thread of its own."""

    mode = "embedded"

    def __init__(
        self, runtime_id: str, config: dict[str, Any], on_message: Callable[[Any], None]
    ) -> None:
        self.runtime_id = runtime_id
        self.config = config
        self.on_message = on_message
        self.inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.addresses: dict[str, Any] = {}
        self.director: Any = None
        self._ready = threading.Event()
        self._stopped = threading.Event()
        self._error: BaseException | None = None
        self.thread = threading.Thread(
            target=self._run, name=f"llmspell-driver-{runtime_id[:8]}", daemon=True
        )

    # -- any thread ---------------------------------------------------------

    def start(self, timeout: float = 30.0) -> dict[str, Any]:
        _doorbell.install(self.runtime_id, self.send)
        self.thread.start()
        if not self._ready.wait(timeout):
            raise LlmspellError("the embedded actor system did not start in time")
        if self._error is not None:
            raise LlmspellError(f"the actor system failed to start: {self._error}")
        return self.addresses

    def send(self, address: Any, data: bytes) -> None:
        """Deliver ``data`` to the actor at ``address`` (thread-safe)."""
        self.inbox.put((address, data))

    def call(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the driver thread."""
        self.inbox.put(fn)

    def stop(self, timeout: float = 10.0) -> None:
        if self.thread.is_alive():
            self.inbox.put(_STOP)
            self._stopped.wait(timeout)
        _doorbell.remove(self.runtime_id)

    # -- the driver thread --------------------------------------------------

    def _run(self) -> None:
        try:
            asys = ActorSystem("simpleSystemBase", transientUnique=True, logDefs=False)
        except Exception as exc:  # pragma: no cover - thespian failing to start
            self._error = exc
            self._ready.set()
            self._stopped.set()
            return
        self.asys = asys
        try:
            self.director = asys.createActor(Director, globalName=DIRECTOR_NAME)
            asys.tell(self.director, encode(Introduce(self.runtime_id, {}, self.config)))
            reply = self._collect(expect=Introduce)
            self.addresses = dict(reply.addresses) if reply is not None else {}
        except Exception as exc:
            self._error = exc
            log.exception("the embedded actor system failed to start")
        self._ready.set()
        if self._error is None:
            self._loop(asys)
        try:
            asys.shutdown()
        finally:
            self._stopped.set()

    def _loop(self, asys: Any) -> None:
        inbox = self.inbox
        while True:
            try:
                item = inbox.get(timeout=self._next_wakeup(asys))
            except queue.Empty:
                item = None
            items = [item] if item is not None else []
            for _ in range(10_000):
                try:
                    items.append(inbox.get_nowait())
                except queue.Empty:
                    break
            if not items:  # a wake-up is due: any tell lets it fire
                asys.tell(self.director, _NOOP)
            for it in items:
                if it is _STOP:
                    self._shutdown(asys)
                    return
                try:
                    if callable(it):
                        it()
                    else:
                        asys.tell(it[0], it[1])
                except Exception:
                    log.exception("driver: delivering a message failed")
            self._collect()

    def _collect(self, expect: type | None = None) -> Any:
        """Hand every message addressed to the outside to ``on_message``."""
        found = None
        while True:
            raw = self.asys.listen(0)
            if raw is None:
                return found
            try:
                msg = decode(raw) if isinstance(raw, (bytes, bytearray)) else raw
            except Exception as exc:
                log.warning("driver dropped a malformed reply: %s", exc)
                continue
            if expect is not None and isinstance(msg, expect) and found is None:
                found = msg
                continue
            try:
                self.on_message(msg)
            except Exception:
                log.exception("driver: handling a reply failed")

    def _next_wakeup(self, asys: Any) -> float | None:
        base = getattr(asys, "_systemBase", None)
        next_wakeup = getattr(base, "_next_wakeup", None)
        if next_wakeup is None:
            return 0.01  # pragma: no cover - poll if thespian's internals change
        timer = next_wakeup()
        if timer is None:
            return None
        remaining = timer.view().remaining()
        secs = remaining.total_seconds() if isinstance(remaining, timedelta) else 0.0
        return max(0.0, secs)

    def _shutdown(self, asys: Any) -> None:
        try:
            asys.tell(self.director, encode(Shutdown()))
            self._collect()
        except Exception:
            log.exception("driver: shutdown of the actor tree failed")
