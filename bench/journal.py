"""The journal store (``llmspell/journal.py``) against bare ``sqlite3``.

Part 1, writes: N tasks each journaled as submitted, dispatched and ended,
500 tasks a commit as a scheduler batches them (a commit holds the
submissions and dispatches of one batch and the ends of the one before),
through ``Journal`` against a bare ``sqlite3`` loop that runs the same
statements on the same schema with the same batching and pragmas (WAL,
``synchronous=FULL``). The bare loop is timed twice: with its rows built
before the clock starts (SQLite alone) and with them built in the loop
(encoding each spec as the journal must). Target: journal / bare <= 1.5x.

Part 2, reads: ``unfinished()`` of 100,000 queued tasks against a bare
``SELECT`` of the same rows. Target <= 3x. Also shown: ``unfinished()`` with
every spec decoded (the journal decodes a spec when it is first read) and
``Journal.open`` itself (validation, ``quick_check``, ownership).

Part 3 (``--size``): file size while N trivial tasks are appended, ended and
forgotten past the last 100,000, as a runtime with ``history`` would.

Part 4, the runtime: 10,000 trivial Lua tasks through ``submit_many`` +
``result`` on ``Runtime(journal=path)`` against the same on ``Runtime()``, both
runtimes up in one process, in paired rounds. Target: journaled throughput at
least 1/2 of unjournaled (time ratio <= 2x).

Part 5, resume: the 100,000 queued tasks of part 2 put back in a scheduler's
task table: ``Durable(path, table, checked=True)`` (opening the journal as a
runtime's scheduler does: header, schema, ownership; the facade ran SQLite's
``quick_check`` of every page just before, shown apart) and
``Durable.resume`` (reading the rows, decoding every spec, the ``Restored``
event that makes a record of each and queues it), against the bare
``SELECT`` of part 2, in paired rounds. Target <= 3x.
This is the scheduler's own resume, in-process and without an actor system,
so nothing runs the tasks while they are counted. Shown too: the whole
``Runtime(journal=path)`` start on a journal of 100,000 queued tasks that wait
on an unfinished one (a Lua task blocked in ``spell.wait_event``, so they stay
queued), until ``stats()`` counts them pending, and the same start on an empty
journal (the runtime's own start-up, engines included).

Usage: ``python bench/journal.py [--tasks N] [--queued N] [--size N] [--lua N]``
(``--lua 0`` / ``--queued 0`` skip parts 4 / 2 and 5).
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _util import best_of, paired_rounds, table

from llmspell import Runtime, Task
from llmspell.actors.durable import Durable
from llmspell.journal import _DISPATCHED, _ENDED, _SUBMITTED, Journal
from llmspell.messages import encode
from llmspell.messages.types import TaskSpec
from llmspell.table import TaskTable

BATCH = 500


def specs(n: int, tag: str) -> list[TaskSpec]:
    return [TaskSpec(id=f"{tag}-{i:07d}", kind="lua", code="return 1") for i in range(n)]


def fresh(path: str) -> None:
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)
    Journal.open(path).close()  # the same schema and file settings for both sides


def bare_connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    return conn


def journal_writes(path: str, tasks: list[TaskSpec]) -> None:
    fresh(path)
    j = Journal.open(path)
    prev: list[TaskSpec] = []
    for k in range(0, len(tasks) + BATCH, BATCH):
        batch = tasks[k : k + BATCH]
        t = time.time()
        for s in batch:
            j.submitted(s, t)
        for s in batch:
            j.dispatched(s.id, 0, t)
        for s in prev:
            j.ended(s.id, "succeeded", 1, None, 0, t)
        j.commit()
        prev = batch
    j.close()


def bare_rows(tasks: list[TaskSpec], t: float) -> list[tuple[list, list, list]]:
    """Each commit's parameters for the three statements, as the journal makes them."""
    out = []
    prev: list[TaskSpec] = []
    for k in range(0, len(tasks) + BATCH, BATCH):
        batch = tasks[k : k + BATCH]
        out.append(
            (
                [(s.id, s.kind, t, s.parent, encode(s), f'["submitted",{t!r}]\n') for s in batch],
                [(1, f'["dispatched",{t!r},0]\n', s.id) for s in batch],
                [
                    ("succeeded", t, b"\x01", None, f'["ended",{t!r},0,"succeeded"]\n', s.id)
                    for s in prev
                ],
            )
        )
        prev = batch
    return out


def bare_writes(path: str, rows: list[tuple[list, list, list]]) -> None:
    fresh(path)
    conn = bare_connect(path)
    for sub, disp, end in rows:
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(_SUBMITTED, sub)
        conn.executemany(_DISPATCHED, disp)
        conn.executemany(_ENDED, end)
        conn.execute("COMMIT")
    conn.close()


def bare_writes_encoding(path: str, tasks: list[TaskSpec]) -> None:
    bare_writes(path, bare_rows(tasks, time.time()))


def part1(d: str, n: int, rounds: int) -> list[tuple[str, str]]:
    tasks = specs(n, "w")
    path = os.path.join(d, "w.db")
    rows = bare_rows(tasks, time.time())
    base, meas, ratios, extra = paired_rounds(
        lambda: bare_writes(path, rows),
        lambda: journal_writes(path, tasks),
        rounds,
        {"bare, rows built in the loop": lambda: bare_writes_encoding(path, tasks)},
    )
    enc = extra["bare, rows built in the loop"]
    return [
        (f"writes: {n:,} tasks x 3 changes, {BATCH} tasks a commit", ""),
        ("bare sqlite3, rows built beforehand, best", f"{min(base):.3f} s"),
        ("bare sqlite3, rows built in the loop, best", f"{min(enc):.3f} s"),
        ("Journal, best", f"{min(meas):.3f} s ({n / min(meas):,.0f} tasks/s)"),
        (
            "**Journal / bare (rows beforehand), median of rounds (target <= 1.5x)**",
            f"**{statistics.median(ratios):.2f}x** ({min(ratios):.2f}-{max(ratios):.2f}x)",
        ),
        ("Journal / bare (rows in the loop), bests", f"{min(meas) / min(enc):.2f}x"),
    ]


SELECT = (
    "SELECT id, kind, status, attempts, created, ended, parent, spec, value, error "
    "FROM tasks WHERE status IN ('pending', 'running') ORDER BY seq"
)


def queued(path: str, tasks: list[TaskSpec]) -> None:
    """A journal holding ``tasks``, submitted and never dispatched."""
    fresh(path)
    j = Journal.open(path)
    for k, s in enumerate(tasks):
        j.submitted(s, time.time())
        if k % 10_000 == 9_999:
            j.commit()
    j.commit()
    j.close()


def part2(d: str, n: int, rounds: int) -> list[tuple[str, str]]:
    path = os.path.join(d, "q.db")
    queued(path, specs(n, "q"))
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    j = Journal.open(path, readonly=True)
    select = SELECT
    assert len(conn.execute(select).fetchall()) == n == len(j.unfinished())

    def decoded() -> None:
        for t in j.unfinished():
            t.spec  # noqa: B018

    base, meas, ratios, extra = paired_rounds(
        lambda: conn.execute(select).fetchall(),
        j.unfinished,
        rounds,
        {"decoded": decoded},
    )
    j.close()
    conn.close()
    opened = best_of(lambda: Journal.open(path).close(), 3)
    return [
        (f"reads: {n:,} queued tasks", ""),
        ("bare SELECT of their rows, best", f"{min(base) * 1000:.1f} ms"),
        ("unfinished(), best", f"{min(meas) * 1000:.1f} ms"),
        (
            "**unfinished() / bare SELECT, median of rounds (target <= 3x)**",
            f"**{statistics.median(ratios):.2f}x** ({min(ratios):.2f}-{max(ratios):.2f}x)",
        ),
        (
            "unfinished() and every spec decoded / bare SELECT, bests",
            f"{min(extra['decoded']) / min(base):.2f}x ({min(extra['decoded']) * 1000:.1f} ms)",
        ),
        ("Journal.open of that file (validate, quick_check, own)", f"{opened * 1000:.1f} ms"),
    ]


def part3(d: str, n: int, keep: int = 100_000) -> list[tuple[str, str]]:
    """Append, end and forget ``n`` tasks; the file size at every tenth of the way."""
    path = os.path.join(d, "s.db")
    fresh(path)
    j = Journal.open(path)
    ended: list[str] = []
    rows = [(f"size: {n:,} tasks through a journal keeping the last {keep:,}", "")]
    step = max(n // 10, BATCH)
    t0 = time.perf_counter()
    for k in range(0, n, BATCH):
        t = time.time()
        batch = [
            TaskSpec(id=f"s-{i:08d}", kind="lua", code="return 1") for i in range(k, k + BATCH)
        ]
        for s in batch:
            j.submitted(s, t)
            j.dispatched(s.id, 0, t)
            j.ended(s.id, "succeeded", 1, None, 0, t)
            ended.append(s.id)
        if len(ended) > keep:
            j.forget(ended[: len(ended) - keep])
            del ended[: len(ended) - keep]
        j.commit()
        done = k + BATCH
        if done % step == 0:
            size = os.path.getsize(path)
            wal = os.path.getsize(path + "-wal") if os.path.exists(path + "-wal") else 0
            rows.append(
                (
                    f"after {done:,} tasks ({time.perf_counter() - t0:.0f} s)",
                    f"file {size / 2**20:.1f} MiB, WAL {wal / 2**20:.1f} MiB",
                )
            )
    j.close()
    rows.append(("after close", f"file {os.path.getsize(path) / 2**20:.1f} MiB"))
    return rows


def part4(d: str, n: int, rounds: int) -> list[tuple[str, str]]:
    """Trivial Lua tasks through a runtime with a journal and one without."""
    engines = {"lua": 1, "python": 0, "js": 0}
    path = os.path.join(d, "rt.db")
    fresh(path)
    with Runtime(engines=engines) as plain, Runtime(journal=path, engines=engines) as journaled:

        def run(rt: Runtime) -> Callable[[], None]:
            def go() -> None:
                handles = rt.submit_many([Task.lua("return 1") for _ in range(n)])
                for h in handles:
                    if rt.result(h, timeout=120) != 1:
                        raise AssertionError("a task returned something else")

            return go

        run(plain)()  # warm: imports, the engine's first VM
        run(journaled)()
        base, meas, ratios, _ = paired_rounds(run(plain), run(journaled), rounds)
    return [
        (f"runtime: {n:,} trivial Lua tasks, submit_many + result", ""),
        ("Runtime(), best", f"{min(base):.3f} s ({n / min(base):,.0f} tasks/s)"),
        ("Runtime(journal=path), best", f"{min(meas):.3f} s ({n / min(meas):,.0f} tasks/s)"),
        (
            "**journaled / unjournaled time, median of rounds (target <= 2x)**",
            f"**{statistics.median(ratios):.2f}x** ({min(ratios):.2f}-{max(ratios):.2f}x): "
            f"journaled throughput {1 / statistics.median(ratios):.0%} of unjournaled",
        ),
    ]


def part5(d: str, n: int, rounds: int) -> list[tuple[str, str]]:
    """Resume of ``n`` queued tasks: the scheduler's, then a whole runtime's."""
    path = os.path.join(d, "q.db")  # part 2's
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)

    def resume() -> Durable:
        table = TaskTable()
        durable = Durable(path, table, checked=True)  # as a Runtime's scheduler opens it
        durable.resume(time.time())
        if len(table.ready) != n:
            raise AssertionError(f"{len(table.ready)} tasks resumed, not {n}")
        return durable

    resume().close()  # warm
    base: list[float] = []
    meas: list[float] = []
    ratios: list[float] = []
    for r in range(rounds):
        b = m = 0.0
        for which in ("bare", "resume") if r % 2 == 0 else ("resume", "bare"):
            t0 = time.perf_counter()
            if which == "bare":
                rows = conn.execute(SELECT).fetchall()
                b = time.perf_counter() - t0
                del rows  # (freeing either side's objects is not timed)
            else:
                durable = resume()
                m = time.perf_counter() - t0
                durable.close()
                del durable
        base.append(b)
        meas.append(m)
        ratios.append(m / b)
        gc.collect()
    conn.close()
    check = best_of(lambda: Journal.open(path).close(), 3)  # the facade's, before
    rows = [
        (f"resume: {n:,} queued tasks back in the scheduler's table", ""),
        ("bare SELECT of their rows, best", f"{min(base) * 1000:.1f} ms"),
        ("Durable open + resume, best", f"{min(meas) * 1000:.1f} ms"),
        (
            "**resume / bare SELECT, median of rounds (target <= 3x)**",
            f"**{statistics.median(ratios):.2f}x** ({min(ratios):.2f}-{max(ratios):.2f}x)",
        ),
        (
            "with the facade's check of the file before it (Journal.open), bests",
            f"{(min(meas) + check) / min(base):.2f}x (+{check * 1000:.1f} ms)",
        ),
    ]
    return rows + whole_resume(d, n, rounds)


def whole_resume(d: str, n: int, rounds: int) -> list[tuple[str, str]]:
    """``Runtime(journal=path)`` on ``n`` queued tasks held back by a blocked one."""
    engines = {"lua": 1, "python": 0, "js": 0}
    path = os.path.join(d, "gate.db")
    gate = TaskSpec(id="gate", kind="lua", code='return spell.wait_event("never")')
    queued(path, [gate] + [
        TaskSpec(id=f"g-{i:07d}", kind="lua", code="return 1", deps=["gate"]) for i in range(n)
    ])  # fmt: skip
    empty = os.path.join(d, "empty.db")
    fresh(empty)

    def start(where: str, want: int) -> float:
        t0 = time.perf_counter()
        rt = Runtime(journal=where, engines=engines)
        try:
            pending = rt.stats()["pending"]
            took = time.perf_counter() - t0
            if pending != want:
                raise AssertionError(f"{pending} tasks pending, not {want}")
        finally:
            rt.close()
        return took

    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)

    def select() -> float:
        t0 = time.perf_counter()
        rows = conn.execute(SELECT).fetchall()
        took = time.perf_counter() - t0
        del rows
        return took

    whole: list[float] = []
    empties: list[float] = []
    ratios: list[float] = []
    for r in range(rounds):
        if r % 2 == 0:
            b, w = select(), start(path, n)
        else:
            w, b = start(path, n), select()
        empties.append(start(empty, 0))
        whole.append(w)
        ratios.append(w / b)
        gc.collect()
    conn.close()
    w, e = min(whole), min(empties)
    return [
        (f"whole Runtime(journal=path) start, {n:,} tasks behind a blocked one, best",
         f"{w * 1000:.0f} ms"),
        ("Runtime(journal=path) on an empty journal (start-up), best", f"{e * 1000:.0f} ms"),
        (
            "**whole start / bare SELECT of the same rows, median of rounds**",
            f"**{statistics.median(ratios):.2f}x** ({min(ratios):.2f}-{max(ratios):.2f}x)",
        ),
    ]  # fmt: skip


def part6(d: str, n: int, history: int = 1_000) -> list[tuple[str, str]]:
    """``n`` trivial Lua tasks through a Runtime with a journal (default
    ``history``: the journal keeps the newest 100 x history ended tasks); the
    journal's size every tenth of the way."""
    path = os.path.join(d, "runtime-size.db")
    fresh(path)
    rows = [(f"size: {n:,} Lua tasks through Runtime(journal=..., history={history:,})", "")]
    step = max(n // 10, 10_000)
    t0 = time.perf_counter()
    with Runtime(journal=path, history=history) as rt:
        done = 0
        while done < n:
            hs = rt.submit_many([Task.lua("return 1") for _ in range(10_000)])
            for h in hs:
                rt.result(h, timeout=300)
            done += len(hs)
            if done % step == 0:
                size = os.path.getsize(path)
                wal = os.path.getsize(path + "-wal") if os.path.exists(path + "-wal") else 0
                rows.append(
                    (
                        f"after {done:,} tasks ({time.perf_counter() - t0:.0f} s)",
                        f"file {size / 2**20:.1f} MiB, WAL {wal / 2**20:.1f} MiB",
                    )
                )
    with Journal.open(path, readonly=True) as j:
        kept = len(j.listing())
    rows.append(("tasks kept in the journal at the end", f"{kept:,}"))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", type=int, default=20_000, help="part 1: tasks written")
    ap.add_argument("--queued", type=int, default=100_000, help="part 2: queued tasks read")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--size", type=int, default=0, help="part 3: tasks through (0: skip)")
    ap.add_argument("--lua", type=int, default=10_000, help="part 4: Lua tasks a round")
    ap.add_argument(
        "--runtime-size", type=int, default=0, help="part 6: Lua tasks through a runtime (0: skip)"
    )
    args = ap.parse_args()
    d = tempfile.mkdtemp(prefix="llmspell-bench-journal-")
    try:
        rows = part1(d, args.tasks, args.rounds)
        if args.queued:
            rows += part2(d, args.queued, args.rounds) + part5(d, args.queued, args.rounds)
        if args.size:
            rows += part3(d, args.size)
        if args.lua:
            rows += part4(d, args.lua, args.rounds)
        if args.runtime_size:
            rows += part6(d, args.runtime_size)
        print(table(rows))
    finally:
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
