"""Binds any ``concurrent.futures.Future`` (thread or process pools, portals, loky, pebble) to a handle.

A foreign future cannot report when it starts running, so the handle asks it (``running()``) when
read. ``cancel()`` forwards to ``future.cancel()``: a pending future is cancelled, a running one is out
of reach and the handle reports how it really ended.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

from ._result import Result, Wrapped

if TYPE_CHECKING:
    import concurrent.futures as cf

T = TypeVar("T")


def wrap_cf_future(fut: cf.Future[T]) -> Result[T]:
    """A handle mirroring ``fut``; callbacks on it run where ``fut``'s callbacks run."""
    h: Result[T] = Wrapped()
    if fut.done():
        h._setup("future")
        h._adopt(fut)
        return h
    h._bind_future("future", None, None, fut.running())
    # cancel() forwards to fut.cancel, and the state asks fut.running() while PENDING
    h._bind_source(probe=fut.running, cancel_hook=fut.cancel)
    fut.add_done_callback(h._adopt)  # runs at once if fut finished meanwhile
    return h
