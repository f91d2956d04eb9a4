"""What a handle says about its work: ``id``, ``state``, ``info``, ``traceback``, ``done()``...

A mixin of :class:`asyncbridge.Result` (the state machine is in ``_machine.py``): Celery's reading
API and cf's predicates. Each brings the handle up to date with its source first (``_sync``), and
reads without the handle's lock: a move stores its data before it sets the state.
"""

from __future__ import annotations

import os
import threading
import traceback as _traceback
from typing import TYPE_CHECKING, Any

from . import _ids as ids
from ._state import _RUNNING, _TERMINAL, FAILURE, PROGRESS, RETRY, REVOKED, SUCCESS, State

if TYPE_CHECKING:
    from types import TracebackType

_ID_LOCK = threading.Lock()


class Reading:
    """The readers of :class:`asyncbridge.Result`."""

    if TYPE_CHECKING:  # what the mixin uses of the handle (whose __slots__ hold them)
        _st: State
        _value: Any
        _tb: TracebackType | None
        _id: str | None
        _meta: Any
        _state_name: str | None
        _attempts: int
        _cancel_requested: bool

        def _sync(self) -> None: ...
        def _mark_read(self) -> None: ...
    else:
        __slots__ = ()

    # -- reading ----------------------------------------------------------------------------------

    @property
    def id(self) -> str:
        """A unique id (128 random bits as hex; the engine's own id for Celery/Dask results).

        Made on first access, once: every reader gets the same string.
        """
        ident = self._id
        if ident is None:
            with _ID_LOCK:  # not self._lock: repr() needs the id, and may run under self._lock
                ident = self._id
                if ident is None:
                    ident = self._id = os.urandom(16).hex()
            ids.register(self, ident)  # type: ignore[arg-type]  # a mixin of Result: self is one
        return ident

    @property
    def task_id(self) -> str:
        """Celery's name for :attr:`id`."""
        return self.id

    @property
    def state(self) -> State:
        """The current :class:`State`.

        A :class:`State` member, except for work of an engine with states of its own (a Celery task
        calling ``update_state(state="RESIZING")``): then that name, a plain ``str``, while it lasts.
        """
        self._sync()
        st = self._st
        if st is PROGRESS and self._state_name is not None:
            return self._state_name  # type: ignore[return-value]  # documented: a custom name
        return st

    @property
    def status(self) -> State:
        """Celery's alias of :attr:`state`."""
        return self.state

    @property
    def info(self) -> Any:
        """None while PENDING or STARTED; the latest progress meta (a dict) while PROGRESS; the last
        attempt's exception while RETRY; the value on SUCCESS; the exception on FAILURE, and on
        REVOKED a ``concurrent.futures.CancelledError``."""
        self._sync()
        st = self._st
        if st is PROGRESS or st is RETRY:
            return self._meta
        if st in _TERMINAL:
            if st is FAILURE:
                self._mark_read()
            return self._value
        return None

    @property
    def traceback(self) -> str | None:
        """The formatted traceback of the failure (with its causes), or None unless FAILURE."""
        self._sync()
        if self._st is not FAILURE:
            return None
        self._mark_read()
        exc = self._value
        return "".join(_traceback.format_exception(type(exc), exc, self._tb))

    def ready(self) -> bool:
        """True once SUCCESS, FAILURE or REVOKED (Celery's name for :meth:`done`)."""
        self._sync()
        return self._st in _TERMINAL

    def done(self) -> bool:
        """True once SUCCESS, FAILURE or REVOKED."""
        self._sync()
        return self._st in _TERMINAL

    def successful(self) -> bool:
        """True if the work returned a value."""
        self._sync()
        return self._st is SUCCESS

    def failed(self) -> bool:
        """True if the work raised (FAILURE). A REVOKED handle is not failed."""
        self._sync()
        return self._st is FAILURE

    def cancelled(self) -> bool:
        """True once REVOKED: the work never started, or has really stopped."""
        self._sync()
        return self._st is REVOKED

    def running(self) -> bool:
        """True while the work runs (STARTED or PROGRESS)."""
        self._sync()
        return self._st in _RUNNING

    @property
    def attempts(self) -> int:
        """How many attempts of the work have started: 0 while PENDING, 1 once it runs, one more per
        retry."""
        return self._attempts

    def cancel_requested(self) -> bool:
        """True once :meth:`cancel` was called on this (still unfinished) handle."""
        return self._cancel_requested or self._st is REVOKED
