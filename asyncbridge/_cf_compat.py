"""What makes the handle a ``concurrent.futures.Future`` beyond subclassing it: cf's private waiter
protocol, which ``cf.wait`` and ``cf.as_completed`` read (``_condition``, ``_waiters``, ``_state``,
``_exception``), mapped onto the handle's own lock, waiter list and state; and cf's public producer
API (``set_running_or_notify_cancel``, ``set_result``, ``set_exception``), which executors call.

A mixin of :class:`asyncbridge.Result`, placed before ``cf.Future`` in its bases so that these
override cf's own attributes. See ``_result.py`` for why the handle is a subclass that never calls
``Future.__init__``.
"""

from __future__ import annotations

import concurrent.futures as cf
import threading
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ._state import _CF_STATE, FAILURE, PENDING, REVOKED, SUCCESS, State

if TYPE_CHECKING:
    from types import TracebackType

T = TypeVar("T")


class CfFuture(Generic[T]):
    """cf's protocol and producer API over the handle's own state."""

    if TYPE_CHECKING:  # what the mixin uses of the handle (whose __slots__ hold them)
        _lock: threading.Lock
        _st: State
        _value: Any
        _wl: Any
        _cond: threading.Condition | None
        _attempts: int
        _activate: Any

        def _bind_now(self) -> None: ...
        def _set_started(self) -> bool: ...
        def _set_result(self, value: T) -> bool: ...
        def _finish(self, to: State, value: Any, tb: TracebackType | None) -> bool: ...
        def _set_exception(self, exc: BaseException) -> bool: ...
    else:
        __slots__ = ()

    # -- concurrent.futures' private waiter protocol (read by cf.wait and cf.as_completed) --------
    # Properties with setters, so that the handle also satisfies typeshed's protocol for
    # cf.as_completed (which declares these as plain attributes).

    @property
    def _condition(self) -> threading.Condition:
        # cf.wait fetches this before it takes the lock: bind a lazy source now. Only that half of
        # _sync(): cf reads this again to release the lock while holding it (and other futures'
        # locks), and a probe that finds the source started would take this very lock.
        if self._activate is not None:
            self._bind_now()
        cond = self._cond
        if cond is None:
            # Two threads racing here make two Conditions over the same lock, which is harmless.
            cond = self._cond = threading.Condition(self._lock)
        return cond

    @_condition.setter
    def _condition(self, value: threading.Condition) -> None:
        raise AttributeError("an asyncbridge handle's condition is its own lock")

    @property
    def _waiters(self) -> list[Any]:
        # cf reads this while holding _condition, which is our lock; so must anyone else: a bare
        # waiter becomes a list here, and an unlocked read could drop a waiter joining meanwhile.
        wl = self._wl
        if type(wl) is not list:  # None, or one waiter kept bare (see Result._wl)
            wl = self._wl = [] if wl is None else [wl]
        return wl

    @_waiters.setter
    def _waiters(self, value: list[Any]) -> None:
        raise AttributeError("an asyncbridge handle's waiters are kept by the handle")

    @property
    def _state(self) -> str:
        # cf.wait reads this while holding _condition (our lock): no _sync() here, it would lock.
        return _CF_STATE[self._st]

    @_state.setter
    def _state(self, value: str) -> None:
        raise AttributeError("an asyncbridge handle's state moves only through its own methods")

    @property
    def _exception(self) -> BaseException | None:
        return self._value if self._st is FAILURE else None

    @_exception.setter
    def _exception(self, value: BaseException | None) -> None:
        raise AttributeError("an asyncbridge handle's exception is set through set_exception()")

    # -- concurrent.futures' public producer API --------------------------------------------------

    def set_running_or_notify_cancel(self) -> bool:
        """The executor's claim step: PENDING -> STARTED and True; False if already revoked."""
        with self._lock:
            if self._st is REVOKED:
                return False
            if self._st is not PENDING:
                raise RuntimeError(f"{self!r}: set_running_or_notify_cancel() in state {self._st}")
        return self._set_started()  # the one way into STARTED (its move check, watchers, limit)

    def set_result(self, result: T) -> None:
        """Complete the handle with ``result``. Raises ``InvalidStateError`` if already done."""
        if not self._finish(SUCCESS, result, None):
            raise cf.InvalidStateError(f"{self!r} is already done")

    def set_exception(self, exception: BaseException | None) -> None:
        """Fail the handle with ``exception``. Raises ``InvalidStateError`` if already done."""
        if not isinstance(exception, BaseException):
            raise TypeError(f"set_exception() needs an exception, not {type(exception).__qualname__}")
        if not self._set_exception(exception):
            raise cf.InvalidStateError(f"{self!r} is already done")
