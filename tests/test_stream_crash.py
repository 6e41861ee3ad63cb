"""A streaming agent task whose engine dies mid-stream and is re-run (issue 14 item 6):
the reader gets every chunk exactly once, in order, and the stream ends."""

from __future__ import annotations

import psutil
import pytest

from llmspell import Runtime, Task


@pytest.mark.parametrize("agent", ["agent_targets:Counter", "agent_targets:SyncCounter"])
def test_a_stream_reads_every_chunk_once_across_an_engine_crash(agent: str) -> None:
    n = 40
    with Runtime(supervision={"backoff_base": 0.001}, retry_backoff=0.0) as rt:
        rt.register_agent("counter", agent)
        chunks = rt.stream(Task.agent("counter", n, buffer_size=2, retries=1), timeout=20)
        got = [next(chunks)["text"] for _ in range(5)]
        rt._inject_crash("python", 0)  # the producer is held 2 chunks ahead of this reader
        got += [chunk["text"] for chunk in chunks]
    assert got == [f"{i}," for i in range(n)]


@pytest.mark.slow
def test_a_stream_reads_every_chunk_once_across_an_engine_process_crash() -> None:
    # local mode: the engine is a process of its own, killed by pid; batches may
    # overtake each other, and the last one the task's end
    n = 60
    with Runtime(
        mode="local", workers=1, supervision={"backoff_base": 0.001}, retry_backoff=0.0
    ) as rt:
        rt.register_agent("counter", "agent_targets:Counter")
        chunks = rt.stream(Task.agent("counter", n, buffer_size=3, retries=1), timeout=30)
        got = [next(chunks)["text"] for _ in range(10)]
        engine = next(e for e in rt.stats()["engines"] if e["engine"] == "python")
        psutil.Process(engine["pid"]).kill()
        got += [chunk["text"] for chunk in chunks]
    assert got == [f"{i}," for i in range(n)]


def test_an_unread_stream_is_complete_after_an_engine_crash() -> None:
    n = 30
    with Runtime(supervision={"backoff_base": 0.001}, retry_backoff=0.0) as rt:
        rt.register_agent("counter", "agent_targets:Counter")
        h = rt.submit(Task.agent("counter", n, buffer_size=1, retries=1))
        first = rt.stream(h, timeout=20)
        got = [next(first)["text"] for _ in range(3)]
        first.close()  # nobody reads now: the facade takes the chunks as they come
        rt._inject_crash("python", 0)
        assert rt.result(h, timeout=20)["content"].count(",") == n
        got += [chunk["text"] for chunk in rt.stream(h, timeout=20)]  # a late reader
    assert got == [f"{i}," for i in range(n)]
