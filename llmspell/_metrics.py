"""Metrics: ``Runtime(metrics_port=P)`` serves Prometheus text at
``http://127.0.0.1:P/metrics``.

The figures live in the actors that know them, whatever process they run in:
the scheduler counts ended tasks per kind and status, their durations and
agents' time to their first chunk, and knows the engines' running tasks,
queues and restarts; the facade counts the events its subscriptions dropped.
A scrape asks the scheduler for its figures (one ``QueryTasks(metrics=True)``)
and turns them into metric families: nothing is pushed per task, and in
``local`` mode the one scheduler already sums every engine process.

Each runtime has a ``CollectorRegistry`` of its own (never the global default
one), so two runtimes in one process never collide. Needs ``prometheus_client``
(``pip install llmspell[metrics]``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

from ._exceptions import LlmspellError

__all__ = ["MetricsServer"]


class MetricsServer:
    """The HTTP endpoint of one runtime's metrics, on 127.0.0.1 only.

    ``figures`` returns the scheduler's figures (``Scheduler._metric_figures``)
    plus ``"dropped"``; it is called on the server's thread at each scrape.
    """

    def __init__(self, port: int, figures: Callable[[], dict[str, Any]]) -> None:
        try:
            from prometheus_client import CollectorRegistry, start_http_server
        except ImportError:
            raise LlmspellError(
                "Runtime(metrics_port=...) needs the prometheus_client package: "
                "pip install 'llmspell[metrics]'"
            ) from None
        self.port = port
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(figures))
        try:
            self.server, self.thread = start_http_server(
                port, addr="127.0.0.1", registry=self.registry
            )
        except OSError as exc:
            raise LlmspellError(
                f"cannot serve metrics on 127.0.0.1:{port}: {exc.strerror or exc} "
                "(pick a free port for metrics_port)"
            ) from None
        self._closed = threading.Event()

    def close(self) -> None:
        """Stop serving (idempotent)."""
        if self._closed.is_set():
            return
        self._closed.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5.0)


class _Collector:
    """Builds the metric families from the scheduler's figures at each scrape."""

    def __init__(self, figures: Callable[[], dict[str, Any]]) -> None:
        self.figures = figures

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        f = self.figures()
        buckets = [float(b) for b in f.get("buckets") or ()]
        tasks = CounterMetricFamily(
            "llmspell_tasks", "Tasks that ended, by kind and status", labels=["kind", "status"]
        )
        for kind, status, n in f.get("tasks") or ():
            tasks.add_metric([str(kind), str(status)], float(n))
        yield tasks
        running = GaugeMetricFamily(
            "llmspell_tasks_running", "Tasks running now, by engine", labels=["engine"]
        )
        for engine, n in sorted((f.get("running") or {}).items()):
            running.add_metric([engine], float(n))
        yield running
        queued = GaugeMetricFamily(
            "llmspell_queue_depth", "Tasks ready and waiting for an engine", labels=["engine"]
        )
        for engine, n in sorted((f.get("queued") or {}).items()):
            queued.add_metric([engine], float(n))
        yield queued
        durations = HistogramMetricFamily(
            "llmspell_task_duration_seconds",
            "Time from dispatch to end of tasks that ran, by kind",
            labels=["kind"],
        )
        for kind, hist in sorted((f.get("durations") or {}).items()):
            durations.add_metric([kind], *_buckets(buckets, hist))
        yield durations
        restarts = CounterMetricFamily(
            "llmspell_engine_restarts", "Engine process restarts, by engine", labels=["engine"]
        )
        for engine, n in sorted((f.get("restarts") or {}).items()):
            restarts.add_metric([engine], float(n))
        yield restarts
        yield CounterMetricFamily(
            "llmspell_events_dropped",
            "Events dropped because a subscriber's queue was full",
            value=float(f.get("dropped") or 0),
        )
        first = HistogramMetricFamily(
            "llmspell_agent_first_chunk_seconds",
            "Time from an agent task's start to its first chunk",
        )
        if f.get("first_chunk"):
            first.add_metric([], *_buckets(buckets, f["first_chunk"]))
        yield first


def _buckets(bounds: list[float], hist: list[Any]) -> tuple[list[tuple[str, float]], float]:
    """``[counts per bucket (last: +Inf), sum]`` as cumulative Prometheus buckets."""
    counts, total = hist
    out: list[tuple[str, float]] = []
    acc = 0
    for bound, n in zip([*bounds, float("inf")], counts, strict=False):
        acc += int(n)
        out.append(("+Inf" if bound == float("inf") else repr(bound), float(acc)))
    return out, float(total)
