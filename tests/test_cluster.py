"""Cluster mode with real processes posing as hosts: a leader on 127.0.0.1,
members on 127.0.0.2 and 127.0.0.3 (see tests/cluster_procs.py). Every
process is stopped by pid at the end of each test."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from cluster_procs import Cluster, member_of

from llmspell import LlmspellError, Runtime, RuntimeClosed, Task, TaskFailed, TaskTimeout

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="127.0.0.x aliases"),
]


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    c = Cluster()
    try:
        c.join("127.0.0.2", engines="python,lua", tags=("gpu",))
        c.join("127.0.0.3", engines="python,js")
        yield c
    finally:
        c.stop()


@pytest.fixture
def rt(cluster: Cluster) -> Iterator[Runtime]:
    with Runtime(mode="cluster", address=cluster.address, secret=cluster.secret) as r:
        cluster.wait_engines(r, "127.0.0.2", 2)
        cluster.wait_engines(r, "127.0.0.3", 2)
        yield r


def test_engines_are_placed_on_members_by_capability(cluster: Cluster, rt: Runtime) -> None:
    engines = rt.stats()["engines"]
    placed = sorted((e["engine"], e["host"]) for e in engines)
    assert placed == [
        ("js", "127.0.0.3"),
        ("lua", "127.0.0.2"),
        ("python", "127.0.0.2"),
        ("python", "127.0.0.3"),
    ]
    a, b = cluster.members
    for e in engines:  # each engine process runs under its member's join process
        assert member_of(e["pid"], a if e["host"] == "127.0.0.2" else b)
    assert all(e["tags"] == (["gpu"] if e["host"] == "127.0.0.2" else []) for e in engines)


def test_tasks_run_on_members_offering_their_engine(cluster: Cluster, rt: Runtime) -> None:
    assert rt.result(rt.submit(Task.lua("return 6 * 7")), timeout=30) == 42
    assert rt.result(rt.submit(Task.js("return [1, 2].length")), timeout=30) == 2
    a, b = cluster.members
    # python: both members offer it; concurrent tasks spread over both
    hs = [rt.submit(Task.python("cluster_procs:where", args={"seconds": 0.3})) for _ in range(8)]
    pids = {rt.result(h, timeout=30) for h in hs}
    assert any(member_of(p, a) for p in pids) and any(member_of(p, b) for p in pids)


def test_tags_restrict_a_task_to_members_with_all_of_them(cluster: Cluster, rt: Runtime) -> None:
    a, _ = cluster.members
    hs = [rt.submit(Task.python("cluster_procs:where", tags=["gpu"])) for _ in range(6)]
    assert all(member_of(rt.result(h, timeout=30), a) for h in hs)


def test_a_task_no_member_can_run_waits_and_times_out(rt: Runtime) -> None:
    h = rt.submit(Task.python("cluster_procs:where", tags=["gpu", "tpu"], timeout=1.5))
    assert rt.status(h) == "pending"
    why = rt.progress(h)  # what rt.progress and `llmspell tasks` say while it waits
    assert why is not None and why.current_operation == (
        "waiting: no cluster member with tags ['gpu', 'tpu'] offers the python engine"
    )
    with pytest.raises(TaskTimeout, match=r"no cluster member with tags \['gpu', 'tpu'\]"):
        rt.result(h, timeout=30)
    h = rt.submit(Task.js("return 1", tags=["gpu"], timeout=1.5))  # gpu member: no js
    with pytest.raises(TaskTimeout, match="no cluster member with tags"):
        rt.result(h, timeout=30)


def test_tags_outside_a_cluster_fail_with_a_clear_error() -> None:
    with Runtime() as r:
        with pytest.raises(TaskFailed, match="no cluster"):
            r.result(r.submit(Task.lua("return 1", tags=["gpu"])), timeout=10)


def test_no_process_listens_beyond_the_addresses_given(cluster: Cluster, rt: Runtime) -> None:
    hosts = {cluster.leader.pid: "127.0.0.1"}
    hosts.update({m.pid: m.info["host"] for m in cluster.members})  # type: ignore[attr-defined]
    listening = 0
    for owner in [cluster.leader, *cluster.members]:
        for p in owner.note_tree():
            try:
                conns = p.net_connections(kind="inet")
            except psutil.Error:
                continue
            for c in conns:
                if c.status == psutil.CONN_LISTEN:
                    listening += 1
                    assert c.laddr.ip == hosts[owner.pid], (p.pid, c.laddr)
    assert listening >= 3 + 4  # the admins, the leader's actors, every engine


def test_a_member_with_the_wrong_secret_is_refused(cluster: Cluster, rt: Runtime) -> None:
    before = len(rt.stats()["engines"])
    m = cluster.join("127.0.0.3", secret="0" * 64, wait=False)
    assert m.popen.wait(30) != 0
    err = "".join(m.err).strip().splitlines()
    assert len(err) == 1 and "refused this member's secret" in err[0], err
    assert len(rt.stats()["engines"]) == before


def test_a_killed_member_is_noticed_and_a_late_joiner_takes_work() -> None:
    c = Cluster()
    try:
        a = c.join("127.0.0.2", engines="python", workers=2)
        b = c.join("127.0.0.3", engines="python")
        with Runtime(mode="cluster", address=c.address, secret=c.secret) as r:
            c.wait_engines(r, "127.0.0.2", 2)
            c.wait_engines(r, "127.0.0.3", 1)
            task = "cluster_procs:where"
            retried = [
                r.submit(Task.python(task, args={"seconds": 3.0}, retries=2)) for _ in range(30)
            ]
            once = [r.submit(Task.python(task, args={"seconds": 3.0})) for _ in range(30)]
            # the member dies under load, its engines with it (they watch its join process)
            a.kill9()
            b_pids = {p.pid for p in b.note_tree()}
            a_pids = {p.pid for p in a.tree.values()}
            for h in retried:  # nothing lost, nothing hung: what A held re-ran on B
                assert r.result(h, timeout=60) in b_pids | a_pids
            failed = []
            for h in once:
                try:
                    assert r.result(h, timeout=60) in b_pids | a_pids
                except TaskFailed as exc:
                    failed.append(exc.message)
            assert failed, "the killed member ran some of these when it died"
            assert all("cluster member 127.0.0.2:" in m for m in failed), failed
            assert all("127.0.0.2" != e["host"] for e in r.stats()["engines"])
            # a member joining later takes new work
            late = c.join("127.0.0.2", engines="python", tags=("late",))
            c.wait_engines(r, "127.0.0.2", 1)
            pid = r.result(r.submit(Task.python(task, tags=["late"], timeout=30)), timeout=60)
            assert member_of(pid, late)
    finally:
        c.stop()
    assert not c.processes()


def test_stopping_the_leader_stops_the_members_engines() -> None:
    c = Cluster()
    try:
        stays = c.join("127.0.0.2", engines="lua")
        leaves = c.join("127.0.0.3", engines="lua", extra=("--exit-with-leader",))
        with Runtime(mode="cluster", address=c.address, secret=c.secret) as r:
            c.wait_engines(r, "127.0.0.2", 1)
            c.wait_engines(r, "127.0.0.3", 1)
            engines = [psutil.Process(e["pid"]) for e in r.stats()["engines"]]
        c.leader.stop()
        gone = psutil.wait_procs(engines, timeout=15)[1]
        assert not gone, "engines still running after the leader stopped"
        assert leaves.popen.wait(15) == 0
        assert stays.popen.poll() is None  # waits for a new leader at the same address
        c.restart_leader()
        with Runtime(mode="cluster", address=c.address, secret=c.secret) as r:
            (engine,) = c.wait_engines(r, "127.0.0.2", 1)
            assert member_of(engine["pid"], stays)
            assert r.result(r.submit(Task.lua("return 'back'")), timeout=30) == "back"
    finally:
        c.stop()
    assert not c.processes()


def test_status_and_stop_reach_a_leader_served_on_another_address() -> None:
    from cluster_procs import Proc, free_port

    secret = "s" * 32
    port = free_port("127.0.0.2")
    leader = Proc(["serve", "--cluster", "--port", str(port), "--host", "127.0.0.2"], secret)
    try:
        leader.first()
        leader.listen = ("127.0.0.2", port)
        env = dict(os.environ, LLMSPELL_SECRET=secret)
        base = [sys.executable, "-m", "llmspell", "--port", str(port), "--host", "127.0.0.2"]

        def cli(command: str) -> subprocess.CompletedProcess[str]:
            args = [*base[:3], command, *base[3:]]
            return subprocess.run(args, capture_output=True, text=True, env=env, timeout=60)

        status = cli("status")
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["address"] == f"127.0.0.2:{port}"
        stop = cli("stop")
        assert stop.returncode == 0, stop.stderr
        assert leader.popen.wait(30) == 0
    finally:
        leader.stop()


def test_a_leader_killed_and_restarted_on_its_journal_is_survived_by_members(
    tmp_path: Path,
) -> None:
    c = Cluster(journal=str(tmp_path / "leader.db"))
    try:
        stays = c.join("127.0.0.2", engines="python", workers=2)
        leaves = c.join("127.0.0.3", engines="python", extra=("--exit-with-leader",))
        task = "cluster_procs:where"
        with Runtime(mode="cluster", address=c.address, secret=c.secret) as r:
            c.wait_engines(r, "127.0.0.2", 2)
            c.wait_engines(r, "127.0.0.3", 1)
            done = r.result(r.submit(Task.python(task, id="done-before")), timeout=30)
            hs = [
                r.submit(Task.python(task, args={"seconds": 2.0}, id=f"cut-{i}")) for i in range(4)
            ]
            deadline = time.monotonic() + 30
            while not all(r.status(h) == "running" for h in hs) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert all(r.status(h) == "running" for h in hs)
            old = c.leader.note_tree()
            c.leader.kill9()  # the leader's process only: its actors follow it
            with pytest.raises(RuntimeClosed):  # the attached client is told, not left waiting
                r.result(hs[0], timeout=30)
        assert not psutil.wait_procs(old, timeout=15)[1], "the killed leader's actors still run"
        assert leaves.popen.wait(15) == 0  # --exit-with-leader
        assert json.loads(leaves.lines.get(timeout=5))["why"] == "the leader is gone"
        c.restart_leader()  # the same address, the same journal
        assert json.loads(stays.lines.get(timeout=30)) == {"rejoined": c.address}
        with Runtime(mode="cluster", address=c.address, secret=c.secret) as r:
            # the unfinished tasks resumed, and ran on the member that re-joined
            pids = {r.result(f"cut-{i}", timeout=60) for i in range(4)}
            assert all(member_of(p, stays) for p in pids), pids
            assert r.result("done-before", timeout=10) == done  # kept in the journal
            assert {e["host"] for e in r.stats()["engines"]} == {"127.0.0.2"}
            assert member_of(r.result(r.submit(Task.python(task)), timeout=30), stays)
    finally:
        c.stop()
    assert not c.processes()


def test_a_probe_tells_a_restarted_runtime_from_the_one_it_knew() -> None:
    from llmspell import _frames

    c = Cluster()
    try:
        first = _frames.identify("127.0.0.1", c.port, c.secret)
        assert first[0] == "ok" and first[1]
        assert _frames.identify("127.0.0.1", c.port, c.secret) == first
        assert _frames.identify("127.0.0.1", c.port, "0" * 64) == ("wrong", "")
        c.leader.stop()
        assert _frames.identify("127.0.0.1", c.port, c.secret) == ("silent", "")
        c.restart_leader()
        again = _frames.identify("127.0.0.1", c.port, c.secret)
        assert again[0] == "ok" and again[1] != first[1]
    finally:
        c.stop()


def test_a_client_attaches_from_another_address_with_the_secret(
    cluster: Cluster, rt: Runtime
) -> None:
    me = psutil.Process()
    before = {c.laddr for c in me.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN}
    with Runtime(
        mode="cluster", address=cluster.address, secret=cluster.secret, host="127.0.0.2"
    ) as client:
        assert client.result(client.submit(Task.lua("return 6 * 7")), timeout=30) == 42
        assert {e["host"] for e in client.stats()["engines"]} == {"127.0.0.2", "127.0.0.3"}
        mine = {
            c.laddr for c in me.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN
        } - before
        assert mine and {a.ip for a in mine} == {"127.0.0.2"}  # its own address, nothing else
    with pytest.raises(LlmspellError, match="refused this client's secret"):
        Runtime(mode="cluster", address=cluster.address, secret="0" * 64, host="127.0.0.2")
    with pytest.raises(LlmspellError, match="not an address of this machine"):
        Runtime(mode="cluster", address=cluster.address, secret=cluster.secret, host="10.9.9.9")


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare (util-linux)")
def test_a_member_measures_its_own_engines_and_reports_them_with_its_host() -> None:
    from cluster_procs import ns_pid

    c = Cluster()
    try:
        # its pids are those of its own namespace: the leader cannot sample them
        m = c.join("127.0.0.4", engines="lua", pid_namespace=True)
        with Runtime(mode="cluster", address=c.address, secret=c.secret) as r:
            (engine,) = c.wait_engines(r, "127.0.0.4", 1)
            (real,) = [p for p in m.note_tree() if ns_pid(p) == engine["pid"]]
            assert real.pid != engine["pid"]
            deadline = time.monotonic() + 15
            while engine.get("rss", 0) == 0 and time.monotonic() < deadline:
                time.sleep(0.2)
                (engine,) = c.wait_engines(r, "127.0.0.4", 1)
            assert engine["host"] == "127.0.0.4"
            rss = real.memory_info().rss
            assert 0.7 * rss < engine["rss"] < 1.3 * rss, (engine["rss"], rss)
            assert engine["cpu_percent"] >= 0.0
            assert r.result(r.submit(Task.lua("return 6 * 7")), timeout=30) == 42
    finally:
        c.stop()
    assert not c.processes()


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare (util-linux)")
def test_engine_memory_is_judged_on_what_the_member_measured() -> None:
    import secrets

    from cluster_procs import Proc, free_port

    port, secret = free_port("127.0.0.1"), secrets.token_hex(32)
    wrap = ("unshare", "--pid", "--fork", "--mount-proc", "--kill-child")
    with Runtime(mode="cluster", host="127.0.0.1", port=port, secret=secret, engine_memory=1) as r:
        join = ["join", f"127.0.0.1:{port}", "--host", "127.0.0.4", "--engines", "lua"]
        m = Proc(join, secret, wrap=wrap)
        try:
            m.first()
            deadline = time.monotonic() + 15
            engines: list[dict[str, object]] = []
            while not any(e.get("over_memory") for e in engines) and time.monotonic() < deadline:
                time.sleep(0.2)
                engines = r.stats()["engines"]
            (engine,) = engines
            assert engine["host"] == "127.0.0.4" and engine["over_memory"] is True
        finally:
            m.stop()


def test_a_member_whose_engine_is_busy_for_seconds_is_not_lost() -> None:
    # a script engine with ready scripts reads no ping for as long as they run
    # (here several seconds of short scripts): its member's admin answers for it
    c = Cluster()
    try:
        c.join("127.0.0.2", engines="lua")
        with Runtime(mode="cluster", address=c.address, secret=c.secret) as r:
            c.wait_engines(r, "127.0.0.2", 1)
            busy = "local x = 0 for i = 1, 400000 do x = x + i % 7 end return 'done'"
            hs = r.submit_many([Task.lua(busy, timeout=120) for _ in range(500)])
            assert [r.result(h, timeout=120) for h in hs] == ["done"] * 500
            assert [e["host"] for e in r.stats()["engines"]] == ["127.0.0.2"]
    finally:
        c.stop()
    assert not c.processes()


def test_a_killed_engine_on_a_member_is_replaced_there(cluster: Cluster, rt: Runtime) -> None:
    # an engine SIGKILLed on its member: the cluster actor tells the scheduler (its
    # word now names the dead process's pid, from its heartbeats; the order of that
    # word and the replacement's EngineReady is not forced here, local mode's test
    # in test_engine_deaths.py forces it) and creates the engine again there
    (old,) = [e for e in rt.stats()["engines"] if e["engine"] == "js"]
    h = rt.submit(Task.js("await spell.sleep(3); return 7;", retries=1))
    deadline = time.monotonic() + 30
    while rt.status(h) != "running":
        assert time.monotonic() < deadline, rt.status(h)
        time.sleep(0.05)
    time.sleep(1.5)  # a heartbeat or two: the cluster actor knows the engine's pid
    crashes = rt.stats()["crashes"]
    psutil.Process(int(old["pid"])).kill()
    assert rt.result(h, timeout=60) == 7  # re-run on the replacement
    assert rt.stats()["crashes"] == crashes + 1
    (new,) = [e for e in rt.stats()["engines"] if e["engine"] == "js"]
    assert new["pid"] != old["pid"] and new["capacity"] and new["host"] == "127.0.0.3"
    assert rt.result(rt.submit(Task.js("return 8;")), timeout=30) == 8
