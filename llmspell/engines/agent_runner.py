"""Agent tasks on the python engine: driving ``run(input)`` or ``stream(input)``.

An agent target names an object (or a class made with no arguments) with
``async def run(input)`` / ``def run(input)``, or ``stream(input)``: a sync
or async generator yielding chunks

* ``{"type": "content", "text": str}``: part of the answer;
* ``{"type": "tool_call", "name": str, "params": dict}`` (optional
  ``"timeout"``, default 30 s): the runtime runs the registered tool as a
  tool task and sends its result back as the value of that ``yield``
  (``asend``/``send``); a tool that fails is thrown into the generator as
  ``TaskFailed`` (the agent may catch it; if not, the agent task fails);
* ``{"type": "metadata", ...}``: merged into the result's ``metadata``.

Anything else fails the task naming the chunk. The result is ``{"content":
all text, "tool_calls": [{"name", "params", "result"}] ("error" instead of
"result" for a failed tool), "metadata": {..., "resource_usage": {...}}}``;
``run`` returning a str gives that as ``content``, a dict with those keys is
taken as the result, anything else lands in ``metadata["value"]``.

Execution (``Task.agent(..., execution=...)``):

* ``single``: driven on the engine's asyncio loop (a sync ``stream`` or
  ``run`` then blocks that loop while it computes);
* ``threaded``: driven on a thread of its own (an async agent gets an event
  loop of its own there);
* ``distributed``: like ``threaded``, on whichever python engine process the
  scheduler picked (the least loaded one in ``local`` mode);
* ``streaming`` (the default when the target has ``stream``): where the
  agent's kind says (async: the engine loop; sync: a thread), and every chunk
  is relayed to the task's consumer (``StreamChunks`` through the
  scheduler). At most ``buffer_size`` (default 16) chunks are in flight: the
  generator is not resumed while ``produced - acknowledged >= buffer_size``,
  so a slow consumer holds the producer (``StreamAck`` releases it).

Without ``execution`` a ``stream`` agent streams; a ``run`` agent is
``single`` when ``run`` is async, ``threaded`` when it is sync. Every mode
counts chunks in ``progress()`` (``completed_steps``).

Limits: ``cpu_seconds`` (CPU time of the agent's own steps) is checked after
every step: ``kill`` fails the task (kind "resource"), ``warn`` publishes
``llmspell.resource.warn`` once, ``throttle`` parks the generator between
chunks until the resource tracker grants it to go on.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import queue
import threading
import time
import traceback
from collections.abc import Callable
from contextvars import Token
from typing import TYPE_CHECKING, Any

from .._clock import now
from .._context import _AGENT, _METER, AgentContext, Meter
from .._exceptions import MessageError, TaskFailed, error_from_outcome
from .._imports import import_target
from ..messages import check_data
from ..messages.ids import new_task_id
from ..messages.types import (
    CancelTasks,
    ProgressReport,
    StreamChunks,
    TaskOutcome,
    TaskSpec,
)
from . import _doorbell
from .limits import Limit, judge

if TYPE_CHECKING:
    from .python import PythonEngine

__all__ = ["DEFAULT_BUFFER", "TOOL_TIMEOUT", "AgentRunner", "Timed"]

DEFAULT_BUFFER = 16
TOOL_TIMEOUT = 30.0


class _Stopped(Exception):
    """The run was stopped (cancel, timeout, engine closing)."""


class _LimitKill(Exception):
    """The run went over a ``Limits`` with ``on_exceed="kill"``."""


class AgentProtocolError(Exception):
    """The agent broke the chunk protocol."""


class Timed:
    """An awaitable that awaits ``aw`` and adds the CPU time of each of its
    steps (on the thread running them) to ``meter``; other coroutines that run
    while it waits are not counted. ``gate`` (optional) is called before each
    step and may return an awaitable to wait on first (throttling)."""

    __slots__ = ("aw", "gate", "meter")

    def __init__(self, aw: Any, meter: Meter, gate: Callable[[], Any] | None = None) -> None:
        self.aw = aw
        self.meter = meter
        self.gate = gate

    def __await__(self) -> Any:
        it = self.aw.__await__()
        clock = time.thread_time
        value: Any = None
        exc: BaseException | None = None
        while True:
            if self.gate is not None:
                hold = self.gate()
                if hold is not None:
                    yield from hold.__await__()
            t0 = clock()
            try:
                y = it.throw(exc) if exc is not None else it.send(value)
            except StopIteration as stop:
                self.meter.add_cpu(clock() - t0)
                return stop.value
            except BaseException:
                self.meter.add_cpu(clock() - t0)
                raise
            self.meter.add_cpu(clock() - t0)
            try:
                value = yield y
                exc = None
            except GeneratorExit:
                it.close()
                raise
            except BaseException as e:
                value, exc = None, e


def _describe(exc: BaseException) -> tuple[str, str]:
    message = f"{type(exc).__name__}: {exc}"
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return message, tb


def _resolve_agent(target: str | None, factory: str | None, kwargs: dict[str, Any]) -> Any:
    path = factory or target or ""
    module_name, _, attrs = path.partition(":")
    if not module_name or not attrs:
        raise MessageError(f"an agent target is 'module:attribute', got {path!r}")
    obj = import_target(path)
    if factory is not None:
        return obj(**kwargs)
    if isinstance(obj, type):
        return obj()
    return obj


class _Run:
    """One agent task being driven. Fields marked (lock) are shared between
    the driving thread/loop and the engine actor's thread."""

    def __init__(self, spec: TaskSpec, attempt: int, agent: Any, name: str) -> None:
        options = spec.options or {}
        self.task_id = spec.id
        self.attempt = attempt
        self.name = name
        self.agent = agent
        self.input = spec.input if spec.input is not None else spec.payload  # deps, pipeline
        self.buffer = int(options.get("buffer_size") or DEFAULT_BUFFER)
        self.tools: dict[str, Any] = dict(options.get("tools") or {})
        # an agent's CPU is limited (its memory cannot be told from the process's)
        self.limit = Limit.of({**(spec.limits or {}), "memory_bytes": None})
        self.execution = str(options.get("execution") or "")
        self.streaming = False
        self.meter = Meter()
        self.started = now()
        self.cond = threading.Condition()
        self.waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self.runtime_id = ""  # the engine's runtime (for _doorbell.hold), set by start
        self.holding = False  # (lock) counted as real-time work now
        self.finished = False  # (lock) _drive ended, or never will
        self.produced = 0  # chunks yielded so far
        self.first_chunk: float | None = None  # seconds from start to the first chunk
        self.acked = 0  # (lock) chunks the consumer took
        self.stopped = False  # (lock)
        self.parked = False  # (lock) throttled, waiting for a grant
        self.results: dict[str, TaskOutcome] = {}  # (lock) tool task id -> outcome
        self.children: set[str] = set()  # tool tasks not ended (engine thread)
        self.tool_usage: list[dict[str, Any]] = []
        self.content: list[str] = []
        self.tool_calls: list[dict[str, Any]] = []
        self.metadata: dict[str, Any] = {}
        self.future: Any = None
        self.thread: threading.Thread | None = None

    # -- waking (any thread) --------------------------------------------------------

    def notify(self) -> None:
        with self.cond:
            self.cond.notify_all()
            waiters, self.waiters = self.waiters, []
        for loop, fut in waiters:
            loop.call_soon_threadsafe(_settle, fut)

    async def wait(self, ready: Callable[[], bool]) -> None:
        """Wait until ``ready()`` (checked under the lock) or the run is stopped.
        Meanwhile the agent's own code is not running: it waits on the runtime."""
        loop = asyncio.get_running_loop()
        while True:
            with self.cond:
                if self.stopped:
                    raise _Stopped
                if ready():
                    return
                fut: asyncio.Future[None] = loop.create_future()
                self.waiters.append((loop, fut))
            self.hold(False)
            try:
                await fut
            finally:
                self.hold(True)

    def hold(self, running: bool) -> None:
        """Count this run's own code as running in real time, or not (see
        ``_doorbell.hold``: a simulation waits for such work before it moves its
        clock on). Idempotent; after ``hold(False)`` from ``_drive``'s end it stays off."""
        if not self.runtime_id:
            return
        with self.cond:
            if running == self.holding or (running and self.finished):
                return
            self.holding = running
        (_doorbell.hold if running else _doorbell.release)(self.runtime_id)

    # -- the result -------------------------------------------------------------------

    def usage(self) -> dict[str, Any]:
        usage: dict[str, Any] = {
            "cpu_seconds": self.meter.cpu_seconds,
            "duration": now() - self.started,
        }
        usage.update(self.meter.usage())
        for u in self.tool_usage:  # the tools it called count as its work
            usage["cpu_seconds"] += float(u.get("cpu_seconds") or 0.0)
            for key in ("network_bytes_sent", "network_bytes_received"):
                if u.get(key):
                    usage[key] = int(usage.get(key, 0)) + int(u[key])
        return usage

    def result(self) -> dict[str, Any]:
        metadata = dict(self.metadata)
        metadata["resource_usage"] = self.usage()
        return {
            "content": "".join(self.content),
            "tool_calls": self.tool_calls,
            "metadata": metadata,
        }


def _settle(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class AgentRunner:
    """The agent part of a ``PythonEngine``: one ``_Run`` per agent task.

    Driving happens on the engine's asyncio loop or on threads; everything
    that must reach other actors goes through ``self.events`` and is sent by
    ``poll()`` on the actor's thread.
    """

    def __init__(self, engine: PythonEngine) -> None:
        self.engine = engine
        self.runs: dict[str, _Run] = {}
        self.children: dict[str, _Run] = {}  # tool task id -> its agent run
        self.events: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self.agents: dict[str, Any] = {}  # resolved agent objects, by target
        # task id -> (first seq, attempt, chunks)
        self.chunks: dict[str, tuple[int, int, list[Any]]] = {}
        self.counts: dict[str, int] = {}  # task id -> chunks so far (progress to report)

    # -- engine thread: starting and stopping ---------------------------------------

    def start(self, spec: TaskSpec, attempt: int) -> None:
        options = spec.options or {}
        factory = options.get("factory")
        key = json.dumps([spec.target, factory, options.get("kwargs")], sort_keys=True)
        try:
            agent = self.agents.get(key)
            if agent is None:
                agent = self.agents[key] = _resolve_agent(
                    spec.target, factory, dict(options.get("kwargs") or {})
                )
        except Exception as exc:
            message, tb = _describe(exc)
            self._fail(spec.id, attempt, f"cannot load agent {spec.name!r}: {message}", tb)
            return
        stream = getattr(agent, "stream", None)
        run_fn = getattr(agent, "run", None)
        if not callable(stream) and not callable(run_fn):
            self._fail(
                spec.id,
                attempt,
                f"agent {spec.name!r} has neither stream(input) nor run(input)",
            )
            return
        run = _Run(spec, attempt, agent, spec.name or "")
        run.runtime_id = getattr(self.engine, "runtime_id", "")
        run.hold(True)  # its own code runs in real time until it waits on the runtime
        is_async = (
            inspect.isasyncgenfunction(stream)
            if callable(stream)
            else inspect.iscoroutinefunction(run_fn)
        )
        execution = run.execution or ("streaming" if callable(stream) else "")
        run.streaming = execution == "streaming" and callable(stream)
        on_thread = execution in ("threaded", "distributed") or (
            execution in ("", "streaming") and not is_async
        )
        self.runs[run.task_id] = run
        if on_thread:
            t = threading.Thread(
                target=self._thread_main, args=(run,), name="llmspell-agent", daemon=True
            )
            run.thread = t
            t.start()
        else:
            loop = self.engine._ensure_loop()
            run.future = asyncio.run_coroutine_threadsafe(self._drive(run), loop)
        self.engine.work_started()

    def stop(self, task_id: str) -> None:
        run = self.runs.pop(task_id, None)
        if run is None:
            return
        with run.cond:
            run.stopped = True
        run.notify()
        if run.future is not None and run.future.cancel():
            run.hold(False)  # cancelled before _drive began: it never will
            with run.cond:
                run.finished = True
        self._drop_children(run, "the agent task ended")

    def close(self) -> None:
        for task_id in list(self.runs):
            self.stop(task_id)

    def busy(self) -> bool:
        return bool(self.runs)

    def _fail(
        self,
        task_id: str,
        attempt: int,
        message: str,
        tb: str = "",
        kind: str = "failed",
        usage: dict[str, Any] | None = None,
    ) -> None:
        self.engine.report(
            task_id,
            attempt,
            "failed",
            error=self.engine.error(message, kind=kind, traceback=tb),
            usage=usage,
        )

    def _drop_children(self, run: _Run, reason: str) -> None:
        if run.children:
            ids = sorted(run.children)
            for c in ids:
                self.children.pop(c, None)
            run.children.clear()
            if self.engine.scheduler is not None:
                self.engine.send_msg(self.engine.scheduler, CancelTasks(ids, reason))

    # -- engine thread: messages in ----------------------------------------------------

    def on_outcomes(self, items: list[TaskOutcome]) -> bool:
        """Tool tasks ended; True if any of them was ours."""
        mine = False
        for o in items:
            run = self.children.pop(o.task_id, None)
            if run is None:
                continue
            mine = True
            run.children.discard(o.task_id)
            if o.usage:
                run.tool_usage.append(o.usage)
            with run.cond:
                run.results[o.task_id] = o
            run.notify()
        return mine

    def on_ack(self, task_id: str, seq: int) -> None:
        run = self.runs.get(task_id)
        if run is None:
            return
        with run.cond:
            if seq > run.acked:
                run.acked = seq
        run.notify()

    def on_grant(self, task_id: str, attempt: int) -> None:
        run = self.runs.get(task_id)
        if run is None or run.attempt != attempt:
            return
        with run.cond:
            run.parked = False
            if run.limit is not None:
                run.limit.parked = False
                run.limit.cpu_at_grant = run.meter.cpu_seconds
        run.notify()

    def poll(self) -> None:
        """Send what the drivers queued (engine thread)."""
        if self.events.empty() and not self.counts:  # the usual: no agent runs
            return
        engine = self.engine
        while True:
            try:
                ev = self.events.get_nowait()
            except queue.Empty:
                break
            what: str = ev[0]
            run: _Run = ev[1]
            if self.runs.get(run.task_id) is not run:
                continue  # stopped: its end was decided elsewhere
            if what == "chunk":
                seq, chunk = ev[2], ev[3]
                self.counts[run.task_id] = seq + 1
                if run.streaming:
                    held = self.chunks.get(run.task_id)
                    if held is None or held[1] != run.attempt:
                        held = self.chunks[run.task_id] = (seq, run.attempt, [])
                    held[2].append(chunk)
            elif what == "tool":
                spec = ev[2]
                self.children[spec.id] = run
                run.children.add(spec.id)
                engine.submit_child(spec)
                engine.watch(spec.id)
            elif what == "park":
                resource, used, limit, step = ev[2], ev[3], ev[4], ev[5]
                assert run.limit is not None  # only a run with limits parks
                if not engine.park(
                    run.task_id, run.attempt, run.limit, resource, used, limit, step
                ):
                    self.on_grant(run.task_id, run.attempt)
            elif what == "warn":
                engine.publish("llmspell.resource.warn", ev[2])
            elif what == "done":
                status, value, error = ev[2], ev[3], ev[4]
                del self.runs[run.task_id]
                self._drop_children(run, "the agent task ended")
                usage = run.usage()
                usage["chunks"] = run.produced  # the final count, whatever overtakes what
                if run.first_chunk is not None:  # for metrics; the scheduler takes it off
                    usage["first_chunk"] = run.first_chunk
                if run.meter.spans:  # model requests, for traces; the scheduler takes them off
                    usage["spans"] = run.meter.spans
                if run.streaming:  # readers know how many chunks to wait for
                    usage["streamed"] = run.produced
                self._progress(run)
                if status == "succeeded":
                    engine.report(run.task_id, run.attempt, "succeeded", value, usage=usage)
                else:
                    message, tb, kind = error
                    self._fail(run.task_id, run.attempt, message, tb, kind, usage)
        for task_id in list(self.counts):
            live = self.runs.get(task_id)
            if live is not None:
                self._progress(live)
            else:
                self.counts.pop(task_id, None)

    def _progress(self, run: _Run) -> None:
        n = self.counts.pop(run.task_id, None)
        if n is None:
            return
        self.engine.report_progress(
            ProgressReport(
                run.task_id,
                completed_steps=float(n),
                current_operation=f"agent {run.name}: {n} chunks",
                usage=run.usage(),
            )
        )

    def take_chunks(self) -> list[StreamChunks]:
        """The chunks to relay, one message per streaming task (engine thread)."""
        if not self.chunks:
            return []
        out = [
            StreamChunks(task_id, seq, chunks, attempt)
            for task_id, (seq, attempt, chunks) in self.chunks.items()
        ]
        self.chunks = {}
        return out

    def _post(self, *event: Any) -> None:
        self.events.put(event)
        self.engine.ring()

    # -- driving (loop or thread) --------------------------------------------------------

    def _thread_main(self, run: _Run) -> None:
        try:
            asyncio.run(self._drive(run))
        except BaseException:  # pragma: no cover - _drive reports everything itself
            pass

    async def _drive(self, run: _Run) -> None:
        meter_token: Token[Meter | None] = _METER.set(run.meter)
        agent_token: Token[AgentContext | None] = _AGENT.set(
            AgentContext(run.task_id, run.tools, run.attempt)
        )
        try:
            value = await self._agent(run)
            check_data(value, "result")
            self._post("done", run, "succeeded", value, None)
        except (_Stopped, asyncio.CancelledError):
            pass
        except _LimitKill as exc:
            self._post("done", run, "failed", None, (str(exc), "", "resource"))
        except TaskFailed as exc:  # a tool failure the agent did not catch
            self._post("done", run, "failed", None, (f"{exc}", exc.traceback, "failed"))
        except BaseException as exc:
            message, tb = _describe(exc)
            self._post("done", run, "failed", None, (message, tb, "failed"))
        finally:
            try:
                _AGENT.reset(agent_token)
                _METER.reset(meter_token)
            except ValueError:  # closed by the garbage collector: its engine died
                pass
            run.hold(False)  # after its end was posted (and the bell rung)
            with run.cond:
                run.finished = True

    async def _agent(self, run: _Run) -> Any:
        agent = run.agent
        stream = getattr(agent, "stream", None)
        if not callable(stream):
            r = agent.run(run.input)
            if inspect.isawaitable(r):
                r = await Timed(r, run.meter)
            return _run_result(r, run)
        gen = stream(run.input)
        if inspect.isasyncgen(gen):
            try:
                value: Any = None
                exc: BaseException | None = None
                while True:
                    await self._gate(run)
                    try:
                        if exc is not None:
                            chunk = await Timed(gen.athrow(exc), run.meter)
                        else:
                            chunk = await Timed(gen.asend(value), run.meter)
                    except StopAsyncIteration:
                        break
                    self._check_limits(run)
                    value, exc = await self._chunk(run, chunk)
            finally:
                await gen.aclose()
        elif inspect.isgenerator(gen):
            clock = time.thread_time
            try:
                value = None
                exc = None
                while True:
                    await self._gate(run)
                    t0 = clock()
                    try:
                        chunk = gen.throw(exc) if exc is not None else gen.send(value)
                    except StopIteration:
                        break
                    finally:
                        run.meter.add_cpu(clock() - t0)
                    self._check_limits(run)
                    value, exc = await self._chunk(run, chunk)
            finally:
                gen.close()
        else:
            raise AgentProtocolError(
                f"agent {run.name!r}: stream(input) must be a generator or an async generator, "
                f"got {type(gen).__name__}"
            )
        return run.result()

    async def _gate(self, run: _Run) -> None:
        """Before resuming the generator: not stopped, not parked, and (streaming)
        fewer than ``buffer`` chunks in flight."""
        if run.streaming:
            await run.wait(lambda: not run.parked and run.produced - run.acked < run.buffer)
        else:
            await run.wait(lambda: not run.parked)

    def _check_limits(self, run: _Run) -> None:
        lim = run.limit
        if lim is None:
            return
        used = run.meter.cpu_seconds
        v = judge(lim, lim.over(used, None), task_id=run.task_id, engine="python",
                  what="agent task")  # fmt: skip
        if v.action == "kill":
            raise _LimitKill(v.message)
        for payload in v.warnings:
            self._post("warn", run, payload)
        if v.action == "park":
            with run.cond:  # park until the tracker grants
                run.parked = True
            _, used, limit = v.over[0]
            self._post("park", run, "cpu_seconds", used, limit, used - lim.cpu_at_grant)

    async def _chunk(self, run: _Run, chunk: Any) -> tuple[Any, BaseException | None]:
        """Handle one chunk; returns the value to send back (or an exception to throw)."""
        kind = chunk.get("type") if isinstance(chunk, dict) else None
        if kind == "content":
            text = chunk.get("text")
            if not isinstance(text, str):
                raise AgentProtocolError(
                    f"agent {run.name!r}: a content chunk needs 'text' (a str), got {chunk!r}"
                )
            run.content.append(text)
            self._emit(run, chunk)
            return None, None
        if kind == "metadata":
            run.metadata.update({k: v for k, v in chunk.items() if k != "type"})
            self._emit(run, chunk)
            return None, None
        if kind == "tool_call":
            return await self._tool_call(run, chunk)
        raise AgentProtocolError(
            f"agent {run.name!r} yielded {chunk!r}: a chunk is a dict whose 'type' is "
            "'content', 'tool_call' or 'metadata'"
        )

    async def _tool_call(
        self, run: _Run, chunk: dict[str, Any]
    ) -> tuple[Any, BaseException | None]:
        name, params = chunk.get("name"), chunk.get("params")
        if params is None:
            params = {}
        if not isinstance(name, str) or not name or not isinstance(params, dict):
            raise AgentProtocolError(
                f"agent {run.name!r}: a tool_call chunk needs 'name' (a str) and 'params' "
                f"(a dict), got {chunk!r}"
            )
        timeout = chunk.get("timeout", TOOL_TIMEOUT)
        self._emit(run, {"type": "tool_call", "name": name, "params": params})
        spec = TaskSpec(
            id=new_task_id(),
            kind="tool",
            name=name,
            payload=params,
            timeout=float(timeout) if timeout else None,
            parent=run.task_id,
        )
        self._post("tool", run, spec)
        await run.wait(lambda: spec.id in run.results)
        with run.cond:
            o = run.results.pop(spec.id)
        if o.status == "succeeded":
            run.tool_calls.append({"name": name, "params": params, "result": o.value})
            self._emit(run, {"type": "tool_result", "name": name, "result": o.value})
            return o.value, None
        err = error_from_outcome(spec.id, o.status, o.error)
        message = str(getattr(err, "message", err))
        run.tool_calls.append({"name": name, "params": params, "error": message})
        self._emit(run, {"type": "tool_result", "name": name, "error": message})
        failure = TaskFailed(
            f"tool {name!r} {'failed' if o.status == 'failed' else o.status}: {message}",
            task_id=spec.id,
            engine=str((o.error or {}).get("engine", "runtime")),
        )
        return None, failure

    def _emit(self, run: _Run, chunk: dict[str, Any]) -> None:
        check_data(chunk, "chunk")
        seq = run.produced
        run.produced += 1
        if seq == 0:
            run.first_chunk = now() - run.started
        self._post("chunk", run, seq, chunk)


def _run_result(r: Any, run: _Run) -> dict[str, Any]:
    """What ``run(input)`` returned, as an agent result."""
    if isinstance(r, str):
        run.content.append(r)
        return run.result()
    if isinstance(r, dict) and set(r) & {"content", "tool_calls", "metadata"}:
        content = r.get("content")
        if content is not None:
            run.content.append(str(content))
        run.tool_calls.extend(r.get("tool_calls") or [])
        run.metadata.update(r.get("metadata") or {})
        return run.result()
    if r is not None:
        run.metadata["value"] = r
    return run.result()
