"""Observability: tasks as OpenTelemetry spans (GenAI conventions), Prometheus
metrics, ``rt.tasks()``, script output on the ``llmspell.script`` logger.

Spans are checked with the SDK's in-memory exporter, set as the global tracer
provider for one test at a time (and taken away after it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from conftest import SCRIPT_PYTHON
from fake_openai import FakeOpenAI
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from opentelemetry.util._once import Once
from prometheus_client.parser import text_string_to_metric_families

from llmspell import (
    AsyncRuntime,
    LlmspellError,
    MessageError,
    Runtime,
    Task,
    TaskFailed,
    TaskInfo,
)
from llmspell._driver import free_port
from llmspell.agents import OpenAIChat

WAIT = 30


@pytest.fixture
def exporter(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    exp = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exp))
    monkeypatch.setattr(trace, "_TRACER_PROVIDER_SET_ONCE", Once())
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", None)
    trace.set_tracer_provider(provider)
    try:
        yield exp
    finally:
        provider.shutdown()


def spans_when(
    exp: InMemorySpanExporter, ready: Callable[[list[ReadableSpan]], bool]
) -> list[ReadableSpan]:
    """The finished spans once ``ready`` holds (span records may arrive just
    after a result); fails after WAIT seconds."""
    deadline = time.monotonic() + WAIT
    while True:
        spans = list(exp.get_finished_spans())
        if ready(spans):
            return spans
        assert time.monotonic() < deadline, [s.name for s in spans]
        time.sleep(0.02)


def by_task(spans: list[ReadableSpan]) -> dict[str, ReadableSpan]:
    return {
        str(s.attributes["llmspell.task.id"]): s
        for s in spans
        if s.attributes and "llmspell.task.id" in s.attributes
    }


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


@pytest.fixture(params=["embedded", pytest.param("local", marks=pytest.mark.slow)])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def make_rt(mode: str, **config: Any) -> Runtime:
    if mode == "local":
        return Runtime("local", workers=1, script_python=SCRIPT_PYTHON, **config)
    return Runtime(script_python=SCRIPT_PYTHON, **config)


# -- traces -------------------------------------------------------------------------


CHAIN = (
    "return spell.run({lang='js', code="
    '\'return await spell.run({lang: "python", target: "targets:add", args: {x: 40, y: 2}})\'})'
)


def test_a_chain_lua_js_python_is_one_trace_under_the_apps_span(
    exporter: InMemorySpanExporter, mode: str
) -> None:
    with make_rt(mode) as rt:
        app = trace.get_tracer("app")
        with app.start_as_current_span("request") as root:
            h = rt.submit(Task.lua(CHAIN))
            assert rt.result(h, timeout=WAIT) == 42
        spans = spans_when(exporter, lambda ss: len(by_task(ss)) == 3)
    tasks = by_task(spans)
    lua = tasks[h.id]
    (js,) = [s for s in tasks.values() if s.attributes["llmspell.task.kind"] == "js"]
    (py,) = [s for s in tasks.values() if s.attributes["llmspell.task.kind"] == "python"]
    assert (lua.name, js.name, py.name) == (
        "llmspell.task lua",
        "llmspell.task js",
        "llmspell.task python",
    )
    # one trace: the app's span -> lua -> js -> python, across engines (and processes)
    root_ctx = root.get_span_context()
    assert {s.context.trace_id for s in (lua, js, py)} == {root_ctx.trace_id}
    assert parent_of(lua) == root_ctx.span_id
    assert parent_of(js) == lua.context.span_id
    assert parent_of(py) == js.context.span_id
    for s in (lua, js, py):
        assert s.attributes["llmspell.task.status"] == "succeeded"
        assert s.status.status_code is StatusCode.UNSET
        assert s.start_time <= s.end_time
    assert py.attributes["llmspell.task.name"] == "targets:add"


def test_a_failed_task_has_error_status_and_its_exception(
    exporter: InMemorySpanExporter, mode: str
) -> None:
    with make_rt(mode) as rt:
        h = rt.submit(Task.lua("error('boom')"))
        with pytest.raises(TaskFailed):
            rt.result(h, timeout=WAIT)
        t = rt.submit(Task.lua("spell.sleep(5)", timeout=0.05))
        with pytest.raises(LlmspellError):
            rt.result(t, timeout=WAIT)
        spans = spans_when(exporter, lambda ss: {h.id, t.id} <= by_task(ss).keys())
    failed, timed_out = by_task(spans)[h.id], by_task(spans)[t.id]
    assert failed.status.status_code is StatusCode.ERROR
    assert "boom" in (failed.status.description or "")
    assert failed.attributes["llmspell.task.status"] == "failed"
    assert failed.attributes["error.type"] == "ScriptError"
    (event,) = [e for e in failed.events if e.name == "exception"]
    assert "boom" in str(event.attributes["exception.message"])
    assert timed_out.attributes["llmspell.task.status"] == "timed_out"
    assert timed_out.status.status_code is StatusCode.ERROR


def test_a_retry_is_an_event_on_the_tasks_span(exporter: InMemorySpanExporter) -> None:
    with Runtime(retry_backoff=0) as rt:
        h = rt.submit(
            Task.python("targets:flaky", args={"key": "obs-retry", "failures": 1}, retries=2)
        )
        assert rt.result(h, timeout=WAIT) == 2
        spans = spans_when(exporter, lambda ss: h.id in by_task(ss))
    span = by_task(spans)[h.id]
    retries = [e for e in span.events if e.name == "llmspell.task.retry"]
    assert len(retries) == 1
    assert retries[0].attributes["attempt"] == 1
    assert span.attributes["llmspell.task.attempts"] == 2
    assert span.status.status_code is StatusCode.UNSET


def test_a_workflow_is_an_invoke_workflow_span_over_its_steps(
    exporter: InMemorySpanExporter,
) -> None:
    wf = {
        "name": "greeting",
        "strategy": "sequential",
        "steps": [
            {"id": "a", "lang": "lua", "code": "return 1"},
            {"id": "b", "lang": "js", "code": "return 2"},
        ],
    }
    with Runtime() as rt:
        result = rt.run_workflow(wf)
        assert result.ok
        h = rt.submit(Task.workflow(wf))
        assert rt.result(h, timeout=WAIT)["ok"]
        spans = spans_when(exporter, lambda ss: len(by_task(ss)) == 5)
    top = [s for s in spans if s.name == "invoke_workflow greeting" and parent_of(s) is None]
    assert len(top) == 2  # the application's run_workflow, and the workflow task
    for s in top:
        assert s.attributes["gen_ai.operation.name"] == "invoke_workflow"
        assert s.attributes["gen_ai.workflow.name"] == "greeting"
        steps = [x for x in spans if parent_of(x) == s.context.span_id]
        assert sorted(x.name for x in steps) == ["llmspell.task js", "llmspell.task lua"]


def test_an_agents_chat_and_tool_spans_are_under_its_invoke_agent_span(
    exporter: InMemorySpanExporter, mode: str
) -> None:
    with FakeOpenAI() as server, make_rt(mode) as rt:
        server.reply(
            tool_call=("weather", {"city": "Oslo"}),
            usage={"prompt_tokens": 11, "completion_tokens": 3},
        )
        server.reply("21 degrees in Oslo.", usage={"prompt_tokens": 20, "completion_tokens": 5})
        rt.register_tool("weather", "agent_targets:weather")
        rt.register_agent("helper", OpenAIChat(server.base_url, "fake-model", tools=["weather"]))
        h = rt.submit(Task.agent("helper", "weather in Oslo?"))
        assert rt.result(h, timeout=WAIT)["content"] == "21 degrees in Oslo."
        spans = spans_when(exporter, lambda ss: h.id in by_task(ss))
    agent = by_task(spans)[h.id]
    assert agent.name == "invoke_agent helper"
    assert agent.attributes["gen_ai.operation.name"] == "invoke_agent"
    assert agent.attributes["gen_ai.agent.name"] == "helper"
    children = [s for s in spans if parent_of(s) == agent.context.span_id]
    chats = sorted((s for s in children if s.name == "chat fake-model"), key=lambda s: s.start_time)
    tools = [s for s in children if s.name == "execute_tool weather"]
    assert len(chats) == 2 and len(tools) == 1
    assert [c.attributes["gen_ai.usage.input_tokens"] for c in chats] == [11, 20]
    assert [c.attributes["gen_ai.usage.output_tokens"] for c in chats] == [3, 5]
    assert chats[0].attributes["gen_ai.request.model"] == "fake-model"
    assert chats[0].attributes["gen_ai.operation.name"] == "chat"
    assert chats[0].kind is trace.SpanKind.CLIENT
    assert tools[0].attributes["gen_ai.tool.name"] == "weather"
    assert tools[0].attributes["gen_ai.operation.name"] == "execute_tool"
    # the tool ran between the two model requests
    assert chats[0].end_time <= tools[0].end_time <= chats[1].end_time


def test_tracing_false_and_no_provider_make_no_spans(exporter: InMemorySpanExporter) -> None:
    with Runtime(tracing=False) as rt:
        assert rt._core.spans is None
        assert rt.result(rt.submit(Task.lua("return 1")), timeout=WAIT) == 1
    assert exporter.get_finished_spans() == ()


def test_the_apis_default_provider_means_no_tracing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trace, "_TRACER_PROVIDER_SET_ONCE", Once())
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", None)
    with Runtime() as rt:
        assert rt._core.spans is None
        assert rt.result(rt.submit(Task.lua("return 1")), timeout=WAIT) == 1


def test_tracing_must_be_a_bool() -> None:
    with pytest.raises(MessageError, match="tracing"):
        Runtime(tracing="yes")


# -- metrics ------------------------------------------------------------------------


def scrape(port: int) -> dict[str, Any]:
    """Samples by (name, sorted labels) from the runtime's /metrics."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    out: dict[Any, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_move_with_work(mode: str) -> None:
    port = free_port()
    with make_rt(mode, metrics_port=port) as rt:
        first = scrape(port)
        ok = ("llmspell_tasks_total", (("kind", "lua"), ("status", "succeeded")))
        assert first.get(ok, 0) == 0
        hs = rt.submit_many([Task.lua("return 1") for _ in range(5)])
        assert [rt.result(h, timeout=WAIT) for h in hs] == [1] * 5
        bad = rt.submit(Task.lua("error('x')"))
        with pytest.raises(TaskFailed):
            rt.result(bad, timeout=WAIT)
        m = scrape(port)
        assert m[ok] == 5
        assert m[("llmspell_tasks_total", (("kind", "lua"), ("status", "failed")))] == 1
        count = ("llmspell_task_duration_seconds_count", (("kind", "lua"),))
        inf = ("llmspell_task_duration_seconds_bucket", (("kind", "lua"), ("le", "+Inf")))
        assert m[count] == 6 and m[inf] == 6
        assert m[("llmspell_tasks_running", (("engine", "lua"),))] == 0
        assert ("llmspell_queue_depth", (("engine", "lua"),)) in m
        assert m[("llmspell_engine_restarts_total", (("engine", "lua"),))] == 0
        assert m[("llmspell_events_dropped_total", ())] == 0


def test_metrics_count_restarts_running_tasks_and_first_chunks() -> None:
    port = free_port()
    with FakeOpenAI() as server, Runtime(metrics_port=port) as rt:
        server.reply("hello there")
        rt.register_agent("chat", OpenAIChat(server.base_url, "m"))
        assert rt.result(rt.submit(Task.agent("chat", "hi")), timeout=WAIT)["content"]
        slow = rt.submit(Task.lua("spell.sleep(30)"))
        deadline = time.monotonic() + WAIT
        while rt.status(slow) != "running":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        m = scrape(port)
        assert m[("llmspell_tasks_running", (("engine", "lua"),))] == 1
        assert m[("llmspell_agent_first_chunk_seconds_count", ())] == 1
        rt.cancel(slow)
        rt._inject_crash("python")
        deadline = time.monotonic() + WAIT
        while scrape(port)[("llmspell_engine_restarts_total", (("engine", "python"),))] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        m = scrape(port)
        cancelled = ("llmspell_tasks_total", (("kind", "lua"), ("status", "cancelled")))
        assert m[cancelled] == 1


def test_two_runtimes_in_one_process_have_their_own_metrics() -> None:
    p1, p2 = free_port(), free_port()
    with Runtime(metrics_port=p1) as a, Runtime(metrics_port=p2) as b:
        a.result(a.submit(Task.lua("return 1")), timeout=WAIT)
        b.result(b.submit(Task.js("return 1")), timeout=WAIT)
        ma, mb = scrape(p1), scrape(p2)
    lua = ("llmspell_tasks_total", (("kind", "lua"), ("status", "succeeded")))
    js = ("llmspell_tasks_total", (("kind", "js"), ("status", "succeeded")))
    assert ma.get(lua) == 1 and js not in ma
    assert mb.get(js) == 1 and lua not in mb


def test_a_taken_metrics_port_is_one_clear_error_at_start() -> None:
    port = free_port()
    with Runtime(metrics_port=port):
        with pytest.raises(LlmspellError, match=f"cannot serve metrics on 127.0.0.1:{port}"):
            Runtime(metrics_port=port)
    with pytest.raises(MessageError, match="metrics_port"):
        Runtime(metrics_port=70000)


# -- rt.tasks() ---------------------------------------------------------------------


def test_tasks_lists_what_the_runtime_knows(rt: Runtime) -> None:
    done = rt.submit(Task.lua("return 1"))
    rt.result(done, timeout=WAIT)
    bad = rt.submit(Task.python("targets:fail", retries=1))
    with pytest.raises(TaskFailed):
        rt.result(bad, timeout=WAIT)
    slow = rt.submit(Task.lua("spell.sleep(30)"))
    deadline = time.monotonic() + WAIT
    while rt.status(slow) != "running":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    infos = {i.id: i for i in rt.tasks()}
    assert infos[done.id].status == "succeeded" and infos[done.id].kind == "lua"
    assert infos[done.id].attempts == 1
    assert infos[done.id].ended is not None and infos[done.id].ended >= infos[done.id].created
    assert infos[bad.id].status == "failed" and infos[bad.id].attempts == 2
    assert infos[slow.id].status == "running" and infos[slow.id].ended is None
    assert [i.id for i in rt.tasks("running")] == [slow.id]
    assert isinstance(rt.tasks("failed")[0], TaskInfo)
    with pytest.raises(MessageError, match="unknown status"):
        rt.tasks("done")
    rt.cancel(slow)
    assert [i.id for i in rt.tasks("cancelled")] == [slow.id]


def test_async_runtime_tasks() -> None:
    async def main() -> list[str]:
        async with AsyncRuntime() as rt:
            h = await rt.submit(Task.lua("return 1"))
            await rt.result(h)
            return [i.status for i in await rt.tasks()]

    assert asyncio.run(main()) == ["succeeded"]


# -- script output --------------------------------------------------------------------


def test_print_and_console_log_reach_the_script_logger_with_the_task_id(
    rt: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="llmspell.script"):
        lua = rt.submit(Task.lua("print('from lua', 1) return 1"))
        js = rt.submit(Task.js("console.log('from js', 2); return 2;"))
        assert rt.result(lua, timeout=WAIT) == 1 and rt.result(js, timeout=WAIT) == 2
    got = {
        (r.task_id, r.engine, r.text)  # type: ignore[attr-defined]
        for r in caplog.records
        if r.name == "llmspell.script"
    }
    assert (lua.id, "lua", "from lua\t1") in got
    assert (js.id, "js", "from js 2") in got


def test_without_the_opentelemetry_package_nothing_is_traced(
    exporter: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "opentelemetry", None)  # import fails: as if absent
    with Runtime() as rt:
        assert rt._core.spans is None
        assert rt.result(rt.submit(Task.lua("return 1")), timeout=WAIT) == 1
    assert exporter.get_finished_spans() == ()


def test_metrics_without_prometheus_client_is_one_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(LlmspellError, match=r"llmspell\[metrics\]"):
        Runtime(metrics_port=free_port())
