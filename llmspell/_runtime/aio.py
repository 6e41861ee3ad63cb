"""``AsyncRuntime``: ``Runtime`` for asyncio applications."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from .._exceptions import MessageError, RuntimeClosed
from .._task import CoordinationResult, Handle, Progress, Strategy, Task, TaskInfo
from ..messages.types import TERMINAL, TaskOutcome
from .core import _SET_OWNER, _Core, _View
from .runtime import Runtime
from .subscription import Subscription
from .waiting import _aiter_stream, _check_return_when, _done_pending, _handle_list, _wait_time


class AsyncRuntime:
    """``Runtime`` for asyncio applications: the same calls, as coroutines.

    ``async with AsyncRuntime() as rt: h = await rt.submit(t); await rt.result(h)``.
    Waiting never blocks the event loop: answers from the actor system are
    handed to the loop with ``call_soon_threadsafe``.
    """

    _awaitable_handles = True  # ``await handle`` works on its handles

    def __init__(self, mode: str = "embedded", **config: Any) -> None:
        """Nothing starts here (``start()`` or ``async with`` does, and checks the
        options); never blocks, raises nothing."""
        self._mode = mode
        self._config = config
        self._rt: Runtime | None = None

    def _sync(self) -> Runtime:
        """The runtime a handle's blocking calls go to."""
        return self._runtime()

    async def start(self) -> AsyncRuntime:
        """Start the runtime (``Runtime(mode, **config)``) in a worker thread: waits as long as
        that takes (engines started, seconds in local mode). Raises ``RuntimeClosed`` when
        already started, and what ``Runtime(...)`` raises (``MessageError`` for a bad option)."""
        if self._rt is not None:
            raise RuntimeClosed("this AsyncRuntime was already started")
        loop = asyncio.get_running_loop()
        self._rt = await loop.run_in_executor(None, lambda: Runtime(self._mode, **self._config))
        return self

    async def __aenter__(self) -> AsyncRuntime:
        """``await start()``: awaits and raises as it does."""
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        """``await close()``: awaits as it does."""
        await self.close()

    def _runtime(self) -> Runtime:
        if self._rt is None:
            raise RuntimeClosed("start the AsyncRuntime first (async with AsyncRuntime() ...)")
        return self._rt

    async def close(self) -> None:
        """``Runtime.close`` in a worker thread: cancels what is unfinished and stops the
        actor system; awaits as long as ``Runtime.close`` blocks (up to 10 s, local mode
        longer). Idempotent; raises nothing (nothing to do before ``start``)."""
        if self._rt is not None:
            rt = self._rt
            await asyncio.get_running_loop().run_in_executor(None, rt.close)

    async def submit(self, task: Task) -> Handle:
        """``Runtime.submit`` without blocking the loop (queues at once); the handle is
        awaitable (``await h`` is ``await rt.result(h)``). Raises ``MessageError``,
        ``RuntimeClosed``, ``RuntimeDegraded`` as ``Runtime.submit``."""
        (h,) = await self.submit_many([task])
        return h

    async def submit_many(self, tasks: Iterable[Task]) -> list[Handle]:
        """``Runtime.submit_many``: all the tasks or none (queued at once, no waiting);
        awaitable handles. Raises as ``Runtime.submit_many``."""
        handles = self._runtime().submit_many(tasks)
        for h in handles:
            _SET_OWNER(h, self)  # awaitable: ``await h``
        return handles

    def _future(
        self, loop: asyncio.AbstractEventLoop, v: _View
    ) -> tuple[asyncio.Future[TaskOutcome], Callable[[TaskOutcome], None]]:
        """A future of this loop that gets the task's outcome, and the callback
        that sets it (to take off the view when nobody waits any more)."""
        fut: asyncio.Future[TaskOutcome] = loop.create_future()

        def done(o: TaskOutcome) -> None:
            def settle() -> None:
                if not fut.done():
                    fut.set_result(o)

            try:
                loop.call_soon_threadsafe(settle)
            except RuntimeError:  # that event loop is closed: nobody waits there now
                pass

        self._runtime()._core.on_done(v, done)
        return fut, done

    async def wait(
        self,
        handles: Iterable[Handle | str],
        timeout: float | None = None,
        return_when: str = "all",
    ) -> tuple[list[Handle | str], list[Handle | str]]:
        """``Runtime.wait`` as a coroutine: ``done, pending = await rt.wait(hs)``.
        Awaits until enough tasks ended or ``timeout`` ran out (not an error: see
        ``pending``) without blocking the loop; raises ``MessageError`` for bad
        arguments or an unknown task."""
        _check_return_when(return_when)
        rt = self._runtime()
        items = _handle_list(handles)
        wait = _wait_time(timeout)
        loop = asyncio.get_running_loop()
        views = await loop.run_in_executor(None, rt._views, items)
        if not views:
            return [], []
        futures = [self._future(loop, v) for v in views]
        try:
            await asyncio.wait(
                [f for f, _ in futures],
                timeout=wait,
                return_when=asyncio.ALL_COMPLETED
                if return_when == "all"
                else asyncio.FIRST_COMPLETED,
            )
        finally:
            for v, (_, cb) in zip(views, futures, strict=True):
                rt._core.off_done(v, cb)
        return _done_pending(items, views)

    def as_completed(
        self, handles: Iterable[Handle | str], timeout: float | None = None
    ) -> AsyncIterator[Handle | str]:
        """``Runtime.as_completed`` as an async iterator: ``async for h in
        rt.as_completed(hs)``; each step awaits the next task's end, and raises the
        builtin ``TimeoutError`` when ``timeout`` (over the whole iteration) runs
        out first. Bad arguments (``MessageError``) raise at the call."""
        rt = self._runtime()
        items = _handle_list(handles)
        wait = _wait_time(timeout)
        views = rt._views(items)  # a round trip only for an id this facade did not submit
        return self._as_completed(rt, items, views, wait, timeout)

    async def _as_completed(
        self,
        rt: Runtime,
        items: list[Handle | str],
        views: list[_View],
        wait: float | None,
        timeout: float | None,
    ) -> AsyncIterator[Handle | str]:
        loop = asyncio.get_running_loop()
        futures = [self._future(loop, v) for v in views]
        index = {id(f): i for i, (f, _) in enumerate(futures)}
        waiting = {f for f, _ in futures}
        deadline = None if wait is None else loop.time() + wait
        try:
            while waiting:
                left = None if deadline is None else max(0.0, deadline - loop.time())
                ended, waiting = await asyncio.wait(
                    waiting, timeout=left, return_when=asyncio.FIRST_COMPLETED
                )
                if not ended:
                    raise TimeoutError(
                        f"{len(waiting)} of {len(items)} tasks did not finish within "
                        f"{timeout} s (they are still running)"
                    )
                for i in sorted(index[id(f)] for f in ended):
                    yield items[i]
        finally:
            for v, (_, cb) in zip(views, futures, strict=True):
                rt._core.off_done(v, cb)

    async def result(self, handle: Handle | str, timeout: float | None = None) -> Any:
        """The task's value: awaits its end (up to ``timeout`` seconds, None: for ever)
        without blocking the loop. Raises what the task ended with (``TaskFailed``,
        ``TaskCancelled``, ``TaskTimeout``), the builtin ``TimeoutError`` when ``timeout``
        runs out (the task goes on), ``RuntimeDegraded``/``RuntimeClosed``."""
        rt = self._runtime()
        try:
            task_id, v = rt._core.view(handle)
        except MessageError:
            if not isinstance(handle, str):
                raise
            loop = asyncio.get_running_loop()
            task_id, v = rt._core.view(await loop.run_in_executor(None, rt._adopt, handle))
        wait = _wait_time(timeout)
        # the await never runs the actors itself (embedded: the background thread
        # does): a script's one resume may compute for up to its step budget, and
        # the event loop must go on meanwhile
        if v.outcome is not None:
            rt._core.check_degraded()
            return _Core.value_of(task_id, v.outcome)
        fut, done = self._future(asyncio.get_running_loop(), v)
        try:
            # the future is this call's own: awaited directly, with asyncio.timeout (no
            # wait_for task nor shield: each took the answer one more turn of the loop)
            if wait is None:
                outcome = await fut
            else:
                async with asyncio.timeout(wait):
                    outcome = await fut
        except TimeoutError:
            raise TimeoutError(
                f"task {task_id!r} did not finish within {timeout} s (it is still running)"
            ) from None
        finally:
            rt._core.off_done(v, done)  # a cancelled or timed-out await leaves nothing behind
        rt._core.check_degraded()  # woken because the runtime degraded
        return _Core.value_of(task_id, outcome)

    async def cancel(self, handle: Handle | str) -> bool:
        """``Runtime.cancel`` in a worker thread: True if the task had not finished (it
        ends ``cancelled``), False if it had already ended. Awaits one round trip to the
        scheduler; raises as ``Runtime.cancel``."""
        rt = self._runtime()
        return await asyncio.get_running_loop().run_in_executor(None, rt.cancel, handle)

    async def status(self, handle: Handle | str) -> str:
        """``Runtime.status`` in a worker thread (at most one round trip to the scheduler;
        none once the task's end is known here); raises as ``Runtime.status``."""
        rt = self._runtime()
        return await asyncio.get_running_loop().run_in_executor(None, rt.status, handle)

    async def is_completed(self, handle: Handle | str) -> bool:
        """True when the task has ended (``status`` is terminal); as ``status``."""
        return await self.status(handle) in TERMINAL

    async def progress(self, handle: Handle | str) -> Progress | None:
        """``Runtime.progress`` in a worker thread: the task's last progress, or None.
        Awaits one round trip to the scheduler; raises as ``Runtime.progress``."""
        rt = self._runtime()
        return await asyncio.get_running_loop().run_in_executor(None, rt.progress, handle)

    async def stats(self) -> dict[str, Any]:
        """``Runtime.stats`` in a worker thread (a round trip to each actor asked);
        raises as ``Runtime.stats``."""
        rt = self._runtime()
        return await asyncio.get_running_loop().run_in_executor(None, rt.stats)

    async def tasks(self, status: str | None = None) -> list[TaskInfo]:
        """``Runtime.tasks`` in a worker thread: awaits one round trip to the scheduler.
        Raises ``MessageError`` for an unknown ``status``, ``RuntimeClosed``."""
        rt = self._runtime()
        return await asyncio.get_running_loop().run_in_executor(None, rt.tasks, status)

    async def coordinate(
        self,
        tasks: Iterable[Task],
        strategy: Strategy | str,
        *,
        timeout: float | None = None,
        inputs: list[Any] | None = None,
    ) -> CoordinationResult:
        """``Runtime.coordinate`` in a worker thread: awaits until every task ended or
        ``timeout`` ran out (then ``timed_out`` is set; it does not raise). Raises
        ``MessageError`` for a bad strategy, timeout or inputs."""
        rt = self._runtime()
        tasks = list(tasks)
        return await asyncio.get_running_loop().run_in_executor(
            None, lambda: rt.coordinate(tasks, strategy, timeout=timeout, inputs=inputs)
        )

    async def run_workflow(
        self, path_or_dict: str | Path | Mapping[str, Any]
    ) -> CoordinationResult:
        """``Runtime.run_workflow`` in a worker thread: awaits the workflow's end.
        Raises ``MessageError`` for a malformed workflow (nothing runs then)."""
        rt = self._runtime()
        return await asyncio.get_running_loop().run_in_executor(None, rt.run_workflow, path_or_dict)

    async def emit(self, event: str, payload: Any = None) -> None:
        """``Runtime.emit``: publishes at once, no waiting. Raises ``MessageError`` for
        a bad name or payload."""
        self._runtime().emit(event, payload)

    async def register_tool(
        self,
        name: str,
        target: Any,
        schema: Mapping[str, Any] | None = None,
        *,
        description: str | None = None,
    ) -> None:
        """``Runtime.register_tool`` in a worker thread (awaits the registry's answer).
        Raises ``MessageError`` for a bad name, target or schema."""
        rt = self._runtime()
        await asyncio.get_running_loop().run_in_executor(
            None, lambda: rt.register_tool(name, target, schema, description=description)
        )

    async def register_agent(self, name: str, target: Any) -> None:
        """``Runtime.register_agent`` in a worker thread (awaits the registry's answer).
        Raises ``MessageError`` for a bad name or target."""
        rt = self._runtime()
        await asyncio.get_running_loop().run_in_executor(None, rt.register_agent, name, target)

    async def register_hook(self, point: str, target: Any) -> None:
        """``Runtime.register_hook`` in a worker thread (awaits the registry's answer).
        Raises ``MessageError`` for an unknown hook point."""
        rt = self._runtime()
        await asyncio.get_running_loop().run_in_executor(None, rt.register_hook, point, target)

    async def register_executor(self, kind: str, target: Any) -> None:
        """``Runtime.register_executor`` in a worker thread (awaits the registry's answer).
        Raises ``MessageError`` for a bad kind or target."""
        rt = self._runtime()
        await asyncio.get_running_loop().run_in_executor(None, rt.register_executor, kind, target)

    def stream(
        self, task: Task | Handle | str, *, timeout: float | None = None
    ) -> AsyncIterator[Any]:
        """``Runtime.stream`` as an async iterator: ``async for chunk in rt.stream(t)``.
        A ``Task`` is submitted at once, with the reader attached. Each chunk is awaited
        in a worker thread (the loop is never blocked); raises as ``Runtime.stream``."""
        it = self._runtime().stream(task, timeout=timeout)
        return _aiter_stream(it)

    def subscribe(self, pattern: str, *, limit: int = 1000) -> Subscription:
        """``Runtime.subscribe``: a ``Subscription`` at once (no waiting); read it with
        ``get(timeout=...)`` or iterate. Raises as ``Runtime.subscribe``.

        This one call blocks the loop, for the two round trips that make sure an
        event published after it returns is seen."""
        return self._runtime().subscribe(pattern, limit=limit)
