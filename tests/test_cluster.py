"""Cluster mode with real processes posing as hosts: a leader on 127.0.0.1,
members on 127.0.0.2 and 127.0.0.3 (see tests/cluster_procs.py). Every
process is stopped by pid at the end of each test."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import psutil
import pytest

from llmspell import Runtime, Task, TaskFailed, TaskTimeout

from cluster_procs import Cluster, member_of

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="127.0.0.x aliases")


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
