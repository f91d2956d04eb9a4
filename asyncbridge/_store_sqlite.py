"""The embedded result store: one SQLite file, any number of processes (``sqlite:///path.db``).

- **Durable and whole.** WAL mode, a busy timeout, one transaction per write: a writer killed at
  any point leaves the previous record or the new one, never half of one (SQLite's atomic commit),
  and a record committed before a crash is read after it. ``synchronous=NORMAL``: a power loss (not
  a process crash) may lose the last commits, never tear one.
- **Private.** The file (and its WAL) is created readable by its owner only.
- **Woken, not polled.** A process that waits on records binds a Unix datagram socket in a
  directory of its own user that belongs to this file; a writer, after its commit, sends one byte
  to each socket there (a socket whose process is gone refuses it, and is removed). A waiter thus
  learns of a new record within the time of one datagram, and sleeps while nothing changes; it
  also reads again every ``RECHECK`` seconds, so a lost datagram delays a record, never loses it.

Records are opaque bytes here (signed by the store above); this module keeps them, the ids gone
(forgotten or expired, for an answer that says so), the cancel requests, and the owners.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import sqlite3
import stat
import tempfile
import threading
import time
import weakref
from pathlib import Path
from typing import TYPE_CHECKING

from ._errors import StoreError

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

__all__ = ["SqliteBackend"]

#: Seconds a writer waits for another writer's lock before failing (SQLite's busy timeout).
BUSY_TIMEOUT = 30.0
#: How long the ids gone (forgotten, expired) are remembered, for an answer that says which.
GONE_KEPT = 7 * 24 * 3600.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    id TEXT PRIMARY KEY,
    record BLOB NOT NULL,
    final INTEGER NOT NULL,
    owner TEXT NOT NULL,
    expires_at REAL,
    cancel INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS results_expiry ON results (expires_at) WHERE expires_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS gone (id TEXT PRIMARY KEY, reason TEXT NOT NULL, at REAL NOT NULL)
    WITHOUT ROWID;
"""


def _close(held: list[sqlite3.Connection]) -> None:
    for db in held:
        with contextlib.suppress(sqlite3.Error):
            db.close()
    held.clear()


class _Listener:
    """A bound datagram socket: readable once some process wrote."""

    __slots__ = ("path", "sock")

    def __init__(self, sock: socket.socket, path: str) -> None:
        self.sock, self.path = sock, path

    def fileno(self) -> int:
        return self.sock.fileno()

    def drain(self) -> None:
        try:
            while self.sock.recv(64):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        self.sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        with contextlib.suppress(OSError):  # the last listener of this file takes the directory
            os.rmdir(os.path.dirname(self.path))


class SqliteBackend:
    """The records of one SQLite file. Thread-safe: one connection per process, used by one thread
    at a time (a lock): SQLite takes one writer at a time anyway, and no thread can then close the
    connection under another one's query."""

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(os.path.expanduser(path))
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db: list[sqlite3.Connection] = []  # the one connection, once opened
        self._pid = os.getpid()
        # Closed with the backend; not at interpreter exit, where a daemon thread may still use it
        # (an open WAL database is whole at any instant: nothing is lost by not closing it).
        weakref.finalize(self, _close, self._db).atexit = False
        self._create_private()
        try:
            with self._use() as db:
                db.executescript(_SCHEMA)  # idempotent; its own transaction
        except BaseException:
            _close(self._db)  # not a store (a file that is not a database): no connection left open
            raise
        digest = hashlib.sha256(os.path.realpath(self.path).encode()).hexdigest()[:16]
        # Socket paths are short (108 bytes): the directory is named after the file, not in it.
        self.wake_dir = os.path.join(tempfile.gettempdir(), f"asyncbridge-{os.getuid()}-{digest}")
        self._sender: socket.socket | None = None
        self._sender_lock = threading.Lock()

    def _create_private(self) -> None:
        """Create the file readable and writable by its owner only (SQLite would use the umask)."""
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except FileExistsError:
            return
        os.close(fd)

    @contextlib.contextmanager
    def _use(self) -> Iterator[sqlite3.Connection]:
        """The connection, for this thread alone until the block ends. SQLite's errors leave as
        :class:`StoreError` naming the file: ``permanent`` unless the file is only busy (another
        writer held it past the busy timeout), so that waiters stop waiting on a file that is no
        longer a store (deleted from under SQLite, overwritten, unreadable)."""
        try:
            with self._lock, self._open() as db:
                yield db
        except sqlite3.Error as exc:
            busy = isinstance(exc, sqlite3.OperationalError) and ("locked" in str(exc) or "busy" in str(exc))
            raise StoreError(f"the result store {self.path} failed: {exc}", permanent=not busy) from exc

    @contextlib.contextmanager
    def _open(self) -> Iterator[sqlite3.Connection]:
        if self._pid != os.getpid():  # a forked child: the parent's connection is not for it
            self._db.clear()
            self._pid = os.getpid()
        if not self._db:
            db = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
            )
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
            except BaseException:
                db.close()
                raise
            self._db.append(db)
        yield self._db[0]

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE: the write lock first, so no deadlock upgrade)."""
        with self._use() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    # -- writing ----------------------------------------------------------------------------------

    def put(self, ident: str, record: bytes, *, final: bool, owner: str, expires_at: float | None) -> None:
        """Store ``record`` as the latest of ``ident``, keeping a cancel request already made."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO results (id, record, final, owner, expires_at) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET record = excluded.record, final = excluded.final, "
                "owner = excluded.owner, expires_at = excluded.expires_at",
                (ident, record, int(final), owner, expires_at),
            )
            db.execute("DELETE FROM gone WHERE id = ?", (ident,))
        self.notify()

    def put_if_not_final(self, ident: str, record: bytes, *, owner: str, expires_at: float | None) -> bool:
        """Store a final ``record`` unless one is there already (an observer ending the work of an
        owner that is gone must not overwrite the owner's own last word)."""
        with self._tx() as db:
            changed = db.execute(
                "UPDATE results SET record = ?, final = 1, owner = ?, expires_at = ? "
                "WHERE id = ? AND final = 0",
                (record, owner, expires_at, ident),
            ).rowcount
        if changed:
            self.notify()
        return bool(changed)

    def request_cancel(self, ident: str) -> bool:
        """Ask the owner of ``ident`` to stop it; False if there is no such unfinished record."""
        with self._tx() as db:
            changed = db.execute(
                "UPDATE results SET cancel = 1 WHERE id = ? AND final = 0", (ident,)
            ).rowcount
        if changed:
            self.notify()
        return bool(changed)

    def forget(self, ident: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM results WHERE id = ?", (ident,))
            db.execute(
                "INSERT OR REPLACE INTO gone (id, reason, at) VALUES (?, 'forgotten', ?)",
                (ident, time.time()),
            )
        self.notify()

    def purge(self, now: float) -> int:
        """Remove the records that expired by ``now`` (remembering their ids as expired)."""
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO gone (id, reason, at) "
                "SELECT id, 'expired', ? FROM results WHERE expires_at IS NOT NULL AND expires_at <= ?",
                (now, now),
            )
            count = db.execute(
                "DELETE FROM results WHERE expires_at IS NOT NULL AND expires_at <= ?", (now,)
            ).rowcount
            db.execute("DELETE FROM gone WHERE at < ?", (now - GONE_KEPT,))
        return int(count)

    # -- reading ----------------------------------------------------------------------------------

    def get(self, ident: str, now: float) -> tuple[bytes | None, str | None]:
        """``(record, None)``, or ``(None, why)``: "expired", "forgotten", or None if never known."""
        with self._use() as db:
            row = db.execute("SELECT record, expires_at FROM results WHERE id = ?", (ident,)).fetchone()
            gone = (
                None
                if row is not None
                else db.execute("SELECT reason FROM gone WHERE id = ?", (ident,)).fetchone()
            )
        if row is not None:
            record, expires_at = row
            if expires_at is None or expires_at > now:
                return bytes(record), None
            return None, "expired"
        return None, None if gone is None else str(gone[0])

    def get_many(self, idents: Iterable[str]) -> dict[str, tuple[bytes, str, bool]]:
        """``id -> (record, owner, cancel requested)`` for those of ``idents`` that are stored."""
        found: dict[str, tuple[bytes, str, bool]] = {}
        batch = list(idents)
        with self._use() as db:
            for i in range(0, len(batch), 500):  # SQLite's limit on host parameters: 999 on old builds
                chunk = batch[i : i + 500]
                marks = ",".join("?" * len(chunk))
                for ident, record, owner, cancel in db.execute(
                    f"SELECT id, record, owner, cancel FROM results WHERE id IN ({marks})",
                    chunk,
                ):
                    found[ident] = (bytes(record), owner, bool(cancel))
        return found

    # -- waking waiters ---------------------------------------------------------------------------

    def listen(self) -> _Listener:
        """What wakes after each write by any process (select() on it); the caller closes it."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        path = os.path.join(self.wake_dir, f"{os.getpid()}-{os.urandom(4).hex()}")
        for attempt in range(3):
            os.makedirs(self.wake_dir, mode=0o700, exist_ok=True)
            info = os.stat(self.wake_dir)
            if info.st_uid != os.getuid() or stat.S_IMODE(info.st_mode) & 0o077:
                sock.close()
                raise PermissionError(f"{self.wake_dir} must be a directory of this user's only")
            try:
                sock.bind(path)
                break
            except FileNotFoundError:  # another process's last listener removed the directory
                if attempt == 2:
                    sock.close()
                    raise
        sock.setblocking(False)
        return _Listener(sock, path)

    def notify(self) -> None:
        """Wake every listening process (a full socket already has a wake-up waiting: skip it)."""
        try:
            names = os.listdir(self.wake_dir)
        except FileNotFoundError:
            return  # no process has ever listened
        if not names:
            return
        with self._sender_lock:
            sender = self._sender
            if sender is None:
                sender = self._sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                sender.setblocking(False)
        for name in names:
            path = os.path.join(self.wake_dir, name)
            try:
                sender.sendto(b"!", path)
            except BlockingIOError:
                pass
            except (ConnectionRefusedError, FileNotFoundError):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)  # its process is gone
            except OSError:
                pass  # not a socket of ours: leave it

    def close(self) -> None:
        """Close the connection (a later use opens a new one)."""
        with self._lock:
            _close(self._db)
        if self._sender is not None:
            self._sender.close()
            self._sender = None
