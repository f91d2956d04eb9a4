"""The calls made *inside* work: ``checkpoint()``, ``cancel_requested()``, ``report_progress()``.

Each adapter runs its work in a context where :data:`CURRENT` holds the work's handle (thread work in
the copied context it runs in, a coroutine in its task's context), so these calls find their handle
alike in threads and coroutines, and later in processes, without any argument.
"""

from __future__ import annotations

import time
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Protocol

from . import _registry as registry
from ._errors import Cancelled, TimeLimitExceeded, format_seconds

if TYPE_CHECKING:
    from ._result import Result


class Work(Protocol):
    """What the calls made inside work need of it. A handle is one; where the handle lives in
    another process (a worker process, a Celery worker), the adapter sets a stand-in that carries
    the calls there (docs/architecture.md, "Inside the work")."""

    @property
    def _label(self) -> str: ...
    @property
    def _cancel_requested(self) -> bool: ...
    @property
    def _deadline(self) -> float | None: ...
    @property
    def _time_limit(self) -> float | None: ...
    def _set_progress(self, meta: dict[str, Any], state_name: str | None = None, /) -> bool: ...


CURRENT: ContextVar[Work | None] = ContextVar("asyncbridge_current_work", default=None)


def checkpoint() -> None:
    """Raise if the work calling it must stop: :class:`asyncbridge.Cancelled` after
    ``handle.cancel()``, :class:`asyncbridge.TimeLimitExceeded` once its time limit has run out.

    Call it between steps of long thread or process work (in a coroutine, ``await`` already is a
    cancellation point, but it works there too). Let the exception unwind the work: the handle then
    ends REVOKED (cancelled) or FAILURE (time limit). Outside any asyncbridge work (plain code, the
    main thread) it does nothing and returns at once.
    """
    h = CURRENT.get()
    if h is None:
        return
    if h._cancel_requested:
        raise Cancelled(f"{h._label or 'the work'} was cancelled")
    deadline = h._deadline
    if deadline is not None and time.monotonic() >= deadline:
        limit = format_seconds(h._time_limit or 0.0)
        raise TimeLimitExceeded(f"{h._label or 'the work'} exceeded its time limit of {limit}")


def cancel_requested() -> bool:
    """True if the work calling it has been asked to stop (cancelled, or out of time); never raises.

    For work that wants to stop on its own terms (finish a file, then return). Outside any
    asyncbridge work it returns False.
    """
    h = CURRENT.get()
    if h is None:
        return False
    if h._cancel_requested:
        return True
    deadline = h._deadline
    return deadline is not None and time.monotonic() >= deadline


def report_progress(**meta: Any) -> None:
    """Report progress from inside work: the handle shows ``state == "PROGRESS"`` and
    ``info == meta`` (a dict), and its ``on_progress`` observers and ``progress()`` readers get it.

    Works alike in thread work, process work (the dict crosses to the parent, so it must pickle),
    coroutines, and Celery tasks (as ``update_state(state="PROGRESS", meta=meta)``). A report after
    the handle has ended is ignored.

    Raises:
        RuntimeError: called outside any asyncbridge work, where there is no handle to report to.
        TypeError: from process work, ``meta`` cannot be pickled.
    """
    h: Work | None = CURRENT.get()
    if h is None:  # work an adapter's engine runs, even not through @task (a plain Celery task)
        h = registry.current_work()
    if h is None:
        raise RuntimeError(
            "report_progress() was called outside asyncbridge work: there is no handle to report to"
        )
    h._set_progress(meta)


def settle_failure(h: Result[Any], exc: BaseException) -> None:
    """End ``h`` for work that raised ``exc``: REVOKED if it is our ``Cancelled`` answering a
    request, FAILURE otherwise (work that raised Cancelled unasked simply failed)."""
    if isinstance(exc, Cancelled) and h._cancel_requested:
        h._set_cancelled()
    else:
        h._set_exception(exc)
