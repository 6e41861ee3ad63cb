"""Lanes: a direct socket between the scheduler and each process that talks
with it on every task (engines, the process that owns the runtime), local and
cluster mode, on one host.

A message through Thespian's TCP transport costs each side a turn of its
event loop for the frame and one for the ACK, a pickle, and the per-send
bookkeeping of up to 20 sends in flight: ~250-650 us a hop on the project's
machine, four hops a task. A lane is a Unix stream socket in Linux's abstract
namespace (no file to leave behind) that carries the same msgpack bytes in
``len(4 bytes, big-endian) + body`` frames, written without waiting for an
answer and read where Thespian's loop watches it (``ThespianWatch``), so a hop
costs a ``send`` and a wake-up.

Setting one up (``C`` the client: an engine or the owner; ``S`` the scheduler):

1. ``C -> S`` over Thespian: ``LaneAsk``.
2. ``S -> C`` over Thespian: ``LaneOffer(name, token)``; ``S`` listens on
   ``name`` (made once per scheduler process) and remembers the token for ``C``.
3. ``C`` connects, writes the token as its first frame, sends ``LaneMark(token)``
   over Thespian, and from then on sends everything for ``S`` through the lane.
4. ``S`` accepts only a peer of its own user (``SO_PEERCRED``) whose first frame
   is a token it offered (once); it sends ``LaneMark(token)`` over Thespian and
   from then on sends everything for ``C`` through the lane.

Each side holds the frames that come through a lane until the peer's
``LaneMark`` has come through Thespian: what the peer sent over Thespian before
it switched is handled first, so the order of everything one side sends the
other is kept across the switch. A lane that breaks (its peer died) is closed
and what follows goes through Thespian again (to a dead peer: lost, as
before); a frame over ``max_frame_bytes`` or a bad first frame closes the
connection with a warning that names it. Where a lane cannot be made (another
host in cluster mode, no abstract sockets), everything stays on Thespian.

A lane's socket never blocks an actor: what the kernel does not take at once
waits in the lane's outbox, in order, and is retried on the actor's next turn
(``pending``; the actor arms a short wake-up while anything waits).
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import struct
import sys
from collections import deque
from collections.abc import Callable
from typing import Any

__all__ = ["FrameReader", "Lane", "Lanes", "available", "connect", "frame", "lane_key"]

log = logging.getLogger("llmspell")

_LEN = struct.Struct(">I")
#: accepted connections that have not written their token yet: beyond this many,
#: the oldest is dropped (a stranger holding connections open costs nothing more)
_MAX_UNPROVEN = 16
_SNDBUF = 4 << 20  # room for big dispatch batches without an outbox
_TOKEN_BYTES = 16


def available() -> bool:
    """Lanes need Linux's abstract Unix socket namespace."""
    return sys.platform.startswith("linux") and hasattr(socket, "AF_UNIX")


def lane_key(address: Any) -> str:
    """The key of an actor's address for its lane: host *and* port. (Thespian's
    ``str`` of a TCP address leaves out a host the process counts as its own, so
    in a cluster member bound to 127.0.0.2, 127.0.0.1:5000 and 127.0.0.2:5000
    print alike.)"""
    sockname = getattr(getattr(address, "addressDetails", None), "sockname", None)
    if isinstance(sockname, tuple) and len(sockname) >= 2:
        return f"{sockname[0]}:{sockname[1]}"
    return str(address)


def frame(data: bytes) -> bytes:
    """One frame: the body's length (4 bytes, big-endian), then the body."""
    return _LEN.pack(len(data)) + data


class LaneError(Exception):
    """A lane's peer broke the framing (too big a frame, a bad first frame)."""


class FrameReader:
    """Cuts a byte stream into frames; refuses a frame over ``max_bytes``."""

    __slots__ = ("buf", "max_bytes")

    def __init__(self, max_bytes: int) -> None:
        self.buf = bytearray()
        self.max_bytes = max_bytes

    def feed(self, data: bytes) -> list[bytes]:
        buf = self.buf
        buf += data
        out: list[bytes] = []
        at, size = 0, len(buf)
        while size - at >= 4:
            n = _LEN.unpack_from(buf, at)[0]
            if n > self.max_bytes:
                raise LaneError(
                    f"a frame of {n} bytes (more than max_frame_bytes={self.max_bytes})"
                )
            if size - at - 4 < n:
                break
            out.append(bytes(buf[at + 4 : at + 4 + n]))
            at += 4 + n
        if at:
            del buf[:at]
        return out


def _peer_uid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", creds)[1])


def connect(name: bytes, timeout: float = 2.0) -> socket.socket:
    """A connected lane socket to ``name`` (an abstract socket name)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(name)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SNDBUF)
        if _peer_uid(sock) != os.getuid():
            raise LaneError("the lane's listener runs as another user")
    except BaseException:
        sock.close()
        raise
    return sock


class Lane:
    """One end of a lane inside an actor: a non-blocking socket to ``peer``."""

    __slots__ = ("fd", "held", "key", "marked", "outbox", "peer", "reader", "sock", "token")

    def __init__(
        self, sock: socket.socket, peer: Any, key: str, token: bytes, max_bytes: int
    ) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.fd = sock.fileno()
        self.peer = peer  # the Thespian address its frames come from
        self.key = key  # addr_key(peer)
        self.token = token
        self.marked = False  # the peer's LaneMark came: its frames may be handled
        self.held: list[bytes] = []  # frames that came before the peer's mark
        self.outbox: deque[bytes] = deque()  # bytes the kernel did not take yet
        self.reader = FrameReader(max_bytes)

    def write(self, data: bytes) -> bool:
        """Queue ``data`` as one frame; False if the lane is broken (closed by then)."""
        if self.outbox:
            self.outbox.append(frame(data))
            return True
        buf = frame(data)
        try:
            n = self.sock.send(buf)
        except BlockingIOError:
            n = 0
        except OSError:
            return False
        if n < len(buf):
            self.outbox.append(buf[n:])
        return True

    def drain(self) -> bool:
        """Write what waits; False if the lane broke meanwhile."""
        out = self.outbox
        while out:
            head = out[0]
            try:
                n = self.sock.send(head)
            except BlockingIOError:
                return True
            except OSError:
                return False
            if n < len(head):
                out[0] = head[n:]
                return True
            out.popleft()
        return True

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class _Unproven:
    """An accepted connection whose token has not come yet."""

    __slots__ = ("buf", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()


class Lanes:
    """An actor's lanes: the ones it asked for (engines) and, for the scheduler,
    the ones it offers. ``deliver(data, peer)`` handles a frame's message as if
    Thespian had brought it from ``peer``; ``send_thespian(peer, data)`` sends
    around the lanes (the marks must)."""

    def __init__(
        self,
        role: str,
        max_bytes: int,
        deliver: Callable[[bytes, Any], None],
        send_thespian: Callable[[Any, bytes], None],
        key_of: Callable[[Any], str],
    ) -> None:
        self.role = role
        self.max_bytes = max_bytes
        self.deliver = deliver
        self.send_thespian = send_thespian
        self.key_of = key_of
        self.out: dict[str, Lane] = {}  # addr_key(peer) -> lane, once this side switched
        self.by_fd: dict[int, Lane] = {}
        self.by_token: dict[bytes, Lane] = {}
        # the scheduler's side: its listener, the tokens it offered, connections unproven
        self.listener: socket.socket | None = None
        self.name = b""
        self.offered: dict[bytes, Any] = {}  # token -> the peer it was offered to
        self.unproven: dict[int, _Unproven] = {}
        self.early: set[bytes] = set()  # marks that came before their lane's token
        self.pending = False  # some lane's outbox holds bytes

    # -- every side ---------------------------------------------------------

    def fds(self) -> list[int]:
        fds = list(self.by_fd)
        fds.extend(self.unproven)
        if self.listener is not None:
            fds.append(self.listener.fileno())
        return fds

    def write(self, key: str, data: bytes) -> bool:
        """Send ``data`` through the lane to the peer keyed ``key``; False when
        there is none (or it just broke): send it through Thespian then. A
        message over ``max_frame_bytes`` is left to Thespian too, whose frame
        check refuses it at once and returns it to the sender as undeliverable
        (``PoisonMessage``): the sender's handling of that (an engine splits its
        results, the scheduler fails the dispatch saying why) is the same in
        both ways, and the lane, which never carried it, stays as it was."""
        lane = self.out.get(key)
        if lane is None or len(data) > self.max_bytes:
            return False
        if lane.write(data):
            if lane.outbox:
                self.pending = True
            return True
        self._drop(lane, "its peer is gone")
        return False

    def drain(self) -> None:
        pending = False
        for lane in list(self.out.values()):
            if lane.outbox:
                if not lane.drain():
                    self._drop(lane, "its peer is gone")
                elif lane.outbox:
                    pending = True
        self.pending = pending

    def on_ready(self, ready: list[int]) -> list[int]:
        """Handle the lane descriptors among ``ready``; the others are returned."""
        rest = []
        for fd in ready:
            lane = self.by_fd.get(fd)
            if lane is not None:
                self._read(lane)
            elif fd in self.unproven:
                self._prove(fd)
            elif self.listener is not None and fd == self.listener.fileno():
                self._accept()
            else:
                rest.append(fd)
        return rest

    def on_mark(self, token: bytes) -> None:
        """The peer's ``LaneMark``: everything it sent through Thespian before
        switching has been handled; its lane's frames may be now."""
        lane = self.by_token.get(token)
        if lane is None:  # it overtook the lane's connection: kept for it
            if token in self.offered and len(self.early) < 4096:
                self.early.add(token)
            return
        if lane.marked:
            return
        lane.marked = True
        held, lane.held = lane.held, []
        for data in held:
            self.deliver(data, lane.peer)

    def close(self, drain_for: float = 0.0) -> None:
        """Close every lane, after writing what waits in their outboxes for up to
        ``drain_for`` seconds each (the peer reads a lane to its end)."""
        for lane in list(self.by_fd.values()):
            if drain_for > 0 and lane.outbox:
                try:
                    lane.sock.settimeout(drain_for)
                    lane.sock.sendall(b"".join(lane.outbox))
                except OSError as exc:
                    log.warning("%s: a lane closed with bytes unsent (%s)", self.role, exc)
                lane.outbox.clear()
            lane.close()
        for u in self.unproven.values():
            u.sock.close()
        if self.listener is not None:
            self.listener.close()
        self.out.clear()
        self.by_fd.clear()
        self.by_token.clear()
        self.unproven.clear()
        self.offered.clear()
        self.early.clear()
        self.listener = None

    def _read(self, lane: Lane) -> None:
        chunks = []
        broken = False
        while True:
            try:
                data = lane.sock.recv(262144)
            except BlockingIOError:
                break
            except OSError:
                broken = True
                break
            if not data:
                broken = True
                break
            chunks.append(data)
        if chunks:
            try:
                frames = lane.reader.feed(b"".join(chunks))
            except LaneError as exc:
                log.warning("%s closed its lane with %s: %s", self.role, lane.peer, exc)
                self._drop(lane, str(exc))
                return
            if lane.marked:
                for data in frames:
                    self.deliver(data, lane.peer)
            else:
                lane.held.extend(frames)
        if broken:
            self._drop(lane, "its peer closed it")

    def _drop(self, lane: Lane, why: str) -> None:
        log.debug("%s: the lane with %s closed (%s)", self.role, lane.peer, why)
        lane.close()
        if self.out.get(lane.key) is lane:
            del self.out[lane.key]
        self.by_fd.pop(lane.fd, None)
        self.by_token.pop(lane.token, None)
        # frames it held before the peer's mark are handled as they came (the
        # peer sent them; only their order against its Thespian sends is unknown)
        held, lane.held = lane.held, []
        for data in held:
            self.deliver(data, lane.peer)

    # -- the side that asked (an engine) ---------------------------------------

    def take_offer(self, peer: Any, name: bytes, token: bytes) -> bool:
        """``LaneOffer`` from ``peer``: connect, prove, mark, switch. False (and
        nothing changed) when the lane cannot be made: stay on Thespian."""
        try:
            sock = connect(name)
            sock.sendall(frame(token))
        except (OSError, LaneError) as exc:
            log.info("%s stays on Thespian with %s: no lane (%s)", self.role, peer, exc)
            return False
        from .messages import encode
        from .messages.types import LaneMark

        lane = Lane(sock, peer, self.key_of(peer), token, self.max_bytes)
        self.by_fd[lane.fd] = lane
        self.by_token[token] = lane
        self.send_thespian(peer, encode(LaneMark(token)))
        self.out[lane.key] = lane
        return True

    # -- the side that offers (the scheduler) ------------------------------------

    def offer(self, peer: Any) -> tuple[bytes, bytes] | None:
        """A ``(name, token)`` for ``peer`` to connect with, or None."""
        if self.listener is None:
            try:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                name = b"\0llmspell-lane-" + secrets.token_hex(12).encode()
                sock.bind(name)
                sock.listen(64)
                sock.setblocking(False)
            except OSError as exc:
                log.info("%s offers no lanes: %s", self.role, exc)
                return None
            self.listener, self.name = sock, name
        token = secrets.token_bytes(_TOKEN_BYTES)
        self.offered[token] = peer
        if len(self.offered) > 4096:  # offers never taken (peers gone): the oldest go
            for old in list(self.offered)[:1024]:
                del self.offered[old]
        return self.name, token

    def _accept(self) -> None:
        assert self.listener is not None
        while True:
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("%s: accepting a lane failed: %s", self.role, exc)
                return
            try:
                uid = _peer_uid(sock)
            except OSError:
                uid = -1
            if uid != os.getuid():
                log.warning("%s refused a lane from another user (uid %d)", self.role, uid)
                sock.close()
                continue
            sock.setblocking(False)
            self.unproven[sock.fileno()] = _Unproven(sock)
            while len(self.unproven) > _MAX_UNPROVEN:
                fd = next(iter(self.unproven))
                log.warning("%s dropped a lane connection that never proved itself", self.role)
                self.unproven.pop(fd).sock.close()

    def _prove(self, fd: int) -> None:
        u = self.unproven[fd]
        try:
            data = u.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            del self.unproven[fd]
            u.sock.close()
            return
        buf = u.buf
        buf += data
        if len(buf) >= 4 and _LEN.unpack_from(buf)[0] != _TOKEN_BYTES:
            bad = "its first frame is not a token"
        elif len(buf) < 4 + _TOKEN_BYTES:
            return  # the token's frame is not whole yet
        else:
            bad = ""
        del self.unproven[fd]
        token = bytes(buf[4 : 4 + _TOKEN_BYTES])
        peer = self.offered.pop(token, None) if not bad else None
        if peer is None:
            log.warning(
                "%s refused a lane connection: %s",
                self.role,
                bad or "its token is not one this scheduler offered",
            )
            u.sock.close()
            return
        u.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SNDBUF)
        lane = Lane(u.sock, peer, self.key_of(peer), token, self.max_bytes)
        self.by_fd[lane.fd] = lane
        self.by_token[token] = lane
        from .messages import encode
        from .messages.types import LaneMark

        old = self.out.get(lane.key)
        if old is not None:
            self._drop(old, "its peer made a new one")
        self.send_thespian(peer, encode(LaneMark(token)))
        self.out[lane.key] = lane
        try:  # frames that came in the same read as the token
            frames = lane.reader.feed(bytes(buf[4 + _TOKEN_BYTES :]))
        except LaneError as exc:
            log.warning("%s closed its lane with %s: %s", self.role, peer, exc)
            self._drop(lane, str(exc))
            return
        lane.held.extend(frames)
        if token in self.early:  # its mark came through Thespian first
            self.early.discard(token)
            self.on_mark(token)
