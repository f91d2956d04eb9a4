"""The parent's record of process work: each task, and each worker with the window of tasks it holds.

A task (:class:`_Task`) is, in turn: QUEUED (in the pool's queue, or on its way to a worker), SENT
(in a worker's window: in its pipe or its hands, not started), RUNNING (the worker said STARTED),
OVER (ended, revoked, or failed). It moves back from SENT to QUEUED when its worker dies before
starting it, or when the parent takes it back from a worker stuck on a long task; it goes from SENT
to OVER, never running, when it is revoked in the window.

A worker (:class:`_Worker`) holds its process, its pipe, its shared words (see ``_process_worker``)
and its claim lock, and the window: the tasks sent to it, oldest first, not yet answered. Its
answers come in the window's order, which is how a record finds its task. A task revoked or taken
back in the window leaves a :class:`_Skip` in its place, which the worker's SKIPPED answers.

Revoking a task in a window takes the worker's claim lock without waiting: the worker has not
claimed the task (its claim counter says so), and marks it, so the worker skips it. The lock is held
by the worker only while it claims a task; a lock that is busy is tried again by the manager (a
worker that died holding it is found by its exit first).
"""

from __future__ import annotations

import collections
import multiprocessing
import os
import signal
import socket
import sys
import time
from typing import TYPE_CHECKING, Any

from ._errors import WorkerCrashed
from ._process_worker import CANCEL_WORD, CLAIMED, FRAME, MARKS, WORKER_NAME, worker_main

if TYPE_CHECKING:
    from ._result import Result

#: The most tasks in a worker's window: the one it runs and those queued in its pipe behind it.
WINDOW = 64
#: Tasks are queued behind a running one only while their pickled calls, all told, stay within this
#: many bytes and a quarter of the pipe's buffer: sending to a busy worker must never block.
WINDOW_BYTES = 64 * 1024
#: A worker that has neither started nor ended a task for this many seconds is stuck on a long task
#: (or still starting): the tasks queued behind it are taken back, and it gets no more until it moves.
STALL = 0.01

QUEUED, SENT, RUNNING, OVER = 0, 1, 2, 3


class _Task:
    __slots__ = (
        "cancel_at",
        "handle",
        "hooked",
        "payload",
        "pos",
        "seq",
        "size",
        "state",
        "timed_out",
        "worker",
    )

    def __init__(self, handle: Result[Any], payload: bytes, seq: int) -> None:
        self.handle = handle
        self.payload = payload  # kept until it starts: a task sent to a worker that dies goes again
        self.size = len(payload)
        self.seq = seq
        self.state = QUEUED
        self.hooked = False  # its cancel hook is in place (it was sent once)
        self.worker: _Worker | None = None
        self.pos = -1  # its position in its worker's stream of tasks
        self.cancel_at: float | None = None  # when to terminate the worker if it has not stopped
        self.timed_out = False  # terminated for running past its time limit


class _Skip:
    """A window's place of a task revoked or taken back there: the worker answers it SKIPPED."""

    __slots__ = ("size",)

    def __init__(self, size: int) -> None:
        self.size = size


class _Worker:
    __slots__ = (
        "budget",
        "buffer",
        "claim_lock",
        "conn",
        "fd",
        "inflight",
        "kill_at",
        "moved_at",
        "need",
        "pid",
        "process",
        "sent",
        "shared",
        "spoke",
        "task",
        "window",
    )

    def __init__(self, ctx: multiprocessing.context.BaseContext) -> None:
        parent_end, child_end = ctx.Pipe(duplex=True)
        self.shared: Any = ctx.RawArray("q", MARKS + WINDOW)
        for i in range(MARKS + WINDOW):
            self.shared[i] = -1  # no task to stop, no mark (a mark is a position, from 0)
        self.shared[CLAIMED] = 0
        self.claim_lock: Any = ctx.Lock()
        self.process = ctx.Process(  # type: ignore[attr-defined]
            target=worker_main,
            args=(child_end, self.shared, self.claim_lock),
            name=WORKER_NAME,
            daemon=True,
        )
        self.process.start()
        child_end.close()
        self.conn = parent_end
        self.fd: int = parent_end.fileno()
        self.pid: int = self.process.pid
        self.window: collections.deque[_Task | _Skip] = collections.deque()
        self.sent = 0  # tasks sent so far: the next one's position
        self.inflight = 0  # bytes of the calls in the window
        self.budget = _budget(self.fd)
        self.task: _Task | None = None  # the task it runs (STARTED came, its end has not)
        self.moved_at = time.monotonic()  # when it last started or ended a task (or got its first)
        self.kill_at: float | None = None
        self.spoke = False  # it sent a message: it got through its start (the main module's import)
        self.buffer = bytearray()  # the start of a frame not yet whole
        self.need = 0  # bytes still missing from that frame

    def can_take(self, size: int, now: float, count: int, extra: int, stall: float) -> bool:
        """Whether a task of ``size`` bytes may join the window now, after ``count`` tasks in it or
        on their way (``extra`` bytes of them on their way); ``stall``: the pool's STALL."""
        if self.kill_at is not None:
            return False
        if count == 0:
            return True
        if count >= WINDOW or self.inflight + extra + size > self.budget:
            return False
        if not self.window:
            return True  # idle: it reads the whole message at once
        # Moving (not stuck on a long task, nor still starting), and not stopping its task.
        return now - self.moved_at < stall and (self.task is None or self.task.cancel_at is None)

    def enlist(self, tasks: list[_Task]) -> bytes:
        """Put ``tasks`` in the window; return the message that sends them."""
        if not self.window:
            self.moved_at = time.monotonic()
        for task in tasks:
            task.worker = self
            task.pos = self.sent
            task.state = SENT
            self.sent += 1
            self.inflight += task.size
            self.window.append(task)
        return tasks[0].payload if len(tasks) == 1 else b"".join(t.payload for t in tasks)

    def pop(self) -> _Task | _Skip:
        entry = self.window.popleft()
        self.inflight -= entry.size
        return entry

    def revoke(self, task: _Task) -> bool | None:
        """Mark ``task`` (SENT here) so that the worker skips it: True if done, False if the worker has
        claimed it already, None if its claim lock is busy (try again)."""
        if not self.claim_lock.acquire(False):
            return None
        try:
            if self.shared[CLAIMED] > task.pos:
                return False
            self.shared[MARKS + task.pos % WINDOW] = task.pos
        finally:
            self.claim_lock.release()
        self._leave(task)
        return True

    def take_back(self) -> list[_Task] | None:
        """Mark every task of the window the worker has not claimed, and return them (oldest first);
        None if its claim lock is busy."""
        if not self.claim_lock.acquire(False):
            return None
        try:
            claimed = self.shared[CLAIMED]
            if not self.spoke:  # still starting: it keeps its first task (see _crash_error)
                claimed = max(claimed, 1)
            taken = [t for t in self.window if isinstance(t, _Task) and t.state == SENT and t.pos >= claimed]
            for task in taken:
                self.shared[MARKS + task.pos % WINDOW] = task.pos
        finally:
            self.claim_lock.release()
        for task in taken:
            self._leave(task)
            task.state = QUEUED
        return taken

    def _leave(self, task: _Task) -> None:
        window = self.window
        for i, entry in enumerate(window):
            if entry is task:
                window[i] = _Skip(task.size)
                break
        task.worker = None
        task.state = OVER

    def unclaimed(self) -> bool:
        """Whether tasks wait in the window (started by the worker, perhaps, but not said so)."""
        return any(isinstance(t, _Task) and t.state == SENT for t in self.window)

    def read(self) -> list[memoryview] | None:
        """The whole frames that have come (reads once: call when the pipe is readable); None at the
        end of the pipe."""
        chunk = os.read(self.fd, min(max(65536, self.need), 1 << 22))
        if not chunk:
            return None
        self.spoke = True
        if self.buffer:
            self.buffer += chunk
            chunk = bytes(self.buffer)
            self.buffer.clear()
        view = memoryview(chunk)
        frames = []
        offset = 0
        end = len(view)
        while end - offset >= FRAME.size:
            (size,) = FRAME.unpack_from(view, offset)
            stop = offset + FRAME.size + size
            if stop > end:
                break
            frames.append(view[offset + FRAME.size : stop])
            offset = stop
        if offset < end:
            self.buffer += view[offset:]
            whole = FRAME.size
            if len(self.buffer) >= FRAME.size:
                whole += FRAME.unpack_from(self.buffer)[0]
            self.need = whole - len(self.buffer)
        else:
            self.need = 0
        return frames

    def stop_word(self, seq: int) -> None:
        """Ask the worker to stop task ``seq``: its next ``checkpoint()`` raises."""
        self.shared[CANCEL_WORD] = seq


def _budget(fd: int) -> int:
    """How many bytes of queued calls a worker's pipe takes without blocking the sender."""
    try:
        with socket.socket(fileno=os.dup(fd)) as s:
            buffer = int(s.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF))
    except OSError:
        return 0  # not a socket: nothing queued behind a running task
    return min(WINDOW_BYTES, buffer // 4)


def _pick_start_method(start_method: str | None) -> multiprocessing.context.BaseContext:
    available = multiprocessing.get_all_start_methods()
    if start_method is None:
        start_method = "forkserver" if "forkserver" in available else "spawn"
    elif not isinstance(start_method, str) or start_method not in available:
        raise ValueError(f"start_method must be one of {available} on this platform, not {start_method!r}")
    ctx = multiprocessing.get_context(start_method)
    if start_method == "forkserver":
        # The library (imported once, inherited by every worker) and the hook that lets a worker
        # report a failed import of the main module; see _process_boot.
        ctx.set_forkserver_preload(["asyncbridge._process_boot"])
    return ctx


def _main_for_workers() -> str | None:
    """What a spawn or forkserver worker imports as the main module before anything else, as
    multiprocessing decides it: the parent's main module by its name (``python -m module``) or by its
    file; None if workers import none (``python -c``, an interactive session, a package's
    ``__main__``), so that nothing defined there can reach a worker."""
    main = sys.modules.get("__main__")
    name = getattr(getattr(main, "__spec__", None), "name", None)
    if isinstance(name, str):
        return None if name == "__main__" or name.endswith(".__main__") else name
    path = getattr(main, "__file__", None)
    return path if isinstance(path, str) else None


def _crash_error(worker: _Worker, task: _Task, start_method: str) -> WorkerCrashed:
    code = worker.process.exitcode
    if code is None:
        how = "its connection broke"
    elif code < 0:
        try:
            how = f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            how = f"killed by signal {-code}"
    else:
        how = f"exited with code {code}"
    if worker.spoke:
        message = f"worker process {worker.pid} died while running {task.handle._label}: {how}"
    else:
        message = (
            f"worker process {worker.pid} {how} while starting, before it could run {task.handle._label}"
        )
        main = _main_for_workers() if start_method != "fork" else None
        if main is not None and code is not None and code > 0:  # an exception (not a signal) ended it
            # The usual cause, which only the worker's stderr shows (its own report reaches us under
            # forkserver only: see _process_worker.guard_main_import).
            message += (
                f". A new worker first imports the main module {main!r} again (as '__mp_main__'), and "
                "most likely failed there; the worker's own error is on its stderr. A script whose "
                "top-level code starts process work must run that code under "
                "`if __name__ == '__main__':`"
            )
    return WorkerCrashed(message, pid=worker.pid, exitcode=code)
