"""Process work: a pool of worker processes that survives crashes and stops work on cancel.

Why a pool of our own and not ``concurrent.futures.ProcessPoolExecutor``, pebble or loky:

- ``ProcessPoolExecutor`` fails *every* pending future with ``BrokenProcessPool`` when one worker dies,
  then refuses new work, and cannot stop a running task.
- pebble isolates crashes and kills a cancelled task's worker, and loky restarts broken pools, but
  neither carries a per-task cancel flag or progress reports into the worker without a manager
  process or a queue per task, and neither reports when a task really starts. Those three are the
  point of this module (``checkpoint()``, ``cancel_requested()`` and STARTED work in processes as in
  threads), so we keep the one piece of machinery they need here, in this module and its siblings:
  ``_process_manager`` (the manager thread), ``_process_slots`` (the record of tasks and workers),
  ``_process_worker`` (the worker's loop and the wire between them), ``_process_calls`` (what a call
  must be to reach a worker).

How it works. Each worker has one duplex pipe to the parent and a few words of shared memory: the
number of the task it must stop, and what it needs to tell a task it may start from one revoked in
its queue. One manager thread (``asyncbridge-process``) waits on every pipe and every worker's exit
sentinel at once: it hands tasks to the workers, a few at a time into each worker's pipe, so that a
worker goes from task to task without waiting for the parent; turns the workers' records (started,
progress, done, failed, cancelled) into handle transitions; and notices at once when a worker dies.
Then only the task that worker was running fails, with :class:`WorkerCrashed` naming the pid and the
exit code or signal; the tasks queued in its pipe go back to the queue, and a fresh worker takes its
place. A task is STARTED when a worker really begins it, not when it is queued in a worker's pipe.

Cancelling a queued task revokes it at once, wherever it waits (the pool's queue, or a worker's
pipe), and it never runs. Cancelling a running task writes its number into the worker's shared word
(its next ``checkpoint()`` raises), then, if the work has not stopped after :data:`CANCEL_GRACE`
seconds, the worker is terminated (SIGTERM), and killed (SIGKILL) :data:`KILL_AFTER` seconds later;
the handle ends REVOKED and a new worker replaces it.

Arguments are pickled in the calling thread, so an unpicklable argument fails the call at once
with a ``TypeError`` naming it. Start method: ``forkserver`` where the platform has it, else
``spawn`` (never ``fork``: the parent runs threads, and forking a threaded process can deadlock the
child; Python 3.14 makes forkserver the POSIX default for the same reason). Pass ``start_method=``
to :class:`ProcessPool` to choose.

With spawn and forkserver a worker imports the parent's main module again before anything else, so
what the caller can get wrong there is named at the caller: a function from a main module workers
do not import (``python -c``, an interactive session) is refused at the call, a program read from
standard input too, and a script without ``if __name__ == '__main__':`` that starts process work
from its top level gets that error back from the worker (see ``_process_worker``).

After ``os.fork()`` every pool of the parent is dead in the child: its manager thread does not exist
there and its workers are the parent's. The at-fork hook drops them (and multiprocessing's own
record of the parent's forkserver), fails the child's copies of their handles, and the child's
first submit starts afresh.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import functools
import math
import multiprocessing
import multiprocessing.util  # its exit hook first, so ours runs before it (see runtime.add)
import os
import pickle
import threading
import weakref
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from . import _runtime as runtime
from ._process_calls import (
    _refuse_main_objects,
    _unpicklable as _unpicklable,  # for @task, which pickles its own calls
)
from ._process_manager import KILL_AFTER, _Manager
from ._process_slots import OVER, QUEUED, RUNNING, SENT, STALL, _main_for_workers, _pick_start_method, _Task
from ._process_worker import NO_MAIN_GUARD, TASK, WORKER_NAME
from ._result import Owned, Result
from ._validate import callable_arg, seconds

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["CANCEL_GRACE", "KILL_AFTER", "ProcessPool", "run_in_process", "shared_pool"]

P = ParamSpec("P")
T = TypeVar("T")

#: Seconds a cancelled running task gets to stop at a checkpoint() before its worker is terminated.
CANCEL_GRACE = 0.1


class ProcessPool(_Manager, cf.Executor):
    """A pool of worker processes whose ``submit()`` returns asyncbridge handles.

    Unlike ``concurrent.futures.ProcessPoolExecutor``, a worker that dies fails only the task it was
    running (with :class:`WorkerCrashed`) and is replaced; ``cancel()`` stops a running task
    (``checkpoint()`` first, then terminate, then kill); and the handle reports STARTED when the
    worker really begins the task.

    Args:
        max_workers: the most worker processes at once (default: the CPU count). Workers start on
            demand and live until :meth:`shutdown`.
        start_method: ``"forkserver"``, ``"spawn"`` or ``"fork"`` (default: forkserver where the
            platform has it, else spawn). ``fork`` is offered for tests and for parents that run no
            threads; a parent with threads (asyncbridge starts some) can deadlock a forked child.
        cancel_grace: seconds a cancelled running task gets to stop at its next ``checkpoint()``
            before its worker is terminated (default 0.1).
    """

    def __init__(
        self,
        max_workers: int | None = None,
        *,
        start_method: str | None = None,
        cancel_grace: float = CANCEL_GRACE,
    ) -> None:
        self._grace = seconds(cancel_grace, "cancel_grace")
        self._stop_grace = runtime.EXIT_GRACE  # how long stopping workers wait before killing them
        self._stall = STALL
        if max_workers is None:
            max_workers = os.cpu_count() or 1
        if isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1:
            raise ValueError(f"max_workers must be a positive int, not {max_workers!r}")
        self._max = max_workers
        self._ctx = _pick_start_method(start_method)
        self.start_method: str = self._ctx.get_start_method()
        self._fresh_state()
        self._seq = 0
        self._closed = False
        self._drop_queued = False
        _POOLS.add(self)

    def _fresh_state(self) -> None:
        """No worker, no queue, no manager: a new pool's state, and a forked child's."""
        self._lock = threading.Lock()  # in a child: a thread of the parent may have held it
        self._pending = collections.deque()
        self._starting = []
        self._commands = []
        self._retry = []
        self._wake_r, self._wake_w = _wake_pipe()
        self._wake_due = False
        self._workers = []
        self._by_fd = {}
        self._poller = None
        self._manager = None

    # -- submitting -------------------------------------------------------------------------------

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Result[T]:
        """Run ``fn(*args, **kwargs)`` in a worker process; return its handle at once.

        Raises:
            TypeError: ``fn`` is not callable, or ``fn`` or an argument cannot be pickled, or (with
                spawn or forkserver) is defined in a main module that has no file (``python -c``,
                an interactive session), which a worker cannot import: the message names which one.
            RuntimeError: the pool is shut down; or the program was read from standard input
                (spawn, forkserver: a worker cannot import its main module); or this process is a
                worker still importing the main module (a script without ``if __name__ ==
                '__main__':``).
        """
        return self._submit(fn, args, kwargs)

    def _submit(
        self,
        fn: Callable[..., T],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        prepare: Callable[[Result[T]], object] | None = None,
    ) -> Result[T]:
        """``submit``, with ``prepare(handle)`` run before the work can start (a store records it)."""
        if not callable(fn):  # the check inline: this is a hot path
            callable_arg(fn, "run_in_process", hint="; use asyncbridge.spawn(coro) for those")  # type: ignore[unreachable]  # untyped callers do get here
        try:
            payload = pickle.dumps((fn, args, kwargs))
        except Exception as exc:
            raise _unpicklable(fn, args, kwargs, exc) from exc
        main = None if self.start_method == "fork" else _main_for_workers()
        if main is None and self.start_method != "fork" and b"__main__" in payload:
            _refuse_main_objects((fn, args, kwargs))  # (the scan of a big payload last: rarely needed)
        h: Result[T] = Owned()
        h._setup(f"process {getattr(fn, '__qualname__', type(fn).__qualname__)}()")
        if prepare is not None:
            prepare(h)
        self._queue(h, payload, main)
        return h

    def _enqueue(self, h: Result[Any], payload: bytes) -> None:
        """Queue a pickled ``(fn, args, kwargs)`` for ``h`` (its ``_time_limit`` travels along)."""
        self._queue(h, payload, None if self.start_method == "fork" else _main_for_workers())

    def _queue(self, h: Result[Any], payload: bytes, main: str | None) -> None:
        """``_enqueue``, given :func:`_main_for_workers` (None under fork)."""
        limit = h._time_limit
        if getattr(multiprocessing.current_process(), "_inheriting", False):
            # This is a worker process importing the main module: multiprocessing would refuse to
            # start a process here, and the script would start this work again in every worker.
            raise RuntimeError(NO_MAIN_GUARD)
        if main is not None and main.startswith("<"):  # "<stdin>": no file a worker could run
            raise RuntimeError(
                f"cannot run process work from a program read from standard input: with the "
                f"{self.start_method} start method each worker process first runs the main "
                f"module from its file, and this one has none ({main!r}). Save the program to a "
                f"file and run that, or use run_in_thread()"
            )
        seconds_ = math.nan if limit is None else limit
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot run new work: this process pool is shut down")
            self._seq += 1
            task = _Task(h, TASK.pack(self._seq, seconds_, len(payload)) + payload, self._seq)
            self._pending.append(task)
            if self._manager is None:
                self._manager = threading.Thread(target=self._manage, name="asyncbridge-process", daemon=True)
                self._manager.start()
            wake = not self._wake_due  # one wake-up per burst of submits
            self._wake_due = True
        if wake:
            self._wake()

    # -- shutting down ----------------------------------------------------------------------------

    def shutdown(
        self, wait: bool = True, *, cancel_futures: bool = False, cancel_running: bool = False
    ) -> None:
        """Stop accepting work (``submit()`` then raises ``RuntimeError``), as
        ``concurrent.futures.ProcessPoolExecutor.shutdown`` does.

        Args:
            wait: return only once every task has ended and the workers are gone.
            cancel_futures: revoke the queued tasks (REVOKED, they never start). Running tasks are
                not touched: they finish and their handles get their values or errors. Without it,
                queued tasks run too.
            cancel_running: also cancel the running tasks, as ``handle.cancel()`` does: their
                ``checkpoint()`` raises, and a task still running after ``cancel_grace`` has its
                worker terminated (then killed); a task that stops ends REVOKED. With
                ``cancel_futures``, the way to stop a pool at once (interpreter exit does this to
                the shared pool).
        """
        revoked: list[_Task] = []
        running: list[_Task] = []
        with self._lock:
            self._closed = True
            # Taken off the queue and out of the windows under the lock, so no worker can start one
            # meanwhile: each is revoked as queued work, never as running work.
            queued = [t for t in self._pending if t.state == QUEUED] if cancel_futures else []
            for task in queued:
                task.state = OVER
            if cancel_futures:
                self._pending.clear()
                self._drop_queued = True  # the manager revokes any it finds later
                revoked, claimed, _busy = self._revoke_windows()
                running.extend(claimed)  # they start now
            if cancel_running:
                running.extend(w.task for w in self._workers if w.task is not None)
            manager = self._manager
        for task in queued:
            if task.hooked:
                task.handle._set_cancelled()
            else:
                task.handle.cancel()
        for task in revoked:
            task.handle._set_cancelled()
        if cancel_running:
            for task in running:
                task.handle.cancel()
        self._wake()
        if wait and manager is not None and manager is not threading.current_thread():
            manager.join()

    def _after_fork_in_child(self, forgotten: bool) -> None:
        """In a child forked from this process: the workers, the manager thread and its wake-up pipe
        belong to the parent. Forget them without signalling or waiting on any of them (they are not
        the child's processes), fail the child's copies of the queued and running tasks' handles (no
        one in the child would ever finish them; the parent still runs them), and let the next
        submit start a fresh manager and fresh workers. ``forgotten``: multiprocessing no longer
        lists the parent's workers as children of this process (see _forget_parents_workers)."""
        running: dict[int, _Task] = {}
        queued: dict[int, _Task] = {}
        for task in [*self._pending, *self._starting]:
            if task.state == QUEUED:
                queued[id(task)] = task
        for w in self._workers:
            for entry in list(w.window):
                if isinstance(entry, _Task) and entry.state == RUNNING:
                    running[id(entry)] = entry
                elif isinstance(entry, _Task) and entry.state == SENT:
                    queued[id(entry)] = entry
            _close_quietly(w.conn.close)
            if forgotten:
                # Nothing in the child reads its exit status now: close the child's copy. (Were it
                # still listed, a poll of the closed number could read whatever the child opens
                # next under that number.)
                _close_quietly(functools.partial(_close_sentinel, w.process))
        _close_quietly(functools.partial(os.close, self._wake_r))
        _close_quietly(functools.partial(os.close, self._wake_w))
        self._fresh_state()
        gone = RuntimeError("the process forked while this work ran; it runs in the parent only")
        for task in running.values():
            task.handle._fail_in_forked_child(gone)
        lost = RuntimeError("the process forked while this work was queued; it runs in the parent only")
        for task in queued.values():
            task.handle._fail_in_forked_child(lost)


def _wake_pipe() -> tuple[int, int]:
    """The manager's wake-up pipe: non-blocking both ways (a full pipe means a wake-up is due)."""
    r, w = os.pipe()
    os.set_blocking(r, False)
    os.set_blocking(w, False)
    return r, w


def _close_quietly(close: Callable[[], object]) -> None:
    try:
        close()
    except (OSError, ValueError):  # already closed
        pass


def _close_sentinel(process: multiprocessing.process.BaseProcess) -> None:
    os.close(process.sentinel)  # ValueError if the process object is closed


def _forget_parents_workers() -> bool:
    """In a forked child, drop the parent's workers from multiprocessing's list of children.

    multiprocessing's exit handler terminates every daemon process in that list and joins every
    process in it; after a plain ``os.fork()`` the child's copy still lists the parent's workers, so
    a child that exits normally would SIGTERM the parent's workers (failing the parent's running
    tasks) and then fail to join them ("can only join a child process"). Every worker of ours
    listed there is the parent's (the child has started none yet), including one a manager thread
    of the parent was starting at the fork. Returns False where this Python keeps no such list.
    """
    children = getattr(multiprocessing.process, "_children", None)
    if not isinstance(children, set):
        return False
    for process in list(children):
        if getattr(process, "name", None) == WORKER_NAME:
            children.discard(process)
    return True


def _reset_forkserver_in_child() -> None:
    """In a forked child, forget the forkserver the parent started, so that the child starts its own,
    and free multiprocessing's locks that a thread of the parent may have held at the fork.

    The child inherits multiprocessing's record of the parent's forkserver, whose first check is
    ``waitpid()`` on its pid: in the child that is not a child process, so every new worker failed
    with ``ChildProcessError(10, 'No child processes')``. Clear the record as multiprocessing does
    itself when it finds its forkserver dead, with a fresh lock (a thread of the parent may have
    held it at the fork), and close the child's copy of the parent's "alive" pipe, which would keep
    the parent's forkserver running for as long as the child lives.
    """
    try:
        from multiprocessing import forkserver, resource_tracker
    except ImportError:  # no forkserver on this platform
        return
    # Starting a worker checks the resource tracker under its lock: a fork landing there would
    # leave the child's copy held for ever. Its records are whole either way (a tracker found dead
    # or never started is simply started again).
    tracker = getattr(resource_tracker, "_resource_tracker", None)
    if tracker is not None and hasattr(tracker, "_lock"):
        tracker._lock = threading.RLock()
    server = getattr(forkserver, "_forkserver", None)
    if server is None or getattr(server, "_forkserver_pid", None) is None:
        return  # none was started before the fork (or this Python keeps other records: leave it)
    alive = getattr(server, "_forkserver_alive_fd", None)
    server._lock = threading.Lock()
    server._forkserver_pid = None
    server._forkserver_address = None
    server._forkserver_alive_fd = None
    if hasattr(server, "_forkserver_authkey"):  # 3.14+
        server._forkserver_authkey = None
    if isinstance(alive, int):
        try:
            os.close(alive)
        except OSError:
            pass


_POOL: ProcessPool | None = None
_POOL_LOCK = threading.Lock()
#: Every pool, for the after-fork reset (a user's pools are as dead in a forked child as the shared one).
_POOLS: weakref.WeakSet[ProcessPool] = weakref.WeakSet()


def shared_pool() -> ProcessPool:
    global _POOL
    pool = _POOL
    if pool is None:
        with _POOL_LOCK:
            if _POOL is None:
                _POOL = ProcessPool()
            pool = _POOL
    return pool


def _stop_shared(grace: float) -> None:
    """Interpreter exit: queued work revoked, running work cancelled, workers stopped (killed once
    ``grace`` seconds have passed)."""
    pool = _POOL
    if pool is not None:
        pool._stop_grace = grace
        pool.shutdown(wait=True, cancel_futures=True, cancel_running=True)


def _after_fork_in_child() -> None:
    global _POOL_LOCK
    _POOL_LOCK = threading.Lock()
    _reset_forkserver_in_child()
    forgotten = _forget_parents_workers()
    for pool in list(_POOLS):
        pool._after_fork_in_child(forgotten)


runtime.add("process pools", stop=_stop_shared, after_fork_in_child=_after_fork_in_child)


def run_in_process(fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Result[T]:
    """Run ``fn(*args, **kwargs)`` in a worker process of the shared pool; return its handle at once.

    ``fn`` and the arguments are pickled here, in the calling thread: anything unpicklable (a lambda,
    a local function, an open file), or defined in a main module that a worker cannot import
    (``python -c``, an interactive session), raises ``TypeError`` at once, naming it. The handle is
    PENDING until a worker really starts the task, then STARTED.

    - The value, or the worker's exception with its original type (when it can be pickled) and the
      worker's traceback text as its ``__cause__`` (so in ``handle.traceback``).
    - A worker that dies fails only its task, with :class:`asyncbridge.WorkerCrashed` naming the pid
      and the exit code or signal; a new worker takes its place.
    - ``handle.cancel()``: queued work never starts; running work sees ``checkpoint()`` raise and,
      if it has not stopped after 0.1 s, its worker is terminated (killed 0.5 s later); either way
      the handle ends REVOKED.

    The shared pool has one worker per CPU, started on demand with the ``forkserver`` method (``spawn``
    where there is none); see :class:`asyncbridge.ProcessPool` to choose. At interpreter exit, queued
    work is revoked and running work is cancelled.
    """
    return shared_pool().submit(fn, *args, **kwargs)
