"""Local mode's frames are authenticated and bounded: hostile bytes sent to
any port of a runtime run nothing, crash nothing and buffer nothing big; a
served runtime's secret lives in a 0600 file; the wrong secret is one clear
error (issue 14, item 5)."""

from __future__ import annotations

import json
import os
import pickle
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from conftest import SCRIPT_PYTHON
from helpers import run_cli
from thespian.actors import ActorAddress

from llmspell import LlmspellError, MessageError, Runtime, Task
from llmspell._driver import free_port, port_in_use
from llmspell._frames import Auth, AuthBuffer

pytestmark = pytest.mark.slow

MiB = 1024 * 1024


class _MakesAFile:
    """Unpickling this creates ``path``: the proof that a pickle ran."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (self.path, "w"))


@pytest.fixture(scope="module")
def local_rt() -> Iterator[Runtime]:
    rt = Runtime(mode="local", workers=1, script_python=SCRIPT_PYTHON)
    try:
        wait_engines(rt, 3)
        yield rt
    finally:
        rt.close()


def wait_engines(rt: Runtime, n: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while sum(1 for e in rt.stats()["engines"] if e["capacity"]) < n:
        assert time.monotonic() < deadline, "the engines did not register"
        time.sleep(0.05)


def processes(rt: Runtime) -> list[psutil.Process]:
    """The runtime's processes: the admin, every actor, and this (the owner)."""
    return [*rt._driver.processes(), psutil.Process()]  # type: ignore[attr-defined]


def listening_ports(procs: list[psutil.Process]) -> dict[int, psutil.Process]:
    ports: dict[int, psutil.Process] = {}
    for p in procs:
        for c in p.net_connections(kind="tcp"):
            if c.status == psutil.CONN_LISTEN:
                ports.setdefault(c.laddr.port, p)
    return ports


def send(port: int, data: bytes) -> bytes:
    """Send ``data``; what the receiver answers before it closes (or b"")."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        try:
            s.sendall(data)
            s.settimeout(5)
            return s.recv(4096)
        except OSError:  # it closed the connection on us: that is the point
            return b""


def flood(port: int, declared: int, total: int) -> None:
    """A frame declaring ``declared`` bytes, then up to ``total`` bytes of data."""
    chunk = b"x" * MiB
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        try:
            s.sendall(b"%d>" % declared)
            for _ in range(total // MiB):
                s.sendall(chunk)
        except OSError:
            pass


def runs_tasks(rt: Runtime) -> None:
    handles = [
        rt.submit(Task.lua("return 6 * 7")),
        rt.submit(Task.js("return 21 * 2")),
        rt.submit(Task.python("targets:add", args={"x": 40, "y": 2})),
    ]
    assert [rt.result(h, timeout=30) for h in handles] == [42, 42, 42]


def test_hostile_frames_to_every_port_run_nothing_and_crash_nothing(
    local_rt: Runtime, tmp_path: Path
) -> None:
    from thespian.actors import ActorAddress
    from thespian.system.transport.IPBase import TCPv4ActorAddress

    procs = processes(local_rt)
    ports = listening_ports(procs)
    assert len(ports) >= 6  # the admin, the logger, the actors, the owner's endpoints
    marker = tmp_path / "pwned"
    evil = pickle.dumps(_MakesAFile(str(marker)))
    secret = local_rt._driver.secret  # type: ignore[attr-defined]
    for port, proc in ports.items():
        address = ActorAddress(TCPv4ActorAddress("127.0.0.1", port, external=True))
        message = pickle.dumps((address, "hello"))
        wrong_mac = b"%d>" % (32 + len(message)) + os.urandom(32) + message
        attacks = [
            b"-5>xxxxx",
            os.urandom(4096),
            b">>>",
            b"12a>" + b"x" * 12,
            b"%d>" % len(evil) + evil,  # Thespian's own (unauthenticated) framing
            b"%d>" % (32 + len(evil)) + bytes(32) + evil,
            wrong_mac,
            # authenticated, but not a message: a tuple with a str address
            Auth(secret.encode()).frame(pickle.dumps(("127.0.0.1:1", "hello"))),
        ]
        for data in attacks:
            answer = send(port, data)
            assert not answer or answer.startswith(b"llmspell: frame rejected")
        rss = proc.memory_info().rss
        flood(port, 10**9, 64 * MiB)
        assert proc.memory_info().rss - rss < 8 * MiB, f"port {port} buffered the flood"
    assert not marker.exists(), "a pickle sent from outside ran"
    assert all(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in procs)
    assert listening_ports(procs).keys() == ports.keys()
    runs_tasks(local_rt)
    assert local_rt.stats()["crashes"] == 0


def test_a_client_with_the_wrong_secret_gets_one_clear_error(local_rt: Runtime) -> None:
    port = local_rt._driver.port  # type: ignore[attr-defined]
    with pytest.raises(LlmspellError, match="refused this client's secret"):
        Runtime(mode="local", address=f"127.0.0.1:{port}", secret="not the secret at all")
    runs_tasks(local_rt)


def test_a_client_with_the_right_secret_attaches(local_rt: Runtime) -> None:
    port = local_rt._driver.port  # type: ignore[attr-defined]
    secret = local_rt._driver.secret  # type: ignore[attr-defined]
    with Runtime(mode="local", address=f"127.0.0.1:{port}", secret=secret) as client:
        assert client.result(client.submit(Task.lua("return 1 + 1")), timeout=30) == 2


def test_the_secret_is_not_in_any_child_command_line_or_environment(local_rt: Runtime) -> None:
    secret = local_rt._driver.secret  # type: ignore[attr-defined]
    for p in local_rt._driver.processes():  # type: ignore[attr-defined]
        assert not any(secret in arg for arg in p.cmdline())
        assert not any(secret in value for value in p.environ().values())


@pytest.mark.parametrize(
    ("option", "value"), [("secret", "short"), ("secret", 42), ("max_frame_bytes", 10)]
)
def test_bad_transport_options_are_one_clear_error(option: str, value: object) -> None:
    with pytest.raises(MessageError) as err:
        Runtime(mode="local", **{option: value})
    assert err.value.where == option


@pytest.mark.parametrize("option", ["secret", "max_frame_bytes"])
def test_transport_options_in_embedded_mode_are_refused(option: str) -> None:
    value = "a long enough secret" if option == "secret" else 64 * MiB
    with pytest.raises(MessageError, match="mode='local'"):
        Runtime(**{option: value})


def test_a_frame_buffer_refuses_what_it_should() -> None:
    auth = Auth(b"k" * 32, max_frame=MiB)
    good = auth.frame(pickle.dumps("ACK"))
    buf = AuthBuffer(auth)
    for i in range(len(good)):  # byte by byte, as a slow sender would
        buf.addMore(good[i : i + 1])
    assert buf.completed() == ("ACK", b"")
    for bad in (b"-5>xxxxx", b"%d>" % (MiB + 33), b"9" * 20, b"31>" + b"x" * 31):
        buf = AuthBuffer(auth)
        buf.addMore(bad)
        assert buf.isDone() and buf.completed() is None and buf.bad
    tampered = bytearray(good)
    tampered[-2] ^= 1
    buf = AuthBuffer(auth)
    buf.addMore(bytes(tampered))
    assert buf.completed() is None and "MAC" in buf.bad


def test_a_served_runtime_keeps_its_secret_in_a_private_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    runtime_dir = tmp_path / "run"
    runtime_dir.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime_dir))
    monkeypatch.delenv("LLMSPELL_SECRET", raising=False)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parent))
    server = subprocess.Popen(
        [sys.executable, "-m", "llmspell.cli", "serve", "--port", str(port), "--workers", "1"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert server.stdout is not None
        assert json.loads(server.stdout.readline())["serving"] == f"127.0.0.1:{port}"
        path = runtime_dir / "llmspell" / f"secret-{port}"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        wrong = run_cli("status", "--port", str(port), env=dict(env, LLMSPELL_SECRET="x" * 32))
        assert wrong.returncode == 1
        assert "refused this client's secret" in wrong.stderr
        assert len(wrong.stderr.strip().splitlines()) == 1, wrong.stderr
        with Runtime(mode="local", address=f"127.0.0.1:{port}") as rt:  # from the file
            assert rt.result(rt.submit(Task.lua("return 6 * 7")), timeout=30) == 42
        status = run_cli("status", "--port", str(port), env=env)
        assert status.returncode == 0, status.stderr
        assert run_cli("stop", "--port", str(port), env=env).returncode == 0
        assert server.wait(30) == 0
        assert not path.exists()
        deadline = time.monotonic() + 10
        while port_in_use(port):
            assert time.monotonic() < deadline, "the served runtime still listens"
            time.sleep(0.1)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(10)


def _read_frame(sock: socket.socket, buf: AuthBuffer) -> int:
    """Read one frame into ``buf`` as Thespian's transport does (peek first,
    then ``remainingAmount`` at a time); the number of reads it took."""
    reads = 0
    while not buf.isDone():
        buf.peek(sock)
        buf.addMore(sock.recv(buf.remainingAmount()))
        reads += 1
    return reads


def test_a_peeked_frame_is_read_whole_and_nothing_beyond_it() -> None:
    auth = Auth(b"k" * 32, max_frame=MiB)
    first = auth.frame(pickle.dumps("ACK"))
    payload = (ActorAddress("somewhere"), b"y" * 300_000)  # what Thespian sends
    big = auth.frame(pickle.dumps(payload))
    a, b = socket.socketpair()
    with a, b:
        a.sendall(first + b"0" * 5)  # a next frame's first bytes right behind it
        buf = AuthBuffer(auth)
        assert _read_frame(b, buf) == 1
        assert buf.completed() == ("ACK", b"")
        assert b.recv(100) == b"0" * 5  # left where it was for the next frame
        # a frame larger than one read still arrives whole, in several reads
        sender = threading.Thread(target=a.sendall, args=(big,))
        sender.start()
        buf = AuthBuffer(auth)
        _read_frame(b, buf)
        sender.join()
        done = buf.completed()
        assert done is not None and done[0][1] == payload[1]


def test_a_peeked_header_that_lies_is_refused_as_before() -> None:
    auth = Auth(b"k" * 32, max_frame=1024)
    a, b = socket.socketpair()
    with a, b:
        a.sendall(b"%d>" % (10 * 1024) + b"z" * 64)  # above max_frame_bytes
        buf = AuthBuffer(auth)
        _read_frame(b, buf)
        assert buf.completed() is None and "max_frame_bytes" in buf.bad
        a.sendall(b"12")  # half a header: read a few bytes at a time until it is whole
        buf = AuthBuffer(auth)
        buf.peek(b)
        assert buf.remainingAmount() <= 13
