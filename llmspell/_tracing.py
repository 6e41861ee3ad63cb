"""Traces: every task as an OpenTelemetry span (the GenAI semantic conventions).

Where spans are made: the scheduler knows every task's life (submitted,
retried, ended) but may run in another process (``local`` mode), whose
tracer provider is not the application's. So the scheduler sends plain
*span records* (``SpanRecords``: an "open" record when a task is submitted,
a "close" one when it ends, with its retries, engine crashes and the model
requests an agent made) to the facade that asked for them (``TraceTo``), and
the facade turns them into spans through the application's global tracer
provider, with the recorded times. Parent/child: a task's span is the child
of its parent task's span (``spell.run``, a coordination's or a workflow's
members, an agent's tool calls), or of the span whose W3C ``traceparent`` it
carries (``TaskSpec.trace``: the application's current span at
``rt.submit``), so the tree holds across engines and processes.

Cost: ``tracer_for`` looks at the global tracer provider once per runtime
start; with ``Runtime(tracing=False)``, without the ``opentelemetry-api``
package, or with the API's default (proxy or no-op) provider, nothing of this
module runs per task.
"""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

from ._actor import log
from ._exceptions import error_from_outcome
from .messages.types import SpanRecords

__all__ = ["Spans", "tracer_for"]

_NS = 1_000_000_000
_RECENT = 4096  # ended spans kept to parent a child whose record comes late


def tracer_for(enabled: bool) -> Any | None:
    """The tracer to use, or None: tracing off, the API not installed, or no
    tracer provider configured (the API's default proxy or no-op provider)."""
    if not enabled:
        return None
    try:
        from opentelemetry import trace
    except ImportError:
        return None
    provider = trace.get_tracer_provider()
    if isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider)):
        return None
    from . import __version__

    return provider.get_tracer("llmspell", __version__)


def _name(kind: str, name: str | None) -> tuple[str, dict[str, Any]]:
    """A task's span name and GenAI attributes, by kind."""
    if kind == "workflow":
        label = name or "workflow"
        return f"invoke_workflow {label}", {
            "gen_ai.operation.name": "invoke_workflow",
            "gen_ai.workflow.name": label,
        }
    if kind == "agent":
        label = name or "agent"
        return f"invoke_agent {label}", {
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.agent.name": label,
        }
    if kind == "tool":
        label = name or "tool"
        return f"execute_tool {label}", {
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": label,
            "gen_ai.tool.type": "function",
        }
    attrs: dict[str, Any] = {}
    if name:
        attrs["llmspell.task.name"] = name
    return f"llmspell.task {kind}", attrs


class Spans:
    """Turns the scheduler's span records into spans (driver thread), and
    gives the current span's ``traceparent`` to submissions (any thread)."""

    def __init__(self, tracer: Any) -> None:
        from opentelemetry import trace
        from opentelemetry.context import Context
        from opentelemetry.trace import Status, StatusCode

        self.tracer = tracer
        self._trace = trace
        # local mode: the owner's lane thread and its listener thread may both
        # bring records (a restarted scheduler's first ones beside the old one's last)
        self._lock = threading.Lock()
        self._root = Context()
        self._error = Status(StatusCode.ERROR)
        self._status, self._code = Status, StatusCode
        self.open: dict[str, Any] = {}  # task id -> its span, until it ends
        self.recent: OrderedDict[str, Any] = OrderedDict()  # ended: task id -> span
        self.next_seq = 0
        self.early: dict[int, Any] = {}  # batches that overtook others
        self._last_tp: str | None = None  # the last traceparent seen, and its context
        self._last_ctx: Any = None

    # -- any thread -----------------------------------------------------------------

    def traceparent(self) -> str | None:
        """The W3C ``traceparent`` of the caller's current span, or None."""
        ctx = self._trace.get_current_span().get_span_context()
        if not ctx.is_valid:
            return None
        return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"

    @contextlib.contextmanager
    def workflow(self, name: str) -> Iterator[Any]:
        """An ``invoke_workflow`` span around a coordination or workflow the
        application runs (``rt.coordinate``, ``rt.run_workflow``), current while
        it runs so its tasks become its children."""
        with self.tracer.start_as_current_span(
            f"invoke_workflow {name}",
            attributes={"gen_ai.operation.name": "invoke_workflow", "gen_ai.workflow.name": name},
        ) as span:
            yield span

    def coordination_ended(self, span: Any, result: Any) -> None:
        """Mark the span of an application's coordination by its result."""
        span.set_attribute("llmspell.task.status", "succeeded" if result.ok else "failed")
        if not result.ok:
            span.set_status(self._status(self._code.ERROR, "the coordination did not succeed"))

    def end_all(self) -> None:
        """The runtime closed: end the spans of tasks whose end never came."""
        for task_id in list(self.open):
            span = self.open.pop(task_id)
            span.set_attribute("llmspell.task.status", "cancelled")
            span.end()

    # -- the driver thread --------------------------------------------------------

    def on_records(self, msg: SpanRecords) -> None:
        with self._lock:
            self._on_records(msg)

    def _on_records(self, msg: SpanRecords) -> None:
        if msg.seq != self.next_seq:
            if msg.seq > self.next_seq:
                self.early[msg.seq] = msg.items
            return
        self._handle(msg.items)
        self.next_seq += 1
        while self.next_seq in self.early:
            self._handle(self.early.pop(self.next_seq))
            self.next_seq += 1

    def _handle(self, items: Any) -> None:
        for item in items if isinstance(items, list) else ():
            try:
                what = item[0]
                if what == "span":
                    self._span(*item[1:13])
                elif what == "open":
                    self._open(*item[1:7])
                elif what == "close":
                    self._close(*item[1:8])
            except Exception:  # a bad record must not stop the others
                log.exception("tracing: a span record could not be handled: %r", item[:2])

    def _parent(self, parent: str | None, traceparent: str | None) -> Any:
        trace = self._trace
        if parent is not None:
            span = self.open.get(parent) or self.recent.get(parent)
            if span is not None:
                return trace.set_span_in_context(span, self._root)
        if traceparent:
            if traceparent == self._last_tp:  # a batch's tasks share their submitter's span
                return self._last_ctx
            ctx = self._root
            parts = traceparent.split("-")
            if len(parts) == 4:
                try:
                    sc = trace.SpanContext(
                        int(parts[1], 16),
                        int(parts[2], 16),
                        is_remote=True,
                        trace_flags=trace.TraceFlags(int(parts[3], 16)),
                    )
                except ValueError:
                    sc = None
                if sc is not None and sc.is_valid:
                    ctx = trace.set_span_in_context(trace.NonRecordingSpan(sc), self._root)
            self._last_tp, self._last_ctx = traceparent, ctx
            return ctx
        return self._root

    def _open(
        self,
        task_id: str,
        kind: str,
        name: str | None,
        parent: str | None,
        traceparent: str | None,
        t: float,
    ) -> None:
        """A task that has children: its span now, ended by its "close" record."""
        span_name, attrs = _name(kind, name)
        attrs["llmspell.task.id"] = task_id
        attrs["llmspell.task.kind"] = kind
        self.open[task_id] = self.tracer.start_span(
            span_name,
            context=self._parent(parent, traceparent),
            attributes=attrs,
            start_time=int(t * _NS),
        )

    def _close(
        self,
        task_id: str,
        status: str,
        t: float,
        attempts: int,
        error: dict[str, Any] | None,
        events: list[list[Any]] | None,
        children: list[list[Any]] | None,
    ) -> None:
        span = self.open.pop(task_id, None)
        if span is None:  # opened before this facade traced
            return
        span.set_attribute("llmspell.task.status", status)
        if attempts != 1:
            span.set_attribute("llmspell.task.attempts", attempts)
        self._end(task_id, span, status, t, error, events, children)

    def _span(
        self,
        task_id: str,
        kind: str,
        name: str | None,
        parent: str | None,
        traceparent: str | None,
        t0: float,
        status: str,
        t: float,
        attempts: int,
        error: dict[str, Any] | None,
        events: list[list[Any]] | None,
        children: list[list[Any]] | None,
    ) -> None:
        """A task without children: its whole span at once."""
        span_name, attrs = _name(kind, name)
        attrs["llmspell.task.id"] = task_id
        attrs["llmspell.task.kind"] = kind
        attrs["llmspell.task.status"] = status
        if attempts != 1:  # (each attribute costs the SDK a check: only the news)
            attrs["llmspell.task.attempts"] = attempts
        span = self.tracer.start_span(
            span_name,
            context=self._parent(parent, traceparent),
            attributes=attrs,
            start_time=int(t0 * _NS),
        )
        self._end(task_id, span, status, t, error, events, children)

    def _end(
        self,
        task_id: str,
        span: Any,
        status: str,
        t: float,
        error: dict[str, Any] | None,
        events: list[list[Any]] | None,
        children: list[list[Any]] | None,
    ) -> None:
        for name, at, attrs in events or ():
            span.add_event(str(name), attributes=attrs or None, timestamp=int(at * _NS))
        for child in children or ():
            self._child(span, child)
        if status in ("failed", "timed_out"):
            exc = error_from_outcome(task_id, status, error)
            span.set_attribute("error.type", type(exc).__name__)
            span.record_exception(exc, timestamp=int(t * _NS), escaped=True)
            span.set_status(self._status(self._code.ERROR, str(getattr(exc, "message", exc))))
        span.end(end_time=int(t * _NS))
        recent = self.recent
        recent[task_id] = span
        if len(recent) > _RECENT:
            recent.popitem(last=False)

    def _child(self, parent: Any, child: list[Any]) -> None:
        """A model request an agent made: ``[name, start, end, attrs, error]``."""
        name, start, end, attrs, error = (list(child) + [None] * 5)[:5]
        span = self.tracer.start_span(
            str(name),
            context=self._trace.set_span_in_context(parent, self._root),
            kind=self._trace.SpanKind.CLIENT,
            attributes=attrs or None,
            start_time=int(float(start) * _NS),
        )
        if error:
            span.set_attribute("error.type", "AgentError")
            span.set_status(self._status(self._code.ERROR, str(error)))
        span.end(end_time=int(float(end) * _NS))
