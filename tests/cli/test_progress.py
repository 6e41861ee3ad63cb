"""The live progress display of workflows (what a terminal shows)."""

from __future__ import annotations

import io

from rich.console import Console

from llmspell import Runtime
from llmspell._progress import run_with_progress
from llmspell.workflow import load_workflow

WORKFLOW = {
    "name": "shown",
    "strategy": "parallel",
    "steps": [
        {
            "id": "counting",
            "lang": "lua",
            "code": "for i = 1, 3 do spell.progress(i, 3, 'chunk ' .. i) spell.sleep(0.05) end "
            "return 1",
        },
        {"id": "failing", "lang": "js", "code": "throw new Error('nope')"},
    ],
}


def test_one_line_per_step_with_status_and_the_steps_own_progress() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=100, color_system=None)
    with Runtime() as rt:
        result = run_with_progress(rt, load_workflow(WORKFLOW), console=console)
    assert not result.ok and result.failed[0][0] == 1
    final = out.getvalue().split("workflow shown (parallel)")[-1]
    counting = next(line for line in final.splitlines() if "counting" in line)
    failing = next(line for line in final.splitlines() if "failing" in line)
    assert "succeeded" in counting and "3/3 chunk 3" in counting
    assert "failed" in failing


def test_a_single_script_shows_its_status_and_progress_while_it_runs() -> None:
    from llmspell import Task
    from llmspell._progress import wait_with_progress

    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=100, color_system=None)
    code = "for i = 1, 3 do spell.progress(i, 3, 'step ' .. i) spell.sleep(0.15) end return 7"
    with Runtime() as rt:
        h = rt.submit(Task.lua(code))
        assert wait_with_progress(rt, h, "job.lua", timeout=30, console=console) == 7
    shown = out.getvalue()
    assert "job.lua" in shown and "running" in shown and "/3 step" in shown
