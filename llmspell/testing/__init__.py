"""Deterministic simulation testing for llmspell users and for llmspell itself.

``Simulation`` is an embedded runtime on a virtual clock with one seeded
random source and fault injection; ``strategies`` holds hypothesis
strategies (tasks, task graphs, workflows, fault plans); ``RuntimeStateMachine``
is a hypothesis state machine base with the runtime's invariants built in.
See docs/testing.md.
"""

from .simulation import Fault as Fault
from .simulation import FaultPlan as FaultPlan
from .simulation import Simulation as Simulation
from .simulation import SimulationDeadlock as SimulationDeadlock
from .simulation import VirtualClock as VirtualClock

__all__ = [
    "Fault",
    "FaultPlan",
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
