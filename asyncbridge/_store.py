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
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar
from urllib.parse import parse_qs, urlsplit

from . import _runtime as runtime
from ._by_id import install_bind_stored
from ._errors import StoreError as StoreError, UnknownResult
from ._process import shared_pool
from ._result import Owned, Result, Wrapped
from ._store_follow import _Follow, _gone_reason, _Watcher
from ._store_record import _RecordedOwned, _RecordedWrapped, _Recorder
from ._threads import start_in_thread
from ._validate import optional_seconds

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["ResultStore", "StoreError"]

T = TypeVar("T")
P = ParamSpec("P")

LOGGER = logging.getLogger("asyncbridge")

#: The default limit on one stored record (the pickled value or error, with the state's data).
MAX_SIZE = 32 * 1024 * 1024
_MAC = 32  # bytes of an HMAC-SHA256

GROUP = "asyncbridge.stores"


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
        _ALL.add(self)
        self._watcher_lock = threading.Lock()
        self._last_purge = 0.0

    def __repr__(self) -> str:
        p = urlsplit(self.url)  # no password, no key: reprs end up in logs
        return f"<ResultStore {p.scheme}://{p.netloc.rpartition('@')[2]}{p.path}>"

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


# -- the default store and the store= arguments -------------------------------------------------------

_STORES: dict[str, ResultStore] = {}
_ALL: weakref.WeakSet[ResultStore] = weakref.WeakSet()  # every store of this process, for exit
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


def store_arguments(store: object, expires: object, caller: str) -> tuple[ResultStore | None, float | None]:
    """The ``store=`` and ``expires=`` of ``caller`` (``spawn()``, a task): the store (None for
    None or False) and the seconds; ``expires=`` without a store is a ValueError."""
    recorder = None if store is None or store is False else store_for(store)
    until = optional_seconds(expires, "expires", positive=True)
    if until is not None and recorder is None:
        raise ValueError(f"expires= is for stored results: give {caller} a store= too")
    return recorder, until


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


def _stop_watchers(grace: float) -> None:
    """Interpreter exit: each watcher ends and removes its socket (a directory of sockets of ended
    processes would otherwise pile up in the temporary directory)."""
    deadline = time.monotonic() + grace
    for s in list(_ALL):
        w = s._watcher
        if w is not None:
            w.stop(max(0.0, deadline - time.monotonic()))


runtime.add("result stores", stop=_stop_watchers, after_fork_in_child=_after_fork_in_child)
