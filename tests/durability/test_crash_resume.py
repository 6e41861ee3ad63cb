"""Kill the process that owns a journaled runtime anywhere in a workflow;
a new process on the same journal finishes every task exactly once.

The workflow (``crash_driver.py``) has Python steps with side effects (a file
per run), a Lua step with a tool call, a sleep, clock and random reads, an
emit and a child task, a JS step with a tool call, a sleep and a
``wait_event`` that only the second process answers, and a race.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

HERE = Path(__file__).parent
DRIVER = HERE / "crash_driver.py"


def _spawn(phase: str, journal: Path, dir: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(DRIVER), phase, str(journal), str(dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=HERE,
    )


def _kill_tree(proc: subprocess.Popen[str]) -> None:
    """SIGKILL the owner and every process it started (local-mode children)."""
    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    proc.send_signal(signal.SIGKILL)
    for c in children:
        try:
            c.kill()
        except psutil.NoSuchProcess:
            pass
    proc.wait(10)


def _runs(dir: Path, tag: str) -> list[str]:
    return [p.name for p in dir.iterdir() if p.name.split(".")[0] == tag]


def run_and_kill(tmp: Path, kill_after: float) -> dict[str, Any]:
    journal, dir = tmp / "runs.db", tmp / "effects"
    dir.mkdir()
    first = _spawn("start", journal, dir)
    try:
        assert first.stdout is not None
        line = first.stdout.readline()  # "submitted": the submits are journaled
        assert line.strip() == "submitted", first.stderr.read() if first.stderr else ""
        time.sleep(kill_after)
    finally:
        _kill_tree(first)
    second = _spawn("resume", journal, dir)
    try:
        _out, err = second.communicate(timeout=120)
    finally:
        if second.poll() is None:
            _kill_tree(second)
    assert second.returncode == 0, err
    results: dict[str, Any] = json.loads((dir / "results.json").read_text())
    results["effects"] = {tag: _runs(dir, tag) for tag in ("A", "L", "J", "E")}
    return results


def check(results: dict[str, Any]) -> None:
    values = {k: results[k] for k in ("A", "L", "J", "R", "E")}
    assert values["A"] == {"value": "A"}, values
    lua = values["L"]["value"]
    assert lua["a"] == "L" and lua["child"] == 7 and 1 <= lua["r"] <= 1_000_000, lua
    js = values["J"]["value"]
    assert js == {"n": "J", "ok": True, "r": True, "now": True}, js
    race = values["R"]["value"]
    assert race["ok"] and race["winner"] == 1, race  # the fast JS step, 0-based index 1
    assert values["E"] == {"value": "E"}
    effects = results["effects"]
    # A has retries=1 and the process crashed once: at most 1 + 1 + 1 runs
    assert 1 <= len(effects["A"]) <= 3, effects
    # a tool a script called: the call is not made again by the replay; its Python
    # run may be repeated only if the crash caught it running (at least once)
    for tag in ("L", "J"):
        assert 1 <= len(effects[tag]) <= 2, effects
    assert len(effects["E"]) == 1, effects
    # every task ended, in one state, once; nothing was submitted twice under a new
    # id: A L J R E, L's tool call and child, J's tool call, the race's two steps
    tasks = results["tasks"]
    statuses = {t[0]: t[2] for t in tasks}
    assert len(tasks) == len(statuses) == 10, tasks
    assert sorted(statuses.values()) == ["cancelled"] + ["succeeded"] * 9, tasks
    kinds = sorted(t[1] for t in tasks)
    assert kinds == sorted(
        ["python", "lua", "js", "workflow", "python", "tool", "lua", "tool", "lua", "js"]
    ), tasks
    # a crash is not a retry: every task is on its first attempt
    assert all(t[3] <= 1 for t in tasks), tasks


@pytest.mark.slow
@settings(
    max_examples=4,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
    derandomize=True,
)
@given(kill_after=st.floats(min_value=0.0, max_value=1.6))
def test_killed_anywhere_every_task_ends_once(
    tmp_path_factory: pytest.TempPathFactory, kill_after: float
) -> None:
    check(run_and_kill(tmp_path_factory.mktemp("crash"), kill_after))


@pytest.mark.slow
def test_nothing_lost_when_killed_right_after_submitting(tmp_path: Path) -> None:
    check(run_and_kill(tmp_path, 0.0))


@pytest.mark.slow
def test_killed_while_the_js_step_waits_for_approval(tmp_path: Path) -> None:
    check(run_and_kill(tmp_path, 1.5))
