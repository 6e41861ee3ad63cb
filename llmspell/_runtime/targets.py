"""What the user registers (``Runtime.register_tool``/``agent``/``hook``/
``executor``) as the wire *target* the scheduler's ``Registry`` keeps; see
``actors/registry.py`` for how a registered task runs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .._exceptions import MessageError
from .._task import Task, _callable_target
from ..messages import check_data
from ..schema import check_schema

__all__ = ["wire_target"]


def wire_target(
    what: str, target: Any, schema: Any = None, description: Any = None
) -> dict[str, Any]:
    """What the user registers, as a wire target. Raises ``MessageError``.

    ``target``: ``"module:function"`` (or ``"module:attribute"`` for agents),
    a ``Task.lua``/``Task.js`` template (not for agents), a module-level
    function, or (agents) an object with ``llmspell_spec()`` such as
    ``llmspell.agents.OpenAIChat``.
    """
    out: dict[str, Any]
    if isinstance(target, Task):
        if what == "agent":
            raise MessageError(
                "an agent is a Python object ('module:attribute'), not a script", where="target"
            )
        if target.kind not in ("lua", "js"):
            raise MessageError(
                f"a Task template must be Task.lua or Task.js, got Task.{target.kind}",
                where="target",
            )
        if target.opts:
            names = ", ".join(sorted(target.opts))
            raise MessageError(
                f"a Task template keeps only its code and args, not {names}: give those "
                f"to each call instead (Task.{'custom' if what == 'executor' else what}(..., "
                f"{next(iter(sorted(target.opts)))}=...))",
                where="target",
            )
        out = {"lang": target.kind, "code": target.code}
        if target.args:
            out["args"] = dict(target.args)
    elif what == "agent" and hasattr(target, "llmspell_spec") and not isinstance(target, type):
        spec = target.llmspell_spec()
        if not isinstance(spec, Mapping) or not isinstance(spec.get("factory"), str):
            raise MessageError(
                "llmspell_spec() must return {'factory': 'module:callable', 'kwargs': {...}}",
                where="target",
            )
        out = {
            "lang": "python",
            "factory": spec["factory"],
            "kwargs": dict(spec.get("kwargs") or {}),
        }
    else:
        out = {"lang": "python", "target": _callable_target(target)}
    if what == "tool":
        if schema is not None:
            check_schema(schema)
            out["schema"] = dict(schema)
        if description is not None:
            if not isinstance(description, str):
                raise MessageError("must be a str", where="description")
            out["description"] = description
    elif schema is not None or description is not None:
        raise MessageError(f"schema and description are for tools, not {what}s")
    check_data(out, "target")
    return out
