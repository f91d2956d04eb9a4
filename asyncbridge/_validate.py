"""The checks of common arguments, in one place: numbers of seconds, and callables.

Every public call that takes seconds (``get(timeout)``, ``spawn(timeout=)``, ``Retry(backoff=)``,
``ProcessPool(cancel_grace=)``, ``wait(timeout=)``...) or a callable (``run_in_thread``,
``add_done_callback``, ``then``...) checks it here, so that bad input gets the same clear error
everywhere: a ``TypeError`` for what is not a number (``bool`` included) or not callable, a
``ValueError`` for a number out of range (NaN included), each naming the argument and the value.
"""

from __future__ import annotations

import threading
from types import CoroutineType

__all__ = ["callable_arg", "optional_seconds", "seconds"]


def seconds(value: object, name: str, *, positive: bool = False, none_ok: bool = False) -> float:
    """``value`` as a number of seconds ``>= 0`` (``> 0`` if ``positive``), clamped to what a lock
    can wait (``threading.TIMEOUT_MAX``): a huge int is still a valid number of seconds. ``none_ok``:
    the caller takes None too (no limit) and has checked for it; the messages say so."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        also = " or None" if none_ok else ""
        raise TypeError(
            f"{name} must be a number of seconds{also}, not {type(value).__qualname__}: {value!r}"
        )
    if not (value > 0 if positive else value >= 0):  # NaN fails both, without float()
        bound = "> 0" if positive else ">= 0"
        also = " or None" if none_ok else ""
        raise ValueError(f"{name} must be a number of seconds {bound}{also}, not {value!r}")
    return float(min(value, threading.TIMEOUT_MAX))  # an int too big for a float is clamped first


def optional_seconds(value: object, name: str, *, positive: bool = False) -> float | None:
    """As :func:`seconds`, with None (no limit) allowed."""
    return None if value is None else seconds(value, name, positive=positive, none_ok=True)


def callable_arg(fn: object, caller: str, *, hint: str = "") -> None:
    """Raise ``TypeError`` naming ``caller`` unless ``fn`` is callable (hot paths test
    ``callable(fn)`` first and call this only when it is not). A coroutine object given
    instead is closed first (it must not run, and Python would also warn "never awaited", which
    buries this message); ``hint`` says what to do instead."""
    if callable(fn):
        return
    if isinstance(fn, CoroutineType):
        fn.close()
        raise TypeError(f"{caller}() needs a callable, not a coroutine{hint or ''}")
    raise TypeError(f"{caller}() needs a callable, not {type(fn).__qualname__}")
