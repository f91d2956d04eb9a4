"""Process work: a pool of worker processes that survives crashes and stops work on cancel.

Why a pool of our own and not ``concurrent.futures.ProcessPoolExecutor``, pebble or loky:

- ``ProcessPoolExecutor`` fails *every* pending future with ``BrokenProcessPool`` when one worker dies,
  then refuses new work, and cannot stop a running task.
- pebble isolates crashes and kills a cancelled task's worker, and loky restarts broken pools, but
  neither carries a per-task cancel flag or progress reports into the worker without a manager
  process or a queue per task, and neither reports when a task really starts. Those three are the
  point of this module (``checkpoint()``, ``cancel_requested()`` and STARTED work in processes as in
  threads), so we keep the one piece of machinery they need, about 400 lines, here.

How it works. Each worker has one duplex pipe to the parent and one word of shared memory, the
number of the task it must stop. One manager thread (``asyncbridge-process``) waits on every pipe
and every worker's exit sentinel at once (``multiprocessing.connection.wait``): it hands a task to an
idle worker, turns the worker's messages (started, done, failed, cancelled) into handle transitions,
and notices at once when a worker dies. Then only that worker's task fails, with
:class:`WorkerCrashed` naming the pid and the exit code or signal, and a fresh worker takes its place.

Cancelling a running task writes its number into the worker's shared word (its next
``checkpoint()`` raises), then, if the work has not stopped after :data:`CANCEL_GRACE` seconds, the
worker is terminated (SIGTERM), and killed (SIGKILL) :data:`KILL_AFTER` seconds later; the handle
ends REVOKED and a new worker replaces it.

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
import io
import math
import multiprocessing
import multiprocessing.connection as mpc
import os
import pickle
import signal
import sys
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from . import _runtime as runtime
from ._errors import TimeLimitExceeded, WorkerCrashed, format_seconds
from ._process_worker import (
    _CANCELLED,
    _DONE,
    _HEADER,
    _PROGRESS,
    _STARTED,
    NO_MAIN_GUARD,
    WORKER_NAME,
    worker_main,
)
from ._remote import rebuild_failure
from ._result import LOGGER, Owned, Result
from ._signals import block_signals
from ._validate import callable_arg, seconds

if TYPE_CHECKING:
    from collections.abc import Callable

P = ParamSpec("P")
T = TypeVar("T")

#: Seconds a cancelled running task gets to stop at a checkpoint() before its worker is terminated.
CANCEL_GRACE = 0.1
#: Seconds between SIGTERM and SIGKILL for a worker that does not exit.
KILL_AFTER = 0.5
#: The manager wakes at least this often (seconds): a deadline further away is waited for in steps.
_LONGEST_WAIT = 3600.0


class _Task:
    __slots__ = ("cancel_at", "handle", "payload", "seq", "timed_out", "worker")

    def __init__(self, handle: Result[Any], payload: bytes, seq: int) -> None:
        self.handle = handle
        self.payload = payload
        self.seq = seq
        self.worker: _Worker | None = None
        self.cancel_at: float | None = None  # when to terminate the worker if it has not stopped
        self.timed_out = False  # terminated for running past its time limit


class _Worker:
    __slots__ = ("cancel_word", "conn", "kill_at", "pid", "process", "spoke", "task")

    def __init__(self, ctx: multiprocessing.context.BaseContext) -> None:
        parent_end, child_end = ctx.Pipe(duplex=True)
        self.cancel_word = ctx.RawValue("q", -1)
        self.process = ctx.Process(  # type: ignore[attr-defined]
            target=worker_main, args=(child_end, self.cancel_word), name=WORKER_NAME, daemon=True
        )
        self.process.start()
        child_end.close()
        self.conn = parent_end
        self.pid: int = self.process.pid
        self.task: _Task | None = None
        self.kill_at: float | None = None
        self.spoke = False  # it sent a message: it got through its start (the main module's import)


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


class ProcessPool(cf.Executor):
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
        if max_workers is None:
            max_workers = os.cpu_count() or 1
        if isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1:
            raise ValueError(f"max_workers must be a positive int, not {max_workers!r}")
        self._max = max_workers
        self._ctx = _pick_start_method(start_method)
        self.start_method: str = self._ctx.get_start_method()
        self._lock = threading.Lock()
        self._pending: collections.deque[_Task] = collections.deque()
        self._commands: collections.deque[_Task] = collections.deque()  # cancels to act on
        self._wake_r, self._wake_w = self._ctx.Pipe(duplex=False)
        self._workers: list[_Worker] = []
        self._seq = 0
        self._closed = False
        self._manager: threading.Thread | None = None
        self._starting: _Task | None = None  # the task the manager is handing to a worker
        _POOLS.add(self)

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
        if self.start_method != "fork" and _main_for_workers() is None and b"__main__" in payload:
            _refuse_main_objects((fn, args, kwargs))  # (the scan of a big payload last: rarely needed)
        h: Result[T] = Owned()
        h._setup(f"process {getattr(fn, '__qualname__', type(fn).__qualname__)}()")
        if prepare is not None:
            prepare(h)
        self._enqueue(h, payload)
        return h

    def _enqueue(self, h: Result[Any], payload: bytes) -> None:
        """Queue a pickled ``(fn, args, kwargs)`` for ``h`` (its ``_time_limit`` travels along)."""
        limit = h._time_limit
        if getattr(multiprocessing.current_process(), "_inheriting", False):
            # This is a worker process importing the main module: multiprocessing would refuse to
            # start a process here, and the script would start this work again in every worker.
            raise RuntimeError(NO_MAIN_GUARD)
        if self.start_method != "fork":
            main = _main_for_workers()
            if main is not None and main.startswith("<"):  # "<stdin>": no file a worker could run
                raise RuntimeError(
                    f"cannot run process work from a program read from standard input: with the "
                    f"{self.start_method} start method each worker process first runs the main "
                    f"module from its file, and this one has none ({main!r}). Save the program to a "
                    f"file and run that, or use run_in_thread()"
                )
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot run new work: this process pool is shut down")
            self._seq += 1
            header = _HEADER.pack(self._seq, math.nan if limit is None else limit)
            task = _Task(h, header + payload, self._seq)
            self._pending.append(task)
            if self._manager is None:
                self._manager = threading.Thread(target=self._manage, name="asyncbridge-process", daemon=True)
                self._manager.start()
        self._wake()

    def _wake(self) -> None:
        try:
            self._wake_w.send_bytes(b"")
        except OSError:
            pass  # shut down meanwhile

    def _request_cancel(self, task: _Task) -> None:
        worker = task.worker
        if worker is not None:
            worker.cancel_word.value = task.seq  # the worker's next checkpoint() raises
        with self._lock:
            self._commands.append(task)
        self._wake()

    # -- the manager thread -----------------------------------------------------------------------

    def _manage(self) -> None:
        block_signals()  # it runs no user code: Ctrl-C is the main thread's
        idle: list[_Worker] = []
        try:
            while True:
                with self._lock:
                    closed = self._closed
                    cancels = list(self._commands)
                    self._commands.clear()
                now = time.monotonic()
                for task in cancels:
                    if task.worker is not None and task.cancel_at is None:
                        task.worker.cancel_word.value = task.seq
                        task.cancel_at = now + self._grace
                self._dispatch(idle)
                if closed and not self._pending and not any(w.task for w in self._workers):
                    break
                timeout = self._enforce_deadlines(now)
                if timeout is not None:
                    # poll() takes milliseconds in a C int: a time limit of weeks would overflow it
                    timeout = min(timeout, _LONGEST_WAIT)
                waitables: list[Any] = [self._wake_r]
                for w in self._workers:
                    waitables.append(w.conn)
                    waitables.append(w.process.sentinel)
                for ready in mpc.wait(waitables, timeout):
                    if ready is self._wake_r:
                        while self._wake_r.poll():
                            self._wake_r.recv_bytes()
                        continue
                    worker = self._owner(ready)
                    if worker is None:
                        continue
                    if ready is worker.conn:
                        self._read(worker, idle)
                    else:
                        self._lost(worker, idle)
        except BaseException as exc:
            self._recover(exc)
            return
        self._stop_workers()  # shut down: the normal way out

    def _recover(self, exc: BaseException) -> None:
        """The manager failed (a bug): never strand a handle. Its workers and their running tasks go
        (each task fails, saying why); queued tasks stay queued for a fresh manager, started here."""
        LOGGER.exception("asyncbridge's process manager failed; starting a new one")
        broken = RuntimeError(f"asyncbridge's process manager failed while this task ran: {exc!r}")
        workers = list(self._workers)
        for w in workers:
            try:
                w.process.kill()
                w.process.join(KILL_AFTER)
                w.conn.close()
            except (OSError, ValueError):
                pass
            if w.task is not None:
                w.task.handle._set_exception(broken)
        with self._lock:
            self._workers = []
            self._manager = None
            restart = bool(self._pending) and not self._closed
            if restart:
                self._manager = threading.Thread(target=self._manage, name="asyncbridge-process", daemon=True)
                self._manager.start()

    def _owner(self, ready: object) -> _Worker | None:
        for w in self._workers:
            if ready is w.conn or ready == w.process.sentinel:
                return w
        return None

    def _dispatch(self, idle: list[_Worker]) -> None:
        while True:
            with self._lock:
                if not self._pending:
                    return
                if not idle and len(self._workers) >= self._max:
                    return
                task = self._pending.popleft()
                self._starting = task  # neither queued nor on a worker: a fork must still see it
            # Claim: a handle revoked while queued is skipped; otherwise cancel() now reaches us.
            if not task.handle._on_cancel(functools.partial(self._request_cancel, task)):
                self._starting = None
                continue
            if idle:
                worker = idle.pop()
            else:
                try:
                    worker = self._spawn()
                except Exception as exc:  # no fork/spawn possible (fds, memory, a warning as error)
                    task.handle._set_exception(RuntimeError(f"could not start a worker process: {exc!r}"))
                    self._starting = None
                    continue
            worker.task = task
            task.worker = worker
            self._starting = None
            try:
                worker.conn.send_bytes(task.payload)
            except OSError:
                self._lost(worker, idle)
                continue
            task.payload = b""

    def _spawn(self) -> _Worker:
        worker = _Worker(self._ctx)
        self._workers.append(worker)
        return worker

    def _read(self, worker: _Worker, idle: list[_Worker]) -> None:
        if not self._apply_message(worker, idle):
            self._lost(worker, idle)

    def _apply_message(self, worker: _Worker, idle: list[_Worker]) -> bool:
        """Read one message from ``worker`` and apply it; False if its pipe is broken."""
        try:
            kind, seq, body = pickle.loads(worker.conn.recv_bytes())
        except (EOFError, OSError):
            return False
        worker.spoke = True
        task = worker.task
        if task is None or task.seq != seq:
            return True
        h = task.handle
        if kind == _STARTED:
            h._set_started()
            return True
        if kind == _PROGRESS:
            try:
                meta = pickle.loads(body)
            except BaseException as exc:  # a report that cannot be rebuilt here is dropped, not fatal
                LOGGER.warning("a progress report of %r could not be unpickled: %r", h, exc)
                return True
            h._set_progress(meta)
            return True
        if kind == _DONE:
            try:
                value = pickle.loads(body)
            except BaseException as exc:  # even SystemExit from a __reduce__: fail this task only
                h._set_exception(
                    TypeError(f"the result of {h._label} could not be unpickled in the parent: {exc!r}")
                )
            else:
                h._set_result(value)
        elif kind == _CANCELLED:
            h._set_cancelled()
        else:
            h._set_exception(rebuild_failure(body))
        worker.task = None
        task.worker = None
        idle.append(worker)
        return True

    def _lost(self, worker: _Worker, idle: list[_Worker]) -> None:
        """A worker died (or its pipe broke): fail or revoke its task, drop it, reap it."""
        try:
            # What it sent before dying still counts: a finished task keeps its result.
            while worker.task is not None and worker.conn.poll() and self._apply_message(worker, idle):
                pass
        except OSError:
            pass
        worker.process.join(KILL_AFTER)
        if worker.process.is_alive():
            worker.process.kill()
            worker.process.join()
        task = worker.task
        if task is not None:
            if task.timed_out:
                limit = format_seconds(task.handle._time_limit or 0.0)
                task.handle._set_exception(
                    TimeLimitExceeded(
                        f"{task.handle._label} exceeded its time limit of {limit} and was stopped"
                    )
                )
            elif task.cancel_at is not None:  # we terminated it to honour cancel()
                task.handle._set_cancelled()
            else:
                task.handle._set_exception(_crash_error(worker, task, self.start_method))
            task.worker = None
        if worker in idle:
            idle.remove(worker)
        self._workers.remove(worker)
        worker.conn.close()
        worker.process.close()

    def _enforce_deadlines(self, now: float) -> float | None:
        """Terminate, then kill, workers whose cancelled task overran; return the next wait."""
        soonest: float | None = None
        for w in self._workers:
            task = w.task
            if task is None:
                continue
            if task.cancel_at is None:
                limit_at = task.handle._deadline
                if limit_at is None:
                    continue
                if now < limit_at + self._grace:  # checkpoint() gets its chance first
                    soonest = (
                        limit_at + self._grace if soonest is None else min(soonest, limit_at + self._grace)
                    )
                    continue
                task.timed_out = True
                task.cancel_at = now
            if w.kill_at is None and now >= task.cancel_at:
                w.process.terminate()
                w.kill_at = now + KILL_AFTER
            elif w.kill_at is not None and now >= w.kill_at:
                w.process.kill()
                w.kill_at = now + 3600.0  # the sentinel fires next
            due = w.kill_at if w.kill_at is not None else task.cancel_at
            soonest = due if soonest is None else min(soonest, due)
        return None if soonest is None else max(0.0, soonest - now)

    def _stop_workers(self) -> None:
        for w in self._workers:
            try:
                w.conn.send_bytes(b"")
            except OSError:
                pass
        deadline = time.monotonic() + self._stop_grace
        for w in self._workers:
            w.process.join(max(0.0, deadline - time.monotonic()))
            if w.process.is_alive():
                w.process.kill()
                w.process.join()
            task = w.task
            if task is not None:
                task.handle._set_cancelled("the process pool was shut down")
        self._workers.clear()

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
        with self._lock:
            self._closed = True
            # Taken off the queue under the lock, so the manager cannot start one meanwhile: each
            # is revoked as queued work, never as running work.
            pending = list(self._pending) if cancel_futures else []
            if cancel_futures:
                self._pending.clear()
            manager = self._manager
        for task in pending:
            task.handle.cancel()
        if cancel_running:
            for w in list(self._workers):
                running = w.task
                if running is not None:
                    running.handle.cancel()
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
        running = [w.task for w in self._workers if w.task is not None]
        if self._starting is not None:
            running.append(self._starting)
            self._starting = None
        queued = list(self._pending)
        for w in self._workers:
            _close_quietly(w.conn.close)
            if forgotten:
                # Nothing in the child reads its exit status now: close the child's copy. (Were it
                # still listed, a poll of the closed number could read whatever the child opens
                # next under that number.)
                _close_quietly(functools.partial(_close_sentinel, w.process))
        _close_quietly(self._wake_r.close)
        _close_quietly(self._wake_w.close)
        self._workers = []
        self._lock = threading.Lock()  # a thread of the parent may have held it at the fork
        self._pending = collections.deque()
        self._commands = collections.deque()
        self._wake_r, self._wake_w = self._ctx.Pipe(duplex=False)
        self._manager = None
        gone = RuntimeError("the process forked while this work ran; it runs in the parent only")
        for task in running:
            task.handle._fail_in_forked_child(gone)
        lost = RuntimeError("the process forked while this work was queued; it runs in the parent only")
        for task in queued:
            task.handle._fail_in_forked_child(lost)


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


def _unpicklable(fn: object, args: tuple[Any, ...], kwargs: dict[str, Any], exc: Exception) -> TypeError:
    hint = "Pass a module-level function and picklable values, or use run_in_thread()"
    try:
        pickle.dumps(fn)
    except Exception as fn_exc:
        why = _not_importable(fn)
        if why is not None:
            return TypeError(
                f"run_in_process() cannot send the function {fn!r} to a worker process: {why}, and a "
                f"worker imports a function by its module and name. Make it a module-level function "
                f"(def at a module's top level), or use run_in_thread() ({fn_exc})"
            )
        return TypeError(
            f"run_in_process() cannot send the function {fn!r} to a worker process: {fn_exc}. {hint}"
        )
    for index, arg in enumerate(args):
        try:
            pickle.dumps(arg)
        except Exception as arg_exc:
            return TypeError(
                f"run_in_process() cannot send argument {index} ({arg!r}) to a worker process: "
                f"{arg_exc}. {hint}"
            )
    for name, arg in kwargs.items():
        try:
            pickle.dumps(arg)
        except Exception as arg_exc:
            return TypeError(
                f"run_in_process() cannot send argument {name}={arg!r} to a worker process: {arg_exc}. {hint}"
            )
    return TypeError(f"run_in_process() cannot send its call to a worker process: {exc}. {hint}")


def _not_importable(fn: object) -> str | None:
    """Why a worker could never import ``fn`` by name (a lambda, a nested function), or None."""
    qualname = getattr(fn, "__qualname__", None)
    if not isinstance(qualname, str):
        return None
    if "<lambda>" in qualname:
        return "a lambda has no name"
    if "<locals>" in qualname:
        return f"{qualname.rsplit('.', 1)[-1]} is defined inside another function ({qualname})"
    return None


class _MainFinder(pickle.Pickler):
    """Pickles into nothing, noting each object that pickling would look up in ``__main__``."""

    def __init__(self) -> None:
        super().__init__(io.BytesIO())
        self.found: dict[str, None] = {}  # names in order, once each

    def reducer_override(self, obj: Any) -> Any:
        # Functions, classes and instances of those classes say where they come from; so does a
        # task (pickled as a lookup of its module's name, with no reference to a global).
        try:
            module = getattr(obj, "__module__", None)
            name = getattr(obj, "__qualname__", None)
        except Exception:  # a proxy or a broken __getattr__: not ours to judge
            module = name = None
        if isinstance(module, str) and module == "__main__":
            self.found[name if isinstance(name, str) else type(obj).__qualname__] = None
        return NotImplemented  # pickle it as usual


def _refuse_main_objects(call: tuple[Any, ...]) -> None:
    """Refuse a call that needs something defined in a main module that workers do not import
    (``python -c``, an interactive session, a package's ``__main__``): a spawn or forkserver worker
    would fail to unpickle it. Called only when the pickled call mentions ``__main__`` at all."""
    finder = _MainFinder()
    try:
        finder.dump(call)
    except Exception:
        return  # it pickled once already; if not now, let the worker say what it finds
    if not finder.found:
        return  # "__main__" was only a string among the arguments
    names = ", ".join(finder.found)
    raise TypeError(
        f"run_in_process() cannot send {names} to a worker process: {names} is defined in __main__, "
        f"and a worker process cannot import it from there: this program's main module has no file "
        f"(python -c, an interactive session) or is a package's __main__, which workers never "
        f"import. Define it in a module of its own and import it from there, or use run_in_thread()"
    )


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
