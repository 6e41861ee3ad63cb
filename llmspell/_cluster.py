"""Cluster mode, the processes' side: the leader's driver and ``llmspell join``.

A cluster is a Thespian convention (see ``llmspell.actors.cluster`` for the
placement of engines and the handling of members' deaths):

* the **leader** is a local-mode runtime whose sockets bind to ``host``
  (``Runtime(mode="cluster", host=..., port=P)``, run by ``llmspell serve
  --cluster``): its admin is the convention leader and the director also
  starts a ``ClusterManager``; it starts no engines of its own;
* a **member** (``join``) is a Thespian admin of its own on ``--host``, whose
  capabilities name the leader (``Convention Address.IPv4``) and say what it
  offers; it runs no llmspell actor until the leader places engines on it;
* a **client** (``Runtime(mode="cluster", address="HOST:P", secret=...)``)
  attaches to the leader as a local-mode client does, from any machine that
  reaches ``HOST``: its sockets bind to an address of its own (``host=``, or
  the one that routes to ``HOST``).

Every frame between them is authenticated with the cluster's one secret
(``llmspell._frames``); every socket binds to the address given, never to
all interfaces (``llmspell._loopback.allow``).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
from typing import Any

from ._driver import _LOG_DEFS, LocalDriver, _reap_forked, free_port, parse_address, port_in_use
from ._exceptions import LlmspellError

__all__ = ["ClusterDriver", "join", "local_address", "route_to"]


def local_address(host: str) -> bool:
    """``host`` is an address of this machine (a socket can bind to it)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
        return True
    except OSError:
        return False


def route_to(host: str) -> str:
    """The address of this machine that reaches ``host`` (no packet is sent)."""
    try:
        if ipaddress_is_loopback(host):
            return "127.0.0.1"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((host, 9))
            return str(s.getsockname()[0])
    except OSError:
        return "127.0.0.1"


def ipaddress_is_loopback(host: str) -> bool:
    from ._loopback import is_loopback

    return is_loopback(host)


ADMIN_HOST_CAP = "llmspell.admin_host"


class ClusterDriver(LocalDriver):
    """The leader of a cluster (``attach`` None) or a client attached to one.

    A client's sockets bind to an address of its own machine (``host=``, by
    default the one that routes to the leader), and its Thespian endpoint is
    told the leader's admin address (``ADMIN_HOST_CAP``): it can attach from any
    machine that reaches an address the leader listens on, the cluster's secret
    authenticating it. It watches the leader by the probe's process token: a
    leader gone, or started again, closes the client (``on_lost``).
    """

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        host = self.config.get("host") or "127.0.0.1"
        self.host = str(host)
        self.local = self.host  # the address of this machine its sockets bind to
        self.leader_host = ""
        self._leader_token = ""
        self._gone = threading.Event()

    def start(self, timeout: float = 30.0) -> dict[str, Any]:
        from . import _frames, _loopback

        if self.attach:
            self.leader_host = parse_address(self.attach)[0]
            self.local = str(self.config.get("host") or route_to(self.leader_host))
            if not local_address(self.local):
                raise LlmspellError(
                    f"host={self.local} is not an address of this machine (a cluster "
                    "client's sockets bind to one of its own addresses)"
                )
        elif not local_address(self.host):
            raise LlmspellError(
                f"{self.host} is not an address of this machine: the cluster leader binds there"
            )
        _loopback.install()
        _loopback.allow(self.local)
        _install_remote_admin()
        from thespian.system.transport.IPBase import thisSystem

        thisSystem.add_local_addr(self.local)
        addresses = super().start(timeout)
        if self.attach:
            assert self.secret is not None
            port = parse_address(self.attach)[1]
            self._leader_token = _frames.identify(self.leader_host, port, self.secret)[1]
            threading.Thread(
                target=self._watch_leader,
                args=(port,),
                name=f"llmspell-leader-{self.runtime_id[:8]}",
                daemon=True,
            ).start()
        return addresses

    def _check_attach_host(self, host: str) -> None:
        pass  # any address the leader listens on: the secret authenticates the client

    def _bind_host(self) -> str:
        return self.local

    def _capabilities(self) -> dict[str, Any]:
        return {ADMIN_HOST_CAP: self.leader_host} if self.attach else {}

    def _actor_config(self) -> dict[str, Any]:
        return {"cluster": True, "host": self.host}

    def _watch_leader(self, port: int) -> None:
        """A client: the leader is gone (two probes unanswered) or was started
        again (another process answers): the client closes, as when the leader
        stops (the leader's machine may be another one: no pid to watch)."""
        from . import _frames

        where = f"{self.leader_host}:{port}"
        missed = 0
        while not self._stopping.wait(0.5):
            answer, token = _frames.identify(self.leader_host, port, self.secret or "", 1.0)
            if answer == "ok" and token == self._leader_token:
                missed = 0
                continue
            missed += 1
            if answer == "ok" or missed >= 2:
                why = "was started again" if answer == "ok" else "is gone"
                self._lost(f"the cluster leader at {where} {why}")
                return

    def _lost(self, why: str) -> None:
        if not self._gone.is_set():  # once: the listener may notice it too
            self._gone.set()
            super()._lost(why)


def _install_remote_admin() -> None:
    """Let a Thespian endpoint talk to an admin on another host: with
    ``ADMIN_HOST_CAP`` in its capabilities, its admin address is that host and
    the admin port (Thespian puts the admin on this process's own address)."""
    from thespian.actors import ActorAddress
    from thespian.system.transport import TCPTransport as tcp
    from thespian.system.transport.IPBase import TCPv4ActorAddress

    cls: Any = tcp.TCPTransport
    if getattr(cls, "_llmspell_remote_admin", False):
        return
    original = cls.getAdminAddr

    def get_admin_addr(capabilities: dict[str, Any]) -> Any:
        host = capabilities.get(ADMIN_HOST_CAP)
        if host:
            return ActorAddress(TCPv4ActorAddress(host, capabilities["Admin Port"], external=True))
        return original(capabilities)

    cls.getAdminAddr = staticmethod(get_admin_addr)
    cls._llmspell_remote_admin = True


def _member_id(host: str, port: int, name: str | None) -> str:
    return name or f"{host}:{port}"


def join(
    leader: str,
    *,
    host: str | None = None,
    port: int | None = None,
    engines: list[str],
    tags: list[str],
    workers: int,
    secret: str,
    secret_from: str,
    name: str | None = None,
    exit_with_leader: bool = False,
    max_frame_bytes: int | None = None,
) -> int:
    """Run a cluster member until SIGTERM/SIGINT (or the leader's end with
    ``exit_with_leader``). Returns the process's exit status."""
    from thespian.actors import ActorSystem

    from . import _frames, _loopback, _watchdog

    lhost, lport = parse_address(leader)
    host = host or route_to(lhost)
    if not local_address(host):
        raise LlmspellError(f"--host {host} is not an address of this machine")
    if not port_in_use(lport, lhost):
        raise LlmspellError(f"no cluster leader listens at {lhost}:{lport}")
    answer, known = _frames.identify(lhost, lport, secret)  # known: the leader's admin
    if answer == "wrong":
        raise LlmspellError(
            f"the cluster leader at {lhost}:{lport} refused this member's secret (from "
            f"{secret_from}): it is not the cluster's secret"
        )
    if answer != "ok":
        raise LlmspellError(f"no llmspell cluster leader answered at {lhost}:{lport}")
    port = int(port or free_port(host))
    if port_in_use(port, host):
        raise LlmspellError(f"port {port} on {host} is already in use")
    member = _member_id(host, port, name)
    # before Thespian starts: the admin and every actor process inherit all this
    os.environ["THESPIAN_BASE_IPADDR"] = host
    _loopback.install()
    _loopback.allow(host)
    _frames.install()
    _frames.register(port, secret, int(max_frame_bytes or _frames.DEFAULT_MAX_FRAME))
    from thespian.system.transport.IPBase import thisSystem

    thisSystem.add_local_addr(host)
    caps = {
        "Admin Port": port,
        "Convention Address.IPv4": f"{lhost}:{lport}",
        "llmspell.member": member,
        "llmspell.engines": list(engines),
        "llmspell.tags": sorted(set(tags)),
        "llmspell.workers": int(workers),
        "llmspell.host": host,
        "llmspell.pid": os.getpid(),
    }
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    import psutil

    def start() -> tuple[Any, set[int]]:
        before = {c.pid for c in psutil.Process().children()}
        # every process this forks ends once this one is gone (kill -9 included)
        with _watchdog.owned_forks():
            asys = ActorSystem("multiprocTCPBase", caps, transientUnique=True, logDefs=_LOG_DEFS)
        return asys, {c.pid for c in psutil.Process().children()} - before

    asys, forked = start()
    print(
        json.dumps(
            {
                "member": member,
                "host": host,
                "port": port,
                "leader": f"{lhost}:{lport}",
                "engines": list(engines),
                "tags": sorted(set(tags)),
                "workers": workers,
                "pid": os.getpid(),
            }
        ),
        flush=True,
    )
    why = "stopped"
    missed = 0
    try:
        while not stop.wait(0.5):
            answer, leader = _frames.identify(lhost, lport, secret, timeout=1.0)
            if answer == "ok" and leader == known:
                missed = 0
                continue
            if answer == "ok":  # another admin answers there: the leader was started again
                if exit_with_leader:
                    why = "the leader it joined is gone (another one answers at its address)"
                    break
                # its engines talk to the old leader's actors: join the new one afresh
                asys.shutdown()
                _reap_forked(forked)
                asys, forked = start()
                known, missed = leader, 0
                print(json.dumps({"rejoined": f"{lhost}:{lport}"}), flush=True)
                continue
            missed += 1
            if missed >= 2 and exit_with_leader:
                why = "the leader is gone"
                break
    finally:
        asys.shutdown()
        _frames.unregister(port, secret)
        _reap_forked(forked)
    print(json.dumps({"left": f"{lhost}:{lport}", "member": member, "why": why}), flush=True)
    return 0


def member_secret(leader_port: int, secret_file: str | None) -> tuple[str, str]:
    """The cluster secret a member uses, and where it came from: ``--secret-file``,
    else ``LLMSPELL_SECRET``, else the leader's own secret file on this machine."""
    from . import _frames

    if secret_file:
        try:
            text = open(secret_file, encoding="utf-8").read().strip()
        except OSError as exc:
            raise LlmspellError(f"cannot read the secret file {secret_file}: {exc}") from None
        if not text:
            raise LlmspellError(f"the secret file {secret_file} is empty")
        return text, secret_file
    env = os.environ.get("LLMSPELL_SECRET")
    if env:
        return env, "LLMSPELL_SECRET"
    try:
        found = _frames.read_secret(leader_port)
    except (OSError, UnicodeDecodeError) as exc:
        raise LlmspellError(f"cannot use the secret file of port {leader_port}: {exc}") from None
    if found is None:
        raise LlmspellError(
            "no cluster secret: pass --secret-file PATH (a copy of the leader's "
            f"{_frames.secret_path(leader_port)}) or set LLMSPELL_SECRET"
        )
    return found, str(_frames.secret_path(leader_port))
