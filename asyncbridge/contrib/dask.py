"""Dask (``distributed``) futures through the asyncbridge handle, and a Dask client as an engine for
``@task``. Install with ``pip install asyncbridge[dask]``; imported only when a ``distributed``
object first reaches asyncbridge. docs/dask.md is the user's guide; this says how and why.

Outcomes. A Dask future lives on its client's event loop (distributed's "IO loop" thread for a
``Client``, the caller's loop for ``Client(asynchronous=True)``). Each handle gets one coroutine
there, which awaits Dask's own done notification (the future's state event, through
``Future.exception(asynchronous=True)``), fetches the value with ``Client.gather(future,
asynchronous=True)`` (which waits again for lost data being recomputed), and ends the handle through
the producer API. Waiting costs no thread, and distributed batches concurrent fetches.
``Future.add_done_callback`` is not used: it parks the same coroutine, then hands every callback to
one process-wide thread, where the value would take a blocking round trip per future, one after
another (about 1.5 ms each here); it also fires for a future whose data was lost, and tornado drops
it silently on a closed loop, leaving a handle that never ends.

Threads. Every move of a Dask handle happens on its client's event-loop thread: its done-callbacks
and progress observers run there and must not block; ``get()`` there raises ``RuntimeError``.

Cancellation. ``handle.cancel()`` is ``Client.cancel`` on the loop (not forced). The handle ends
REVOKED as soon as the client drops the future; a running task is not interrupted (Dask cannot stop
a thread), but the worker marks it cancelled, which ``checkpoint()`` in an ``@task`` function reads.
A future cancelled elsewhere ends REVOKED; one lost with its client (closed) or scheduler (gone)
ends FAILURE, as its outcome can no longer be known.

Progress. Inside a task, STARTED, PROGRESS and RETRY travel as worker events (``Worker.log_event``
on :data:`TOPIC`), which the scheduler passes to each client subscribed to the topic
(``Client.subscribe_topic``, sent when a client first follows a future). They ride the same ordered
streams as the task's own messages (worker to scheduler, scheduler to client), so a report never
arrives after the outcome it preceded, and need no per-task object or polling on the scheduler.
Pub/Sub was not chosen (a publisher drops what it sends before it has heard of its subscribers), nor
a ``Queue`` or ``Variable`` (polled). Reports are pickled, and unpickled only by a client following
that key.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import threading
import time
import traceback
import uuid
import weakref
from functools import partial
from typing import TYPE_CHECKING, Any

import cloudpickle  # type: ignore[import-untyped, unused-ignore]
from dask.utils import key_split
from distributed import Client, Future
from distributed.client import ClosedClientError, FutureCancelledError
from distributed.worker import get_worker

from .. import Cancelled, RemoteTraceback, UnknownResult, extension as ext

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

    from distributed import Worker

    from .. import Result, Retry

__all__ = ["OPTIONS", "TOPIC"]

LOGGER = logging.getLogger("asyncbridge")

#: The worker-event topic that carries STARTED, PROGRESS and RETRY from tasks to clients.
TOPIC = "asyncbridge"
#: The options ``apply_async(...)`` passes on to ``Client.submit`` for a task on a Dask client.
OPTIONS = frozenset({"key", "priority", "workers", "allow_other_workers", "resources"})
#: Seconds between two checks for cancellation while a task waits out a retry's backoff.
RETRY_POLL = 0.05
_CANCEL_REASON = "asyncbridge"
_UNKNOWN = "the Dask scheduler has no task by that key (never submitted, or released by every client)"
_GONE = ("closing", "closed")


class _Guard:
    """The engine's rule for blocking waits: never on the event loop that runs the client."""

    __slots__ = ("loop",)

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def check_can_block(self, h: Result[Any], caller: str) -> None:
        if _on_loop(self.loop):
            raise RuntimeError(
                f"{h!r}.{caller}() was called on the event loop of its Dask client, which must run for "
                "the outcome to arrive: await the handle there, or wait from another thread"
            )


class _Bridge:
    """What one client needs to follow its futures: the handles per key, for progress events, and
    the coroutines that settle them, on the client's event loop."""

    def __init__(self, client: Client) -> None:
        self._client = weakref.ref(client)  # the bridge lives as long as the client, not longer
        io_loop: Any = client.loop  # a tornado IOLoop over an asyncio loop
        self.loop: asyncio.AbstractEventLoop = io_loop.asyncio_loop
        self.guard = _Guard(self.loop)
        self._lock = threading.Lock()
        self._following: dict[str, set[Result[Any]]] = {}  # str(key) -> its pending handles
        self._tasks: set[asyncio.Task[Any]] = set()  # the loop holds tasks weakly: we hold them
        self._subscribed = False
        self._comm: object = None  # the connection the subscription was sent on
        # Values of futures that ended, fetched together (a gather each made hundreds of requests
        # for a thousand futures, where the caller's own client.gather makes one): one gather at a
        # time, and every value wanted while it runs joins the next one. A lone round trip waits
        # for nothing; a stream of ends is fetched in batches as large as the stream is fast.
        self._fetches: list[tuple[Future[Any], asyncio.Future[Any]]] = []
        self._fetching = False

    def expect(self, h: Result[Any], key: str) -> None:
        """Route progress events of ``key`` to ``h`` from now on (before the task is even sent)."""
        with self._lock:
            client = self._client()
            # Once per connection to a scheduler (a reconnected client has a new one, which knows
            # nothing of this client's subscriptions). Sent on the client's ordered stream: a task
            # sent after it reaches the scheduler after the subscription, so none of its events
            # is missed.
            if client is not None and (not self._subscribed or client.scheduler_comm is not self._comm):
                client.subscribe_topic(TOPIC, self._on_event)  # type: ignore[no-untyped-call]
                self._subscribed, self._comm = True, client.scheduler_comm
            self._following.setdefault(key, set()).add(h)

    def forget(self, h: Result[Any], key: str) -> None:
        with self._lock:
            handles = self._following.get(key)
            if handles is not None:
                handles.discard(h)
                if not handles:
                    del self._following[key]

    def follow(self, h: Result[Any], future: Future[Any], *, ask_scheduler: bool = False) -> None:
        """Settle ``h`` as ``future`` ends (``expect`` must have been called); ``ask_scheduler``:
        first make the scheduler tell this client about a key it may not hold (``Result(key, app=)``).
        """
        ext.guard_blocking(h, self.guard)
        ext.on_cancel(h, partial(self._cancel, future))
        error: Exception | None = None
        try:
            if asyncio._get_running_loop() is self.loop:  # on the client's loop: no wake-up to send
                self._launch(h, future, ask_scheduler)
            else:
                self.loop.call_soon_threadsafe(self._launch, h, future, ask_scheduler)
        except RuntimeError:
            error = RuntimeError(f"{h!r} cannot end: the event loop of its Dask client is closed")
        if future.client.status in _GONE:  # a closing loop may never run what was just queued
            error = _closed(h)
        if error is not None:
            self.forget(h, str(future.key))
            ext.fail(h, error)

    def _launch(self, h: Result[Any], future: Future[Any], ask_scheduler: bool) -> None:
        self._spawn(self._settle(h, future, ask_scheduler))

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._reap)

    def _reap(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:  # a cancel sent by a closing client
            LOGGER.debug("a Dask request of asyncbridge failed", exc_info=task.exception())

    async def _settle(self, h: Result[Any], future: Future[Any], ask_scheduler: bool) -> None:
        """Runs on the client's loop: wait for the future to end, then end ``h`` as it did."""
        client = future.client
        key = str(future.key)
        try:
            if ask_scheduler and not await _known(client, future.key):
                ext.fail(h, UnknownResult(key, _UNKNOWN))
                return
            error = await future.exception(asynchronous=True)  # type: ignore[no-untyped-call]
            if error is None:
                value = await self._fetch(future)
            else:  # the task's own exception; its traceback, the worker's frames (rebuilt by Dask)
                error = error.with_traceback(await future.traceback(asynchronous=True))  # type: ignore[no-untyped-call]
        except FutureCancelledError as exc:
            _cancelled(h, exc, client)
        except asyncio.CancelledError:  # the client's loop is ending: nothing will tell this handle
            ext.fail(h, RuntimeError(f"{h!r} cannot end: the event loop of its Dask client stopped first"))
        except Exception as exc:  # a fetch that failed: lost data recomputed in error, a broken comm
            ext.fail(h, exc)
        else:
            if error is None:
                ext.succeed(h, value)
            else:
                ext.fail(h, error)
        finally:
            self.forget(h, key)

    def _fetch(self, future: Future[Any]) -> asyncio.Future[Any]:
        """The value of ``future`` (finished without error), fetched with the others of this turn."""
        waiter: asyncio.Future[Any] = self.loop.create_future()
        self._fetches.append((future, waiter))
        if len(self._fetches) == 1 and not self._fetching:
            self.loop.call_soon(self._flush)  # after this turn: the other ends of this turn join
        return waiter

    def _flush(self) -> None:
        if self._fetching or not self._fetches:
            return
        batch, self._fetches = self._fetches, []
        self._fetching = True
        self._spawn(self._gather_batch(batch))

    async def _gather_batch(self, batch: list[tuple[Future[Any], asyncio.Future[Any]]]) -> None:
        try:
            await self._gather(batch)
        finally:
            self._fetching = False
            self._flush()  # what ended meanwhile

    async def _gather(self, batch: list[tuple[Future[Any], asyncio.Future[Any]]]) -> None:
        client = batch[0][0].client
        try:
            values = await client.gather([f for f, _ in batch], asynchronous=True)
        except BaseException as exc:
            if len(batch) == 1:
                waiter = batch[0][1]
                if isinstance(exc, asyncio.CancelledError):
                    waiter.cancel()  # the loop is ending: _settle says so to the handle
                elif not waiter.done():
                    waiter.set_exception(exc)
                return
            # One of them failed (its data lost with a worker, say): fetch each on its own, so that
            # each handle gets its own value or its own error.
            for one in batch:
                self._spawn(self._gather([one]))
            return
        for (_, waiter), value in zip(batch, values, strict=True):
            if not waiter.done():
                waiter.set_result(value)

    def _cancel(self, future: Future[Any]) -> None:
        """``h.cancel()``, in the cancelling thread: ask Dask, on the client's loop (no waiting)."""
        try:
            self.loop.call_soon_threadsafe(self._cancel_on_loop, future)
        except RuntimeError:
            pass  # the loop is closed: the handle already failed with the closed client

    def _cancel_on_loop(self, future: Future[Any]) -> None:
        client = future.client
        if client.status not in _GONE:
            msg = "cancelled through its asyncbridge handle"
            self._spawn(client.cancel([future], asynchronous=True, reason=_CANCEL_REASON, msg=msg))

    def _on_event(self, event: tuple[float, Any]) -> None:
        """A worker event of :data:`TOPIC`, on the client's loop: move the handles of its key."""
        msg = event[1]
        if not isinstance(msg, dict):
            return
        with self._lock:
            handles = tuple(self._following.get(msg.get("key"), ()))  # type: ignore[arg-type]
        if not handles:
            return
        kind, data = msg.get("kind"), msg.get("data")
        try:
            payload: Any = pickle.loads(data) if isinstance(data, bytes) else None
        except Exception:
            LOGGER.exception("a %s report of Dask task %s could not be unpickled here", kind, msg["key"])
            return
        for h in handles:
            if kind == "STARTED":
                ext.start(h)
            elif kind == "PROGRESS":
                meta, state = payload
                ext.start(h)  # a report implies a start (a plain task reports no STARTED)
                ext.progress(h, meta, state)
            elif kind == "RETRY":
                ext.retry(h, _remote_error(*payload))


_BRIDGES: weakref.WeakKeyDictionary[Client, _Bridge] = weakref.WeakKeyDictionary()
_BRIDGES_LOCK = threading.Lock()


def _bridge(client: Client) -> _Bridge:
    with _BRIDGES_LOCK:
        bridge = _BRIDGES.get(client)
        if bridge is None:
            bridge = _BRIDGES[client] = _Bridge(client)
        return bridge


def _closed(h: Result[Any]) -> ClosedClientError:
    return ClosedClientError(f"{h!r} cannot end: its Dask client was closed first")


def _check_open(client: Client, what: str) -> None:
    if client.status in _GONE:
        raise ClosedClientError(f"{what}: the Dask client {client.id} is {client.status}")


def _cancelled(h: Result[Any], exc: FutureCancelledError, client: Client) -> None:
    """The future was cancelled: REVOKED if someone cancelled the work; FAILURE if the client lost
    the means to learn its outcome (closed, or its scheduler gone)."""
    error: Exception
    if client.status in _GONE:
        error = _closed(h)
    elif exc.reason == "scheduler-connection-lost":
        error = ConnectionError(f"{h!r} cannot end: its Dask client lost the connection to the scheduler")
    else:
        ext.confirm_cancelled(h, f"the Dask future was cancelled: {exc}")
        return
    error.__cause__ = exc
    ext.fail(h, error)


def _remote_error(error: BaseException, text: str) -> BaseException:
    if error.__cause__ is None:
        error.__cause__ = RemoteTraceback(text)
    return error


def _scheduler_side() -> Callable[..., str | None]:
    # Defined in a function so that cloudpickle sends it by value: the scheduler need not import
    # asyncbridge to run it.
    def desire(key: Any, client_id: str, dask_scheduler: Any) -> str | None:
        ts = dask_scheduler.tasks.get(key)
        if ts is None or ts.state in ("released", "forgotten"):
            return None
        dask_scheduler.client_desires_keys(keys=[key], client=client_id)  # it reports a done task now
        return str(ts.state)

    return desire


_DESIRE = _scheduler_side()


async def _known(client: Client, key: Any) -> bool:
    """Have the scheduler report ``key`` to ``client`` (``Result(key, app=client)`` on the client's
    own loop); False if the scheduler does not know the key."""
    return await client.run_on_scheduler(_DESIRE, key, client.id, asynchronous=True) is not None  # type: ignore[no-untyped-call]


# -- wrap(), Result(key, app=client) -------------------------------------------------------------


def wrap_dask(obj: object) -> Result[Any]:
    """A handle for a ``distributed.Future`` (``asyncbridge.wrap(future)``); its ``id`` is the key.
    It ends on the client's event-loop thread, where its done-callbacks run; ``cancel()`` cancels
    the future (every future of that key on that client).

    Raises:
        TypeError: not a Future, or a Future bound to no client.
        ClosedClientError: its client is closed (the outcome can no longer be known).
    """
    if not isinstance(obj, Future):
        raise TypeError(
            f"wrap() takes a distributed.Future, not a {type(obj).__module__}.{type(obj).__qualname__} "
            "(for a Dask collection, wrap client.compute(collection))"
        )
    client = obj.client
    if client is None:
        raise TypeError(f"{obj!r} is bound to no Dask client: make it with one, or Future(key, client)")
    key = obj.key
    _check_open(client, f"wrap({obj!r})")
    h = ext.new_handle(f"dask {key_split(key)}", task_id=str(key), caller_holds_source=True)
    bridge = _bridge(client)
    bridge.expect(h, str(key))
    bridge.follow(h, obj)
    return h


def _by_id(h: Result[Any], task_id: str, client: object) -> bool:
    """``Result(key, app=client)``: follow the task ``key`` of the client's scheduler, sent by any
    client. A key the scheduler does not know raises ``UnknownResult`` at once, or, on the client's
    own loop (which a question to the scheduler would block), ends the handle with it."""
    if not isinstance(client, Client):
        return False
    _check_open(client, f"Result({task_id!r}, app=...)")
    ext.name(h, f"dask {key_split(task_id)}")
    bridge = _bridge(client)
    # A key this client holds is followed already (and the scheduler may not have read the client's
    # submission yet: a question would overtake it); any other is asked for, once the future exists
    # (the scheduler answers with the outcome of a task that has ended, which needs it).
    ask = task_id not in client.futures
    future: Future[Any] = Future(task_id, client)
    if ask and not _on_loop(bridge.loop):
        if client.run_on_scheduler(_DESIRE, task_id, client.id) is None:  # type: ignore[no-untyped-call]
            raise UnknownResult(task_id, _UNKNOWN)
        ask = False
    bridge.expect(h, task_id)
    bridge.follow(h, future, ask_scheduler=ask)
    return True


def _on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


# -- inside a Dask task ---------------------------------------------------------------------------


class _InDaskTask:
    """What ``checkpoint()``, ``cancel_requested()`` and ``report_progress()`` see in a Dask task."""

    __slots__ = ("_deadline", "_key", "_label", "_time_limit", "_worker")

    def __init__(self, worker: Worker, key: Any, label: str, time_limit: float | None = None) -> None:
        self._worker = worker
        self._key = key
        self._label = label
        self._time_limit = time_limit
        self._deadline: float | None = None

    @property
    def _cancel_requested(self) -> bool:
        # The worker marks a running task "cancelled" when the scheduler releases it (cancelled, or
        # no client wants it any more); it runs on, and its result is dropped.
        ts = self._worker.state.tasks.get(self._key)
        return ts is None or ts.state == "cancelled"

    def begin(self) -> None:
        """An attempt starts: its time limit runs from now; the caller's handle shows STARTED."""
        if self._time_limit is not None:
            self._deadline = time.monotonic() + self._time_limit
        self._emit("STARTED", None)

    def retrying(self, exc: BaseException) -> None:
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        try:
            self._emit("RETRY", (exc, text))
        except TypeError:  # an exception that does not pickle: its text still travels
            self._emit("RETRY", (RuntimeError(f"{type(exc).__qualname__}: {exc}"), text))

    def pause(self, seconds: float) -> None:
        """Wait out a retry's backoff; raise ``Cancelled`` if the task is cancelled meanwhile."""
        until = time.monotonic() + seconds
        while (left := until - time.monotonic()) > 0:
            if self._cancel_requested:
                raise Cancelled(f"{self._label} was cancelled")
            time.sleep(min(left, RETRY_POLL))

    def _set_progress(self, meta: dict[str, Any], state_name: str | None = None, /) -> bool:
        self._emit("PROGRESS", (meta, state_name))
        return True

    def _emit(self, kind: str, payload: object) -> None:
        try:
            data = pickle.dumps(payload)
        except Exception as exc:
            raise TypeError(f"a report from Dask task {self._key} needs picklable values: {exc}") from exc
        # Thread-safe: from a task's thread the worker hands it to its own loop.
        self._worker.log_event(TOPIC, {"key": str(self._key), "kind": kind, "data": data})

    def __repr__(self) -> str:
        return f"<dask task {self._key}>"


def _current_work() -> _InDaskTask | None:
    """The running Dask task (one not sent through ``@task``), as work that can report progress."""
    try:
        worker = get_worker()
        key = worker.get_current_task()
    except (ValueError, KeyError):  # not in a worker, or not in one of its task threads
        return None
    return _InDaskTask(worker, key, f"dask {key_split(key)}")


def _run(
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    label: str,
    time_limit: float | None,
    retry: Retry | None,
) -> Any:
    """Runs in a Dask worker thread: one call of an ``@task(engine=client)`` function, every attempt
    of it (Retry), with the task as the current work (checkpoint, time limit, progress)."""
    worker = get_worker()
    work = _InDaskTask(worker, worker.get_current_task(), label, time_limit)
    with ext.running_as(work):
        attempt = 1
        while True:
            work.begin()
            try:
                return fn(*args, **kwargs)
            except BaseException as exc:
                if (
                    retry is None
                    or attempt >= retry.attempts
                    or not isinstance(exc, retry.on)
                    or work._cancel_requested
                ):
                    raise
                work.retrying(exc)
                attempt += 1
                work.pause(retry.delay_before(attempt))


# -- a Dask client as an engine for @task ----------------------------------------------------------


class _DaskTask:
    """``@task(engine=client)``: each call is one ``Client.submit`` of the function (wrapped to run
    every attempt of a ``Retry`` and honour ``timeout`` through ``checkpoint()``, in the worker)."""

    engine_name = "dask"

    def __init__(self, task: Any, client: Client, name: str | None) -> None:
        self._fn: Callable[..., Any] = task.fn
        self._client = client
        self._time_limit: float | None = task.timeout
        self._retry: Retry | None = task.retry
        self.name = name if name is not None else f"{task.__module__}.{task.__qualname__}"
        self._label = f"dask {self.name}"
        prefix = self.name.rpartition(".")[2]
        self._prefix = prefix if prefix.isidentifier() else "task"  # a key's prefix names its group

    def submit(self, args: tuple[Any, ...], kwargs: dict[str, Any], options: dict[str, Any]) -> Result[Any]:
        """Send one call with ``Client.submit``; its handle, whose ``id`` is the Dask key.

        Raises:
            TypeError: an option Dask tasks do not take here (``retries``: use ``Retry``), a ``key``
                that is not a non-empty str, an argument that cannot be pickled (named).
            ClosedClientError: the client is closed.
        """
        for option in set(options) - OPTIONS:
            if option == "retries":  # Dask's own retry would report nothing to the handle
                raise TypeError(f"retries=: give {self.name} @task(retry=asyncbridge.Retry(...)) instead")
            raise TypeError(
                f"{option}= is not an option of a Dask task; it takes {', '.join(sorted(OPTIONS))}"
            )
        key = options.get("key")
        if key is None:
            key = f"{self._prefix}-{uuid.uuid4().hex}"  # one Dask task per call, as Celery's task ids
        elif not isinstance(key, str) or not key:
            raise TypeError(f"key= must be a non-empty str, not {key!r}")
        client = self._client
        _check_open(client, f"{self.name}.delay()")
        h = ext.new_handle(self._label, task_id=key)
        bridge = _bridge(client)
        bridge.expect(h, key)  # before the task is sent: a start reported at once is not missed
        call = (self._fn, args, kwargs, self._label, self._time_limit, self._retry)
        try:
            future = client.submit(_run, *call, **{**options, "key": key, "pure": False})
        except BaseException as exc:
            bridge.forget(h, key)
            if isinstance(exc, TypeError):
                raise _unpicklable(self.name, self._fn, args, kwargs, exc) from exc
            raise
        bridge.follow(h, future)
        return h

    def signature(self, args: tuple[Any, ...], kwargs: dict[str, Any], *, immutable: bool) -> Any:
        raise TypeError(
            f"{self.name} runs on Dask, which has no canvas (s(), si(), chain, group): pass a handle's "
            "value on, or submit with Dask futures as arguments"
        )

    def native(self) -> Callable[..., Any]:
        """The function itself (Dask has no task object of its own)."""
        return self._fn


def _unpicklable(
    name: str, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], exc: BaseException
) -> TypeError:
    named = [(f"argument {i}", v) for i, v in enumerate(args)]
    named += [(f"argument {k!r}", v) for k, v in kwargs.items()]
    for what, value in [*named, ("the function", fn)]:
        try:
            cloudpickle.dumps(value)
        except Exception as err:
            return TypeError(
                f"{what} of Dask task {name} ({type(value).__qualname__}) cannot be pickled to travel "
                f"to a worker: {err}"
            )
    return TypeError(f"Dask task {name} could not be sent: {exc}")


# -- registration: how the core finds this adapter (docs/architecture.md, "Adapters") -------------


def _accepts(obj: object) -> bool:
    return type(obj).__module__.startswith("distributed.")  # one it cannot wrap: wrap_dask names it


ext.register(
    ext.Adapter(
        name="dask",
        accepts=_accepts,
        wrap=wrap_dask,
        is_engine=lambda obj: isinstance(obj, Client),
        bind_task=_DaskTask,
        by_id=_by_id,
        current_work=_current_work,
    )
)
