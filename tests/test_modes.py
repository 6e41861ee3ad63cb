"""The same behaviour in ``embedded`` and ``local`` mode: one suite, both modes."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from conftest import SCRIPT_PYTHON

from llmspell import Runtime, Task, TaskCancelled, TaskFailed, TaskTimeout


@pytest.fixture(scope="module", params=["embedded", pytest.param("local", marks=pytest.mark.slow)])
def mrt(request: pytest.FixtureRequest) -> Iterator[Runtime]:
    rt = (
        Runtime(mode=request.param, workers=1, script_python=SCRIPT_PYTHON)
        if request.param == "local"
        else Runtime(script_python=SCRIPT_PYTHON)
    )
    try:
        deadline = time.monotonic() + 30
        while len({e["engine"] for e in rt.stats()["engines"]} & {"python", "lua", "js"}) < 3:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        yield rt
    finally:
        rt.close()


def test_values_from_every_engine(mrt: Runtime) -> None:
    hs = mrt.submit_many(
        [
            Task.python("targets:add", args={"x": 2, "y": 3}),
            Task.python("targets:aadd", args={"x": 2, "y": 3}),
            Task.lua("return {a = spell.args.n, b = {1, 2}}", args={"n": 5}),
            Task.js("return {a: spell.args.n, b: [1, 2]}", args={"n": 5}),
        ]
    )
    assert [mrt.result(h, timeout=20) for h in hs] == [
        5,
        5,
        {"a": 5, "b": [1, 2]},
        {"a": 5, "b": [1, 2]},
    ]


def test_failures_raise_the_right_errors(mrt: Runtime) -> None:
    failing = mrt.submit(Task.python("targets:fail", args={"message": "m1"}))
    script = mrt.submit(Task.lua("error('lua says no')"))
    with pytest.raises(TaskFailed, match="ValueError: m1"):
        mrt.result(failing, timeout=20)
    with pytest.raises(TaskFailed, match="lua says no"):
        mrt.result(script, timeout=20)


def test_dependencies_and_failed_dependency(mrt: Runtime) -> None:
    a = mrt.submit(Task.python("targets:add", args={"x": 1, "y": 1}))
    b = mrt.submit(Task.lua("return 3", deps=[a]))
    bad = mrt.submit(Task.python("targets:fail"))
    after_bad = mrt.submit(Task.js("return 1", deps=[bad]))
    assert mrt.result(b, timeout=20) == 3
    with pytest.raises(TaskFailed, match="dependency"):
        mrt.result(after_bad, timeout=20)


def test_cancel_and_timeout(mrt: Runtime) -> None:
    sleeper = mrt.submit(Task.lua("spell.sleep(30) return 1"))
    slow = mrt.submit(Task.python("targets:sleep", args={"seconds": 5}, timeout=0.2))
    deadline = time.monotonic() + 10
    while mrt.status(sleeper) != "running":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert mrt.cancel(sleeper)
    with pytest.raises(TaskCancelled):
        mrt.result(sleeper, timeout=10)
    with pytest.raises(TaskTimeout):
        mrt.result(slow, timeout=20)
    assert mrt.status(slow) == "timed_out"


def test_retries(mrt: Runtime, tmp_path: object) -> None:
    h = mrt.submit(Task.lua("error('always')", retries=2))
    with pytest.raises(TaskFailed) as info:
        mrt.result(h, timeout=20)
    assert len(info.value.attempts) == 3


def test_cross_engine_await(mrt: Runtime) -> None:
    h = mrt.submit(
        Task.lua(
            'return spell.run({lang="js", code="return (await spell.run({lang: \\"python\\", '
            'target: \\"targets:add\\", args: {x: 40, y: 1}})) + 1"})'
        )
    )
    assert mrt.result(h, timeout=20) == 42


def test_events_reach_subscribers_and_scripts(mrt: Runtime) -> None:
    sub = mrt.subscribe("mode.test.*")
    waiter = mrt.submit(Task.lua('local n, p = spell.wait_event("go.mode", 10) return p.v'))
    deadline = time.monotonic() + 10
    while mrt.status(waiter) != "running":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    # the script subscribes when it runs: publish until it has seen one
    while True:
        mrt.emit("go.mode", {"v": 9})
        try:
            assert mrt.result(waiter, timeout=0.1) == 9
            break
        except TimeoutError:
            assert time.monotonic() < deadline + 10, "the script never saw the event"
    mrt.emit("mode.test.x", {"n": 1})
    event = sub.get(timeout=10)
    assert (event.name, event.payload) == ("mode.test.x", {"n": 1})
    sub.close()


def test_stats_shape(mrt: Runtime) -> None:
    stats = mrt.stats()
    for key in (
        "submitted",
        "running",
        "succeeded",
        "failed",
        "cancelled",
        "timed_out",
        "restarts",
        "engines",
    ):
        assert key in stats
    for e in stats["engines"]:
        assert set(e) >= {"engine", "pid", "restarts", "running"}


def test_results_that_are_not_msgpack_data_fail_their_task_alike(mrt: Runtime) -> None:
    """A map with a non-string key fails its task, saying why, in both modes
    (local mode used to drop the engine's results: the task never ended), and a
    bytearray comes back as bytes in both."""
    bad = mrt.submit(Task.python("targets:int_keys"))
    good = mrt.submit(Task.python("targets:add", args={"x": 1, "y": 1}))
    with pytest.raises(TaskFailed, match="keys must be strings"):
        mrt.result(bad, timeout=20)
    assert mrt.result(good, timeout=20) == 2
    assert mrt.result(mrt.submit(Task.python("targets:raw_bytes")), timeout=20) == b"\x00\xff"
