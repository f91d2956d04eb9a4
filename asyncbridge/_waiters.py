"""How a waiter is woken: a blocked thread, an asyncio task, a trio task.

Every waiter speaks ``concurrent.futures``' private waiter protocol (``add_result``,
``add_exception``, ``add_cancelled``), so the handle wakes its own waiters and those of
``cf.wait``/``cf.as_completed`` through one list, outside its lock. A waiter carries a wake-up, never
the outcome: the woken caller reads the outcome from the handle.
"""

from __future__ import annotations

import asyncio
import threading
from typing import TYPE_CHECKING, Any

from ._validate import optional_seconds

if TYPE_CHECKING:
    from collections.abc import Callable, Generator

get_running_loop = asyncio._get_running_loop  # the C getter: no exception when there is no loop
_get_ident = threading.get_ident


class _ThreadWaiter:
    """A blocked ``get()``: one lock, held until the handle ends."""

    __slots__ = ("lock",)

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.lock.acquire()

    def add_result(self, _h: object) -> None:
        self.lock.release()

    add_exception = add_cancelled = add_result


def _wake_future(fut: asyncio.Future[None]) -> None:
    if not fut.done():  # the awaiter may have been cancelled in the meantime
        fut.set_result(None)


class _LoopWaiter:
    """An ``await`` on an asyncio loop: completion sets ``fut`` on that loop's thread.

    Made on the loop's thread, it keeps that thread's id: a completion there wakes the future
    directly, and is told from one elsewhere by comparing ids, cheaper than asking for the running
    loop (on Python 3.11 that asks the OS for the process id, in the completing thread's path)."""

    __slots__ = ("fut", "loop", "thread")

    def __init__(self, loop: asyncio.AbstractEventLoop, fut: asyncio.Future[None]) -> None:
        self.loop = loop
        self.fut = fut
        self.thread = _get_ident()

    def add_result(self, _h: object) -> None:
        if _get_ident() == self.thread:
            try:
                _wake_future(self.fut)
            except RuntimeError:
                pass  # "Event loop is closed": as below
            return
        try:
            self.loop.call_soon_threadsafe(_wake_future, self.fut)
        except RuntimeError:
            pass  # "Event loop is closed": its awaiters are gone; the outcome stays in the handle

    add_exception = add_cancelled = add_result


class _TrioWaiter:
    """An ``await`` under trio: completion reschedules the task from the trio thread."""

    __slots__ = ("aborted", "task", "token")

    def __init__(self, token: Any, task: Any) -> None:
        self.token = token
        self.task = task
        self.aborted = False

    def _wake(self) -> None:  # runs on the trio thread, as does abort(): no race between them
        if not self.aborted:
            self.aborted = True
            import trio

            trio.lowlevel.reschedule(self.task)

    def add_result(self, _h: object) -> None:
        import trio

        try:
            self.token.run_sync_soon(self._wake)  # never blocks the completing thread
        except trio.RunFinishedError:
            pass

    add_exception = add_cancelled = add_result


def check_timeout(timeout: float | None) -> float | None:
    """A wait's ``timeout``: None (no limit) or seconds >= 0."""
    return optional_seconds(timeout, "timeout")


def park(
    add: Callable[[Any], bool],
    remove: Callable[[Any], None],
    on_cancel: Callable[[], object] | None,
    what: object,
) -> Generator[Any, None, None]:
    """Suspend the calling task (asyncio or trio) until a waiter it hands to ``add`` is woken.

    ``add(waiter)`` registers the waiter, or returns False if there is nothing to wait for. If the
    task is cancelled while parked, the waiter is withdrawn with ``remove(waiter)``, ``on_cancel()``
    runs (when given), and the cancellation propagates unchanged (anyio reads its message).
    """
    loop = get_running_loop()
    if loop is not None:
        fut: asyncio.Future[None] = loop.create_future()
        waiter: Any = _LoopWaiter(loop, fut)
        if not add(waiter):
            return
        try:
            yield from fut
        except BaseException as exc:
            remove(waiter)
            if on_cancel is not None and isinstance(exc, asyncio.CancelledError):
                on_cancel()
            raise
        return
    try:
        import trio

        task = trio.lowlevel.current_task()
        token = trio.lowlevel.current_trio_token()
    except (ImportError, RuntimeError):
        raise RuntimeError(f"{what!r} was awaited outside an asyncio event loop or a trio run") from None
    waiter = _TrioWaiter(token, task)
    if not add(waiter):
        return

    def abort(_raise_cancel: object) -> Any:
        waiter.aborted = True
        remove(waiter)
        return trio.lowlevel.Abort.SUCCEEDED

    try:
        # __await__ is a generator, so this `yield from` is the await
        yield from trio.lowlevel.wait_task_rescheduled(abort).__await__()  # noqa: ASYNC105
    except trio.Cancelled:
        if on_cancel is not None:
            on_cancel()
        raise
