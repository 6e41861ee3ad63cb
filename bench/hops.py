"""Where one local-mode round trip's time goes (issue 15): a per-hop table.

Runs ``Runtime(mode="local", workers=2)`` and times ``rt.result(rt.submit(t))``
for a trivial Python task, one at a time, with timestamps taken in every
process of the runtime (``time.monotonic`` is one clock for every process on
Linux). The hooks are installed by patching functions in this process before
the runtime starts: Thespian forks the admin from it and the actors from the
admin, so every actor process inherits them. Each process appends
``pid event detail time`` lines to one file (``O_APPEND``: whole lines).

What is marked: the caller (submit, the send's start and end, the wake-up
after the outcome); in every process each frame written to a lane and each
lane read (``_lanes``: the scheduler's own socket to its engines and owner,
local mode's hot path), each frame Thespian finished sending,
each frame it finished receiving (the ACK sent right after), each ACK it got
back, each handler's start and end (with the message's tag and the actor's
role); in the Python engine the worker thread's call; in the owner the
listener's ``listen`` returning and the outcome handed to the waiting caller.

The table lists, for the most common sequence of events of a round trip, each
event's median time after the submit and the step from the event before.

Usage: ``python bench/hops.py [--n 300] [--turns]`` (``PYTHONPATH=<tree>`` to
trace another checkout's llmspell).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _util import table

_FD = -1


def mark(event: str, detail: str = "") -> None:
    if _FD >= 0:
        os.write(_FD, f"{os.getpid()} {event} {detail} {time.monotonic():.7f}\n".encode())


def install(path: str) -> None:
    """Patch the hooks (in this process: forked processes inherit them)."""
    global _FD
    _FD = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    from thespian.system.transport import TCPTransport as tcp

    from llmspell import _actor
    from llmspell._runtime import core, runtime
    from llmspell.engines import python as pyeng

    T = tcp.TCPTransport

    def wrap(cls: Any, name: str, before: Any = None, after: Any = None) -> None:
        orig = getattr(cls, name)

        def patched(*a: Any, **k: Any) -> Any:
            if before is not None:
                before(*a, **k)
            r = orig(*a, **k)
            if after is not None:
                after(r, *a, **k)
            return r

        setattr(cls, name, patched)

    def sent(r: Any, self: Any, intent: Any) -> None:
        if getattr(intent, "stage", 0) == T._XMITStepShutdownWrite:
            mark("wire-sent", str(len(intent.serMsg)))

    wrap(T, "_next_XMIT_2", after=sent)

    wrap(T, "_processReceivedEnvelope", before=lambda *a, **k: mark("wire-recv"))
    wrap(T, "serializer", before=lambda *a, **k: mark("pickle-in"))

    def acked(r: Any, self: Any, intent: Any, rcv: Any) -> None:
        if getattr(intent, "result", None) is not None and intent.stage == T._XMITStepFinishCleanup:
            mark("ack-recv")

    wrap(T, "_check_XMIT_4_done", after=acked)

    import selectors

    sel_cls = selectors.DefaultSelector
    orig_select = sel_cls.select

    def select(self: Any, timeout: Any = None) -> Any:
        mark("select-call")
        r = orig_select(self, timeout)
        mark("select-ret", str(len(r)))
        return r

    sel_cls.select = select  # type: ignore[method-assign]

    from llmspell import _lanes

    wrap(_lanes.Lane, "write", before=lambda *a, **k: mark("lane-write"))
    wrap(_lanes.Lanes, "_read", before=lambda *a, **k: mark("lane-read"))

    W = _actor.WireActor
    orig_deliver = W._deliver_to_handler

    def deliver(self: Any, msg: Any, sender: Any) -> None:
        tag = f"{self.role.replace(' ', '_')}:{msg.TAG}"
        mark("handler-in", tag)
        orig_deliver(self, msg, sender)
        mark("handler-out", tag)

    W._deliver_to_handler = deliver  # type: ignore[method-assign]

    orig_recv = W.receiveMessage

    def receive(self: Any, msg: Any, sender: Any) -> Any:
        mark("actor-in", self.role.replace(" ", "_"))
        r = orig_recv(self, msg, sender)
        mark("actor-out", self.role.replace(" ", "_"))
        return r

    W.receiveMessage = receive  # type: ignore[method-assign]

    orig_run = pyeng.PythonEngine._run_sync

    def run_sync(self: Any, call: Any, clock: Any = None) -> None:
        mark("worker-call-in")
        orig_run(self, call, clock)
        mark("worker-rang")

    pyeng.PythonEngine._run_sync = run_sync  # type: ignore[method-assign]

    wrap(
        runtime.Runtime,
        "submit_many",
        before=lambda *a, **k: mark("SUBMIT"),
        after=lambda *a, **k: mark("submit-returned"),
    )
    wrap(core._Core, "on_message", before=lambda *a, **k: mark("listener-on_message"))
    orig_wait = core._Core.wait

    def wait(self: Any, v: Any, timeout: Any) -> bool:
        r: bool = orig_wait(self, v, timeout)
        mark("caller-woke")
        return r

    core._Core.wait = wait  # type: ignore[method-assign]


def analyse(path: str, turns: bool = False) -> list[tuple[str, str]]:
    lines = []
    with open(path) as f:
        for line in f:
            pid, event, *rest = line.split()
            if event.startswith("select") and not turns:
                continue
            t = float(rest[-1])
            detail = rest[0] if len(rest) == 2 else ""
            lines.append((t, int(pid), event, detail))
    lines.sort()
    roles: dict[int, str] = {}
    for _, pid, event, detail in lines:
        if event == "actor-in":
            roles.setdefault(pid, detail)
    owner = next(pid for _, pid, e, _ in lines if e == "SUBMIT")
    roles[owner] = "owner"
    trips: list[list[tuple[float, str]]] = []
    cur: list[tuple[float, str]] | None = None
    for t, pid, event, detail in lines:
        if event == "SUBMIT":
            cur = []
            trips.append(cur)
        if cur is None:
            continue
        who = roles.get(pid, str(pid))
        label = f"{who}: {event}" + (f" {detail}" if detail and event[0] in "hs" else "")
        cur.append((t, label))
    trips = trips[len(trips) // 5 :]  # warm-up
    sigs = Counter(tuple(label for _, label in trip) for trip in trips)
    sig, count = sigs.most_common(1)[0]
    chosen = [trip for trip in trips if tuple(lb for _, lb in trip) == sig]
    offsets: dict[int, list[float]] = defaultdict(list)
    for trip in chosen:
        t0 = trip[0][0]
        for i, (t, _) in enumerate(trip):
            offsets[i].append(t - t0)
    head = f"median after submit, step (us); {count}/{len(trips)} trips"
    rows = [("event (most common sequence)", head)]
    prev = 0.0
    for i, label in enumerate(sig):
        m = statistics.median(offsets[i]) * 1e6
        rows.append((label, f"{m:8.1f}   +{m - prev:7.1f}"))
        prev = m
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument(
        "--turns", action="store_true", help="list each turn of Thespian's loop (its select)"
    )
    args = parser.parse_args()
    from llmspell import Runtime, Task

    fd, path = tempfile.mkstemp(prefix="llmspell-hops-", suffix=".log")
    os.close(fd)
    install(path)
    try:
        with Runtime(mode="local", workers=2) as rt:
            deadline = time.monotonic() + 60
            while len([e for e in rt.stats()["engines"] if e["engine"] == "python"]) < 2:
                if time.monotonic() > deadline:
                    raise RuntimeError("engines did not start")
                time.sleep(0.05)
            py = Task.python("tasks:add", args={"x": 1, "y": 1})
            for _ in range(args.n):
                rt.result(rt.submit(py), timeout=30)
                time.sleep(0.002)  # let stragglers (ACKs) land before the next trip
        print(table(analyse(path, args.turns)))
    finally:
        os.unlink(path)


if __name__ == "__main__":
    main()
