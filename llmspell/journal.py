"""The journal: a runtime's tasks, their state changes and script host calls in SQLite.

The scheduler shell writes through a ``Journal`` (``Runtime(journal=path)``);
``llmspell journal PATH`` reads one. Standard library ``sqlite3`` only: WAL,
``synchronous=FULL``; every write is buffered in memory and ``commit()`` puts
the whole buffer in one transaction, durable when it returns.

Schema (``PRAGMA application_id`` = ``APPLICATION_ID`` says "an llmspell
journal", ``PRAGMA user_version`` = ``SCHEMA`` its version):

- ``tasks``: one row per task, updated in place. ``seq`` (the rowid) is the
  submission order; ``spec`` the ``TaskSpec`` as its msgpack envelope;
  ``value``/``error`` msgpack; ``log`` the task's state changes, one JSON array
  a line (``["dispatched", t, attempt]``), appended to by each change, so a
  change costs one row update and forgetting a task one row delete. A partial
  index holds only the unfinished rows, so ``unfinished()`` never walks ended ones.
- ``calls``: a script task's host calls, keyed ``(task_id, n)``.
- ``owner``: the runtime that holds the journal (pid, process start time,
  host, a token). A claim of a process that is gone is taken over.
- ``meta``: what created the file.

Opening validates an existing file through a read-only connection before
anything writes to it; whatever is wrong is one ``JournalError`` naming the
path, with the file unchanged.

``"memory:NAME"`` names an in-process store (no file) that outlives ``close()``
until ``Journal.drop(NAME)``: the simulation harness restarts runtimes on it.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import threading
import time
import urllib.parse
import uuid
import weakref
from collections.abc import Iterable
from dataclasses import FrozenInstanceError, fields
from typing import Any

import msgpack
import psutil

from . import __version__
from ._exceptions import JournalError, MessageError
from .messages import encode
from .messages.codec import decode_as, decode_many
from .messages.types import STATUSES, TERMINAL, TaskSpec

__all__ = ["APPLICATION_ID", "SCHEMA", "Journal", "JournalTask"]

APPLICATION_ID = 0x6C6C7370  # "llsp" in the SQLite header: this file is an llmspell journal
SCHEMA = 1  # PRAGMA user_version; a newer one is refused, an older one migrated
BUSY_TIMEOUT = 2.0  # seconds a statement waits for another connection's lock
WAL_CHECKPOINT_PAGES = 1000  # PRAGMA wal_autocheckpoint (~4 MB of WAL)
WAL_SIZE_LIMIT = 16 << 20  # PRAGMA journal_size_limit: the WAL is cut back to this
VACUUM_EVERY = 10_000  # forgotten tasks between looks at the free list
_MAGIC = b"SQLite format 3\x00"
_UNFINISHED = "status IN ('pending', 'running')"  # the partial index's condition, verbatim
_STATUSES = frozenset(STATUSES)
_COLUMNS = "id, kind, status, attempts, created, ended, parent, spec, value, error"

_SCHEMA_SQL = f"""
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE owner (
    slot INTEGER PRIMARY KEY CHECK (slot = 0),
    pid INTEGER NOT NULL, started REAL NOT NULL, host TEXT NOT NULL,
    token TEXT NOT NULL, since REAL NOT NULL
);
CREATE TABLE tasks (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    ended REAL,
    parent TEXT,
    spec BLOB NOT NULL,
    value BLOB,
    error BLOB,
    log TEXT NOT NULL
);
CREATE INDEX tasks_unfinished ON tasks (seq) WHERE {_UNFINISHED};
CREATE TABLE calls (
    task_id TEXT NOT NULL,
    n INTEGER NOT NULL,
    op TEXT NOT NULL,
    call BLOB,
    result BLOB,
    error TEXT,
    done INTEGER NOT NULL,
    PRIMARY KEY (task_id, n)
) WITHOUT ROWID;
CREATE TABLE registrations (
    seq INTEGER PRIMARY KEY,
    what TEXT NOT NULL,
    name TEXT NOT NULL,
    target BLOB NOT NULL
);
"""
_TABLES = {"meta", "owner", "tasks", "calls", "registrations"}

# the statements commit() runs; a buffered write is (statement, parameters)
_SUBMITTED = (
    "INSERT INTO tasks (id, kind, status, created, parent, spec, log) "
    "VALUES (?, ?, 'pending', ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING"
)
# submitted and dispatched in one commit: one row, running (a replayed submit of a
# task the journal has: the row is kept and takes the dispatch, as _DISPATCHED would)
_STARTED = (
    "INSERT INTO tasks (id, kind, status, attempts, created, parent, spec, log) "
    "VALUES (?, ?, 'running', ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
    "status = 'running', attempts = excluded.attempts, log = log || ?"
)
_DISPATCHED = "UPDATE tasks SET status = 'running', attempts = ?, log = log || ? WHERE id = ?"
_RETRIED = "UPDATE tasks SET status = 'pending', log = log || ? WHERE id = ?"
_ENDED = "UPDATE tasks SET status = ?, ended = ?, value = ?, error = ?, log = log || ? WHERE id = ?"
_CALL = (
    "INSERT OR REPLACE INTO calls (task_id, n, op, call, result, error, done) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_UNREGISTER = "DELETE FROM registrations WHERE what = ? AND name = ? AND what != 'hook'"
_UNHOOK = "DELETE FROM registrations WHERE what = 'hook' AND name = ? AND target = ?"
_REGISTER = "INSERT INTO registrations (what, name, target) VALUES (?, ?, ?)"
_FORGET_TASK = "DELETE FROM tasks WHERE id = ?"
_FORGET_CALLS = "DELETE FROM calls WHERE task_id = ?"
_CALLS_FROM = "DELETE FROM calls WHERE task_id = ? AND n >= ?"

_MEMORY: dict[str, _MemoryStore] = {}  # "memory:NAME" stores of this process
_HELD: set[str] = set()  # owner tokens of the Journals open in this process
# Files (st_dev, st_ino) this process has Journals open on: [writers, readers]. While
# SQLite has a file open, nothing else in the process may open and close it (closing
# any descriptor of a file drops the process's POSIX locks on it, SQLite's included),
# so the raw header check is skipped for them.
_FILES: dict[tuple[int, int], list[int]] = {}
_lock = threading.Lock()


class _MemoryStore:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.owner: str | None = None  # token of the Journal holding it


class JournalTask:
    """One task as the journal has it (read-only).

    ``spec`` is decoded from its stored bytes the first time it is read, so
    listing many tasks costs little more than reading their rows.
    """

    __slots__ = (
        "_path",
        "_spec",
        "attempts",
        "created",
        "ended",
        "error",
        "id",
        "kind",
        "parent",
        "status",
        "value",
    )
    id: str
    kind: str
    status: str
    attempts: int  # runs that started
    created: float  # epoch seconds of submission
    ended: float | None
    value: Any
    error: dict[str, Any] | None
    parent: str | None
    _spec: TaskSpec | bytes
    _path: str | None

    def __init__(
        self,
        id: str,
        kind: str,
        status: str,
        attempts: int,
        created: float,
        ended: float | None,
        spec: TaskSpec | bytes,
        value: Any = None,
        error: dict[str, Any] | None = None,
        parent: str | None = None,
        _path: str | None = None,  # the journal's, for an error decoding the spec
    ) -> None:
        s = object.__setattr__
        s(self, "id", id)
        s(self, "kind", kind)
        s(self, "status", status)
        s(self, "attempts", attempts)
        s(self, "created", created)
        s(self, "ended", ended)
        s(self, "_spec", spec)
        s(self, "value", value)
        s(self, "error", error)
        s(self, "parent", parent)
        s(self, "_path", _path)

    @property
    def spec(self) -> TaskSpec:
        spec = self._spec
        if isinstance(spec, TaskSpec):
            return spec
        try:
            decoded = _decode_spec(spec, self.id)
        except _Corrupt as exc:
            raise JournalError(f"is corrupt: {exc}", path=self._path) from None
        object.__setattr__(self, "_spec", decoded)
        return decoded

    def __setattr__(self, name: str, value: Any) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}")

    def _key(self) -> tuple[Any, ...]:
        return (self.id, self.kind, self.status, self.attempts, self.created, self.ended,
                self.spec, self.value, self.error, self.parent)  # fmt: skip

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, JournalTask):
            return NotImplemented
        return self._key() == other._key()

    __hash__ = None  # type: ignore[assignment]  # value and error may be unhashable

    def __repr__(self) -> str:
        return (
            f"JournalTask(id={self.id!r}, kind={self.kind!r}, status={self.status!r}, "
            f"attempts={self.attempts}, created={self.created!r}, ended={self.ended!r}, "
            f"parent={self.parent!r})"
        )


class _Corrupt(Exception):
    """A stored value that does not decode (turned into JournalError with the path)."""


def _decode_spec(data: Any, task_id: str) -> TaskSpec:
    if type(data) is not bytes:
        raise _Corrupt(f"task {task_id!r}: stored spec is a {type(data).__name__}, not bytes")
    try:
        return decode_as(TaskSpec, data)
    except MessageError as exc:
        raise _Corrupt(f"task {task_id!r}: stored spec does not decode ({exc})") from None


def _pack(value: Any) -> bytes | None:
    if value is None:
        return None
    try:
        return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]
    except UnicodeEncodeError:  # a lone surrogate (JavaScript strings may hold one)
        return msgpack.packb(  # type: ignore[no-any-return]
            value, use_bin_type=True, unicode_errors="surrogatepass"
        )
    except (TypeError, ValueError, OverflowError) as exc:
        raise MessageError(f"cannot journal a value: {exc}") from None


def _unpack(data: bytes | None, what: str) -> Any:
    if data is None:
        return None
    try:
        return msgpack.unpackb(
            data, raw=False, strict_map_key=False, unicode_errors="surrogatepass"
        )
    except Exception as exc:
        raise _Corrupt(f"{what} does not decode ({type(exc).__name__}: {exc})") from None


def _event(*parts: Any) -> str:
    return json.dumps(parts, separators=(",", ":")) + "\n"


def _is_memory(path: Any) -> bool:
    return isinstance(path, str) and path.startswith("memory:")


# -- ownership ------------------------------------------------------------------------


def _me() -> tuple[int, float, str]:
    return os.getpid(), psutil.Process().create_time(), socket.gethostname()


def _holder(row: tuple[Any, ...] | None) -> str | None:
    """Who holds the journal, if that one is alive (a message), else None."""
    if row is None:
        return None
    pid, started, host, token, since = row
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since))
    if host != socket.gethostname():
        return (
            f"held by process {pid} on host {host} since {when} "
            "(its liveness cannot be checked from here)"
        )
    if pid == os.getpid():
        if token in _HELD:
            return f"already open in this process (since {when})"
        return None  # a Journal of this process that was dropped without close()
    try:
        proc = psutil.Process(pid)
        if abs(proc.create_time() - started) > 1.0 or proc.status() == psutil.STATUS_ZOMBIE:
            return None  # the pid was reused, or the owner died unreaped
    except psutil.NoSuchProcess:
        return None
    except psutil.Error:
        pass  # cannot look: count it as alive
    return f"in use by another runtime (process {pid} on {host}, since {when})"


# -- opening files ----------------------------------------------------------------------


def _ro_uri(path: str) -> str:
    return "file:" + urllib.parse.quote(path) + "?mode=ro"


def _check_header(path: str) -> None:
    """What the first 100 bytes and the file size say, before SQLite reads it."""
    try:
        with open(path, "rb") as f:
            head = f.read(100)
        size = os.path.getsize(path)
    except OSError as exc:
        raise JournalError(f"cannot read it: {exc.strerror or exc}", path=path) from None
    if head[:16] != _MAGIC:
        if len(head) < 16 and _MAGIC.startswith(head):
            raise JournalError(f"is truncated ({size} bytes, not even a header)", path=path)
        raise JournalError("is not an llmspell journal (not a SQLite database)", path=path)
    if len(head) < 100:
        raise JournalError(f"is truncated ({size} bytes, not even a header)", path=path)
    app = int.from_bytes(head[68:72], "big")
    if app != APPLICATION_ID:
        raise JournalError(
            f"is not an llmspell journal (a SQLite database of another application: "
            f"application_id {app:#x})",
            path=path,
        )
    page = int.from_bytes(head[16:18], "big")
    page = 65536 if page == 1 else page
    if page < 512 or page & (page - 1):
        raise JournalError(f"is corrupt (page size {page} in its header)", path=path)
    wal = path + "-wal"
    if os.path.exists(wal) and os.path.getsize(wal) > 0:
        return  # the WAL may hold pages beyond the main file's end: SQLite reconciles them
    pages = int.from_bytes(head[28:32], "big")
    valid = head[24:28] == head[92:96]  # the in-header size is current
    if size % page or (valid and size < pages * page):
        raise JournalError(
            f"is truncated or corrupt ({size} bytes; its header says {pages * page})", path=path
        )


def _inspect(conn: sqlite3.Connection, path: str, *, full: bool) -> tuple[Any, ...] | None:
    """Check an open journal connection; return its owner row."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA:
        raise JournalError(
            f"was written by a newer llmspell (journal schema {version}; "
            f"this llmspell {__version__} reads up to {SCHEMA})",
            path=path,
        )
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if version < 1 or not _TABLES <= tables:
        raise JournalError(
            f"is corrupt (schema version {version}, tables {sorted(tables)})", path=path
        )
    if full:
        problems = [r[0] for r in conn.execute("PRAGMA quick_check(5)")]
        if problems != ["ok"]:
            raise JournalError(f"is corrupt ({'; '.join(problems)})", path=path)
    row = conn.execute("SELECT pid, started, host, token, since FROM owner").fetchone()
    return tuple(row) if row is not None else None


def _connect(target: str, *, uri: bool = False) -> sqlite3.Connection:
    return sqlite3.connect(
        target,
        timeout=BUSY_TIMEOUT,
        isolation_level=None,  # transactions are explicit: BEGIN ... COMMIT in commit()
        check_same_thread=False,
        uri=uri,
        cached_statements=32,
    )


def _create(conn: sqlite3.Connection) -> None:
    """Lay out a new journal in an empty database (under the caller's write lock)."""
    conn.executescript(
        "PRAGMA auto_vacuum = INCREMENTAL;"  # before the first table: free pages can be returned
        + "BEGIN IMMEDIATE;"
        + _SCHEMA_SQL
        + f"PRAGMA application_id = {APPLICATION_ID}; PRAGMA user_version = {SCHEMA};"
    )
    conn.executemany(
        "INSERT INTO meta (key, value) VALUES (?, ?)",
        [("created", repr(time.time())), ("created_by", f"llmspell {__version__}")],
    )
    conn.execute("COMMIT")


def _tune(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_CHECKPOINT_PAGES}")
    conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")


def _released(token: str | None, file: tuple[int, int] | None, readonly: bool) -> None:
    """A Journal closed (or collected): it no longer holds its token or its file."""
    if token is not None:
        _HELD.discard(token)
    if file is not None and file in _FILES:
        counts = _FILES[file]
        counts[1 if readonly else 0] -= 1
        if counts == [0, 0]:
            del _FILES[file]


def _open_here(path: str) -> list[int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return _FILES.get((st.st_dev, st.st_ino))


class Journal:
    """A journal store. ``Journal.open`` makes one; see the module docstring.

    One thread at a time: writes and reads go through one SQLite connection
    (usable from any thread, not from two at once).
    """

    def __init__(
        self, conn: sqlite3.Connection, path: str, *, readonly: bool, token: str | None
    ) -> None:
        self._conn: sqlite3.Connection | None = conn
        self.path = path
        self.readonly = readonly
        self._token = token
        self._memory = _is_memory(path)
        # the buffer: runs of one statement, each with its parameters in order
        self._runs: list[tuple[str, list[tuple[Any, ...]]]] = []
        self._forgotten = 0
        self._file: tuple[int, int] | None = None
        if not self._memory:
            st = os.stat(path)
            self._file = (st.st_dev, st.st_ino)
            _FILES.setdefault(self._file, [0, 0])[1 if readonly else 0] += 1
        self._release = weakref.finalize(self, _released, token, self._file, readonly)

    # -- opening ------------------------------------------------------------------------

    @classmethod
    def open(
        cls, path: str | os.PathLike[str], *, readonly: bool = False, quick_check: bool = True
    ) -> Journal:
        """Open (or create) the journal at ``path`` and take ownership of it.

        ``path`` is a file, or ``"memory:NAME"`` for an in-process store. An
        existing file is validated first, through a read-only connection.
        ``readonly=True`` takes no ownership, never writes, and works while
        another runtime owns the file (the file must exist).

        Raises ``JournalError`` (naming the path, the file left as it was) when
        the file is not a journal, is truncated or corrupt, has a newer schema,
        is held by another live runtime, or cannot be created or written.

        ``quick_check=False`` skips SQLite's ``quick_check`` of every page (its
        time grows with the file: 20 ms for 100,000 tasks) for a caller that
        had the file checked a moment ago: the scheduler, after the facade.
        """
        if _is_memory(path):
            return cls._open_memory(str(path)[len("memory:") :], readonly)
        p = os.path.abspath(os.fspath(path))
        if os.path.isdir(p):
            raise JournalError("is a directory, not a journal file", path=p)
        exists = os.path.exists(p)
        if readonly:
            if not exists:
                raise JournalError("no such journal", path=p)
            return cls._open_existing(p, readonly=True, full=quick_check)
        if not exists or os.path.getsize(p) == 0:
            return cls._open_new(p, existed=exists)
        if not os.access(p, os.R_OK | os.W_OK):
            raise JournalError("cannot be written (permission denied)", path=p)
        if not os.access(os.path.dirname(p), os.W_OK | os.X_OK):
            raise JournalError(
                "cannot be written: its directory is not writable "
                "(SQLite keeps its -wal and -shm files beside it)",
                path=p,
            )
        return cls._open_existing(p, readonly=False, full=quick_check)

    @classmethod
    def _open_new(cls, p: str, *, existed: bool) -> Journal:
        parent = os.path.dirname(p)
        if not os.path.isdir(parent):
            raise JournalError(f"cannot be created: no directory {parent}", path=p)
        if not os.access(parent, os.W_OK | os.X_OK):
            raise JournalError(f"cannot be created: directory {parent} is not writable", path=p)
        conn = None
        try:
            conn = _connect(p)
            if conn.execute("PRAGMA page_count").fetchone()[0] == 0:
                _create(conn)
            else:  # another process created it meanwhile: validate it like any other
                conn.close()
                return cls._open_existing(p, readonly=False)
            _tune(conn)
            return cls._claim(conn, p)
        except sqlite3.Error as exc:
            if conn is not None:
                conn.close()
            if not existed and os.path.exists(p):
                for leftover in (p, p + "-wal", p + "-shm", p + "-journal"):
                    try:
                        os.remove(leftover)
                    except OSError:
                        pass
            raise JournalError(f"cannot be created: {exc}", path=p) from None

    @classmethod
    def _open_existing(cls, p: str, *, readonly: bool, full: bool = True) -> Journal:
        here = _open_here(p)
        if here is None:
            _check_header(p)
        elif here[0] and not readonly:
            raise JournalError("already open in this process", path=p)
        # Validated read-only. With no -wal file nobody has the journal open, and
        # it is read as immutable: SQLite then creates no -wal/-shm beside it either.
        quiet = here is None and not os.path.exists(p + "-wal")
        try:
            ro = _connect(_ro_uri(p) + ("&immutable=1" if quiet else ""), uri=True)
        except sqlite3.Error as exc:
            raise JournalError(f"cannot be opened: {exc}", path=p) from None
        try:
            owner = _inspect(ro, p, full=full)
            held = None if readonly else _holder(owner)
            if held is not None:
                raise JournalError(held, path=p)
        except sqlite3.Error as exc:
            raise JournalError(f"is corrupt or unreadable ({exc})", path=p) from None
        finally:
            ro.close()
        try:
            if readonly:  # reads see what an owner commits from now on
                conn = _connect(_ro_uri(p), uri=True)
                conn.execute("PRAGMA query_only = ON")
                return cls(conn, p, readonly=True, token=None)
            conn = _connect(p)
        except sqlite3.Error as exc:
            raise JournalError(f"cannot be opened: {exc}", path=p) from None
        try:
            _tune(conn)
            return cls._claim(conn, p)
        except sqlite3.Error as exc:
            conn.close()
            raise JournalError(f"cannot be opened for writing: {exc}", path=p) from None

    @classmethod
    def _claim(cls, conn: sqlite3.Connection, p: str) -> Journal:
        """Take ownership under the write lock (re-checking, for a racing opener)."""
        pid, started, host = _me()
        token = uuid.uuid4().hex
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute("SELECT pid, started, host, token, since FROM owner").fetchone()
            held = _holder(tuple(row) if row is not None else None)
            if held is not None:
                raise JournalError(held, path=p)
            conn.execute(
                "INSERT OR REPLACE INTO owner (slot, pid, started, host, token, since) "
                "VALUES (0, ?, ?, ?, ?, ?)",
                (pid, started, host, token, time.time()),
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            conn.close()
            raise
        _HELD.add(token)
        return cls(conn, p, readonly=False, token=token)

    @classmethod
    def _open_memory(cls, name: str, readonly: bool) -> Journal:
        if not name:
            raise JournalError("a memory journal needs a name (memory:NAME)", path="memory:")
        where = f"memory:{name}"
        with _lock:
            store = _MEMORY.get(name)
            if store is None:
                if readonly:
                    raise JournalError("no such memory journal in this process", path=where)
                conn = _connect(":memory:")
                _create(conn)
                store = _MEMORY[name] = _MemoryStore(conn)
            if readonly:
                return cls(store.conn, where, readonly=True, token=None)
            if store.owner is not None and store.owner in _HELD:
                raise JournalError("already open in this process", path=where)
            token = uuid.uuid4().hex
            store.owner = token
            _HELD.add(token)
            return cls(store.conn, where, readonly=False, token=token)

    @staticmethod
    def drop(name: str) -> None:
        """Delete the memory journal ``name`` (``"NAME"`` or ``"memory:NAME"``);
        nothing if there is none. A Journal still open on it fails from then on."""
        if name.startswith("memory:"):
            name = name[len("memory:") :]
        with _lock:
            store = _MEMORY.pop(name, None)
        if store is not None:
            store.conn.close()

    def close(self) -> None:
        """Release ownership and close. Writes not yet committed are discarded
        (as a crash would lose them). Idempotent."""
        conn, self._conn = self._conn, None
        self._runs = []
        if conn is None:
            return
        token = self._token
        self._release()  # drops the token and the file from this process's registries
        if self._memory:
            return  # the store, and its connection, outlive this Journal
        try:
            if token is not None:
                conn.execute("DELETE FROM owner WHERE token = ?", (token,))
        except sqlite3.Error as exc:
            raise JournalError(f"cannot release it: {exc}", path=self.path) from None
        finally:
            conn.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._conn is None else ("read-only" if self.readonly else "open")
        return f"<Journal {self.path} {state}>"

    # -- writes (buffered until commit) -------------------------------------------------

    def _add(self, sql: str, params: tuple[Any, ...]) -> None:
        runs = self._runs
        if runs and runs[-1][0] is sql:
            runs[-1][1].append(params)
            return
        if self.readonly:
            raise JournalError("opened read-only", path=self.path)
        if self._conn is None:
            raise JournalError("is closed", path=self.path)
        runs.append((sql, [params]))

    def submitted(
        self, spec: TaskSpec, t: float, dispatched: tuple[int, float] | None = None
    ) -> None:
        """A new task (its spec as on the wire), submitted at ``t``. A task id
        already in the journal keeps its row (a replayed submit).
        ``dispatched=(attempt, t)``: it also started, in the same commit (the
        same as ``dispatched()`` after this, in one statement)."""
        if dispatched is None:
            self._add(
                _SUBMITTED,
                (spec.id, spec.kind, t, spec.parent, encode(spec), f'["submitted",{t!r}]\n'),
            )
            return
        attempt, t2 = dispatched
        started = f'["dispatched",{t2!r},{attempt}]\n'
        self._add(
            _STARTED,
            (spec.id, spec.kind, attempt + 1, t, spec.parent, encode(spec),
             f'["submitted",{t!r}]\n' + started, started),
        )  # fmt: skip

    def dispatched(self, task_id: str, attempt: int, t: float) -> None:
        """The task started on an engine (``attempt`` 0, 1, ...): it is running."""
        self._add(_DISPATCHED, (attempt + 1, f'["dispatched",{t!r},{attempt}]\n', task_id))

    def retried(self, task_id: str, attempt: int, error: str, t: float) -> None:
        """Attempt ``attempt`` failed with ``error`` and the task waits to run again."""
        self._add(_RETRIED, (_event("retried", t, attempt, error), task_id))

    def ended(
        self,
        task_id: str,
        status: str,
        value: Any,
        error: dict[str, Any] | None,
        attempt: int,
        t: float,
    ) -> None:
        """The task ended with a terminal ``status``. Raises ``MessageError`` for a
        value msgpack cannot hold, ``ValueError`` for a status that is not terminal."""
        if status not in TERMINAL:
            raise ValueError(f"not a terminal status: {status!r}")
        self._add(
            _ENDED,
            (
                status,
                t,
                None if value is None else _pack(value),
                None if error is None else _pack(error),
                f'["ended",{t!r},{attempt},"{status}"]\n',
                task_id,
            ),
        )

    def host_call(
        self,
        task_id: str,
        n: int,
        op: str,
        call: Any,
        result: Any,
        error: str | None,
        done: bool,
    ) -> None:
        """Host call ``n`` of a script task (made, or answered: the later write
        of the same ``(task_id, n)`` replaces the earlier)."""
        self._add(_CALL, (task_id, n, op, _pack(call), _pack(result), error, 1 if done else 0))

    def calls_dropped(self, task_id: str, n: int) -> None:
        """Host calls ``n`` and later of a script task are to be made anew (its
        retry after a failed call)."""
        self._add(_CALLS_FROM, (task_id, n))

    def trim(self, keep: int, needed: Iterable[str] = ()) -> int:
        """Compaction by count: forget every ended task but the ``keep`` most
        recently submitted ones. Never forgotten: unfinished tasks, the children
        of unfinished tasks (a replayed script submits them again by id: a
        forgotten one would run again) and the ``needed`` ones (dependencies of
        unfinished tasks). Written at once, in a transaction of its own; returns
        how many were forgotten."""
        conn = self._conn
        if self.readonly or conn is None:
            raise JournalError("opened read-only" if self.readonly else "is closed", path=self.path)
        row = conn.execute(
            f"SELECT seq FROM tasks WHERE NOT ({_UNFINISHED}) ORDER BY seq DESC LIMIT 1 OFFSET ?",
            (max(0, int(keep)),),
        ).fetchone()
        if row is None:
            return 0
        cutoff = int(row[0]) + 1
        old = (
            f"seq < ? AND NOT ({_UNFINISHED}) AND (parent IS NULL OR parent NOT IN "
            f"(SELECT id FROM tasks WHERE {_UNFINISHED})) "
            "AND id NOT IN (SELECT id FROM temp.needed)"
        )
        try:
            with conn:  # one transaction
                conn.execute("CREATE TEMP TABLE IF NOT EXISTS needed (id TEXT PRIMARY KEY)")
                conn.execute("DELETE FROM temp.needed")
                conn.executemany(
                    "INSERT OR IGNORE INTO temp.needed (id) VALUES (?)", ((i,) for i in needed)
                )
                conn.execute(
                    f"DELETE FROM calls WHERE task_id IN (SELECT id FROM tasks WHERE {old})",
                    (cutoff,),
                )
                gone = conn.execute(f"DELETE FROM tasks WHERE {old}", (cutoff,)).rowcount
        except sqlite3.Error as exc:
            raise JournalError(f"cannot write to it: {exc}", path=self.path) from None
        self._forgotten += gone
        if self._forgotten >= VACUUM_EVERY:
            self._forgotten = 0
            self._shrink(conn)
        return int(gone)

    def existing(self, task_ids: list[str]) -> list[JournalTask]:
        """The tasks among ``task_ids`` the journal has (any status)."""
        found: list[JournalTask] = []
        for i in range(0, len(task_ids), 500):
            chunk = task_ids[i : i + 500]
            marks = ",".join("?" * len(chunk))
            found += self._tasks(
                self._rows(f"SELECT {_COLUMNS} FROM tasks WHERE id IN ({marks})", tuple(chunk))
            )
        return found

    def registered(self, what: str, name: str, target: dict[str, Any]) -> None:
        """A registration (``tool``, ``agent``, ``executor``: replaces the one of
        the same name; ``hook``: one more at point ``name``, unless the same
        target is there already), so a resumed runtime has it before its
        application registers anything again."""
        packed = _pack(target)
        if what == "hook":
            self._add(_UNHOOK, (name, packed))
        else:
            self._add(_UNREGISTER, (what, name))
        self._add(_REGISTER, (what, name, packed))

    def registrations(self) -> list[tuple[str, str, dict[str, Any]]]:
        """Every registration ``(what, name, target)``, in the order made."""
        rows = self._rows("SELECT what, name, target FROM registrations ORDER BY seq")
        try:
            return [(w, n, _unpack(t, f"registration {w} {n!r}")) for w, n, t in rows]
        except _Corrupt as exc:
            raise JournalError(f"is corrupt: {exc}", path=self.path) from None

    def forget(self, task_ids: Iterable[str]) -> None:
        """Drop these tasks, their state changes and host calls entirely
        (compaction of ended tasks past the runtime's ``history``)."""
        ids = [(task_id,) for task_id in task_ids]
        if not ids:
            return
        for task_id in ids:
            self._add(_FORGET_TASK, task_id)
        for task_id in ids:
            self._add(_FORGET_CALLS, task_id)
        self._forgotten += len(ids)

    def commit(self) -> None:
        """Write everything buffered in one transaction, durable on return. A
        no-op when nothing is buffered. On failure nothing of it is written,
        the buffer is kept and ``JournalError`` says why."""
        runs = self._runs
        if not runs:
            if self._conn is None:
                raise JournalError("is closed", path=self.path)
            return
        conn = self._conn
        assert conn is not None
        if self._file is not None:
            self._still_there()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                for sql, params in runs:  # in the order written
                    if len(params) == 1:
                        conn.execute(sql, params[0])
                    else:
                        conn.executemany(sql, params)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise JournalError(f"cannot write to it: {exc}", path=self.path) from None
        self._runs = []
        if self._forgotten >= VACUUM_EVERY:
            self._forgotten = 0
            self._shrink(conn)

    def _still_there(self) -> None:
        """The file at ``path`` is still the one opened: SQLite would go on
        writing to a deleted (or replaced) journal, and all of it would be lost
        at close without a word. One ``stat`` per commit (which fsyncs anyway)."""
        try:
            st = os.stat(self.path)
            same = (st.st_dev, st.st_ino) == self._file
        except OSError:
            same = False
        if not same:
            raise JournalError(
                "was deleted or replaced while in use: nothing more can be recorded "
                "(what was recorded since it was opened is lost with it)",
                path=self.path,
            )

    def _shrink(self, conn: sqlite3.Connection) -> None:
        """Return free pages to the file system when more than half the file is
        free (the live set shrank); otherwise SQLite reuses them as it is."""
        try:
            free = conn.execute("PRAGMA freelist_count").fetchone()[0]
            total = conn.execute("PRAGMA page_count").fetchone()[0]
            if free * 2 > total:
                conn.execute("PRAGMA incremental_vacuum")
        except sqlite3.Error as exc:
            raise JournalError(f"cannot compact it: {exc}", path=self.path) from None

    # -- reads (what is committed) -------------------------------------------------------

    def _rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        conn = self._conn
        if conn is None:
            raise JournalError("is closed", path=self.path)
        try:
            return conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise JournalError(f"cannot be read: {exc}", path=self.path) from None

    def _tasks(self, rows: list[Any]) -> list[JournalTask]:
        for row in rows:
            if row[2] not in _STATUSES or type(row[0]) is not str:
                raise JournalError(f"is corrupt: a task row reads {row[:3]!r}", path=self.path)
        path = self.path
        try:
            return [
                JournalTask(
                    i,
                    k,
                    s,
                    a,
                    c,
                    e,
                    spec,
                    None if v is None else _unpack(v, f"task {i!r}: value"),
                    None if err is None else _unpack(err, f"task {i!r}: error"),
                    p,
                    path,
                )
                for i, k, s, a, c, e, p, spec, v, err in rows
            ]
        except _Corrupt as exc:
            raise JournalError(f"is corrupt: {exc}", path=self.path) from None

    def unfinished(self) -> list[JournalTask]:
        """The tasks that have not ended, in submission order."""
        return self._tasks(
            self._rows(f"SELECT {_COLUMNS} FROM tasks WHERE {_UNFINISHED} ORDER BY seq")
        )

    def resumable(self) -> list[tuple[TaskSpec, bool, int, float]]:
        """The tasks that have not ended, in submission order, as ``(spec,
        running, attempts, created)`` with every spec decoded: what a resume
        needs, read in one pass (``unfinished()`` makes a ``JournalTask`` of
        each and decodes its spec when asked)."""
        rows = self._rows(
            "SELECT seq, status = 'running', attempts, created, spec FROM tasks "
            f"WHERE {_UNFINISHED} ORDER BY seq"
        )
        try:
            specs = decode_many(TaskSpec, [row[4] for row in rows])
        except MessageError:  # which one, and why
            specs = []
            for seq, _, _, _, data in rows:
                try:
                    if type(data) is not bytes:
                        raise MessageError(f"a {type(data).__name__}, not bytes")
                    specs.append(decode_as(TaskSpec, data))
                except MessageError as exc:
                    raise JournalError(
                        f"is corrupt: task {self._id_of(seq)!r}: stored spec does not decode "
                        f"({exc})",
                        path=self.path,
                    ) from None
        out: list[tuple[TaskSpec, bool, int, float]] = []
        add = out.append
        row: Any = None
        try:
            for spec, row in zip(specs, rows, strict=True):
                attempts = row[2]
                if type(attempts) is not int:
                    raise TypeError(f"attempts {attempts!r}")
                add((spec, row[1] == 1, attempts, float(row[3])))
        except (TypeError, ValueError) as exc:
            raise JournalError(
                f"is corrupt: task {self._id_of(row[0])!r}: its row reads {exc}", path=self.path
            ) from None
        return out

    def _id_of(self, seq: int) -> str | None:
        found = self._rows("SELECT id FROM tasks WHERE seq = ?", (seq,))
        return found[0][0] if found else None

    def get(self, task_id: str) -> JournalTask | None:
        """The task ``task_id``, or None if the journal has none (or forgot it)."""
        found = self._tasks(self._rows(f"SELECT {_COLUMNS} FROM tasks WHERE id = ?", (task_id,)))
        return found[0] if found else None

    def tasks(self, status: str | None = None, limit: int | None = None) -> list[JournalTask]:
        """The journal's tasks in submission order; only those with ``status``
        when given; at most ``limit``."""
        where, params = "", ()  # type: tuple[str, tuple[str, ...]]
        if status is not None:
            if status not in STATUSES:
                raise ValueError(f"unknown status {status!r} (one of {', '.join(STATUSES)})")
            # the unfinished index serves pending and running
            where = f"WHERE {_UNFINISHED} AND " if status in ("pending", "running") else "WHERE "
            where += "status = ?"
            params = (status,)
        tail = "" if limit is None else f" LIMIT {int(limit)}"
        return self._tasks(
            self._rows(f"SELECT {_COLUMNS} FROM tasks {where} ORDER BY seq{tail}", params)
        )

    def listing(self, status: str | None = None) -> list[list[Any]]:
        """``[id, kind, status, attempts, created, ended]`` of the journal's tasks
        in submission order (only those with ``status`` when given): what
        ``rt.tasks()`` shows, without reading or decoding specs and values."""
        where, params = "", ()  # type: tuple[str, tuple[str, ...]]
        if status is not None:
            if status not in STATUSES:
                raise ValueError(f"unknown status {status!r} (one of {', '.join(STATUSES)})")
            where = f"WHERE {_UNFINISHED} AND " if status in ("pending", "running") else "WHERE "
            where += "status = ?"
            params = (status,)
        rows = self._rows(
            f"SELECT id, kind, status, attempts, created, ended FROM tasks {where} ORDER BY seq",
            params,
        )
        for row in rows:
            if row[2] not in _STATUSES or type(row[0]) is not str:
                raise JournalError(f"is corrupt: a task row reads {row[:3]!r}", path=self.path)
        return [list(row) for row in rows]

    def calls(self, task_id: str) -> list[list[Any]]:
        """Task ``task_id``'s host calls ``[n, op, call, result, error, done]`` by ``n``."""
        rows = self._rows(
            "SELECT n, op, call, result, error, done FROM calls WHERE task_id = ? ORDER BY n",
            (task_id,),
        )
        try:
            return [
                [n, op, _unpack(c, f"call {n} of {task_id!r}"),
                 _unpack(r, f"result of call {n} of {task_id!r}"), e, bool(d)]
                for n, op, c, r, e, d in rows
            ]  # fmt: skip
        except _Corrupt as exc:
            raise JournalError(f"is corrupt: {exc}", path=self.path) from None

    def record(self, task_id: str) -> dict[str, Any]:
        """Everything the journal has on one task, as plain data: its fields,
        spec, state changes (``events``) and host calls. Raises ``KeyError``
        for a task the journal does not have."""
        rows = self._rows(f"SELECT {_COLUMNS}, log FROM tasks WHERE id = ?", (task_id,))
        if not rows:
            raise KeyError(task_id)
        task = self._tasks([rows[0][:-1]])[0]
        try:
            spec = _spec_dict(task.spec)
            events = [_event_dict(json.loads(line)) for line in rows[0][-1].splitlines()]
        except (_Corrupt, ValueError, TypeError, IndexError, KeyError) as exc:
            raise JournalError(f"is corrupt: task {task_id!r}: {exc}", path=self.path) from None
        return {
            "id": task.id,
            "kind": task.kind,
            "status": task.status,
            "attempts": task.attempts,
            "created": task.created,
            "ended": task.ended,
            "parent": task.parent,
            "value": task.value,
            "error": task.error,
            "spec": spec,
            "events": events,
            "calls": [
                dict(zip(("n", "op", "call", "result", "error", "done"), c, strict=True))
                for c in self.calls(task_id)
            ],
        }


def _spec_dict(spec: TaskSpec) -> dict[str, Any]:
    """The spec's fields that differ from their defaults."""
    out: dict[str, Any] = {}
    for f in fields(spec):
        v = getattr(spec, f.name)
        if f.name in ("id", "kind") or v != f.default:
            out[f.name] = _spec_dict(v) if isinstance(v, TaskSpec) else v
    return out


_EVENT_FIELDS = {
    "submitted": ("t",),
    "dispatched": ("t", "attempt"),
    "retried": ("t", "attempt", "error"),
    "ended": ("t", "attempt", "status"),
}


def _event_dict(item: list[Any]) -> dict[str, Any]:
    names = _EVENT_FIELDS[item[0]]
    return {"event": item[0], **dict(zip(names, item[1:], strict=True))}
