"""Registrations: tools, agents, hooks and executors, and how their tasks run.

The facade turns what the user registers into a wire *target* (a dict,
``_runtime.targets.wire_target``) and sends it to the scheduler in a ``Register`` message, so
registrations live in an actor and work the same in every mode. The
scheduler keeps them in a ``Registry`` and, when a ``tool``, ``agent``,
``custom`` or ``hook`` task becomes ready, ``Registry.resolve`` fills in what
the engine runs and names the engine:

* a Python target ``{"lang": "python", "target": "m:f"}`` runs on the python
  engine, called with the params (tools), the payload (hooks, executors:
  a dict payload as keyword arguments, anything else as ``payload=``);
* a Lua/JS template ``{"lang": "lua"|"js", "code": ..., "args": ...}`` runs
  its code with the params/payload as ``spell.args`` (over the template's
  own ``args``);
* an agent ``{"lang": "python", "target": "m:attr"}`` or ``{"lang":
  "python", "factory": "m:callable", "kwargs": {...}}`` runs on the python
  engine's agent runner; its task carries the catalogue of registered tools
  (``options["tools"]``: name -> ``{"description", "parameters"}``) for
  agents that offer tools to a model.

A tool's params are checked against its schema (``llmspell.schema``) before
it runs; a task naming something not registered fails with a message listing
what is. Registering a name again replaces it; hooks add up (every hook
registered at a point runs).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .._exceptions import MessageError
from ..messages.options import HOOK_POINTS
from ..messages.types import TaskSpec
from ..schema import check_schema, validate

__all__ = ["HOOK_POINTS", "REGISTERED_KINDS", "Registry", "RegistryError"]

#: task kinds whose target comes from a registration
REGISTERED_KINDS = frozenset(("tool", "agent", "custom", "hook"))

_WHAT = ("tool", "agent", "hook", "executor")


class RegistryError(Exception):
    """A task names something that is not registered, or its params do not fit."""


class Registry:
    """The registrations a scheduler holds, and how a registered task runs."""

    __slots__ = ("agents", "executors", "hooks", "tools")

    def __init__(self) -> None:
        self.tools: dict[str, dict[str, Any]] = {}
        self.agents: dict[str, dict[str, Any]] = {}
        self.executors: dict[str, dict[str, Any]] = {}
        self.hooks: dict[str, list[dict[str, Any]]] = {}

    # -- registering ----------------------------------------------------------

    def register(self, what: str, name: str, target: dict[str, Any]) -> str | None:
        """Add a registration; returns what is wrong with it, or None."""
        if what not in _WHAT:
            return f"cannot register a {what!r}; use one of {', '.join(_WHAT)}"
        if not name:
            return "the name must not be empty"
        lang = target.get("lang")
        if lang not in ("python", "lua", "js"):
            return f"unknown target language {lang!r}"
        if lang == "python" and not isinstance(target.get("target") or target.get("factory"), str):
            return "a Python target needs 'module:function'"
        if lang != "python" and not isinstance(target.get("code"), str):
            return f"a {lang} template needs code"
        if what == "agent" and lang != "python":
            return "an agent is a Python object"
        if what == "tool" and target.get("schema") is not None:
            try:
                check_schema(target["schema"])
            except MessageError as exc:
                return str(exc)
        if what == "hook":
            if name not in HOOK_POINTS:
                return f"unknown hook point {name!r}; use one of {', '.join(HOOK_POINTS)}"
            self.hooks.setdefault(name, []).append(target)
        else:
            table = {"tool": self.tools, "agent": self.agents, "executor": self.executors}[what]
            table[name] = target
        return None

    def catalogue(self) -> dict[str, Any]:
        """The registered tools as an agent offers them to a model."""
        out: dict[str, Any] = {}
        for name, t in self.tools.items():
            entry: dict[str, Any] = {"parameters": t.get("schema") or {"type": "object"}}
            if t.get("description"):
                entry["description"] = t["description"]
            out[name] = entry
        return out

    # -- resolving ----------------------------------------------------------------

    def resolve(self, spec: TaskSpec) -> str:
        """Fill in what runs ``spec`` (a tool, agent or custom task) and return
        the engine that runs it. Raises ``RegistryError`` with the message the
        task fails with."""
        kind = spec.kind
        name = spec.name or ""
        if kind == "tool":
            t = self.tools.get(name)
            if t is None:
                raise RegistryError(_unknown("tool", name, self.tools))
            params = spec.payload if spec.payload is not None else {}
            if not isinstance(params, dict):
                raise RegistryError(
                    f"tool {name!r}: params must be a map, got {type(params).__name__}"
                )
            schema = t.get("schema")
            if schema is not None:
                problem = validate(params, schema)
                if problem:
                    raise RegistryError(f"tool {name!r}: invalid params: {problem}")
            return _fill(spec, t, params)
        if kind == "agent":
            a = self.agents.get(name)
            if a is None:
                raise RegistryError(_unknown("agent", name, self.agents))
            options = dict(spec.options or {})
            options["tools"] = self.catalogue()
            if "factory" in a:
                options["factory"] = a["factory"]
                options["kwargs"] = a.get("kwargs") or {}
            else:
                spec.target = a["target"]
            spec.options = options
            return "python"
        if kind == "custom":
            e = self.executors.get(name)
            if e is None:
                raise RegistryError(_unknown("executor for custom kind", name, self.executors))
            return _fill(spec, e, _as_kwargs(spec.payload))
        raise RegistryError(f"no engine runs {kind!r} tasks")

    def hook_task(self, spec: TaskSpec, target: dict[str, Any]) -> str:
        """Fill in a hook task (kind "hook", payload = the hook's payload) for
        one hook ``target``; returns its engine."""
        return _fill(spec, target, _as_kwargs(spec.payload))


def _as_kwargs(payload: Any) -> dict[str, Any]:
    if payload is None:
        return {}
    if isinstance(payload, dict):
        return payload
    return {"payload": payload}


def _fill(spec: TaskSpec, target: dict[str, Any], args: dict[str, Any]) -> str:
    lang = str(target["lang"])
    if lang == "python":
        spec.target = target["target"]
        spec.args = args
    else:
        spec.code = target["code"]
        base = target.get("args")
        spec.args = {**base, **args} if base else args
    return lang


def _unknown(what: str, name: str, table: Mapping[str, Any]) -> str:
    known = ", ".join(sorted(table)) or "none"
    return f"no {what} {name!r} is registered (registered: {known})"
