"""What asyncbridge keeps running in the background, and the one order in which it ends.

The parts: the background event loop (coroutines spawned from sync code), the shared thread pool,
the process pools, and the listeners of distributed engines. Each module that owns a part adds it
here when it is imported (:func:`add`); this module alone registers with the interpreter:

- **Interpreter exit** stops the parts in :data:`ORDER` (then any other, in the order they were
  added), and all of them share one deadline: exit waits at most :data:`EXIT_GRACE` seconds in all
  for running work to stop, not that long per part. The background loop goes first: cancelling its
  coroutines ends their waits on thread and process work at once. Then the thread pool (queued
  work is revoked, running work is asked to stop and waited for), then the process pools (queued
  work revoked, running work cancelled, workers stopped and, past the deadline, killed).
- **A forked child** resets every part in the same order before any code of the child runs: the
  parent's threads and worker processes do not exist there, so each part forgets them, fails the
  child's copies of the handles whose work stayed in the parent, and starts afresh on first use.

docs/architecture.md ("The runtime") gives the reasons for this order.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["EXIT_GRACE", "ORDER", "add"]

LOGGER = logging.getLogger("asyncbridge")

#: Seconds interpreter exit waits, in all, for the work still running to stop.
EXIT_GRACE = 2.0

#: The parts asyncbridge owns, in the order exit stops them and a forked child resets them.
ORDER = ("background loop", "thread pool", "process pools")


@dataclass(frozen=True, slots=True)
class _Part:
    name: str
    stop: Callable[[float], object] | None  # called with the seconds left before the deadline
    after_fork_in_child: Callable[[], object] | None


_LOCK = threading.Lock()
_PARTS: dict[str, _Part] = {}


def add(
    name: str,
    *,
    stop: Callable[[float], object] | None = None,
    after_fork_in_child: Callable[[], object] | None = None,
) -> None:
    """Add the part ``name`` (replacing one of that name): ``stop(grace)`` at interpreter exit, with
    the seconds left of the shared deadline; ``after_fork_in_child()`` in a forked child."""
    with _LOCK:
        _PARTS[name] = _Part(name, stop, after_fork_in_child)
    # atexit runs last-registered first: registering again after each part's module has imported
    # its own dependencies (multiprocessing registers an exit hook that terminates worker
    # processes) makes this hook run before theirs.
    atexit.unregister(_stop_all)
    atexit.register(_stop_all)


def _in_order() -> list[_Part]:
    with _LOCK:
        parts = dict(_PARTS)
    first = [parts.pop(name) for name in ORDER if name in parts]
    return first + list(parts.values())


def _stop_all() -> None:
    deadline = time.monotonic() + EXIT_GRACE
    for part in _in_order():
        if part.stop is None:
            continue
        try:
            part.stop(max(0.0, deadline - time.monotonic()))
        except BaseException:  # one part failing to stop must not keep the others running
            LOGGER.exception("asyncbridge: stopping the %s at exit failed", part.name)


def _after_fork_in_child() -> None:
    global _LOCK
    _LOCK = threading.Lock()  # a thread of the parent may have held it at the fork
    for part in _in_order():
        if part.after_fork_in_child is not None:
            part.after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
