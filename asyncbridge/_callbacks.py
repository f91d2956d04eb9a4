"""Done-callbacks: ``add_done_callback()`` and ``remove_done_callback()``.

A mixin of :class:`asyncbridge.Result` (the state machine is in ``_machine.py``, which runs the
callbacks it takes at the end, outside its lock, through ``_dispatch``). A callback runs in the
thread that completes the work, or on the loop it was given; one that raises is logged and the
others still run.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ._state import _TERMINAL, State
from ._validate import callable_arg
from ._waiters import get_running_loop

if TYPE_CHECKING:
    import threading
    from collections.abc import Callable

    from ._result import Result

T = TypeVar("T")

LOGGER = logging.getLogger("asyncbridge")

_get_running_loop = get_running_loop


def _is_loop_bound(fn: Callable[..., object]) -> bool:
    """Whether ``fn`` is one of asyncio's own callbacks that must run on its loop's thread.

    asyncio's functions (``wait`` above all) register callbacks that touch their loop without
    ``call_soon_threadsafe``, because an asyncio future runs its callbacks on its loop. The callbacks
    of ``asyncio.wrap_future`` (``_chain_future``) are the exception: written for a
    ``concurrent.futures.Future``, they hop to their loop themselves, so they run where they are.
    """
    target = getattr(fn, "func", fn)  # functools.partial
    module = getattr(target, "__module__", None)
    if not (isinstance(module, str) and module.startswith(("asyncio.", "uvloop"))):
        return False
    return not getattr(target, "__qualname__", "").startswith("_chain_future.")


def _entries(callbacks: Any) -> list[Any]:
    """The callback entries a handle keeps (None, one, or a list), as a new list."""
    if callbacks is None:
        return []
    return list(callbacks) if type(callbacks) is list else [callbacks]


class Callbacks(Generic[T]):
    """The done-callbacks of :class:`asyncbridge.Result`."""

    if TYPE_CHECKING:  # what the mixin uses of the handle (whose __slots__ hold them)
        _lock: threading.Lock
        _st: State
        _callbacks: Any  # None, one entry or a list of them; an entry: fn, or (fn, loop)
        _pin: Callable[[Result[T]], object] | None
        _activate: Callable[[Result[T]], object] | None
        _probe: Callable[[Any], bool] | None

        def _sync(self) -> None: ...
    else:
        __slots__ = ()

    # -- callbacks --------------------------------------------------------------------------------

    def add_done_callback(
        self, fn: Callable[[Result[T]], object], *, loop: asyncio.AbstractEventLoop | None = None
    ) -> None:
        """Call ``fn(handle)`` exactly once, when the handle becomes SUCCESS, FAILURE or REVOKED.

        ``fn`` runs in the thread that completes the work (here and now, if the handle is already
        done), or, with ``loop=``, on that loop through ``call_soon_threadsafe``. ``get()`` may return
        before ``fn`` has run. If ``fn`` raises, the error is logged to the ``asyncbridge`` logger and
        the other callbacks still run.

        One exception to the thread rule: a callback that asyncio itself registers from a running
        loop (``asyncio.wait`` treats any object with ``add_done_callback`` as an asyncio future)
        runs on that loop, as an asyncio future would run it.
        """
        if not callable(fn):  # the check inline: this is a hot path
            callable_arg(fn, "add_done_callback")  # type: ignore[unreachable]  # untyped callers do get here
        if loop is not None and not isinstance(loop, asyncio.AbstractEventLoop):
            raise TypeError(f"loop must be an asyncio event loop or None, not {type(loop).__qualname__}")
        if loop is None and _is_loop_bound(fn):
            loop = _get_running_loop()
        self._register(fn, loop)

    def _register(
        self, fn: Callable[[Result[T]], object], loop: asyncio.AbstractEventLoop | None = None
    ) -> None:
        """:meth:`add_done_callback` without its checks, for the package's own callbacks (a
        composition's, on every member): ``fn`` runs as there, in the completing thread by default."""
        if self._activate is not None or self._probe is not None:  # _sync's own tests, first
            self._sync()
        pin = self._pin
        if pin is not None:
            self._pin = None
            pin(self)  # type: ignore[arg-type]  # a mixin of Result: self is one
        # Kept as _wl is: no list for the one callback most handles get, no tuple without a loop.
        entry = fn if loop is None else (fn, loop)
        with self._lock:
            if self._st not in _TERMINAL:
                callbacks = self._callbacks
                if callbacks is None:
                    self._callbacks = entry
                elif type(callbacks) is list:
                    callbacks.append(entry)
                else:
                    self._callbacks = [callbacks, entry]
                return
        self._dispatch(fn, loop)

    def remove_done_callback(self, fn: Callable[[Result[T]], object]) -> int:
        """Remove every registration of ``fn`` not yet run; return how many were removed."""
        with self._lock:
            callbacks = _entries(self._callbacks)
        # Compare outside the lock: == is user code (an __eq__ may even call back into the handle).
        doomed = {id(entry) for entry in callbacks if (entry[0] if type(entry) is tuple else entry) == fn}
        if not doomed:
            return 0
        with self._lock:
            current = _entries(self._callbacks)
            if not current:
                return 0  # they ran meanwhile
            kept = [entry for entry in current if id(entry) not in doomed]
            self._callbacks = kept or None
            return len(current) - len(kept)

    def _dispatch(self, fn: Callable[[Result[T]], object], loop: asyncio.AbstractEventLoop | None) -> None:
        if loop is None or _get_running_loop() is loop:
            self._invoke(fn)
            return
        try:
            loop.call_soon_threadsafe(self._invoke, fn)
        except RuntimeError:
            LOGGER.error("done-callback %r of %r was dropped: its event loop is closed", fn, self)

    def _invoke(self, fn: Callable[[Result[T]], object]) -> None:
        try:
            fn(self)  # type: ignore[arg-type]  # a mixin of Result: self is one
        except BaseException:
            # BaseException too: a callback's SystemExit must not kill the completing thread or loop
            LOGGER.exception("exception calling done-callback %r of %r", fn, self)
