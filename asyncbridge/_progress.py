"""Progress of a handle's work: ``on_progress(fn)`` and ``async for meta in handle.progress()``.

A mixin of :class:`asyncbridge.Result`: reports arrive through the handle's completer API
(``_set_progress``), which bumps a version and wakes readers parked on the next report.
"""

from __future__ import annotations

import asyncio
import logging
from functools import partial
from typing import TYPE_CHECKING, Any

from ._state import _TERMINAL, PROGRESS, State
from ._validate import callable_arg
from ._waiters import get_running_loop, park

if TYPE_CHECKING:
    import threading
    from collections.abc import AsyncIterator, Callable, Generator

LOGGER = logging.getLogger("asyncbridge")

_get_running_loop = get_running_loop


class Progress:
    """The progress observers of :class:`asyncbridge.Result`."""

    if TYPE_CHECKING:  # what the mixin uses of the handle (whose __slots__ hold them)
        _lock: threading.Lock
        _st: State
        _meta: Any
        _pw: list[Any] | None
        _pversion: int

        def _sync(self) -> None: ...
        def _watch(self, fn: Callable[[Any, State, Any], object]) -> None: ...
    else:
        __slots__ = ()

    def on_progress(
        self, fn: Callable[[dict[str, Any]], object], *, loop: asyncio.AbstractEventLoop | None = None
    ) -> None:
        """Call ``fn(meta)`` for each progress report (``asyncbridge.report_progress(**meta)`` in the
        work), from now until the handle ends.

        ``fn`` runs in the thread that made the report (for process work, asyncbridge's manager
        thread), or on ``loop`` through ``call_soon_threadsafe``. If ``fn`` raises, the error is
        logged to the ``asyncbridge`` logger and the work goes on.
        """
        callable_arg(fn, "on_progress")
        if loop is not None and not isinstance(loop, asyncio.AbstractEventLoop):
            raise TypeError(f"loop must be an asyncio event loop or None, not {type(loop).__qualname__}")

        def watcher(_h: object, st: State, meta: Any) -> None:
            if st is not PROGRESS:
                return
            if loop is None or _get_running_loop() is loop:
                fn(meta)
            else:
                try:
                    loop.call_soon_threadsafe(self._report_to, fn, meta)
                except RuntimeError:
                    pass  # that loop is closed: its observer is gone

        self._watch(watcher)

    def _report_to(self, fn: Callable[[dict[str, Any]], object], meta: dict[str, Any]) -> None:
        try:
            fn(meta)
        except BaseException:
            LOGGER.exception("exception in progress observer %r of %r", fn, self)

    def progress(self) -> AsyncIterator[dict[str, Any]]:
        """``async for meta in handle.progress():`` each progress report's dict, until the work ends.

        A slow reader may miss reports made while it was busy, but always gets the latest one. The
        loop ends when the handle is done (whatever the outcome: await the handle for it).
        Cancelling the reader does not cancel the work. The iterator holds nothing to clean up, so
        leaving the loop early (``break``, a cancel scope) needs no ``aclosing()``.
        """
        self._sync()
        return _ProgressReader(self)

    def _add_progress_waiter(self, version: int, waiter: object) -> bool:
        with self._lock:
            if self._st in _TERMINAL or self._pversion != version:
                return False
            if self._pw is None:
                self._pw = [waiter]
            else:
                self._pw.append(waiter)
            return True

    def _remove_progress_waiter(self, waiter: object) -> None:
        with self._lock:
            pw = self._pw
            if pw is not None and waiter in pw:
                pw.remove(waiter)


class _ProgressReader:
    """The async iterator returned by :meth:`asyncbridge.Result.progress` (a plain object, not an async
    generator, so one abandoned mid-loop leaves no finaliser behind)."""

    __slots__ = ("_handle", "_seen")

    def __init__(self, handle: Progress) -> None:
        self._handle = handle
        self._seen = 0

    def __aiter__(self) -> _ProgressReader:
        return self

    async def __anext__(self) -> dict[str, Any]:
        h = self._handle
        while True:
            with h._lock:
                version, meta, done = h._pversion, h._meta, h._st in _TERMINAL
            if version != self._seen:
                self._seen = version
                return meta  # type: ignore[no-any-return]
            if done:
                raise StopAsyncIteration
            await _NextReport(h, version)


class _NextReport:
    """Awaitable: the next progress report (or the end) after report number ``version``."""

    __slots__ = ("_handle", "_version")

    def __init__(self, handle: Progress, version: int) -> None:
        self._handle = handle
        self._version = version

    def __await__(self) -> Generator[Any, None, None]:
        h = self._handle
        return park(partial(h._add_progress_waiter, self._version), h._remove_progress_waiter, None, h)
