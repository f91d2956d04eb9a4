"""Binds any ``concurrent.futures.Future`` (thread or process pools, portals, loky, pebble) to a handle.

A foreign future cannot report when it starts running, so the handle asks it (``running()``) when
read. ``cancel()`` forwards to ``future.cancel()``: a pending future is cancelled, a running one is out
of reach and the handle reports how it really ended.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

from ._result import Result

if TYPE_CHECKING:
    import concurrent.futures as cf

T = TypeVar("T")


def _copy_state(h: Result[Any], fut: cf.Future[Any]) -> None:
    if fut.cancelled():
        h._set_cancelled()
        return
    exc = fut.exception()
    if exc is not None:
        h._set_exception(exc)
    else:
        h._set_result(fut.result())


def wrap_cf_future(fut: cf.Future[T]) -> Result[T]:
    """A handle mirroring ``fut``; callbacks on it run where ``fut``'s callbacks run."""
    h: Result[T] = Result()
    h._label = "future"
    if fut.running():
        h._set_started()
    h._probe = fut.running
    h._on_cancel(fut.cancel)
    fut.add_done_callback(partial(_copy_state, h))  # runs at once if fut is already done
    return h
