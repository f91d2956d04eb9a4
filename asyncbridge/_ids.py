"""Ids to handles, in this process: ``Result(task_id)`` and ``forget()``.

A handle's id is made the first time someone reads it (``h.id``, ``repr(h)``), or given by its
engine (a Celery task id); from then on this registry maps it to the handle, weakly: for as long as
the handle lives (its work holds it while it runs, and its caller for as long as it keeps it),
``Result(that_id)`` in this process is a handle that agrees with it. An id this process never
issued, or whose handle is gone or was forgotten, is unknown: :class:`UnknownResult`, at once,
never a PENDING that would wait for ever. Handles whose id nobody reads cost nothing here.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from . import _runtime as runtime
from ._errors import UnknownResult

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._result import Result

__all__ = ["find", "forget", "register"]


#: How many forgotten ids are remembered as such (so that a lookup can say "forgotten").
FORGOTTEN_KEPT = 10_000

_LOCK = threading.Lock()
_LIVE: weakref.WeakValueDictionary[str, Result[Any]] = weakref.WeakValueDictionary()
_FORGOTTEN: OrderedDict[str, None] = OrderedDict()


def register(h: Result[Any], ident: str) -> None:
    """``h`` is known by ``ident`` from now on (its id was just made, or given by its engine)."""
    with _LOCK:
        if _LIVE.get(ident) is None:  # the first handle stays the one found (others follow it)
            _LIVE[ident] = h
        _FORGOTTEN.pop(ident, None)


def find(ident: str) -> Result[Any]:
    """The live handle known by ``ident``; :class:`UnknownResult` if there is none."""
    with _LOCK:
        h = _LIVE.get(ident)
        forgotten = ident in _FORGOTTEN
    if h is not None:
        return h
    if forgotten:
        raise UnknownResult(ident, "it was forgotten")
    raise UnknownResult(
        ident,
        "this process never issued it, or its work ended and no one kept its handle (to fetch a "
        "result from another process or a later run, give the work a store=)",
    )


def forget(ident: str, engine_forget: Callable[[], object] | None) -> None:
    """Make ``ident`` unknown from now on, and have the engine delete its own record, if any."""
    with _LOCK:
        _LIVE.pop(ident, None)  # whichever handle had it: the id is forgotten in this process
        _FORGOTTEN[ident] = None
        if len(_FORGOTTEN) > FORGOTTEN_KEPT:
            _FORGOTTEN.popitem(last=False)
    if engine_forget is not None:
        engine_forget()


def _after_fork_in_child() -> None:
    global _LOCK
    _LOCK = threading.Lock()  # a thread of the parent may have held it at the fork


runtime.add("result ids", after_fork_in_child=_after_fork_in_child)
