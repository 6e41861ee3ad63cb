"""One task's round trip against what users compare llmspell with (issue 15).

Everything in one run, each pair measured side by side (interleaved blocks, the
order alternating), so only the ratios matter on this shared 2-core machine:

1. embedded, one trivial task at a time (``rt.result(rt.submit(t))``), Python, Lua
   and JS, against a Pykka ``ask`` to a ``ThreadingActor``: target <= 2x;
2. ``AsyncRuntime``, one at a time, against an ``asyncio.Queue`` ping-pong between
   two tasks: target <= 3x;
3. local mode (``workers=2``), one at a time, against a Ray actor method call
   (``ray.get(a.ping.remote())``): target <= 1.5x; and 3,000 trivial tasks by
   ``submit_many`` against 3,000 calls on the same Ray actor: target >= 5x the
   calls/s;
4. the cost of one more cooperative yield inside a script (10,000 tasks x 10
   ``spell.sleep(0)`` minus the same tasks with none, per yield) against a bare lupa
   coroutine resume and a bare quickjs job (the same subtraction on a bare loop):
   target <= 3x each;
5. embedded throughput, 10,000 trivial tasks by ``submit_many`` against 10,000
   pipelined Pykka asks (futures first, then ``get``): target >= 1/2.

Latencies are medians (p90 beside them) of every sample after a warm-up. Ray binds
its servers to the machine's address whatever it is told, so the whole benchmark
re-runs itself in a private network namespace that has only a loopback interface
(``unshare --net``, as root or with user namespaces); where that is impossible the
Ray rows are skipped, and said so. Ray and Pykka come with ``pip install
'llmspell[bench]'`` (``make bench-deps``), never with the test extras.

Usage: ``python bench/latency.py [--quick] [--only 1,2,...]``.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import gc
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _util import table

from llmspell import AsyncRuntime, Runtime, Task

_NETNS = "LLMSPELL_BENCH_NETNS"

# -- sampling ------------------------------------------------------------------------------


class Samples:
    """Round-trip times of one case, in seconds."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.times: list[float] = []

    def median(self) -> float:
        return statistics.median(self.times)

    def p90(self) -> float:
        s = sorted(self.times)
        return s[min(len(s) - 1, int(len(s) * 0.9))]

    def row(self) -> tuple[str, str]:
        return (self.name, f"median {us(self.median())}, p90 {us(self.p90())}")


def us(seconds: float) -> str:
    return f"{seconds * 1e6:.1f} us" if seconds < 1e-2 else f"{seconds * 1e3:.2f} ms"


def interleave(cases: list[tuple[Samples, Callable[[], None]]], rounds: int, block: int) -> None:
    """Time each case ``block`` calls at a time, ``rounds`` times, the order of the
    cases rotating from round to round; one warm-up block first (not kept)."""
    for _, fn in cases:
        for _ in range(block):
            fn()
    clock = time.perf_counter
    for r in range(rounds):
        k = r % len(cases)
        for samples, fn in cases[k:] + cases[:k]:
            out = samples.times
            for _ in range(block):
                t0 = clock()
                fn()
                out.append(clock() - t0)
        gc.collect()


def ratio(a: float, b: float, target: str) -> str:
    return f"{a / b:.2f}x (target {target})"


# -- 1 and 5: embedded against Pykka --------------------------------------------------------


def _pykka_echo() -> Any:
    import pykka

    class Echo(pykka.ThreadingActor):  # type: ignore[misc]
        def on_receive(self, message: Any) -> Any:
            return message

    return Echo.start()


def bench_embedded(rounds: int, block: int, n_batch: int) -> list[tuple[str, str]]:
    ref = _pykka_echo()
    try:
        with Runtime() as rt:
            py = Task.python("tasks:add", args={"x": 1, "y": 1})
            cases = {
                "python": lambda: rt.result(rt.submit(py), timeout=30),
                "lua": lambda: rt.result(rt.submit(Task.lua("return 1")), timeout=30),
                "js": lambda: rt.result(rt.submit(Task.js("return 1")), timeout=30),
            }
            pyk = Samples("Pykka ask to a ThreadingActor")
            mine = {k: Samples(f"embedded {k} task, submit -> result") for k in cases}
            interleave(
                [(pyk, lambda: ref.ask(1)), *((mine[k], fn) for k, fn in cases.items())],
                rounds,
                block,
            )
            rows = [("1. embedded, one task at a time", ""), pyk.row()]
            for k in cases:
                rows.append(mine[k].row())
            for k in cases:
                rows.append(
                    (f"   ratio {k} / Pykka ask", ratio(mine[k].median(), pyk.median(), "<= 2x"))
                )
            rows += _throughput(rt, ref, n_batch, max(3, rounds // 3))
    finally:
        ref.stop()
    return rows


def _throughput(rt: Runtime, ref: Any, n: int, rounds: int) -> list[tuple[str, str]]:
    def mine() -> None:
        hs = rt.submit_many([Task.python("tasks:add", args={"x": i, "y": 1}) for i in range(n)])
        for h in hs:
            rt.result(h, timeout=120)

    def pykka_pipelined() -> None:
        futures = [ref.ask(i, block=False) for i in range(n)]
        for f in futures:
            f.get()

    mine()
    pykka_pipelined()
    a, b = [], []
    for r in range(rounds):
        pair = [(a, pykka_pipelined), (b, mine)]
        for out, fn in pair if r % 2 == 0 else pair[::-1]:
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
        gc.collect()
    pk, me = n / min(a), n / min(b)
    return [
        (f"5. embedded throughput, {n} trivial tasks, best of {rounds}", ""),
        (f"{n} pipelined Pykka asks", f"{pk:,.0f} /s"),
        ("submit_many + result (python tasks)", f"{me:,.0f} /s"),
        ("   ratio submit_many / Pykka", ratio(me, pk, ">= 0.5x")),
    ]


# -- 2: AsyncRuntime against an asyncio.Queue ping-pong -------------------------------------


def bench_async(rounds: int, block: int) -> list[tuple[str, str]]:
    q_s = Samples("asyncio.Queue ping-pong between two tasks")
    rt_s = Samples("AsyncRuntime python task, await submit -> result")
    ex_s = Samples("the same function by loop.run_in_executor (a sync call off the loop)")

    async def run() -> None:
        ping: asyncio.Queue[int] = asyncio.Queue()
        pong: asyncio.Queue[int] = asyncio.Queue()

        async def echo() -> None:
            while True:
                pong.put_nowait(await ping.get())

        peer = asyncio.create_task(echo())
        task = Task.python("tasks:add", args={"x": 1, "y": 1})
        async with AsyncRuntime() as rt:

            async def queue_trip() -> None:
                ping.put_nowait(1)
                await pong.get()

            async def rt_trip() -> None:
                await rt.result(await rt.submit(task), timeout=30)

            from tasks import add

            loop = asyncio.get_running_loop()
            pool = concurrent.futures.ThreadPoolExecutor(1)

            async def executor_trip() -> None:
                await loop.run_in_executor(pool, add, 1, 1)

            cases = [(q_s, queue_trip), (rt_s, rt_trip), (ex_s, executor_trip)]
            for _, fn in cases:
                for _ in range(block):
                    await fn()
            clock = time.perf_counter
            for r in range(rounds):
                for samples, fn in cases if r % 2 == 0 else cases[::-1]:
                    for _ in range(block):
                        t0 = clock()
                        await fn()
                        samples.times.append(clock() - t0)
            pool.shutdown()
        peer.cancel()

    asyncio.run(run())
    return [
        ("2. AsyncRuntime, one task at a time", ""),
        q_s.row(),
        rt_s.row(),
        ex_s.row(),
        ("   ratio AsyncRuntime / Queue ping-pong", ratio(rt_s.median(), q_s.median(), "<= 3x")),
        (
            "   ratio run_in_executor / Queue ping-pong (any design that runs a sync call "
            "off the event loop)",
            f"{ex_s.median() / q_s.median():.2f}x",
        ),
        ("   ratio AsyncRuntime / run_in_executor", f"{rt_s.median() / ex_s.median():.2f}x"),
    ]


# -- 3: local mode against Ray --------------------------------------------------------------


def _ray_actor() -> tuple[Any, Any]:
    import ray

    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        logging_level="warning",
        configure_logging=True,
    )

    @ray.remote
    class Ping:
        def ping(self) -> int:
            return 1

    actor = Ping.remote()  # type: ignore[attr-defined]
    assert ray.get(actor.ping.remote()) == 1
    return ray, actor


def bench_local(rounds: int, block: int, n_batch: int, with_ray: bool) -> list[tuple[str, str]]:
    from local import Echo, raw_system

    rows: list[tuple[str, str]] = [("3. local mode (workers=2), one task at a time", "")]
    # local mode and the bare Thespian system first: their admins are forked
    # before Ray starts any thread
    with Runtime(mode="local", workers=2) as rt, raw_system() as asys:
        _wait_engines(rt, "python", 2)
        echo = asys.createActor(Echo)
        py = Task.python("tasks:add", args={"x": 1, "y": 1})
        loc = Samples("local python task, submit -> result")
        raw = Samples("bare Thespian multiprocTCPBase ask to an echo actor (the floor)")
        cases: list[tuple[Samples, Callable[[], None]]] = [
            (loc, lambda: rt.result(rt.submit(py), timeout=30)),
            (raw, lambda: asys.ask(echo, 1, 10)),
        ]
        ray = actor = None
        if with_ray:
            ray, actor = _ray_actor()
            ray_s = Samples("Ray actor call, ray.get(a.ping.remote())")
            cases.insert(0, (ray_s, lambda: ray.get(actor.ping.remote())))
        try:
            interleave(cases, rounds, block)
            rows += [s.row() for s, _ in cases]
            if with_ray:
                rows.append(
                    ("   ratio local / Ray call", ratio(loc.median(), ray_s.median(), "<= 1.5x"))
                )
                rows.append(
                    (
                        "   ratio bare Thespian ask / Ray call (any design on Thespian's TCP)",
                        f"{raw.median() / ray_s.median():.2f}x",
                    )
                )
            rows.append(
                ("   ratio local / bare Thespian ask", f"{loc.median() / raw.median():.2f}x")
            )
            rows += _local_throughput(rt, ray, actor, n_batch, max(5, rounds // 3))
        finally:
            if ray is not None:
                ray.shutdown()
    return rows


def _wait_engines(rt: Runtime, engine: str, n: int) -> None:
    deadline = time.monotonic() + 60
    while len([e for e in rt.stats()["engines"] if e["engine"] == engine]) < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{n} {engine} engines did not start")
        time.sleep(0.05)


def _local_throughput(rt: Runtime, ray: Any, actor: Any, n: int, rounds: int) -> list[Any]:
    def mine() -> None:
        hs = rt.submit_many([Task.python("tasks:add", args={"x": i, "y": 1}) for i in range(n)])
        for h in hs:
            rt.result(h, timeout=300)

    def ray_calls() -> None:
        ray.get([actor.ping.remote() for _ in range(n)])

    fns = [("mine", mine)] + ([("ray", ray_calls)] if ray is not None else [])
    times: dict[str, list[float]] = {k: [] for k, _ in fns}
    for _, fn in fns:
        fn()
    engines = [e["pid"] for e in rt.stats()["engines"] if e["engine"] == "python"]
    faults = 0
    for r in range(rounds):
        for k, fn in fns if r % 2 == 0 else fns[::-1]:
            gc.collect()  # as in section 5: neither side pays for the other's garbage
            before = sum(_minor_faults(p) for p in engines) if k == "mine" else 0
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
            if k == "mine":
                faults += sum(_minor_faults(p) for p in engines) - before
    rows = [(f"   {n} trivial tasks at once, best of {rounds}", "")]
    me = n / min(times["mine"])
    if ray is not None:
        rr = n / min(times["ray"])
        rows.append((f"{n} Ray calls on the same actor", f"{rr:,.0f} /s"))
    rows.append(("local submit_many + result", f"{me:,.0f} /s"))
    if ray is not None:
        rows.append(("   ratio local / Ray, calls per second", ratio(me, rr, ">= 5x")))
    # a hot call that crosses the end of a 16 KiB frame chunk maps and unmaps one for
    # every task (CPython 3.11): ~1 page fault a task, the engine's CPU x2-5. ~0 is
    # right; more means the depth _driver._STACK_PAD was tuned for has moved
    rows.append(("python engines' page faults per task", f"{faults / (n * rounds):.2f}"))
    return rows


def _minor_faults(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return 0
    return int(stat[stat.rfind(")") + 2 :].split()[7])


# -- 4: the cost of one more yield inside a script -----------------------------------------

LUA_YIELDS = "for i = 1, 10 do spell.sleep(0) end return 1"
JS_YIELDS = "for (let i = 0; i < 10; i++) await spell.sleep(0); return 1"


def lua_bare(n: int, code: str) -> None:
    """``n`` bare lupa coroutines of ``code`` resumed round-robin until each returns;
    ``spell.sleep`` is a plain ``coroutine.yield``."""
    from lupa import lua55

    lua = lua55.LuaRuntime(encoding=None, register_eval=False, register_builtins=False)
    make = lua.eval(
        "function(code)"
        "  local body = assert(load('local spell = ... ' .. code, 'task', 't'))"
        "  local spell = {sleep = function(s) coroutine.yield(s) end}"
        "  return function() return body(spell) end "
        "end"
    )
    fn = make(code.encode())
    ready = deque(fn.coroutine() for _ in range(n))
    while ready:
        co = ready.popleft()
        try:
            co.send(None)
        except StopIteration:
            continue
        if co:
            ready.append(co)


_JS_BARE = """
var pending = [], head = 0, done = 0;
var spell = {sleep: function (s) { return new Promise(function (r) { pending.push(r); }); }};
var body = async function (spell) { %s };
function start(n) { for (var i = 0; i < n; i++) body(spell).then(function () { done++; }); }
function step() { var r = pending[head]; pending[head++] = undefined; r(); }
function left() { return pending.length - head; }
function finished() { return done; }
"""


def js_bare(n: int, code: str) -> None:
    """``n`` async functions of ``code`` in one bare quickjs context; the loop settles
    one pending promise at a time and runs the jobs that follow."""
    import quickjs

    ctx = quickjs.Context()
    ctx.eval(_JS_BARE % code)
    start, step, left, finished = (ctx.get(k) for k in ("start", "step", "left", "finished"))
    run_job = ctx.execute_pending_job
    start(n)
    while run_job():
        pass
    while left():
        step()
        while run_job():
            pass
    assert finished() == n


def bench_yields(n: int, rounds: int) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = [(f"4. one more yield in a script ({n} tasks x 10)", "")]
    with Runtime() as rt:

        def batch(make: Callable[[str], Task], code: str) -> Callable[[], None]:
            def run() -> None:
                hs = rt.submit_many([make(code) for _ in range(n)])
                assert sum(rt.result(h, timeout=300) for h in hs) == n

            return run

        for lang, make, code, bare in (
            ("lua", Task.lua, LUA_YIELDS, lua_bare),
            ("js", Task.js, JS_YIELDS, js_bare),
        ):
            pairs: dict[str, tuple[Callable[[], None], Callable[[], None]]] = {
                "runtime": (batch(make, code), batch(make, "return 1")),
                "bare": (lambda b=bare, c=code: b(n, c), lambda b=bare: b(n, "return 1")),
            }
            per_yield: dict[str, list[float]] = {k: [] for k in pairs}
            for with_y, without in pairs.values():
                with_y()
                without()
            for r in range(rounds):
                for k, (with_y, without) in pairs.items() if r % 2 == 0 else [*pairs.items()][::-1]:
                    # each batch starts with no garbage of the other's to collect (run
                    # back to back, the batch without yields paid for the one with:
                    # the runtime's figure read ~0 or below zero in session 10)
                    gc.collect()
                    t0 = time.perf_counter()
                    with_y()
                    t1 = time.perf_counter()
                    gc.collect()
                    t2 = time.perf_counter()
                    without()
                    t3 = time.perf_counter()
                    per_yield[k].append(((t1 - t0) - (t3 - t2)) / (n * 10))
            rt_y = statistics.median(per_yield["runtime"])
            bare_y = statistics.median(per_yield["bare"])
            bare_name = "bare lupa resume" if lang == "lua" else "bare quickjs job"
            rows += [
                (f"{bare_name}, per yield (median of {rounds})", us(bare_y)),
                (f"runtime {lang} spell.sleep(0), per yield", us(rt_y)),
                (f"   ratio {lang} / {bare_name}", ratio(rt_y, bare_y, "<= 3x")),
            ]
    return rows


# -- A/B: this session's two changes on and off, same run -----------------------------------


# -- running it all ------------------------------------------------------------------------


def _in_private_netns(argv: list[str]) -> None:
    """Run this script again in a network namespace of its own with only loopback
    (Ray then cannot listen beyond 127.0.0.1). Returns if that is not possible."""
    unshare, ip = shutil.which("unshare"), shutil.which("ip")
    if os.environ.get(_NETNS) or unshare is None or ip is None:
        return
    flags = ["--net"] if os.geteuid() == 0 else ["--net", "--map-root-user"]
    probe = subprocess.run(
        [unshare, *flags, ip, "link", "set", "lo", "up"], capture_output=True, check=False
    )
    if probe.returncode != 0:
        return
    script = 'ip link set lo up && exec "$@"'
    cmd = [unshare, *flags, "sh", "-c", script, "sh", sys.executable, *argv]
    env = dict(os.environ, **{_NETNS: "1"})
    sys.stdout.flush()
    os.execve(unshare, cmd, env)


def _ray_available() -> tuple[bool, str]:
    if not os.environ.get(_NETNS):
        return False, "Ray rows skipped: no private network namespace (Ray listens beyond loopback)"
    try:
        import ray  # noqa: F401
    except ImportError:
        return False, "Ray rows skipped: ray is not installed (make bench-deps)"
    return True, ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples (a smoke run)")
    parser.add_argument("--only", default="1,2,3,4,5", help="which parts, e.g. 1,2")
    parser.add_argument("--no-netns", action="store_true", help="skip the network namespace")
    args = parser.parse_args()
    if not args.no_netns:
        _in_private_netns(sys.argv)
    only = {int(x) if x.isdigit() else 0 for x in args.only.split(",")}
    rounds, block = (4, 50) if args.quick else (10, 200)
    n_batch = 2_000 if args.quick else 10_000
    n_yield = 2_000 if args.quick else 10_000
    rows: list[tuple[str, str]] = [("case", "figure")]
    t0 = time.perf_counter()
    if only & {1, 5}:
        rows += bench_embedded(rounds, block, n_batch)
    if 2 in only:
        rows += bench_async(rounds, block)
    if 3 in only:
        ok, why = _ray_available()
        rows += bench_local(rounds, max(20, block // 4), 3_000, ok)
        if not ok:
            rows.append((why, ""))
    if 4 in only:
        rows += bench_yields(n_yield, 3 if args.quick else 5)
    took = time.perf_counter() - t0
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores, {took:.0f} s")
    print(table(rows))


if __name__ == "__main__":
    main()
