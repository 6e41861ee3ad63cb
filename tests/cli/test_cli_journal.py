"""``llmspell journal PATH [TASK_ID]``: a journal's tasks as a table or JSON,
one task's record as JSON; a bad journal or an unknown task is one line on
stderr and exit 2; a journal owned by a live runtime can be read."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from helpers import run_cli

from llmspell import cli
from llmspell.journal import Journal
from llmspell.messages.types import TaskSpec


@pytest.fixture
def journal(tmp_path: Path) -> Path:
    path = tmp_path / "runs.db"
    with Journal.open(path) as j:
        j.submitted(TaskSpec(id="flow", kind="lua", code="return spell.await(x)"), 1000.0)
        j.submitted(TaskSpec(id="step", kind="python", target="m:f", parent="flow"), 1001.0)
        j.submitted(TaskSpec(id="later", kind="js", code="return 1"), 1002.0)
        j.dispatched("flow", 0, 1003.0)
        j.dispatched("step", 0, 1004.0)
        j.retried("step", 0, "flaky", 1005.0)
        j.dispatched("step", 1, 1006.0)
        j.ended("step", "succeeded", {"rows": 3, "raw": b"\xff"}, None, 1, 1007.0)
        j.host_call("flow", 1, "submit", {"kind": "python"}, "step", None, True)
        j.host_call("flow", 2, "await", {"task_id": "step"}, {"rows": 3}, None, True)
        j.host_call("flow", 3, "sleep", {"seconds": 60.0, "until": 1068.0}, None, None, False)
        j.commit()
    return path


def test_the_task_list_as_json(journal: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["journal", str(journal), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows == [
        {"id": "flow", "kind": "lua", "status": "running", "attempts": 1,
         "created": 1000.0, "ended": None},
        {"id": "step", "kind": "python", "status": "succeeded", "attempts": 2,
         "created": 1001.0, "ended": 1007.0},
        {"id": "later", "kind": "js", "status": "pending", "attempts": 0,
         "created": 1002.0, "ended": None},
    ]  # fmt: skip
    assert cli.main(["journal", str(journal), "--json", "--status", "pending"]) == 0
    assert [r["id"] for r in json.loads(capsys.readouterr().out)] == ["later"]


@pytest.mark.slow
def test_the_task_list_as_a_table(journal: Path) -> None:
    done = run_cli("journal", str(journal))
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if "flow" in line or "step" in line]
    assert len(lines) == 2
    assert "running" in lines[0] and "succeeded" in lines[1]
    for header in ("id", "kind", "status", "attempts", "created", "ended"):
        assert header in done.stdout


def test_one_tasks_record(journal: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["journal", str(journal), "flow"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["spec"] == {"id": "flow", "kind": "lua", "code": "return spell.await(x)"}
    assert [e["event"] for e in record["events"]] == ["submitted", "dispatched"]
    assert record["calls"] == [
        {"n": 1, "op": "submit", "call": {"kind": "python"}, "result": "step",
         "error": None, "done": True},
        {"n": 2, "op": "await", "call": {"task_id": "step"}, "result": {"rows": 3},
         "error": None, "done": True},
        {"n": 3, "op": "sleep", "call": {"seconds": 60.0, "until": 1068.0}, "result": None,
         "error": None, "done": False},
    ]  # fmt: skip
    assert cli.main(["journal", str(journal), "step"]) == 0
    step = json.loads(capsys.readouterr().out)
    assert step["value"] == {"rows": 3, "raw": "\\xff"}  # bytes printed as text
    assert step["parent"] == "flow" and step["attempts"] == 2
    assert [e["event"] for e in step["events"]] == [
        "submitted", "dispatched", "retried", "dispatched", "ended",
    ]  # fmt: skip
    assert step["events"][2]["error"] == "flaky"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["TASK"], "no task 'TASK'"),
        (["flow", "--status", "failed"], "does not go with TASK_ID"),
    ],
)
def test_an_unknown_task_or_bad_arguments(journal: Path, args: list[str], says: str) -> None:
    done = run_cli("journal", str(journal), *args)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and says in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_a_file_that_is_not_a_journal(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello\n" * 100)
    for path, says in (
        (text, "is not an llmspell journal"),
        (tmp_path / "absent.db", "no such journal"),
        (tmp_path, "is a directory"),
    ):
        done = run_cli("journal", str(path))
        assert done.returncode == 2 and done.stdout == ""
        assert done.stderr.count("\n") == 1 and says in done.stderr and str(path) in done.stderr
    assert text.read_text() == "hello\n" * 100


@pytest.mark.slow
def test_a_journal_in_use_by_a_live_runtime_can_be_read(journal: Path) -> None:
    holder = textwrap.dedent(
        """
        import sys
        from llmspell.journal import Journal
        j = Journal.open(sys.argv[1])
        print("ready", flush=True)
        sys.stdin.readline()
        j.close()
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", holder, str(journal)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        done = run_cli("journal", str(journal), "--json")
        assert done.returncode == 0, done.stderr
        assert [r["id"] for r in json.loads(done.stdout)] == ["flow", "step", "later"]
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.slow
def test_the_help_lists_the_command() -> None:
    done = run_cli("--help")
    assert "journal" in done.stdout
    done = run_cli("journal", "--help")
    assert done.returncode == 0 and "TASK_ID" in done.stdout and "--status" in done.stdout


# -- llmspell run FILE --journal: resume an unfinished run ---------------------------------


def _llmspell(*args: str) -> list[str]:
    return [sys.executable, "-m", "llmspell.cli", *args]


@pytest.mark.slow
def test_run_with_a_journal_resumes_a_killed_run_of_the_same_file(tmp_path: Path) -> None:
    script = tmp_path / "slow.lua"
    script.write_text(
        'local n = spell.run({lang = "lua", code = "return 40"})\nspell.sleep(1.5)\nreturn n + 2\n'
    )
    journal = tmp_path / "runs.db"
    first = subprocess.Popen(
        _llmspell("run", str(script), "--journal", str(journal), "--json"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # killed once the run and its child are in the journal (the script sleeps then)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and first.poll() is None:
        if journal.exists():
            try:
                with Journal.open(str(journal), readonly=True) as j:
                    if len(j.tasks()) >= 2:
                        break
            except Exception:  # being created: look again
                pass
        time.sleep(0.05)
    assert first.poll() is None, "the first run ended before it could be killed"
    first.kill()
    first.wait(10)
    again = subprocess.run(
        _llmspell("run", str(script), "--journal", str(journal), "--json"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout) == 42
    assert "resuming run:slow.lua@" in again.stderr
    with Journal.open(str(journal), readonly=True) as j:
        tasks = j.tasks()
    assert len(tasks) == 2  # the run and its one child: nothing ran twice
    # a finished run is not resumed: the same command starts a new one
    third = subprocess.run(
        _llmspell("run", str(script), "--journal", str(journal), "--json"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert third.returncode == 0 and json.loads(third.stdout) == 42
    assert "resuming" not in third.stderr
    with Journal.open(str(journal), readonly=True) as j:
        ids = sorted(t.id for t in j.tasks() if t.parent is None)
    assert len(ids) == 2 and ids[1] == ids[0] + "#2"


@pytest.mark.slow
def test_run_a_workflow_with_a_journal(tmp_path: Path) -> None:
    flow = tmp_path / "flow.yaml"
    flow.write_text(
        "name: f\nstrategy: sequential\nsteps:\n"
        "  - id: a\n    lang: lua\n    code: return 1\n"
        "  - id: b\n    lang: js\n    code: return spell.input + 1\n    deps: [a]\n"
    )
    out = subprocess.run(
        _llmspell("run", str(flow), "--journal", str(tmp_path / "runs.db"), "--json"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["ok"] and result["results"] == [1, 2]
