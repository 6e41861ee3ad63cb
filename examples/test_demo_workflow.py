"""A user's property test: the bundled demo workflow under injected faults.

This is the worked example of docs/testing.md. It runs in `make test`.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from llmspell.examples import SCRIPT_PYTHON, path
from llmspell.testing import Fault, Simulation

DEMO = path("demo.yaml")
HEADLINE = "PYTHON WON: actors (8 words), lua (11 words), js (8 words)"


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    engine=st.sampled_from(["python", "lua", "js"]),
    at=st.floats(0.0, 3.0, allow_nan=False),
)
def test_one_engine_crash_never_costs_the_result(seed: int, engine: str, at: float) -> None:
    with Simulation(seed=seed, script_python=SCRIPT_PYTHON) as sim:
        sim.inject([Fault("engine_crash", engine=engine, at=at)])
        result = sim.run_workflow(DEMO)
        assert result.ok, result.failed
        assert result.results[-1] == {"headline": HEADLINE, "docs": 3}


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_a_failing_stage_cancels_the_later_ones(seed: int) -> None:
    with Simulation(seed=seed, script_python=SCRIPT_PYTHON) as sim:
        # the fetch stage fails on both of its attempts: nothing after it runs
        sim.inject([Fault("script_error", task="*:fetch", count=2)])
        result = sim.run_workflow(DEMO)
        assert not result.ok
        assert result.cancelled == [1, 2]
