"""Authenticated, bounded frames for Thespian's TCP transport (local mode).

Thespian 4.0.1 frames a message as ``b"<len>>" + pickle`` and unpickles it
as soon as it has arrived, trusting the length it was told: anyone who can
connect to a port of a runtime could crash the process (a negative length
reaches ``socket.recv``), make it buffer without end (a huge length) or run
code in it (a crafted pickle). ``install()`` changes Thespian's TCP transport
so that, for a runtime that registered a secret (``register``):

* every frame it sends is ``b"<len>>" + HMAC-SHA256(secret, payload) +
  payload`` -- Thespian's ACK frames too;
* a frame it receives is checked before anything is unpickled: its length
  header must be digits, at most ``max_frame_bytes`` (+ the MAC), and its MAC
  must match (``hmac.compare_digest``); the unpickled payload must then be
  what Thespian sends (an ``(ActorAddress, message)`` pair or an ACK). Any
  other frame is dropped, ``REJECT`` is sent back and the connection is
  closed; the process goes on serving.

Which secret a transport uses is decided by the admin port of the runtime it
belongs to (every Thespian transport knows its admin's address), so several
runtimes in one process each keep their own secret. Actor processes are
forked: they inherit the patch and the secret; the first transport of a
forked runtime process forgets every other runtime's secret. The secret never
travels in a message, a command line or the environment of a child.

``install()`` also lifts Thespian's limits on an actor's queue of messages
waiting to be sent (``asyncTransportBase``: at 950 queued it stops reading and
runs its transport "transmit-only" until 780 are left; above 1,050 it drops
new messages). That drain runs nested inside the actor's own transport loop:
it takes timer wake-ups due meanwhile and discards them, and leaves the outer
loop waiting on its own deadline, so later wake-ups of that actor never come.
Under CPU load a scheduler with a thousand tasks to re-run after an engine's
death reached that queue and lost its retry wake-ups: the tasks stayed
``pending`` for good. A message dropped at 1,050 is lost as silently. In
llmspell's processes nothing is dropped and nothing drains: a queue that
grows costs memory, which the runtime's batching keeps small.

Two changes make a hop cheaper (issue 15; bench/hops.py shows where a round
trip's time goes): a frame is read whole in one read, its length header peeked
first (``MSG_PEEK``), where Thespian read a header and then the rest, each on a
turn of its loop (messages and ACKs alike); and each turn's selector is a poll
one, not an epoll one made and closed for one wait.

A frame whose payload starts with ``PROBE`` is not a message: a runtime that
verifies it answers ``PROBE_OK`` + the nonce + ``@`` + a token of its process,
MAC'd, so a client learns at once whether it holds the right secret (``probe``)
and a cluster member whether the leader it joined was started again
(``identify``).
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import logging
import os
import pickle
import secrets
import selectors
import socket
import stat
import threading
import time
import types
from pathlib import Path
from typing import Any

from .messages.config import DEFAULTS

__all__ = [
    "DEFAULT_MAX_FRAME",
    "Auth",
    "AuthBuffer",
    "identify",
    "install",
    "instance",
    "new_secret",
    "probe",
    "read_secret",
    "register",
    "remove_secret_file",
    "secret_bytes",
    "secret_path",
    "write_secret_file",
]

log = logging.getLogger("llmspell")

MAC_SIZE = 32
DEFAULT_MAX_FRAME = DEFAULTS.max_frame_bytes
_HEADER_MAX = 12  # digits of a length: 10**12 bytes is beyond any max_frame_bytes
PROBE = b"llmspell.probe:"
PROBE_OK = b"llmspell.probe-ok:"
REJECT = b"llmspell: frame rejected\n"

_ACK = "ACK"
_ACK_ERR = "ACK+DATAERR"


class Auth:
    """One runtime's secret and frame bound."""

    __slots__ = ("ack", "key", "max_frame")

    def __init__(self, key: bytes, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.key = key
        self.max_frame = max_frame
        self.ack = self.frame(pickle.dumps(_ACK))

    def mac(self, payload: bytes) -> bytes:
        return hmac.new(self.key, payload, hashlib.sha256).digest()

    def frame(self, payload: bytes) -> bytes:
        return b"%d>" % (MAC_SIZE + len(payload)) + self.mac(payload) + payload


# admin port -> the secret of the runtime whose admin listens there
_keys: dict[int, Auth] = {}
_keys_lock = threading.Lock()
_installed = False


def new_secret() -> str:
    """A fresh random secret (256 bits, as hex)."""
    return secrets.token_bytes(32).hex()


def secret_bytes(secret: str | bytes) -> bytes:
    return secret if isinstance(secret, bytes) else secret.encode("utf-8")


def register(port: int, secret: str | bytes, max_frame: int = DEFAULT_MAX_FRAME) -> None:
    """Frames of the runtime whose admin listens on ``port`` use ``secret``
    (in this process and every process forked from it from now on)."""
    with _keys_lock:
        _keys[int(port)] = Auth(secret_bytes(secret), int(max_frame))


def unregister(port: int, secret: str | bytes) -> None:
    with _keys_lock:
        auth = _keys.get(int(port))
        if auth is not None and hmac.compare_digest(auth.key, secret_bytes(secret)):
            del _keys[int(port)]


def registered(port: int) -> bytes | None:
    auth = _keys.get(int(port))
    return auth.key if auth is not None else None


# -- receiving ------------------------------------------------------------------------


class AuthBuffer:
    """Thespian's ``ReceiveBuffer`` interface for one authenticated frame.
    Never raises: a bad frame sets ``bad`` (why) and reads as done but empty."""

    __slots__ = ("_body", "_done", "_head", "_size", "_want", "auth", "bad", "probe")

    def __init__(self, auth: Auth) -> None:
        self.auth = auth
        self._head = b""
        self._size = -1
        self._want = 0  # the whole frame's length, header included, once peeked (``peek``)
        self._body = bytearray()
        self._done: tuple[Any, bytes] | None = None
        self.bad = ""
        self.probe: bytes | None = None

    def _fail(self, why: str) -> None:
        self.bad = why
        self._body = bytearray()

    def addMore(self, buf: Any) -> None:  # Thespian names it
        if self.bad or not buf:
            return
        if not isinstance(buf, (bytes, bytearray)):
            self._fail("data that is not bytes")
            return
        if self._size < 0:
            mark = buf.find(b">")
            if mark < 0:
                self._head += buf
                if len(self._head) > _HEADER_MAX:
                    self._fail("no length header")
                return
            head = self._head + buf[:mark]
            if not head or len(head) > _HEADER_MAX or not head.isdigit():
                self._fail(f"a malformed length header {head[:_HEADER_MAX]!r}")
                return
            size = int(head)
            if size < MAC_SIZE:
                self._fail("a frame too short to carry a MAC")
                return
            if size - MAC_SIZE > self.auth.max_frame:
                self._fail(
                    f"a frame declaring {size - MAC_SIZE} bytes, above max_frame_bytes "
                    f"({self.auth.max_frame})"
                )
                return
            self._size = size
            buf = buf[mark + 1 :]
        room = self._size - len(self._body)
        self._body += buf[:room]  # bytes beyond the frame: Thespian never sends any

    def is_empty(self) -> bool:
        return self._size < 0 and not self._head and not self.bad

    def peek(self, sock: Any) -> None:
        """Before the first read of a frame: look at its length header without
        taking it (``MSG_PEEK``), so that the read takes the whole frame at once.
        Without this a frame took two reads, the header first, each on a turn of
        Thespian's loop of its own (~0.1 ms a turn: most of a hop's time).
        Nothing beyond the frame is read: a peer's next frame stays where it is."""
        if self._size >= 0 or self._head or self._want or self.bad:
            return
        try:
            seen = sock.recv(_HEADER_MAX + 1, socket.MSG_PEEK)
        except (OSError, ValueError):
            return  # the read itself finds out what is wrong
        mark = seen.find(b">")
        if mark <= 0 or not seen[:mark].isdigit():
            return  # not (yet) a header: read as before, a few bytes at a time
        size = int(seen[:mark])
        if MAC_SIZE <= size <= self.auth.max_frame + MAC_SIZE:
            self._want = mark + 1 + size

    def remainingAmount(self) -> int:
        if self._size < 0:
            if self._want:
                return self._want - len(self._head)
            return max(1, _HEADER_MAX + 1 - len(self._head))
        return max(1, self._size - len(self._body))

    def isDone(self) -> bool:
        return bool(self.bad) or (self._size >= 0 and len(self._body) == self._size)

    def removeExtra(self) -> None:
        pass

    def completed(self) -> tuple[Any, bytes] | None:
        """``(message, b"")`` once a whole authenticated frame is here, else None."""
        if self._done is not None:
            return self._done
        if self.bad or not self.isDone() or self.probe is not None:
            return None
        body = bytes(self._body)
        mac, payload = body[:MAC_SIZE], body[MAC_SIZE:]
        if not hmac.compare_digest(mac, self.auth.mac(payload)):
            self._fail("a frame whose MAC does not match (no secret or the wrong one)")
            return None
        if payload.startswith(PROBE):
            self.probe = payload[len(PROBE) :][:64]
            return None
        try:
            obj = pickle.loads(payload)  # authenticated above
        except Exception as exc:
            self._fail(f"an authenticated frame that does not unpickle ({type(exc).__name__})")
            return None
        if not _expected(obj):
            self._fail(f"an authenticated frame holding {type(obj).__name__}, not a message")
            return None
        self._done = (obj, b"")
        return self._done


def _expected(obj: Any) -> bool:
    from thespian.actors import ActorAddress

    if isinstance(obj, str):
        return obj in (_ACK, _ACK_ERR)
    return type(obj) is tuple and len(obj) == 2 and isinstance(obj[0], ActorAddress)


_last_warning = [0.0, 0]  # time of the last warning, frames dropped since


def _dropped(why: str, peer: Any) -> None:
    """Log a dropped frame: at most one warning every 5 s per process."""
    now = time.monotonic()
    _last_warning[1] += 1
    if now - _last_warning[0] < 5.0:
        return
    n = _last_warning[1]
    _last_warning[:] = [now, 0]
    more = f" ({n - 1} more dropped since the last warning)" if n > 1 else ""
    log.warning("llmspell transport (pid %d): dropped %s from %s%s", os.getpid(), why, peer, more)


def _send_quietly(sock: Any, data: bytes) -> None:
    try:
        sock.send(data)
    except Exception:  # the peer is gone or its window is full: nothing to tell
        pass


def _admin_port(address: Any) -> int | None:
    try:
        return int(address.addressDetails.sockname[1])
    except Exception:
        return None


_NO_LIMIT = 1 << 62  # Thespian's transmit queue limits, lifted (see the docstring)


def install() -> None:
    """Patch Thespian's ``TCPTransport`` once per process (idempotent)."""
    global _installed
    if _installed:
        return
    from thespian.system.transport import ReceiveEnvelope
    from thespian.system.transport import TCPTransport as tcp
    from thespian.system.transport import asyncTransportBase as queues

    # read at each send (module globals): see the module's docstring
    queues.MAX_QUEUED_TRANSMITS = _NO_LIMIT
    queues.QUEUE_TRANSMIT_UNBLOCK_THRESHOLD = _NO_LIMIT
    queues.DROP_TRANSMITS_LEVEL = _NO_LIMIT

    # Thespian makes a selector on every turn of its loop: an epoll one is three
    # system calls more than a poll one (create, one per fd registered, close)
    # for the one wait it is used for
    tcp.selectors = types.SimpleNamespace(
        DefaultSelector=_PollSelector,
        EVENT_READ=selectors.EVENT_READ,
        EVENT_WRITE=selectors.EVENT_WRITE,
    )

    cls = tcp.TCPTransport
    original_init = cls.__init__
    original_serializer = cls.serializer
    original_read = cls._handleReadableIncoming
    original_added = cls._addedDataToIncoming
    original_xmit3 = cls._next_XMIT_3
    original_ack = cls._check_XMIT_4_done
    original_xmit4 = cls._next_XMIT_4

    def init(self: Any, init_type: Any, *args: Any) -> None:
        original_init(self, init_type, *args)
        port = _admin_port(getattr(self, "_adminAddr", None))
        with _keys_lock:
            auth = _keys.get(port) if port is not None else None
            if auth is not None and isinstance(init_type, tcp.TCPEndpoint):
                # a process of this runtime alone (the admin, an actor, the logger)
                _keys.clear()
                _keys[port] = auth  # type: ignore[index]
        self._llmspell_auth = auth

    def serializer(self: Any, intent: Any) -> bytes:
        auth: Auth | None = getattr(self, "_llmspell_auth", None)
        if auth is None:
            return original_serializer(self, intent)  # type: ignore[no-any-return]
        payload = pickle.dumps((self.myAddress, intent.message))
        if len(payload) > auth.max_frame:
            raise ValueError(
                f"a message of {len(payload)} bytes is larger than max_frame_bytes "
                f"({auth.max_frame}); it was not sent"
            )
        return auth.frame(payload)

    def read(self: Any, inc: Any, has_exclusive_flag: bool = False) -> Any:
        auth = getattr(self, "_llmspell_auth", None)
        if auth is not None:
            if not isinstance(inc._rData, AuthBuffer):
                inc._rData = AuthBuffer(auth)
            inc._rData.peek(inc.socket)
        return original_read(self, inc, has_exclusive_flag=has_exclusive_flag)

    def added(
        self: Any, inc: Any, skipFinish: bool = False, has_exclusive_flag: bool = False
    ) -> Any:
        auth: Auth | None = getattr(self, "_llmspell_auth", None)
        if auth is None:
            return original_added(
                self, inc, skipFinish=skipFinish, has_exclusive_flag=has_exclusive_flag
            )
        buf = inc._rData
        if not isinstance(buf, AuthBuffer):  # never expected: refuse rather than trust
            buf = AuthBuffer(auth)
            buf._fail("a frame read outside llmspell's buffers")
        elif not buf.isDone():
            return inc
        done = buf.completed()
        if done is not None and isinstance(done[0], str):
            buf._fail("an ACK where a message was expected")
            done = None
        if done is None:
            if buf.probe is not None:
                _send_quietly(inc.socket, auth.frame(PROBE_OK + buf.probe + b"@" + instance()))
            else:
                _dropped(buf.bad or "an incomplete frame", _peer(inc))
                _send_quietly(inc.socket, REJECT)
            inc.close()
            return None
        rdata = done[0]
        _send_quietly(inc.socket, auth.ack)
        inc.fromAddress = rdata[0]
        envelope = ReceiveEnvelope(*rdata)
        self._processReceivedEnvelope(envelope, has_exclusive_flag=has_exclusive_flag)
        if not skipFinish:
            self._finishIncoming(inc, envelope.sender)
        return None

    def xmit3(self: Any, intent: Any) -> Any:
        result = original_xmit3(self, intent)
        auth = getattr(self, "_llmspell_auth", None)
        if auth is not None and not isinstance(getattr(intent, "ackbuf", None), AuthBuffer):
            intent.ackbuf = AuthBuffer(auth)
        return result

    def xmit4(self: Any, intent: Any) -> Any:
        # the ACK's read: the whole ACK frame at once, as for a message (``read``)
        buf = getattr(intent, "ackbuf", None)
        if isinstance(buf, AuthBuffer) and getattr(intent, "socket", None) is not None:
            buf.peek(intent.socket)
        return original_xmit4(self, intent)

    def ack(self: Any, intent: Any, rcv: Any) -> Any:
        auth = getattr(self, "_llmspell_auth", None)
        if auth is not None and not isinstance(getattr(intent, "ackbuf", None), AuthBuffer):
            intent.ackbuf = AuthBuffer(auth)  # Thespian made a fresh one for the next frame
        return original_ack(self, intent, rcv)

    cls.__init__ = init
    cls.serializer = serializer
    cls._handleReadableIncoming = read
    cls._addedDataToIncoming = added
    cls._next_XMIT_3 = xmit3
    cls._check_XMIT_4_done = ack
    cls._next_XMIT_4 = xmit4
    _installed = True


class _PollSelector(selectors.PollSelector):
    """A poll selector that fails on a closed fd as epoll's does (``EBADF``):
    Thespian finds a bad watched fd by that error and drops it, where poll
    alone would report it ready (``POLLNVAL``) on every turn."""

    def select(self, timeout: float | None = None) -> list[tuple[Any, int]]:
        ready = super().select(timeout)
        for key, _ in ready:
            try:
                os.fstat(key.fd)
            except OSError as exc:
                raise OSError(errno.EBADF, f"fd {key.fd} is closed") from exc
        return ready


def _peer(inc: Any) -> str:
    try:
        host, port = inc.socket.getpeername()[:2]
        return f"{host}:{port}"
    except Exception:
        return "a closed connection"


# -- clients ------------------------------------------------------------------------------


def probe(host: str, port: int, secret: str | bytes, timeout: float = 3.0) -> str:
    """Ask the runtime at ``host:port`` whether ``secret`` is its secret:
    ``"ok"``, ``"wrong"`` (it refused the frame) or ``"silent"`` (no llmspell
    runtime answered)."""
    return identify(host, port, secret, timeout)[0]


def identify(host: str, port: int, secret: str | bytes, timeout: float = 3.0) -> tuple[str, str]:
    """``probe``, and the token of the process that answered (``instance()``
    of the runtime's admin; "" unless ``"ok"``): a new token at the same
    address is a runtime started again."""
    auth = Auth(secret_bytes(secret))
    nonce = secrets.token_bytes(16)
    data = b""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(auth.frame(PROBE + nonce))
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and not _answered(data):
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
    except OSError:
        pass
    if data.startswith(REJECT[:8]):
        return "wrong", ""
    head, mark, rest = data.partition(b">")
    if not mark or not head.isdigit() or len(head) > _HEADER_MAX:
        return "silent", ""
    body = rest[: int(head)]
    mac, payload = body[:MAC_SIZE], body[MAC_SIZE:]
    expected = PROBE_OK + nonce
    if hmac.compare_digest(mac, auth.mac(payload)) and payload.startswith(expected):
        return "ok", payload[len(expected) :].lstrip(b"@").decode("ascii", "replace")
    return "wrong", ""  # an llmspell frame, but not MAC'd with our secret


def _answered(data: bytes) -> bool:
    """``data`` holds a refusal or one whole frame."""
    if data.startswith(REJECT[:8]):
        return True
    head, mark, rest = data.partition(b">")
    if not mark:
        return len(data) > _HEADER_MAX
    return not head.isdigit() or len(rest) >= int(head)


_instance: tuple[int, bytes] = (0, b"")


def instance() -> bytes:
    """A random token of this process (a forked process makes its own): a
    probe's answer carries the admin's."""
    global _instance
    if _instance[0] != os.getpid():
        _instance = (os.getpid(), secrets.token_hex(8).encode("ascii"))
    return _instance[1]


def _secret_dir() -> Path:
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR")
    if runtime_dir and os.path.isdir(runtime_dir):
        return Path(runtime_dir) / "llmspell"
    return Path.home() / ".llmspell"


def secret_path(port: int) -> Path:
    """Where a runtime served on ``port`` keeps its secret."""
    return _secret_dir() / f"secret-{int(port)}"


def write_secret_file(port: int, secret: str) -> Path:
    """Write ``secret`` to ``secret_path(port)``, readable by this user only."""
    path = secret_path(port)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, (secret + "\n").encode("utf-8"))
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return path


def remove_secret_file(port: int, secret: str) -> None:
    """Remove the secret file of ``port`` if it still holds ``secret``."""
    path = secret_path(port)
    try:
        if path.read_text("utf-8").strip() == secret:
            path.unlink()
    except OSError:
        pass


def read_secret(port: int) -> str | None:
    """The secret of the runtime served on ``port`` from its file, or None.
    A file other users could read or write is refused (``PermissionError``)."""
    path = secret_path(port)
    try:
        st = path.stat()
    except OSError:
        return None
    if st.st_uid != os.getuid() or st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise PermissionError(
            f"{path} is readable or writable by other users (or not yours); "
            "it must be mode 0600 and owned by you"
        )
    text = path.read_text("utf-8").strip()
    return text or None
