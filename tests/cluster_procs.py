"""Real cluster processes on one machine posing as hosts (127.0.0.1 for the
leader, 127.0.0.2 and 127.0.0.3 for members: Linux routes all of 127/8 to
loopback with no set-up). Used by tests/test_cluster.py and bench/cluster.py."""

from __future__ import annotations

import json
import os
import queue
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil

TESTS = Path(__file__).resolve().parent


def free_port(host: str) -> int:
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class Proc:
    """One llmspell process (``serve --cluster`` or ``join``) and its first JSON line."""

    def __init__(
        self,
        args: list[str],
        secret: str,
        extra_env: dict[str, str] | None = None,
        wrap: tuple[str, ...] = (),
    ):
        env = dict(os.environ, LLMSPELL_SECRET=secret)
        env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
        env.update(extra_env or {})
        self.args = args
        self.wrap = wrap  # a command it runs under (unshare: a host of its own pids)
        self.popen = subprocess.Popen(
            [*wrap, sys.executable, "-m", "llmspell", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
        )
        self.pid = self.popen.pid
        self.lines: queue.SimpleQueue[str] = queue.SimpleQueue()
        self.err: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_err, daemon=True).start()
        self.tree: dict[int, psutil.Process] = {}
        self.listen: tuple[str, int] | None = None  # its admin's address, once known

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.put(line)

    def _read_err(self) -> None:
        assert self.popen.stderr is not None
        for line in self.popen.stderr:
            self.err.append(line)

    def first(self, timeout: float = 30.0) -> dict[str, Any]:
        try:
            return dict(json.loads(self.lines.get(timeout=timeout)))
        except queue.Empty:
            raise AssertionError(
                f"llmspell {' '.join(self.args)} said nothing in {timeout} s; stderr: "
                + "".join(self.err)[-2000:]
            ) from None

    def admin_pid(self) -> int:
        """The pid of its Thespian admin (a daemon: not a child of this process)."""
        if self.listen is None:
            return 0
        host, port = self.listen
        for proc in psutil.process_iter():
            try:
                for c in proc.net_connections(kind="tcp"):
                    if c.status == psutil.CONN_LISTEN and tuple(c.laddr)[:2] == (host, port):
                        return int(proc.pid)
            except psutil.Error:
                continue
        return 0

    def note_tree(self) -> list[psutil.Process]:
        """Every process of this one's, its admin's and theirs (remembered: an
        orphan stays known)."""
        roots = [self.pid]
        admin = self.tree.get(getattr(self, "_admin", 0))
        if self.listen is not None and (admin is None or not _running(admin)):
            self._admin = self.admin_pid()  # (a member that re-joined has a new admin)
        if getattr(self, "_admin", 0):
            roots.append(self._admin)
        for pid in roots:
            try:
                me = psutil.Process(pid)
                for p in [me, *me.children(recursive=True)]:
                    self.tree.setdefault(p.pid, p)
            except psutil.Error:
                pass
        return [p for p in self.tree.values() if _running(p)]

    def kill9(self) -> None:
        self.note_tree()
        os.kill(self.pid, signal.SIGKILL)
        self.popen.wait(10)

    def stop(self, timeout: float = 15.0) -> None:
        self.note_tree()
        if self.popen.poll() is None:
            if self.wrap:  # unshare passes no signal on: its child is llmspell
                for child in psutil.Process(self.pid).children():
                    child.send_signal(signal.SIGTERM)
            else:
                self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        _, alive = psutil.wait_procs([p for p in self.tree.values() if _running(p)], timeout=5)
        for p in alive:
            try:
                p.kill()
            except psutil.Error:
                pass


def _running(p: psutil.Process) -> bool:
    try:
        return bool(p.is_running()) and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


class Cluster:
    """A leader on 127.0.0.1 and the members a test adds."""

    def __init__(self, journal: str | None = None) -> None:
        self.secret = secrets.token_hex(32)
        self.port = free_port("127.0.0.1")
        self.address = f"127.0.0.1:{self.port}"
        self.journal = journal
        self.members: list[Proc] = []
        self.leader = self._serve()

    def _serve(self) -> Proc:
        args = ["serve", "--cluster", "--port", str(self.port), "--host", "127.0.0.1"]
        leader = Proc([*args, *(["--journal", self.journal] if self.journal else [])], self.secret)
        leader.first()
        leader.listen = ("127.0.0.1", self.port)
        leader.note_tree()
        return leader

    def restart_leader(self) -> None:
        """A new leader at the same address (the old one stopped or killed)."""
        old = self.leader
        self.leader = self._serve()
        self.leader.tree.update(old.tree)

    def join(
        self,
        host: str,
        engines: str = "python,lua,js",
        tags: tuple[str, ...] = (),
        workers: int = 1,
        secret: str | None = None,
        wait: bool = True,
        extra: tuple[str, ...] = (),
        pid_namespace: bool = False,
    ) -> Proc:
        args = ["join", self.address, "--host", host, "--engines", engines]
        args += ["--workers", str(workers), *extra]
        for t in tags:
            args += ["--tag", t]
        # in a pid namespace of its own its pids mean nothing here, as on another host
        wrap = ("unshare", "--pid", "--fork", "--mount-proc", "--kill-child")
        p = Proc(args, secret or self.secret, wrap=wrap if pid_namespace else ())
        self.members.append(p)
        if wait:
            p.info = p.first()  # type: ignore[attr-defined]
            p.listen = (host, int(p.info["port"]))  # type: ignore[attr-defined]
            p.note_tree()
        return p

    def wait_engines(
        self, rt: Any, host: str, n: int, timeout: float = 30.0
    ) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            found = [e for e in rt.stats()["engines"] if e.get("host") == host]
            if len(found) >= n or time.monotonic() > deadline:
                return found
            time.sleep(0.1)

    def processes(self) -> list[psutil.Process]:
        out: list[psutil.Process] = []
        for p in [self.leader, *self.members]:
            out.extend(p.note_tree())
        return out

    def stop(self) -> None:
        for p in reversed(self.members):
            p.stop()
        self.leader.stop()


def member_of(pid: int, member: Proc) -> bool:
    """``pid`` is a process of ``member`` (its admin's child)."""
    return pid in {p.pid for p in member.note_tree()} and pid != member.pid


def ns_pid(p: psutil.Process) -> int:
    """The pid of ``p`` in its own pid namespace (0 outside of one)."""
    try:
        with open(f"/proc/{p.pid}/status") as f:
            for line in f:
                if line.startswith("NSpid:"):
                    pids = line.split()[1:]
                    return int(pids[-1]) if len(pids) > 1 else 0
    except OSError:
        pass
    return 0


def where(seconds: float = 0.0) -> int:
    """A task target: the pid of the engine process that ran it."""
    time.sleep(seconds)
    return os.getpid()
