"""Blocking waits on a handle: ``get()``, ``result()``, ``exception()``, ``wait()``.

A mixin of :class:`asyncbridge.Result` (the state machine is in ``_machine.py``). A blocked thread
parks on a private lock that the handle's completion releases (cf's waiter protocol); it refuses,
with a RuntimeError, a wait that could never end (on the event-loop thread that must run the work,
or where an engine's own rule forbids it), waits in short slices in the main thread (Ctrl-C) and for
work of an asyncio loop (a loop closed by hand), and lets a bounded pool lend a worker's slot while
that worker waits (``block_hook``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import threading
import time
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, overload

from ._errors import format_seconds, revoked_error
from ._state import _TERMINAL, FAILURE, REVOKED, SUCCESS, State
from ._waiters import _ThreadWaiter, check_timeout, get_running_loop

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import TracebackType

T = TypeVar("T")

_get_running_loop = get_running_loop

# Set by _threads: called before a thread blocks in get(); returns the undo, or None. It lets a
# bounded pool add a worker while one of its own workers waits, so waiting cannot starve the pool.
block_hook: Callable[[], Callable[[], None] | None] | None = None

#: How often a blocked get() checks that the event loop running its work has not been closed.
LOOP_WATCH = 0.25
#: The longest single wait of a get() in the main thread, so that Ctrl-C is never missed for long.
SIGNAL_SLICE = 0.1


class Blocking(Generic[T]):
    """The blocking readers of :class:`asyncbridge.Result`."""

    if TYPE_CHECKING:  # what the mixin uses of the handle (whose __slots__ hold them)
        _lock: threading.Lock
        _st: State
        _value: Any
        _tb: TracebackType | None
        _loop: Any
        _src: Any

        def _sync(self) -> None: ...
        def _mark_read(self) -> None: ...
        def _adopt(self, src: Any) -> bool: ...
        def _set_exception(self, exc: BaseException) -> bool: ...
        def _add_waiter(self, waiter: object) -> bool: ...
        def _remove_waiter(self, waiter: object) -> None: ...
    else:
        __slots__ = ()

    def _block(self, timeout: float | None, caller: str) -> bool:
        """Wait until done or ``timeout``; True if done."""
        self._sync()
        loop = self._loop
        if self._st in _TERMINAL:
            if loop is not None and getattr(loop, "check_even_when_done", False):
                loop.check_can_block(self, caller)  # an engine's rule whatever the state (Celery's)
            return True
        if loop is not None:
            self._check_can_block(loop, caller)
        waiter = _ThreadWaiter()
        if not self._add_waiter(waiter):
            return True
        undo = block_hook() if block_hook is not None else None
        woken = False
        try:
            woken = self._acquire(waiter.lock, timeout, loop)
        finally:
            if undo is not None:
                undo()
            if not woken:  # timed out or interrupted (KeyboardInterrupt): withdraw the waiter
                self._remove_waiter(waiter)
        # A completion that landed after the timeout but before the withdrawal wins.
        return self._st in _TERMINAL

    def _acquire(self, lock: threading.Lock, timeout: float | None, loop: Any) -> bool:
        """Acquire ``lock`` (released when the handle ends) within ``timeout``; True if acquired.

        Waits in short slices where one long wait could go wrong: in the main thread (a Ctrl-C
        that lands just as the wait begins is otherwise noticed only when it ends) and for work of an
        asyncio loop (a loop closed by hand runs no more callbacks: the outcome of a future it
        finished but never reported is rescued, and one it will never finish fails with an error
        saying why, instead of blocking for ever).
        """
        watched = loop if isinstance(loop, asyncio.AbstractEventLoop) else None
        on_main = threading.current_thread() is threading.main_thread()
        if watched is None and not on_main:
            return lock.acquire() if timeout is None else lock.acquire(True, timeout)
        step = SIGNAL_SLICE if on_main else LOOP_WATCH
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wait = step if deadline is None else min(step, deadline - time.monotonic())
            if lock.acquire(True, max(wait, 0.0)):
                return True
            if watched is not None and watched.is_closed() and self._st not in _TERMINAL:
                self._rescue_from_closed_loop()
            if self._st in _TERMINAL or (deadline is not None and time.monotonic() >= deadline):
                return False

    def _rescue_from_closed_loop(self) -> None:
        src = self._src
        if src is not None and src.done():
            self._adopt(src)
        else:
            self._set_exception(RuntimeError(f"{self!r} can never finish: its event loop was closed"))

    def _check_can_block(self, loop: Any, caller: str) -> None:
        """Raise RuntimeError where blocking for this handle could never end.

        ``loop`` is what runs the work: an asyncio loop (refused on its own thread), or a guard the
        adapter bound with ``check_can_block(handle, caller)`` (a trio run, Celery's rule inside a
        running task): the waiting code imports no event library and knows no engine."""
        if isinstance(loop, asyncio.AbstractEventLoop):
            if _get_running_loop() is loop:
                raise RuntimeError(
                    f"{self!r}.{caller}() was called on the event-loop thread that must run this work, "
                    "so it could never return; use 'await' here, or call it from another thread"
                )
        else:
            loop.check_can_block(self, caller)

    @overload
    def get(self, timeout: float | None = None, propagate: Literal[True] = True) -> T: ...
    @overload
    def get(self, timeout: float | None = None, *, propagate: bool) -> T | BaseException: ...
    @overload
    def get(self, timeout: float | None, propagate: bool) -> T | BaseException: ...

    def get(self, timeout: float | None = None, propagate: bool = True) -> T | BaseException:
        """Wait up to ``timeout`` seconds (``None``: no limit) for the work, then return its value.

        A failed handle raises its exception (the same object for every caller, with its original
        traceback); a revoked one raises ``concurrent.futures.CancelledError``. With
        ``propagate=False`` the exception is returned instead of raised.

        From any thread that is not running the work's event loop this blocks as asked, including
        on the thread of another event loop (which then stalls). Ctrl-C interrupts the wait.

        Raises:
            TimeoutError: ``timeout`` ran out. The work goes on; call ``cancel()`` to stop it.
            concurrent.futures.CancelledError: the handle is REVOKED (and ``propagate`` is true).
            RuntimeError: called on the event-loop thread that must run this work, where waiting
                could never end. Use ``await handle`` there.
        """
        timeout = check_timeout(timeout)
        if not self._block(timeout, "get"):
            raise self._ran_out(timeout)
        if not propagate and self._st is not SUCCESS:
            self._mark_read()
            return self._value  # type: ignore[no-any-return]
        try:
            return self._outcome()
        finally:
            del self  # the raised error's traceback holds this frame: it must not hold the handle

    def result(self, timeout: float | None = None) -> T:
        """``concurrent.futures.Future.result``: :meth:`get` with ``propagate=True``."""
        timeout = check_timeout(timeout)
        if not self._block(timeout, "result"):
            raise self._ran_out(timeout)
        try:
            return self._outcome()
        finally:
            del self  # as in get()

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """``concurrent.futures.Future.exception``: the work's exception, or None if it succeeded.

        Raises ``TimeoutError`` as :meth:`get` does, and ``concurrent.futures.CancelledError`` if the
        handle is REVOKED.
        """
        timeout = check_timeout(timeout)
        if not self._block(timeout, "exception"):
            raise self._ran_out(timeout)
        st = self._st
        if st is REVOKED:
            raise cf.CancelledError() from None
        if st is FAILURE:
            self._mark_read()
            return self._value  # type: ignore[no-any-return]
        return None

    def wait(self, timeout: float | None = None) -> bool:
        """Block until done or ``timeout``; return whether the handle is done. Never raises the
        work's exception (the RuntimeError of :meth:`get` still applies)."""
        return self._block(check_timeout(timeout), "wait")

    def _ran_out(self, timeout: float | None) -> TimeoutError:
        """The error of a blocking read whose ``timeout`` ran out (never None then)."""
        waited = format_seconds(timeout or 0.0)
        return TimeoutError(f"{self!r} did not finish within {waited} (the work goes on)")

    def _outcome(self) -> T:
        st = self._st
        if st is SUCCESS:
            return self._value  # type: ignore[no-any-return]
        self._mark_read()
        exc, tb = self._value, self._tb
        del self  # this frame ends up in the raised error's traceback: it must not hold the handle
        try:
            if st is REVOKED:
                raise revoked_error(cf.CancelledError, exc)
            raise exc.with_traceback(tb)  # the original frames, not those of earlier raises
        finally:
            del exc, tb  # break the frame -> traceback -> exception cycle
