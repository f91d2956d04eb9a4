"""Binds any ``concurrent.futures.Future`` (thread or process pools, portals, loky, pebble) to a handle.

A foreign future cannot report when it starts running, so the handle asks it (its probe) when
read. ``cancel()`` forwards to ``future.cancel()``: a pending future is cancelled, a running one is out
of reach and the handle reports how it really ended.

The stdlib's own ``cf.Future`` (by far the most common) is bound by reading its fields directly:
its ``done()``, ``running()`` and ``add_done_callback()`` each take its lock through a Python-level
``Condition``, which would cost more than the handle itself. A subclass (pebble's, loky's) may
override those methods, so it goes through them.
"""

from __future__ import annotations

import concurrent.futures as cf
from concurrent.futures._base import FINISHED, PENDING, RUNNING
from typing import TYPE_CHECKING, Any, TypeVar

from ._result import Result, Wrapped

if TYPE_CHECKING:
    from ._result import Owned

T = TypeVar("T")


class _Link:
    """What ties a handle to its future, in one small object (not two bound methods): the future's
    done-callback (called with the future, in the thread that completes it) and the handle's cancel
    hook (called with nothing, by ``cancel()``)."""

    __slots__ = ("h",)

    def __init__(self, h: Owned[Any]) -> None:
        self.h = h

    def __call__(self, fut: cf.Future[Any] | None = None) -> None:
        h = self.h
        if fut is not None:
            h._adopt(fut)
            return
        src = h._src  # None once the handle ended: nothing left to cancel
        if src is not None:
            src.cancel()


def _runs(fut: cf.Future[Any]) -> bool:  # a stdlib future's probe: one field read, no lock
    return fut._state == RUNNING


def _runs_any(fut: cf.Future[Any]) -> bool:  # a subclass's probe: through its own method
    return fut.running()


def _adopt_done(h: Result[Any], fut: cf.Future[Any]) -> None:
    """End ``h`` as the done stdlib future ``fut`` ended, from its fields: a future sets its result
    or exception before its final state, and neither changes after."""
    state = fut._state
    if state == FINISHED:
        exc = fut._exception
        if exc is None:
            h._set_result(fut._result)
        else:
            h._set_exception(exc)
    else:  # CANCELLED, or CANCELLED_AND_NOTIFIED
        h._set_cancelled()


def wrap_cf_future(fut: cf.Future[T]) -> Result[T]:
    """A handle mirroring ``fut``; callbacks on it run where ``fut``'s callbacks run."""
    h: Wrapped[T] = Wrapped()
    link = _Link(h)
    if type(fut) is cf.Future:
        state = fut._state
        if state in (PENDING, RUNNING):
            # Bound before the future can call back, then one re-check. No need for the future's
            # lock (its Condition would cost more than the handle): appending to its callback list
            # is atomic, and a future that ended between the two reads may or may not call the
            # link, so the re-check adopts it too; ending a handle twice is a no-op.
            h._bind_future("future", fut, None, state == RUNNING, None, _runs, link)
            fut._done_callbacks.append(link)  # type: ignore[attr-defined]
            if fut._state in (PENDING, RUNNING):
                return h
        else:
            h._setup("future")
        _adopt_done(h, fut)
        return h
    if not fut.done():
        h._bind_future("future", fut, None, fut.running(), None, _runs_any, link)
        fut.add_done_callback(link)  # runs at once if fut finished meanwhile
        return h
    h._setup("future")
    h._adopt(fut)
    return h
