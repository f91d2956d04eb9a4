"""Celery results through the asyncbridge handle, and Celery as an engine for ``@task``.

Install with ``pip install asyncbridge[celery]``; this module is imported only when a Celery
object is first wrapped, so ``import asyncbridge`` never imports Celery.

How a handle learns about its task. Every pending handle of one app registers with that app's
single *listener* (a daemon thread, ``asyncbridge-celery``), so awaiting 10,000 results uses one
thread, not 10,000:

- with a Redis result backend the listener subscribes to each task's result channel (the backend
  publishes every state it stores there: STARTED, PROGRESS, RETRY, the outcome), and reads the
  stored state once after subscribing, so nothing stored before the subscription is missed;
- with any other backend (the file system, a database, a cache) it polls the stored state of every
  pending task, every :data:`POLL_INTERVAL` seconds, in one loop.

State maps one to one: PENDING (and RECEIVED), STARTED, RETRY (``info`` is the error), PROGRESS and
custom states (``state`` is their own name, ``info`` their meta), SUCCESS, FAILURE (the exception
rebuilt by Celery, with the worker's traceback text as its ``__cause__``), REVOKED (the usual
cancellation errors, with Celery's ``TaskRevokedError`` as their ``__cause__``).

``handle.cancel()`` revokes the task with ``terminate=True``: a prefork worker kills the child
running it (other pools cannot stop a running task, which Celery still marks REVOKED). A REVOKED is
final only after :data:`REVOKED_SETTLE` seconds: Celery's worker stores REVOKED as it handles the
revoke, but the task may still run and store its own outcome over it (a child that finished just
before the kill, or a task the worker had already handed to a child when it marked it revoked: it
then stores STARTED, and SUCCESS or nothing). An outcome the task stored in that time wins, so a
value it produced is never lost to the race; otherwise the handle ends REVOKED, even if Celery's
backend is left saying STARTED (a child killed just after it stored that).

In a process forked while handles are pending, a new listener thread picks them up (the tasks run
in the cluster, not in the parent); at interpreter exit the daemon listener simply stops.

Celery's own rule holds for ``get()`` inside a running task (``RuntimeError``, unless the task
allows it with ``celery.result.allow_join_result()``). Bad input fails at the call: a task id the
backend cannot key, an argument the app's serializer cannot encode (``TypeError`` naming it), a
function the worker could not import (a lambda or nested function) given to ``@task(engine=app)``;
an id that a working poller cannot read fails only its handle.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import os
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any

from celery import Celery, states
from celery.backends.base import DisabledBackend
from celery.backends.filesystem import FilesystemBackend
from celery.backends.redis import RedisBackend
from celery.exceptions import (
    SoftTimeLimitExceeded,
    TaskRevokedError,
    TimeLimitExceeded as CeleryTimeLimitExceeded,
)
from celery.result import AsyncResult, GroupResult, ResultSet, task_join_will_block
from kombu.exceptions import EncodeError
from kombu.serialization import dumps

from .._errors import RemoteTraceback, TimeLimitExceeded
from .._result import Result
from .._signals import block_signals
from .._state import _TERMINAL, PENDING, PROGRESS, RETRY, REVOKED, STARTED

if TYPE_CHECKING:
    from collections.abc import Iterable

LOGGER = logging.getLogger("asyncbridge")

#: Seconds between two reads of pending tasks' states, for result backends that cannot push.
POLL_INTERVAL = 0.05
#: Seconds between two sweeps of handles that ended or were dropped.
SWEEP_INTERVAL = 1.0
#: Seconds between reconnection attempts when the result backend is unreachable.
RECONNECT_DELAY = 0.5
#: Seconds a REVOKED waits for the task's own outcome before it is final.
REVOKED_SETTLE = 0.25


class _CeleryGuard:
    """Celery's rule for blocking waits, applied by the handle's ``get()``: like Celery's own
    ``AsyncResult.get()``, even when the result is already there."""

    __slots__ = ()

    check_even_when_done = True

    def check_can_block(self) -> None:
        if task_join_will_block():
            raise RuntimeError(
                "get() was called inside a running Celery task, which can deadlock the worker pool "
                "(Celery's rule: 'Never call result.get() within a task!'). Chain the tasks instead, "
                "or wrap the call in celery.result.allow_join_result() if you are sure."
            )


_GUARD = _CeleryGuard()


def _rebuild_failure(meta: dict[str, Any]) -> BaseException:
    exc = meta.get("result")
    if not isinstance(exc, BaseException):
        exc = RuntimeError(f"the Celery task failed with {exc!r}")
    if isinstance(exc, CeleryTimeLimitExceeded | SoftTimeLimitExceeded):
        limit = TimeLimitExceeded(f"the Celery task exceeded its time limit: {exc}")
        limit.__cause__ = exc
        exc = limit
    text = meta.get("traceback")
    if text and exc.__cause__ is None:
        exc.__cause__ = RemoteTraceback(text)
    return exc


def apply_meta(h: Result[Any], meta: dict[str, Any]) -> None:
    """Move ``h`` to the state Celery stored for its task (never backwards)."""
    status = meta.get("status", states.PENDING)
    if status in (states.PENDING, states.RECEIVED):
        return
    if status in states.READY_STATES:
        if h._st is PENDING or h._st is RETRY:
            h._set_started()
        if status == states.SUCCESS:
            h._set_result(meta.get("result"))
        elif status == states.REVOKED:
            revoked = cf.CancelledError("the Celery task was revoked")
            revoked.__cause__ = TaskRevokedError(str(meta.get("result") or "revoked"))
            h._finish(REVOKED, revoked, None)
        else:
            h._set_exception(_rebuild_failure(meta))
        return
    if h._st is PENDING or h._st is RETRY:
        h._set_started()
    if status == states.STARTED:
        return
    if status == states.RETRY:
        if h._st is STARTED or h._st is PROGRESS:
            h._set_retry(_rebuild_failure(meta))
        return
    info = meta.get("result")
    custom = None if status == "PROGRESS" else status  # update_state(state="RESIZING", ...)
    h._set_progress(info if isinstance(info, dict) else {"info": info}, custom)


class _Listener:
    """The one thread per app that tells pending handles how their tasks are doing."""

    def __init__(self, app: Celery) -> None:
        self._app = app
        self._backend = app.backend
        self._lock = threading.Lock()
        self._pending: dict[str, list[weakref.ref[Result[Any]]]] = {}
        self._kept: set[Result[Any]] = set()  # handles with callbacks: held until they end
        self._swept = 0.0
        self._new: list[str] = []  # ids to subscribe to (pub/sub) before the next read
        self._thread: threading.Thread | None = None
        self._push = isinstance(self._backend, RedisBackend)
        self._wake_channel = f"asyncbridge-wake-{id(self):x}"
        self._woken = False  # a wake-up is on its way: later watches need not send another
        self._event = threading.Event()  # polling: wakes the poller early when work arrives
        # id -> (when final, its REVOKED); the listener thread's own: no lock
        self._settling: dict[str, tuple[float, dict[str, Any]]] = {}

    def watch(self, h: Result[Any], task_id: str) -> None:
        """Track ``h`` until it ends. Held weakly, as Celery holds its own pending results: a handle
        nobody waits on or keeps is dropped; one with callbacks (or progress observers) is held
        strongly until it ends, since its callbacks must run."""
        with self._lock:
            refs = self._pending.get(task_id)
            if refs is None:
                self._pending[task_id] = [weakref.ref(h)]
                self._new.append(task_id)
            else:
                refs.append(weakref.ref(h))
            if self._thread is None or not self._thread.is_alive():
                self._start()
            nudge = not self._woken
            self._woken = True
        h._pin = self._keep
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
        self._new = list(self._pending)
        if self._pending:
            self._start()

    def _keep(self, h: Result[Any]) -> None:
        with self._lock:
            self._kept.add(h)

    def _forget_dead(self) -> None:
        """Drop handles that ended or were garbage-collected; the caller holds the lock."""
        for task_id in list(self._pending):
            alive = [r for r in self._pending[task_id] if (h := r()) is not None and h._st not in _TERMINAL]
            if alive:
                self._pending[task_id] = alive
            else:
                del self._pending[task_id]
        self._kept = {h for h in self._kept if h._st not in _TERMINAL}

    def _nudge(self) -> None:
        if not self._push:
            self._event.set()
            return
        try:
            self._backend.client.publish(self._wake_channel, b"")
        except Exception:  # the listener reconnects and resubscribes on its own
            LOGGER.debug("could not wake the Celery listener", exc_info=True)

    def _deliver(self, task_id: str, meta: dict[str, Any], settled: bool = False) -> None:
        status = meta.get("status")
        if status in states.READY_STATES:
            if status == states.REVOKED and not settled:
                # Not final yet: the task's own outcome may still land over it (see the module
                # docstring). _settle_due() decides once REVOKED_SETTLE has passed.
                self._settling.setdefault(task_id, (time.monotonic() + REVOKED_SETTLE, meta))
                return
            self._settling.pop(task_id, None)
        with self._lock:
            handles = [h for r in self._pending.get(task_id, ()) if (h := r()) is not None]
        for h in handles:
            try:
                apply_meta(h, meta)
            except Exception:
                LOGGER.exception("could not apply the Celery state of task %s to %r", task_id, h)

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
        error = ValueError(f"the result backend cannot read the state of task {task_id!r}: {exc}")
        error.__cause__ = exc
        for h in handles:
            h._set_exception(error)

    def _run(self) -> None:
        block_signals()  # it runs no user code: Ctrl-C is the main thread's
        while True:
            try:
                if self._push:
                    self._listen()
                else:
                    self._poll()
                return
            except Exception:
                LOGGER.warning(
                    "the result backend of Celery app %r is unreachable; retrying",
                    self._app.main,
                    exc_info=True,
                )
                with self._lock:  # after a reconnect: subscribe again and re-read every pending id
                    self._new = list(self._pending)
                time.sleep(RECONNECT_DELAY)

    def _idle(self) -> bool:
        with self._lock:
            now = time.monotonic()
            if now - self._swept >= SWEEP_INTERVAL:
                self._swept = now
                self._forget_dead()
            if not self._pending:
                self._thread = None
                return True
            return False

    def _poll(self) -> None:
        backend = self._backend
        while not self._idle():
            with self._lock:
                ids = list(self._pending)
                self._new.clear()
                self._woken = False
            unreadable: list[tuple[str, Exception]] = []
            for task_id in ids:
                try:
                    meta = backend.get_task_meta(task_id, cache=False)
                except Exception as error:
                    unreadable.append((task_id, error))
                else:
                    self._deliver(task_id, meta)
            if unreadable and len(unreadable) == len(ids):
                raise unreadable[0][1]  # the backend is down: reconnect, read everything again
            for task_id, problem in unreadable:  # the backend works, but not for these ids
                self._fail(task_id, problem)
            self._settle_due()
            self._event.wait(POLL_INTERVAL)
            self._event.clear()

    def _listen(self) -> None:
        backend = self._backend
        pubsub = backend.client.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(self._wake_channel)
            subscribed: set[str] = set()
            while not self._idle():
                with self._lock:
                    new, self._new = self._new, []
                    self._woken = False
                    gone = subscribed - self._pending.keys()
                if gone:
                    pubsub.unsubscribe(*(backend.get_key_for_task(t) for t in gone))
                    subscribed -= gone
                if new:
                    keys = [backend.get_key_for_task(t) for t in new]
                    pubsub.subscribe(*keys)
                    subscribed.update(new)
                    # Stored before we subscribed? Read them once, in one round trip.
                    for task_id, stored in zip(new, backend.mget(keys), strict=True):
                        if stored is not None:
                            self._deliver(task_id, backend.decode_result(stored))
                message = pubsub.get_message(timeout=self._settle_due())
                while message is not None:
                    channel = message["channel"]
                    if isinstance(channel, bytes):
                        channel = channel.decode()
                    if channel != self._wake_channel:
                        meta = backend.decode_result(message["data"])
                        self._deliver(meta.get("task_id") or channel.removeprefix("celery-task-meta-"), meta)
                    message = pubsub.get_message(timeout=0)
        finally:
            pubsub.close()


_LISTENERS: weakref.WeakKeyDictionary[Celery, _Listener] = weakref.WeakKeyDictionary()
_LISTENERS_LOCK = threading.Lock()


def _after_fork_in_child() -> None:
    global _LISTENERS_LOCK
    _LISTENERS_LOCK = threading.Lock()
    for listener in list(_LISTENERS.values()):
        listener._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def listener_for(app: Celery) -> _Listener:
    with _LISTENERS_LOCK:
        listener = _LISTENERS.get(app)
        if listener is None:
            listener = _LISTENERS[app] = _Listener(app)
        return listener


def _check_backend(app: Celery, what: str) -> None:
    if isinstance(app.backend, DisabledBackend):
        raise ValueError(
            f"{what} belongs to Celery app {app.main!r}, which has no result backend, so its outcome can "
            "never be known: configure result_backend (for instance 'redis://...' or 'file:///path')"
        )


def _check_task_id(task_id: str, app: Celery) -> None:
    if "\x00" in task_id:
        raise ValueError(f"a task id cannot hold a NUL character: {task_id!r}")
    if isinstance(app.backend, FilesystemBackend):
        key = app.backend.get_key_for_task(task_id)
        if "/" in task_id or len(key) > 255:
            raise ValueError(
                f"task id {task_id!r} cannot name a file of the file-system result backend of Celery app "
                f"{app.main!r} (no '/', at most 255 bytes with its prefix)"
            )


def bind(h: Result[Any], task_id: str, app: Celery, name: str | None = None) -> None:
    """Make ``h`` the handle of the Celery task ``task_id`` of ``app``."""
    _check_backend(app, f"task {task_id}")
    _check_task_id(task_id, app)
    h._id = task_id
    h._label = f"celery {name or 'task'}"
    h._loop = _GUARD

    def revoke() -> None:
        app.control.revoke(task_id, terminate=True, signal="SIGTERM")

    h._on_cancel(revoke)
    listener_for(app).watch(h, task_id)


def bind_task_id(h: Result[Any], task_id: str, app: Any) -> None:
    """``Result(task_id, app=app)``: a handle for a task this process may not have sent."""
    if not isinstance(task_id, str) or not task_id:
        raise TypeError(f"a task id must be a non-empty str, not {task_id!r}")
    if app is None:
        from celery import current_app

        app = current_app
    if not isinstance(app, Celery):
        raise TypeError(f"app must be a celery.Celery application, not {type(app).__qualname__}")
    app = getattr(app, "_get_current_object", lambda: app)()  # celery.current_app is a proxy
    bind(h, task_id, app)


def wrap_celery(obj: Any) -> Result[Any]:
    """A handle for a Celery ``AsyncResult``, ``GroupResult`` (a gather of its members, in order) or
    the last result of a chain (which fails as soon as an earlier task of the chain fails)."""
    from .._compose import gather

    if isinstance(obj, GroupResult | ResultSet):
        members = [wrap_celery(r) for r in obj.results]
        h = gather(*members)
        if isinstance(obj, GroupResult) and obj.id:
            h._id = obj.id
        return h
    if not isinstance(obj, AsyncResult):
        raise TypeError(f"wrap() cannot wrap a Celery {type(obj).__qualname__}")
    _check_backend(obj.app, f"task {obj.id}")
    last: Result[Any] = Result()
    bind(last, obj.id, obj.app)  # not obj.name: a property that reads the backend
    parents = list(_parents(obj))
    if not parents:
        return last
    return _follow_chain(last, [wrap_celery(p) for p in parents])


def _parents(result: AsyncResult) -> Iterable[AsyncResult]:
    parent = result.parent
    while parent is not None:
        yield parent
        parent = parent.parent


def _follow_chain(last: Result[Any], parents: list[Result[Any]]) -> Result[Any]:
    """``last``'s outcome, unless an earlier task of the chain fails first (then the chain never
    reaches ``last``): that failure, as Celery's ``get(follow_parents=True)`` reports it."""

    def parent_done(p: Result[Any]) -> None:
        if not p.successful():
            last._adopt(p)

    for p in parents:
        p.add_done_callback(parent_done)
    return last


# -- Celery as an engine for @task ---------------------------------------------------------------


class _InCeleryTask:
    """What ``report_progress()``, ``checkpoint()`` and ``cancel_requested()`` see in a Celery task."""

    __slots__ = ("_label", "_task")

    _cancel_requested = False  # revoke(terminate=True) kills the child: nothing to check for
    _deadline = None  # Celery's soft_time_limit raises inside the task by itself
    _time_limit = None

    def __init__(self, task: Any) -> None:
        self._task = task
        self._label = f"celery {task.name}"

    def _set_progress(self, meta: dict[str, Any], state_name: str | None = None) -> bool:
        self._task.update_state(state=state_name or "PROGRESS", meta=meta)
        return True

    def __repr__(self) -> str:
        return f"<{self._label} {self._task.request.id}>"


def current_celery_work() -> _InCeleryTask | None:
    """The running Celery task, as work that can report progress; None outside any task."""
    from celery import current_task

    task = current_task._get_current_object() if current_task else None
    if task is None or task.request.id is None:
        return None
    return _InCeleryTask(task)


def register(spec: Any, app: Celery) -> Any:
    """Register ``spec.fn`` as a Celery task of ``app`` (named ``module.qualname``), with the
    task's options mapped to Celery's: ``timeout`` to ``soft_time_limit`` (and a hard
    ``time_limit`` one second later), ``Retry`` to ``autoretry_for``/``max_retries``/``retry_backoff``."""
    from .._context import CURRENT

    fn = spec.fn
    qualname = getattr(fn, "__qualname__", None)
    if not isinstance(qualname, str) or "<" in qualname or getattr(fn, "__module__", None) is None:
        raise TypeError(
            f"a Celery task must be a module-level function the worker can import by name, not "
            f"{qualname or type(fn).__qualname__!s} (a lambda, a nested function or a callable object "
            "is known to this process only, and the worker would never run it)"
        )
    options: dict[str, Any] = {"name": f"{fn.__module__}.{qualname}", "bind": True}
    if spec.timeout is not None:
        options["soft_time_limit"] = spec.timeout
        options["time_limit"] = spec.timeout + 1.0
    if spec.retry is not None:
        on = spec.retry.on if isinstance(spec.retry.on, tuple) else (spec.retry.on,)
        options.update(
            autoretry_for=on,
            max_retries=spec.retry.attempts - 1,
            retry_backoff=spec.retry.backoff or False,
            retry_backoff_max=10**9,
            retry_jitter=False,
            default_retry_delay=0,
        )

    def run(task: Any, *args: Any, **kwargs: Any) -> Any:
        token = CURRENT.set(_InCeleryTask(task))  # type: ignore[arg-type]
        try:
            return fn(*args, **kwargs)
        finally:
            CURRENT.reset(token)

    run.__name__ = getattr(fn, "__name__", "run")
    run.__qualname__ = getattr(fn, "__qualname__", "run")
    run.__module__ = fn.__module__
    run.__doc__ = fn.__doc__
    return app.task(**options)(run)


def send(celery_task: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Result[Any]:
    """Send one call of a registered task; its handle. An argument the app's serializer cannot
    encode raises ``TypeError`` naming it, and nothing is sent."""
    try:
        sent = celery_task.apply_async(args, kwargs)
    except EncodeError as exc:
        raise TypeError(_unencodable(celery_task, args, kwargs, exc)) from exc
    return wrap_celery(sent)


def _unencodable(celery_task: Any, args: tuple[Any, ...], kwargs: dict[str, Any], exc: Exception) -> str:
    serializer = celery_task.serializer or celery_task.app.conf.task_serializer
    named = [(f"argument {i}", v) for i, v in enumerate(args)] + [
        (f"argument {k!r}", v) for k, v in kwargs.items()
    ]
    for name, value in named:
        try:
            dumps(value, serializer=serializer)  # type: ignore[no-untyped-call]
        except Exception as err:
            return (
                f"{name} of Celery task {celery_task.name} ({type(value).__qualname__}) cannot be sent with "
                f"the app's {serializer!r} serializer: {err}"
            )
    return f"the arguments of Celery task {celery_task.name} cannot be sent with {serializer!r}: {exc}"


def is_celery_app(obj: object) -> bool:
    return isinstance(obj, Celery)
