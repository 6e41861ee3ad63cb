"""The journal store (``llmspell.journal``): what is written comes back, in
order, only once committed, all of a commit or none of it; every kind of bad
file is one JournalError with the file unchanged; ownership by live and dead
processes; read-only opens; memory stores; compaction."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from llmspell import JournalError, MessageError
from llmspell.journal import APPLICATION_ID, SCHEMA, Journal, JournalTask
from llmspell.messages.types import TaskSpec


def spec(i: int | str, **kw: object) -> TaskSpec:
    return TaskSpec(id=str(i), kind=kw.pop("kind", "lua"), code="return 1", **kw)  # type: ignore[arg-type]


def fill(path: Path, n: int = 300) -> None:
    """A real journal of ``n`` tasks in every state, closed."""
    with Journal.open(path) as j:
        for i in range(n):
            j.submitted(spec(f"t{i}", args={"i": i, "pad": "x" * 50}), 1000.0 + i)
            if i % 3:
                j.dispatched(f"t{i}", 0, 2000.0 + i)
            if i % 3 == 2:
                j.ended(f"t{i}", "succeeded", {"i": i}, None, 0, 3000.0 + i)
            j.host_call(f"t{i}", 1, "time", {"fn": "os.time"}, i, None, True)
        j.commit()


def snapshot(path: Path) -> dict[str, bytes | bool | None]:
    """The file and its -wal byte for byte, and whether it has a -shm (SQLite's
    shared memory between connections, whose read marks change on every read)."""
    out: dict[str, bytes | bool | None] = {}
    for suffix in ("", "-wal"):
        f = Path(str(path) + suffix)
        out[suffix] = f.read_bytes() if f.exists() else None
    out["-shm"] = Path(str(path) + "-shm").exists()
    return out


def refused(path: Path, what: str, readonly: bool = False) -> JournalError:
    """Opening ``path`` raises JournalError saying ``what`` and naming the path,
    and the file is left exactly as it was."""
    before = snapshot(path)
    with pytest.raises(JournalError) as info:
        Journal.open(path, readonly=readonly)
    assert what in str(info.value)
    assert str(path) in str(info.value) and info.value.path == str(path)
    assert snapshot(path) == before
    return info.value


@pytest.fixture
def j(tmp_path: Path) -> Iterator[Journal]:
    journal = Journal.open(tmp_path / "j.db")
    yield journal
    journal.close()


# -- round trips -----------------------------------------------------------------------


VALUES = [
    None,
    True,
    -(2**63),
    2**64 - 1,
    1.5,
    float("inf"),
    "héllo \U0001f600",
    "lone \ud800 surrogate",
    b"\x00\xffbytes",
    [1, [2, [3]]],
    {"a": {"b": [None, b"x"]}},
]


def test_every_write_reads_back(j: Journal) -> None:
    child = spec("c", kind="python", parent="p", retries=2, deps=["p"], metadata={"m": 1})
    j.submitted(spec("p", compensate=spec("undo")), 10.0)
    j.submitted(child, 11.0)
    j.dispatched("p", 0, 12.0)
    j.dispatched("c", 0, 13.0)
    j.retried("c", 0, "it broke \ud800", 14.0)
    j.dispatched("c", 1, 15.0)
    for n, v in enumerate(VALUES, 1):
        j.host_call("p", n, "await", {"task_id": "c"}, v, None, True)
    j.host_call("p", 99, "sleep", {"seconds": 5, "until": 20.0}, None, None, False)
    j.ended("c", "failed", None, {"message": "no", "kind": "failed", "attempts": 2}, 1, 16.0)
    j.commit()

    p, c = j.get("p"), j.get("c")
    assert p is not None and c is not None
    assert (p.id, p.kind, p.status, p.attempts, p.created, p.ended, p.parent) == (
        "p", "lua", "running", 1, 10.0, None, None,
    )  # fmt: skip
    assert p.spec == spec("p", compensate=spec("undo"))
    assert (c.status, c.attempts, c.ended, c.parent, c.value) == ("failed", 2, 16.0, "p", None)
    assert c.error == {"message": "no", "kind": "failed", "attempts": 2}
    assert c.spec == child
    calls = j.calls("p")
    assert [c[0] for c in calls] == [*range(1, len(VALUES) + 1), 99]
    assert [c[3] for c in calls[:-1]] == VALUES
    assert calls[-1] == [99, "sleep", {"seconds": 5, "until": 20.0}, None, None, False]
    assert j.calls("nobody") == [] and j.get("nobody") is None

    record = j.record("c")
    assert record["spec"] == {
        "id": "c", "kind": "python", "code": "return 1", "deps": ["p"], "retries": 2,
        "metadata": {"m": 1}, "parent": "p",
    }  # fmt: skip
    assert record["events"] == [
        {"event": "submitted", "t": 11.0},
        {"event": "dispatched", "t": 13.0, "attempt": 0},
        {"event": "retried", "t": 14.0, "attempt": 0, "error": "it broke \ud800"},
        {"event": "dispatched", "t": 15.0, "attempt": 1},
        {"event": "ended", "t": 16.0, "attempt": 1, "status": "failed"},
    ]
    assert record["status"] == "failed" and record["error"]["message"] == "no"
    assert j.record("p")["calls"][-1] == {
        "n": 99, "op": "sleep", "call": {"seconds": 5, "until": 20.0},
        "result": None, "error": None, "done": False,
    }  # fmt: skip
    with pytest.raises(KeyError):
        j.record("nobody")


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_every_value_comes_back_as_it_went_in(j: Journal, value: object) -> None:
    j.submitted(spec("v"), 1.0)
    j.ended("v", "succeeded", value, None, 0, 2.0)
    j.commit()
    got = j.get("v")
    assert got is not None and got.status == "succeeded"
    assert got.value == value and type(got.value) is type(value)


def test_a_host_call_answered_replaces_the_call_made(j: Journal) -> None:
    j.host_call("t", 1, "wait_event", {"pattern": "a.*", "until": None}, None, None, False)
    j.commit()
    assert j.calls("t") == [[1, "wait_event", {"pattern": "a.*", "until": None}, None, None, False]]
    j.host_call(
        "t", 1, "wait_event", {"pattern": "a.*", "until": None}, {"name": "a.b"}, None, True
    )
    j.host_call("t", 2, "await", {"task_id": "x"}, None, "x failed", True)
    j.commit()
    assert j.calls("t") == [
        [1, "wait_event", {"pattern": "a.*", "until": None}, {"name": "a.b"}, None, True],
        [2, "await", {"task_id": "x"}, None, "x failed", True],
    ]


def test_unfinished_lists_queued_and_running_tasks_in_submission_order(j: Journal) -> None:
    ids = [f"task-{random.Random(7).random()}-{i}" for i in range(50)]
    random.Random(1).shuffle(ids)
    for k, i in enumerate(ids):
        j.submitted(spec(i), 100.0 - k)  # times out of order: order is submission's
    j.commit()
    for i in ids[::3]:
        j.dispatched(i, 0, 200.0)
    for i in ids[::5]:
        j.ended(i, "cancelled", None, {"message": "c", "kind": "cancelled"}, 0, 300.0)
    j.commit()
    left = [i for k, i in enumerate(ids) if k % 5]
    assert [t.id for t in j.unfinished()] == left
    assert {t.status for t in j.unfinished()} == {"pending", "running"}
    assert [t.id for t in j.tasks()] == ids
    assert [t.id for t in j.tasks(limit=4)] == ids[:4]
    assert [t.id for t in j.tasks("cancelled")] == ids[::5]
    assert [t.id for t in j.tasks("running")] == [
        i for k, i in enumerate(ids) if k % 3 == 0 and k % 5
    ]
    with pytest.raises(ValueError, match="unknown status"):
        j.tasks("done")


def test_a_retried_task_is_pending_again_and_keeps_its_attempts(j: Journal) -> None:
    j.submitted(spec("r", kind="python"), 1.0)
    j.dispatched("r", 0, 2.0)
    j.retried("r", 0, "boom", 3.0)
    j.commit()
    r = j.get("r")
    assert r is not None and (r.status, r.attempts) == ("pending", 1)
    assert [t.id for t in j.unfinished()] == ["r"]


def test_a_replayed_submit_of_a_known_task_keeps_its_row(j: Journal) -> None:
    j.submitted(spec("a"), 1.0)
    j.dispatched("a", 0, 2.0)
    j.commit()
    j.submitted(spec("a", args={"other": True}), 5.0)
    j.commit()
    a = j.get("a")
    assert a is not None and (a.status, a.created, a.spec.args) == ("running", 1.0, None)


def test_submitted_and_dispatched_in_one_statement_read_as_written_apart(j: Journal) -> None:
    j.submitted(spec("apart", retries=2), 1.0)
    j.dispatched("apart", 0, 2.0)
    j.submitted(spec("one", retries=2), 1.0, dispatched=(0, 2.0))
    j.submitted(spec("known"), 1.0)
    j.commit()
    j.submitted(spec("known", args={"other": True}), 5.0, dispatched=(1, 6.0))  # replayed
    j.commit()
    apart, one = j.record("apart"), j.record("one")
    assert one == {**apart, "id": "one", "spec": {**apart["spec"], "id": "one"}}
    assert (one["status"], one["attempts"]) == ("running", 1)
    known = j.record("known")
    assert (known["status"], known["attempts"], known["created"]) == ("running", 2, 1.0)
    assert "args" not in known["spec"]  # the row kept its spec and took the dispatch
    assert known["events"] == [
        {"event": "submitted", "t": 1.0},
        {"event": "dispatched", "t": 6.0, "attempt": 1},
    ]


def test_resumable_gives_what_unfinished_does_with_every_spec_decoded(j: Journal) -> None:
    j.submitted(spec("q", deps=["x"], timeout=2), 1.0)
    j.submitted(spec("r", kind="python"), 2.0, dispatched=(0, 2.5))
    j.submitted(spec("w"), 3.0)
    j.dispatched("w", 0, 3.5)
    j.retried("w", 0, "boom", 4.0)
    j.submitted(spec("e"), 5.0)
    j.ended("e", "succeeded", 1, None, 0, 6.0)
    j.commit()
    assert j.resumable() == [
        (t.spec, t.status == "running", t.attempts, t.created) for t in j.unfinished()
    ]
    assert [(s.id, running, attempts) for s, running, attempts, _ in j.resumable()] == [
        ("q", False, 0),
        ("r", True, 1),
        ("w", False, 1),
    ]
    assert j.resumable()[0][0].timeout == 2.0  # converted as any decode does


def test_resumable_names_the_task_whose_spec_is_damaged(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    with Journal.open(path) as j:
        j.submitted(spec("good"), 1.0)
        j.submitted(spec("bad"), 2.0)
        j.commit()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE tasks SET spec = ? WHERE id = 'bad'", (b"\x93\xa4task\x01\x91\x07",))
    conn.commit()
    conn.close()
    with Journal.open(path) as j, pytest.raises(JournalError) as info:
        j.resumable()
    assert "'bad'" in str(info.value) and "task.kind" in str(info.value)


def test_nothing_is_seen_before_commit_and_close_discards_it(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    j = Journal.open(path)
    j.submitted(spec("a"), 1.0)
    j.commit()
    j.submitted(spec("b"), 2.0)
    j.ended("a", "succeeded", 1, None, 0, 3.0)
    reader = Journal.open(path, readonly=True)
    assert [t.id for t in j.tasks()] == ["a"] and [t.id for t in reader.tasks()] == ["a"]
    assert j.get("a").status == "pending"  # type: ignore[union-attr]
    j.close()
    reader.close()
    with Journal.open(path) as again:
        assert [(t.id, t.status) for t in again.tasks()] == [("a", "pending")]
        again.commit()  # nothing buffered: a no-op


def test_bad_writes_are_refused_where_they_are_made(j: Journal) -> None:
    with pytest.raises(ValueError, match="terminal"):
        j.ended("a", "running", None, None, 0, 1.0)
    with pytest.raises(MessageError, match="cannot journal"):
        j.ended("a", "succeeded", object(), None, 0, 1.0)
    j.commit()
    assert j.tasks() == []


def test_journal_task_is_read_only(j: Journal) -> None:
    j.submitted(spec("a"), 1.0)
    j.commit()
    a = j.get("a")
    assert isinstance(a, JournalTask)
    with pytest.raises(AttributeError):
        a.status = "succeeded"
    assert a == j.get("a") and "id='a'" in repr(a)


def test_a_closed_journal_says_so(tmp_path: Path) -> None:
    j = Journal.open(tmp_path / "j.db")
    j.close()
    j.close()  # idempotent
    with pytest.raises(JournalError, match="closed"):
        j.submitted(spec("a"), 1.0)
    with pytest.raises(JournalError, match="closed"):
        j.tasks()
    with pytest.raises(JournalError, match="closed"):
        j.commit()


# -- a commit is all or nothing --------------------------------------------------------

BIG_COMMIT = textwrap.dedent(
    """
    import sys, time
    from llmspell.journal import Journal
    from llmspell.messages.types import TaskSpec
    j = Journal.open(sys.argv[1])
    for i in range(100):
        j.submitted(TaskSpec(id=f"a{i}", kind="lua", code="return 1"), 1.0)
    j.commit()
    n = int(sys.argv[2])
    for i in range(n):
        j.submitted(TaskSpec(id=f"b{i}", kind="lua", code="x" * 300), 2.0)
    for i in range(n):
        j.dispatched(f"b{i}", 0, 3.0)
    print("committing", flush=True)
    j.commit()
    print("committed", flush=True)
    time.sleep(60)
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.0, 0.05, 0.15, 0.3, 0.6])
def test_a_commit_killed_midway_leaves_all_of_it_or_none(tmp_path: Path, delay: float) -> None:
    path = tmp_path / "j.db"
    n = 60_000
    proc = subprocess.Popen(
        [sys.executable, "-c", BIG_COMMIT, str(path), str(n)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "committing"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    with Journal.open(path) as j:
        tasks = j.tasks()
    assert [t.id for t in tasks[:100]] == [f"a{i}" for i in range(100)]
    batch = tasks[100:]
    assert len(batch) in (0, n)
    assert all(t.status == "running" and t.attempts == 1 for t in batch)


# -- bad files ---------------------------------------------------------------------------


def test_a_new_file_and_an_empty_one_become_journals(tmp_path: Path) -> None:
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    for path in (tmp_path / "new.db", empty):
        Journal.open(path).close()
        con = sqlite3.connect(path)
        assert con.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
        assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        con.close()


def test_a_text_file_is_not_a_journal(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("dear diary\n" * 500)
    refused(path, "is not an llmspell journal (not a SQLite database)")
    refused(path, "is not an llmspell journal", readonly=True)


def test_another_applications_database_is_not_a_journal(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    con = sqlite3.connect(path)
    con.execute("PRAGMA journal_mode = WAL")
    con.execute("CREATE TABLE tasks (id TEXT, status TEXT)")
    con.execute("INSERT INTO tasks VALUES ('a', 'pending')")
    con.commit()
    con.close()
    refused(path, "a SQLite database of another application")
    refused(path, "a SQLite database of another application", readonly=True)


def test_a_directory_and_a_missing_one_are_refused(tmp_path: Path) -> None:
    with pytest.raises(JournalError, match="is a directory"):
        Journal.open(tmp_path)
    with pytest.raises(JournalError, match="no directory"):
        Journal.open(tmp_path / "nowhere" / "j.db")
    with pytest.raises(JournalError, match="no such journal"):
        Journal.open(tmp_path / "absent.db", readonly=True)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("at", ["10", "99", "100", "4096", "half", "-4096", "-1"])
def test_a_truncated_journal_is_refused(tmp_path: Path, at: str) -> None:
    path = tmp_path / "j.db"
    fill(path, 2000)
    size = path.stat().st_size
    cut = {"half": size // 2 // 4096 * 4096}.get(at) or (
        int(at) % size if at.startswith("-") else int(at)
    )
    path.write_bytes(path.read_bytes()[: cut if not at.startswith("-") else size + int(at)])
    refused(path, "truncated")
    refused(path, "truncated", readonly=True)


def test_a_journal_from_a_newer_llmspell_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    fill(path, 10)
    con = sqlite3.connect(path)
    con.execute(f"PRAGMA user_version = {SCHEMA + 1}")
    con.commit()
    con.close()
    err = refused(path, "newer llmspell")
    assert f"schema {SCHEMA + 1}" in str(err)


@pytest.mark.parametrize("where", [0, 5, 68, 71, 100, 103])
def test_a_journal_with_a_damaged_header_is_refused(tmp_path: Path, where: int) -> None:
    path = tmp_path / "j.db"
    fill(path, 200)
    data = bytearray(path.read_bytes())
    data[where] ^= 0xFF
    path.write_bytes(bytes(data))
    refused(path, "")


def test_flipped_bytes_anywhere_never_give_anything_but_journal_error(tmp_path: Path) -> None:
    """Opened or refused, a damaged journal answers every read with data or a
    JournalError (never another exception, never a hang); refused, it is unchanged."""
    clean = tmp_path / "clean.db"
    fill(clean, 600)
    data = clean.read_bytes()
    rng = random.Random(13)
    refused_count = 0
    for k in range(40):
        path = tmp_path / f"flip{k}.db"
        damaged = bytearray(data)
        for _ in range(3):
            damaged[rng.randrange(100, len(data))] ^= 1 << rng.randrange(8)
        path.write_bytes(bytes(damaged))
        try:
            j = Journal.open(path)
        except JournalError as exc:
            refused_count += 1
            assert str(path) in str(exc) and path.read_bytes() == bytes(damaged)
            continue
        try:
            reads = (j.unfinished, j.resumable, j.tasks, lambda j=j: [t.spec for t in j.tasks()])
            for read in reads:
                try:
                    read()
                except JournalError:
                    pass
            for i in range(0, 600, 7):
                try:
                    j.record(f"t{i}")
                except (JournalError, KeyError):
                    pass
        finally:
            j.close()
    assert refused_count > 0


# -- ownership ---------------------------------------------------------------------------

OWNER = textwrap.dedent(
    """
    import sys
    from llmspell.journal import Journal
    from llmspell.messages.types import TaskSpec
    j = Journal.open(sys.argv[1])
    j.submitted(TaskSpec(id="mine", kind="lua", code="return 1"), 1.0)
    j.commit()
    print("ready", flush=True)
    sys.stdin.readline()
    j.submitted(TaskSpec(id="later", kind="lua", code="return 2"), 2.0)
    j.commit()
    j.close()
    print("closed", flush=True)
    """
)


def start_owner(path: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", OWNER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def test_a_journal_held_by_a_live_process_is_refused_but_can_be_read(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    fill(path, 5)
    owner = start_owner(path)
    try:
        err = refused(path, f"in use by another runtime (process {owner.pid}")
        assert "on " in str(err)
        with Journal.open(path, readonly=True) as reader:
            assert [t.id for t in reader.tasks()][-1] == "mine"
            with pytest.raises(JournalError, match="read-only"):
                reader.submitted(spec("x"), 1.0)
            assert owner.stdin is not None and owner.stdout is not None
            owner.stdin.write("\n")
            owner.stdin.flush()
            assert owner.stdout.readline().strip() == "closed"
            assert [t.id for t in reader.tasks()][-2:] == ["mine", "later"]
    finally:
        owner.kill()
        owner.wait()
    Journal.open(path).close()  # released by its close()


@pytest.mark.parametrize("reaped", [True, False])
def test_a_claim_left_by_a_killed_process_is_taken_over(tmp_path: Path, reaped: bool) -> None:
    path = tmp_path / "j.db"
    owner = start_owner(path)
    try:
        owner.send_signal(signal.SIGKILL)
        if reaped:
            owner.wait()
        else:  # a zombie until waited for: dead all the same
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                if Path(f"/proc/{owner.pid}/stat").read_text().split(") ")[1][0] == "Z":
                    break
                time.sleep(0.01)
        with Journal.open(path) as j:
            assert [t.id for t in j.tasks()] == ["mine"]
        con = sqlite3.connect(path)
        assert con.execute("SELECT count(*) FROM owner").fetchone()[0] == 0
        con.close()
    finally:
        owner.kill()
        owner.wait()


def test_one_process_cannot_open_a_journal_twice(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    j = Journal.open(path)
    try:
        refused(path, "already open in this process")
        Journal.open(path, readonly=True).close()
    finally:
        j.close()
    Journal.open(path).close()


@pytest.mark.slow
def test_readers_in_the_owners_process_leave_it_working(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    with Journal.open(path) as j:
        for k in range(5):
            with Journal.open(path, readonly=True) as r:
                assert len(r.tasks()) == k
            j.submitted(spec(k), float(k))
            j.commit()
        seen = subprocess.run(
            [sys.executable, "-c", READ_COUNT, str(path)], capture_output=True, text=True
        )
        assert seen.stdout.strip() == "5", seen.stderr
        refused(path, "already open in this process")
    with Journal.open(path) as again:
        assert [t.id for t in again.tasks()] == [str(k) for k in range(5)]


READ_COUNT = """
import sys
from llmspell.journal import Journal
with Journal.open(sys.argv[1], readonly=True) as r:
    print(len(r.tasks()))
"""


def test_a_journal_dropped_without_close_is_taken_over(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    j = Journal.open(path)
    j._conn.close()  # type: ignore[union-attr]  # as if it were lost: the claim stays in the file
    j._conn = None
    del j
    Journal.open(path).close()


def test_a_path_that_cannot_be_written_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(JournalError, match="cannot be created") as info:
        Journal.open("/proc/llmspell-journal.db")  # not even root creates files there
    assert "/proc/llmspell-journal.db" in str(info.value)

    path = tmp_path / "j.db"
    fill(path, 3)
    path.chmod(0o444)
    if os.geteuid() == 0:  # root writes anyway: say what a user would be told
        real = os.access
        monkeypatch.setattr(
            os, "access", lambda p, m: False if str(p) == str(path) and m & os.W_OK else real(p, m)
        )
    refused(path, "cannot be written (permission denied)")
    with Journal.open(path, readonly=True) as r:
        assert len(r.tasks()) == 3


def test_a_readonly_open_never_writes(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    fill(path, 20)
    before = snapshot(path)
    with Journal.open(path, readonly=True) as r:
        assert len(r.tasks()) == 20 and r.record("t2")["status"] == "succeeded"
        writes: list[Callable[[], None]] = [
            lambda: r.submitted(spec("x"), 1.0),
            lambda: r.dispatched("t0", 0, 1.0),
            lambda: r.forget(["t2"]),
            lambda: r.host_call("t0", 1, "emit", {}, None, None, True),
        ]
        for write in writes:
            with pytest.raises(JournalError, match="read-only"):
                write()
    assert snapshot(path)[""] == before[""]


# -- memory stores -----------------------------------------------------------------------


def test_a_memory_journal_outlives_close_until_dropped() -> None:
    name = f"memory:test-{os.getpid()}-{time.monotonic_ns()}"
    try:
        j = Journal.open(name)
        j.submitted(spec("a"), 1.0)
        j.host_call("a", 1, "time", {"fn": "Date.now"}, 5, None, True)
        j.commit()
        j.submitted(spec("lost"), 2.0)  # never committed
        with pytest.raises(JournalError, match="already open in this process"):
            Journal.open(name)
        with Journal.open(name, readonly=True) as r:
            assert [t.id for t in r.tasks()] == ["a"]
        j.close()
        with Journal.open(name) as again:
            assert [t.id for t in again.unfinished()] == ["a"]
            assert again.calls("a") == [[1, "time", {"fn": "Date.now"}, 5, None, True]]
    finally:
        Journal.drop(name)
    with pytest.raises(JournalError, match="no such memory journal"):
        Journal.open(name, readonly=True)
    with Journal.open(name) as fresh:
        assert fresh.tasks() == []
    Journal.drop(name)
    Journal.drop(name)  # nothing left: a no-op


# -- compaction --------------------------------------------------------------------------


def test_forget_drops_tasks_with_their_calls(j: Journal) -> None:
    for i in range(3):
        j.submitted(spec(i), 1.0)
        j.host_call(str(i), 1, "emit", {"name": "x", "payload": i}, None, None, True)
        j.ended(str(i), "succeeded", i, None, 0, 2.0)
    j.commit()
    j.forget(["0", "2"])
    j.commit()
    assert [t.id for t in j.tasks()] == ["1"]
    assert j.get("0") is None and j.calls("0") == [] and j.calls("1") != []
    with pytest.raises(KeyError):
        j.record("2")


def test_a_journal_that_forgets_stays_the_same_size(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    keep, sizes, ended = 2_000, [], []
    with Journal.open(path) as j:
        for k in range(0, 40_000, 500):
            for i in range(k, k + 500):
                j.submitted(spec(i), 1.0)
                j.dispatched(str(i), 0, 1.0)
                j.host_call(str(i), 1, "time", {"fn": "os.time"}, i, None, True)
                j.ended(str(i), "succeeded", {"n": i}, None, 0, 2.0)
                ended.append(str(i))
            j.forget(ended[:-keep])
            del ended[:-keep]
            j.commit()
            sizes.append(path.stat().st_size)
        assert len(j.tasks()) == keep
    assert max(sizes[-40:]) <= sizes[19] * 1.2  # after 10,000 tasks as after 40,000


def test_unfinished_reads_only_the_unfinished_index(tmp_path: Path) -> None:
    """Ended tasks, however many, are not walked to find the unfinished ones."""
    path = tmp_path / "j.db"
    fill(path, 10)
    con = sqlite3.connect(path)
    plan = con.execute(
        "EXPLAIN QUERY PLAN SELECT id FROM tasks WHERE status IN ('pending', 'running') "
        "ORDER BY seq"
    ).fetchall()
    con.close()
    assert "USING INDEX tasks_unfinished" in plan[0][-1]


def test_registrations_are_kept_in_order_a_name_replaced_a_hook_once(tmp_path: Path) -> None:
    path = str(tmp_path / "j.db")
    with Journal.open(path) as j:
        j.registered("tool", "fetch", {"lang": "python", "target": "m:f"})
        j.registered("tool", "fetch", {"lang": "python", "target": "m:g"})  # replaces
        j.registered("hook", "task.after", {"lang": "python", "target": "m:h"})
        j.registered("hook", "task.after", {"lang": "python", "target": "m:h"})  # same: once
        j.registered("hook", "task.after", {"lang": "lua", "code": "return 1"})
        j.commit()
    with Journal.open(path) as j:
        assert j.registrations() == [
            ("tool", "fetch", {"lang": "python", "target": "m:g"}),
            ("hook", "task.after", {"lang": "python", "target": "m:h"}),
            ("hook", "task.after", {"lang": "lua", "code": "return 1"}),
        ]


def test_trim_keeps_the_newest_ended_tasks_and_every_unfinished_one(tmp_path: Path) -> None:
    with Journal.open(str(tmp_path / "j.db")) as j:
        for i in range(10):
            j.submitted(TaskSpec(id=f"t{i}", kind="lua", code="return 1"), float(i))
            if i != 2:  # t2 never ends
                j.ended(f"t{i}", "succeeded", i, None, 0, float(i))
            j.host_call(f"t{i}", 1, "time", {"fn": "time"}, i, None, True)
        j.commit()
        assert j.trim(3) == 6  # t0, t1, t3, t4, t5, t6
        assert [t.id for t in j.tasks()] == ["t2", "t7", "t8", "t9"]
        assert j.calls("t0") == [] and j.calls("t2") != []
        assert [t.id for t in j.existing(["t2", "t0", "t9", "nope"])] == ["t2", "t9"]
        assert j.trim(3) == 0


def test_a_resume_puts_unfinished_tasks_back_in_order_with_their_attempts(
    tmp_path: Path,
) -> None:
    import gc

    from llmspell.actors.durable import Durable
    from llmspell.table import TaskTable

    path = str(tmp_path / "j.db")
    with Journal.open(path) as j:
        j.submitted(spec("done"), 1.0, dispatched=(0, 1.5))
        j.ended("done", "succeeded", 7, None, 0, 2.0)
        j.submitted(spec("q", deps=["done"]), 3.0)
        j.submitted(spec("r", kind="python"), 4.0, dispatched=(0, 4.5))  # cut short
        j.submitted(spec("w"), 5.0, dispatched=(0, 5.5))
        j.retried("w", 0, "boom", 6.0)  # waits for its second run
        j.submitted(spec("c2", deps=["c1"]), 7.0)
        j.submitted(spec("c1"), 7.0)
        j.commit()
    table = TaskTable()
    durable = Durable(path, table)
    try:
        durable.resume(10.0)
        assert gc.isenabled()
        assert [(r.spec.id, r.attempt) for r in table.ready] == [
            ("q", 0),
            ("r", 0),
            ("w", 1),
            ("c1", 0),
        ]
        assert table.tasks["c2"].waiting == 1 and table.tasks["r"].submitted_at == 4.0
        assert table.gone["done"][:2] == ("succeeded", 7)
    finally:
        durable.close()
