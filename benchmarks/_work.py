"""Work that runs in worker processes (and threads): module-level, so a worker can import it.

Kept free of heavy imports: a worker that unpickles one of these imports only ``benchmarks``
(a docstring) and this module.

The ``spin*`` functions hold an exclusive ``flock`` on a file while they run. The kernel releases
it when the function closes the file or its process dies, so the parent can tell, through the same
file, that the work has started (the lock is taken) and that it has really stopped (the lock is
free again), whatever pool ran it. ``flock`` is POSIX: the ``spin*`` functions need it, ``noop``
and ``pause`` do not.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import threading


def noop() -> None:
    """The process work: nothing, so that only the hop is measured."""
    return None


def pause(seconds: float) -> int:
    """Sleep, then return the worker's pid (to warm a pool: every worker busy at once)."""
    time.sleep(seconds)
    return os.getpid()


def _hold(path: str) -> int:
    import fcntl  # POSIX only: imported here so that ``noop`` and ``pause`` work anywhere

    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def spin(path: str) -> None:
    """Hold the lock on ``path`` and burn CPU forever, never checking for cancellation."""
    _hold(path)  # released by the kernel when the process dies
    x = 0
    while True:
        x += 1


def spin_checkpoint(path: str) -> None:
    """Hold the lock on ``path`` and call ``ab.checkpoint()`` in a tight loop until it raises."""
    from asyncbridge import checkpoint

    fd = _hold(path)
    try:
        while True:
            checkpoint()
    finally:
        os.close(fd)


def spin_event(path: str, stop: threading.Event) -> None:
    """The hand-rolled stdlib way to stop thread work: poll an Event in a tight loop."""
    fd = _hold(path)
    try:
        is_set = stop.is_set
        while not is_set():
            pass
    finally:
        os.close(fd)
