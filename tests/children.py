"""Child interpreters for the reliability suite: a fresh one running a script (:class:`Child`), or a
forked copy of this one running a function (:func:`fork_child`); both read with hang guards."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import textwrap
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Self

HANG = 10.0  # a hang guard only

#: Code for a child script (indented like the scripts that use it, which dedent it whole): "ready"
#: is printed once the main thread blocks inside get(); see sigint_each_ready().
BLOCKED_IN_GET_SEAM = """
    # Seam: the library calls block_hook right before a blocking get() waits on its lock. It sets an
    # event; a helper thread then prints "ready", which it can only do once the main thread released
    # the GIL, that is, once it is blocked in the lock: the SIGINT arrives inside get(). Install it
    # with `_blocking.block_hook = hook` around the get(), and start announce() in a thread.
    import signal as _signal, threading as _threading
    from asyncbridge import _blocking

    blocked = _threading.Event()
    original = _blocking.block_hook

    def hook():
        blocked.set()
        return original() if original is not None else None

    def announce():
        _signal.pthread_sigmask(_signal.SIG_BLOCK, {_signal.SIGINT})  # the harness never takes Ctrl-C
        while True:
            blocked.wait()
            blocked.clear()
            print("ready", flush=True)
"""


class Child:
    """A child interpreter running ``code``; its stdout is read line by line with a hang guard."""

    def __init__(self, code: str, *args: str, stderr: Path) -> None:
        self._err = stderr.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-X", "faulthandler", "-W", "default", "-c", textwrap.dedent(code), *args],
            stdout=subprocess.PIPE,
            stderr=self._err,
        )
        assert self.proc.stdout is not None
        self._fd = self.proc.stdout.fileno()
        self._buf = b""
        self.stderr_path = stderr

    def line(self, guard: float = HANG) -> str:
        deadline = time.monotonic() + guard
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self._fd], [], [], max(left, 0))
            if not ready:
                raise AssertionError(
                    f"the child printed nothing for {guard} s; so far: {self._buf!r}; {self._stacks()}"
                )
            chunk = os.read(self._fd, 65536)
            if not chunk:
                raise AssertionError(
                    f"the child closed stdout; rest: {self._buf!r}; stderr: {self._stderr()}"
                )
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode()

    def _stacks(self) -> str:
        """A hung child's threads, as faulthandler prints them on SIGABRT."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGABRT)
            try:
                self.proc.wait(HANG)
            except subprocess.TimeoutExpired:
                pass
        return f"its stacks: {self._stderr()}"

    def _stderr(self) -> str:
        self._err.flush()
        return self.stderr_path.read_text(errors="replace")[-4000:]

    def finish(self) -> tuple[int, str]:
        rc = self.proc.wait(HANG)
        return rc, self.stderr_path.read_text()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # a failed or hung child is never left behind
        self.proc.wait()
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        self._err.close()


def fork_child(body: Callable[[], str]) -> str:
    """Fork; the child runs ``body`` and writes its report to a pipe, then ``os._exit``s (0 if the
    body returned). The parent reads the report with a hang guard and checks the exit status."""
    r, w = os.pipe()
    with warnings.catch_warnings():
        # 3.12+: "This process is multi-threaded, use of fork() may lead to deadlocks in the child."
        warnings.filterwarnings("ignore", "This process .* is multi-threaded", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            os.close(r)
            try:
                report = body()
                code = 0
            except BaseException:
                report = traceback.format_exc()
            os.write(w, report.encode())
            os.close(w)
        finally:
            os._exit(code)
    os.close(w)
    data = b""
    deadline = time.monotonic() + HANG
    try:
        while True:
            ready, _, _ = select.select([r], [], [], max(deadline - time.monotonic(), 0))
            if not ready:
                raise AssertionError(f"forked child {pid} hangs; so far: {data!r}")
            chunk = os.read(r, 65536)
            if not chunk:
                break
            data += chunk
    finally:
        os.close(r)
        if not data.startswith(b"ok"):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        _, status = os.waitpid(pid, 0)
    report = data.decode()
    assert os.waitstatus_to_exitcode(status) == 0, report
    return report


def sigint_each_ready(child: Child, iterations: int) -> tuple[list[str], float]:
    """Send SIGINT each time the child prints ``ready``; return its other lines and the slowest
    interval between a SIGINT and the child's ``caught`` line."""
    lines: list[str] = []
    slowest = 0.0
    for i in range(iterations):
        try:
            assert (ready := child.line()) == "ready", ready
            sent = time.monotonic()
            os.kill(child.proc.pid, signal.SIGINT)
            caught = child.line(HANG)  # a hang guard; the 0.5 s bound is checked below
            slowest = max(slowest, time.monotonic() - sent)
            lines += [caught, child.line()]
        except AssertionError as exc:
            raise AssertionError(f"iteration {i}: {exc}; lines before: {lines[-4:]}") from None
    return lines, slowest
