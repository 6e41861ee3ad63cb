"""The one loader of ``"package.module:attr.path"`` targets: Python task targets,
agents, executors, supervised actor classes and a director's hooks all name
their object this way."""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["import_target"]


def import_target(target: str) -> Any:
    """Import the module before the ``:`` and return the attribute path after it.

    Raises what importing raises (``ImportError``, or whatever the module's code
    raises) and ``AttributeError`` for a missing attribute (an empty path, when
    the target has no ``:``, names none).
    """
    module_name, _, path = target.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj
