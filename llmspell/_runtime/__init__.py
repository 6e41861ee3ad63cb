"""The embedding facade over an actor system (private: users import these
names from ``llmspell``).

* ``driver``: ``Driver``, the typed interface every driver implements (start,
  send, call, stop, run until a condition holds).
* ``core``: ``_Core``, the I/O-free state both facades share, and ``RuntimeState``.
* ``runtime``: ``Runtime``, the blocking facade.
* ``aio``: ``AsyncRuntime``, the asyncio facade over a ``Runtime``.
* ``subscription``: ``Subscription``, the events a pattern matched.
* ``waiting``: timeouts, handle lists and reply slots the facades wait with.
"""

from .aio import AsyncRuntime as AsyncRuntime
from .core import RuntimeState as RuntimeState
from .runtime import Runtime as Runtime
from .subscription import Subscription as Subscription

__all__ = ["AsyncRuntime", "Runtime", "RuntimeState", "Subscription"]
