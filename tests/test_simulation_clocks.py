"""A simulation's run depends on its seed alone, never on how fast the machine is:
the same seeds with every real clock made erratic (and a thread fighting for the
GIL) give the same traces and results as a calm run."""

from __future__ import annotations

import os
import random
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from llmspell import Limits, LlmspellError, Strategy, Task
from llmspell.testing import Simulation

DEEP = bool(os.environ.get("LLMSPELL_DEEP"))  # make test-deep: many more seeds
SEEDS = range(100) if DEEP else range(5)

# a CPU-bound loop that spans several quanta (64 steps each in a simulation)
LUA_CPU = """
local acc = 0
for round = 1, 150 do
  for j = 1, 3000 do acc = (acc + j * round) % 1000003 end
  if round % 25 == 0 then spell.emit("cpu", {t = spell.task_id, round = round}) end
  spell.yield()
end
return acc
"""
JS_CPU = """
let acc = 0;
for (let round = 1; round <= 150; round++) {
  for (let j = 1; j <= 3000; j++) acc = (acc + j * round) % 1000003;
  if (round % 25 === 0) spell.emit("cpu", {t: spell.task_id, round});
  await spell.yield();
}
return acc;
"""
# killed by its CPU limit: how far it gets is counted work, the same every run
LUA_GREEDY = """
local n = 0
while true do
  for j = 1, 20000 do n = n + 1 end
  spell.emit("greedy", {n = n})
  spell.yield()
end
"""
# slowed by its CPU limit: the tracker's grants come after virtual delays
JS_THROTTLED = """
let n = 0;
for (let i = 0; i < 12; i++) {
  for (let j = 0; j < 20000; j++) n += j % 7;
  spell.emit("throttled", {i});
  await spell.yield();
}
return n;
"""
INTERLEAVED_LUA = (
    'for i = 1, 3 do spell.yield() spell.emit("step", {t = spell.task_id, i = i}) '
    "spell.sleep(0) end return spell.task_id"
)
INTERLEAVED_JS = (
    "for (let i = 1; i <= 3; i++) { await spell.yield(); "
    'spell.emit("step", {t: spell.task_id, i}); await spell.sleep(0); } return spell.task_id;'
)


def workload() -> list[Task]:
    ok, fail = "llmspell.testing.targets:echo", "llmspell.testing.targets:fail"
    return [
        *(Task.lua(INTERLEAVED_LUA, id=f"lua{i}") for i in range(3)),
        *(Task.js(INTERLEAVED_JS, id=f"js{i}") for i in range(3)),
        Task.python("llmspell.testing.targets:add", args={"x": 2, "y": 3}, id="py-add"),
        Task.python(ok, args={"value": 7}, id="py-echo", priority="high"),
        Task.python(fail, args={"value": 1}, retries=2, id="py-retried"),
        Task.lua('spell.sleep(1) error("flaky")', retries=1, id="lua-retried"),
        Task.lua(LUA_CPU, id="lua-cpu"),
        Task.js(JS_CPU, id="js-cpu"),
        Task.lua(LUA_GREEDY, id="lua-greedy", limits=Limits(cpu_seconds=0.05)),
        Task.js(
            JS_THROTTLED,
            id="js-throttled",
            limits=Limits(cpu_seconds=0.002, on_exceed="throttle"),
        ),
        Task.js("for (;;) await null;", id="js-runaway"),  # its step budget counts jobs
        Task.lua('local _, p = spell.wait_event("go.*") return p.v', id="lua-waiter"),
        Task.js('await spell.sleep(3); spell.emit("go.now", {v: 42}); return 1', id="js-go"),
        Task.js(
            'try { await spell.wait_event("never", 2); return "got one"; } '
            'catch (e) { return "gave up at " + String(e).length; }',
            id="js-gives-up",
        ),
        Task.lua("spell.sleep(100) return 1", timeout=5, id="lua-late"),
        Task.js("await spell.sleep(50); return 1", timeout=20, id="js-late", retries=1),
        Task.lua(
            'local r = spell.coordinate({{lang = "js", code = "await spell.sleep(2); return 1"}, '
            '{lang = "lua", code = "spell.sleep(1) return 2"}}, "race") return r.winner',
            id="lua-coord",
        ),
        Task.lua(
            "return spell.await(spell.submit({lang = 'js', code = 'return 5'})) + 1", id="sub"
        ),
    ]


def outcome(sim: Simulation, task_id: str) -> tuple[str, Any]:
    try:
        return "ok", sim.result(task_id)
    except LlmspellError as exc:
        return type(exc).__name__, str(exc)


def run(seed: int) -> tuple[dict[str, Any], list[Any]]:
    """The workload's results (outcomes, script CPU, coordinations) and trace."""
    with Simulation(seed=seed) as sim:
        tasks = workload()
        ids = [str(t.opts["id"]) for t in tasks]
        sim.submit_many(tasks)
        race = sim.coordinate(
            [
                Task.lua("spell.sleep(4) return 'lua'"),
                Task.js("await spell.sleep(2); await spell.yield(); return 'js'"),
                Task.python("llmspell.testing.targets:echo", args={"value": "py"}),
            ],
            Strategy.RACE,
        )
        all_or_nothing = sim.coordinate(
            [
                Task.lua("spell.sleep(1) return 1"),
                Task.js("await spell.sleep(2); throw new Error('no')"),
            ],
            Strategy.ALL_OR_NOTHING,
        )
        results: dict[str, Any] = {task_id: outcome(sim, task_id) for task_id in ids}
        for t, task_id in zip(tasks, ids, strict=True):
            if t.kind in ("lua", "js"):  # script CPU is counted work in a simulation
                # (not memory_bytes: QuickJS's figure is what the C allocator handed out,
                # which depends on the process's past, not on the seed)
                usage = sim.progress(task_id).resource_usage  # type: ignore[union-attr]
                results[f"{task_id}/usage"] = (usage.cpu_seconds, usage.duration)
        results["race"] = (race.ok, race.winner, race.results)
        results["all_or_nothing"] = (all_or_nothing.ok, all_or_nothing.results)
        results["end"] = (sim.now(), sim.stats()["retries"])
        return results, list(sim.trace)


_CLOCKS = ("perf_counter", "monotonic", "process_time", "thread_time", "time")


def erratic_clocks(monkeypatch: pytest.MonkeyPatch, rng: random.Random) -> None:
    """Every real clock jumps forward by a random amount at every read: in
    ``time`` and wherever llmspell or Thespian kept a copy of one."""
    fakes: dict[Any, Callable[[], float]] = {}
    for name in _CLOCKS:
        real = getattr(time, name)
        drift = [0.0]

        def erratic(real: Callable[[], float] = real, drift: list[float] = drift) -> float:
            drift[0] += rng.choice((0.0, 1e-4, 3e-3, 0.05, 2.0))
            return real() + drift[0]

        fakes[real] = erratic
        monkeypatch.setattr(time, name, erratic)
    for mod_name, mod in list(sys.modules.items()):
        if mod is None or not mod_name.startswith(("llmspell", "thespian")):
            continue
        for attr, value in list(vars(mod).items()):
            try:
                fake = fakes.get(value)
            except TypeError:  # unhashable
                continue
            if fake is not None:
                monkeypatch.setattr(mod, attr, fake)


@contextmanager
def busy_thread() -> Iterator[None]:
    """A thread competing for the GIL (and reading the clock) meanwhile."""
    stop = threading.Event()

    def spin() -> None:
        n = 0
        while not stop.is_set():
            n = (n + 1) % 1000
            time.perf_counter()

    t = threading.Thread(target=spin, name="gil-hog", daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join(5)


@pytest.fixture(scope="module")
def calm_runs() -> dict[int, tuple[dict[str, Any], list[Any]]]:
    return {seed: run(seed) for seed in SEEDS}


def test_the_workload_does_what_it_says(calm_runs: dict[int, Any]) -> None:
    """The calm run itself: every part of the workload happened, so the
    comparison below covers all of it."""
    by_id, trace = calm_runs[SEEDS[0]]
    assert by_id["py-add"] == ("ok", 5)
    assert by_id["sub"] == ("ok", 6)
    assert by_id["lua-waiter"] == ("ok", 42)
    assert by_id["lua-coord"] == ("ok", 2)  # the Lua member (2nd: Lua counts from 1) wins
    assert by_id["js-gives-up"][0] == "ok" and by_id["js-gives-up"][1].startswith("gave up")
    assert by_id["lua-cpu"][0] == "ok" and by_id["js-cpu"] == by_id["lua-cpu"]
    assert by_id["js-throttled"][0] == "ok"
    assert by_id["lua-greedy"][0] == "ResourceLimitExceeded"
    assert by_id["js-runaway"][0] == "ScriptError" and "step budget" in by_id["js-runaway"][1]
    assert by_id["py-retried"][0] == "TaskFailed"
    assert by_id["lua-late"][0] == "TaskTimeout" and by_id["js-late"][0] == "TaskTimeout"
    names = [name for _, name, _ in trace]
    assert names.count("llmspell.task.retry") == 3  # py-retried twice, lua-retried once
    assert "llmspell.resource.throttle" in names
    assert names.count("cpu") == 12  # both CPU loops ran all their rounds
    assert by_id["lua-cpu/usage"][0] > 0 and by_id["js-cpu/usage"][0] > 0
    ok, winner, _ = by_id["race"]
    assert ok is True and winner == 2  # the Python member answers at once
    assert by_id["all_or_nothing"] == (False, [None, None])


@pytest.mark.parametrize("seed", SEEDS)
def test_erratic_clocks_and_a_busy_thread_change_nothing(
    seed: int, calm_runs: dict[int, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    erratic_clocks(monkeypatch, random.Random(seed))
    with busy_thread():
        results, trace = run(seed)
    calm_results, calm_trace = calm_runs[seed]
    assert results == calm_results
    assert trace == calm_trace


def test_seeds_still_decide_the_interleaving(calm_runs: dict[int, Any]) -> None:
    """The erratic runs could agree by doing nothing seed-dependent: they do."""
    orders = {
        tuple((d["t"], d["i"]) for _, name, d in trace if name == "step")
        for _, trace in calm_runs.values()
    }
    assert len(orders) > 1


def test_a_sleep_longer_than_a_day_wakes_on_time() -> None:
    """Wake-ups over a day are armed a day at a time; the rest is counted on the
    runtime's clock (virtual here), not dropped."""
    with Simulation(seed=1) as sim:
        h = sim.submit(Task.lua("spell.sleep(200000) return 'awake'"))
        j = sim.submit(Task.js("await spell.sleep(3 * 86400 + 5); return 'up'"))
        assert sim.result(h) == "awake"
        assert sim.now() == 200000.0
        assert sim.result(j) == "up"
        assert sim.now() == 3 * 86400 + 5
