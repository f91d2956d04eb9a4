"""Binds asyncio futures and tasks, and coroutines (``spawn``), to handles; owns the background loop.

``spawn(coro)`` runs the coroutine where it can run without blocking anyone:

- in async code under asyncio: a task on the running loop;
- in async code under trio: a system task of the current trio run (trio has no loop-global task
  spawner; a system task is cancelled when the run's main task ends, and the handle then ends
  REVOKED);
- in sync code: a task on one shared background loop, running in the daemon thread
  ``asyncbridge-loop``, started on first use, stopped at interpreter exit (its tasks are cancelled
  first), and started afresh in a child process after ``fork()``.

Not ``asyncio.run_coroutine_threadsafe``/``wrap_future``: each adds a second future per call, and
``wrap_future`` silently drops a result whose destination loop is closed.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import math
import threading
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

from . import _runtime as runtime
from ._context import CURRENT, settle_failure
from ._errors import TimeLimitExceeded, format_seconds
from ._result import Owned, Result, Wrapped, _get_running_loop
from ._store import ResultStore, store_arguments
from ._validate import optional_seconds

if TYPE_CHECKING:
    from collections.abc import Coroutine

T = TypeVar("T")

_Task = asyncio.Task


def _cancel_on_loop(h: Result[Any], fut: asyncio.Future[Any], loop: asyncio.AbstractEventLoop) -> None:
    if _get_running_loop() is loop:
        fut.cancel()  # Task.cancel is not thread-safe: only ever call it on its loop
        return
    try:
        loop.call_soon_threadsafe(fut.cancel)
    except RuntimeError:  # the loop is closed: the work can never run again
        h._set_cancelled("its event loop is closed")


class _Binding:
    """Ties a handle to an asyncio future: the future's done-callback, and the handle's cancel hook."""

    __slots__ = ("fut", "h", "loop")

    def __init__(self, h: Result[Any], fut: asyncio.Future[Any], loop: asyncio.AbstractEventLoop) -> None:
        self.h = h
        self.fut = fut
        self.loop = loop

    def __call__(self, fut: asyncio.Future[Any]) -> None:
        self.h._adopt(fut)

    def cancel(self) -> None:
        _cancel_on_loop(self.h, self.fut, self.loop)


def _bind(h: Result[Any]) -> None:
    """Make ``h`` follow its asyncio future ``h._src``; from any thread."""
    fut, loop = h._src, h._loop
    if fut is None:
        return  # already done
    if fut.done():  # a done future no longer changes: reading it from any thread is safe
        h._adopt(fut)
        return
    binding = _Binding(h, fut, loop)
    if _get_running_loop() is loop:
        fut.add_done_callback(binding)
    else:
        try:
            loop.call_soon_threadsafe(fut.add_done_callback, binding)
        except RuntimeError:
            h._set_exception(RuntimeError(f"{fut!r} can never finish: its event loop is closed"))
            return
    h._on_cancel(binding.cancel)


def wrap_asyncio_future(fut: asyncio.Future[T]) -> Result[T]:
    """A handle mirroring an asyncio Future or Task; safe to call from any thread.

    A Task is STARTED at once (it is scheduled); a plain Future stays PENDING until it is done.
    Wrapped on its own loop, the handle binds lazily: awaited there, it just awaits the future (no
    done-callback, no extra loop hop); anything else (a callback, get(), a cancel, an awaiter on
    another loop) binds it first.
    """
    h: Result[T] = Wrapped()
    loop = fut.get_loop()
    if type(fut) is _Task or isinstance(fut, _Task):
        is_task, label = True, "task " + fut.get_name()
    else:
        is_task, label = False, "asyncio future"
    if fut.done():
        h._bind_future(label, fut, loop, False)
        h._adopt(fut)
    elif _get_running_loop() is loop:
        h._bind_future(label, fut, loop, is_task, _bind)
    else:
        h._bind_future(label, fut, loop, is_task)
        _bind(h)
    return h


def check_coroutine(coro: object, caller: str) -> None:
    if inspect.iscoroutine(coro):
        return
    if inspect.iscoroutinefunction(coro):
        raise TypeError(
            f"{caller}() needs a coroutine object, not the coroutine function {coro.__qualname__}; "
            f"call it: {caller}({coro.__qualname__}(...))"
        )
    raise TypeError(f"{caller}() needs a coroutine, not {type(coro).__qualname__}")


def spawn(
    coro: Coroutine[Any, Any, T],
    *,
    timeout: float | None = None,
    store: ResultStore | str | bool | None = None,
    expires: float | None = None,
) -> Result[T]:
    """Run the coroutine ``coro`` and return its handle at once; callable from any thread.

    In async code under asyncio it becomes a task on the running loop; under trio, a system task of
    the current run; in sync code, a task on the shared background loop (thread ``asyncbridge-loop``).
    The handle is STARTED once the task exists. ``handle.cancel()`` cancels the task on its own loop
    (before it starts, the coroutine is closed and never runs). Inside the coroutine,
    ``asyncbridge.checkpoint()``, ``cancel_requested()`` and ``report_progress()`` see this handle.

    Args:
        coro: the coroutine to run.
        timeout: an execution time limit in seconds, counted from the start: the coroutine is then
            cancelled and the handle ends FAILURE with :class:`asyncbridge.TimeLimitExceeded`.
        store: record the result in a :class:`asyncbridge.ResultStore` (a store URL, or True for
            the default store): its id is stored before this returns, then each state, so that
            ``asyncbridge.Result(handle.id)`` finds it from any process (docs/store.md).
        expires: seconds after its end that the stored result is removed (default: the store's).

    Raises:
        TypeError: ``coro`` is not a coroutine (a coroutine *function* gets a hint to call it), or
            ``timeout`` is not a number.
        ValueError: ``timeout`` is not > 0.
        RuntimeError: called in sync code during interpreter shutdown.
    """
    check_coroutine(coro, "spawn")
    h: Result[T] = Owned()
    try:
        limit = check_time_limit(timeout)
        recorder, until = store_arguments(store, expires, "spawn()")
    except (TypeError, ValueError):
        coro.close()  # it must not run, nor warn "never awaited" over the real message
        raise
    h._setup(f"coroutine {getattr(coro, '__qualname__', '?')}()", time_limit=limit)
    if recorder is not None:
        try:
            recorder.track(h, expires=until)
        except BaseException:  # the store cannot record it: the work must not run unrecorded
            coro.close()
            raise
    start_coroutine(h, coro)
    return h


def start_coroutine(h: Result[T], coro: Coroutine[Any, Any, T]) -> None:
    """Run ``coro`` for the prepared handle ``h`` (label and time limit set), as spawn() does."""
    ctx = contextvars.copy_context()
    ctx.run(CURRENT.set, h)
    loop = _get_running_loop()
    if loop is not None:
        h._set_started()
        _run_as_task(h, coro, ctx, loop)
        return
    if _in_trio():
        _spawn_trio(h, coro, ctx)
        return
    loop = BACKGROUND.loop()
    h._bind_future(h._label, None, loop, False)  # its runner; the task is its source once made
    loop.call_soon_threadsafe(_start, h, coro, ctx, loop)


def check_time_limit(timeout: object) -> float | None:
    """An execution time limit (``spawn(timeout=)``, ``@task(timeout=)``): None, or seconds > 0."""
    return optional_seconds(timeout, "timeout", positive=True)


def _start(
    h: Result[T], coro: Coroutine[Any, Any, T], ctx: contextvars.Context, loop: asyncio.AbstractEventLoop
) -> None:
    if not h._set_started():  # revoked before it could start: it never runs
        coro.close()
        return
    _run_as_task(h, coro, ctx, loop)


async def _run(h: Result[T], coro: Coroutine[Any, Any, T]) -> None:
    if h._cancel_requested:
        # Cancelled from another thread after the task was made but before its first step: the
        # task.cancel() sent to this loop is queued behind this step, too late for a coroutine that
        # finishes without suspending (on Python 3.14 and late 3.13.x, even `await
        # asyncio.wrap_future(f)` of a done cf.Future does not suspend, gh-105836). As asyncio does
        # for a task cancelled before it starts, the coroutine never runs.
        coro.close()
        h._set_cancelled()
        return
    # The outcome goes to the handle from inside the task, before asyncio can discard it: a task
    # cancelled during its last step (say, by itself) reports CANCELLED and drops its return value.
    limit = h._time_limit
    try:
        if limit is None:
            value = await coro
        else:
            scope = asyncio.timeout(limit)
            try:
                async with scope:
                    value = await coro
            except TimeoutError:
                if not scope.expired():
                    raise
                h._set_exception(
                    TimeLimitExceeded(f"{h._label} exceeded its time limit of {format_seconds(limit)}")
                )
                return
    except asyncio.CancelledError:
        h._set_cancelled()
        raise
    except GeneratorExit:
        raise  # the coroutine is being closed with its task: that is not how the work ended
    except BaseException as exc:
        h._set_exception(exc)  # delivered to the handle; the loop itself must survive
        del h, exc  # this frame is in the error's traceback, which the handle keeps
    else:
        h._set_result(value)


# asyncio keeps only weak references to tasks: a coroutine parked on an event no one else holds
# would be garbage-collected with its task and handle ("Task was destroyed but it is pending").
# Spawned work runs until it ends, kept here, as a thread keeps running its work.
_TASKS: dict[asyncio.Future[None], Result[Any]] = {}


def _after_run(h: Result[Any], coro: Coroutine[Any, Any, Any], task: asyncio.Future[None]) -> None:
    _TASKS.pop(task, None)
    if not _TASKS:
        _TASKS.clear()  # an emptied dict keeps its peak-size table; clear() gives it back
    # A task cancelled before its first step never entered _run: close the coroutine and say so.
    coro.close()
    if task.cancelled():
        h._set_cancelled()


def _run_as_task(
    h: Result[T], coro: Coroutine[Any, Any, T], ctx: contextvars.Context, loop: asyncio.AbstractEventLoop
) -> None:
    task = loop.create_task(_run(h, coro), context=ctx)
    _TASKS[task] = h
    task.add_done_callback(partial(_after_run, h, coro))
    h._bind_future(h._label, task, loop, False)  # started already (the caller's move)
    h._on_cancel(partial(_cancel_on_loop, h, task, loop))


def _in_trio() -> bool:
    import sys

    if "trio" not in sys.modules:
        return False
    import trio

    try:
        trio.lowlevel.current_task()
    except RuntimeError:
        return False
    return True


class _TrioRun:
    """The runner of work spawned in a trio run: blocking for it on that run's thread never ends."""

    __slots__ = ("token",)

    def __init__(self, token: Any) -> None:
        self.token = token

    def check_can_block(self, h: Result[Any], caller: str) -> None:
        import trio

        try:
            here = trio.lowlevel.current_trio_token() == self.token
        except RuntimeError:  # not in a trio run
            return
        if here:
            raise RuntimeError(
                f"{h!r}.{caller}() was called in the trio run that must run this work, so it could "
                "never return; use 'await' here, or call it from another thread"
            )


def _spawn_trio(h: Result[T], coro: Coroutine[Any, Any, T], ctx: contextvars.Context) -> None:
    import trio

    token = trio.lowlevel.current_trio_token()
    h._bind_source(runner=_TrioRun(token))
    h._set_started()
    limit = h._time_limit
    scope = trio.CancelScope(deadline=trio.current_time() + limit if limit is not None else math.inf)

    def cancel() -> None:
        try:
            token.run_sync_soon(scope.cancel)
        except trio.RunFinishedError:
            h._set_cancelled("its trio run has finished")

    h._on_cancel(cancel)
    trio.lowlevel.spawn_system_task(_run_trio, h, coro, scope, name=h._label, context=ctx)


async def _run_trio(h: Result[T], coro: Coroutine[Any, Any, T], scope: Any) -> None:
    import trio

    limit = h._time_limit
    try:
        with scope:
            value = await coro
    except trio.Cancelled:
        h._set_cancelled()  # the run is ending: our system task is being cancelled
        raise
    except BaseException as exc:
        settle_failure(h, exc)
        del h, exc  # this frame is in the error's traceback, which the handle keeps
        return
    if scope.cancelled_caught and not h._cancel_requested and limit is not None:
        h._set_exception(TimeLimitExceeded(f"{h._label} exceeded its time limit of {format_seconds(limit)}"))
    elif scope.cancelled_caught:
        h._set_cancelled()
    else:
        h._set_result(value)


class _BackgroundLoop:
    """The shared event loop for coroutines spawned from sync code."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._closed = False

    def loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is not None:
            return loop
        with self._lock:
            if self._closed:
                raise RuntimeError("asyncbridge's background loop is shut down (interpreter exit)")
            if self._loop is None:
                loop = asyncio.new_event_loop()
                ready = threading.Event()
                thread = threading.Thread(
                    target=self._run, args=(loop, ready), name="asyncbridge-loop", daemon=True
                )
                thread.start()
                ready.wait()
                self._thread = thread
                self._loop = loop
            return self._loop

    @staticmethod
    def _run(loop: asyncio.AbstractEventLoop, ready: threading.Event) -> None:
        asyncio.set_event_loop(loop)
        loop.call_soon(ready.set)
        try:
            loop.run_forever()
        finally:
            asyncio.set_event_loop(None)

    def shutdown(self, grace: float = runtime.EXIT_GRACE) -> None:
        """Cancel every task on the loop, let them unwind for up to ``grace`` s, stop and close it.

        Starts queued before the shutdown still run first (and are cancelled at once), so every
        handle ends REVOKED instead of staying PENDING.
        """
        with self._lock:
            self._closed = True
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            return
        done = threading.Event()

        async def drain() -> None:
            me = asyncio.current_task()
            tasks = [t for t in asyncio.all_tasks() if t is not me]
            for t in tasks:
                t.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=grace)
            for t in tasks:  # ignored the cancellation for the whole grace period: abandoned
                if not t.done():
                    t._log_destroy_pending = False  # type: ignore[attr-defined]  # said below instead
                    h = _TASKS.pop(t, None)
                    if h is not None:
                        h._set_exception(
                            RuntimeError(
                                f"{h._label} ignored its cancellation at interpreter exit and was "
                                f"abandoned after {format_seconds(grace)}"
                            )
                        )

        def finished(_: object) -> None:
            loop.stop()
            done.set()

        def begin() -> None:
            loop.create_task(drain()).add_done_callback(finished)

        try:
            loop.call_soon_threadsafe(begin)
        except RuntimeError:
            return
        done.wait(grace + 1.0)
        thread.join(1.0)
        if not thread.is_alive():
            loop.close()

    def _after_fork_in_child(self) -> None:
        # The loop's thread does not exist in the child: its work stays in the parent. Fail the
        # child's copies of those handles (no one would ever finish them), and start afresh on use.
        old = self._loop
        self._lock = threading.Lock()
        self._loop = None
        self._thread = None
        if old is None:
            return
        lost = RuntimeError("the process forked while this coroutine ran; it runs in the parent only")
        for task, h in list(_TASKS.items()):
            if h._loop is old:
                _TASKS.pop(task, None)
                task._log_destroy_pending = False  # type: ignore[attr-defined]
                h._fail_in_forked_child(lost)


BACKGROUND = _BackgroundLoop()
runtime.add("background loop", stop=BACKGROUND.shutdown, after_fork_in_child=BACKGROUND._after_fork_in_child)
