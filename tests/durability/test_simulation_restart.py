"""``Fault.restart`` / ``Simulation.restart``: the runtime dies at a virtual
time and is opened again on its in-memory journal; work goes on."""

from __future__ import annotations

import pytest

from llmspell import MessageError, Task
from llmspell.testing import Simulation
from llmspell.testing.simulation import Fault


def test_a_sleeping_script_keeps_its_wake_up_time_across_a_restart() -> None:
    with Simulation(seed=3) as sim:
        h = sim.submit(
            Task.lua(
                "local a = spell.run({lang='lua', code='return 20'}) "
                "spell.emit('sleeper.going', a) spell.sleep(100) return a + 1",
                id="sleeper",
            )
        )
        sim.inject([Fault.restart(at=40.0)])
        assert sim.result(h) == 21
        assert sim.now() == pytest.approx(100.0, abs=1.0)  # not 140: the wake-up was kept
        assert sim.restarts == 1
        assert any(name == "llmspell.fault.restart" for _, name, _ in sim.trace)
        kids = [t for t in sim.tasks() if t.id != "sleeper"]
        assert len(kids) == 1  # the child was not submitted again by the replay
        emitted = [name for _, name, _ in sim.trace if name == "sleeper.going"]
        assert emitted == ["sleeper.going"]  # nor was the event published again


def test_a_waiting_task_survives_restarts_and_takes_a_later_event() -> None:
    with Simulation(seed=5) as sim:
        h = sim.submit(
            Task.js(
                "const e = await spell.wait_event('approval.*'); return e.payload.by", id="publish"
            )
        )
        sim.advance(5)
        sim.restart()
        sim.advance(5)
        sim.restart()
        sim.emit("approval.granted", {"by": "ada"})
        assert sim.result(h) == "ada"
        assert sim.status("publish") == "succeeded"


def test_python_tasks_queued_at_the_restart_run_once_after_it() -> None:
    with Simulation(seed=1) as sim:
        gate = sim.submit(Task.lua("spell.sleep(10) return 'open'", id="gate"))
        after = sim.submit(Task.python("targets:echo", args={"value": 1}, deps=[gate], id="after"))
        sim.inject([Fault.restart(at=5.0)])
        assert sim.result(after) == {"value": 1, "input": None}
        assert sim.result(gate) == "open"
        assert sim.deliveries["after"] == 1


def test_the_same_seed_gives_the_same_run_with_restarts() -> None:
    def run(seed: int) -> tuple[list[str], list[object]]:
        with Simulation(seed=seed) as sim:
            hs = [
                sim.submit(Task.lua(f"spell.sleep({i}) return math.random(1000)"))
                for i in range(1, 6)
            ]
            sim.inject([Fault.restart(at=2.5)])
            values = [sim.result(h) for h in hs]
            return [name for _, name, _ in sim.trace], values

    assert run(11) == run(11)


def test_a_restart_needs_a_journal() -> None:
    with Simulation(seed=0, journal=None) as sim:
        with pytest.raises(MessageError, match="journal"):
            sim.inject([Fault.restart(at=1.0)])


RACE = """
local r = spell.coordinate({
    {lang = "lua", code = "spell.sleep(100) return 'slow'"},
    {lang = "lua", code = "spell.sleep(10) return 'fast'"},
}, "race")
return {winner = r.winner, value = r.results[r.winner]}
"""


@pytest.mark.parametrize("at", [5.0, 50.0])
def test_a_scripts_race_keeps_its_tasks_and_its_winner_across_a_restart(at: float) -> None:
    with Simulation(seed=2) as sim:
        h = sim.submit(Task.lua(RACE, id="racer"))
        sim.inject([Fault.restart(at=at)])
        assert sim.result(h) == {"winner": 2, "value": "fast"}
        assert sim.now() < 20.0  # the fast task's first run won, at t=10
        members = [t for t in sim.tasks() if t.id != "racer"]
        assert len(members) == 2, members  # the replay made the same race, not a new one
        assert sorted(t.status for t in members) == ["cancelled", "succeeded"]
