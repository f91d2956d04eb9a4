"""The exceptions asyncbridge raises, beside the standard ones it reuses.

The tree::

    BaseException
     ├── asyncio.CancelledError
     │    └── Cancelled            raised by checkpoint() inside work whose handle was cancelled
     └── Exception
          ├── TimeoutError (builtin)
          │    └── TimeLimitExceeded   the work ran past its execution time limit and was stopped
          ├── RuntimeError
          │    └── WorkerCrashed   a worker process died while running the work
          └── RemoteTraceback      the worker's traceback text, chained as a remote error's cause

Everything else is a standard exception, chosen so that existing ``except`` clauses keep working:

- ``TimeoutError`` (the builtin; since 3.11 also ``asyncio.TimeoutError`` and
  ``concurrent.futures.TimeoutError``): ``get(timeout=...)`` ran out.
- ``concurrent.futures.CancelledError`` (an ``Exception``): ``get()``/``result()`` on a REVOKED handle,
  and ``await`` on a REVOKED handle under trio.
- ``asyncio.CancelledError``: ``await`` on a REVOKED handle under asyncio.
- ``concurrent.futures.InvalidStateError``: ``set_result``/``set_exception`` on a finished handle.
- ``RuntimeError``: a ``get()`` that could never return (on the event-loop thread that must run the
  work), or work submitted after shutdown.
"""

from __future__ import annotations

import asyncio
import math
from types import CoroutineType


class Cancelled(asyncio.CancelledError):
    """Raised by :func:`asyncbridge.checkpoint` inside work whose handle was cancelled.

    It derives from ``asyncio.CancelledError``, a ``BaseException``, so that a broad
    ``except Exception:`` in the work does not swallow it. Let it propagate: the handle then ends
    REVOKED. Work that catches it and returns a value ends SUCCESS instead, and the handle says so.
    """


class UnknownResult(LookupError):
    """No result is known by this id: never issued here, forgotten, or gone (its work ended and no
    one kept its handle). ``task_id`` is the id; ``reason`` says which, where it is known."""

    def __init__(self, task_id: str, reason: str) -> None:
        super().__init__(f"no result is known by id {task_id!r}: {reason}")
        self.task_id = task_id
        self.reason = reason


class StoreError(RuntimeError):
    """The result store could not do what was asked: a record that fails its signature check (it
    was not written with this store's key, or was altered), a result above the store's size limit,
    a store that cannot be reached. ``permanent``: no later attempt will do better (a file that is
    no longer a store), as opposed to a server that may come back."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


class WorkerCrashed(RuntimeError):
    """A worker process died (a signal, ``os._exit``, a segfault, out of memory) while running the work.

    Only the task that worker was running fails; the pool starts a new worker for the next task.

    Attributes:
        pid: the process id of the worker that died.
        exitcode: its exit code (negative: killed by that signal), or None if unknown.
    """

    def __init__(self, message: str, *, pid: int, exitcode: int | None) -> None:
        super().__init__(message)
        self.pid = pid
        self.exitcode = exitcode

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_worker_crashed, (str(self), self.pid, self.exitcode))


def _rebuild_worker_crashed(message: str, pid: int, exitcode: int | None) -> WorkerCrashed:
    return WorkerCrashed(message, pid=pid, exitcode=exitcode)


class RemoteTraceback(Exception):
    """The traceback text of an exception raised in a worker process.

    Set as the ``__cause__`` of the exception that comes back, so the worker's frames show in
    ``handle.traceback`` and in any printed traceback, under "The above exception was the direct
    cause of the following exception".
    """

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f'\n"""\n{self.text}"""'


class TimeLimitExceeded(TimeoutError):
    """The work ran past its execution time limit (``@task(timeout=...)``, ``spawn(coro, timeout=...)``).

    A subclass of the builtin ``TimeoutError``, so a caller can tell it apart from ``get(timeout=)``
    running out (a plain ``TimeoutError``, which leaves the work running). The handle ends FAILURE
    with it once the work has stopped: raised by ``checkpoint()`` in thread and process work,
    after the worker was terminated for process work that did not check, by cancelling a coroutine.
    """


def format_seconds(seconds: float) -> str:
    """A duration for a message a user reads: three significant digits at most, in plain notation,
    with its unit (``0.1`` -> ``"0.1 s"``, ``0.09989834900034111`` -> ``"0.0999 s"``, ``30.0`` ->
    ``"30 s"``, ``120.7`` -> ``"121 s"``). Every message of the library that states seconds (time
    limits, ``get(timeout=)``) goes through here, so they all read alike."""
    if not math.isfinite(seconds) or seconds == 0 or not 1e-6 <= abs(seconds) < 1e6:
        return f"{seconds:.3g} s"  # none, or out of any useful range: short, whatever the notation
    # Decimals that keep 3 significant digits (none from 100 s up; no exponent below 0.001 s).
    decimals = max(0, 2 - math.floor(math.log10(abs(seconds))))
    text = f"{seconds:.{decimals}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return f"{text} s"


def close_coroutines(*objs: object) -> None:
    """Close every coroutine object among ``objs``.

    Called before raising for bad input: a coroutine passed where it does not belong would
    otherwise also make Python warn "coroutine ... was never awaited", which (under warnings as
    errors) buries the real message, and it must not run either.
    """
    for obj in objs:
        if isinstance(obj, CoroutineType):
            obj.close()


def revoked_error(flavour: type[BaseException], stored: BaseException) -> BaseException:
    """A fresh cancellation error of ``flavour`` for a REVOKED handle, with the stored one's
    message and cause (an engine's own revocation error, such as Celery's TaskRevokedError)."""
    err = flavour(*stored.args)
    err.__cause__ = stored.__cause__
    return err
