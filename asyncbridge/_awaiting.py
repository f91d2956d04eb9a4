"""Awaiting a handle: ``await handle`` and ``await shield(handle)``, from any asyncio loop or trio run.

A mixin of :class:`asyncbridge.Result`. An awaiter parks through ``_waiters.park`` (a loop's future
or a trio task, woken through cf's waiter protocol); an asyncio future awaited on its own loop is
awaited directly, with no done-callback and no loop hop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ._errors import close_coroutines, revoked_error
from ._state import _TERMINAL, REVOKED, SUCCESS, State
from ._waiters import get_running_loop, park

if TYPE_CHECKING:
    import threading
    from collections.abc import Callable, Generator

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)

_get_running_loop = get_running_loop


class Awaiting(Generic[T]):
    """The awaitable side of :class:`asyncbridge.Result`."""

    if TYPE_CHECKING:  # what the mixin uses of the handle (whose __slots__ hold them)
        _lock: threading.Lock
        _st: State
        _value: Any
        _loop: Any
        _src: Any
        _activate: Callable[[Any], object] | None

        def _sync(self) -> None: ...
        def _adopt(self, src: Any) -> bool: ...
        def _outcome(self) -> T: ...
        def _add_waiter(self, waiter: object) -> bool: ...
        def _remove_waiter(self, waiter: object) -> None: ...
        def cancel(self) -> bool: ...
    else:
        __slots__ = ()

    def __await__(self) -> Generator[Any, None, T]:
        """``await handle``: the value, or the work's exception.

        If the awaiting task is cancelled (a timeout, a task group), the work is cancelled too, as
        awaiting an asyncio task does; await :func:`shield` (``await shield(handle)``) to leave the
        work running. A REVOKED handle raises ``asyncio.CancelledError`` under asyncio and
        ``concurrent.futures.CancelledError`` under trio (trio reserves its own ``Cancelled`` for
        cancel scopes).
        """
        st = self._st
        if st is SUCCESS:  # done already: the commonest await of all, first
            return self._value  # type: ignore[no-any-return]
        if st not in _TERMINAL:
            src = self._src
            loop = _get_running_loop()
            if src is not None and loop is not None and self._loop is loop:
                # An asyncio future of this very loop: await it directly, with no done-callback and
                # one loop hop fewer (inlined here: a generator less per await). Cancelling the
                # awaiter cancels it, as awaiting a task does.
                if not src.done():
                    try:
                        value = yield from src
                    except asyncio.CancelledError:
                        # The awaiter's own cancellation, or the work's: either way re-raise this
                        # very exception, whose message tells a cancel scope (anyio) it is its own.
                        if src.cancelled():
                            self._adopt(src)
                        raise
                    except BaseException:
                        if not src.done():
                            raise
                    else:
                        if self._activate is not None:
                            # No one else has looked at this handle yet: it stays lazy, and whoever
                            # reads it later binds it (_sync), finding the future done.
                            return value  # type: ignore[no-any-return]
                if self._st not in _TERMINAL:
                    self._adopt(src)  # on its loop and done: safe to read here and now
            else:  # _wait_async(True), inlined: one generator fewer per await
                self._sync()
                yield from park(self._add_waiter, self._remove_waiter, self.cancel, self)
        if self._st is SUCCESS:
            return self._value  # type: ignore[no-any-return]
        try:
            return self._outcome_async()
        finally:
            del self  # this frame ends up in the raised error's traceback: it must not hold the handle

    def _outcome_async(self) -> T:
        if self._st is REVOKED:
            flavour = asyncio.CancelledError if _get_running_loop() is not None else cf.CancelledError
            stored = self._value
            del self  # as in _outcome()
            raise revoked_error(flavour, stored)
        try:
            return self._outcome()
        finally:
            del self

    def _wait_async(self, cancel_work: bool) -> Generator[Any, None, None]:
        self._sync()
        yield from park(self._add_waiter, self._remove_waiter, self.cancel if cancel_work else None, self)


class _Shielded(Generic[T_co]):
    __slots__ = ("_handle",)

    def __init__(self, handle: Awaiting[T_co]) -> None:
        self._handle = handle

    def __await__(self) -> Generator[Any, None, T_co]:
        h = self._handle
        if h._st not in _TERMINAL:
            yield from h._wait_async(False)
        try:
            return h._outcome_async()
        finally:
            del h, self  # as in Result.__await__


def shield(handle: Awaiting[T]) -> _Shielded[T]:
    """An awaitable for ``handle`` whose cancellation does not cancel the work.

    ``await shield(h)`` returns or raises as ``await h`` does; if the awaiting task is cancelled,
    only that await stops and the work goes on for every other waiter.
    """
    if not isinstance(handle, Awaiting):
        close_coroutines(handle)  # type: ignore[unreachable]  # untyped callers do get here
        raise TypeError(
            f"shield() needs an asyncbridge Result, not {type(handle).__qualname__}; wrap() it first"
        )
    return _Shielded(handle)
