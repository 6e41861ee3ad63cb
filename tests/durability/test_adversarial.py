"""Durable runtime, tried as a skeptical user or an attacker would: each test
here is a promise of docs/durability.md that an adversarial sweep found broken
(or nearly so), kept so it stays kept."""

from __future__ import annotations

import json
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psutil
import pytest

from llmspell import JournalError, LlmspellError, MessageError, Runtime, Task
from llmspell.journal import _ENDED, Journal
from llmspell.testing import Fault, Simulation


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


SETTLE_OUT_OF_ORDER = """
const ps = [];
for (const d of [7, 3, 5, 1]) {
  ps.push(spell.run({lang: "lua", code: "spell.sleep(" + d + ") return " + d})
    .then(v => { spell.emit("done." + v, {}); return v; }));
  ps.push(spell.sleep(d + 0.5).then(() => spell.emit("slept", {d})));
}
const first = await Promise.race(ps.slice(0, 4));
const all = await Promise.all(ps);
await spell.sleep(50);
return [first, all[0], all[6]];
"""


@pytest.mark.parametrize("at", [1.2, 4.0, 8.0, 20.0])
@pytest.mark.parametrize("seed", [1, 11])
def test_calls_that_settle_out_of_order_replay_in_the_order_they_settled(
    seed: int, at: float
) -> None:
    """Several host calls outstanding at once (Promise.all/race) settle in the
    order their answers came, not the order they were made: a replay must hand
    the recorded answers back in that order, or the script's later calls come
    in another order and the replay diverges though nothing changed."""
    with Simulation(seed=seed) as sim:
        h = sim.submit(Task.js(SETTLE_OUT_OF_ORDER, id="fan-out"))
        sim.inject([Fault.restart(at=at)])
        assert sim.result(h) == [3, 7, 1]
        lua_runs = [t for t in sim.tasks() if t.kind == "lua"]
        assert len(lua_runs) == 4  # no child ran twice


def test_listing_tasks_reads_no_values_so_one_bad_value_breaks_nothing(tmp_path: Path) -> None:
    """``rt.tasks()`` shows ids, kinds and statuses: it must not read (nor
    decode) every value the journal keeps. Reading 100,000 of them made it slow,
    and one that did not decode degraded the whole runtime."""
    path = str(tmp_path / "runs.db")
    with Runtime(journal=path) as rt:
        rt.result(rt.submit(Task.lua("return 'fine'", id="good")), timeout=10)
        rt.result(rt.submit(Task.lua("return 'spoilt'", id="bad")), timeout=10)
    conn = sqlite3.connect(path)
    conn.execute("UPDATE tasks SET value = X'c1' WHERE id = 'bad'")  # 0xc1: never msgpack
    conn.commit()
    conn.close()
    with Runtime(journal=path) as rt:
        assert {t.id: t.status for t in rt.tasks()} == {"good": "succeeded", "bad": "succeeded"}
        assert rt.stats()["degraded"] is None
        assert rt.result("good", timeout=10) == "fine"


def test_performance_now_reads_the_same_on_a_replay(tmp_path: Path) -> None:
    """``performance.now()`` differs between runs like ``Date.now()``: it is a
    clock read, recorded and replayed; a script that reports it must not fail
    with ReplayDivergence when it resumes."""
    path = str(tmp_path / "runs.db")
    code = """
        const t = performance.now();
        spell.emit("measured", {t});
        await spell.wait_event("go");
        return t;
    """
    with Runtime(journal=path) as rt:  # closed while it waits: it stays unfinished
        sub = rt.subscribe("measured")
        rt.submit(Task.js(code, id="timed"))
        first = sub.get(timeout=10)
    assert first is not None
    with Runtime(journal=path) as rt:
        time.sleep(0.5)  # let the replayed script subscribe
        rt.emit("go", {})
        assert rt.result("timed", timeout=10) == first.payload["t"]


@pytest.mark.slow
def test_lua_pairs_goes_in_the_same_order_in_every_process(tmp_path: Path) -> None:
    """Lua seeds its string hashes per process: the native ``pairs`` order of
    string keys differs from one run to the next. A script that makes a host
    call per key, in ``pairs`` order (the usual way to fan out over a table),
    must not diverge when a new process replays it."""
    path = str(tmp_path / "runs.db")
    code = """
        local sources = {}
        for i = 1, 40 do sources["source" .. i] = i end
        sources[1], sources[2], sources[true] = "one", "two", "yes"
        local seen = {}
        for name in pairs(sources) do
            seen[#seen + 1] = tostring(name)
            spell.emit("fetch", {name = tostring(name)})
        end
        spell.wait_event("go")
        return seen
    """
    first = textwrap.dedent(f"""
        import time
        from llmspell import Runtime, Task
        with Runtime(journal={path!r}) as rt:
            sub = rt.subscribe("fetch")
            rt.submit(Task.lua({code!r}, id="fan-out"))
            for _ in range(43):
                sub.get(timeout=10)
    """)
    subprocess.run([sys.executable, "-c", first], check=True, timeout=60)
    with Runtime(journal=path) as rt:
        time.sleep(0.5)  # let the replayed script subscribe
        rt.emit("go", {})
        seen = rt.result("fan-out", timeout=10)
    names = [f"source{i}" for i in range(1, 41)]
    assert seen == ["1", "2", *sorted(names), "true"]


def test_a_journal_taken_between_the_check_and_the_open_is_a_journal_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``Runtime(journal=...)`` checks the file, then its scheduler opens it for
    good. Another runtime that takes the file in between (two services started
    at once) must make this one raise JournalError, not hand back a runtime
    that is degraded from its first call."""
    path = str(tmp_path / "runs.db")
    with Runtime(journal=path):
        pass
    check = Journal.open
    calls = []

    def racing_open(p: str, *, readonly: bool = False, **kw: Any) -> Journal:
        calls.append(p)
        j = check(p, readonly=readonly, **kw)
        if len(calls) == 1:  # the facade's check: another process takes the file now
            j.close()
            conn = sqlite3.connect(path)
            conn.execute(
                "INSERT OR REPLACE INTO owner (slot, pid, started, host, token, since) "
                "VALUES (0, 1, ?, ?, 'other', 0)",
                (psutil.Process(1).create_time(), socket.gethostname()),
            )
            conn.commit()
            conn.close()
            return check(p, readonly=True)
        return j

    monkeypatch.setattr(Journal, "open", racing_open)
    with pytest.raises(JournalError, match="in use by another runtime") as info:
        Runtime(journal=path)
    assert info.value.path == path


def test_a_journal_deleted_while_in_use_is_said_not_silently_lost(tmp_path: Path) -> None:
    """Someone deletes (or replaces) the journal under a running runtime.
    SQLite goes on writing to the unlinked file, which vanishes at close: every
    later result would be lost without a word. The next write fails instead,
    saying why, and no result whose record went nowhere is seen."""
    path = tmp_path / "runs.db"
    with Runtime(journal=str(path)) as rt:
        assert rt.result(rt.submit(Task.lua("return 1")), timeout=10) == 1
        for f in tmp_path.iterdir():
            f.unlink()
        with pytest.raises(LlmspellError, match="deleted or replaced"):
            rt.result(rt.submit(Task.lua("return 2", id="after")), timeout=10)
        assert "deleted or replaced" in rt.stats()["degraded"]


@pytest.mark.parametrize("lang", ["lua", "js"])
def test_a_retried_script_makes_its_failed_call_again(tmp_path: Path, lang: str) -> None:
    """``retries`` on a script whose tool call failed: without a journal the
    retry calls the tool again and succeeds. With one, the retry replayed the
    recorded failure and failed again, every time. A retry replays the calls
    that succeeded (nothing made twice) and makes the failed one again."""
    code = {
        "lua": """
            local a = spell.tool("steady", {value = 1})
            local b = spell.tool("flaky", {key = spell.args.key, failures = 1})
            return {a, b}
        """,
        "js": """
            const a = await spell.tool("steady", {value: 1});
            const b = await spell.tool("flaky", {key: spell.args.key, failures: 1});
            return [a, b];
        """,
    }[lang]
    with Runtime(journal=str(tmp_path / "runs.db"), retry_backoff=0) as rt:
        rt.register_tool("flaky", "targets:flaky")
        rt.register_tool("steady", "targets:echo")
        h = rt.submit(Task.lua(code, args={"key": f"{tmp_path}-{lang}"}, retries=2)
                      if lang == "lua" else
                      Task.js(code, args={"key": f"{tmp_path}-{lang}"}, retries=2))  # fmt: skip
        steady, flaky = rt.result(h, timeout=10)
        assert steady["value"] == 1 and flaky == 2  # flaky failed once, then was made again
        tools = sorted(t.kind for t in rt.tasks() if t.kind == "tool")
        assert len(tools) == 3  # steady once, flaky twice


def test_wait_and_as_completed_take_ids_of_an_earlier_process(tmp_path: Path) -> None:
    """Tasks are reachable by id across restarts: ``rt.result(id)`` was, but
    ``rt.wait`` and ``rt.as_completed`` said the id was unknown."""
    path = str(tmp_path / "runs.db")
    with Runtime(journal=path) as rt:
        rt.result(rt.submit(Task.lua("return 'old'", id="old")), timeout=10)
        rt.submit(Task.lua("spell.sleep(0.5) return 'resumed'", id="resumed"))
    with Runtime(journal=path) as rt:
        assert list(rt.as_completed(["resumed", "old"], timeout=10)) == ["old", "resumed"]
        done, pending = rt.wait(["old", "resumed"], timeout=10)
        assert (done, pending) == (["old", "resumed"], [])
        assert rt.result("resumed", timeout=10) == "resumed"
        with pytest.raises(MessageError, match="unknown task 'never'"):
            rt.wait(["never"], timeout=1)


def test_compaction_keeps_what_unfinished_tasks_still_need(tmp_path: Path) -> None:
    """The journal forgets the oldest ended tasks (``history``). A script that
    waits long (an approval) while many tasks end must not lose its children:
    its replay submits them again by id, and a forgotten one ran again. Nor may
    a task waiting on a dependency lose the one that already succeeded."""
    path = str(tmp_path / "runs.db")
    side = tmp_path / "side-effects"
    waiter = f"""
        local v = spell.run({{target = "targets:append_line",
                              args = {{path = {str(side)!r}, key = "child"}}}})
        spell.wait_event("approve")
        return v
    """
    opts = {"journal": path, "history": 1, "script_python": ["targets:*"]}
    with Runtime(**opts) as rt:  # type: ignore[arg-type]
        rt.submit(Task.lua(waiter, id="waiter"))
        rt.result(rt.submit(Task.lua("return 'a'", id="dep-a")), timeout=10)
        rt.submit(Task.js("return (await spell.wait_event('approve')).name", id="dep-b"))
        rt.submit(Task.lua("return 'joined'", id="joined", deps=["dep-a", "dep-b"]))
        rt.wait(rt.submit_many([Task.lua("return 1") for _ in range(2100)]), timeout=60)
    with Runtime(**opts) as rt:  # type: ignore[arg-type]
        time.sleep(0.5)  # let the resumed scripts subscribe
        rt.emit("approve", {})
        assert rt.result("waiter", timeout=10) == "child"
        assert rt.result("joined", timeout=10) == "joined"
    assert side.read_text().split() == ["child"]  # the child ran once


def test_run_journal_numbers_a_new_run_past_every_kept_one(tmp_path: Path) -> None:
    """``llmspell run FILE --journal``: runs of one file are ``KEY``, ``KEY#2``,
    ... Once compaction had forgotten ``KEY``, the next run was numbered by
    count, got the id of the kept ``KEY#2``, and printed that old run's result
    without running anything."""
    from llmspell.cli import _journaled_run, _run_key

    script = tmp_path / "job.lua"
    script.write_text("return 1")
    base = _run_key(script, json.dumps([script.read_text(), None], sort_keys=True))

    class Kept:  # what rt.tasks() lists: only the second run is left
        def tasks(self) -> list[SimpleNamespace]:
            return [SimpleNamespace(id=f"{base}#2", status="succeeded")]

    assert _journaled_run(Kept(), script, script.read_text(), None) == (f"{base}#3", False)


@pytest.mark.slow
def test_a_resumed_script_too_large_to_send_fails_instead_of_hanging(tmp_path: Path) -> None:
    """A resumed script goes to its engine with the results of every host call
    it made. In local mode a frame is at most ``max_frame_bytes``: a record
    larger than that could not be sent, and the task stayed "running" for
    ever. It fails instead, saying why."""
    path = str(tmp_path / "runs.db")
    code = """
        local total = 0
        for i = 1, 4 do
            total = total + #spell.run({lang = "lua", code = "return string.rep('x', 600000)"})
        end
        spell.sleep(1.5)
        return total
    """
    fits = """
        local n = #spell.run({lang = "lua", code = "spell.sleep(spell.args.after) "
                              .. "return string.rep('y', 600000)", args = spell.args})
        spell.sleep(1.5)
        return n
    """
    opts = {"mode": "local", "journal": path, "max_frame_bytes": 2_000_000, "workers": 1}
    with Runtime(**opts) as rt:  # type: ignore[arg-type]
        rt.submit(Task.lua(code, id="big"))
        # each fits in a frame, not all four in one dispatch
        rt.submit_many(  # their results one at a time: one batch would exceed a frame
            [Task.lua(fits, id=f"fits-{i}", args={"after": i * 0.15}) for i in range(4)]
        )
        while len([t for t in rt.tasks() if t.kind == "lua"]) < 13:
            time.sleep(0.05)
        time.sleep(0.3)  # the last result recorded; closed in the sleeps
    with Runtime(**opts) as rt:  # type: ignore[arg-type]
        with pytest.raises(LlmspellError, match="max_frame_bytes"):
            rt.result("big", timeout=30)
        assert [rt.result(f"fits-{i}", timeout=30) for i in range(4)] == [600000] * 4


@pytest.mark.slow
def test_results_that_fit_alone_but_not_together_all_arrive() -> None:
    """Local mode: an engine sends the results of a quantum in one message. Four
    results that each fit in ``max_frame_bytes`` but not together could not be
    sent, and their tasks stayed "running" for ever (journal or not)."""
    code = "return string.rep('z', 600000)"
    with Runtime(mode="local", max_frame_bytes=2_000_000, workers=1) as rt:
        handles = rt.submit_many([Task.lua(code) for _ in range(4)])
        assert [len(rt.result(h, timeout=30)) for h in handles] == [600000] * 4
        too_big = rt.submit(Task.lua("return string.rep('z', 3000000)"))
        with pytest.raises(LlmspellError, match="max_frame_bytes"):
            rt.result(too_big, timeout=30)


def test_outcomes_that_fit_alone_but_not_together_go_in_several_messages() -> None:
    """Local mode: outcomes the scheduler ends in one turn go to a facade in one
    batch. Several big values (each under ``max_frame_bytes``, together over it)
    made one message too large to send, refused unheard of: their waiters waited
    for ever. (Lanes deliver several engine messages per turn, so this happens
    whenever an engine's results were split to fit.)"""
    from llmspell.actors.scheduler import Scheduler
    from llmspell.messages import decode
    from llmspell.messages.types import TaskOutcome

    sched = Scheduler()
    sched._max_frame = 2_000_000
    sent: list[bytes] = []
    sched.send = lambda to, data: sent.append(data)  # type: ignore[method-assign]
    outcomes = [
        TaskOutcome(f"t{i}", "succeeded", "z" * 600_000, None, {"duration": 0.1}) for i in range(4)
    ] + [TaskOutcome(f"s{i}", "succeeded", i) for i in range(1200)]
    sched._send_outcomes("facade", outcomes)
    assert all(len(data) <= 2_000_000 for data in sent)
    got = [o for data in sent for o in decode(data).items]
    assert [o.task_id for o in got] == [o.task_id for o in outcomes]
    assert got[0].value == "z" * 600_000 and got[-1].value == 1199
    assert all(len(decode(data).items) <= 500 for data in sent)
