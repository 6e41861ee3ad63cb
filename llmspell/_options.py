"""``Runtime(**options)``: every option checked before anything starts.

A bad value used to reach the actor that reads it (an engine's ``setup``, the
director's supervisor spec) and fail there, leaving the runtime half started and
its tasks waiting forever. Here each option has one rule and a bad value raises
one ``MessageError`` naming the option and what it must be.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ._exceptions import MessageError
from .messages.options import did_you_mean as did_you_mean

__all__ = ["ENGINES", "check_options"]

ENGINES = ("python", "lua", "js")
_MiB = 1 << 20
_SUPERVISION = {
    "strategy": "one of one_for_one, one_for_all, rest_for_one",
    "intensity": "an int >= 0",
    "period": "a number of seconds > 0",
    "backoff_base": "a number of seconds >= 0",
    "backoff_cap": "a number of seconds >= 0",
    "jitter": "a number from 0 to 1",
    "shutdown_timeout": "a number of seconds >= 0",
}


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v


def _int_at_least(lo: int, what: str) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: _int(v) and v >= lo), what


def _seconds(strict: bool) -> tuple[Callable[[Any], bool], str]:
    if strict:
        return (lambda v: _num(v) and 0 < v < _INF), "must be seconds > 0"
    return (lambda v: _num(v) and 0 <= v < _INF), "must be seconds >= 0"


_INF = float("inf")
_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "tracing": ((lambda v: isinstance(v, bool)), "must be True or False"),
    "metrics_port": (
        (lambda v: _int(v) and 1 <= v <= 65535),
        "must be a TCP port from 1 to 65535",
    ),
    "workers": ((lambda v: _int(v) and 1 <= v <= 256), "must be an int from 1 to 256"),
    "history": _int_at_least(0, "must be an int >= 0 (finished tasks to remember)"),
    "python_threads": _int_at_least(1, "must be an int >= 1"),
    "python_capacity": _int_at_least(1, "must be an int >= 1"),
    "lua_capacity": _int_at_least(1, "must be an int >= 1"),
    "js_capacity": _int_at_least(1, "must be an int >= 1"),
    "quantum_steps": _int_at_least(0, "must be an int >= 0"),
    "lua_memory": _int_at_least(_MiB, "must be an int of bytes >= 1 MiB"),
    "js_memory": _int_at_least(_MiB, "must be an int of bytes >= 1 MiB"),
    "engine_memory": _int_at_least(1, "must be an int of bytes >= 1"),
    "step_budget": _seconds(strict=True),
    "quantum": _seconds(strict=True),
    "resource_interval": _seconds(strict=True),
    "retry_backoff": _seconds(strict=False),
    "retry_backoff_cap": _seconds(strict=False),
    "throttle_share": ((lambda v: _num(v) and 0 < v <= 1), "must be a number > 0 and <= 1"),
    "python_inline": ((lambda v: isinstance(v, bool)), "must be True or False"),
    "seed": ((lambda v: _int(v) or isinstance(v, str)), "must be an int or a str"),
    "port": ((lambda v: _int(v) and 1 <= v <= 65535), "must be a TCP port (1..65535)"),
    "max_frame_bytes": _int_at_least(_MiB, "must be an int of bytes >= 1 MiB"),
    "secret": (
        (lambda v: isinstance(v, (str, bytes)) and len(v) >= 16),
        "must be a str or bytes of at least 16 characters (the served runtime's secret)",
    ),
    "replay_check": ((lambda v: isinstance(v, bool)), "must be True or False"),
    "journal": (
        (lambda v: isinstance(v, str) and bool(v)),
        'must be the path of a journal file (a str, e.g. "runs.db") or None',
    ),
    "host": (
        (lambda v: isinstance(v, str) and bool(v) and ":" not in v),
        "must be an IPv4 address of this machine to bind to (e.g. '10.0.0.5')",
    ),
    "address": (
        (lambda v: isinstance(v, str) and v.rpartition(":")[2].isdigit()),
        'must be "host:port" of a served runtime',
    ),
}


def check_options(config: Mapping[str, Any]) -> None:
    """Raise ``MessageError`` (``where`` = the option) for the first bad value.
    ``None`` means "the default" for every option."""
    for key, value in config.items():
        if value is None:
            continue
        rule = _RULES.get(key)
        if rule is not None:
            test, what = rule
            if not test(value):
                raise MessageError(f"{what}, got {value!r}", where=key)
        elif key == "engines":
            _check_engines(value)
        elif key == "supervision":
            _check_supervision(value)
        elif key == "script_python":
            if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
                raise MessageError(
                    f"must be a list of 'module:function' patterns, got {value!r}", where=key
                )
            for i, pattern in enumerate(value):
                if not isinstance(pattern, str) or ":" not in pattern:
                    raise MessageError(
                        f"must be a 'module:function' pattern like 'myapp.tools:*', "
                        f"got {pattern!r}",
                        where=f"{key}[{i}]",
                    )


def _check_engines(value: Any) -> None:
    if not isinstance(value, Mapping):
        raise MessageError(
            f'must be a dict of engine -> workers, like {{"python": 1, "lua": 2}}, got {value!r}',
            where="engines",
        )
    for name, count in value.items():
        if name not in ENGINES:
            raise MessageError(
                f"unknown engine {name!r}{did_you_mean(name, ENGINES)}; use {', '.join(ENGINES)}",
                where=f"engines.{name}",
            )
        if not _int(count) or count < 0:
            raise MessageError(
                f"must be an int >= 0 (0: no such engine), got {count!r}", where=f"engines.{name}"
            )


def _check_supervision(value: Any) -> None:
    if not isinstance(value, Mapping):
        raise MessageError(
            f'must be a dict like {{"intensity": 3, "period": 10}}, got {value!r}',
            where="supervision",
        )
    for key, v in value.items():
        what = _SUPERVISION.get(key)
        if what is None:
            raise MessageError(
                f"unknown setting {key!r}; use {', '.join(_SUPERVISION)}",
                where=f"supervision.{key}",
            )
        ok = (
            v in ("one_for_one", "one_for_all", "rest_for_one")
            if key == "strategy"
            else _int(v) and v >= 0
            if key == "intensity"
            else _num(v) and v > 0
            if key == "period"
            else _num(v) and 0 <= v <= 1
            if key == "jitter"
            else _num(v) and v >= 0
        )
        if not ok:
            raise MessageError(f"must be {what}, got {v!r}", where=f"supervision.{key}")
