"""Following stored results: the watcher thread of a store in one process, and the owners.

One watcher per store and process (thread ``asyncbridge-store``) keeps the handles that follow
stored records up to date: it sleeps on the backend's wake-up (a datagram after each SQLite
commit, a Redis pub/sub message), then reads every record it follows and moves each handle along
through the producer API; it also re-reads every :data:`RECHECK` seconds, so a lost wake-up delays
a state and never loses it. It carries cancel requests to the work this process owns, and ends
followed work whose owning process is gone (docs/store.md, "Reading: following a record").
"""

from __future__ import annotations

import logging
import os
import select
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

from ._errors import StoreError, UnknownResult, WorkerCrashed
from ._remote import describe_failure, rebuild_failure
from ._state import FAILURE, PENDING, PROGRESS, RETRY, REVOKED, SUCCESS, State

if TYPE_CHECKING:
    from ._result import Result
    from ._store import ResultStore

LOGGER = logging.getLogger("asyncbridge")

#: Seconds between two reads of the records a watcher follows when no write woke it.
RECHECK = 1.0
#: Seconds a watcher with nothing left to follow lingers before its thread ends.
LINGER = 1.0
#: Seconds between two checks that the processes owning followed work are alive.
OWNER_CHECK = 1.0
#: Seconds between two purges of expired records by a watcher.
PURGE_EVERY = 60.0

# -- owners -------------------------------------------------------------------------------------------


def _boot_marker(pid: int) -> str:
    """What tells this process apart from a later one with the same pid (its start time)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return ""


_OWNER = ""


def owner_id() -> str:
    """``host:pid:start`` of this process (made again in a forked child)."""
    global _OWNER
    if not _OWNER or _OWNER.split(":")[1] != str(os.getpid()):
        _OWNER = f"{socket.gethostname()}:{os.getpid()}:{_boot_marker(os.getpid())}"
    return _OWNER


def owner_alive(owner: str) -> bool:
    """False only when ``owner`` is a process of this host that has ended."""
    host, _, rest = owner.partition(":")
    pid_text, _, marker = rest.partition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return True  # another host's process: no way to tell from here
    pid = int(pid_text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not marker or _boot_marker(pid) in ("", marker)


def _gone_reason(gone: str | None, store: ResultStore) -> str:
    if gone == "expired":
        return f"its result expired in {store!r}"
    if gone == "forgotten":
        return f"it was forgotten in {store!r}"
    return f"{store!r} has no result by this id"


# -- following ------------------------------------------------------------------------------------


class _Follow:
    """One handle following one stored record."""

    __slots__ = ("h", "ident", "last", "lock", "owner", "seq", "store")

    def __init__(self, store: ResultStore, h: Result[Any], ident: str) -> None:
        self.store, self.h, self.ident = store, h, ident
        self.lock = threading.Lock()
        self.seq = 0
        self.owner = ""
        self.last = b""  # the signature of the last record read: an unchanged one is not opened

    def changed(self, sealed: bytes) -> bool:
        """Whether ``sealed`` differs from the record last read (its signature is its first bytes,
        and a different record has a different one)."""
        mac = sealed[:32]
        if mac == self.last:
            return False
        self.last = mac
        return True

    def apply(self, record: dict[str, Any]) -> None:
        """Move the handle to ``record``'s state, once per record (a newer one may skip states)."""
        with self.lock:
            seq = record.get("seq", 0)
            if seq <= self.seq:
                return
            self.seq = seq
            self.owner = record.get("owner", "")
        h, st, info = self.h, State(record["state"]), record["info"]
        if not h._label:
            h._setup(record.get("label") or "stored result")
        if st is PENDING:
            return
        h._set_started()  # a no-op if it runs already
        if st is PROGRESS:
            h._set_progress(info, record.get("state_name"))
        elif st is RETRY:
            h._set_retry(rebuild_failure(info))
        elif st is SUCCESS:
            h._set_result(info)
        elif st is FAILURE:
            h._set_exception(rebuild_failure(info))
        elif st is REVOKED:
            h._set_cancelled()

    def fail(self, exc: BaseException) -> None:
        self.h._set_exception(exc)

    def cancel(self) -> None:
        """Ask the owning process to stop the work; it reports how it ended, through the record."""
        try:
            asked = self.store._backend.request_cancel(self.ident)
        except Exception as exc:
            self.fail(StoreError(f"could not ask {self.store!r} to cancel {self.ident!r}: {exc!r}"))
            return
        if not asked:  # ended meanwhile, or forgotten: the next read says which
            self.store._watcher_now().wake()


class _Watcher:
    """The thread that keeps a store's followed handles up to date in this process, and carries
    cancel requests to the work this process owns."""

    def __init__(self, store: ResultStore) -> None:
        self.store = store
        self.lock = threading.Lock()
        self.followed: dict[Result[Any], _Follow] = {}
        self.owned: dict[str, Result[Any]] = {}
        self.asked: set[str] = set()
        self.listener = store._backend.listen()  # before anything is read: no write is missed
        self.wake_r, self.wake_w = os.pipe()
        self.stopping = False
        self.thread = threading.Thread(target=self._run, name="asyncbridge-store", daemon=True)
        self.thread.start()

    def alive(self) -> bool:
        return self.thread.is_alive() and not self.stopping

    def follow(self, follow: _Follow) -> None:
        with self.lock:
            self.followed[follow.h] = follow

    def own(self, h: Result[Any]) -> None:
        with self.lock:
            self.owned[h.id] = h
        h.add_done_callback(self._disown)

    def _disown(self, h: Result[Any]) -> None:
        with self.lock:
            self.owned.pop(h.id, None)
            self.asked.discard(h.id)

    def wake(self) -> None:
        try:
            os.write(self.wake_w, b"!")
        except OSError:
            pass

    def stop(self, timeout: float = 5.0) -> None:
        """End the thread (it closes its listener: socket and, the last one, its directory)."""
        self.stopping = True
        self.wake()
        if self.thread is not threading.current_thread():
            self.thread.join(timeout)

    def _run(self) -> None:
        idle_since: float | None = None
        last_owner_check = 0.0
        try:
            while not self.stopping:
                with self.lock:
                    follows = [f for f in self.followed.values() if not f.h.done()]
                    self.followed = {f.h: f for f in follows}
                    owned = dict(self.owned)
                now = time.monotonic()
                if not follows and not owned:
                    idle_since = idle_since or now
                    if now - idle_since >= LINGER:
                        with self.lock:
                            if not self.followed and not self.owned:
                                self.stopping = True
                                return
                else:
                    idle_since = None
                    self._read(follows, owned)
                    if follows and now - last_owner_check >= OWNER_CHECK:
                        last_owner_check = now
                        self._check_owners(follows)
                if now - self.store._last_purge >= PURGE_EVERY:
                    self.store._last_purge = now
                    try:
                        self.store.purge()
                    except Exception:
                        LOGGER.exception("asyncbridge: purging %r failed", self.store)
                self._wait(RECHECK if (follows or owned) else LINGER)
        except BaseException:
            LOGGER.exception("asyncbridge: the watcher of %r failed", self.store)
            for f in self.followed.values():
                f.fail(StoreError(f"the watcher of {self.store!r} failed; see the asyncbridge log"))
        finally:
            self.stopping = True
            self.listener.close()
            os.close(self.wake_r)
            os.close(self.wake_w)

    def _wait(self, timeout: float) -> None:
        ready, _, _ = select.select([self.listener, self.wake_r], [], [], timeout)
        if self.listener in ready:
            self.listener.drain()
        if self.wake_r in ready:
            os.read(self.wake_r, 4096)

    def _read(self, follows: list[_Follow], owned: dict[str, Result[Any]]) -> None:
        idents = {f.ident for f in follows} | set(owned)
        try:
            rows = self.store._backend.get_many(idents)
        except StoreError as exc:
            if exc.permanent:  # not a store any more: no read will succeed
                for f in follows:
                    f.fail(exc)
                return
            LOGGER.warning("asyncbridge: reading %r failed (%r); trying again", self.store, exc)
            return
        except Exception as exc:
            LOGGER.warning("asyncbridge: reading %r failed (%r); trying again", self.store, exc)
            return
        for f in follows:
            row = rows.get(f.ident)
            if row is None:
                try:
                    _, gone = self.store._backend.get(f.ident, time.time())
                except Exception as exc:  # the store is unreachable: the next wake tries again
                    LOGGER.warning("asyncbridge: reading %r failed (%r); trying again", self.store, exc)
                    continue
                f.fail(UnknownResult(f.ident, _gone_reason(gone, self.store)))
                continue
            if not f.changed(row[0]):
                continue
            try:
                f.apply(self.store._open(f.ident, row[0]))
            except Exception as exc:  # a bad signature, a value that cannot be unpickled here
                f.fail(
                    exc
                    if isinstance(exc, StoreError)
                    else StoreError(f"the stored result of {f.ident!r} could not be read: {exc!r}")
                )
        for ident, h in owned.items():
            row = rows.get(ident)
            if row is not None and row[2] and ident not in self.asked:
                self.asked.add(ident)
                h.cancel()

    def _check_owners(self, follows: list[_Follow]) -> None:
        alive: dict[str, bool] = {}  # one check per owner, however many of its records are followed
        for f in follows:
            if not f.owner or f.h.done():
                continue
            if f.owner not in alive:
                alive[f.owner] = owner_alive(f.owner)
            if not alive[f.owner]:
                crashed = WorkerCrashed(
                    f"the process that ran {f.h._label or f.ident} ({f.owner}) ended before its work "
                    "did; its result will never be stored",
                    pid=int(f.owner.split(":")[1]),
                    exitcode=None,
                )
                record = {
                    "seq": 1 << 62,
                    "state": str(FAILURE),
                    "info": describe_failure(crashed),
                    "label": f.h._label,
                    "owner": owner_id(),
                    "at": time.time(),
                }
                try:  # recorded for every reader, unless the owner's own outcome got there first
                    self.store._backend.put_if_not_final(
                        f.ident, self.store._seal(record), owner=owner_id(), expires_at=None
                    )
                except Exception:  # the store cannot take it: this reader, at least, is told
                    LOGGER.exception("asyncbridge: could not record that %s's owner is gone", f.ident)
                    f.fail(crashed)
                self.wake()
