"""The listener of :mod:`asyncbridge.contrib.celery`: one daemon thread per Celery app
(``asyncbridge-celery``) that tells every pending handle of the app how its task is doing.

Two ways to learn a task's state, by result backend:

- **Redis** pushes. The backend stores each state and publishes it on the task's channel in one
  transaction. The listener subscribes to the channel of each new task, waits until Redis confirms
  the subscription, and only then reads the stored state back, once, for what was stored before.
  The order matters: Redis does not order commands across connections, so a read sent right after
  a SUBSCRIBE on another connection may run first, and a state stored between the two would reach
  neither (the await would never end). If the read found a state short of an outcome, a PING on
  the pub/sub connection is then a barrier: its answer comes after every message Redis published
  before the read ran, so the read-back never hands over a state older than a message, nor one a
  message brings again (an outcome needs no barrier: it is final). A
  reconnection of the pub/sub connection (ours after an error, or one redis-py makes under us, which
  re-subscribes by itself) is followed by the same: subscribe, confirm, read back every pending
  task. As a safety net, a task still pending :data:`~asyncbridge.contrib.celery.RECHECK_AFTER`
  seconds after it was first watched is read back again, then after twice as long, and so on up to
  :data:`~asyncbridge.contrib.celery.RECHECK_MAX`: push mode can never wait for ever on a state the
  backend holds.
- **Every other backend** is polled, by one loop for all pending tasks of the app, each task on its
  own schedule: every :data:`~asyncbridge.contrib.celery.POLL_INTERVAL` seconds while its state
  changes, less often as it stays unchanged (an eighth of the time since its last change, up to
  :data:`~asyncbridge.contrib.celery.POLL_MAX_INTERVAL`). What one check reads, and how it tells a
  new state from the same one read again (on the file system, with a ``stat()``), is in
  :mod:`asyncbridge.contrib._celery_poll`.

Each state is delivered once: a poll that finds the stored bytes it found before delivers nothing;
Redis delivers every message, equal to the one before or not (each one is a report), and the
read-backs deliver only what no message brought.

All delivery happens on the listener thread, so a handle sees its task's states in order. A handle
that joins a task whose earlier handles were already told something (``AsyncResult(id)`` twice) is
first told the last state delivered, on that thread too.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any, Protocol

from celery import Celery, states
from celery.backends.filesystem import FilesystemBackend
from celery.backends.redis import RedisBackend

from .. import _runtime as runtime
from .._signals import block_signals
from . import _celery_poll as polling

if TYPE_CHECKING:
    from .._result import Result


class Knobs(Protocol):
    """What the listener reads of :mod:`asyncbridge.contrib.celery` (which hands itself over, so that
    this module need not import it): the knobs documented there, and how a state reaches a handle."""

    POLL_INTERVAL: float
    POLL_MAX_INTERVAL: float
    POLL_REREAD_INTERVAL: float
    RECHECK_AFTER: float
    RECHECK_MAX: float
    SWEEP_INTERVAL: float
    RECONNECT_DELAY: float
    REVOKED_SETTLE: float

    def apply_meta(self, h: Result[Any], meta: dict[str, Any], /) -> None: ...


LOGGER = logging.getLogger("asyncbridge")

#: Keys per MGET of a read-back.
_READ_BATCH = 1_000
#: Seconds the pub/sub connection may take to answer a PING before it is taken for dead.
_BARRIER_TIMEOUT = 30.0


class _Resubscribe(Exception):
    """The pub/sub connection was re-established under the listener (redis-py reconnects and
    re-subscribes by itself): what was published meanwhile is lost, so subscribe and read back anew."""


class _Reconnects:
    """Told by the pub/sub connection each time it connects again. A method, since redis-py holds
    connect callbacks weakly; an object per connection, so a pooled connection reused later tells
    nobody."""

    __slots__ = ("__weakref__", "seen")

    def __init__(self) -> None:
        self.seen = False

    def connected(self, _connection: object) -> None:
        self.seen = True


class _Listener:
    """The one thread per app that tells pending handles how their tasks are doing."""

    def __init__(self, app: Celery, api: Knobs) -> None:
        self._api = api  # read when used: a knob set on asyncbridge.contrib.celery takes effect
        self._app = app
        self._backend = app.backend
        self._lock = threading.Lock()
        self._pending: dict[str, list[weakref.ref[Result[Any]]]] = {}
        self._kept: set[Result[Any]] = set()  # handles with callbacks: held until they end
        self._swept = 0.0
        self._new: list[str] = []  # ids to subscribe to (pub/sub) or poll, first read pending
        self._joined: list[tuple[str, weakref.ref[Result[Any]]]] = []  # late handles: see _catch_up
        self._known: dict[str, dict[str, Any]] = {}  # id -> the last state its handles were told
        self._thread: threading.Thread | None = None
        self._push = isinstance(self._backend, RedisBackend)
        self._wake_channel = f"asyncbridge-wake-{id(self):x}"
        self._woken = False  # a wake-up is on its way: later watches need not send another
        self._event = threading.Event()  # polling: wakes the poller early when work arrives
        # The listener thread's own, no lock:
        self._settling: dict[str, tuple[float, dict[str, Any]]] = {}  # id -> (when final, its REVOKED)
        self._raw: dict[str, object] = {}  # push: id -> the stored value last delivered, as stored
        self._heard: set[str] | None = None  # push: ids with a message while a read-back waits
        self._pong: object = None  # push: the data of the last PING answered on the pub/sub connection
        self._polls: dict[str, polling.Polled] = {}
        self._rechecks: dict[
            str, tuple[float, float]
        ] = {}  # push: id -> (when, seconds) of its next safety read
        self._queue: list[tuple[float, int, str]] = []  # heap of (when, n, id): polls or safety reads
        self._count = itertools.count()
        self._sweeps = 0  # sweeps so far: the pub/sub loop looks for ids to unsubscribe after each

    # -- the handles' side ----------------------------------------------------------------------

    def watch(self, h: Result[Any], task_id: str) -> None:
        """Track ``h`` until it ends. Held weakly, as Celery holds its own pending results: a handle
        nobody waits on or keeps is dropped; one with callbacks (or progress observers) is held
        strongly until it ends, since its callbacks must run."""
        ref = weakref.ref(h)
        with self._lock:
            refs = self._pending.get(task_id)
            if refs is None:
                self._pending[task_id] = [ref]
                self._new.append(task_id)
            elif task_id in self._known:  # its other handles were told a state already
                self._joined.append((task_id, ref))
            else:
                refs.append(ref)
            if self._thread is None or not self._thread.is_alive():
                self._start()
            nudge = not self._woken
            self._woken = True
        h._bind_source(pin=self._keep)
        if nudge:  # one wake-up per batch of new watches, not one per watch
            self._nudge()

    def _start(self) -> None:
        """Start the thread; the caller holds the lock."""
        self._thread = threading.Thread(target=self._run, name="asyncbridge-celery", daemon=True)
        self._thread.start()

    def _after_fork_in_child(self) -> None:
        # The thread does not exist in the child, and its lock may have been held at the fork. The
        # tasks do go on (in the cluster), so the child's copies of pending handles are still told:
        # a new thread subscribes to (or polls) every pending id again, and reads each once.
        self._lock = threading.Lock()
        self._event = threading.Event()
        self._woken = False
        self._thread = None
        self._heard = None
        self._new = list(self._pending)
        if self._pending:
            self._start()

    def _keep(self, h: Result[Any]) -> None:
        with self._lock:
            self._kept.add(h)

    def _nudge(self) -> None:
        if not self._push:
            self._event.set()
            return
        try:
            self._backend.client.publish(self._wake_channel, b"")
        except Exception:  # the listener reconnects and resubscribes on its own
            LOGGER.debug("could not wake the Celery listener", exc_info=True)

    # -- delivery (on the listener thread only) ----------------------------------------------------

    def _deliver(self, task_id: str, meta: dict[str, Any], raw: object = None, settled: bool = False) -> None:
        """Tell the handles of ``task_id`` its state ``meta`` (``raw``: as stored, if known)."""
        status = meta.get("status")
        if status in states.READY_STATES:
            if status == states.REVOKED and not settled:
                # Not final yet: the task's own outcome may still land over it (see the docstring of
                # asyncbridge.contrib.celery). _settle_due() decides once REVOKED_SETTLE has passed.
                self._settling.setdefault(task_id, (time.monotonic() + self._api.REVOKED_SETTLE, meta))
                return
            self._settling.pop(task_id, None)
        with self._lock:  # with the snapshot: a handle joining later catches up from here
            refs = self._pending.get(task_id)
            told = self._known.get(task_id)
            if refs is None or (told is not None and told.get("status") in states.READY_STATES):
                return  # no longer watched; or an earlier state read after the outcome
            self._known[task_id] = meta
            if raw is not None:
                self._raw[task_id] = raw
            handles = [h for r in refs if (h := r()) is not None]
        for h in handles:
            self._apply(task_id, h, meta)

    def _apply(self, task_id: str, h: Result[Any], meta: dict[str, Any]) -> None:
        try:
            self._api.apply_meta(h, meta)
        except Exception:
            LOGGER.exception("could not apply the Celery state of task %s to %r", task_id, h)

    def _catch_up(self) -> None:
        """Tell each handle that joined a task already reported on the last state its other handles
        were told, then let it hear what follows. On the listener thread, like every delivery, so
        nothing can come in between."""
        with self._lock:
            joined, self._joined = self._joined, []
            told: list[tuple[str, weakref.ref[Result[Any]], dict[str, Any] | None]] = []
            for task_id, ref in joined:
                refs = self._pending.get(task_id)
                if refs is None:  # its other handles ended and were swept: read the task afresh
                    self._pending[task_id] = [ref]
                    self._new.append(task_id)
                else:
                    refs.append(ref)
                    told.append((task_id, ref, self._known.get(task_id)))
        for task_id, ref, meta in told:
            if meta is not None and (h := ref()) is not None:
                self._apply(task_id, h, meta)

    def _settle_due(self) -> float:
        """End each task whose REVOKED has waited REVOKED_SETTLE: with the outcome the backend now
        holds if the task stored one over the REVOKED, else REVOKED. Returns the seconds until the
        next one is due (at most 1)."""
        if not self._settling:
            return 1.0
        now = time.monotonic()
        due = [(task_id, meta) for task_id, (at, meta) in self._settling.items() if at <= now]
        wait = min((at - now for at, _ in self._settling.values() if at > now), default=1.0)
        for task_id, revoked in due:
            latest = self._backend.get_task_meta(task_id, cache=False)
            if latest.get("status") in (states.SUCCESS, states.FAILURE):
                self._deliver(task_id, latest)
            else:  # REVOKED still, or STARTED again: Celery re-stores it if the child starts before the kill
                self._deliver(task_id, revoked, settled=True)
        return min(wait, 1.0)

    def _fail(self, task_id: str, exc: Exception) -> None:
        with self._lock:
            handles = [h for r in self._pending.pop(task_id, ()) if (h := r()) is not None]
            self._known.pop(task_id, None)
        self._polls.pop(task_id, None)
        self._settling.pop(task_id, None)
        error = ValueError(f"the result backend cannot read the state of task {task_id!r}: {exc}")
        error.__cause__ = exc
        for h in handles:
            h._set_exception(error)

    # -- the thread -------------------------------------------------------------------------------

    def _run(self) -> None:
        block_signals()  # it runs no user code: Ctrl-C is the main thread's
        while True:
            try:
                if self._push:
                    self._listen()
                else:
                    self._poll()
                return
            except _Resubscribe:
                LOGGER.debug("the pub/sub connection of Celery app %r reconnected", self._app.main)
            except Exception:
                LOGGER.warning(
                    "the result backend of Celery app %r is unreachable; retrying",
                    self._app.main,
                    exc_info=True,
                )
                time.sleep(self._api.RECONNECT_DELAY)
            with self._lock:  # subscribe again (or poll at once) and re-read every pending id
                self._new = list(self._pending)

    def _idle(self) -> bool:
        """Sweep now and then; True (the thread ends) once nothing is pending."""
        with self._lock:
            now = time.monotonic()
            if now - self._swept >= self._api.SWEEP_INTERVAL:
                self._swept = now
                self._forget_dead()
            if not self._pending and not self._joined:
                self._thread = None
                self._queue.clear()
                return True
            return False

    def _forget_dead(self) -> None:
        """Drop handles that ended or were garbage-collected, and what the thread knew of tasks left
        with none; the caller is the listener thread, holding the lock."""
        for task_id in list(self._pending):
            alive = [r for r in self._pending[task_id] if (h := r()) is not None and not h.done()]
            if alive:
                self._pending[task_id] = alive
            else:
                del self._pending[task_id]
                self._known.pop(task_id, None)
                self._raw.pop(task_id, None)
                self._polls.pop(task_id, None)
                self._rechecks.pop(task_id, None)
                self._settling.pop(task_id, None)
        self._kept = {h for h in self._kept if not h.done()}
        self._sweeps += 1

    def _take_new(self) -> list[str]:
        with self._lock:
            new, self._new = self._new, []
            self._woken = False
        return new

    # -- push: Redis pub/sub --------------------------------------------------------------------

    def _listen(self) -> None:
        backend = self._backend
        pubsub = backend.client.pubsub()  # subscribe confirmations wanted: they gate the read-back
        reconnects = _Reconnects()
        wake = self._wake_channel.encode()
        channels: dict[bytes, str] = {}  # the channel of each subscribed task -> its id
        # SUBSCRIBE commands sent, in order: (channels Redis has not confirmed yet, ids to read back)
        batches: list[tuple[set[bytes], list[str]]] = [({wake}, [])]
        swept = self._sweeps
        try:
            pubsub.subscribe(wake)
            pubsub.connection.register_connect_callback(reconnects.connected)
            while not self._idle():
                self._catch_up()
                new = self._take_new()
                gone: list[bytes] = []
                if swept != self._sweeps:  # what is pending changed
                    swept = self._sweeps
                    with self._lock:
                        gone = [key for key, task_id in channels.items() if task_id not in self._pending]
                if gone:
                    pubsub.unsubscribe(*gone)
                    for key in gone:
                        del channels[key]
                if new:
                    keys = [_bytes(backend.get_key_for_task(t)) for t in new]
                    pubsub.subscribe(*keys)
                    channels.update(zip(keys, new, strict=True))
                    batches.append((set(keys), new))
                    for task_id in new:
                        self._recheck_in(task_id, self._api.RECHECK_AFTER)
                wait = min(self._settle_due(), self._next_due() - time.monotonic())
                taken = self._take(pubsub, channels, batches, max(wait, 0.0))
                while taken:
                    taken = self._take(pubsub, channels, batches, 0.0)
                if reconnects.seen:
                    raise _Resubscribe
                confirmed: list[str] = []
                while batches and not batches[0][0]:
                    confirmed += batches.pop(0)[1]
                wanted = dict.fromkeys(confirmed + self._rechecks_due())
                ids = [t for t in wanted if _bytes(backend.get_key_for_task(t)) in channels]
                if ids:
                    self._read_back(pubsub, channels, batches, ids, reconnects)
        finally:
            pubsub.close()

    def _take(
        self,
        pubsub: Any,
        channels: dict[bytes, str],
        batches: list[tuple[set[bytes], list[str]]],
        timeout: float,
    ) -> bool:
        """Handle the next message of the pub/sub connection, waiting up to ``timeout`` for it; False
        if none came."""
        message = pubsub.get_message(timeout=timeout)
        if message is None:
            return False
        kind, channel = message["type"], message["channel"]
        if kind == "message":
            task_id = channels.get(_bytes(channel)) if channel is not None else None
            if task_id is not None:  # not the wake channel, nor a task unsubscribed from meanwhile
                raw = message["data"]
                if self._heard is not None:
                    self._heard.add(task_id)
                self._deliver(task_id, self._backend.decode_result(raw), raw)
        elif kind == "subscribe":  # confirmations come in the order of the SUBSCRIBE commands
            key = _bytes(channel)
            for waiting, _ids in batches:
                if key in waiting:
                    waiting.discard(key)
                    break
        elif kind == "pong":
            self._pong = message["data"]
        return True

    def _read_back(
        self,
        pubsub: Any,
        channels: dict[bytes, str],
        batches: list[tuple[set[bytes], list[str]]],
        ids: list[str],
        reconnects: _Reconnects,
    ) -> None:
        """Read the stored state of ``ids`` (subscribed, confirmed) and deliver what no message
        brought: see the module docstring for why the PING."""
        backend = self._backend
        stored: list[Any] = []
        for i in range(0, len(ids), _READ_BATCH):
            stored += backend.mget([backend.get_key_for_task(t) for t in ids[i : i + _READ_BATCH]])
        later: list[tuple[str, object, dict[str, Any]]] = []
        for task_id, raw in zip(ids, stored, strict=True):
            if raw is None or raw == self._raw.get(task_id):  # nothing stored, or what was delivered
                continue
            meta = backend.decode_result(raw)
            if meta.get("status") in states.READY_STATES:
                # An outcome needs no barrier: a message still on its way can only bring an earlier
                # state, which a handle that ended ignores (and so does _deliver).
                self._deliver(task_id, meta, raw)
            else:
                later.append((task_id, raw, meta))
        if not later:
            return
        token = f"asyncbridge-barrier-{next(self._count)}".encode()
        heard: set[str] = set()
        self._heard = heard
        try:
            pubsub.ping(token)
            deadline = time.monotonic() + _BARRIER_TIMEOUT
            while _bytes(self._pong) != token:
                if reconnects.seen:
                    raise _Resubscribe
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ConnectionError("Redis did not answer a PING on the pub/sub connection")
                self._take(pubsub, channels, batches, left)
        finally:
            self._heard = None
        for task_id, raw, meta in later:
            if task_id not in heard:  # else a message since the read brought this state or a later one
                self._deliver(task_id, meta, raw)

    def _recheck_in(self, task_id: str, seconds: float) -> None:
        when = time.monotonic() + seconds
        self._rechecks[task_id] = (when, seconds)
        heapq.heappush(self._queue, (when, next(self._count), task_id))

    def _next_due(self) -> float:
        return self._queue[0][0] if self._queue else time.monotonic() + 1.0

    def _rechecks_due(self) -> list[str]:
        """The pending ids due for a safety read, with those due soon (so that they come in batches);
        each one's next read is scheduled twice as far, up to RECHECK_MAX."""
        now = time.monotonic()
        if not self._queue or self._queue[0][0] > now:
            return []
        soon = now + self._api.RECHECK_AFTER / 4
        due: list[tuple[str, float]] = []
        while self._queue and self._queue[0][0] <= soon:
            when, _, task_id = heapq.heappop(self._queue)
            scheduled = self._rechecks.get(task_id)
            if scheduled is not None and scheduled[0] == when:  # else: no longer pending, or rescheduled
                due.append((task_id, scheduled[1]))
        for task_id, seconds in due:  # after the loop, whatever the knobs: it must end
            self._recheck_in(task_id, min(2 * seconds, self._api.RECHECK_MAX))
        return [task_id for task_id, _ in due]

    # -- polling: every other backend -----------------------------------------------------------

    def _poll(self) -> None:
        api = self._api
        while not self._idle():
            self._event.clear()  # before taking new ids: a watch from now on wakes the wait below
            self._catch_up()
            now = time.monotonic()
            for task_id in self._take_new():  # new, or read again after a reconnect: due at once
                p = self._polls.get(task_id)
                if p is None:
                    p = self._polls[task_id] = polling.Polled(now)
                self._schedule(task_id, p, now)
            due: list[str] = []
            while self._queue and self._queue[0][0] <= now:
                when, _, task_id = heapq.heappop(self._queue)
                p = self._polls.get(task_id)
                if p is not None and p.due == when:  # else: no longer pending, or scheduled anew
                    due.append(task_id)
            if due:
                self._check(due, now)
            wait = min(self._settle_due(), self._next_due() - time.monotonic(), api.POLL_MAX_INTERVAL)
            self._event.wait(max(wait, 0.0))

    def _schedule(self, task_id: str, p: polling.Polled, when: float) -> None:
        p.due = when
        heapq.heappush(self._queue, (when, next(self._count), task_id))

    def _later(self, task_id: str, p: polling.Polled, now: float) -> None:
        """Check it again soon if its state changed lately, less often the longer it stays unchanged."""
        api = self._api
        interval = min(api.POLL_MAX_INTERVAL, max(api.POLL_INTERVAL, (now - p.changed) / 8))
        self._schedule(task_id, p, now + interval)

    def _check(self, due: list[str], now: float) -> None:
        """Check each due task; deliver each changed state. An error for every id read means the
        backend is down (raised: the thread reconnects and reads everything again); otherwise it is
        the failing ids' own, and fails their handles."""
        backend = self._backend
        files = isinstance(backend, FilesystemBackend)
        reachable, quiet_dir = polling.directory(backend) if files else (False, None)
        unreadable: list[tuple[str, Exception]] = []
        for task_id in dict.fromkeys(due):
            p = self._polls.get(task_id)
            if p is None:  # failed meanwhile
                continue
            try:
                if files:
                    meta = polling.read_file(
                        backend, task_id, p, now, quiet_dir, self._api.POLL_REREAD_INTERVAL
                    )
                else:
                    meta = polling.read_store(backend, task_id, p)
            except polling.Unreadable as error:  # its file holds what cannot be decoded: its own problem
                cause = error.__cause__
                self._fail(task_id, cause if isinstance(cause, Exception) else error)
                continue
            except Exception as error:
                unreadable.append((task_id, error))
                self._schedule(task_id, p, now + self._api.POLL_INTERVAL)
                continue
            if meta is not None:
                p.changed = now
                self._deliver(task_id, meta)
            self._later(task_id, p, now)
        if not unreadable:
            return
        # Nothing read at all: the backend, or these ids? The results directory answers that, or
        # another pending id.
        if len(unreadable) == len(due) and not reachable and not self._other_reads(due):
            raise unreadable[0][1]  # the backend is down: reconnect, read everything again
        for task_id, problem in unreadable:
            self._fail(task_id, problem)

    def _other_reads(self, tried: list[str]) -> bool:
        """True if the backend reads a pending id other than ``tried`` (False if there is none)."""
        skip = set(tried)
        probe = next((t for t in self._polls if t not in skip), None)
        if probe is None:
            return False
        try:
            self._backend.get_task_meta(probe, cache=False)
        except Exception:
            return False
        return True


def _bytes(value: object) -> bytes:
    """A channel name or key as redis-py gives it (bytes, or str with ``decode_responses``), as bytes."""
    return value.encode() if isinstance(value, str) else value if isinstance(value, bytes) else b""


_LISTENERS: weakref.WeakKeyDictionary[Celery, _Listener] = weakref.WeakKeyDictionary()
_LISTENERS_LOCK = threading.Lock()


def _after_fork_in_child() -> None:
    global _LISTENERS_LOCK
    _LISTENERS_LOCK = threading.Lock()
    for listener in list(_LISTENERS.values()):
        listener._after_fork_in_child()


runtime.add("celery listeners", after_fork_in_child=_after_fork_in_child)


def listener_for(app: Celery, api: Knobs) -> _Listener:
    """The listener of ``app``, made on first use, reading its knobs from ``api``."""
    with _LISTENERS_LOCK:
        listener = _LISTENERS.get(app)
        if listener is None:
            listener = _LISTENERS[app] = _Listener(app, api)
        return listener
