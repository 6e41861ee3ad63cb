"""The live progress display of workflows (what a terminal shows)."""

from __future__ import annotations

import _thread
import io
import json
import re
import threading
from pathlib import Path

import pytest
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


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _last_line(out: io.StringIO) -> str:
    return _ANSI.sub("", out.getvalue()).strip().splitlines()[-1]


def _console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=True, width=140, color_system=None), out


def _final_rows(text: str, title: str) -> dict[str, str]:
    table = text.split(title)[-1]
    return {
        line.split("│")[1].strip(): line
        for line in table.splitlines()
        if line.count("│") >= 4 and line.split("│")[1].strip() not in ("", "step")
    }


CHAIN = {
    "name": "chain",
    "strategy": "parallel",
    "steps": [
        {"id": "fetch", "lang": "lua", "code": "spell.sleep(0.3) return 1"},
        {"id": "parse", "lang": "js", "code": "throw new TypeError('bad row 7\\nmore')"},
        {"id": "store", "lang": "lua", "code": "return spell.input", "deps": ["parse"]},
        {"id": "report", "lang": "lua", "code": "return 1", "deps": ["fetch"]},
    ],
}


def test_failed_rows_say_why_dependents_are_skipped_and_a_summary_ends_the_table() -> None:
    console, out = _console()
    with Runtime() as rt:
        result = run_with_progress(rt, load_workflow(CHAIN), console=console)
    assert not result.ok
    text = out.getvalue()
    rows = _final_rows(text, "workflow chain (parallel)")
    assert "failed" in rows["parse"] and "TypeError: bad row 7" in rows["parse"]
    assert "more" not in rows["parse"]  # the first line of the error only
    assert "skipped" in rows["store"] and "because parse did not succeed" in rows["store"]
    assert "succeeded" in rows["report"] and "succeeded" in rows["fetch"]
    shown = _ANSI.sub("", text)
    assert "[]" not in shown and "?" not in shown.split("workflow chain")[-1]
    summary = _last_line(out)
    assert summary.startswith("2/4 steps succeeded in ") and "(failed 1, skipped 1)" in summary


def test_pending_steps_show_what_they_wait_on() -> None:
    from llmspell._progress import _Board

    workflow = load_workflow(CHAIN)
    with Runtime() as rt:
        board = _Board(rt, workflow)
        worker = threading.Thread(target=rt._run_loaded_workflow, args=(workflow,))
        worker.start()
        seen = set()
        while worker.is_alive():
            board.refresh()
            seen.add(board.detail[workflow.tasks[3].id])  # report, while fetch sleeps
            worker.join(0.02)
    assert "waits on fetch" in seen


def test_a_failed_pipeline_stage_skips_the_later_ones_and_all_ok_reads_n_of_n() -> None:
    console, out = _console()
    pipeline = {
        "name": "pipe",
        "strategy": "pipeline",
        "steps": [
            {"id": "a", "lang": "lua", "code": "error('boom')"},
            {"id": "b", "lang": "lua", "code": "return 1"},
        ],
    }
    ok = {
        "name": "fine",
        "strategy": "sequential",
        "steps": [
            {"id": "x", "lang": "lua", "code": "return 1"},
            {"id": "y", "lang": "js", "code": "return 2"},
        ],
    }
    with Runtime() as rt:
        run_with_progress(rt, load_workflow(pipeline), console=console)
        rows = _final_rows(out.getvalue(), "workflow pipe (pipeline)")
        assert "skipped" in rows["b"] and "an earlier stage failed" in rows["b"]
        console, out = _console()
        assert run_with_progress(rt, load_workflow(ok), console=console).ok
    assert _last_line(out).startswith("2/2 steps succeeded in ")


def test_ctrl_c_names_the_cancelled_steps_after_the_table() -> None:
    console, out = _console()
    slow = {
        "name": "slow",
        "strategy": "parallel",
        "steps": [
            {"id": "quick", "lang": "lua", "code": "return 1"},
            {"id": "long", "lang": "lua", "code": "spell.sleep(60) return 1"},
            {"id": "longer", "lang": "js", "code": "await spell.sleep(60); return 1"},
        ],
    }
    timer = threading.Timer(1.5, _thread.interrupt_main)  # "quick" is long done by then
    with Runtime() as rt:
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            run_with_progress(rt, load_workflow(slow), console=console)
    timer.cancel()
    assert _last_line(out) == "interrupted: cancelled 2 steps still going: long, longer"
    assert "[]" not in _ANSI.sub("", out.getvalue())


def test_the_timeout_names_the_cancelled_steps_and_raises_timeout_error() -> None:
    console, out = _console()
    slow = {
        "name": "t",
        "strategy": "parallel",
        "steps": [{"id": "long", "lang": "lua", "code": "spell.sleep(60) return 1"}],
    }
    with Runtime() as rt, pytest.raises(TimeoutError):
        run_with_progress(rt, load_workflow(slow), console=console, timeout=0.3)
    assert _last_line(out) == "timed out: cancelled 1 step still going: long"


def _run_with_terminal(args: list[str], *, stdout_tty: bool) -> tuple[str, str]:
    """Run the CLI with stderr (and, if asked, stdout) on a pseudo-terminal."""
    import os
    import pty
    import subprocess
    import sys

    err_master, err_slave = pty.openpty()
    out_master, out_slave = pty.openpty() if stdout_tty else (None, None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmspell.cli", *args],
        stdout=out_slave if stdout_tty else subprocess.PIPE,
        stderr=err_slave,
        env={**os.environ, "COLUMNS": "120", "TERM": "xterm"},
    )
    os.close(err_slave)
    if out_slave is not None:
        os.close(out_slave)
    chunks: dict[int, bytes] = {err_master: b""}
    done: dict[int, bytes] = {}
    if out_master is not None:
        chunks[out_master] = b""
    import select

    while chunks:
        ready, _, _ = select.select(list(chunks), [], [], 60)
        assert ready, "the CLI said nothing for a minute"
        for fd in ready:
            try:
                data = os.read(fd, 65536)
            except OSError:  # the pty closed with the process
                data = b""
            if not data:
                done[fd] = chunks.pop(fd)
            else:
                chunks[fd] += data
    proc.wait(timeout=60)
    out = (
        done[out_master].decode() if out_master is not None else proc.stdout.read().decode()  # type: ignore[union-attr]
    )
    json.loads(out)  # one JSON value either way
    return out, _ANSI.sub("", done[err_master].decode())


@pytest.mark.slow
def test_the_cli_draws_progress_on_stderr_and_keeps_stdout_for_json(tmp_path: Path) -> None:
    wf = tmp_path / "chain.json"
    wf.write_text(json.dumps(CHAIN))
    out, err = _run_with_terminal(["run", str(wf)], stdout_tty=False)
    assert out.count("\n") == 1  # one line of JSON for the pipe (`| jq`)
    assert "workflow chain (parallel)" in err and "2/4 steps succeeded in" in err
    out, err = _run_with_terminal(["run", str(wf)], stdout_tty=True)
    assert out.count("\n") > 5 and '  "strategy": "parallel"' in out  # pretty for a person
