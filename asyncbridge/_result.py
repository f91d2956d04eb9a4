"""The handle: one state machine for every kind of work (docs/architecture.md, "The handle").

:class:`Result` owns its :class:`State`, its outcome (a value, or an exception kept with its
traceback), its waiters (blocking ``get()`` calls, awaiters on any number of asyncio loops or trio
runs, ``concurrent.futures.wait`` calls), its done-callbacks, and the cancellation request with the
hooks that carry it to the work. Adapters bind a kind of work to a handle through the producer API
below and nothing else (``asyncbridge.extension`` is its public face). The rest of the handle is
mixins, one module each: ``_reading.py`` (``state``, ``info``, ``done()``...), ``_callbacks.py``,
``_blocking.py`` (``get()`` and cf's readers), ``_awaiting.py`` (``await``, ``shield``),
``_progress.py`` (progress observers) and ``_cf_compat.py`` (what cf's own functions read of a
``cf.Future``, and its producer API).

Design record (the figures are in the README's speed table):

- ``Result`` subclasses ``concurrent.futures.Future`` so that ``cf.wait``, ``cf.as_completed``,
  ``asyncio.wrap_future`` and ``isinstance`` checks accept it. It never calls ``Future.__init__``:
  the ``Condition`` (with its ``RLock``) that makes a ``cf.Future`` several times larger is created
  only when ``cf.wait``/``cf.as_completed`` asks for ``_condition``, and it wraps the handle's own
  plain lock, so the cf waiter protocol and our transitions are serialised by one lock. Slots keep
  a pending handle smaller than a ``cf.Future`` and cheaper to make.
- A slotted duck type was the cheaper alternative, but ``cf.wait``/``cf.as_completed`` read
  ``_condition``/``_waiters``/``_state`` and ``asyncio.wrap_future`` checks ``isinstance``: the
  subclass passes all of them (tests/test_cf_anchors.py runs CPython's properties against it).
- Every waiter, ours or cf's, sits in one list and is woken through cf's waiter protocol
  (``add_result``/``add_exception``/``add_cancelled``), outside the lock.
- A waiter carries a wake-up, not the outcome: the woken caller reads the outcome from the handle, so
  every caller sees the same exception object, re-raised with its original traceback.
- The lock is never held while user code runs or a loop is woken (callbacks may re-enter, block, or
  take another handle's lock).
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import threading
import time
from typing import TYPE_CHECKING, Any, TypeVar, overload

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Callable, Coroutine
    from types import TracebackType

from . import _ids as ids
from ._awaiting import Awaiting
from ._blocking import Blocking
from ._by_id import ById
from ._callbacks import Callbacks
from ._cf_compat import CfFuture
from ._progress import Progress
from ._reading import Reading
from ._state import (
    _MOVES,
    _TERMINAL,
    FAILURE,
    PENDING,
    PROGRESS,
    RETRY,
    REVOKED,
    STARTED,
    SUCCESS,
    State,
)
from ._unread import UnreadFailure as _UnreadFailure
from ._waiters import get_running_loop

__all__ = ["Result", "State"]

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)
U = TypeVar("U")

LOGGER = logging.getLogger("asyncbridge")

_get_running_loop = get_running_loop


_ID_LOCK = threading.Lock()

#: ``Result.then``'s implementation, installed by ``_compose`` when the package is imported: it
#: starts new work (a thread, a coroutine), and the handle imports no kind of work.
_THEN: list[Callable[[Result[Any], Callable[[Any], Any]], Result[Any]]] = []


def install_then(impl: Callable[[Result[Any], Callable[[Any], Any]], Result[Any]]) -> None:
    _THEN[:] = [impl]


def outcomes(handles: list[Result[Any]]) -> list[Any]:
    """The value (or, if it failed, the exception) of each of ``handles``, all done and each one's
    failure read already: what ``gather`` returns, in one pass over the handles' own fields."""
    return [h._value for h in handles]


class Result(Reading, ById, Callbacks[T], Blocking[T], Awaiting[T], Progress, CfFuture[T], cf.Future[T]):
    """A handle to work that finishes later: awaitable, blocking-gettable, cancellable.

    Obtain one from :func:`asyncbridge.wrap`, :func:`asyncbridge.spawn` or
    :func:`asyncbridge.run_in_thread`. ``Result()`` with no argument makes a blank handle that you
    complete yourself with :meth:`set_result` / :meth:`set_exception`, as an executor completes a
    ``concurrent.futures.Future``.

    - ``await handle`` works in any coroutine on any asyncio loop in any thread, and under trio
      (directly or through anyio). It returns the value or raises the work's exception.
    - ``handle.get(timeout)`` blocks the calling thread, except where blocking could never end.
    - It is a ``concurrent.futures.Future``: ``cf.wait``, ``cf.as_completed`` and
      ``asyncio.wrap_future`` accept it, mixed with plain futures.
    - Celery's reading API: ``id``, ``state``, ``info``, ``traceback``, ``ready()``,
      ``successful()``, ``failed()``.

    Every method is thread-safe.
    """

    # What every handle uses lives in slots. What few handles use (progress, retries, time limits,
    # state observers, cf.wait, a cancel request, a traceback) is a class-level default here and
    # goes to the instance dict, which cf.Future's layout gives every handle, only when written:
    # a pending handle stays small, and the moves below write those fields only when they are set.
    __slots__ = (
        "_activate",
        "_attempts",
        "_callbacks",
        "_hooks",
        "_id",
        "_label",
        "_lock",
        "_loop",
        "_probe",
        "_src",
        "_st",
        "_value",
        "_wl",
    )

    _st: State
    _value: Any
    _callbacks: list[tuple[Callable[[Result[T]], object], asyncio.AbstractEventLoop | None]] | None
    _wl: Any  # None, one waiter (kept bare: most handles never have a second), or a list of them
    _id: str | None
    # None, one hook (kept bare, as _wl), or a list of them
    _hooks: Callable[[], object] | list[Callable[[], object]] | None
    _loop: Any
    _label: str
    _probe: Callable[[Any], bool] | None
    _src: Any
    _activate: Callable[[Result[T]], object] | None
    _attempts: int
    # The seldom-used fields, with their defaults (see __slots__).
    _tb: TracebackType | None = None
    _cond: threading.Condition | None = None
    _cancel_requested: bool = False
    _meta: Any = None  # the latest progress dict, or the error of the last attempt while RETRY
    _time_limit: float | None = None  # an execution time limit, honoured by the adapter
    _deadline: float | None = None  # monotonic time the current attempt runs out
    _watchers: list[Callable[[Result[T], State, Any], object]] | None = None
    _pw: list[Any] | None = None  # awaiters of the next progress report
    _pversion: int = 0  # progress reports so far
    _state_name: str | None = None  # an engine's own name for a PROGRESS-like state
    # An engine that holds its handles weakly (a Celery listener: a dropped handle no one waits
    # on should not be tracked for ever) is told when one gets a callback, to hold it strongly.
    _pin: Callable[[Result[T]], object] | None = None
    # A failure no one has read yet, on handles that report it (see Owned).
    _unread: _UnreadFailure | None = None
    _report_unread: bool = False

    def __init__(self, task_id: str | None = None, *, app: Any = None, store: Any = None) -> None:
        """``Result()``: a blank handle, completed with :meth:`set_result`/:meth:`set_exception`.

        ``Result(task_id)``: a handle that agrees with the one known by ``task_id`` in this process
        (same state and outcome; ``await``, ``get()``, callbacks and ``cancel()`` reach the same
        work); :class:`asyncbridge.UnknownResult` (a ``LookupError``) at once for an id this process
        never issued, or whose handle is gone or was forgotten, unless the default result store
        has it (if one is configured, ``ASYNCBRIDGE_STORE``, or its file exists).
        ``Result(task_id, store=...)`` (a :class:`asyncbridge.ResultStore`, a store URL, or True
        for the default store): the handle of the result stored there, which follows its record
        from any process; the record is the truth (UnknownResult once forgotten or expired).
        ``Result(task_id, app=engine)``: the handle of that engine's task (a Celery app: sent by
        this process or not)."""
        # cf.Future.__init__ is skipped on purpose: see the module docstring. The fields are set
        # through an alias: CPython 3.13+ sizes every instance's inline dict by the ``self.x = ``
        # stores it finds in __init__, and these are all slots.
        h = self
        h._lock = threading.Lock()
        h._st = PENDING
        h._value = None
        h._callbacks = None
        h._wl = None
        h._id = None
        h._hooks = None
        h._loop = None
        h._label = ""
        h._probe = None
        h._src = None
        h._activate = None
        h._attempts = 0
        if task_id is not None or app is not None or store is not None:
            self._bind_task_id(task_id, app, store)
            self.__class__ = Wrapped  # the work completes it, not the caller

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
            ids.register(self, task_id)
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
            if not self._may_move(STARTED):
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
                fn(self, st, info)
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
            if not self._may_move(to):
                return False
            waiters, callbacks = self._store(value, tb)
            if to is FAILURE and self._report_unread:
                # under the lock, before the move: a reader that sees FAILURE finds it to clear
                self._unread = _UnreadFailure(value, tb, self)
            self._st = to  # last: see _may_move
        if waiters is not None or callbacks:
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
        if callbacks:
            for fn, loop in callbacks:
                if loop is not None:
                    self._dispatch(fn, loop)
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
            act(self)

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

    # -- composition ------------------------------------------------------------------------------

    @overload
    def then(self, fn: Callable[[T], Coroutine[Any, Any, U]]) -> Result[U]: ...
    @overload
    def then(self, fn: Callable[[T], U]) -> Result[U]: ...
    def then(self, fn: Callable[[T], Any]) -> Result[Any]:
        """A new handle for ``fn(value)``, run once this handle succeeds.

        A sync ``fn`` runs on the shared thread pool (never on an event loop, where it could block
        it); an async ``fn`` is spawned as :func:`asyncbridge.spawn` does, and its result awaited.
        A failure or revocation here flows through: the new handle ends the same way and ``fn``
        never runs. Cancelling the new handle cancels this one (if unfinished) and ``fn``'s work.
        """
        return _THEN[0](self, fn)

    # -- the rest ---------------------------------------------------------------------------------

    def __repr__(self) -> str:
        label = f" {self._label}" if self._label else ""
        name = "Result" if isinstance(self, Owned) else type(self).__name__
        return f"<{name} {self.id[:8]}… {self._st}{label}>"  # no locks: see _move

    def __reduce__(self) -> Any:
        raise TypeError(
            f"{self!r} cannot be pickled: it is bound to work in this process; send its .id instead"
        )


class Owned(Result[T]):
    """The handle of running work, made by an adapter (``run_in_thread``, ``spawn``, ``wrap``, a
    composition, a Celery task id): only that work completes it, through the private completer API.
    A failure that no one reads is logged to the ``asyncbridge`` logger when the handle is collected
    (:class:`Wrapped` handles leave that to the future they wrap).

    ``set_result``, ``set_exception`` and ``set_running_or_notify_cancel`` raise ``RuntimeError``
    here (``InvalidStateError`` once it is done, as on any future): a value set from outside would
    be reported as the work's, and the work's own outcome then dropped. ``cancel()`` is how a
    caller ends such work early. A subclass with no slots of its own, so being owned costs neither
    memory nor a check on the adapters' paths; ``repr`` and the static type still say ``Result``.
    """

    __slots__ = ()
    _report_unread = True

    def _refuse(self, method: str) -> Exception:
        if self._st in _TERMINAL:  # what cf says of any finished future comes first
            return cf.InvalidStateError(f"{self!r} is already done")
        return RuntimeError(
            f"{method}() on {self!r}: this handle belongs to its work, which alone completes it; "
            "cancel() it to stop the work, or make a blank asyncbridge.Result() to complete by hand"
        )

    def set_result(self, result: T) -> None:
        raise self._refuse("set_result")

    def set_exception(self, exception: BaseException | None) -> None:
        raise self._refuse("set_exception")

    def set_running_or_notify_cancel(self) -> bool:
        raise self._refuse("set_running_or_notify_cancel")


class Wrapped(Owned[T]):
    """An owned handle over a future or result the caller also holds (``wrap(cf_future)``,
    ``wrap(asyncio_task)``, a Celery result): its failure may be read there, so the handle does not
    report it as unread."""

    __slots__ = ()
    _report_unread = False
