"""Lanes (``llmspell._lanes``): local mode's direct sockets between the
scheduler and its engines and owner (issue 15). What a user relies on: every
message arrives once and in the order it was sent, across the switch from
Thespian to the lane; a stranger's bytes on the lane's socket are refused
without losing anything or stopping anything; a broken lane falls back to
Thespian; a restarted scheduler gets new lanes."""

from __future__ import annotations

import logging
import os
import select
import socket
import struct
import time
from collections.abc import Iterator
from typing import Any

import psutil
import pytest
from conftest import SCRIPT_PYTHON

from llmspell import Runtime, Task, _lanes
from llmspell.messages import decode
from llmspell.messages.types import LaneMark

pytestmark = pytest.mark.skipif(not _lanes.available(), reason="lanes need Linux")

MAX = 1 << 20


class Side:
    """One side of a lane in this process: what reached its handlers, what it
    sent through "Thespian" (a list the test delivers from)."""

    def __init__(self, role: str) -> None:
        self.got: list[tuple[bytes, Any]] = []
        self.thespian: list[tuple[Any, bytes]] = []
        self.lanes = _lanes.Lanes(
            role, MAX, lambda d, p: self.got.append((d, p)), self._thespian, str
        )

    def _thespian(self, peer: Any, data: bytes) -> None:
        self.thespian.append((peer, data))

    def turn(self, wait: float = 0.2) -> None:
        """What Thespian's loop does when a watched descriptor is ready."""
        fds = self.lanes.fds()
        if fds:
            ready, _, _ = select.select(fds, [], [], wait)
            self.lanes.on_ready(list(ready))

    def marks(self) -> list[bytes]:
        return [decode(d).token for _, d in self.thespian if type(decode(d)) is LaneMark]

    def bodies(self) -> list[bytes]:
        return [d for d, _ in self.got]


@pytest.fixture
def pair() -> Iterator[tuple[Side, Side, bytes]]:
    """A scheduler side ("S") and an engine side ("C") joined by a lane; the
    token the scheduler offered."""
    hub, client = Side("scheduler"), Side("engine")
    offer = hub.lanes.offer("C")
    assert offer is not None
    name, token = offer
    assert client.lanes.take_offer("S", name, token)
    yield hub, client, token
    hub.lanes.close()
    client.lanes.close()


def settle(*sides: Side, until: Any = None, turns: int = 50) -> None:
    for _ in range(turns):
        for s in sides:
            s.turn(0.01)
        if until is not None and until():
            return


def test_frames_are_cut_whole_and_a_frame_over_the_limit_is_refused() -> None:
    reader = _lanes.FrameReader(10)
    stream = _lanes.frame(b"abc") + _lanes.frame(b"") + _lanes.frame(b"0123456789")
    got = []
    for i in range(len(stream)):  # a byte at a time: nothing is cut wrong
        got += reader.feed(stream[i : i + 1])
    assert got == [b"abc", b"", b"0123456789"]
    with pytest.raises(_lanes.LaneError, match=r"11 bytes .*max_frame_bytes=10"):
        reader.feed(_lanes.frame(b"x" * 11))


def test_order_is_kept_across_the_switch_both_ways(pair: tuple[Side, Side, bytes]) -> None:
    hub, client, token = pair
    # the engine switched: its mark went through "Thespian", then it writes on the lane
    assert client.marks() == [token]
    assert client.lanes.write("S", b"c1") and client.lanes.write("S", b"c2")
    settle(hub, until=lambda: hub.marks())
    assert hub.marks() == [token]  # the scheduler proved the token and switched too
    assert hub.bodies() == []  # held: what the engine sent before through Thespian comes first
    hub.got.append((b"sent-through-thespian-before-the-switch", "C"))
    hub.lanes.on_mark(token)  # the engine's mark arrives through Thespian
    assert hub.bodies() == [b"sent-through-thespian-before-the-switch", b"c1", b"c2"]
    assert all(peer == "C" for _, peer in hub.got)
    # the other way: the scheduler's frames wait at the engine for the scheduler's mark
    assert hub.lanes.write("C", b"s1") and hub.lanes.write("C", b"s2")
    settle(client, turns=5)
    assert client.bodies() == []
    client.lanes.on_mark(token)
    settle(client, until=lambda: len(client.got) == 2)
    assert client.bodies() == [b"s1", b"s2"]
    for i in range(200):  # and after the switch, order holds with no mark to wait for
        client.lanes.write("S", b"%d" % i)
    settle(hub, until=lambda: len(hub.got) == 203)
    assert hub.bodies()[3:] == [b"%d" % i for i in range(200)]


def test_a_mark_that_overtakes_the_connection_is_kept_for_it() -> None:
    hub, client = Side("scheduler"), Side("engine")
    try:
        offer = hub.lanes.offer("C")
        assert offer is not None
        name, token = offer
        hub.lanes.on_mark(token)  # through Thespian before the scheduler accepted
        assert client.lanes.take_offer("S", name, token)
        client.lanes.write("S", b"first")
        settle(hub, until=lambda: hub.got)
        assert hub.bodies() == [b"first"]
    finally:
        hub.lanes.close()
        client.lanes.close()


def _raw(name: bytes, data: bytes) -> bytes:
    """Connect to the lane listener ``name``, write ``data``; what comes back
    before the other side closes (b"": it closed)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(name)
        s.sendall(data)
        try:
            return s.recv(100)
        except (ConnectionResetError, TimeoutError):
            return b""


@pytest.mark.parametrize(
    "data, why",
    [
        (_lanes.frame(os.urandom(16)), "not one this scheduler offered"),
        (_lanes.frame(b"short"), "first frame is not a token"),
        (struct.pack(">I", 0xFFFFFFFF) + b"junk", "first frame is not a token"),
    ],
    ids=["unknown token", "not a token", "huge length"],
)
def test_a_stranger_on_the_lane_socket_is_refused(
    pair: tuple[Side, Side, bytes], data: bytes, why: str, caplog: pytest.LogCaptureFixture
) -> None:
    hub, client, token = pair
    settle(hub, until=lambda: hub.marks())
    import threading

    answer: list[bytes] = []
    t = threading.Thread(target=lambda: answer.append(_raw(hub.lanes.name, data)))
    with caplog.at_level(logging.WARNING, logger="llmspell"):
        t.start()
        settle(hub, until=lambda: not t.is_alive())
        t.join(5)
    assert answer == [b""]  # closed on it
    assert why in caplog.text
    assert hub.got == [] and hub.lanes.unproven == {}
    # the real lane still works
    hub.lanes.on_mark(token)
    client.lanes.write("S", b"after")
    settle(hub, until=lambda: hub.got)
    assert hub.bodies() == [b"after"]


def test_a_frame_over_the_limit_closes_the_lane_and_sends_fall_back(
    pair: tuple[Side, Side, bytes], caplog: pytest.LogCaptureFixture
) -> None:
    hub, client, token = pair
    settle(hub, until=lambda: hub.marks())
    hub.lanes.on_mark(token)
    lane = client.lanes.out["S"]
    lane.sock.sendall(struct.pack(">I", MAX + 1))
    with caplog.at_level(logging.WARNING, logger="llmspell"):
        settle(hub, until=lambda: "C" not in hub.lanes.out)
    assert f"more than max_frame_bytes={MAX}" in caplog.text
    assert not hub.lanes.write("C", b"x")  # the caller sends it through Thespian then


def test_a_slow_reader_queues_in_order_and_a_dead_one_falls_back(
    pair: tuple[Side, Side, bytes],
) -> None:
    hub, client, token = pair
    settle(hub, until=lambda: hub.marks())
    client.lanes.on_mark(token)
    chunk = b"y" * 100_000
    for i in range(100):  # 10 MB: more than the socket takes while nobody reads
        assert hub.lanes.write("C", b"%03d" % i + chunk)
    assert hub.lanes.pending
    for _ in range(2000):
        client.turn(0.01)
        hub.lanes.drain()
        if len(client.got) == 100:
            break
    assert not hub.lanes.pending
    assert [d[:3] for d in client.bodies()] == [b"%03d" % i for i in range(100)]
    client.lanes.close()  # the engine's process is gone
    settle(hub, until=lambda: "C" not in hub.lanes.out)
    assert not hub.lanes.write("C", b"z")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_another_user_is_refused_before_anything_is_read(
    pair: tuple[Side, Side, bytes], caplog: pytest.LogCaptureFixture
) -> None:
    hub, _, _ = pair
    offer = hub.lanes.offer("D")
    assert offer is not None
    name, token = offer
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.setuid(65534)
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.connect(name)
                s.sendall(_lanes.frame(token))
                s.settimeout(5)
                s.recv(10)
        finally:
            os._exit(0)
    with caplog.at_level(logging.WARNING, logger="llmspell"):
        deadline = time.monotonic() + 10
        while os.waitpid(pid, os.WNOHANG) == (0, 0):
            hub.turn(0.05)
            assert time.monotonic() < deadline
    assert "refused a lane from another user (uid 65534)" in caplog.text
    assert token in hub.lanes.offered  # never taken: the real peer may still use it


# -- a local runtime --------------------------------------------------------------------


def _listener_name(pid: int) -> bytes:
    names = {
        c.laddr
        for c in psutil.Process(pid).net_connections(kind="unix")
        if str(c.laddr).startswith("@llmspell-lane-")
    }
    assert len(names) == 1, names
    return b"\0" + names.pop()[1:].encode()


def _lane_peers(pid: int) -> int:
    """How many lane sockets the scheduler process holds (its listener included)."""
    return sum(
        1
        for c in psutil.Process(pid).net_connections(kind="unix")
        if str(c.laddr).startswith("@llmspell-lane-")
    )


def _wait(check: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_a_local_runtime_talks_through_lanes_and_shrugs_off_bad_bytes() -> None:
    with Runtime(mode="local", workers=1, script_python=SCRIPT_PYTHON) as rt:
        tasks = [
            Task.python("targets:add", args={"x": 1, "y": 2}),
            Task.lua("return 1 + 1"),
            Task.js("return 2 + 1"),
        ]
        assert [rt.result(rt.submit(t), timeout=30) for t in tasks] == [3, 2, 3]
        sched = rt.stats()["processes"]["scheduler"]
        # the owner and the three engines: one lane each, and the listener
        _wait(lambda: _lane_peers(sched) == 5, "not every engine got a lane")
        lane = rt._driver._lane
        assert lane is not None and lane.marked.is_set()
        name = _listener_name(sched)
        for junk in (
            b"\x00\x00\x00\x10" + os.urandom(16),  # a token never offered
            b"GET / HTTP/1.1\r\n\r\n",
            struct.pack(">I", 0xFFFFFFFF) + os.urandom(64),
            b"",  # connects and hangs up
        ):
            assert _raw(name, junk) == b""
        silent = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(20)]
        try:
            for s in silent:  # connect and say nothing: the oldest are dropped
                s.connect(name)
            hs = rt.submit_many(
                [Task.python("targets:add", args={"x": i, "y": 1}) for i in range(500)]
            )
            assert [rt.result(h, timeout=60) for h in hs] == [i + 1 for i in range(500)]
            assert [rt.result(rt.submit(t), timeout=30) for t in tasks] == [3, 2, 3]
        finally:
            for s in silent:
                s.close()
        assert rt.stats()["processes"]["scheduler"] == sched  # nothing crashed


def test_a_restarted_scheduler_gets_new_lanes() -> None:
    with Runtime(mode="local", workers=1, script_python=SCRIPT_PYTHON) as rt:
        assert rt.result(rt.submit(Task.lua("return 1")), timeout=30) == 1
        old = rt.stats()["processes"]["scheduler"]
        _wait(lambda: _lane_peers(old) == 5, "not every engine got a lane")
        first = rt._driver._lane
        psutil.Process(old).kill()

        def new_scheduler() -> bool:
            try:
                return rt.stats()["processes"]["scheduler"] != old
            except Exception:
                return False

        _wait(new_scheduler, "the scheduler was not restarted")
        new = rt.stats()["processes"]["scheduler"]
        _wait(lambda: _lane_peers(new) == 5, "the new scheduler's peers got no lanes")
        lane = rt._driver._lane
        assert lane is not None and lane is not first and lane.marked.is_set()
        tasks = [
            Task.python("targets:add", args={"x": 1, "y": 2}),
            Task.lua("return 2"),
            Task.js("return 3"),
        ]
        assert [rt.result(rt.submit(t), timeout=30) for t in tasks] == [3, 2, 3]


# -- the owner's side (``LocalDriver``) ---------------------------------------------------


class _Sender:
    """The driver's Thespian endpoint: what it told whom, in order."""

    def __init__(self) -> None:
        self.told: list[tuple[Any, bytes]] = []

    def tell(self, to: Any, data: bytes) -> None:
        self.told.append((to, data))


class _SwitchWhileWaiting:
    """The driver's lock: the first time a caller waits for it, the listener
    thread takes the scheduler's lane offer (and holds the lock for it) first."""

    def __init__(self, switch: Any) -> None:
        import threading

        self.lock = threading.Lock()
        self.switch = switch

    def __enter__(self) -> None:
        switch, self.switch = self.switch, None
        if switch is not None:
            import threading

            t = threading.Thread(target=switch)
            t.start()
            t.join(10)
        self.lock.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.lock.release()


def test_the_owner_keeps_its_order_when_the_lane_opens_while_it_sends() -> None:
    from thespian.actors import ActorAddress

    from llmspell._driver import LocalDriver
    from llmspell.messages import encode
    from llmspell.messages.types import LaneOffer, Ping, Via

    hub = Side("scheduler")
    driver = LocalDriver("r" * 32, {}, lambda msg: None)
    sender = _Sender()
    me = ActorAddress("owner")
    driver._sender, driver.me, driver._via, driver._lane_asked = sender, me, Via, "S"
    offer = hub.lanes.offer(me)
    assert offer is not None
    driver._lock = _SwitchWhileWaiting(lambda: driver._take_lane(LaneOffer(*offer)))  # type: ignore[assignment]
    try:
        first, second = encode(Ping("first")), encode(Ping("second"))
        driver.send("S", first)  # no lane when it looked; the offer came meanwhile
        driver.send("S", second)  # the lane is up by now
        settle(hub, until=lambda: hub.marks())
        for _, wrapped in sender.told:  # "Thespian" delivers, in the order sent
            inner = decode(wrapped).data
            if type(decode(inner)) is LaneMark:
                hub.lanes.on_mark(decode(inner).token)
            else:
                hub.got.append((inner, me))
        settle(hub, until=lambda: len(hub.got) >= 2)
        assert hub.bodies() == [first, second]
    finally:
        driver._stopping.set()
        driver._drop_lane(driver._lane)
        hub.lanes.close()


def _owner(hub: Side, on_message: Any) -> tuple[Any, Any]:
    """A ``LocalDriver`` whose Thespian endpoint is a list, with a lane from
    ``hub`` (the scheduler "S") taken and marked; its owner address."""
    from thespian.actors import ActorAddress

    from llmspell._driver import LocalDriver
    from llmspell.messages.types import LaneOffer, Via

    driver = LocalDriver("r" * 32, {}, on_message)
    me = ActorAddress("owner")
    driver._sender, driver.me, driver._via, driver._lane_asked = _Sender(), me, Via, "S"
    offer = hub.lanes.offer(me)
    assert offer is not None
    driver._take_lane(LaneOffer(*offer))
    settle(hub, until=lambda: hub.marks())
    driver._handle(hub.thespian[-1][1])  # the scheduler's mark, through "Thespian"
    assert driver._lane is not None and driver._lane.marked.is_set()
    return driver, me


def test_what_a_dead_scheduler_sent_on_its_lane_is_read_after_its_replacement_is_told() -> None:
    import threading

    from llmspell.messages import encode
    from llmspell.messages.types import Ping, Replaced

    hub = Side("scheduler")
    got: list[Any] = []
    busy, go = threading.Event(), threading.Event()

    def on_message(msg: Any) -> None:
        if type(msg) is Ping:
            got.append(msg.role)
            if msg.role == "1":  # the owner's thread is slow with the first
                busy.set()
                go.wait(10)

    driver, me = _owner(hub, on_message)
    try:
        hub.lanes.write(str(me), encode(Ping("1")))
        assert busy.wait(10)
        hub.lanes.write(str(me), encode(Ping("2")))  # waits in the owner's socket
        hub.lanes.write(str(me), encode(Ping("3")))
        hub.lanes.close()  # the scheduler died after sending them
        from thespian.actors import ActorAddress

        driver._handle(encode(Replaced("scheduler", ActorAddress("S2"), 1, False, 2)))
        go.set()
        _wait(lambda: len(got) == 3, f"what the scheduler sent before it died was lost: {got}", 10)
        assert got == ["1", "2", "3"]
    finally:
        go.set()
        driver._stopping.set()
        driver._drop_lane(driver._lane)
        hub.lanes.close()


def test_a_lane_offered_while_the_owner_stops_is_closed() -> None:
    from thespian.actors import ActorAddress

    from llmspell._driver import LocalDriver
    from llmspell.messages.types import LaneOffer, Via

    hub = Side("scheduler")
    driver = LocalDriver("r" * 32, {}, lambda msg: None)
    me = ActorAddress("owner")
    driver._sender, driver.me, driver._via, driver._lane_asked = _Sender(), me, Via, "S"
    offer = hub.lanes.offer(me)
    assert offer is not None
    try:
        driver._stopping.set()  # close() has begun; the listener takes the offer still
        driver._take_lane(LaneOffer(*offer))
        lane = driver._lane
        assert lane is not None
        # its reader ends (the owner stops) and closes it
        _wait(lambda: lane.sock.fileno() == -1, "the lane's socket was left open", 10)
    finally:
        driver._drop_lane(driver._lane)
        hub.lanes.close()


def test_a_message_over_the_limit_is_left_to_thespian_and_the_lane_stays(
    pair: tuple[Side, Side, bytes],
) -> None:
    """Thespian refuses it at the sender and hands it back as undeliverable, which
    the sender handles (an engine splits its results): the lane never carries it."""
    hub, client, token = pair
    settle(hub, until=lambda: hub.marks())
    hub.lanes.on_mark(token)
    assert not client.lanes.write("S", b"x" * (MAX + 1))
    assert client.lanes.write("S", b"fits")
    settle(hub, until=lambda: hub.got)
    assert hub.bodies() == [b"fits"] and "C" in hub.lanes.out


def test_two_hosts_on_one_port_are_two_peers() -> None:
    """Cluster mode on one machine: a member bound to 127.0.0.2 counts that address
    as its own, and Thespian's ``str`` leaves an own host out, so 127.0.0.1:5000 and
    127.0.0.2:5000 print alike there; a lane or a batch of outcomes keyed by it
    would go to the wrong one."""
    from thespian.actors import ActorAddress
    from thespian.system.transport.IPBase import TCPv4ActorAddress, thisSystem

    from llmspell._actor import addr_key

    added = "127.0.0.2" not in thisSystem._myAddresses
    thisSystem.add_local_addr("127.0.0.2")
    try:
        a = ActorAddress(TCPv4ActorAddress("127.0.0.1", 5000))
        b = ActorAddress(TCPv4ActorAddress("127.0.0.2", 5000))
        assert str(a) == str(b)  # the hazard
        assert addr_key(a) != addr_key(b)
        assert addr_key(b) == addr_key(ActorAddress(TCPv4ActorAddress("127.0.0.2", 5000)))
    finally:
        if added:
            thisSystem._myAddresses.discard("127.0.0.2")


def test_closing_writes_what_waits_in_the_outbox_first(pair: tuple[Side, Side, bytes]) -> None:
    """The scheduler closes its lanes as it shuts down: the outcomes still in an
    outbox reach the peer, which reads the lane to its end."""
    import threading

    hub, client, token = pair
    settle(hub, until=lambda: hub.marks())
    client.lanes.on_mark(token)
    for i in range(120):  # 12 MB: more than the socket takes while nobody reads
        assert hub.lanes.write("C", b"%03d" % i + b"y" * 100_000)
    assert hub.lanes.pending
    reader = threading.Thread(
        target=lambda: settle(client, until=lambda: len(client.got) == 120, turns=3000)
    )
    reader.start()
    hub.lanes.close(drain_for=10)
    reader.join(30)
    assert [d[:3] for d in client.bodies()] == [b"%03d" % i for i in range(120)]


def test_without_lanes_local_mode_runs_on_thespian_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Where no lane can be made (an engine on another host in cluster mode, no
    abstract sockets), every message goes through Thespian as before lanes; on this
    machine cluster tests get lanes, so this is the test of that path."""
    import llmspell._actor

    # patched before the runtime starts: its processes are forked from this one
    monkeypatch.setattr(_lanes, "available", lambda: False)
    monkeypatch.setattr(llmspell._actor, "lanes_available", lambda: False)
    with Runtime(mode="local", workers=1, script_python=SCRIPT_PYTHON) as rt:
        tasks = [
            Task.python("targets:add", args={"x": 1, "y": 2}),
            Task.lua("return 2"),
            Task.js("return 3"),
        ]
        assert [rt.result(rt.submit(t), timeout=30) for t in tasks] == [3, 2, 3]
        hs = rt.submit_many([Task.python("targets:add", args={"x": i, "y": 1}) for i in range(600)])
        assert [rt.result(h, timeout=60) for h in hs] == [i + 1 for i in range(600)]
        slow = rt.submit(Task.python("targets:sleep", args={"seconds": 30}))
        _wait(lambda: rt.status(slow) == "running", "the slow task never ran")
        assert rt.cancel(slow) and rt.status(slow) == "cancelled"
        sched = rt.stats()["processes"]["scheduler"]
        assert rt._driver._lane is None  # type: ignore[attr-defined]
        assert _lane_peers(sched) == 0
