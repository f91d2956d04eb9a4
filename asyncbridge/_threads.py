"""``run_in_thread``: thread work on one shared, bounded pool of named daemon threads.

Why not ``concurrent.futures.ThreadPoolExecutor``: it makes a ``cf.Future`` per call (1,600 B and a
``Condition``) that we would then mirror into a handle; here a queued item is a tuple and the handle
is completed directly. The pool also does what an executor cannot:

- A queued item whose handle was cancelled is skipped: the claim step (PENDING -> STARTED) and
  ``cancel()`` take the same lock, so the work either never starts or starts and sees the request.
- A worker that blocks in ``get()`` on another handle lends its slot: the pool may start one more
  thread while it waits, so work waiting on work in the same full pool cannot starve it.
- At interpreter exit queued work is revoked and running work is asked to stop (its
  ``checkpoint()`` raises); exit waits up to ``EXIT_GRACE`` seconds (``_runtime``) for it. Work that never
  checks is abandoned to the interpreter's shutdown (the threads are daemons), so exit never hangs
  on it. ``asyncio.run`` by contrast blocks at exit until abandoned ``to_thread`` jobs end.
- After ``fork()`` the child starts with an empty pool; items queued in the parent at the fork fail
  in the child with a RuntimeError saying so.
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import os
import queue
import threading
import time
from collections.abc import Callable
from types import CoroutineType
from typing import Any, ParamSpec, TypeVar

from . import _blocking, _runtime as runtime
from ._context import CURRENT, settle_failure
from ._result import Owned, Result
from ._signals import MASK_WHILE_IDLE, block_signals, unblock_signals
from ._validate import callable_arg

P = ParamSpec("P")
T = TypeVar("T")

#: How long interpreter exit waits for running thread work to notice its cancellation.

_Item = tuple[Result[Any], contextvars.Context, Callable[..., Any], tuple[Any, ...], dict[str, Any]]


def _run_item(
    h: Result[Any], fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[bool, Any]:
    """Run the work; return (True, value) or (False, exception), leaving the handle to the caller.
    Runs inside the item's copied context, so CURRENT is set for this work only."""
    CURRENT.set(h)
    del h  # this frame is in an error's traceback, which the handle keeps: it must not hold it
    try:
        return True, fn(*args, **kwargs)
    except BaseException as exc:
        return False, exc


def _complete(h: Result[Any], fn: Callable[..., Any], ok: bool, outcome: Any) -> None:
    if not ok:
        settle_failure(h, outcome)
    elif type(outcome) is CoroutineType:  # an async function was passed: it never ran
        outcome.close()
        h._set_exception(
            TypeError(f"{fn!r} returned a coroutine, which a thread cannot run; use asyncbridge.spawn()")
        )
    else:
        h._set_result(outcome)


class _ThreadPool:
    def __init__(self, max_workers: int, name: str) -> None:
        self._max = max_workers
        self._name = name
        self._reset()

    def _reset(self) -> None:
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        # One token per idle worker: deque's append and pop are atomic, and a worker going idle
        # or a submit claiming one costs far less than a Semaphore's Condition would.
        self._idle: collections.deque[None] = collections.deque()
        self._lock = threading.Lock()
        self._threads: set[threading.Thread] = set()
        self._running: dict[int, Result[Any]] = {}  # thread ident -> handle being run
        self._lent = 0  # workers blocked in get(): each lends its slot
        self._closed = False
        self._counter = 0
        self._local = threading.local()

    def submit(self, item: _Item) -> None:
        if self._closed:
            raise RuntimeError("asyncbridge's thread pool is shut down (interpreter exit)")
        try:
            self._idle.pop()
        except IndexError:
            self._grow()
        self._queue.put(item)  # last: it wakes a worker, which then needs no lock held here

    def _grow(self) -> None:
        with self._lock:
            if len(self._threads) >= self._max + self._lent or self._closed:
                return
            self._counter += 1
            t = threading.Thread(target=self._work, name=f"{self._name}-{self._counter}", daemon=True)
            self._threads.add(t)
        t.start()

    def _work(self) -> None:
        me = threading.current_thread()
        ident = me.ident
        assert ident is not None
        self._local.worker = True
        queue, running, idle = self._queue, self._running, self._idle
        masked = False  # Ctrl-C blocked while idle, never while user code runs: see _signals
        try:
            while True:
                if MASK_WHILE_IDLE and queue.empty():
                    if not masked:
                        block_signals()
                        masked = True
                    item = queue.get()
                else:
                    item = queue.get()
                if masked:
                    unblock_signals()
                    masked = False
                if item is None:
                    return
                h, ctx, fn, args, kwargs = item
                del item
                if h._set_started():
                    running[ident] = h
                    ok, outcome = ctx.run(_run_item, h, fn, args, kwargs)
                    # Idle before the handle ends: ending it wakes the awaiter, which may submit
                    # its next call at once (waking a loop lets it take the GIL), and must find
                    # this worker free. The rest waits until after that wake-up.
                    idle.append(None)
                    _complete(h, fn, ok, outcome)
                    del running[ident], outcome
                    retire = self._too_many()
                else:
                    idle.append(None)
                    retire = self._too_many()
                del h, ctx, fn, args, kwargs  # drop references before idling
                if retire:
                    return
        finally:
            with self._lock:
                self._threads.discard(me)

    def _too_many(self) -> bool:
        # A thread started while a worker lent its slot retires once that loan ends.
        if len(self._threads) <= self._max + self._lent:
            return False
        with self._lock:
            if len(self._threads) <= self._max + self._lent:
                return False
            self._threads.discard(threading.current_thread())
        with contextlib.suppress(IndexError):
            self._idle.pop()  # this thread is no longer idle capacity
        return True

    def block_hook(self) -> Callable[[], None] | None:
        if not getattr(self._local, "worker", False):
            return None
        with self._lock:
            self._lent += 1
        if not self._queue.empty():
            self._grow()
        return self._unlend

    def _unlend(self) -> None:
        with self._lock:
            self._lent -= 1

    def shutdown(self, grace: float = runtime.EXIT_GRACE) -> None:
        """Revoke queued work, ask running work to stop, wait up to ``grace`` s for it."""
        self._closed = True
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                item[0].cancel()
        for h in list(self._running.values()):
            h.cancel()
        with self._lock:
            threads = list(self._threads)
        for _ in threads:
            self._queue.put(None)
        deadline = time.monotonic() + grace
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))

    def _after_fork_in_child(self) -> None:
        old, running = self._queue, list(self._running.values())
        self._reset()
        gone = RuntimeError("the process forked while this work ran; it runs in the parent only")
        for h in running:  # their threads do not exist in the child
            h._fail_in_forked_child(gone)
        lost = RuntimeError("the process forked while this work was queued; it runs in the parent only")
        while True:
            try:
                item = old.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                item[0]._fail_in_forked_child(lost)


POOL = _ThreadPool(max_workers=min(32, (os.cpu_count() or 1) + 4), name="asyncbridge-worker")
runtime.add("thread pool", stop=POOL.shutdown, after_fork_in_child=POOL._after_fork_in_child)
_blocking.block_hook = POOL.block_hook


def run_in_thread(fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Result[T]:
    """Run ``fn(*args, **kwargs)`` on the shared thread pool; return its handle at once.

    Every argument goes to ``fn``. The caller's context variables are copied into the thread, as
    ``asyncio.to_thread`` does; changes made there stay there. The pool is bounded
    (``min(32, cpu_count + 4)`` threads, named ``asyncbridge-worker-N``); extra calls queue.

    Cancellation: ``handle.cancel()`` on queued work revokes it at once and it never runs; on running
    work it records the request, and the work's next ``asyncbridge.checkpoint()`` raises
    :class:`asyncbridge.Cancelled`, which ends the handle REVOKED. Work that never checks runs to
    its end and the handle reports its outcome.

    Raises:
        TypeError: ``fn`` is not callable (a coroutine is closed first; use ``spawn`` for those).
        RuntimeError: called during interpreter shutdown.
    """
    return start_in_thread(fn, args, kwargs)


def start_in_thread(
    fn: Callable[..., T],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    prepare: Callable[[Result[T]], object] | None = None,
) -> Result[T]:
    """``run_in_thread``, with ``prepare(handle)`` run before the work can start (a store records it)."""
    if not callable(fn):  # the check inline: this is a hot path
        callable_arg(fn, "run_in_thread", hint="; use asyncbridge.spawn(coro) for those")  # type: ignore[unreachable]  # untyped callers do get here
    h: Result[T] = Owned()
    h._setup(f"thread {getattr(fn, '__qualname__', type(fn).__qualname__)}()")
    if prepare is not None:
        prepare(h)
    POOL.submit((h, contextvars.copy_context(), fn, args, kwargs))
    return h
