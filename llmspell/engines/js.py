"""The JavaScript engine context: a ``ScriptEngine`` driving one ``JsVM``."""

from __future__ import annotations

from typing import Any

from ._vm import ScriptVM
from .js_vm import JsVM
from .script import ScriptEngine, vm_clock

__all__ = ["JsEngine"]


class JsEngine(ScriptEngine):
    role = "js engine"
    engine = "js"

    def make_vm(self, config: dict[str, Any]) -> ScriptVM:
        return JsVM(
            self,
            max_memory=int(config.get("js_memory", 256 * 1024 * 1024)),
            step_budget=float(config.get("step_budget", 1.0)),
            clock=vm_clock(config),
            record_clock=bool(config.get("journal")),
        )
