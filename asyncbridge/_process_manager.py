"""The manager thread of a process pool: it hands tasks out, reads the workers' answers, and acts on
cancels, time limits, crashes and stuck workers (``ProcessPool`` is built on :class:`_Manager`).

One thread (``asyncbridge-process``) per pool waits, in one ``poll``, on its wake-up pipe, every
worker's pipe and every worker's exit sentinel. Each time it wakes it reads every pipe that is ready
(all the frames that have come, in one read each) and applies their records, then hands out queued
tasks: one to each idle worker first (starting workers on demand, up to ``max_workers``), then more
into the windows of workers that are moving (``_process_slots``), so that each message to a worker
carries as many tasks as are ready for it. A submit wakes the thread only if it is not already due
to wake: a burst of submits costs one wake-up.

The bookkeeping (the queue, the windows, each task's state) changes under the pool's lock; a
handle is moved (started, progress, ended) outside it, in the order the records came, because a
move runs callbacks, and a callback may submit or cancel.

What happens to the tasks of a worker that dies: the one it ran (its STARTED came, its end did not)
fails with :class:`WorkerCrashed` (or ends as its cancel or time limit asked); the tasks behind it
in its window never started (the worker writes STARTED before it runs anything of a task, and its
last writes are read before its death is handled), so they go back to the front of the queue, or
end REVOKED if they were cancelled or the pool dropped its queue. A worker that dies before its
first message (while it starts) fails the first task of its window, as if it had run it: a worker
that cannot start must not take the queue down with it one replacement at a time.
"""

from __future__ import annotations

import contextlib
import functools
import os
import pickle
import select
import threading
import time
from typing import TYPE_CHECKING, Any

from ._errors import TimeLimitExceeded, format_seconds
from ._process_slots import OVER, QUEUED, RUNNING, SENT, _crash_error, _Skip, _Task, _Worker
from ._process_worker import CANCELLED, CLAIMED, DONE, PROGRESS, RECORD, SKIPPED, STARTED
from ._remote import rebuild_failure
from ._result import LOGGER
from ._signals import block_signals

if TYPE_CHECKING:
    import collections
    import multiprocessing.context

#: Seconds between SIGTERM and SIGKILL for a worker that does not exit.
KILL_AFTER = 0.5
#: The manager wakes at least this often (seconds): a deadline further away is waited for in steps.
_LONGEST_WAIT = 3600.0
#: Seconds before trying again a claim lock found busy (a worker claiming its next task).
_RETRY = 0.001

_IN = select.POLLIN | select.POLLPRI | select.POLLHUP | select.POLLERR
_Move = tuple[int, _Task, Any]


class _Manager:
    """The manager thread's side of ``ProcessPool``: all of it runs in that thread, but
    :meth:`_request_cancel` (any thread: a handle's cancel hook) and :meth:`_revoke_windows`."""

    _lock: threading.Lock
    _pending: collections.deque[_Task]
    _starting: list[_Task]  # taken from the queue, on their way to a window (a fork must see them)
    _commands: list[_Task]  # cancels to act on
    _retry: list[_Task]  # cancels that found a claim lock busy (manager only)
    _workers: list[_Worker]
    _by_fd: dict[int, tuple[_Worker, bool]]  # a pipe (True) or an exit sentinel (False)
    _poller: Any
    _closed: bool
    _drop_queued: bool  # shut down with cancel_futures: queued tasks are revoked, wherever they wait
    _manager: threading.Thread | None
    _wake_r: int
    _wake_w: int
    _wake_due: bool  # a wake-up is written and not yet read: submits need not write another
    _max: int
    _grace: float
    _stop_grace: float
    _stall: float  # STALL (a test may wait longer)
    _ctx: multiprocessing.context.BaseContext
    start_method: str

    # -- from any thread --------------------------------------------------------------------------

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # a full pipe wakes the manager anyway; closed: shut down
            os.write(self._wake_w, b"\0")

    def _request_cancel(self, task: _Task) -> None:
        """A task's cancel hook: revoke it if it has not started, else ask its worker to stop it."""
        revoked = False
        with self._lock:
            if task.state == QUEUED:  # in the queue or on its way to a worker: it will be dropped
                task.state = OVER
                revoked = True
            elif task.state == SENT and task.worker is not None:
                worker = task.worker
                outcome = worker.revoke(task)
                if outcome:
                    revoked = True
                else:
                    if outcome is False:  # claimed: it starts now (STARTED sets its grace)
                        worker.stop_word(task.seq)
                    self._commands.append(task)
            elif task.state == RUNNING and task.worker is not None:
                task.worker.stop_word(task.seq)  # its next checkpoint() raises
                self._commands.append(task)
        if revoked:
            task.handle._set_cancelled()
        else:
            self._wake()

    def _revoke_windows(self) -> tuple[list[_Task], list[_Task], bool]:
        """Under the lock: revoke every task waiting in a window. Returns those revoked (their
        handles to end), those the workers have claimed meanwhile (they run), and whether a busy
        claim lock left some to try again."""
        revoked: list[_Task] = []
        claimed: list[_Task] = []
        busy = False
        for w in self._workers:
            for entry in list(w.window):
                if isinstance(entry, _Task) and entry.state == SENT:
                    outcome = w.revoke(entry)
                    if outcome is None:
                        busy = True
                    elif outcome:
                        revoked.append(entry)
                    else:
                        claimed.append(entry)
        return revoked, claimed, busy

    # -- the manager thread -----------------------------------------------------------------------

    def _manage(self) -> None:
        block_signals()  # it runs no user code: Ctrl-C is the main thread's
        self._poller = select.poll()
        self._by_fd = {}
        self._retry = []
        self._poller.register(self._wake_r, select.POLLIN)
        timeout: float | None = 0.0
        try:
            while True:
                self._wait(timeout)
                with self._lock:
                    self._wake_due = False
                    closed = self._closed
                    cancels, self._commands = self._commands, []
                now = time.monotonic()
                if cancels or self._retry:
                    self._act_on_cancels(cancels, now)
                soonest = self._take_back_stuck(now)
                if self._drop_queued and self._drop_queued_tasks():
                    soonest = _sooner(soonest, _RETRY)
                self._dispatch(now)
                if closed and not self._pending and not any(w.window for w in self._workers):
                    break
                timeout = _sooner(soonest, self._enforce_deadlines(now))
                if self._retry:
                    timeout = _sooner(timeout, _RETRY)
        except BaseException as exc:
            self._recover(exc)
            return
        self._stop_workers()  # shut down: the normal way out

    def _wait(self, timeout: float | None) -> None:
        """Wait for something to happen; read every pipe that is ready, then handle every worker
        that exited (after its pipe: what it wrote before it died counts)."""
        if timeout is not None:
            # poll() takes milliseconds in a C int: a time limit of weeks would overflow it
            timeout = min(timeout, _LONGEST_WAIT) * 1000.0
        dead: list[_Worker] = []
        for fd, _events in self._poller.poll(timeout):
            if fd == self._wake_r:
                with contextlib.suppress(OSError):
                    while os.read(fd, 4096):
                        pass
                continue
            found = self._by_fd.get(fd)
            if found is None:
                continue
            worker, is_pipe = found
            if is_pipe:
                self._read(worker)
            else:
                dead.append(worker)
        for worker in dead:
            if worker in self._workers:
                self._lost(worker)

    def _recover(self, exc: BaseException) -> None:
        """The manager failed (a bug): never strand a handle. Its workers go; the tasks they ran, or
        may have run, fail saying why; tasks no worker claimed stay queued for a fresh manager,
        started here."""
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
        failed: list[_Task] = []
        revoked: list[_Task] = []
        with self._lock:
            back: list[_Task] = [t for t in self._starting if t.state == QUEUED]
            self._starting = []
            for w in workers:
                claimed = w.shared[CLAIMED]
                for entry in w.window:
                    if not isinstance(entry, _Task) or entry.state not in (SENT, RUNNING):
                        continue
                    entry.worker = None
                    if entry.state == RUNNING or entry.pos < claimed:
                        entry.state = OVER
                        failed.append(entry)
                    elif entry.handle._cancel_requested:
                        entry.state = OVER
                        revoked.append(entry)
                    else:
                        entry.state = QUEUED
                        back.append(entry)
                w.window.clear()
            self._pending.extendleft(reversed(back))
            self._workers = []
            self._manager = None
            restart = bool(self._pending) and not self._closed
            if restart:
                self._manager = threading.Thread(target=self._manage, name="asyncbridge-process", daemon=True)
                self._manager.start()
        for task in failed:
            task.handle._set_exception(broken)
        for task in revoked:
            task.handle._set_cancelled()

    def _act_on_cancels(self, cancels: list[_Task], now: float) -> None:
        revoked: list[_Task] = []
        todo, self._retry = self._retry + cancels, []
        with self._lock:
            for task in todo:
                worker = task.worker
                if worker is None:
                    continue
                if task.state == RUNNING:
                    if task.cancel_at is None:
                        worker.stop_word(task.seq)
                        task.cancel_at = now + self._grace
                elif task.state == SENT:
                    outcome = worker.revoke(task)
                    if outcome is None:
                        self._retry.append(task)
                    elif outcome:
                        revoked.append(task)
                    else:
                        worker.stop_word(task.seq)
        for task in revoked:
            task.handle._set_cancelled()

    def _drop_queued_tasks(self) -> bool:
        """Shut down with cancel_futures: revoke what is queued (again: tasks on their way to a
        worker at the shutdown, tasks taken back, claim locks that were busy)."""
        with self._lock:
            revoked, _claimed, busy = self._revoke_windows()
            for task in self._pending:
                if task.state == QUEUED:
                    task.state = OVER
                    revoked.append(task)
            self._pending.clear()
        for task in revoked:
            task.handle._set_cancelled()
        return busy  # a claim lock was busy: try again soon

    def _take_back_stuck(self, now: float) -> float | None:
        """Take back the tasks queued behind a worker that has not moved for ``_stall`` seconds (a long
        task, or a slow start), so that other workers run them; return when to look again."""
        soonest: float | None = None
        for w in self._workers:
            if len(w.window) < 2 and (not w.window or w.task is not None):
                continue  # nothing queued behind what it runs
            due = w.moved_at + self._stall
            if now < due:
                soonest = _sooner(soonest, due - now)
                continue
            with self._lock:
                if not w.unclaimed():
                    continue
                taken = w.take_back()
                if taken is None:
                    soonest = _sooner(soonest, _RETRY)
                    continue
                self._pending.extendleft(reversed(taken))
        return soonest

    def _dispatch(self, now: float) -> None:
        with self._lock:
            pending = self._pending
            while pending and pending[0].state != QUEUED:
                pending.popleft()  # revoked while queued
        while self._pending and not any(not w.window and w.kill_at is None for w in self._workers):
            if len(self._workers) >= self._max:
                break
            try:
                self._spawn()
            except Exception as exc:  # no fork/spawn possible (fds, memory, a warning as error)
                with self._lock:
                    task = self._pending.popleft() if self._pending else None
                    if task is not None and task.state == QUEUED:
                        task.state = OVER
                    else:
                        task = None
                if task is not None:
                    task.handle._set_exception(RuntimeError(f"could not start a worker process: {exc!r}"))
                return
        if not self._pending:
            return
        with self._lock:
            plan = self._plan(now)
        if not plan:
            return
        for batch in plan.values():
            for task in batch:
                # Claim: a handle revoked while queued is dropped; from now on, cancel() reaches us.
                if not task.hooked:
                    task.hooked = True
                    if not task.handle._on_cancel(functools.partial(self._request_cancel, task)):
                        task.state = OVER
        sends: list[tuple[_Worker, bytes]] = []
        dropped: list[_Task] = []
        with self._lock:
            for worker, batch in plan.items():
                ready = [t for t in batch if t.state == QUEUED]
                if self._drop_queued:  # shut down with cancel_futures meanwhile
                    for task in ready:
                        task.state = OVER
                    dropped += ready
                elif ready:
                    sends.append((worker, worker.enlist(ready)))
            self._starting = []
        for task in dropped:
            task.handle._set_cancelled()
        for worker, message in sends:
            try:
                worker.conn.send_bytes(message)
            except OSError:
                if worker in self._workers:
                    self._lost(worker)

    def _plan(self, now: float) -> dict[_Worker, list[_Task]]:
        """Under the lock: take queued tasks for the workers that can take them, the least loaded
        first, and move them to ``_starting``."""
        plan: dict[_Worker, list[_Task]] = {}
        takers = [w for w in self._workers if w.kill_at is None]
        load = {w: len(w.window) for w in takers}
        extra = dict.fromkeys(takers, 0)
        pending = self._pending
        starting = self._starting
        stall = self._stall
        while pending and takers:
            task = pending[0]
            if task.state != QUEUED:
                pending.popleft()
                continue
            best: _Worker | None = None
            for w in takers:
                if best is not None and load[w] >= load[best]:
                    continue
                if w.can_take(task.size, now, load[w], extra[w], stall):
                    best = w
            if best is None:
                break
            starting.append(task)  # first: at every instant the task is in one place or both
            pending.popleft()
            plan.setdefault(best, []).append(task)
            load[best] += 1
            extra[best] += task.size
        return plan

    def _spawn(self) -> _Worker:
        worker = _Worker(self._ctx)
        with self._lock:
            self._workers.append(worker)
        self._by_fd[worker.fd] = (worker, True)
        self._by_fd[worker.process.sentinel] = (worker, False)
        self._poller.register(worker.fd, _IN)
        self._poller.register(worker.process.sentinel, _IN)
        return worker

    def _read(self, worker: _Worker) -> None:
        """Read what ``worker`` sent and apply it; a broken pipe is a lost worker."""
        try:
            frames = worker.read()
        except OSError:
            frames = None
        if frames is None:
            self._lost(worker)
        elif frames:
            self._apply(worker, frames)

    def _apply(self, worker: _Worker, frames: list[memoryview]) -> None:
        """Apply the records of ``frames``: the bookkeeping under the lock, then the handles' moves in
        the order the records came."""
        moves: list[_Move] = []
        now = time.monotonic()
        with self._lock:
            for frame in frames:
                self._account(worker, frame, now, moves)
        for kind, task, body in moves:
            self._move(kind, task, body)

    def _account(self, worker: _Worker, frame: memoryview, now: float, moves: list[_Move]) -> None:
        window = worker.window
        offset = 0
        while offset < len(frame):
            kind, seq, size = RECORD.unpack_from(frame, offset)
            offset += RECORD.size
            body = frame[offset : offset + size]
            offset += size
            entry = window[0] if window else None
            if not isinstance(entry, _Task) or entry.seq != seq:
                if kind != PROGRESS and kind != STARTED and isinstance(entry, _Skip):
                    worker.pop()  # the answer to a task revoked or taken back there
                    worker.moved_at = now
                continue  # (a progress report from a thread that outlived its task)
            if kind == PROGRESS:
                if entry.state == RUNNING:
                    moves.append((kind, entry, body))
                continue
            worker.moved_at = now
            if kind == STARTED:
                if entry.state == SENT:
                    entry.state = RUNNING
                    entry.payload = b""
                    worker.task = entry
                    if entry.handle._cancel_requested and entry.cancel_at is None:
                        worker.stop_word(seq)  # cancelled on its way: it gets its grace from now
                        entry.cancel_at = now + self._grace
                    moves.append((kind, entry, None))
                continue
            worker.pop()
            if worker.task is entry:
                worker.task = None
            entry.worker = None
            if kind == SKIPPED:  # not revoked here (cannot happen): send it again
                entry.state = QUEUED
                self._pending.appendleft(entry)
                continue
            entry.state = OVER
            moves.append((kind, entry, body))

    def _move(self, kind: int, task: _Task, body: Any) -> None:
        h = task.handle
        if kind == STARTED:
            h._set_started()
        elif kind == PROGRESS:
            try:
                meta = pickle.loads(body)
            except BaseException as exc:  # a report that cannot be rebuilt here is dropped, not fatal
                LOGGER.warning("a progress report of %r could not be unpickled: %r", h, exc)
                return
            h._set_progress(meta)
        elif kind == DONE:
            try:
                value = pickle.loads(body)
            except BaseException as exc:  # even SystemExit from a __reduce__: fail this task only
                h._set_exception(
                    TypeError(f"the result of {h._label} could not be unpickled in the parent: {exc!r}")
                )
            else:
                h._set_result(value)
        elif kind == CANCELLED:
            h._set_cancelled()
        else:
            h._set_exception(rebuild_failure(bytes(body)))

    def _lost(self, worker: _Worker) -> None:
        """A worker died (or its pipe broke): end or requeue its tasks, drop it, reap it."""
        poller = select.poll()
        try:
            # What it sent before dying still counts: a finished task keeps its result.
            poller.register(worker.fd, select.POLLIN)
            while poller.poll(0):
                frames = worker.read()
                if frames is None:
                    break
                self._apply(worker, frames)
        except (OSError, ValueError):
            pass
        worker.process.join(KILL_AFTER)
        if worker.process.is_alive():
            worker.process.kill()
            worker.process.join()
        for fd in (worker.fd, worker.process.sentinel):
            self._by_fd.pop(fd, None)
            with contextlib.suppress(KeyError, ValueError):
                self._poller.unregister(fd)
        running: _Task | None = None
        failed: _Task | None = None
        revoked: list[_Task] = []
        with self._lock:
            back: list[_Task] = []
            for entry in worker.window:
                if not isinstance(entry, _Task) or entry.state not in (SENT, RUNNING):
                    continue
                entry.worker = None
                if entry.state == RUNNING:
                    running = entry
                    entry.state = OVER
                elif failed is None and running is None and not worker.spoke:
                    failed = entry  # it died while starting, before it could run this one
                    entry.state = OVER
                elif entry.handle._cancel_requested or self._drop_queued:
                    entry.state = OVER
                    revoked.append(entry)
                else:
                    entry.state = QUEUED
                    back.append(entry)
            worker.window.clear()
            worker.task = None
            self._pending.extendleft(reversed(back))
            if worker in self._workers:
                self._workers.remove(worker)
        if running is not None:
            h = running.handle
            if running.timed_out:
                limit = format_seconds(h._time_limit or 0.0)
                h._set_exception(
                    TimeLimitExceeded(f"{h._label} exceeded its time limit of {limit} and was stopped")
                )
            elif running.cancel_at is not None:  # we terminated it to honour cancel()
                h._set_cancelled()
            else:
                h._set_exception(_crash_error(worker, running, self.start_method))
        if failed is not None:
            failed.handle._set_exception(_crash_error(worker, failed, self.start_method))
        for task in revoked:
            task.handle._set_cancelled()
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
                    soonest = _sooner(soonest, limit_at + self._grace - now)
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
            soonest = _sooner(soonest, max(0.0, due - now))
        return soonest

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


def _sooner(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)
