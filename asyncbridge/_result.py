"""The handle: one state machine for every kind of work (docs/architecture.md, "The handle").

:class:`Result` owns its :class:`State`, its outcome (a value, or an exception kept with its
traceback), its waiters (blocking ``get()`` calls, awaiters on any number of asyncio loops or trio
runs, ``concurrent.futures.wait`` calls), its done-callbacks, and the cancellation request with the
hooks that carry it to the work. Adapters bind a kind of work to a handle through the producer API
(``_machine.py``, with the moves; ``asyncbridge.extension`` is its public face) and nothing else.
This module holds the fields and the constructor; the rest of the handle is mixins, one module
each: ``_machine.py`` (the state machine), ``_reading.py`` (``state``, ``info``, ``done()``...),
``_callbacks.py``, ``_blocking.py`` (``get()`` and cf's readers), ``_awaiting.py`` (``await``,
``shield``), ``_progress.py`` (progress observers) and ``_cf_compat.py`` (what cf's own functions
read of a ``cf.Future``, and its producer API).

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
import threading
from typing import TYPE_CHECKING, Any, TypeVar, overload

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine
    from types import TracebackType

    from ._unread import UnreadFailure as _UnreadFailure

from ._awaiting import Awaiting
from ._blocking import Blocking
from ._by_id import ById
from ._callbacks import Callbacks
from ._cf_compat import CfFuture
from ._machine import LOGGER as LOGGER, Machine
from ._progress import Progress
from ._reading import Reading
from ._state import (
    _TERMINAL,
    PENDING,
    State,
)
from ._waiters import get_running_loop

__all__ = ["Result", "State"]

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)
U = TypeVar("U")

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


class Result(
    Reading, ById, Callbacks[T], Blocking[T], Awaiting[T], Progress, CfFuture[T], Machine[T], cf.Future[T]
):
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
    _callbacks: Any  # None, one entry or a list of them; an entry: fn, or (fn, loop)
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
