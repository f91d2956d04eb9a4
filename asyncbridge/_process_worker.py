"""The worker side of process work: the loop each worker process of a ``ProcessPool`` runs.

The wire, both ways over the worker's one duplex pipe (the parent's side is ``_process_manager``):

- Parent to worker: one message carries one or more tasks, each a :data:`TASK` header (its
  number, its time limit, the size of its pickled call) and the pickled ``(fn, args, kwargs)``. The
  parent keeps a few tasks queued in each worker's pipe (the worker's *window*), so that a worker
  goes from one task to the next without waiting for the parent. An empty message: stop.
- Worker to parent: frames (:data:`FRAME`, the size of what follows), each holding one or more
  records (:data:`RECORD`: a kind, the task's number, the size of a body, then the body). The
  worker answers every task of its window in order with exactly one of: STARTED then one of DONE,
  FAILED (a failure or a task it could not unpickle), CANCELLED; or SKIPPED (revoked, or taken
  back by the parent, before it started); or, for a worker whose start failed, FAILED alone.
  PROGRESS records come between STARTED and the task's end.

When a task starts and when it runs: before it runs a task the worker *claims* it, under the
worker's claim lock: it counts it in the shared claim counter and reads the task's revoke mark
(which the parent writes under the same lock, only for a task not yet claimed). A marked task is
skipped. A claimed task's STARTED is written to the pipe before any of its code runs (unpickling
its call included), together with whatever records were waiting (the end of the task before), so
that a stream of short tasks costs one write each and the parent knows a task runs only once it
does. Progress records are written at once. Records of a task's end wait for the next task's
STARTED, or for the window to empty, whichever comes first.

The shared words, one array per worker: the number of the task it must stop (``checkpoint()``
raises when it is the running task's), the claim counter, and one revoke mark per window position.

It runs each task with a ``_WorkerHandle`` as the current work (so ``checkpoint()`` reads the
shared cancel word and ``report_progress()`` writes a record), and sends the value or the failure
back (the exception pickled when it can be rebuilt, and its traceback text always). Kept apart from
the parent side because this is all a worker process imports of the pool.

A worker's own start can fail too: multiprocessing first runs the parent's main script again in it
(as ``__mp_main__``), and a script whose top-level code starts process work (no ``if __name__ ==
'__main__':``) fails there. Left alone, that error goes to the worker's stderr and the caller only
sees the worker exit with code 1. Under forkserver, :func:`guard_main_import` (installed in the
forkserver by ``_process_boot``) catches it instead, and the worker answers each task with it.
"""

from __future__ import annotations

import collections
import math
import os
import pickle
import select
import signal
import struct
import threading
import time
from typing import TYPE_CHECKING, Any

from ._context import CURRENT
from ._errors import Cancelled
from ._remote import describe_failure
from ._signals import unblock_signals

if TYPE_CHECKING:
    import multiprocessing.connection as mpc
    from collections.abc import Callable, Mapping

#: A task in a message to a worker: its number, its time limit in seconds (NaN: none), the size of
#: its pickled call, which follows.
TASK = struct.Struct("<qdQ")
#: A frame from a worker: the size of the records that follow.
FRAME = struct.Struct("<Q")
#: A record in a frame: its kind, the task's number, the size of its body, which follows.
RECORD = struct.Struct("<BqQ")
STARTED, DONE, FAILED, CANCELLED, PROGRESS, SKIPPED = 0, 1, 2, 3, 4, 5
#: The shared words of a worker: [CANCEL_WORD] the task it must stop, [CLAIMED] how many tasks it
#: has claimed, then one revoke mark per position of its window (MARKS + position % window size).
CANCEL_WORD, CLAIMED, MARKS = 0, 1, 2

#: The name of every worker process (multiprocessing passes it in the worker's preparation data,
#: which is how :func:`guard_main_import` tells our workers from other processes of the forkserver).
WORKER_NAME = "asyncbridge-process"

#: Raised by the pool's submit inside a worker that is still importing the main module.
NO_MAIN_GUARD = (
    "process work was started while a worker process imports the main module: multiprocessing runs "
    "the main script again in each worker process (as '__mp_main__') before the worker can run "
    "anything, so a script that starts process work from its top-level code would start it again in "
    "every worker. Put that code under `if __name__ == '__main__':`"
)

#: Why this worker could not import the main module, if it could not (see guard_main_import).
_boot_failure: BaseException | None = None


def guard_main_import() -> None:
    """Make our workers survive a failed import of the main module, to report it to the caller.

    Installed in the forkserver process only (by ``asyncbridge._process_boot``, which the pool asks
    the forkserver to preload), so it reaches the workers forked from there and nothing else. For a
    worker of ours (by its name in the preparation data), ``multiprocessing.spawn.prepare`` keeps an
    exception from the main module's import in :data:`_boot_failure` instead of dying with it, and
    :func:`worker_main` then fails every task it is given with that error. Other processes of the
    same forkserver, and any failure before the main module's import, are left exactly as they were.
    """
    from multiprocessing import spawn

    real = spawn.prepare
    if getattr(real, "_asyncbridge_guard", False):
        return

    def prepare(data: Mapping[str, Any]) -> None:
        main = data.get("init_main_from_name") or data.get("init_main_from_path")
        if data.get("name") != WORKER_NAME or main is None:
            real(data)
            return
        # Everything but the main module first, as usual (its failures stay fatal), then the main
        # module alone (prepare() imports it last anyway).
        real({k: v for k, v in data.items() if k not in _MAIN_KEYS})
        try:
            real({k: v for k, v in data.items() if k in _MAIN_KEYS})
        except BaseException as exc:  # even SystemExit from the script's top-level code
            global _boot_failure
            _boot_failure = _main_import_failed(main, exc)

    prepare._asyncbridge_guard = True  # type: ignore[attr-defined]
    spawn.prepare = prepare


_MAIN_KEYS = ("init_main_from_name", "init_main_from_path")


def _main_import_failed(main: object, exc: BaseException) -> RuntimeError:
    if isinstance(exc, RuntimeError) and str(exc) == NO_MAIN_GUARD:  # the usual case, said once
        err = RuntimeError(
            f"the worker process could not import the main module {main!r}: its top-level code starts "
            f"process work, which it would do again in every worker process (multiprocessing runs the "
            f"main script again in each worker, as '__mp_main__'). Put that code under "
            f"`if __name__ == '__main__':`"
        )
    else:
        said = " ".join(str(exc).split())  # multiprocessing's own message is indented over many lines
        err = RuntimeError(
            f"the worker process could not import the main module {main!r}, which multiprocessing "
            f"runs again in each worker process (as '__mp_main__') before it can run any task: "
            f"{type(exc).__name__}: {said}. Code that must run only once (starting process work, "
            f"say) belongs under `if __name__ == '__main__':`"
        )
    err.__cause__ = exc  # its traceback (the script's failing line) travels as the remote traceback
    return err


def _unloadable(exc: BaseException) -> RuntimeError:
    """The error for a task this worker could not unpickle, with the original message and, where
    the missing name was looked for in a main module, why it is missing there and what to do."""
    message = f"the worker could not unpickle the task: {type(exc).__name__}: {exc}"
    if isinstance(exc, AttributeError) and "'__mp_main__'" in str(exc):
        message += (
            ". A worker process imports the main script as '__mp_main__', where the code under "
            "`if __name__ == '__main__':` does not run: define what process work needs at the "
            "script's top level, outside that block, or in a module of its own"
        )
    elif isinstance(exc, AttributeError) and "'__main__'" in str(exc):
        message += (
            ". It is defined in the parent's main module, which a worker process does not import "
            "(python -c, an interactive session, a package's __main__): define it in a module of "
            "its own and import it from there"
        )
    return RuntimeError(message)


class _WorkerHandle:
    """What ``checkpoint()``, ``cancel_requested()`` and ``report_progress()`` see in a worker."""

    __slots__ = ("_deadline", "_label", "_send", "_seq", "_shared", "_time_limit")

    def __init__(
        self, seq: int, shared: Any, label: str, time_limit: float | None, send: Callable[[bytes], None]
    ) -> None:
        self._seq = seq
        self._shared = shared
        self._label = label
        self._time_limit = time_limit
        self._deadline = None if time_limit is None else time.monotonic() + time_limit
        self._send = send

    @property
    def _cancel_requested(self) -> bool:
        return bool(self._shared[CANCEL_WORD] == self._seq)

    def _set_progress(self, meta: dict[str, Any], state_name: str | None = None, /) -> bool:
        try:
            blob = pickle.dumps(meta)
        except Exception as exc:
            raise TypeError(f"report_progress() from a worker process needs picklable values: {exc}") from exc
        self._send(record(PROGRESS, self._seq, blob))
        return True

    def __repr__(self) -> str:
        return f"<process task {self._seq} {self._label}>"


def record(kind: int, seq: int, body: bytes = b"") -> bytes:
    return RECORD.pack(kind, seq, len(body)) + body


def _describe_failure(exc: BaseException) -> bytes:
    body = describe_failure(exc)
    exc.__traceback__ = None  # its frames (and what they hold) are not kept in the worker
    return body


class _Gone(Exception):
    """The parent is gone: the worker has no one to work for."""


def _hung_up(fd: int) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return any(event & (select.POLLHUP | select.POLLERR) for _, event in poller.poll(0))


class _Pipe:
    """The worker's end: frames written whole (records from any thread: the work may report progress
    from threads of its own), and the claim of each next task."""

    def __init__(self, conn: mpc.Connection, shared: Any, claim: Any) -> None:
        self.conn = conn
        self.fd = conn.fileno()
        self.shared = shared
        self.claim_lock = claim
        self.window = len(shared) - MARKS
        self.claimed = 0
        self.lock = threading.Lock()

    def write(self, records: list[bytes]) -> None:
        body = records[0] if len(records) == 1 else b"".join(records)
        data = memoryview(FRAME.pack(len(body)) + body)
        with self.lock:
            try:
                while data:
                    data = data[os.write(self.fd, data) :]
            except OSError as exc:
                raise _Gone from exc

    def send(self, data: bytes) -> None:
        self.write([data])

    def claim(self) -> bool:
        """Claim the next task of the window; False if the parent revoked it first."""
        position = self.claimed
        while not self.claim_lock.acquire(True, 1.0):  # held for an instant, unless its holder died
            if _hung_up(self.fd):
                raise _Gone
        try:
            revoked = self.shared[MARKS + position % self.window] == position
            self.shared[CLAIMED] = position + 1
        finally:
            self.claim_lock.release()
        self.claimed = position + 1
        return not revoked


def _unpack(message: bytes, into: collections.deque[tuple[int, float, memoryview]]) -> None:
    view = memoryview(message)
    offset = 0
    while offset < len(view):
        seq, limit, size = TASK.unpack_from(view, offset)
        offset += TASK.size
        into.append((seq, limit, view[offset : offset + size]))
        offset += size


def worker_main(conn: mpc.Connection, shared: Any, claim: Any) -> None:
    """The loop of one worker process: take the tasks of its window in order, run each, answer."""
    unblock_signals()  # inherited from the manager thread that started us: terminate() must work
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    pipe = _Pipe(conn, shared, claim)
    try:
        _serve(pipe)
    except _Gone:
        return


def _serve(pipe: _Pipe) -> None:
    # A worker whose main module failed to import runs nothing: each task fails with that error
    # (kept alive, it spares the script's top-level code another run in a new worker per task).
    boot_failure = None if _boot_failure is None else _describe_failure(_boot_failure)
    tasks: collections.deque[tuple[int, float, memoryview]] = collections.deque()
    out: list[bytes] = []  # records not yet written: they go with the next write
    shared = pipe.shared
    while True:
        if not tasks:
            if out:
                pipe.write(out)
                out = []
            try:
                message = pipe.conn.recv_bytes()
            except (EOFError, OSError):
                return  # the parent is gone
            if not message:
                return  # shutdown
            _unpack(message, tasks)
            continue
        seq, limit, call = tasks.popleft()
        if not pipe.claim():
            out.append(record(SKIPPED, seq))
            continue
        if boot_failure is not None:
            out.append(record(FAILED, seq, boot_failure))
            continue
        out.append(record(STARTED, seq))
        pipe.write(out)
        out = [_run(pipe, shared, seq, limit, call)]
        del call


def _run(pipe: _Pipe, shared: Any, seq: int, limit: float, call: memoryview) -> bytes:
    """Run one task; return the record of its end."""
    try:
        fn, args, kwargs = pickle.loads(call)
    except BaseException as exc:
        return record(FAILED, seq, _describe_failure(_unloadable(exc)))
    label = getattr(fn, "__qualname__", "?")
    here = _WorkerHandle(seq, shared, label, None if math.isnan(limit) else limit, pipe.send)
    token = CURRENT.set(here)
    try:
        value = fn(*args, **kwargs)
    except Cancelled as exc:
        if shared[CANCEL_WORD] == seq:  # answering a request: the task was revoked
            return record(CANCELLED, seq)
        return record(FAILED, seq, _describe_failure(exc))
    except BaseException as exc:
        return record(FAILED, seq, _describe_failure(exc))
    finally:
        CURRENT.reset(token)
    del fn, args, kwargs
    try:
        return record(DONE, seq, pickle.dumps(value))
    except BaseException as exc:  # whatever a __reduce__ raises fails this task only
        unsendable = TypeError(
            f"the result of {label}() could not be sent back from the worker process: {exc}"
        )
        return record(FAILED, seq, _describe_failure(unsendable))
