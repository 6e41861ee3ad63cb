"""``llmspell.current_task()``: id, attempt and an idempotency key stable across runs."""

from __future__ import annotations

import uuid

import llmspell
from llmspell import Runtime, Task


def test_outside_a_task_there_is_none() -> None:
    assert llmspell.current_task() is None


def test_sync_and_async_tasks_see_their_own_id_and_first_attempt() -> None:
    with Runtime() as rt:
        a = rt.submit(Task.python("targets:whoami", id="job-a"))
        b = rt.submit(Task.python("targets:awhoami", id="job-b"))
        ra, rb = rt.result(a, timeout=10), rt.result(b, timeout=10)
    assert ra["id"] == "job-a" and ra["attempt"] == 0
    assert rb["id"] == "job-b" and rb["attempt"] == 0
    assert ra["key"] != rb["key"]
    uuid.UUID(ra["key"])  # a well-formed uuid string


def test_a_retry_counts_the_attempt_and_keeps_the_key() -> None:
    with Runtime(retry_backoff=0) as rt:
        first = rt.result(rt.submit(Task.python("targets:whoami", id="pay-1")), timeout=10)
    with Runtime(retry_backoff=0) as rt:  # another runtime, the same task id
        h = rt.submit(Task.python("targets:whoami_fails_first", id="pay-1", retries=1))
        again = rt.result(h, timeout=10)
    assert again["attempt"] == 1
    assert again["key"] == first["key"]  # derived from the id alone, in every process


def test_an_agent_sees_its_task() -> None:
    with Runtime() as rt:
        rt.register_agent("who", "agent_targets:WhoAmIAgent")
        reply = rt.result(rt.submit(Task.agent("who", "hi", id="agent-7")), timeout=10)
    task_id, attempt, _key = reply["metadata"]["value"]  # not text: kept as the agent's value
    assert (task_id, attempt) == ("agent-7", 0)
