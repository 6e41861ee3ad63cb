"""``Runtime(mode, **options)``: every option, its default, its rule and its
meaning, in one place (``RuntimeConfig``).

Everything that reads an option reads its default here (``DEFAULTS``): the
facade, the scheduler and its task table, the resource tracker and the
engines. The options travel to the actors as the plain dict of the values the
user gave (``Introduce.config``); an option left out, or given as None, is its
default.

A bad value used to reach the actor that reads it (an engine's ``setup``, the
director's supervisor spec) and fail there, leaving the runtime half started and
its tasks waiting forever. Here each option has one rule and a bad value raises
one ``MessageError`` naming the option and what it must be (``check_options``);
a setting the chosen mode never reads is refused, saying why, rather than
ignored (``parse_options``).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from typing import Any

from .._exceptions import MessageError
from .options import did_you_mean

__all__ = [
    "DEFAULTS",
    "ENGINES",
    "LOCAL_DEFAULTS",
    "MODES",
    "OPTIONS",
    "RuntimeConfig",
    "check_options",
    "parse_options",
]

MODES = ("embedded", "local", "cluster")
ENGINES = ("python", "lua", "js")
_MiB = 1 << 20
_INF = float("inf")
_SUPERVISION = {
    "strategy": "one of one_for_one, one_for_all, rest_for_one",
    "intensity": "an int >= 0",
    "period": "a number of seconds > 0",
    "backoff_base": "a number of seconds >= 0",
    "backoff_cap": "a number of seconds >= 0",
    "jitter": "a number from 0 to 1",
    "shutdown_timeout": "a number of seconds >= 0",
}

# -- rules: each raises MessageError (where = the option) for a bad value -------------

_Rule = Callable[[str, Any], None]


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v


def _rule(test: Callable[[Any], bool], what: str) -> _Rule:
    def check(key: str, value: Any) -> None:
        if not test(value):
            raise MessageError(f"{what}, got {value!r}", where=key)

    return check


def _int_at_least(lo: int, what: str) -> _Rule:
    return _rule(lambda v: _int(v) and v >= lo, what)


def _seconds(strict: bool) -> _Rule:
    if strict:
        return _rule(lambda v: _num(v) and 0 < v < _INF, "must be seconds > 0")
    return _rule(lambda v: _num(v) and 0 <= v < _INF, "must be seconds >= 0")


_BOOL = _rule(lambda v: isinstance(v, bool), "must be True or False")


def _check_engines(option: str, value: Any) -> None:
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


def _check_supervision(option: str, value: Any) -> None:
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


def _check_script_python(key: str, value: Any) -> None:
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise MessageError(
            f"must be a list of 'module:function' patterns, got {value!r}", where=key
        )
    for i, pattern in enumerate(value):
        if not isinstance(pattern, str) or ":" not in pattern:
            raise MessageError(
                f"must be a 'module:function' pattern like 'myapp.tools:*', got {pattern!r}",
                where=f"{key}[{i}]",
            )


# -- the options --------------------------------------------------------------------

_LOCAL_ONLY = (
    "{key}= protects the frames between the processes of mode='local'; "
    "an embedded runtime has no such frames"
)


def _option(
    default: Any,
    rule: _Rule,
    meaning: str,
    *,
    refused: Mapping[str, str] | None = None,
    local: Any = None,
) -> Any:
    """One option: its ``default`` (None: see ``meaning``), the ``rule`` a given
    value must pass, what it means, the modes that refuse it with the message
    that says why (``{key}``, ``{mode}`` filled in), and its default in local and
    cluster mode when that differs (``local``)."""
    return dataclasses.field(
        default=default,
        metadata={"rule": rule, "meaning": meaning, "refused": refused or {}, "local": local},
    )


@dataclasses.dataclass(frozen=True)
class RuntimeConfig:
    """Every option of ``Runtime(mode, **options)``; a field's default is the
    option's default (``DEFAULTS``). The rule a value must pass and what the
    option means are in each field's metadata (``rule``, ``meaning``)."""

    # -- where the runtime runs (the facade, the local and cluster drivers) --
    host: str | None = _option(
        None,
        _rule(
            lambda v: isinstance(v, str) and bool(v) and ":" not in v,
            "must be an IPv4 address of this machine to bind to (e.g. '10.0.0.5')",
        ),
        "the address a cluster leader binds to; None: 127.0.0.1",
        refused={
            mode: "host= is the address a cluster leader binds to (mode='cluster'); "
            "a {mode} runtime binds to 127.0.0.1"
            for mode in ("embedded", "local")
        },
    )
    address: str | None = _option(
        None,
        _rule(
            lambda v: isinstance(v, str) and v.rpartition(":")[2].isdigit(),
            'must be "host:port" of a served runtime',
        ),
        "attach to the runtime `llmspell serve` runs at host:port instead of starting one",
        refused={
            "embedded": "attaching to a served runtime needs mode='local': "
            "Runtime(mode='local', address=...)"
        },
    )
    port: int | None = _option(
        None,
        _rule(lambda v: _int(v) and 1 <= v <= 65535, "must be a TCP port (1..65535)"),
        "the TCP port of a local runtime's admin; None: a free one",
    )
    secret: str | bytes | None = _option(
        None,
        _rule(
            lambda v: isinstance(v, (str, bytes)) and len(v) >= 16,
            "must be a str or bytes of at least 16 characters (the served runtime's secret)",
        ),
        "the key that signs the frames between a local runtime's processes; None: a new "
        "one (attaching: LLMSPELL_SECRET or the served runtime's secret file). Never sent "
        "to an actor",
        refused={"embedded": _LOCAL_ONLY},
    )
    max_frame_bytes: int = _option(
        64 * _MiB,
        _int_at_least(_MiB, "must be an int of bytes >= 1 MiB"),
        "the largest frame a local runtime's process reads",
        refused={"embedded": _LOCAL_ONLY},
    )
    workers: int | None = _option(
        None,
        _rule(lambda v: _int(v) and 1 <= v <= 256, "must be an int from 1 to 256"),
        "processes per engine in mode='local'; None: one per CPU",
        refused={
            "embedded": "workers= is the number of processes per engine in mode='local'; "
            "an embedded runtime runs its engines in this process (for more Lua "
            "or JS VMs here: engines={'lua': 2})"
        },
    )
    engines: Mapping[str, int] | None = _option(
        None,
        _check_engines,
        "engine -> how many of it (0: none); None: every engine whose package imports, "
        "one each embedded, `workers` each in local mode",
    )
    # -- the engines --
    python_threads: int = _option(
        16, _int_at_least(1, "must be an int >= 1"), "worker threads of a Python engine"
    )
    python_capacity: int = _option(
        256, _int_at_least(1, "must be an int >= 1"), "tasks a Python engine takes at once"
    )
    lua_capacity: int = _option(
        100_000, _int_at_least(1, "must be an int >= 1"), "tasks a Lua engine holds at once"
    )
    js_capacity: int = _option(
        100_000, _int_at_least(1, "must be an int >= 1"), "tasks a JS engine holds at once"
    )
    python_inline: bool = _option(
        False, _BOOL, "run Python callables on the engine's own thread (simulation: True)"
    )
    python_fast_inline: bool = _option(
        True,
        _BOOL,
        "a sync Python call whose function took under 1 ms its last 3 runs runs on the "
        "thread that drives the actors, not handed to a worker thread and back: embedded, "
        "the caller waiting in result() (a lone call, with over 50 ms left to wait); local "
        "and cluster mode, the engine's own thread (up to 2 ms a turn); False: always on "
        "a worker thread",
    )
    lua_memory: int = _option(
        256 * _MiB,
        _int_at_least(_MiB, "must be an int of bytes >= 1 MiB"),
        "the memory of a Lua VM, in bytes",
    )
    js_memory: int = _option(
        256 * _MiB,
        _int_at_least(_MiB, "must be an int of bytes >= 1 MiB"),
        "the memory of a JS VM, in bytes",
    )
    step_budget: float = _option(
        1.0, _seconds(strict=True), "the CPU seconds a script may compute without yielding"
    )
    quantum: float = _option(
        0.005,
        _seconds(strict=True),
        "the seconds a script engine runs before it takes new messages "
        "(local and cluster mode: 0.1, as every quantum boundary costs a flush over TCP)",
        local=0.1,
    )
    quantum_steps: int = _option(
        0,
        _int_at_least(0, "must be an int >= 0"),
        "end script quanta by this many steps instead of time (0: by time; simulation: 64)",
    )
    script_python: tuple[str, ...] = _option(
        (),
        _check_script_python,
        "'module:function' patterns of the Python targets scripts may run (none)",
    )
    # -- the scheduler, retries and resources --
    retry_backoff: float = _option(
        0.02, _seconds(strict=False), "the first retry's delay; doubles at each attempt"
    )
    retry_backoff_cap: float = _option(
        1.0, _seconds(strict=False), "the longest delay between retries"
    )
    history: int = _option(
        1_000,
        _int_at_least(0, "must be an int >= 0 (finished tasks to remember)"),
        "finished tasks whose records the scheduler keeps whole (tombstones: 100 x this)",
    )
    engine_memory: int | None = _option(
        None,
        _int_at_least(1, "must be an int of bytes >= 1"),
        "the RSS an engine process may hold before it gets no new tasks; None: no limit",
    )
    throttle_share: float = _option(
        0.25,
        _rule(lambda v: _num(v) and 0 < v <= 1, "must be a number > 0 and <= 1"),
        "the share of a CPU a throttled task gets",
    )
    resource_interval: float = _option(
        1.0, _seconds(strict=True), "seconds between samples of the engine processes"
    )
    supervision: Mapping[str, Any] | None = _option(
        None,
        _check_supervision,
        "the supervisors' settings (strategy, intensity, period, backoff, jitter, "
        "shutdown_timeout); None: the supervisors' defaults",
    )
    journal: str | None = _option(
        None,
        _rule(
            lambda v: isinstance(v, str) and bool(v),
            'must be the path of a journal file (a str, e.g. "runs.db") or None',
        ),
        "the file the runtime journals its tasks to and resumes them from; None: none",
    )
    # -- observing --
    tracing: bool = _option(
        True, _BOOL, "trace tasks when the application configured an OpenTelemetry provider"
    )
    metrics_port: int | None = _option(
        None,
        _rule(lambda v: _int(v) and 1 <= v <= 65535, "must be a TCP port from 1 to 65535"),
        "serve Prometheus metrics on 127.0.0.1 at this port; None: none",
    )
    # -- simulation --
    seed: int | str | None = _option(
        None,
        _rule(lambda v: _int(v) or isinstance(v, str), "must be an int or a str"),
        "the seed of every free choice (a Simulation's); None: no seeded choices",
    )
    replay_check: bool = _option(
        False, _BOOL, "Simulation.replay_journal: replays stop where their record does"
    )


_FIELDS = {f.name: f for f in dataclasses.fields(RuntimeConfig)}
#: the names ``Runtime`` takes
OPTIONS = frozenset(_FIELDS)
#: every option's default
DEFAULTS = RuntimeConfig()
#: the defaults of local and cluster mode that differ from ``DEFAULTS``
LOCAL_DEFAULTS = {
    name: f.metadata["local"] for name, f in _FIELDS.items() if f.metadata["local"] is not None
}


def check_options(config: Mapping[str, Any]) -> None:
    """Raise ``MessageError`` (``where`` = the option) for the first bad value.
    ``None`` means "the default" for every option; an unknown name is not
    looked at here (``parse_options`` refuses it)."""
    for key, value in config.items():
        if value is None:
            continue
        f = _FIELDS.get(key)
        if f is not None:
            f.metadata["rule"](key, value)


def _refuse(mode: str, config: Mapping[str, Any], keys: tuple[str, ...]) -> None:
    for key in keys:
        message = _FIELDS[key].metadata["refused"].get(mode)
        if message is not None and config.get(key) is not None:
            raise MessageError(message.replace("{key}", key).replace("{mode}", mode), where=key)


def parse_options(mode: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """``Runtime(mode, **config)``'s mode and options, checked before anything
    starts: one ``MessageError`` for an unknown mode or option (with the closest
    name), a bad value, or a setting ``mode`` never reads. Returns the options
    (a journal path made a str)."""
    if mode not in MODES:
        raise MessageError(
            f"unknown mode {mode!r}{did_you_mean(mode, MODES)}; use one of {', '.join(MODES)}",
            where="mode",
        )
    unknown = sorted(set(config) - OPTIONS)
    if unknown:
        raise MessageError(
            f"unknown runtime option {unknown[0]!r}{did_you_mean(unknown[0], OPTIONS)}"
        )
    _refuse(mode, config, ("host",))  # before its value is looked at
    if isinstance(config.get("journal"), os.PathLike):
        config = dict(config, journal=os.fspath(config["journal"]))
    check_options(config)
    # settings that only another mode reads: said, not ignored
    _refuse(mode, config, ("address", "secret", "max_frame_bytes", "workers"))
    if config.get("journal") is not None and config.get("address") is not None:
        raise MessageError(
            "a client attached to a served runtime uses the server's journal "
            "(`llmspell serve --journal PATH`); it has none of its own",
            where="journal",
        )
    return dict(config)
