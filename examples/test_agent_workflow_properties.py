"""A simulation property test of the retrieval workflow: whatever the seed,
one engine crash at any moment, or a failing first attempt of a step, costs
a re-run (every step has ``retries: 1``), never the answer.

The simulation runs on a virtual clock, and a real HTTP exchange cannot run
on it: the workflow's agent step is replaced by ``scripted_answer``, a Python
step giving what the scripted model would answer. An in-process agent
(``ScriptedAnswerer``) does run in a ``Simulation`` (the last test): the
simulation waits for an agent's own code before it moves its clock on.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from llm_endpoint import DOCS
from test_retrieval_workflow import workflow

from llmspell import Task
from llmspell.testing import Fault, Simulation

QUESTION = "Who wins a race between tasks?"
ANSWER = "From the docs: " + DOCS["races"]
STAND_IN = {"id": "answer", "target": "llm_endpoint:scripted_answer", "retries": 1}


@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    engine=st.sampled_from(["python", "lua"]),
    at=st.floats(0.0, 1.0, allow_nan=False),
)
def test_one_engine_crash_never_costs_the_answer(seed: int, engine: str, at: float) -> None:
    with Simulation(seed=seed) as sim:
        sim.inject([Fault("engine_crash", engine=engine, at=at)])
        r = sim.run_workflow(workflow(QUESTION, STAND_IN))
        assert r.ok, r.failed
        assert r.results[-1] == {"content": ANSWER}


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), step=st.sampled_from(["prompt", "answer"]))
def test_a_step_failing_once_is_retried(seed: int, step: str) -> None:
    with Simulation(seed=seed) as sim:
        sim.inject([Fault("script_error", task=f"*:{step}", count=1)])
        r = sim.run_workflow(workflow(QUESTION, STAND_IN))
        assert r.ok, r.failed
        assert r.results[-1] == {"content": ANSWER}


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_a_step_failing_twice_fails_the_run_and_nothing_after_it_runs(seed: int) -> None:
    with Simulation(seed=seed) as sim:
        sim.inject([Fault("script_error", task="*:retrieve", count=2)])
        r = sim.run_workflow(workflow(QUESTION, STAND_IN))
        assert not r.ok
        assert [i for i, _ in r.failed] == [0] and r.cancelled == [1, 2]


def test_an_agent_step_runs_in_a_simulation() -> None:
    with Simulation(seed=1) as sim:
        sim.register_agent("answerer", "llm_endpoint:ScriptedAnswerer")
        h = sim.submit(Task.agent("answerer", "Context:\n- a passage", timeout=10))
        assert sim.result(h)["content"].strip() == "From the docs: a passage"
