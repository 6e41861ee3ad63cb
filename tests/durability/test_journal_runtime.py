"""``Runtime(journal=...)`` as a user sees it: bad journals, retention,
registrations and unfinished work across processes."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from llmspell import JournalError, MessageError, Runtime, Task
from llmspell.journal import Journal


def test_a_file_that_is_not_a_journal_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("not a database\n")
    with pytest.raises(JournalError, match=r"notes\.txt") as info:
        Runtime(journal=str(notes))
    assert info.value.path is not None and "notes.txt" in info.value.path
    assert notes.read_text() == "not a database\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_a_journal_of_a_newer_llmspell_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    with Runtime(journal=str(path)) as rt:
        rt.result(rt.submit(Task.lua("return 1")), timeout=10)
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 99")
    conn.commit()
    conn.close()
    before = path.read_bytes()
    with pytest.raises(JournalError, match="newer"):
        Runtime(journal=str(path))
    assert path.read_bytes() == before


@pytest.mark.slow
def test_a_journal_in_use_by_another_live_runtime_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
                import sys, time
                from llmspell import Runtime
                with Runtime(journal={str(path)!r}):
                    print("open", flush=True)
                    sys.stdin.readline()
            """),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        with pytest.raises(JournalError, match=r"runs\.db"):
            Runtime(journal=str(path))
    finally:
        assert holder.stdin is not None
        holder.stdin.write("\n")
        holder.stdin.flush()
        holder.wait(30)
    with Runtime(journal=str(path)) as rt:  # its owner is gone: free again
        assert rt.tasks() == []


def test_a_path_that_cannot_be_written_is_one_clear_error() -> None:
    with pytest.raises(JournalError, match=r"/proc/llmspell-runs\.db"):
        Runtime(journal="/proc/llmspell-runs.db")


def test_registrations_are_back_before_the_application_registers_again(tmp_path: Path) -> None:
    path = str(tmp_path / "runs.db")
    with Runtime(journal=path) as rt:
        rt.register_tool("double", Task.lua("return spell.args.x * 2"))
    with Runtime(journal=path) as rt:  # a new process would see the same
        h = rt.submit(Task.lua('return spell.tool("double", {x = 21})'))
        assert rt.result(h, timeout=10) == 42


def test_closing_leaves_unfinished_tasks_for_the_next_runtime(tmp_path: Path) -> None:
    path = str(tmp_path / "runs.db")
    with Runtime(journal=path) as rt:
        gate = rt.submit(Task.js("await spell.wait_event('gate.open'); return 1", id="gate"))
        rt.submit(Task.lua("return 2", deps=[gate], id="after"))
    with Journal.open(path, readonly=True) as j:
        assert {t.id: t.status for t in j.tasks()} == {"gate": "running", "after": "pending"}
    with Runtime(journal=path) as rt:
        deadline = time.monotonic() + 10
        while rt.status("after") != "succeeded" and time.monotonic() < deadline:
            rt.emit("gate.open")
            time.sleep(0.05)
        assert rt.result("after", timeout=10) == 2


def test_the_journal_stays_bounded_by_history(tmp_path: Path) -> None:
    path = str(tmp_path / "runs.db")
    with Runtime(journal=path, history=5) as rt:  # keeps the newest max(1000, 100 x 5)
        for _ in range(3):
            hs = rt.submit_many([Task.lua("return 1") for _ in range(1000)])
            for h in hs:
                rt.result(h, timeout=30)
    with Journal.open(path, readonly=True) as j:
        kept = len(j.tasks())
    assert 1000 <= kept <= 2000, kept  # trimmed every 1,000 ends down to 1,000


def test_tasks_lists_those_of_earlier_processes(tmp_path: Path) -> None:
    path = str(tmp_path / "runs.db")
    with Runtime(journal=path) as rt:
        rt.result(rt.submit(Task.lua("return 1", id="old")), timeout=10)
    with Runtime(journal=path) as rt:
        rt.result(rt.submit(Task.lua("return 2", id="new")), timeout=10)
        infos = {t.id: t for t in rt.tasks()}
        assert set(infos) == {"old", "new"}
        assert infos["old"].status == "succeeded" and infos["old"].kind == "lua"
        assert [t.id for t in rt.tasks(status="succeeded")] == ["old", "new"]
        with pytest.raises(Exception, match="duplicate task id 'old'"):
            rt.result(rt.submit(Task.lua("return 3", id="old")), timeout=10)


def test_an_id_of_an_earlier_process_is_refused_even_when_asked_late(tmp_path: Path) -> None:
    """The scheduler refuses the id (the journal knows it) after submit returned:
    its answer, come before anyone waits on the handle, is kept and raised."""
    path = str(tmp_path / "runs.db")
    with Runtime(journal=path) as rt:
        rt.result(rt.submit(Task.lua("return 1", id="old")), timeout=10)
    with Runtime(journal=path) as rt:
        h = rt.submit(Task.lua("return 3", id="old"))
        rt.stats()  # a round trip: the refusal is in by now
        with pytest.raises(MessageError, match="duplicate task id 'old'"):
            rt.result(h, timeout=10)
        assert rt.status(h) == "failed"


def test_a_retry_after_a_failure_makes_its_host_calls_again(tmp_path: Path) -> None:
    """With a journal a script re-run after a crash replays its host calls; one
    re-run after a failure is a fresh attempt: it does not replay the failure."""
    path = str(tmp_path / "runs.db")
    code = """
        local ok, v = pcall(spell.tool, "flaky", {dir = spell.args.dir})
        if not ok then error("the tool failed: " .. tostring(v)) end
        return v
    """
    with Runtime(journal=path, retry_backoff=0) as rt:
        rt.register_tool("flaky", "durable_targets:flaky")
        h = rt.submit(Task.lua(code, args={"dir": str(tmp_path)}, retries=1))
        assert rt.result(h, timeout=20) == "fine"


@pytest.mark.slow
@pytest.mark.parametrize("many", [False, True])
def test_a_task_the_runtime_answered_about_is_in_the_journal(tmp_path: Path, many: bool) -> None:
    """``submit`` returns at once (API.md); once the runtime answered anything
    about the last task submitted (its status), every task is journaled: the
    owner SIGKILLs itself right then and the next process has them all."""
    path = tmp_path / "runs.db"
    submit = (
        "rt.submit_many([Task.lua('return 1', id=f'k{i}') for i in range(50)]); rt.status('k49')"
        if many
        else "rt.status(rt.submit(Task.lua('spell.sleep(30) return 1', id='k0')))"
    )
    code = textwrap.dedent(
        f"""
        import os, signal
        from llmspell import Runtime, Task
        rt = Runtime(journal={str(path)!r})
        {submit}
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    assert done.returncode == -9, done.stderr.decode()
    with Runtime(journal=str(path)) as rt:
        ids = {t.id for t in rt.tasks()}
        assert {f"k{i}" for i in range(50 if many else 1)} <= ids
        if many:
            assert rt.result("k49", timeout=30) == 1
