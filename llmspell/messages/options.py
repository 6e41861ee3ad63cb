"""The rules for a task's options, written once: ``Task`` options
(``_task.py``), ``spell.submit`` specs (``engines/script.py``), workflow steps
(``workflow.py``) and ``Runtime.coordinate`` all check them here and say what
is wrong in their own voice (an exception, a list of problems).

Each ``*_problem`` function returns what is wrong with a value ("must be ...,
got ...") or None when it is good.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from .types import PRIORITIES

__all__ = [
    "HOOK_POINTS",
    "MAX_RETRIES",
    "STRATEGIES",
    "did_you_mean",
    "lone_surrogate",
    "priority_problem",
    "retries_problem",
    "strategy_name",
    "task_option_problems",
    "timeout_problem",
]

#: the coordination strategies (``llmspell.Strategy``'s values), in API.md's order
STRATEGIES = ("sequential", "parallel", "pipeline", "race", "all_or_nothing", "best_effort")


def strategy_name(value: Any) -> str:
    """The strategy ``value`` names (any case, ``-`` for ``_``), as its canonical
    name; ``MessageError`` naming the choices when it names none."""
    from .._exceptions import MessageError

    name = str(value).lower().replace("-", "_")
    if name not in STRATEGIES:
        raise MessageError(f"unknown strategy {value!r}; use one of {', '.join(STRATEGIES)}")
    return name


#: every hook point, in the order a task meets them
HOOK_POINTS = (
    "task.before",
    "task.after",
    "task.error",
    "task.retry",
    "coordination.before",
    "coordination.after",
    "engine.restart",
)

#: retries are a non-negative 32-bit int
MAX_RETRIES = 2**31 - 1


def did_you_mean(word: Any, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices`` to a mistyped
    ``word``, or ``""`` when none is close."""
    if not isinstance(word, str):
        return ""
    close = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def priority_problem(value: Any) -> str | None:
    """A priority is one of the names in ``PRIORITIES`` (low, normal, high, critical)."""
    if isinstance(value, str) and value in PRIORITIES:
        return None
    return f"must be one of {', '.join(PRIORITIES)}, got {value!r}{did_you_mean(value, PRIORITIES)}"


def timeout_problem(value: Any) -> str | None:
    """A timeout is a positive, finite number of seconds (None: no timeout)."""
    if value is None or (
        not isinstance(value, bool) and isinstance(value, (int, float)) and 0 < value < float("inf")
    ):
        return None
    return f"must be a positive number of seconds, got {value!r}"


def retries_problem(value: Any) -> str | None:
    """Retries are an int from 0 to ``MAX_RETRIES``."""
    if not isinstance(value, bool) and isinstance(value, int) and 0 <= value <= MAX_RETRIES:
        return None
    return f"must be an integer from 0 to 2**31 - 1, got {value!r}"


def task_option_problems(options: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """``(option, problem)`` for each of ``priority``, ``timeout`` and ``retries``
    in ``options`` whose value is bad, in that order (a missing one is good)."""
    for name, problem in (
        ("priority", priority_problem),
        ("timeout", timeout_problem),
        ("retries", retries_problem),
    ):
        if name in options:
            found = problem(options[name])
            if found is not None:
                yield name, found


def lone_surrogate(text: str) -> str | None:
    """Why ``text`` is not valid Unicode (a lone surrogate, which no engine can
    compile), or None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return (
            f"holds a lone surrogate (U+{ord(text[e.start]):04X}) at character {e.start}: "
            "code must be valid Unicode text"
        )
    return None
