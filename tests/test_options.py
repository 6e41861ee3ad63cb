"""``Runtime(**options)``: a bad value is one clear ``MessageError`` naming the
option, raised before anything starts (it used to crash the actor reading it and
leave tasks waiting forever); ``None`` is the default; an engine left out of
``engines`` fails the tasks meant for it instead of keeping them pending."""

from __future__ import annotations

import threading

import pytest

from llmspell import MessageError, Runtime, Task, TaskFailed

BAD = [
    ("python_threads", 0),
    ("python_threads", "8"),
    ("python_capacity", -1),
    ("lua_capacity", 1.5),
    ("js_capacity", True),
    ("lua_memory", 1000),
    ("js_memory", "big"),
    ("engine_memory", -1),
    ("step_budget", 0),
    ("step_budget", float("nan")),
    ("step_budget", "1"),
    ("quantum", -0.1),
    ("quantum_steps", -3),
    ("retry_backoff", "x"),
    ("retry_backoff_cap", -1),
    ("resource_interval", 0),
    ("throttle_share", 2),
    ("python_inline", "yes"),
    ("seed", [1]),
    ("port", 70000),
    ("address", "localhost"),
    ("workers", 0),
]


@pytest.mark.parametrize(("option", "value"), BAD)
def test_a_bad_option_is_one_clear_error_before_anything_starts(option: str, value: object) -> None:
    threads = threading.active_count()
    with pytest.raises(MessageError) as info:
        Runtime(**{option: value})
    assert info.value.where == option
    assert repr(value) in str(info.value)
    assert threading.active_count() == threads  # nothing was started


@pytest.mark.parametrize(
    ("engines", "where"),
    [
        ("python", "engines"),
        ({"python": 1, "ruby": 1}, "engines.ruby"),
        ({"lua": -1}, "engines.lua"),
        ({"lua": "2"}, "engines.lua"),
    ],
)
def test_bad_engines(engines: object, where: str) -> None:
    with pytest.raises(MessageError) as info:
        Runtime(engines=engines)
    assert info.value.where == where


@pytest.mark.parametrize(
    ("supervision", "where"),
    [
        ([1], "supervision"),
        ({"intensty": 3}, "supervision.intensty"),
        ({"strategy": "one_for_some"}, "supervision.strategy"),
        ({"period": 0}, "supervision.period"),
        ({"jitter": 1.5}, "supervision.jitter"),
        ({"intensity": -1}, "supervision.intensity"),
    ],
)
def test_bad_supervision(supervision: object, where: str) -> None:
    with pytest.raises(MessageError) as info:
        Runtime(supervision=supervision)
    assert info.value.where == where


def test_none_means_the_default() -> None:
    with Runtime(step_budget=None, quantum=None, python_threads=None, seed=None) as rt:
        h = rt.submit(Task.lua("return 1"))
        assert rt.result(h, timeout=10) == 1


def test_good_options_are_taken() -> None:
    with Runtime(
        lua_memory=1 << 20,
        js_memory=1 << 20,
        step_budget=0.5,
        quantum=0.01,
        supervision={"intensity": 3, "period": 10, "strategy": "one_for_all"},
    ) as rt:
        assert rt.result(rt.submit(Task.lua("return 1")), timeout=10) == 1
        assert rt.result(rt.submit(Task.js("return 2")), timeout=10) == 2


def test_a_task_for_an_engine_the_runtime_does_not_start_fails_clearly() -> None:
    with Runtime(engines={"python": 1, "lua": 1, "js": 0}) as rt:
        h = rt.submit(Task.js("return 1"))
        with pytest.raises(TaskFailed, match="no js engine"):
            rt.result(h, timeout=10)
        # a script asking for one learns it the same way
        code = """
        local ok, err = pcall(spell.run, {lang = 'js', code = 'return 1'})
        return {ok, err}
        """
        ok, err = rt.result(rt.submit(Task.lua(code)), timeout=10)
        assert ok is False and "no js engine" in err
        assert rt.result(rt.submit(Task.lua("return 3")), timeout=10) == 3


def test_every_option_is_documented_in_one_frozen_config() -> None:
    """``messages/config.py``: each option Runtime takes has its default, its rule
    and its meaning in one place, and the config cannot be changed."""
    import dataclasses

    from llmspell.messages.config import DEFAULTS, OPTIONS, RuntimeConfig

    for f in dataclasses.fields(RuntimeConfig):
        assert f.name in OPTIONS
        assert callable(f.metadata["rule"]), f.name
        assert f.metadata["meaning"], f.name
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULTS.history = 5  # type: ignore[misc]
    with pytest.raises(MessageError, match="unknown runtime option 'histroy'"):
        Runtime(histroy=5)
