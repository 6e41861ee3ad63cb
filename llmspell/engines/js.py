"""The JavaScript engine context: a ``ScriptEngine`` driving one ``JsVM``."""

from __future__ import annotations

from typing import Any

from ..messages.config import DEFAULTS
from ._vm import ScriptVM
from .js_vm import JsVM
from .script import ScriptEngine, vm_clock

__all__ = ["JsEngine"]


class JsEngine(ScriptEngine):
    role = "js engine"
    engine = "js"
    default_capacity = DEFAULTS.js_capacity

    def make_vm(self, config: dict[str, Any]) -> ScriptVM:
        return JsVM(
            self,
            max_memory=int(config.get("js_memory", DEFAULTS.js_memory)),
            step_budget=float(config.get("step_budget", DEFAULTS.step_budget)),
            clock=vm_clock(config),
            record_clock=bool(config.get("journal")),
        )
