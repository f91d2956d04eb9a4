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
"""

from __future__ import annotations

import atexit
import collections
import concurrent.futures as cf
import functools
import math
import multiprocessing
import multiprocessing.connection as mpc
import os
import pickle
import signal
import threading
import time
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from ._errors import RemoteTraceback, TimeLimitExceeded, WorkerCrashed, close_coroutines
from ._process_worker import _CANCELLED, _DONE, _HEADER, _PROGRESS, _STARTED, worker_main
from ._result import LOGGER, Result
from ._signals import block_signals

if TYPE_CHECKING:
    from collections.abc import Callable

P = ParamSpec("P")
T = TypeVar("T")

#: Seconds a cancelled running task gets to stop at a checkpoint() before its worker is terminated.
CANCEL_GRACE = 0.1
#: Seconds between SIGTERM and SIGKILL for a worker that does not exit.
KILL_AFTER = 0.5
#: Seconds interpreter exit waits for workers to finish before killing them.
EXIT_GRACE = 2.0


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
    __slots__ = ("cancel_word", "conn", "kill_at", "pid", "process", "task")

    def __init__(self, ctx: multiprocessing.context.BaseContext) -> None:
        parent_end, child_end = ctx.Pipe(duplex=True)
        self.cancel_word = ctx.RawValue("q", -1)
        self.process = ctx.Process(  # type: ignore[attr-defined]
            target=worker_main, args=(child_end, self.cancel_word), name="asyncbridge-process", daemon=True
        )
        self.process.start()
        child_end.close()
        self.conn = parent_end
        self.pid: int = self.process.pid
        self.task: _Task | None = None
        self.kill_at: float | None = None


def _pick_start_method(start_method: str | None) -> multiprocessing.context.BaseContext:
    available = multiprocessing.get_all_start_methods()
    if start_method is None:
        start_method = "forkserver" if "forkserver" in available else "spawn"
    elif not isinstance(start_method, str) or start_method not in available:
        raise ValueError(f"start_method must be one of {available} on this platform, not {start_method!r}")
    ctx = multiprocessing.get_context(start_method)
    if start_method == "forkserver":
        ctx.set_forkserver_preload(["asyncbridge._process"])
    return ctx


def _crash_error(worker: _Worker, task: _Task) -> WorkerCrashed:
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
    return WorkerCrashed(
        f"worker process {worker.pid} died while running {task.handle._label}: {how}",
        pid=worker.pid,
        exitcode=code,
    )


def _remote_failure(body: bytes) -> BaseException:
    blob, module, qualname, message, text = pickle.loads(body)
    exc: BaseException | None = None
    if blob is not None:
        try:
            exc = pickle.loads(blob)
        except BaseException:  # rebuilding it here failed: fall back to its text
            exc = None
    if exc is None:
        exc = RuntimeError(f"{module}.{qualname}: {message} (the exception could not be sent back as is)")
    exc.__cause__ = RemoteTraceback(text)
    return exc


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
        if (
            isinstance(cancel_grace, bool)
            or not isinstance(cancel_grace, int | float)
            or not cancel_grace >= 0
        ):
            raise ValueError(f"cancel_grace must be a number of seconds >= 0, not {cancel_grace!r}")
        self._grace = float(min(cancel_grace, threading.TIMEOUT_MAX))  # clamp: a huge int is still valid
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

    # -- submitting -------------------------------------------------------------------------------

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Result[T]:
        """Run ``fn(*args, **kwargs)`` in a worker process; return its handle at once.

        Raises:
            TypeError: ``fn`` is not callable, or ``fn`` or an argument cannot be pickled (the message
                names which one).
            RuntimeError: the pool is shut down.
        """
        if not callable(fn):
            close_coroutines(fn)  # type: ignore[unreachable]  # untyped callers do get here
            raise TypeError(f"run_in_process() needs a callable, not {type(fn).__qualname__}")
        try:
            payload = pickle.dumps((fn, args, kwargs))
        except Exception as exc:
            raise _unpicklable(fn, args, kwargs, exc) from exc
        h: Result[T] = Result()
        h._label = f"process {getattr(fn, '__qualname__', type(fn).__qualname__)}()"
        self._enqueue(h, payload)
        return h

    def _enqueue(self, h: Result[Any], payload: bytes) -> None:
        """Queue a pickled ``(fn, args, kwargs)`` for ``h`` (its ``_time_limit`` travels along)."""
        limit = h._time_limit
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
            # Claim: a handle revoked while queued is skipped; otherwise cancel() now reaches us.
            if not task.handle._on_cancel(functools.partial(self._request_cancel, task)):
                continue
            if idle:
                worker = idle.pop()
            else:
                try:
                    worker = self._spawn()
                except Exception as exc:  # no fork/spawn possible (fds, memory, a warning as error)
                    task.handle._set_exception(RuntimeError(f"could not start a worker process: {exc!r}"))
                    continue
            worker.task = task
            task.worker = worker
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
            h._set_exception(_remote_failure(body))
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
                limit = task.handle._time_limit
                task.handle._set_exception(
                    TimeLimitExceeded(
                        f"{task.handle._label} exceeded its time limit of {limit} s and was stopped"
                    )
                )
            elif task.cancel_at is not None:  # we terminated it to honour cancel()
                task.handle._set_cancelled()
            else:
                task.handle._set_exception(_crash_error(worker, task))
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
        deadline = time.monotonic() + EXIT_GRACE
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

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop accepting work. Queued work still runs unless ``cancel_futures`` (then it is revoked);
        running work is asked to stop only with ``cancel_futures``. With ``wait``, return once the
        workers are gone."""
        with self._lock:
            self._closed = True
            pending = list(self._pending) if cancel_futures else []
            manager = self._manager
        for task in pending:
            task.handle.cancel()
        if cancel_futures:
            for w in list(self._workers):
                if w.task is not None:
                    w.task.handle.cancel()
        self._wake()
        if wait and manager is not None and manager is not threading.current_thread():
            manager.join()

    def _after_fork_in_child(self) -> None:
        # The workers and the manager belong to the parent; the child starts afresh on use.
        for w in self._workers:
            try:
                w.conn.close()
            except OSError:
                pass
        self._workers = []
        self._lock = threading.Lock()
        self._pending = collections.deque()
        self._commands = collections.deque()
        self._wake_r, self._wake_w = self._ctx.Pipe(duplex=False)
        self._manager = None


def _unpicklable(fn: object, args: tuple[Any, ...], kwargs: dict[str, Any], exc: Exception) -> TypeError:
    hint = "Pass a module-level function and picklable values, or use run_in_thread()"
    try:
        pickle.dumps(fn)
    except Exception as fn_exc:
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


_POOL: ProcessPool | None = None
_POOL_LOCK = threading.Lock()


def shared_pool() -> ProcessPool:
    global _POOL
    pool = _POOL
    if pool is None:
        with _POOL_LOCK:
            if _POOL is None:
                _POOL = ProcessPool()
            pool = _POOL
    return pool


def _shutdown_shared() -> None:
    if _POOL is not None:
        _POOL.shutdown(wait=True, cancel_futures=True)


def _reset_shared_in_child() -> None:
    global _POOL, _POOL_LOCK
    _POOL_LOCK = threading.Lock()
    if _POOL is not None:
        _POOL._after_fork_in_child()


atexit.register(_shutdown_shared)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_shared_in_child)


def run_in_process(fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Result[T]:
    """Run ``fn(*args, **kwargs)`` in a worker process of the shared pool; return its handle at once.

    ``fn`` and the arguments are pickled here, in the calling thread: anything unpicklable (a lambda,
    a local function, an open file) raises ``TypeError`` at once, naming it. The handle is PENDING until
    a worker really starts the task, then STARTED.

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
