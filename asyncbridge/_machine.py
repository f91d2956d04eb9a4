"""The handle's state machine: the producer API and the moves (docs/architecture.md, "The handle").

A mixin of :class:`asyncbridge.Result`, which holds the fields (``_result.py``: its slots, and the
class defaults of the seldom-used ones). Adapters bind a kind of work to a handle through the
producer API below and nothing else (``asyncbridge.extension`` is its public face); the moves check
each transition against the table in ``_state.py``, under the handle's lock, and wake waiters and
run callbacks outside it.

The methods live in this mixin rather than in ``Result``'s own body for a reason of size: CPython
3.13+ presizes every instance's dict for the attributes a class's own methods assign through
``self``, and these are slots or seldom-set fields, so ``Result`` itself assigns none.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from . import _ids as ids
from ._state import _MOVES, _TERMINAL, FAILURE, PENDING, PROGRESS, RETRY, REVOKED, STARTED, SUCCESS, State
from ._unread import UnreadFailure as _UnreadFailure

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Callable
    from types import TracebackType

    from ._result import Result

T = TypeVar("T")

LOGGER = logging.getLogger("asyncbridge")


class Machine(Generic[T]):
    """The producer API and the moves of :class:`asyncbridge.Result`."""

    if TYPE_CHECKING:  # the handle's fields (Result's __slots__ and class defaults)
        _lock: threading.Lock
        _st: State
        _value: Any
        _callbacks: Any  # None, one entry or a list of them; an entry: fn, or (fn, loop)
        _wl: Any
        _id: str | None
        _hooks: Callable[[], object] | list[Callable[[], object]] | None
        _loop: Any
        _label: str
        _probe: Callable[[Any], bool] | None
        _src: Any
        _activate: Callable[[Result[T]], object] | None
        _attempts: int
        _tb: TracebackType | None
        _cond: threading.Condition | None
        _cancel_requested: bool
        _meta: Any
        _time_limit: float | None
        _deadline: float | None
        _watchers: list[Callable[[Result[T], State, Any], object]] | None
        _pw: list[Any] | None
        _pversion: int
        _state_name: str | None
        _pin: Callable[[Result[T]], object] | None
        _unread: _UnreadFailure | None
        _report_unread: bool

        def _dispatch(
            self, fn: Callable[[Result[T]], object], loop: asyncio.AbstractEventLoop | None
        ) -> None: ...
    else:
        __slots__ = ()

    # -- the producer API, for adapters (docs/architecture.md, "The producer API") ----------------
    #
    # Setting up a fresh handle, before the adapter hands it out (no lock: no one else sees it).

    def _setup(
        self, label: str | None = None, *, task_id: str | None = None, time_limit: float | None = None
    ) -> None:
        """Name the work (``label``, for repr and messages), give it the engine's own id, and an
        execution time limit (checked by ``checkpoint()`` and honoured by the adapter that runs it,
        counted from each start). Only what is given changes."""
        if label is not None:
            self._label = label
        if task_id is not None:
            self._id = task_id
            ids.register(self, task_id)  # type: ignore[arg-type]  # a mixin of Result: self is one
        if time_limit is not None:
            self._time_limit = time_limit

    def _bind_future(
        self,
        label: str,
        source: Any,
        runner: Any,
        started: bool,
        activate: Callable[[Result[T]], object] | None = None,
        probe: Callable[[Any], bool] | None = None,
        cancel_hook: Callable[[], object] | None = None,
    ) -> None:
        """:meth:`_setup` and :meth:`_bind_source` in one call, for the built-in adapters' hot paths
        (a wrapped asyncio or cf future, a coroutine's task): name, source, runner, started, a
        lazy binding, a probe and a cancel hook, on a fresh handle."""
        self._label = label
        self._src = source
        self._loop = runner
        if activate is not None:
            self._activate = activate
        if probe is not None:
            self._probe = probe
        if cancel_hook is not None:
            self._hooks = cancel_hook
        if started:
            self._enter_started()

    def _bind_source(
        self,
        source: Any = None,
        runner: Any = None,
        *,
        started: bool = False,
        probe: Callable[[Any], bool] | None = None,
        activate: Callable[[Result[T]], object] | None = None,
        cancel_hook: Callable[[], object] | None = None,
        pin: Callable[[Result[T]], object] | None = None,
        forget: Callable[[], object] | None = None,
    ) -> None:
        """Tell the waiting code what it needs of the work (docs/architecture.md, "Waiting"); only
        what is given changes:

        - ``source``: the asyncio future the work is, if any (an await on its own loop awaits it
          directly; a get() rescues its outcome if its loop is closed by hand);
        - ``runner``: what runs the work: its asyncio loop (get() on that loop's thread is refused,
          and waits watch the loop), or a guard with ``check_can_block(handle, caller)`` (a trio
          run, an engine's own rule) and an optional true ``check_even_when_done``;
        - ``started``: the work already runs (an asyncio task, a running cf future);
        - ``probe(source)``: asked, while PENDING, whether work that cannot report its start has
          started (given the ``source``, so that one function serves every handle of a kind);
        - ``activate(handle)``: a binding made lazily, once, before anything needs to be told;
        - ``cancel_hook``: as :meth:`_on_cancel`, set before anyone can cancel;
        - ``pin(handle)``: called once when the first callback is added (an engine that holds its
          handles weakly holds this one strongly from then on);
        - ``forget()``: what :meth:`forget` asks of the engine (delete its record of the result);
          kept in the instance dict, as only engine handles have one.
        """
        if source is not None:
            self._src = source
        if runner is not None:
            self._loop = runner
        if started and self._st is PENDING:
            self._enter_started()
        if probe is not None:
            self._probe = probe
        if activate is not None:
            self._activate = activate
        if cancel_hook is not None:
            self._hooks = cancel_hook
        if pin is not None:
            self._pin = pin
        if forget is not None:
            self.__dict__["_engine_forget"] = forget

    # Reading: the work may read ``_label``, ``_time_limit``, ``_deadline``, ``_attempts``, ``_loop``
    # (its runner) and ``_cancel_requested`` of its own handle, and writes none of them.

    def _ended(self) -> tuple[State, Any, TracebackType | None]:
        """The terminal state of a done handle, its value or exception, and the traceback, for a
        composition that carries the outcome on (which then owns reporting it)."""
        st = self._st
        if st not in _TERMINAL:
            raise cf.InvalidStateError(f"{self!r} is not done")
        if st is FAILURE:
            self._mark_read()
        return st, self._value, self._tb

    def _now(self) -> tuple[State, Any, str | None]:
        """Where the handle stands (without reading a failure): its state, what goes with it (the
        progress meta, the last attempt's error, the outcome), and an engine's own state name."""
        st = self._st
        return st, self._meta if st is PROGRESS or st is RETRY else self._value, self._state_name

    def _failure(self) -> tuple[State, Any, TracebackType | None] | None:
        """None if this done handle succeeded; else as :meth:`_ended` (the cheap test a composition
        makes for each member that ends)."""
        if self._st is SUCCESS:
            return None
        return self._ended()

    def _fail_as(self, exc: BaseException, tb: TracebackType | None) -> bool:
        """-> FAILURE with ``exc`` and the traceback ``tb`` it had where it first failed."""
        return self._finish(FAILURE, exc, tb)

    def _revoke_as(self, exc: cf.CancelledError) -> bool:
        """-> REVOKED with ``exc`` (an engine's own reason, kept as its cause) as the outcome."""
        return self._finish(REVOKED, exc, None)

    def _fail_in_forked_child(self, exc: BaseException) -> bool:
        """Fail a forked child's copy of this handle, whose work stayed in the parent.

        A thread of the parent (one moving this handle along) may have held its lock at the fork;
        no thread of the child does (this runs before any code of the child), so a held lock is the
        parent's and would never be released here. The state it guarded is whole but for the move
        under way (a move sets the state last), which this failure replaces in the child."""
        if self._lock.locked():
            self._lock = threading.Lock()
        return self._set_exception(exc)

    # -- moves --------------------------------------------------------------------------------------

    def _may_move(self, to: State) -> bool:
        """Check one move against the table; the caller holds the lock. False if already terminal.

        The caller then stores what goes with the new state (outcome, meta) and sets ``_st`` last:
        readers that skip the lock once they see a state must find its data already there.
        """
        frm = self._st
        if frm in _TERMINAL:
            return False
        if to not in _MOVES[frm]:
            if to is STARTED:  # already started: a no-op, not a bug
                return False
            raise cf.InvalidStateError(f"{self!r}: illegal move {frm} -> {to}")
        return True

    def _set_started(self) -> bool:
        """PENDING or RETRY -> STARTED. False if the handle was revoked or ended before the start:
        then the caller must not run the work; False too, changing nothing, if it already runs (so
        an engine that learns of a start late just calls this). Starts the attempt's time limit."""
        with self._lock:
            if self._st is not PENDING and not self._may_move(STARTED):  # PENDING: the common case
                return False
            self._enter_started()
            watchers = self._watchers
        if watchers:
            self._tell(watchers, STARTED, None)
        return True

    def _enter_started(self) -> None:
        """The one way into STARTED; the caller holds the lock (or the handle is still unseen)."""
        self._attempts += 1
        if self._time_limit is not None:
            self._deadline = time.monotonic() + self._time_limit
        self._st = STARTED

    def _set_progress(self, meta: dict[str, Any], state_name: str | None = None) -> bool:
        """STARTED or PROGRESS -> PROGRESS with ``meta`` as ``info``; wakes progress observers.
        ``state_name``: an engine's custom state (Celery's ``update_state(state="RESIZING")``),
        shown by :attr:`state` instead of PROGRESS."""
        with self._lock:
            if not self._may_move(PROGRESS):
                return False
            self._meta = meta
            self._state_name = state_name
            self._pversion += 1
            self._st = PROGRESS
            watchers, pw = self._watchers, self._pw
            self._pw = None
        if pw:
            for waiter in pw:
                waiter.add_result(self)
        if watchers:
            self._tell(watchers, PROGRESS, meta)
        return True

    def _set_retry(self, exc: BaseException) -> bool:
        """STARTED or PROGRESS -> RETRY, with the attempt's error as ``info``."""
        with self._lock:
            if not self._may_move(RETRY):
                return False
            self._meta = exc
            self._deadline = None
            self._st = RETRY
            watchers = self._watchers
        if watchers:
            self._tell(watchers, RETRY, exc)
        return True

    def _watch(self, fn: Callable[[Result[T], State, Any], object]) -> None:
        """Call ``fn(handle, state, info)`` on every STARTED, PROGRESS and RETRY move, in the thread
        that makes it (outside the lock). Not for terminal moves: done-callbacks are for those."""
        self._sync()
        with self._lock:
            if self._st in _TERMINAL:
                return
            if self._watchers is None:
                self._watchers = [fn]
            else:
                self._watchers.append(fn)

    def _tell(self, watchers: list[Callable[[Result[T], State, Any], object]], st: State, info: Any) -> None:
        for fn in watchers:
            try:
                fn(self, st, info)  # type: ignore[arg-type]  # a mixin of Result: self is one
            except BaseException:
                LOGGER.exception("exception in a state observer %r of %r", fn, self)

    def _set_result(self, value: T) -> bool:
        return self._finish(SUCCESS, value, None)

    def _set_exception(self, exc: BaseException) -> bool:
        return self._finish(FAILURE, exc, exc.__traceback__)

    def _set_cancelled(self, msg: str | None = None) -> bool:
        return self._finish(REVOKED, cf.CancelledError(msg) if msg else cf.CancelledError(), None)

    def _on_cancel(self, hook: Callable[[], object]) -> bool:
        """Run ``hook()`` (outside the lock) when cancellation is requested; at once if it already
        was. While a handle has hooks, ``cancel()`` forwards the request and waits for the work to
        report how it ended; without hooks a PENDING handle is revoked at once.

        Returns False, without registering, if the handle is already done: a start step uses this
        as its claim (queued work revoked before the claim is skipped, and after it, cancel()
        reaches the hook)."""
        self._sync()
        with self._lock:
            if self._st in _TERMINAL:
                return False
            if not self._cancel_requested:
                hooks = self._hooks
                if hooks is None:
                    self._hooks = hook
                elif isinstance(hooks, list):
                    hooks.append(hook)
                else:
                    self._hooks = [hooks, hook]
                return True
        self._run_hook(hook)
        return True

    def _run_hook(self, hook: Callable[[], object]) -> None:
        try:
            hook()
        except BaseException:
            LOGGER.exception("exception while carrying a cancel request to the work of %r", self)

    def _finish(self, to: State, value: Any, tb: TracebackType | None) -> bool:
        with self._lock:
            # _may_move's tests, inlined on the path every handle takes once (it raises the error)
            frm = self._st
            if frm in _TERMINAL:
                return False
            if to not in _MOVES[frm]:
                self._may_move(to)
            waiters, callbacks = self._store(value, tb)
            if to is FAILURE and self._report_unread:
                # under the lock, before the move: a reader that sees FAILURE finds it to clear
                self._unread = _UnreadFailure(value, tb, self)  # type: ignore[arg-type]  # a mixin of Result: self is one
            self._st = to  # last: see _may_move
        if waiters is not None or callbacks is not None:
            self._notify(to, waiters, callbacks)
        return True

    def _mark_read(self) -> None:
        """The failure reached someone (a reader, or a composition that carries it on)."""
        if self._unread is not None:
            unread = self.__dict__.pop("_unread", None)
            if unread is not None:
                unread.exc = None  # disarmed before it is dropped (and collected)

    def _store(self, value: Any, tb: TracebackType | None) -> tuple[Any, Any]:
        """Keep the outcome and take what must be woken; the caller holds the lock and has moved."""
        self._value = value
        if tb is not None:
            self._tb = tb
        self._hooks = None
        self._src = None  # the source is done: drop it (and what it holds)
        self._probe = None
        waiters = self._wl
        if type(waiters) is list:
            # cf.wait removes its waiter from this very list later: copy, never clear
            waiters = list(waiters) if waiters else None
        else:  # None, or a bare waiter of ours (cf's join a list): let it go with the wake-up
            self._wl = None
        callbacks = self._callbacks
        self._callbacks = None
        if self._watchers is not None:
            self._watchers = None
        if self._deadline is not None:
            self._deadline = None
        pw = self._pw
        if pw:  # progress() readers wake to see the end
            self._pw = None
            if waiters is None:
                waiters = pw
            elif type(waiters) is list:
                waiters = waiters + pw
            else:
                waiters = [waiters, *pw]
        return waiters, callbacks

    def _notify(self, to: State, waiters: Any, callbacks: Any) -> None:
        # Everything here runs outside the lock: waking loops writes to sockets, callbacks are
        # user code. ``waiters``: None, one waiter, or a list of them (see _wl).
        if waiters is not None:
            for waiter in waiters if type(waiters) is list else (waiters,):
                try:
                    if to is SUCCESS:
                        waiter.add_result(self)
                    elif to is FAILURE:
                        waiter.add_exception(self)
                    else:
                        waiter.add_cancelled(self)
                except BaseException:
                    LOGGER.exception("exception while waking a waiter of %r", self)
        if callbacks is not None:  # None, one entry or a list: fn, or (fn, loop)
            for fn in callbacks if type(callbacks) is list else (callbacks,):
                if type(fn) is tuple:
                    self._dispatch(*fn)
                    continue
                try:  # _invoke, inlined: a composition runs one such callback per member
                    fn(self)
                except BaseException:
                    LOGGER.exception("exception calling done-callback %r of %r", fn, self)

    def _sync(self) -> None:
        """Bring the handle up to date with its source before it is read or waited on.

        Two adapter seams: ``_activate(handle)``, a binding made lazily (an asyncio future awaited
        only on its own loop needs no done-callback at all: the await reads the future directly), run
        once before anything else needs the handle to be told; and ``_probe(source)``, for a source that
        cannot report its start (a foreign cf.Future), asked whether it runs. Never called with the
        lock held.
        """
        if self._activate is not None:
            self._bind_now()
        probe = self._probe
        if probe is not None and self._st is PENDING and probe(self._src):
            self._set_started()

    def _bind_now(self) -> None:
        """Run the lazy binding ``_activate`` once, whoever comes first. Takes only this handle's
        lock, and runs no callback and wakes no waiter: everything that registers one binds first."""
        with self._lock:
            act = self._activate
            self._activate = None
        if act is not None:
            act(self)  # type: ignore[arg-type]  # a mixin of Result: self is one

    def _add_waiter(self, waiter: object) -> bool:
        """Put ``waiter`` (woken through cf's waiter protocol) on the list the end wakes; False if the
        handle is already done. For a blocking get() and for an awaiter alike."""
        with self._lock:
            if self._st in _TERMINAL:
                return False
            wl = self._wl
            if wl is None:
                self._wl = waiter  # no list for the one waiter most handles ever have
            elif type(wl) is list:
                wl.append(waiter)
            else:
                self._wl = [wl, waiter]
            return True

    def _remove_waiter(self, waiter: object) -> None:
        """Withdraw ``waiter`` (timed out, cancelled or interrupted), if it is still on the list."""
        with self._lock:
            wl = self._wl
            if wl is waiter:
                self._wl = None
            elif type(wl) is list and waiter in wl:
                wl.remove(waiter)

    def _adopt(self, src: Any) -> bool:
        """End the handle as the done future ``src`` (asyncio or cf) ended; usable as its callback."""
        if src.cancelled():
            return self._set_cancelled()
        exc = src.exception()  # also marks an asyncio future's exception as retrieved
        if exc is not None:
            return self._set_exception(exc)
        return self._set_result(src.result())

    # -- cancellation -----------------------------------------------------------------------------

    def cancel(self) -> bool:
        """Ask the work to stop, wherever it lives; thread-safe.

        Returns False only when the handle is already done; True otherwise, even for running work
        (``concurrent.futures.Future.cancel`` returns False there). The handle turns REVOKED only once
        the work has really stopped or never started:

        - work not yet started by asyncbridge (queued thread work, a coroutine not yet on its loop)
          is revoked at once and never runs;
        - an asyncio task is cancelled on its own loop (``CancelledError`` at its next ``await``);
        - a ``concurrent.futures.Future`` is cancelled if still pending; running, it is out of reach;
        - running thread work sees the request through ``checkpoint()`` / ``cancel_requested()``.

        Work that ignores the request ends SUCCESS or FAILURE and the handle says so: a produced
        result is never thrown away.
        """
        self._sync()
        with self._lock:
            st = self._st
            if st in _TERMINAL:
                return False
            if self._cancel_requested:
                return True
            self._cancel_requested = True
            hooks = self._hooks
            self._hooks = None
            taken = None
            if st is PENDING and hooks is None:
                # Not yet claimed by a start step: revoke under this same lock, so no start can
                # slip in between; the start step will find REVOKED and skip the work.
                taken = self._store(cf.CancelledError(), None)
                self._st = REVOKED  # last: see _may_move
        if taken is not None:
            self._notify(REVOKED, *taken)
        elif hooks is not None:
            for hook in hooks if isinstance(hooks, list) else (hooks,):
                self._run_hook(hook)
        return True
