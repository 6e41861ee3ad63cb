"""llmspell: an actor-model runtime for the asynchronous work of LLM applications.

Layout: this module re-exports the public API. Users import ``llmspell``,
``llmspell.agents`` and ``llmspell.testing`` only; ``messages/``, ``actors/``,
``engines/`` and ``supervisors/`` are the internal architecture.
"""

from ._context import TaskContext as TaskContext
from ._context import current_task as current_task
from ._exceptions import JournalError as JournalError
from ._exceptions import LlmspellError as LlmspellError
from ._exceptions import MessageError as MessageError
from ._exceptions import ReplayDivergence as ReplayDivergence
from ._exceptions import ResourceLimitExceeded as ResourceLimitExceeded
from ._exceptions import RuntimeClosed as RuntimeClosed
from ._exceptions import RuntimeDegraded as RuntimeDegraded
from ._exceptions import ScriptError as ScriptError
from ._exceptions import TaskCancelled as TaskCancelled
from ._exceptions import TaskFailed as TaskFailed
from ._exceptions import TaskTimeout as TaskTimeout
from ._runtime import AsyncRuntime as AsyncRuntime
from ._runtime import Runtime as Runtime
from ._runtime import RuntimeState as RuntimeState
from ._runtime import Subscription as Subscription
from ._task import CoordinationResult as CoordinationResult
from ._task import Event as Event
from ._task import Handle as Handle
from ._task import Limits as Limits
from ._task import Progress as Progress
from ._task import ResourceUsage as ResourceUsage
from ._task import Strategy as Strategy
from ._task import Task as Task
from ._task import TaskInfo as TaskInfo

__version__ = "0.1.0"

__all__ = [
    "AsyncRuntime",
    "CoordinationResult",
    "Event",
    "Handle",
    "JournalError",
    "Limits",
    "LlmspellError",
    "MessageError",
    "Progress",
    "ReplayDivergence",
    "ResourceLimitExceeded",
    "ResourceUsage",
    "Runtime",
    "RuntimeClosed",
    "RuntimeDegraded",
    "RuntimeState",
    "ScriptError",
    "Strategy",
    "Subscription",
    "Task",
    "TaskCancelled",
    "TaskContext",
    "TaskFailed",
    "TaskInfo",
    "TaskTimeout",
    "current_task",
]


def _fix_module_names() -> None:
    for name in __all__:
        obj = globals()[name]
        if getattr(obj, "__module__", "").startswith("llmspell."):
            try:
                obj.__module__ = "llmspell"
            except (AttributeError, TypeError):  # pragma: no cover
                pass


_fix_module_names()
