"""The Redis result store: ``redis://host:port/db`` and ``rediss://`` (TLS), for processes on any
number of hosts (``asyncbridge[redis]``: redis-py 5 or later; any Redis server from 4.0).

Importing this module serves both schemes (:func:`asyncbridge._store.register_backend`); the
``asyncbridge.stores`` entry points import it on first use of such a URL. A Redis store needs a
signing key (``?key=...`` in the URL, ``key=``, or ``ASYNCBRIDGE_STORE_KEY``): every process that
reaches the server reads its records. The other query parameters of the URL are redis-py's
(``socket_timeout=``, ``ssl_cert_reqs=``, ...).

- **One hash per result.** ``asyncbridge:result:<id>`` holds ``record`` (the signed bytes),
  ``final``, ``owner``, ``cancel`` and ``expires_at``. Every write is one Lua script, so atomic: a
  writer killed mid-way leaves the previous record or the new one; storing an observer's verdict
  on a dead owner (:meth:`RedisBackend.put_if_not_final`) and a cancel request
  (:meth:`RedisBackend.request_cancel`) check ``final`` and write in the same step.
- **Expiry is Redis's own.** A final record with an expiry gets ``PEXPIREAT`` at its time, so
  Redis removes it by itself, and in the same script a tombstone ``asyncbridge:gone:<id>`` =
  ``expired`` that outlives it by :data:`GONE_KEPT`: an id read after its record went says why.
  :meth:`~RedisBackend.forget` deletes the record and makes the tombstone ``forgotten`` (also
  kept :data:`GONE_KEPT`). A read also treats a record whose time has passed (by the reader's
  clock) as expired, as the SQLite store does, whatever the server's clock says.
- **Woken by pub/sub, not polled.** Each write publishes the id on ``asyncbridge:results:<db>``
  in its script. :meth:`~RedisBackend.listen` subscribes a connection of its own, and returns once
  Redis has confirmed the subscription (so a record read after it is never older than the next
  message); the watcher thread selects on that connection's socket, and wakes within the time of
  one message after any write by any process. It also reads again every ``RECHECK`` second, so a
  lost message (a dropped connection) delays a record, never loses it.
- **Bounded when Redis is down.** Every call raises :class:`~asyncbridge._store.StoreError` (naming
  the server and the cause) instead of hanging: a connection attempt gives up after
  :data:`CONNECT_TIMEOUT`, a reply after :data:`SOCKET_TIMEOUT`, and a command is tried
  ``1 +`` :data:`RETRIES` times (a pooled connection that the server closed, after a restart for
  instance, costs one retry, not an error). The pub/sub connection reconnects on its own (see
  :class:`_Listener`); when the server is back, the store works again, with nothing to restart.
  A server that restarts without persistence has lost its records: their ids are then unknown
  (said so to anyone following them).

Limits: an owner on another host cannot be checked from here, so work whose process died there is
not failed with ``WorkerCrashed`` (its followers wait: give them a timeout); only owners on the
reader's own host are. ``purge()`` has nothing to do (always 0). Redis Cluster is not supported
(the keys of one id, and the scripts, assume one server).
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

try:
    import redis
    from redis.backoff import NoBackoff
    from redis.exceptions import (
        ConnectionError as RedisConnectionError,
        RedisError,
        TimeoutError as RedisTimeoutError,
    )
    from redis.retry import Retry
except ImportError as exc:  # pragma: no cover - exercised without the extra installed
    raise ImportError("the redis:// result store needs redis-py: pip install 'asyncbridge[redis]'") from exc

from .._store import StoreError, register_backend

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from redis.client import PubSub
    from redis.commands.core import Script

__all__ = ["CONNECT_TIMEOUT", "GONE_KEPT", "RECONNECT_DELAY", "RETRIES", "SOCKET_TIMEOUT", "RedisBackend"]

T = TypeVar("T")

LOGGER = logging.getLogger("asyncbridge")

#: Seconds to establish a connection before the call fails (a URL's ``socket_connect_timeout=`` wins).
CONNECT_TIMEOUT = 2.0
#: Seconds to wait for a reply before the call fails (a URL's ``socket_timeout=`` wins).
SOCKET_TIMEOUT = 5.0
#: Retries of a command after a connection error (on a new connection, at once). Every write here can
#: run twice without harm, so a retry after a lost reply is safe (a put_if_not_final run twice answers
#: False the second time; the store does not act on that answer).
RETRIES = 1
#: Seconds between two attempts of a watcher to subscribe again while Redis is unreachable.
RECONNECT_DELAY = 1.0
#: How long the ids gone (forgotten, expired) are remembered, for an answer that says which.
GONE_KEPT = 7 * 24 * 3600.0

PREFIX = "asyncbridge:"
#: Messages a drain takes at most: a store written without pause must not keep the watcher from
#: reading (the socket stays readable, so the next wait returns at once for the rest).
_DRAIN_MAX = 10_000

# Each write is one script: atomic, and since Redis runs one command at a time, no subscriber can act
# on its PUBLISH before it has ended (a reader woken by it sees the write). KEYS: the record, its
# tombstone. ARGV: record, final, owner, expires_at (text, '' for none), its PEXPIREAT in ms, the
# tombstone's PEXPIREAT in ms, channel, id. HSET keeps a cancel request already made (as SQLite's
# upsert keeps its column); a record without expiry must not inherit one from an earlier write.
_WRITE = """
redis.call('HSET', KEYS[1], 'record', ARGV[1], 'final', ARGV[2], 'owner', ARGV[3], 'expires_at', ARGV[4])
if ARGV[5] == '' then
    redis.call('PERSIST', KEYS[1])
    redis.call('DEL', KEYS[2])
else
    redis.call('SET', KEYS[2], 'expired')
    redis.call('PEXPIREAT', KEYS[2], ARGV[6])
    redis.call('PEXPIREAT', KEYS[1], ARGV[5])
end
redis.call('PUBLISH', ARGV[7], ARGV[8])
return 1
"""
_PUT = _WRITE
_PUT_IF_NOT_FINAL = "if redis.call('HGET', KEYS[1], 'final') ~= '0' then return 0 end\n" + _WRITE
# KEYS: the record. ARGV: channel, id.
_REQUEST_CANCEL = """
if redis.call('HGET', KEYS[1], 'final') ~= '0' then return 0 end
redis.call('HSET', KEYS[1], 'cancel', '1')
redis.call('PUBLISH', ARGV[1], ARGV[2])
return 1
"""
# KEYS: the record, its tombstone. ARGV: the tombstone's life in ms, channel, id.
_FORGET = """
redis.call('DEL', KEYS[1])
redis.call('SET', KEYS[2], 'forgotten', 'PX', ARGV[1])
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1
"""


def _redis_url(url: str) -> str:
    """``url`` for redis-py: without the store's own ``key`` parameter (redis-py would pass it to the
    connection), nor a ``decode_responses`` (records are bytes)."""
    parts = urlsplit(url)
    query = [
        (k, v)
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
        if k not in ("key", "decode_responses")
    ]
    return urlunsplit(parts._replace(query=urlencode(query)))


def _where(url: str) -> str:
    """``url`` fit for a message: no password, no query (the key)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))


def _ms(seconds: float) -> int:
    return math.ceil(seconds * 1000)


class RedisBackend:
    """The records of one Redis database. Thread-safe (redis-py's connection pool).

    Every method raises :class:`~asyncbridge._store.StoreError` when Redis cannot be reached or
    refuses the command, within the bounds of the module's docstring; none hangs.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.where = _where(url)
        plain = _redis_url(url)
        try:
            self._client = redis.Redis.from_url(
                plain,
                retry=Retry(NoBackoff(), RETRIES),
                socket_connect_timeout=CONNECT_TIMEOUT,
                socket_timeout=SOCKET_TIMEOUT,
            )
            # Pub/sub on a pool of its own, never retried by redis-py: a dropped subscription is
            # re-made by _Listener, which waits for the confirmation before anything is read again.
            # Its reads never block (drain), so a short timeout bounds only the (re)subscribing, which
            # runs on the watcher thread.
            self._pubsub_client = redis.Redis.from_url(
                plain,
                retry=Retry(NoBackoff(), 0),
                socket_connect_timeout=CONNECT_TIMEOUT,
                socket_timeout=CONNECT_TIMEOUT,
            )
        except ValueError as exc:
            raise ValueError(f"not a Redis store URL: {self.where!r} ({exc})") from exc
        db = self._client.connection_pool.connection_kwargs.get("db", 0)
        # Per database: channels are server-wide, and a store in another database is not ours.
        self.channel = f"{PREFIX}results:{db}"
        self._put_script: Script = self._client.register_script(_PUT)
        self._put_if_not_final_script: Script = self._client.register_script(_PUT_IF_NOT_FINAL)
        self._request_cancel_script: Script = self._client.register_script(_REQUEST_CANCEL)
        self._forget_script: Script = self._client.register_script(_FORGET)

    def __repr__(self) -> str:
        return f"<RedisBackend {self.where}>"

    @staticmethod
    def record_key(ident: str) -> str:
        return f"{PREFIX}result:{ident}"

    @staticmethod
    def gone_key(ident: str) -> str:
        return f"{PREFIX}gone:{ident}"

    def _call(self, doing: str, call: Callable[[], T]) -> T:
        """``call()``, its Redis errors raised as StoreError (with the server and the cause)."""
        try:
            return call()
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise StoreError(f"the Redis store {self.where} cannot be reached ({doing}): {exc}") from exc
        except RedisError as exc:
            raise StoreError(f"the Redis store {self.where} failed ({doing}): {exc}") from exc

    # -- writing ----------------------------------------------------------------------------------

    def _write_args(
        self, ident: str, record: bytes, final: bool, owner: str, expires_at: float | None
    ) -> list[Any]:
        if expires_at is None:
            return [record, int(final), owner, "", "", "", self.channel, ident]
        at = _ms(expires_at)
        return [record, int(final), owner, repr(expires_at), at, at + _ms(GONE_KEPT), self.channel, ident]

    def put(self, ident: str, record: bytes, *, final: bool, owner: str, expires_at: float | None) -> None:
        """Store ``record`` as the latest of ``ident``, keeping a cancel request already made; with
        ``expires_at``, Redis removes it then (and its id says "expired" for :data:`GONE_KEPT`)."""
        keys = [self.record_key(ident), self.gone_key(ident)]
        args = self._write_args(ident, record, final, owner, expires_at)
        self._call("write", lambda: self._put_script(keys=keys, args=args))

    def put_if_not_final(self, ident: str, record: bytes, *, owner: str, expires_at: float | None) -> bool:
        """Store a final ``record`` unless one is there already (an observer ending the work of an
        owner that is gone must not overwrite the owner's own last word); atomic."""
        keys = [self.record_key(ident), self.gone_key(ident)]
        args = self._write_args(ident, record, True, owner, expires_at)
        return bool(self._call("write", lambda: self._put_if_not_final_script(keys=keys, args=args)))

    def request_cancel(self, ident: str) -> bool:
        """Ask the owner of ``ident`` to stop it; False if there is no such unfinished record."""
        keys = [self.record_key(ident)]
        args = [self.channel, ident]
        return bool(self._call("cancel", lambda: self._request_cancel_script(keys=keys, args=args)))

    def forget(self, ident: str) -> None:
        """Delete the record of ``ident``; its id says "forgotten" for :data:`GONE_KEPT`."""
        keys = [self.record_key(ident), self.gone_key(ident)]
        args: list[int | str] = [_ms(GONE_KEPT), self.channel, ident]
        self._call("forget", lambda: self._forget_script(keys=keys, args=args))

    def purge(self, now: float) -> int:
        """Nothing to do: Redis removes each expired record (and tombstone) at its time by itself.
        Always 0 (a count would need a SCAN of the whole database, for no effect)."""
        return 0

    # -- reading ----------------------------------------------------------------------------------

    def get(self, ident: str, now: float) -> tuple[bytes | None, str | None]:
        """``(record, None)``, or ``(None, why)``: "expired", "forgotten", or None if never known."""

        def read() -> list[Any]:
            pipe = self._client.pipeline(transaction=True)  # one snapshot of both keys
            pipe.hmget(self.record_key(ident), ["record", "expires_at"])
            pipe.get(self.gone_key(ident))
            return pipe.execute()

        (record, expires_at), gone = self._call("read", read)
        if record is not None:
            if not expires_at or float(expires_at) > now:
                return bytes(record), None
            return None, "expired"  # its time passed by this clock; Redis may not have removed it yet
        return None, None if gone is None else bytes(gone).decode()

    def get_many(self, idents: Iterable[str]) -> dict[str, tuple[bytes, str, bool]]:
        """``id -> (record, owner, cancel requested)`` for those of ``idents`` that are stored."""
        batch = list(idents)
        found: dict[str, tuple[bytes, str, bool]] = {}
        for i in range(0, len(batch), 1000):  # one round trip per thousand ids
            chunk = batch[i : i + 1000]

            def read(chunk: list[str] = chunk) -> list[Any]:
                pipe = self._client.pipeline(transaction=False)
                for ident in chunk:
                    pipe.hmget(self.record_key(ident), ["record", "owner", "cancel"])
                return pipe.execute()

            for ident, (record, owner, cancel) in zip(chunk, self._call("read", read), strict=True):
                if record is not None:
                    found[ident] = (bytes(record), bytes(owner or b"").decode(), cancel == b"1")
        return found

    # -- waking waiters ---------------------------------------------------------------------------

    def listen(self) -> _Listener:
        """What wakes after each write by any process (select() on it); the caller closes it.

        Subscribed (and confirmed by Redis) when this returns, unless Redis cannot be reached: then
        it logs a warning instead of raising, and the watcher's drain() tries again every
        :data:`RECONNECT_DELAY` until Redis answers (see :class:`_Listener`); the watcher's reads
        meanwhile fail, and are tried again, at the same pace."""
        return _Listener(self)

    def _subscribe(self) -> PubSub:
        """A new pub/sub connection subscribed to the channel, once Redis confirmed it."""
        pubsub = self._pubsub_client.pubsub()
        try:
            pubsub.subscribe(self.channel)
            deadline = time.monotonic() + CONNECT_TIMEOUT
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RedisTimeoutError("Redis did not confirm the subscription")
                message = pubsub.get_message(timeout=left)
                if message is not None and message["type"] == "subscribe":
                    return pubsub
        except BaseException:
            _close_quietly(pubsub)
            raise

    def close(self) -> None:
        """Close the idle connections (a later call opens new ones)."""
        self._client.close()
        self._pubsub_client.close()


class _Listener:
    """One pub/sub subscription to the store's channel, for the watcher thread of one process.

    ``fileno()`` is the subscribed connection's socket: readable once a message (or the end of the
    connection) is there. ``drain()`` takes every message already received, without blocking. A
    connection that ends (Redis stopped, restarted, or a network cut) is noticed there, logged at
    warning, and replaced at once by a new subscription; drain() never raises for that. While Redis
    cannot be reached, ``fileno()`` is a pipe that is always readable, and each drain() makes one
    attempt, :data:`RECONNECT_DELAY` after the previous one (sleeping the rest of it, on the watcher
    thread, which has nothing else it could do without Redis). After a successful one, the watcher
    reads every record it follows at once: what was written while the connection was down is read
    then, not lost.

    Used by one thread (the watcher's), except :attr:`subscribed`, which any thread may wait on.
    """

    def __init__(self, backend: RedisBackend) -> None:
        self._backend = backend
        self._pubsub: PubSub | None = None
        self._next_attempt = 0.0
        self._down_since: float | None = None
        self._closed = False
        # Never read, so readable for ever: what select() sees while there is no connection.
        self._ready_r, self._ready_w = os.pipe()
        os.write(self._ready_w, b"!")
        #: Set while a confirmed subscription is up.
        self.subscribed = threading.Event()
        #: Subscriptions made so far (the first one, then one per reconnection).
        self.subscriptions = 0
        self._connect()

    def _connect(self) -> None:
        try:
            pubsub = self._backend._subscribe()
        except (RedisError, OSError) as exc:
            self._next_attempt = time.monotonic() + RECONNECT_DELAY
            if self._down_since is None:
                self._down_since = time.monotonic()
                LOGGER.warning(
                    "asyncbridge: cannot subscribe to the Redis store %s (%s); trying again every %s s",
                    self._backend.where,
                    exc,
                    RECONNECT_DELAY,
                )
            else:
                LOGGER.debug(
                    "asyncbridge: the Redis store %s is still unreachable: %s", self._backend.where, exc
                )
            return
        self._pubsub = pubsub
        self.subscriptions += 1
        self.subscribed.set()
        if self._down_since is not None:
            LOGGER.warning(
                "asyncbridge: the Redis store %s answers again: subscribed after %.1f s",
                self._backend.where,
                time.monotonic() - self._down_since,
            )
            self._down_since = None

    def _lost(self, exc: BaseException) -> None:
        LOGGER.warning(
            "asyncbridge: the pub/sub connection to the Redis store %s ended (%s); subscribing again",
            self._backend.where,
            exc,
        )
        self.subscribed.clear()
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            _close_quietly(pubsub)
        self._down_since = time.monotonic()

    def fileno(self) -> int:
        """The socket of the subscription; an always-readable pipe while there is none."""
        pubsub = self._pubsub
        connection = pubsub.connection if pubsub is not None else None
        # redis-py has no public accessor for the socket; _sock is None once it disconnected.
        sock = getattr(connection, "_sock", None)
        fd = sock.fileno() if sock is not None else -1
        return fd if fd >= 0 else self._ready_r

    def drain(self) -> None:
        """Take the messages received (their content does not matter: the watcher reads every record
        it follows after this); reconnect if the connection ended. Never raises for Redis."""
        if self._closed:
            return
        pubsub = self._pubsub
        if pubsub is None:
            wait = self._next_attempt - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            self._connect()
            return
        try:
            if getattr(pubsub.connection, "_sock", None) is None:  # None too if there is no connection
                raise RedisConnectionError("the connection was closed")
            for _ in range(_DRAIN_MAX):
                if pubsub.get_message(timeout=0.0) is None:
                    break
        except (RedisError, OSError) as exc:
            self._lost(exc)
            self._connect()  # at once: a cut connection to a server still up is back in one round trip

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.subscribed.clear()
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            _close_quietly(pubsub)
        os.close(self._ready_r)
        os.close(self._ready_w)


def _close_quietly(pubsub: PubSub) -> None:
    try:
        pubsub.close()
    except (RedisError, OSError):
        pass  # its connection is gone already: nothing left to close


register_backend("redis", RedisBackend)
register_backend("rediss", RedisBackend)
