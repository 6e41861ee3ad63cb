"""The Lua engine context: a ``ScriptEngine`` driving one sandboxed ``LuaVM``."""

from __future__ import annotations

from typing import Any

from ..messages.config import DEFAULTS
from ._vm import ScriptVM
from .lua_vm import LuaVM
from .script import ScriptEngine, vm_clock

__all__ = ["LuaEngine"]


class LuaEngine(ScriptEngine):
    role = "lua engine"
    engine = "lua"
    default_capacity = DEFAULTS.lua_capacity

    def make_vm(self, config: dict[str, Any]) -> ScriptVM:
        return LuaVM(
            self,
            max_memory=int(config.get("lua_memory", DEFAULTS.lua_memory)),
            step_budget=float(config.get("step_budget", DEFAULTS.step_budget)),
            clock=vm_clock(config),
            record_clock=bool(config.get("journal")),
        )
