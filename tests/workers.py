"""Module-level functions for worker processes (a worker imports them by name, so they live in a
small module of their own rather than in a test module)."""

from __future__ import annotations

import faulthandler
import os
import signal
import sys
import time
from typing import Any

import asyncbridge as ab


def square(x: int) -> int:
    return x * x


def describe(*args: Any, **kwargs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    return args, kwargs


def pid() -> int:
    return os.getpid()


class CustomError(Exception):
    pass


def raise_custom(message: str) -> None:
    raise CustomError(message)  # the source line the remote traceback must show


class Unpicklable(Exception):
    def __reduce__(self) -> Any:
        raise TypeError("this exception refuses to be pickled")


def raise_unpicklable() -> None:
    raise Unpicklable("local only")


def return_unpicklable() -> Any:
    return lambda: None


class BadOnLoad:
    """Pickles fine, fails to unpickle (in the parent)."""

    def __reduce__(self) -> Any:
        return (_refuse, ())


def _refuse() -> None:
    raise ValueError("refusing to be rebuilt")


def return_bad_on_load() -> BadOnLoad:
    return BadOnLoad()


def exit_with(code: int) -> None:
    os._exit(code)


def sys_exit(code: int) -> None:
    sys.exit(code)


def kill_self(signum: int) -> None:
    os.kill(os.getpid(), signum)


def segfault() -> None:
    faulthandler.disable()  # no dump on stderr: the test expects a quiet crash
    faulthandler._sigsegv()  # type: ignore[attr-defined]


def wait_for(started: Any, release: Any) -> str:
    """Say it started, then wait (up to 30 s) to be released: a cross-process event pair."""
    started.set()
    release.wait(30)
    return "released"


def cooperative(started: Any) -> str:
    started.set()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ab.checkpoint()
        time.sleep(0.001)  # a tick of pretend work between checkpoints
    return "never cancelled"


def stubborn(started: Any) -> str:
    started.set()
    time.sleep(30)  # never checks: only terminate stops it
    return "ran to the end"


def asks_politely(started: Any, release: Any) -> str:
    started.set()
    release.wait(30)
    return "stopped cleanly" if ab.cancel_requested() else "ran to the end"


def ignore_sigterm_and_hang(started: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    started.set()
    time.sleep(30)


def report_then_wait(release: Any, steps: int, gate: Any = None) -> int:
    """Wait for ``gate`` (if given), report ``steps`` progress dicts, then wait (up to 30 s) to be
    released."""
    if gate is not None:
        gate.wait(30)
    for i in range(steps):
        ab.report_progress(step=i, of=steps)
    release.wait(30)
    return steps


async def report_then_wait_async(release: Any, steps: int, gate: Any = None) -> int:
    import anyio

    if gate is not None:
        await anyio.to_thread.run_sync(gate.wait, 30)
    for i in range(steps):
        ab.report_progress(step=i, of=steps)
    await anyio.to_thread.run_sync(release.wait, 30)
    return steps


def fail_times(counter_path: str, failures: int) -> str:
    """Fail the first ``failures`` calls (counted in a file, so it works across processes too)."""
    with open(counter_path, "a+") as f:
        f.seek(0)
        calls = len(f.read()) + 1
        f.write("x")
    if calls <= failures:
        raise ValueError(f"attempt {calls} failed")
    return f"succeeded on attempt {calls}"


def checks_forever() -> None:
    while True:
        ab.checkpoint()
        time.sleep(0.001)  # a tick of pretend work between checkpoints


def sleeps_forever() -> None:
    time.sleep(60)  # never checks: only terminate stops it


@ab.task(engine="process")
def process_square(x: int) -> int:
    return x * x


@ab.task(engine="process", timeout=0.2)
def process_sleeps_past_its_limit() -> None:
    time.sleep(60)


def signal_then_wait(started_fifo: str, release_fifo: str) -> str:
    """Say it runs through one named pipe, then block until released through another: an event pair
    with no Manager process behind it (a forked copy of the caller must share nothing with it).
    Opening ``started_fifo`` blocks until the caller opens it to read; the caller holds
    ``release_fifo`` open (read-write, so that neither side blocks in ``open``) and writes a line to
    release the task."""
    with open(started_fifo, "w") as f:
        f.write("started")
    with open(release_fifo) as f:
        return f.readline().strip()


def released_outcome(release: Any, value: str, error: str | None = None) -> str:
    """``value`` (or :class:`CustomError` with ``error``) once ``release`` (a manager Event) is set."""
    if not release.wait(30):
        raise TimeoutError("the test never released its work")
    if error is not None:
        raise CustomError(error)
    return value
