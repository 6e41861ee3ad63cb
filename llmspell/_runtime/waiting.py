"""Waiting helpers of the facades: a caller's ``timeout``, the handle list of
``wait``/``as_completed``, one-shot reply slots and the bridge from a blocking
iterator to an async one."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from typing import Any

from .._exceptions import MessageError
from .._task import Handle
from ..messages.types import TaskOutcome


def _wait_time(timeout: Any) -> float | None:
    """A caller's ``timeout`` for waiting: None (or one too long for the platform's
    waits, infinity included) waits for ever; a negative one is zero (look and go
    back, like ``threading.Event.wait``); anything but a number is a MessageError."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout != timeout:
        raise MessageError(f"must be a number of seconds or None, got {timeout!r}", where="timeout")
    if timeout >= threading.TIMEOUT_MAX:
        return None
    return max(0.0, float(timeout))


_RETURN_WHEN = ("all", "first")


def _handle_list(handles: Any) -> list[Handle | str]:
    """The handles of a ``wait``/``as_completed`` call, each task once (first
    mention kept)."""
    if isinstance(handles, (Handle, str, bytes, Mapping)) or not isinstance(handles, Iterable):
        raise MessageError(
            f"expected a list of Handles or task ids, got {type(handles).__name__}",
            where="handles",
        )
    seen: set[str] = set()
    out: list[Handle | str] = []
    for i, h in enumerate(handles):
        if not isinstance(h, (Handle, str)):
            raise MessageError(
                f"expected a Handle or task id, got {type(h).__name__}", where=f"handles[{i}]"
            )
        key = h.id if isinstance(h, Handle) else h
        if key not in seen:
            seen.add(key)
            out.append(h)
    return out


def _done_pending(
    items: list[Handle | str], views: list[Any]
) -> tuple[list[Handle | str], list[Handle | str]]:
    """``wait``'s answer: the items whose task ended, and the others, each in
    the order given (``views``: their ``_View``s, one per item)."""
    done = [h for h, v in zip(items, views, strict=True) if v.outcome is not None]
    pending = [h for h, v in zip(items, views, strict=True) if v.outcome is None]
    return done, pending


def _check_return_when(return_when: Any) -> None:
    if return_when not in _RETURN_WHEN:
        raise MessageError(f"must be 'all' or 'first', got {return_when!r}", where="return_when")


class _Waiter:
    """A one-shot reply slot for a blocking request."""

    __slots__ = ("event", "lost", "msg", "what")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.msg: Any = None
        self.lost = ""  # why no answer comes: the process asked died (local mode)
        self.what: tuple[str, int] = ("", 0)  # a coordination's strategy and size

    def __call__(self, msg: Any) -> None:
        self.msg = msg
        self.event.set()


class _Report:
    """An ``on_done`` callback that puts its index on a queue (``as_completed``)."""

    __slots__ = ("index", "queue")

    def __init__(self, queue: Any, index: int) -> None:
        self.queue = queue
        self.index = index

    def __call__(self, _o: TaskOutcome) -> None:
        self.queue.put(self.index)


async def _aiter_stream(it: Iterator[Any]) -> AsyncIterator[Any]:
    loop = asyncio.get_running_loop()
    end = object()
    try:
        while True:
            chunk = await loop.run_in_executor(None, next, it, end)
            if chunk is end:
                return
            yield chunk
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            await loop.run_in_executor(None, close)
