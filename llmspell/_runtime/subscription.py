"""``Subscription``: the events a ``Runtime.subscribe`` pattern matched, as a
bounded queue the caller reads."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from .._exceptions import RuntimeClosed
from .._task import Event
from .waiting import _wait_time

if TYPE_CHECKING:
    from .runtime import Runtime


class Subscription:
    """Events whose names match a glob pattern, from ``Runtime.subscribe``.

    Iterating yields events until the subscription is closed. The queue holds
    at most ``limit`` events; when it is full the *oldest* event is dropped and
    counted in ``dropped`` (and in ``Runtime.stats()["events"]["dropped"]``),
    so a slow reader never holds up the runtime.
    """

    def __init__(self, runtime: Runtime, sub_id: str, pattern: str, limit: int) -> None:
        import collections

        self._runtime = runtime
        self.sub_id = sub_id
        self.pattern = pattern
        self.limit = limit
        self._queue: collections.deque[Event] = collections.deque()
        self._cond = threading.Condition()
        self.dropped = 0
        self.closed = False
        self._on_event: Callable[[str, Any, float], None] | None = None

    def _deliver(self, events: list[dict[str, Any]]) -> None:
        if self._on_event is not None:  # e.g. a simulation's trace
            for e in events:
                self._on_event(str(e.get("name")), e.get("payload"), float(e.get("time") or 0.0))
            return
        with self._cond:
            for e in events:
                if len(self._queue) >= self.limit:
                    self._queue.popleft()
                    self.dropped += 1
                    self._runtime._dropped_events += 1
                self._queue.append(
                    Event(str(e.get("name")), e.get("payload"), float(e.get("time") or 0.0))
                )
            self._cond.notify_all()

    def get(self, timeout: float | None = None) -> Event:
        """The next event. Blocks until one comes or ``timeout`` seconds passed
        (None: for ever). Raises the builtin ``TimeoutError`` when none came in
        time, ``RuntimeClosed`` once closed and empty, ``MessageError`` for a
        bad ``timeout``."""
        # (a simulation runs its world here, on virtual time, until an event comes)
        wait = self._runtime._driver.run_until(
            lambda: bool(self._queue) or self.closed, _wait_time(timeout)
        )
        with self._cond:
            if not self._cond.wait_for(lambda: self._queue or self.closed, wait):
                raise TimeoutError(f"no event matching {self.pattern!r} within {timeout} s")
            if self._queue:
                return self._queue.popleft()
            raise RuntimeClosed("the subscription is closed")

    def __iter__(self) -> Iterator[Event]:
        """The events as they come (each ``next`` blocks as ``get()``), until the
        subscription is closed and empty."""
        while True:
            try:
                yield self.get()
            except RuntimeClosed:
                return

    def close(self) -> None:
        """Stop receiving events (idempotent); iteration ends once the queue is empty."""
        with self._cond:
            if self.closed:
                return
            self.closed = True
            self._cond.notify_all()
        self._runtime._unsubscribe(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
