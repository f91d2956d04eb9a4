"""For authors of adapters: bind a new kind of work to the handle without touching the package.

A kind of work is one module. It makes a handle for each piece of work (:func:`new_handle`), moves
it through the producer API below as the work starts, reports, retries and ends, and registers an
:class:`Adapter` so that ``asyncbridge.wrap()``, ``@asyncbridge.task(engine=...)`` and
``asyncbridge.Result(task_id, app=...)`` find it. Waiting (``get()``, ``await``, ``cf.wait``),
callbacks, progress observers, composition and cancellation are the handle's: an adapter does none
of them. docs/architecture.md describes the state machine and how a cancel travels.

The producer API is the only way anything changes a handle, the library's own adapters included.
Every call checks the move against the state machine (``PENDING -> STARTED -> (PROGRESS | RETRY)*
-> SUCCESS | FAILURE | REVOKED``, only forward) and returns False, changing nothing, when the move
is not allowed (the handle already ended, say, because it was cancelled): the work then knows its
outcome is not wanted, and need not read the state to decide. All of them are thread-safe and may
be called from any thread; none blocks; done-callbacks and waiters run outside the handle's lock.

An adapter module that ships in a distribution of its own registers itself by an entry point in
the group ``asyncbridge.adapters``, named after the top-level package of the objects it handles::

    [project.entry-points."asyncbridge.adapters"]
    mylib = "mylib_asyncbridge"

and the core imports it the first time it meets an object of ``mylib``. Or call
:func:`register` yourself.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from ._context import CURRENT, Work as Work
from ._registry import (
    Adapter as Adapter,
    RemoteTask as RemoteTask,
    register as register,
    unregister as unregister,
)
from ._result import Owned, Result, Wrapped
from ._validate import callable_arg

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

__all__ = [
    "Adapter",
    "BlockingGuard",
    "RemoteTask",
    "Work",
    "cancel_requested",
    "confirm_cancelled",
    "fail",
    "guard_blocking",
    "name",
    "new_handle",
    "on_cancel",
    "progress",
    "register",
    "retry",
    "running_as",
    "start",
    "succeed",
    "unregister",
]

T = TypeVar("T")


def new_handle(
    label: str = "", *, task_id: str | None = None, caller_holds_source: bool = False
) -> Result[Any]:
    """A PENDING handle for a new piece of work, owned by the adapter that makes it.

    ``set_result()``/``set_exception()`` on it raise for everyone else: only the producer API
    below completes it. ``label`` shows in its ``repr`` and messages (``"dask inc()"``); ``task_id``
    is its ``id`` (the engine's own id, as Celery's task id or Dask's key), else one is made on first
    read. ``caller_holds_source``: the caller also holds the object the handle mirrors (a future it
    passed to ``wrap()``), where it may read a failure; otherwise a failure no one reads is logged
    when the handle is collected.
    """
    h: Result[Any] = Wrapped() if caller_holds_source else Owned()
    if not isinstance(label, str):
        raise TypeError(f"label must be a str, not {type(label).__qualname__}")
    if task_id is not None and (not isinstance(task_id, str) or not task_id):
        raise TypeError(f"task_id must be a non-empty str, not {task_id!r}")
    h._setup(label, task_id=task_id)
    return h


class BlockingGuard(Protocol):
    """An engine's rule for blocking waits (see :func:`guard_blocking`)."""

    def check_can_block(self, h: Result[Any], caller: str, /) -> None:
        """Raise ``RuntimeError`` (naming ``caller``, the method: ``"get"``...) if a blocking wait
        for ``h`` in the calling thread could never end, or would break the engine's rule."""
        ...


def guard_blocking(h: Result[Any], guard: BlockingGuard, *, even_when_done: bool = False) -> None:
    """Before any blocking wait on ``h`` (``get()``, ``result()``, ``wait()``...), the handle calls
    ``guard.check_can_block(h, caller)`` in the waiting thread: the one place an engine states where
    a thread must not block for its work (Celery: inside a running task). ``even_when_done``: the
    rule holds after the work ended too (as Celery's ``AsyncResult.get()`` applies it). Call it on
    a new handle, before handing it out."""
    if not callable(getattr(guard, "check_can_block", None)):
        raise TypeError(f"a blocking guard needs a check_can_block(handle, caller) method, not {guard!r}")
    h._bind_source(runner=_EvenWhenDone(guard) if even_when_done else guard)


class _EvenWhenDone:
    __slots__ = ("guard",)
    check_even_when_done = True

    def __init__(self, guard: BlockingGuard) -> None:
        self.guard = guard

    def check_can_block(self, h: Result[Any], caller: str) -> None:
        self.guard.check_can_block(h, caller)


def name(h: Result[Any], label: str | None = None, *, task_id: str | None = None) -> None:
    """Name a handle before handing it out: its ``label`` (``repr`` and messages) and its ``id``
    (the engine's own id). For the blank handle ``Adapter.by_id`` is given, whose ``id`` is already
    the one asked for; only what is given changes."""
    if label is not None and not isinstance(label, str):
        raise TypeError(f"label must be a str, not {type(label).__qualname__}")
    if task_id is not None and (not isinstance(task_id, str) or not task_id):
        raise TypeError(f"task_id must be a non-empty str, not {task_id!r}")
    h._setup(label, task_id=task_id)


@contextlib.contextmanager
def running_as(work: Work) -> Iterator[None]:
    """Inside the block, ``asyncbridge.checkpoint()``, ``cancel_requested()`` and
    ``report_progress()`` (in this thread or task, and in what it spawns with this context) address
    ``work``: the handle itself where the work runs in this process, or, in a process of the engine
    (a worker), a stand-in that carries the calls to the caller's handle (see :class:`Work`)."""
    token = CURRENT.set(work)
    try:
        yield
    finally:
        CURRENT.reset(token)


def start(h: Result[Any]) -> bool:
    """PENDING (or RETRY) -> STARTED: the work really started. False if the handle was cancelled or
    ended before: then do not run the work."""
    return h._set_started()


def progress(h: Result[Any], meta: dict[str, Any], state: str | None = None) -> bool:
    """STARTED or PROGRESS -> PROGRESS with ``meta`` as ``info``; progress observers get it.
    ``state``: the engine's own name for this state (Celery's custom states), shown by ``h.state``."""
    if not isinstance(meta, dict):
        raise TypeError(f"progress meta must be a dict, not {type(meta).__qualname__}")
    return h._set_progress(meta, state)


def retry(h: Result[Any], error: BaseException) -> bool:
    """STARTED or PROGRESS -> RETRY, with the failed attempt's ``error`` as ``info``; the next attempt
    calls :func:`start` again."""
    return h._set_retry(error)


def succeed(h: Result[T], value: T) -> bool:
    """-> SUCCESS with ``value``: every waiter wakes, every done-callback runs."""
    return h._set_result(value)


def fail(h: Result[Any], error: BaseException) -> bool:
    """-> FAILURE with ``error`` (its traceback kept): every waiter gets that same exception."""
    if not isinstance(error, BaseException):
        raise TypeError(f"fail() needs an exception, not {type(error).__qualname__}")
    return h._set_exception(error)


def confirm_cancelled(h: Result[Any], message: str | None = None) -> bool:
    """-> REVOKED: the work stopped because it was cancelled, here (after :func:`on_cancel`'s hook)
    or elsewhere (the engine cancelled it); every waiter learns it."""
    return h._set_cancelled(message)


def on_cancel(h: Result[Any], hook: Callable[[], object]) -> bool:
    """Carry ``h.cancel()`` to the work: ``hook()`` runs once when cancellation is requested (at once
    if it already was), in the cancelling thread, outside the handle's lock; it must not block.

    While a handle has a hook, ``cancel()`` leaves the state to the work: the work reports how it
    ended (:func:`confirm_cancelled`, or its result if it finished anyway). Without one, a PENDING
    handle is revoked at once. False, registering nothing, if the handle already ended.
    """
    callable_arg(hook, "on_cancel")
    return h._on_cancel(hook)


def cancel_requested(h: Result[Any]) -> bool:
    """Whether ``h.cancel()`` was called (work that polls, rather than hooks, reads this)."""
    return bool(h._cancel_requested)
