"""What tracing costs per task, embedded (issue: Observability).

Runs, in one process and one run, 10,000 trivial Python tasks (``submit_many``
+ ``result``) through three runtimes:

* **none**: started with no tracer provider configured (the API's default
  proxy provider: tracing is off, as with the package absent; the same code
  path: ``_tracing.tracer_for`` returns None once, at start);
* **on**: the OpenTelemetry SDK as the global provider, with a
  ``BatchSpanProcessor`` over an exporter that drops every span;
* **off**: ``Runtime(tracing=False)`` with that SDK provider set.

Paired rounds (the order alternating, bench/_util.paired_rounds): the ratio
on / none (target at most 1.3x) and off / none (target: within noise).
Then the same in ``local`` mode (one Python engine process; 3 rounds), where
the spans are made in the application's process while the engines work in
theirs. Usage: ``python bench/tracing.py [N]``.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _util import paired_rounds, table
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from llmspell import Runtime, Task


class DropAll(SpanExporter):
    """An exporter that exports nothing (the SDK's own work is what is measured)."""

    def __init__(self) -> None:
        self.count = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.count += len(spans)
        return SpanExportResult.SUCCESS


def measure(provider: TracerProvider, exporter: DropAll, mode: str, n: int, rounds: int) -> None:
    config: dict[str, Any] = {"engines": {"python": 1}} if mode == "local" else {}
    trace._TRACER_PROVIDER = None  # (private) as if no provider were configured yet
    none_rt = Runtime(mode, **config)
    trace._TRACER_PROVIDER = provider
    on_rt = Runtime(mode, **config)
    off_rt = Runtime(mode, tracing=False, **config)
    assert none_rt._core.spans is None and off_rt._core.spans is None
    assert on_rt._core.spans is not None
    before = exporter.count

    def run(rt: Runtime) -> None:
        handles = rt.submit_many(
            [Task.python("tasks:add", args={"x": i, "y": 1}) for i in range(n)]
        )
        total = sum(rt.result(h, timeout=300) for h in handles)
        assert total == n * (n - 1) // 2 + n

    try:
        for rt in (none_rt, on_rt, off_rt):
            run(rt)  # warm: imports, first thread

        def run_on() -> None:  # its spans exported before the next case runs
            run(on_rt)
            provider.force_flush()

        base, on, ratios, extra = paired_rounds(
            lambda: run(none_rt), run_on, rounds, {"off": lambda: run(off_rt)}
        )
        off_ratios = [o / b for o, b in zip(extra["off"], base, strict=True)]
    finally:
        for rt in (none_rt, on_rt, off_rt):
            rt.close()
        provider.force_flush()
    spans = exporter.count - before
    assert spans >= n, spans  # the spans were made (and dropped)
    print(f"{mode}: {n} trivial python tasks, {rounds} paired rounds; {spans} spans exported")
    print("(tracing on includes flushing its spans to the exporter, so no case pays for another)")
    print(
        table(
            [
                ("case", "per task"),
                (
                    "no tracer provider (as without the package), best",
                    f"{min(base) / n * 1e6:.1f} us",
                ),
                (
                    "tracing on (SDK, batch processor, no-op exporter), best",
                    f"{min(on) / n * 1e6:.1f} us",
                ),
                ("Runtime(tracing=False), best", f"{min(extra['off']) / n * 1e6:.1f} us"),
                (
                    "on / none, median of the rounds (target <= 1.3)",
                    f"{statistics.median(ratios):.2f}x",
                ),
                ("on / none, range", f"{min(ratios):.2f}x .. {max(ratios):.2f}x"),
                (
                    "off / none, median of the rounds (target ~1.0)",
                    f"{statistics.median(off_ratios):.2f}x",
                ),
                ("off / none, range", f"{min(off_ratios):.2f}x .. {max(off_ratios):.2f}x"),
            ]
        )
    )


def sdk_alone(provider: TracerProvider, n: int) -> float:
    """Seconds per span of the SDK alone (no llmspell): start and end a span
    with a task's four attributes, then flush: the floor of tracing's cost."""
    tracer = provider.get_tracer("bench")
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for i in range(n):
            span = tracer.start_span(
                "llmspell.task python",
                attributes={
                    "llmspell.task.name": "tasks:add",
                    "llmspell.task.id": f"bench-{i}",
                    "llmspell.task.kind": "python",
                    "llmspell.task.status": "succeeded",
                },
                start_time=time.time_ns(),
            )
            span.end(end_time=time.time_ns())
        provider.force_flush()
        best = min(best, (time.perf_counter() - t0) / n)
    return best


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    exporter = DropAll()
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter, max_queue_size=100_000))
    trace.set_tracer_provider(provider)
    try:
        floor = sdk_alone(provider, n)
        print(f"the SDK alone (start + end a span of 4 attributes, flushed): {floor * 1e6:.1f} us")
        measure(provider, exporter, "embedded", n, 9)
        measure(provider, exporter, "local", n, 3)
    finally:
        provider.shutdown()


if __name__ == "__main__":
    main()
