"""Binds any ``concurrent.futures.Future`` (thread or process pools, portals, loky, pebble) to a handle.

A foreign future cannot report when it starts running, so the handle asks it (``running()``) when
read. ``cancel()`` forwards to ``future.cancel()``: a pending future is cancelled, a running one is out
of reach and the handle reports how it really ended.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

from ._result import Result, Wrapped
from ._state import STARTED

if TYPE_CHECKING:
    import concurrent.futures as cf

T = TypeVar("T")


def wrap_cf_future(fut: cf.Future[T]) -> Result[T]:
    """A handle mirroring ``fut``; callbacks on it run where ``fut``'s callbacks run."""
    h: Result[T] = Wrapped()
    h._label = "future"
    if fut.done():
        h._adopt(fut)
        return h
    if fut.running():
        h._st = STARTED  # a fresh handle: no one else can see it yet, no lock needed
        h._attempts = 1
    h._probe = fut.running
    h._hooks = [fut.cancel]  # the handle's cancel hook, set before anyone can cancel it
    fut.add_done_callback(h._adopt)  # runs at once if fut finished meanwhile
    return h
