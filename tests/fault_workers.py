"""Module-level worker functions for tests/stress/test_process_faults.py (a worker process imports
them by name, so they live in a small module of their own)."""

from __future__ import annotations

import faulthandler
import os
import sys
import time
from typing import Any, NoReturn

import asyncbridge as ab

#: Seconds a worker waits for its release before giving up: a hang guard only.
HANG = 60.0


def square(x: int) -> int:
    return x * x


def identity(x: Any) -> Any:
    return x


def report_pid_and_wait(release: Any = None) -> int:
    """Report this worker's pid as progress (the parent's signal that the task really runs), then
    wait for ``release`` (a Manager Event) and return the pid; without ``release``, wait to be killed.
    """
    ab.report_progress(pid=os.getpid())
    if release is None:
        time.sleep(HANG)  # only a kill ends this task; the sleep is a hang guard, not a wait for anything
        raise TimeoutError(f"worker {os.getpid()} was never killed")
    if not release.wait(HANG):
        raise TimeoutError(f"worker {os.getpid()} was never released")
    return os.getpid()


def exit_with(code: int) -> NoReturn:
    os._exit(code)


def segfault() -> None:
    faulthandler.disable()  # no dump on stderr: a quiet crash
    faulthandler._sigsegv()  # type: ignore[attr-defined]


def sys_exit(code: int) -> NoReturn:
    sys.exit(code)


class FaultError(Exception):
    """A custom exception type that must come back as itself."""


def raise_fault(message: str) -> NoReturn:
    raise FaultError(message)  # the source line the remote traceback must show


class NoPickle:
    """Refuses to be pickled (as an argument in the parent, as a result in the worker)."""

    def __reduce__(self) -> Any:
        raise TypeError("NoPickle refuses to be pickled")

    def __repr__(self) -> str:
        return "<NoPickle>"


def return_no_pickle() -> NoPickle:
    return NoPickle()


def _refuse_to_load(what: str) -> NoReturn:
    raise ValueError(f"{what} refuses to be rebuilt")


class FailsToUnpickle:
    """Pickles fine; rebuilding it (in whichever process unpickles it) raises ValueError."""

    def __reduce__(self) -> Any:
        return (_refuse_to_load, ("FailsToUnpickle",))

    def __repr__(self) -> str:
        return "<FailsToUnpickle>"


def return_fails_to_unpickle() -> FailsToUnpickle:
    return FailsToUnpickle()


def report_unloadable_progress() -> str:
    """Report progress whose meta pickles here but cannot be rebuilt in the parent, then finish."""
    ab.report_progress(bad=FailsToUnpickle())
    return "finished"


def _raise_on_load(kind: str) -> NoReturn:
    raise {"SystemExit": SystemExit(5), "KeyboardInterrupt": KeyboardInterrupt()}[kind]


class RaisesBaseOnLoad:
    """Pickles fine; rebuilding it raises a BaseException (SystemExit or KeyboardInterrupt)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def __reduce__(self) -> Any:
        return (_raise_on_load, (self.kind,))


def return_raises_base_on_load(kind: str) -> RaisesBaseOnLoad:
    return RaisesBaseOnLoad(kind)
