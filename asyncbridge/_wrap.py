"""``wrap()``: one entry point that dispatches on the type of work to one adapter."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import inspect
from typing import TYPE_CHECKING, Any, TypeVar, overload

from . import _registry as registry
from ._asyncio import spawn, wrap_asyncio_future
from ._futures import wrap_cf_future
from ._result import Result

if TYPE_CHECKING:
    from collections.abc import Awaitable, Coroutine

T = TypeVar("T")

_Task = asyncio.Task


@overload
def wrap(obj: Result[T]) -> Result[T]: ...
@overload
def wrap(obj: Coroutine[Any, Any, T]) -> Result[T]: ...
@overload
def wrap(obj: asyncio.Future[T]) -> Result[T]: ...
@overload
def wrap(obj: cf.Future[T]) -> Result[T]: ...
@overload
def wrap(obj: object) -> Result[Any]: ...  # what an adapter takes (a Celery or Dask result)


def wrap(obj: Awaitable[T] | cf.Future[T] | object) -> Result[Any]:
    """Return the handle for ``obj``, safe to call from any thread.

    Accepts:

    - a :class:`Result`: returned as is;
    - an ``asyncio.Future`` or ``asyncio.Task``: a handle that mirrors it (a Task is STARTED at once);
      ``cancel()`` cancels it on its own loop;
    - a coroutine: scheduled exactly as :func:`asyncbridge.spawn` does;
    - a ``concurrent.futures.Future``: a handle that mirrors it; STARTED once the future runs;
      ``cancel()`` calls ``future.cancel()`` (which cannot stop a running future);
    - what a registered adapter wraps (docs/architecture.md, "Adapters"): a Celery ``AsyncResult``
      (the handle's id is the task id; ``cancel()`` revokes the task), a ``GroupResult`` (a gather
      of its members) or a chain's result, with ``asyncbridge[celery]``.

    Wrapping the same object twice gives two handles (with two ids) that agree on state and outcome:
    both mirror the one source.

    Raises:
        TypeError: ``obj`` is none of these; the message names its type.
    """
    cls = type(obj)
    if cls is cf.Future:  # the commonest kinds first, by exact type: one comparison each
        return wrap_cf_future(obj)  # type: ignore[arg-type]  # the exact type, tested
    if cls is _Task:
        return wrap_asyncio_future(obj)  # type: ignore[arg-type]
    if isinstance(obj, Result):  # before cf.Future: a Result is one
        return obj
    if isinstance(obj, asyncio.Future):
        return wrap_asyncio_future(obj)
    if isinstance(obj, cf.Future):
        return wrap_cf_future(obj)
    if inspect.iscoroutine(obj):
        return spawn(obj)
    found: Result[T] | None = registry.wrap(obj)
    if found is not None:
        return found
    if inspect.iscoroutinefunction(obj):
        raise TypeError(
            f"wrap() cannot wrap the coroutine function {obj.__qualname__}; call it first: "
            f"wrap({obj.__qualname__}(...))"
        )
    raise TypeError(
        f"wrap() cannot wrap a {type(obj).__qualname__}; it accepts an asyncio Future or Task, "
        "a coroutine, a concurrent.futures.Future, an asyncbridge Result, or a Celery AsyncResult or "
        "GroupResult (with asyncbridge[celery])"
    )
