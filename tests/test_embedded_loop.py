"""An embedded runtime on its in-process actor loop (``llmspell._loop``), run
by whichever thread waits (``_driver.EmbeddedDriver``): what a user could
break from the outside."""

from __future__ import annotations

import pytest

from llmspell import Runtime, Strategy, Task, TaskFailed


def test_a_retried_stage_gets_the_input_it_was_first_given() -> None:
    # the function writes into its input and fails: the re-run gets the original
    with Runtime() as rt:
        first = Task.python("loop_targets:count_in_input", retries=1)
        piped = rt.coordinate([Task.lua("return {x = 1}"), first], Strategy.PIPELINE, timeout=10)
        assert not piped.ok
        assert piped.failed == [(1, "RuntimeError: run 1 of this input")]
        many = rt.coordinate(
            [Task.python("loop_targets:count_in_input", retries=2)],
            Strategy.PIPELINE,
            inputs=[{"a": 1}, {"b": 2}],
            timeout=10,
        )
        assert many.results == [None, None]


def test_a_retried_agent_gets_the_input_it_was_first_given() -> None:
    with Runtime() as rt:
        rt.register_agent("counting", "loop_targets:CountingAgent")
        h = rt.submit(Task.agent("counting", {"x": 1}, retries=1))
        with pytest.raises(TaskFailed, match="run 1 of this input"):
            rt.result(h, timeout=10)
