"""Results by id across processes: a durable store that records each state of a handle as it
happens, and hands out handles that follow those records anywhere (docs/store.md).

A store is named by URL: ``sqlite:///relative.db``, ``sqlite:////absolute/path.db`` (the embedded
default, stdlib only), ``redis://host:port/db`` (``asyncbridge[redis]``, found through the
``asyncbridge.stores`` entry points). :class:`ResultStore` is the object; ``store=`` arguments take
it, a URL, or True (the default store: ``ASYNCBRIDGE_STORE``, else a file in the user's data
directory).

The recording side (:meth:`ResultStore.track`) joins a handle's life through the producer API: its
id is written at once (PENDING), each later move is written by the thread that makes it, and the
outcome is written before the handle moves to it (so a process that exits right after its work
ended leaves that outcome stored). The reading side (``Result(id, store=...)``) is a handle bound
to the record: one watcher thread per store and process re-reads the records it follows when a
write wakes it (docs/store.md, "Waking"), carries ``cancel()`` to the owning process, and ends
work whose owning process is gone.

Records are pickled (a thread's or a process's value is any object), so reading one runs code:
every record is signed (HMAC-SHA256 with the store's key), and one that fails the check is refused
with :class:`StoreError`, never unpickled.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib
import logging
import os
import pickle
import select
import socket
import threading
import time
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar
from urllib.parse import parse_qs, urlsplit, urlunsplit

from . import _runtime as runtime
from ._errors import UnknownResult, WorkerCrashed
from ._process import shared_pool
from ._remote import describe_failure, rebuild_failure
from ._result import Owned, Result, Wrapped, install_bind_stored
from ._state import _TERMINAL, FAILURE, PENDING, PROGRESS, RETRY, REVOKED, SUCCESS, State
from ._threads import start_in_thread
from ._validate import optional_seconds

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import TracebackType

__all__ = ["ResultStore", "StoreError"]

T = TypeVar("T")
P = ParamSpec("P")

LOGGER = logging.getLogger("asyncbridge")

#: The default limit on one stored record (the pickled value or error, with the state's data).
MAX_SIZE = 32 * 1024 * 1024
#: Seconds between two reads of the records a watcher follows when no write woke it.
RECHECK = 1.0
#: Seconds a watcher with nothing left to follow lingers before its thread ends.
LINGER = 1.0
#: Seconds between two checks that the processes owning followed work are alive.
OWNER_CHECK = 1.0
#: Seconds between two purges of expired records by a watcher.
PURGE_EVERY = 60.0
_MAC = 32  # bytes of an HMAC-SHA256

GROUP = "asyncbridge.stores"


class StoreError(RuntimeError):
    """The result store could not do what was asked: a record that fails its signature check (it
    was not written with this store's key, or was altered), a result above the store's size limit,
    a store that cannot be reached."""


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


# -- the store ----------------------------------------------------------------------------------------


class ResultStore:
    """A place where results outlive the process that made them, named by ``url``.

    Args:
        url: ``sqlite:///path.db`` (relative), ``sqlite:////abs/path.db``, or ``redis://host:port/db``.
            A ``?key=...`` in the URL is the signing key.
        key: the key that signs every record (str or bytes). Default: the URL's, else
            ``ASYNCBRIDGE_STORE_KEY``; a SQLite store without one makes a random key in a file beside
            the database (``path.db.key``, readable by its owner only); a Redis store refuses to
            start without one.
        expires: seconds after its end that a result is removed (its id then unknown); None: kept
            until forgotten. ``expires=`` where the work is started overrides it.
        max_size: the largest record in bytes (default 32 MiB): work whose outcome is larger fails
            with :class:`StoreError` instead.

    One object per URL is enough for a process: ``store=`` arguments given the same URL share one.
    """

    def __init__(
        self,
        url: str,
        *,
        key: str | bytes | None = None,
        expires: float | None = None,
        max_size: int | None = None,
    ) -> None:
        if not isinstance(url, str):
            raise TypeError(f"a store URL must be a str, not {type(url).__qualname__}")
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        self.url = url
        self.expires = optional_seconds(expires, "expires", positive=True)
        if max_size is None:
            max_size = MAX_SIZE
        if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 1:
            raise ValueError(f"max_size must be a number of bytes >= 1, not {max_size!r}")
        self.max_size = max_size
        in_url = query.get("key")
        given = key if key is not None else (in_url[0] if in_url else os.environ.get("ASYNCBRIDGE_STORE_KEY"))
        if given is not None and not isinstance(given, str | bytes):
            raise TypeError(f"key must be a str or bytes, not {type(given).__qualname__}")
        if parts.scheme == "sqlite":
            from ._store_sqlite import SqliteBackend

            path = parts.path[1:] if parts.path.startswith("/") else parts.path  # sqlite:///rel, ////abs
            if not path:
                raise ValueError(f"a SQLite store URL names its file: sqlite:///path/results.db, not {url!r}")
            self._backend: Any = SqliteBackend(path)
            self._key = _key_bytes(given) if given else _file_key(self._backend.path + ".key")
        else:
            factory = _backend_factory(parts.scheme, url)
            if not given:
                raise ValueError(
                    f"a {parts.scheme} store needs a signing key (key=, ?key= in the URL, or "
                    "ASYNCBRIDGE_STORE_KEY): its records are read by every process that can reach it"
                )
            self._key = _key_bytes(given)
            self._backend = factory(url)
        self._watcher: _Watcher | None = None
        self._watcher_lock = threading.Lock()
        self._last_purge = 0.0

    def __repr__(self) -> str:
        p = urlsplit(self.url)  # no password, no key: reprs end up in logs
        return f"<ResultStore {urlunsplit((p.scheme, p.netloc.rpartition('@')[2], p.path, '', ''))}>"

    # -- records ----------------------------------------------------------------------------------

    def _seal(self, record: dict[str, Any], *, bounded: bool = True) -> bytes:
        """Pickle and sign ``record``; above ``max_size`` a StoreError (unless not ``bounded``: the
        record of a failure to store, small by construction, must always get through)."""
        body = pickle.dumps(record, protocol=pickle.HIGHEST_PROTOCOL)
        if bounded and len(body) > self.max_size:
            raise StoreError(
                f"the result of {record.get('label') or 'the work'} is {len(body):,} bytes, above the "
                f"store's max_size of {self.max_size:,}"
            )
        return hmac.new(self._key, body, hashlib.sha256).digest() + body

    def _open(self, ident: str, sealed: bytes) -> dict[str, Any]:
        mac, body = sealed[:_MAC], sealed[_MAC:]
        if not hmac.compare_digest(mac, hmac.new(self._key, body, hashlib.sha256).digest()):
            raise StoreError(
                f"the stored record of {ident!r} in {self!r} fails its signature check: it was written "
                "with another key, or altered; it was not read"
            )
        record: dict[str, Any] = pickle.loads(body)
        return record

    # -- the recording side -----------------------------------------------------------------------

    def track(self, h: Result[T], *, expires: float | None = None) -> Result[T]:
        """Record ``h`` under its id from now on: its state now (written before this returns), each
        later move, and its outcome. Returns ``h``. ``expires``: as the store's, for this result.

        A handle the library makes for work started with ``store=`` (or through this store's
        :meth:`run_in_thread`/:meth:`run_in_process`) is tracked before its work can start; a
        result too large for the store then fails the work itself. Tracking a handle that is
        already out (``store.track(ab.wrap(future))``) records it the same way, except that an
        outcome it already had, too large for the store, fails only the stored record.
        """
        if not isinstance(h, Result):
            raise TypeError(f"track() needs an asyncbridge handle, not {type(h).__qualname__}")
        limit = optional_seconds(expires, "expires", positive=True)
        recorder = _Recorder(self, h, self.expires if limit is None else limit)
        cls = type(h)
        if cls is Owned:
            h.__class__ = _RecordedOwned
        elif cls is Wrapped:
            h.__class__ = _RecordedWrapped
        h.__dict__["_recorder"] = recorder
        recorder.write_now(h)
        h._watch(recorder.on_move)
        h._bind_source(forget=lambda: self.forget(h.id))
        h.add_done_callback(recorder.on_done)
        if not h.done():
            self._watcher_now().own(h)
        return h

    def run_in_thread(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Result[T]:
        """:func:`asyncbridge.run_in_thread`, recorded here from before the work can start (as
        ``@task(store=...)`` records each call). Every argument goes to ``fn``, so the store's own
        ``expires`` applies; ``track(handle, expires=...)`` sets another."""
        return start_in_thread(fn, args, kwargs, self.track)

    def run_in_process(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Result[T]:
        """:func:`asyncbridge.run_in_process` on the shared pool, recorded here from before the work
        can start (see :meth:`run_in_thread`)."""
        return shared_pool()._submit(fn, args, kwargs, self.track)

    # -- the reading side ---------------------------------------------------------------------------

    def result(self, task_id: str) -> Result[Any]:
        """The handle of the result stored as ``task_id`` (as ``ab.Result(task_id, store=self)``)."""
        h: Result[Any] = Wrapped()
        self._bind(h, task_id)
        return h

    def _bind(self, h: Result[Any], ident: str) -> None:
        """Make the blank ``h`` follow the record of ``ident``; UnknownResult if there is none."""
        sealed, gone = self._backend.get(ident, time.time())
        if sealed is None:
            raise UnknownResult(ident, _gone_reason(gone, self))
        follow = _Follow(self, h, ident)
        h._setup(task_id=ident)
        h._bind_source(cancel_hook=follow.cancel, forget=lambda: self.forget(ident))
        follow.apply(self._open(ident, sealed))
        if h.done():
            return  # a final record: nothing more to follow, no watcher needed
        # Followed from now on (the watcher's socket is bound before it reads), then read once
        # more: a write between the first read and the registration is seen by one or the other.
        self._watcher_now().follow(follow)
        sealed, _ = self._backend.get(ident, time.time())
        if sealed is not None:
            follow.apply(self._open(ident, sealed))

    def forget(self, task_id: str) -> None:
        """Delete the stored result of ``task_id``: its id is unknown from now on (saying so)."""
        self._backend.forget(task_id)

    def purge(self) -> int:
        """Remove the results whose time is up now; return how many (0 on Redis, which removes them
        itself). Reads treat an expired result as gone at once; watchers purge every minute."""
        return int(self._backend.purge(time.time()))

    def _watcher_now(self) -> _Watcher:
        """This process's watcher of the store, started if it is not running."""
        with self._watcher_lock:
            w = self._watcher
            if w is None or not w.alive():
                w = self._watcher = _Watcher(self)
            return w

    def close(self) -> None:
        """Stop this store's watcher (handles it followed stop following) and close connections."""
        with self._watcher_lock:
            w, self._watcher = self._watcher, None
        if w is not None:
            w.stop()
        self._backend.close()


def _gone_reason(gone: str | None, store: ResultStore) -> str:
    if gone == "expired":
        return f"its result expired in {store!r}"
    if gone == "forgotten":
        return f"it was forgotten in {store!r}"
    return f"{store!r} has no result by this id"


def _key_bytes(key: str | bytes) -> bytes:
    return key.encode() if isinstance(key, str) else key


def _file_key(path: str) -> bytes:
    """The key in ``path``, made (32 random bytes, readable by its owner only) if there is none."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        for _ in range(100):  # another process is writing it right now
            with open(path, "rb") as f:
                key = f.read()
            if len(key) == 32:
                return key
            time.sleep(0.01)
        raise StoreError(f"the store's key file {path} is not a key (32 bytes)") from None
    key = os.urandom(32)
    try:
        os.write(fd, key)
    finally:
        os.close(fd)
    return key


_BACKENDS: dict[str, Callable[[str], Any]] = {}


def register_backend(scheme: str, factory: Callable[[str], Any]) -> None:
    """Serve ``scheme://`` store URLs with ``factory(url)`` (a store module calls this at import;
    the ``asyncbridge.stores`` entry points name the module to import for a scheme)."""
    _BACKENDS[scheme] = factory


def _backend_factory(scheme: str, url: str) -> Callable[[str], Any]:
    factory = _BACKENDS.get(scheme)
    if factory is None:
        from importlib.metadata import entry_points

        for ep in entry_points(group=GROUP):
            if ep.name == scheme:
                importlib.import_module(ep.value)  # an ImportError names the missing extra
        factory = _BACKENDS.get(scheme)
    if factory is None:
        raise ValueError(
            f"no result store for {url!r}: the schemes are sqlite:// and redis:// (asyncbridge[redis])"
        )
    return factory


# -- recording ------------------------------------------------------------------------------------


class _Recorder:
    """Writes the states of one tracked handle."""

    __slots__ = ("expires", "final", "h_label", "lock", "seq", "store")

    def __init__(self, store: ResultStore, h: Result[Any], expires: float | None) -> None:
        self.store = store
        self.expires = expires
        self.h_label = h._label
        self.lock = threading.Lock()
        self.seq = 0
        self.final = False

    def _record(self, h: Result[Any], st: State, info: Any, state_name: str | None = None) -> dict[str, Any]:
        self.seq += 1
        return {
            "seq": self.seq,
            "state": str(st),
            "state_name": state_name,
            "info": info,
            "label": self.h_label,
            "attempts": h._attempts,
            "owner": owner_id(),
            "at": time.time(),
        }

    def _put(self, h: Result[Any], record: dict[str, Any], final: bool, *, bounded: bool = True) -> None:
        expires_at = None if not final or self.expires is None else record["at"] + self.expires
        sealed = self.store._seal(record, bounded=bounded)
        self.store._backend.put(h.id, sealed, final=final, owner=owner_id(), expires_at=expires_at)

    def write_now(self, h: Result[Any]) -> None:
        """The state ``h`` is in now (before track() returns)."""
        st, info, state_name = h._now()
        if st in _TERMINAL:
            self.on_done(h)
            return
        if st is RETRY:
            info = describe_failure(info)
        with self.lock:
            self._put(h, self._record(h, st, info, state_name), final=False)

    def on_move(self, h: Result[Any], st: State, info: Any) -> None:
        if st is RETRY:
            info = describe_failure(info)
        with self.lock:
            if not self.final:
                try:
                    self._put(
                        h, self._record(h, st, info, h._now()[2] if st is PROGRESS else None), final=False
                    )
                except StoreError as exc:  # a progress report too large for the store: say so
                    LOGGER.error("%r: a %s report was not stored: %s", h, st, exc)

    def before_end(
        self, h: Result[Any], to: State, value: Any, tb: TracebackType | None
    ) -> tuple[State, Any, Any]:
        """Write the outcome before the move; one that cannot be stored fails the work instead."""
        with self.lock:
            if self.final:
                return to, value, tb
            try:
                self._put(h, self._final(h, to, value), final=True)
            except Exception as exc:  # too large, unpicklable, or the store failed
                if to is not SUCCESS:
                    LOGGER.error("%r: its outcome was not stored: %s", h, exc)
                    return to, value, tb
                error = (
                    exc
                    if isinstance(exc, StoreError)
                    else StoreError(f"the result of {self.h_label} could not be stored: {exc!r}")
                )
                try:
                    self._put(h, self._final(h, FAILURE, error), final=True, bounded=False)
                except Exception:
                    LOGGER.exception("%r: its failure to store its result was not stored either", h)
                self.final = True
                return FAILURE, error, None
            self.final = True
            return to, value, tb

    def on_done(self, h: Result[Any]) -> None:
        """The outcome of a handle that ended without passing through :meth:`before_end` (revoked
        while queued, or tracked while its end was under way)."""
        with self.lock:
            if self.final:
                return
            st, value, _ = h._ended()
            try:
                self._put(h, self._final(h, st, value), final=True)
            except Exception as exc:
                error = StoreError(f"the result of {self.h_label} could not be stored: {exc!r}")
                try:
                    self._put(h, self._final(h, FAILURE, error), final=True, bounded=False)
                except Exception:
                    LOGGER.exception("%r: its outcome was not stored", h)
            self.final = True

    def _final(self, h: Result[Any], st: State, value: Any) -> dict[str, Any]:
        if st is SUCCESS:
            return self._record(h, st, value)
        if st is FAILURE:
            return self._record(h, st, describe_failure(value))
        return self._record(h, REVOKED, None)


def _finish_recorded(
    h: Result[Any], to: State, value: Any, tb: TracebackType | None
) -> tuple[State, Any, Any]:
    recorder: _Recorder | None = h.__dict__.get("_recorder")
    if recorder is not None and not h.done():
        return recorder.before_end(h, to, value, tb)
    return to, value, tb


class _RecordedOwned(Owned[T]):
    """An owned handle whose outcome is stored before it moves to it (see ResultStore.track)."""

    __slots__ = ()

    def _finish(self, to: State, value: Any, tb: TracebackType | None) -> bool:
        return super()._finish(*_finish_recorded(self, to, value, tb))


class _RecordedWrapped(Wrapped[T]):
    __slots__ = ()

    def _finish(self, to: State, value: Any, tb: TracebackType | None) -> bool:
        return super()._finish(*_finish_recorded(self, to, value, tb))


# -- following ------------------------------------------------------------------------------------


class _Follow:
    """One handle following one stored record."""

    __slots__ = ("h", "ident", "lock", "owner", "seq", "store")

    def __init__(self, store: ResultStore, h: Result[Any], ident: str) -> None:
        self.store, self.h, self.ident = store, h, ident
        self.lock = threading.Lock()
        self.seq = 0
        self.owner = ""

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

    def stop(self) -> None:
        self.stopping = True
        self.wake()
        if self.thread is not threading.current_thread():
            self.thread.join(5)

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
                except Exception:
                    LOGGER.exception("asyncbridge: could not record that %s's owner is gone", f.ident)
                self.wake()


# -- the default store and the store= arguments -------------------------------------------------------

_STORES: dict[str, ResultStore] = {}
_STORES_LOCK = threading.Lock()


def default_url() -> str:
    url = os.environ.get("ASYNCBRIDGE_STORE")
    if url:
        return url
    data = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return "sqlite:///" + os.path.join(data, "asyncbridge", "results.db")


def store_for(store: object) -> ResultStore:
    """The store a ``store=`` argument names: a ResultStore, a URL (one store per URL), or True."""
    if isinstance(store, ResultStore):
        return store
    if store is True:
        store = default_url()
    if not isinstance(store, str):
        raise TypeError(f"store= takes a ResultStore, a store URL or True, not {type(store).__qualname__}")
    with _STORES_LOCK:
        found = _STORES.get(store)
        if found is None:
            found = _STORES[store] = ResultStore(store)
        return found


def lookup(ident: str, store: object = None) -> ResultStore | None:
    """The store to ask for ``ident`` when this process does not know it: the one given, else the
    default store if one is configured or its file exists; None if there is none."""
    if store is not None:
        return store_for(store)
    url = default_url()
    if os.environ.get("ASYNCBRIDGE_STORE") or os.path.exists(url.removeprefix("sqlite:///")):
        return store_for(url)
    return None


def bind_stored(h: Result[Any], ident: str, store: object) -> bool:
    """``Result(ident, store=store)`` for an id this process does not know (see _result)."""
    found = lookup(ident, store)
    if found is None:
        return False
    found._bind(h, ident)
    return True


install_bind_stored(bind_stored)


def _after_fork_in_child() -> None:
    global _STORES_LOCK
    _STORES_LOCK = threading.Lock()
    for s in list(_STORES.values()):
        s._watcher_lock = threading.Lock()
        s._watcher = None  # its thread is the parent's; a new one starts on first need


runtime.add("result stores", after_fork_in_child=_after_fork_in_child)
