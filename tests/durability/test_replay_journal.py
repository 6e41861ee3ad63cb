"""``Simulation.replay_journal``: replay what a real runtime journaled against
today's code, and name where it diverges."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmspell import MessageError, Runtime, Task
from llmspell.testing import Simulation

MAIN = """
local a = spell.run({lang = "lua", code = "return 20"})
spell.sleep(0.01)
local b = spell.tool("double", {x = a})
spell.emit("report.done", {value = b})
return b + math.random(1)
"""


def _record(tmp_path: Path) -> str:
    path = str(tmp_path / "runs.db")
    with Runtime(journal=path) as rt:
        rt.register_tool("double", Task.lua("return spell.args.x * 2"))
        assert rt.result(rt.submit(Task.lua(MAIN, id="main")), timeout=10) == 41
    return path


def test_unchanged_code_replays_without_divergence(tmp_path: Path) -> None:
    path = _record(tmp_path)
    reports = {r.task_id: r for r in Simulation.replay_journal(path)}
    main = reports["main"]
    assert main.ok and main.divergence is None, main
    assert main.calls == 6  # submit, await, sleep, submit (tool), await, emit
    assert all(r.ok for r in reports.values()), reports


def test_changed_code_names_the_call_where_it_diverges(tmp_path: Path) -> None:
    path = _record(tmp_path)
    changed = MAIN.replace("spell.sleep(0.01)\n", "spell.emit('started', {})\n")
    (report,) = Simulation.replay_journal(path, "main", code={"main": changed})
    assert not report.ok
    assert report.divergence is not None and report.divergence["call"] == 3
    assert report.divergence["recorded"].startswith("sleep")
    assert report.divergence["made"].startswith("emit")
    assert "host call 3" in report.message


def test_a_task_the_journal_does_not_have(tmp_path: Path) -> None:
    path = _record(tmp_path)
    with pytest.raises(MessageError, match="no task 'nope'"):
        Simulation.replay_journal(path, "nope")
