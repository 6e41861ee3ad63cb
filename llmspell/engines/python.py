"""The Python engine context: runs registered callables.

* A sync callable runs on one of the engine's worker threads
  (``python_threads``, default 32), so a slow one never blocks the actor.
  Calls wait for a free thread in priority order. Python cannot interrupt a
  running thread: cancelling or timing out a running sync call ends its task
  at once, and what the call returns later is dropped.
* An ``async def`` callable runs on an asyncio event loop the engine owns (one
  thread); cancelling or timing it out cancels its asyncio task
  (``CancelledError`` is raised inside it at its next ``await``).

The callable is ``"package.module:attribute.path"``, called with ``**args``
(plus ``input=`` when the task has a pipeline or dependency input). Its return
value must be msgpack data.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import heapq
import importlib
import itertools
import queue
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from .._actor import log
from .._exceptions import MessageError
from ..messages import check_data
from ..messages.types import TaskSpec
from .base import EngineActor

__all__ = ["PythonEngine", "resolve_target"]


def resolve_target(target: str) -> Callable[..., Any]:
    """Import ``"package.module:attr.path"`` and return the object it names."""
    module_name, _, path = target.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in path.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"{target!r} is not callable")
    return obj  # type: ignore[no-any-return]


class _Call:
    __slots__ = ("attempt", "fn", "future", "kwargs", "started", "sync", "task_id")

    def __init__(self, task_id: str, attempt: int, fn: Callable[..., Any],
                 kwargs: dict[str, Any]) -> None:
        self.task_id = task_id
        self.attempt = attempt
        self.fn = fn
        self.kwargs = kwargs
        self.future: concurrent.futures.Future[Any] | None = None
        self.started = 0.0
        self.sync = not asyncio.iscoroutinefunction(fn)


class PythonEngine(EngineActor):
    role = "python engine"
    engine = "python"
    default_capacity = 256

    def setup(self, config: dict[str, Any]) -> None:
        self.threads = int(config.get("python_threads", 32))
        self.pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=self.threads, thread_name_prefix="llmspell-python"
        )
        self.free = self.threads
        self.waiting: list[tuple[int, int, _Call]] = []  # (-priority, seq, call)
        self.seq = itertools.count()
        self.calls: dict[str, _Call] = {}
        self.done: queue.SimpleQueue[tuple[_Call, str, Any, Any]] = queue.SimpleQueue()
        self.targets: dict[str, Callable[..., Any]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None

    # -- starting -----------------------------------------------------------

    def start(self, spec: TaskSpec, attempt: int) -> None:
        target = spec.target or ""
        try:
            fn = self.targets.get(target)
            if fn is None:
                fn = resolve_target(target)
                self.targets[target] = fn
        except Exception as exc:
            self.report(spec.id, attempt, "failed",
                        error=self.error(f"cannot import {target!r}: {type(exc).__name__}: {exc}"))
            return
        kwargs = dict(spec.args or {})
        if spec.input is not None:
            kwargs["input"] = spec.input
        call = _Call(spec.id, attempt, fn, kwargs)
        self.calls[spec.id] = call
        if not call.sync:
            self._start_async(call)
        else:
            heapq.heappush(self.waiting, (-spec.priority, next(self.seq), call))
            self._run_waiting()

    def _run_waiting(self) -> None:
        while self.free > 0 and self.waiting:
            _, _, call = heapq.heappop(self.waiting)
            if self.calls.get(call.task_id) is not call:
                continue  # stopped while waiting for a thread
            self.free -= 1
            call.future = self.pool.submit(self._run_sync, call)
            self.work_started()

    def _run_sync(self, call: _Call) -> None:
        """Worker thread: run one sync call and queue its outcome."""
        t0 = time.thread_time()
        call.started = time.time()
        try:
            value = call.fn(**call.kwargs)
            self.done.put((call, "ok", value, time.thread_time() - t0))
        except BaseException as exc:  # report everything, even SystemExit
            self.done.put((call, "error", _describe(exc), time.thread_time() - t0))
        finally:
            self.ring()

    def _start_async(self, call: _Call) -> None:
        loop = self._ensure_loop()
        call.started = time.time()
        try:
            coro = call.fn(**call.kwargs)
        except Exception as exc:  # wrong arguments fail before a coroutine exists
            self.report(call.task_id, call.attempt, "failed",
                        error=self.error(*_describe(exc)))
            del self.calls[call.task_id]
            return
        fut = asyncio.run_coroutine_threadsafe(coro, loop)
        call.future = fut

        def finished(f: concurrent.futures.Future[Any]) -> None:
            if f.cancelled():
                self.done.put((call, "cancelled", None, 0.0))
            elif f.exception() is not None:
                self.done.put((call, "error", _describe(f.exception()), 0.0))  # type: ignore[arg-type]
            else:
                self.done.put((call, "ok", f.result(), 0.0))
            self.ring()

        fut.add_done_callback(finished)
        self.work_started()

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            loop = asyncio.new_event_loop()
            t = threading.Thread(target=loop.run_forever, name="llmspell-python-async",
                                 daemon=True)
            t.start()
            self._loop, self._loop_thread = loop, t
        return self._loop

    # -- finishing ----------------------------------------------------------

    def poll(self) -> None:
        while True:
            try:
                call, how, value, cpu = self.done.get_nowait()
            except queue.Empty:
                break
            if call.sync:
                self.free += 1  # its thread is free again
            current = self.calls.get(call.task_id)
            if current is not call:
                continue  # stopped (cancel, timeout): its outcome is already decided
            del self.calls[call.task_id]
            usage = {"cpu_seconds": cpu, "duration": time.time() - call.started}
            if how == "ok":
                try:
                    check_data(value, "result")
                except MessageError as exc:
                    self.report(call.task_id, call.attempt, "failed", usage=usage,
                                error=self.error(f"the return value is not msgpack data: {exc}"))
                    continue
                self.report(call.task_id, call.attempt, "succeeded", value, usage=usage)
            elif how == "error":
                message, tb = value
                self.report(call.task_id, call.attempt, "failed", usage=usage,
                            error=self.error(message, traceback=tb))
            else:
                self.report(call.task_id, call.attempt, "failed", usage=usage,
                            error=self.error("the coroutine was cancelled"))
        self._run_waiting()

    def busy(self) -> bool:
        return bool(self.calls)

    def stop(self, task_id: str, reason: str) -> None:
        call = self.calls.pop(task_id, None)
        if call is None or call.future is None:
            return
        fut = call.future
        if fut.cancel() and call.sync:
            self.free += 1  # never started on its thread
            self._run_waiting()

    def close(self) -> None:
        for call in list(self.calls.values()):
            if call.future is not None:
                call.future.cancel()
        self.calls.clear()
        self.pool.shutdown(wait=False, cancel_futures=True)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            if self._loop_thread is not None:
                self._loop_thread.join(timeout=2)
            if not self._loop.is_running():
                self._loop.close()
        log.debug("python engine %d closed", self.index)


def _describe(exc: BaseException) -> tuple[str, str]:
    message = f"{type(exc).__name__}: {exc}"
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return message, tb
