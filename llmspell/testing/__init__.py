"""Deterministic simulation testing for llmspell users and for llmspell itself.

``Simulation`` is an embedded runtime on a virtual clock with one seeded
random source and fault injection; ``strategies`` holds hypothesis
strategies (tasks, task graphs, workflows, fault plans); ``RuntimeStateMachine``
is a hypothesis state machine base with the runtime's invariants built in;
``FakeOpenAI`` is a scripted OpenAI-compatible server on 127.0.0.1 for agents.
See docs/testing.md.
"""

from .fake_openai import Answer as Answer
from .fake_openai import FakeOpenAI as FakeOpenAI
from .simulation import Fault as Fault
from .simulation import FaultPlan as FaultPlan
from .simulation import ReplayReport as ReplayReport
from .simulation import Simulation as Simulation
from .simulation import SimulationDeadlock as SimulationDeadlock
from .simulation import VirtualClock as VirtualClock

__all__ = [
    "Answer",
    "FakeOpenAI",
    "Fault",
    "FaultPlan",
    "ReplayReport",
    "RuntimeStateMachine",
    "Simulation",
    "SimulationDeadlock",
    "VirtualClock",
    "strategies",
]


def __getattr__(name: str) -> object:
    # RuntimeStateMachine needs hypothesis: import it only when asked for.
    import importlib

    if name == "RuntimeStateMachine":
        return importlib.import_module(f"{__name__}.machine").RuntimeStateMachine
    if name == "strategies":
        return importlib.import_module(f"{__name__}.strategies")
    raise AttributeError(name)
