"""Ctrl-C belongs to the main thread.

POSIX delivers a process-directed signal to any thread that does not block it, and Python runs
signal handlers only in the main thread. When SIGINT lands in one of our threads while the main
thread sleeps in ``epoll`` (inside ``asyncio.run``), nothing wakes the main thread: the
KeyboardInterrupt waits for the next event, maybe for ever. So asyncbridge's threads block SIGINT
and SIGTERM whenever they run no user code: the process manager and listener threads always, the
thread pool's workers while they wait for work. A worker unblocks them before it runs user code,
because a blocked mask is inherited by every process that code starts (a subprocess that cannot be
terminated or interrupted would be far worse). The background event loop runs user coroutines all
the time, so it leaves its mask alone.

Linux is the exception that makes the pool's flips unnecessary: it offers a process-directed signal
to the thread it was sent to first, which for ``kill(pid)`` and a terminal's Ctrl-C is the main
thread, and only if that thread blocks it to another. So there :data:`MASK_WHILE_IDLE` is false
and a worker leaves its mask alone too: each flip is a system call that also builds a set of the
old mask, which would cost a thread hop more than the rest of the pool's bookkeeping.
"""

from __future__ import annotations

import signal
import sys

_SIGNALS = {signal.SIGINT, signal.SIGTERM}
_CAN_MASK = hasattr(signal, "pthread_sigmask")

#: Whether a thread that waits for user work should block SIGINT and SIGTERM while it waits.
MASK_WHILE_IDLE = _CAN_MASK and not sys.platform.startswith("linux")


def block_signals() -> None:
    """Leave SIGINT and SIGTERM to other threads (a no-op where pthread_sigmask is missing)."""
    if _CAN_MASK:
        signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)


def unblock_signals() -> None:
    """Take SIGINT and SIGTERM again, before running code that may start processes."""
    if _CAN_MASK:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
