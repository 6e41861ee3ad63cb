"""Durable runtime, tried as a skeptical user or an attacker would: each test
here is a promise of docs/durability.md that an adversarial sweep found broken
(or nearly so), kept so it stays kept."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmspell import JournalError, LlmspellError, Runtime, Task
from llmspell.journal import _ENDED, Journal


def test_a_result_whose_record_could_not_be_written_is_never_seen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk fills up just as a task ends: its end is not in the journal (the
    next runtime runs it again), so no caller of this one may see its value, and
    a task depending on it must not start."""
    path = str(tmp_path / "runs.db")
    commit = Journal.commit

    def full_disk(self: Journal) -> None:
        if any(sql is _ENDED for sql, _ in self._runs):
            raise JournalError("database or disk is full (simulated)", path=self.path)
        commit(self)

    monkeypatch.setattr(Journal, "commit", full_disk)
    marker = tmp_path / "dependent-ran"
    with Runtime(journal=path) as rt:
        first = rt.submit(Task.lua("return 42", id="first"))
        after = rt.submit(
            Task.python(
                "targets:append_line", args={"path": str(marker), "key": "x"}, deps=["first"]
            )
        )
        with pytest.raises(LlmspellError, match="journal"):
            rt.result(first, timeout=10)
        assert rt.status("first") == "failed"
        with pytest.raises(LlmspellError):
            rt.result(after, timeout=10)
    monkeypatch.setattr(Journal, "commit", commit)
    with Journal.open(path, readonly=True) as j:
        task = j.get("first")
        assert task is not None and task.status == "running"  # the next runtime runs it
    assert not marker.exists()
