"""The calls made *inside* work: ``checkpoint()`` and ``cancel_requested()``.

Each adapter runs its work in a context where :data:`CURRENT` holds the work's handle (thread work in
the copied context it runs in, a coroutine in its task's context), so these calls find their handle
alike in threads and coroutines, and later in processes, without any argument.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from ._errors import Cancelled

if TYPE_CHECKING:
    from ._result import Result

CURRENT: ContextVar[Result[Any] | None] = ContextVar("asyncbridge_current_work", default=None)


def checkpoint() -> None:
    """Raise :class:`asyncbridge.Cancelled` if the work calling it has been asked to stop.

    Call it between steps of long thread work: after ``handle.cancel()`` the next ``checkpoint()``
    raises, the exception unwinds the work, and the handle ends REVOKED. Outside any asyncbridge
    work (plain code, the main thread) it does nothing and returns at once.
    """
    h = CURRENT.get()
    if h is not None and h._cancel_requested:
        raise Cancelled(f"{h!r} was cancelled")


def cancel_requested() -> bool:
    """True if the work calling it has been asked to stop; never raises.

    For work that wants to stop on its own terms (finish a file, then return). Outside any
    asyncbridge work it returns False.
    """
    h = CURRENT.get()
    return h is not None and h._cancel_requested


def settle_failure(h: Result[Any], exc: BaseException) -> None:
    """End ``h`` for work that raised ``exc``: REVOKED if it is our ``Cancelled`` answering a
    request, FAILURE otherwise (work that raised Cancelled unasked simply failed)."""
    if isinstance(exc, Cancelled) and h._cancel_requested:
        h._set_cancelled()
    else:
        h._set_exception(exc)
