"""``Driver``: what a facade needs of whoever owns its actor system.

Three kinds implement it: ``_driver.EmbeddedDriver`` (a thread of its own in
this process), ``_driver.LocalDriver`` and ``_cluster.ClusterDriver`` (actor
processes over TCP), and ``testing.simulation._SimDriver`` (the caller's thread,
on virtual time). The facade talks to its driver through these calls only, so
it never asks which kind it has: where a simulation must move virtual time on
while the caller waits, ``run_until`` does it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

__all__ = ["Driver"]


class Driver(Protocol):
    """The one owner of a runtime's actor system.

    ``on_message`` (given to the driver's constructor) receives every message
    addressed to the outside, on the driver's own thread (a simulation: the
    caller's)."""

    mode: str  # "embedded" (the simulation too) or "local" (cluster too)

    def start(self) -> dict[str, Any]:
        """Start the actor system; return the addresses of its actors by role
        (``scheduler``, ``events``, ...). Blocks until they answered (seconds in
        local mode). Raises ``LlmspellError`` when it cannot start."""
        ...

    def send(self, address: Any, data: bytes) -> None:
        """Deliver encoded ``data`` to the actor at ``address``; any thread.
        Never blocks on the actor (a simulation runs what it sets off first)."""
        ...

    def call(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the thread that sends to the actors, in order with the
        messages sent before it (at once where sends need no such thread)."""
        ...

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every actor; blocks up to ``timeout`` s (local mode then kills
        what is left). Idempotent."""
        ...

    def run_until(self, done: Callable[[], bool], timeout: float | None) -> float | None:
        """Move the actor system on until ``done()`` holds or ``timeout`` seconds
        (None: no limit) of its clock passed, as far as this driver moves it
        itself, and return how long the caller may still block on its own
        event for ``done``. A driver whose actors run by themselves does nothing
        and returns ``timeout``; a simulation runs the world on virtual time on
        the caller's thread and returns 0.0 (raises ``SimulationDeadlock`` when
        nothing can make ``done()`` hold and there is no ``timeout``)."""
        ...
