"""How a waiter is woken: a blocked thread, an asyncio task, a trio task.

Every waiter speaks ``concurrent.futures``' private waiter protocol (``add_result``,
``add_exception``, ``add_cancelled``), so the handle wakes its own waiters and those of
``cf.wait``/``cf.as_completed`` through one list, outside its lock. A waiter carries a wake-up, never
the outcome: the woken caller reads the outcome from the handle.
"""

from __future__ import annotations

import asyncio
import math
import threading
from typing import Any

get_running_loop = asyncio._get_running_loop  # the C getter: no exception when there is no loop


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
    """An ``await`` on an asyncio loop: completion sets ``fut`` on that loop's thread."""

    __slots__ = ("fut", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop, fut: asyncio.Future[None]) -> None:
        self.loop = loop
        self.fut = fut

    def add_result(self, _h: object) -> None:
        if get_running_loop() is self.loop:
            _wake_future(self.fut)
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
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise TypeError(f"timeout must be a number of seconds or None, not {type(timeout).__qualname__}")
    if math.isnan(timeout) or timeout < 0:
        raise ValueError(f"timeout must be >= 0 seconds or None, not {timeout!r}")
    return min(float(timeout), threading.TIMEOUT_MAX)
