"""Deterministic Python callables for simulated workflows and property tests
(``Task.python("llmspell.testing.targets:echo", args={"value": 1})``)."""

from __future__ import annotations

from typing import Any

__all__ = ["add", "echo", "fail"]


def echo(value: Any = None, input: Any = None) -> Any:
    """Returns ``value`` (or the pipeline ``input`` when one is given)."""
    return value if input is None else input


def fail(value: Any = None, input: Any = None) -> Any:
    """Always raises ``RuntimeError``."""
    raise RuntimeError(f"planned failure ({value!r})")


def add(x: int, y: int) -> int:
    return x + y
