"""Cancel latency: from ``cancel()`` on *running* work to the caller seeing it stopped.

A sample starts one task, waits (untimed) until the work is really running, then times from the
cancel request to the moment the caller is told the work ended: ``h.cancel()`` then ``h.wait()``
returning with the handle REVOKED. The work holds a ``flock`` while it runs (see
:mod:`benchmarks._work`); that is how a sample knows it has started, and, for asyncbridge, a
sample also checks that the lock is free once the handle is REVOKED (REVOKED must mean stopped).

*Process work* (one group, one floor):

- asyncbridge, work that never checks: the terminate path. ``ab.ProcessPool(2)`` with the default
  ``cancel_grace=0.1`` (the work gets 0.1 s to reach a ``checkpoint()`` before SIGTERM) and with
  ``cancel_grace=0`` (SIGTERM at once).
- asyncbridge, work calling ``ab.checkpoint()`` in a loop: the cooperative path, no kill.
- Floor: pebble, the same never-checking work: ``future.cancel()`` then the time until the worker
  process is gone (its lock freed). pebble marks the future cancelled *at once*, while the work
  still runs; its manager thread stops the worker on its next pass (every 0.1 s). That instant
  "done" is reported too, as a row of its own: it is not a stop. Before each pebble cancel the
  sample sleeps a random 0-0.1 s (untimed), else the samples lock onto one phase of pebble's cycle
  and report one arbitrary point of it; after it, the sample waits until pebble has replaced the
  killed worker (its start-up would otherwise load the CPUs under the next sample).
- anyio: ``to_process.run_sync(spin, cancellable=True)`` in a cancel scope; timed from
  ``scope.cancel()`` until the scope exits (anyio SIGKILLs the worker and waits for it). anyio
  starts a new worker interpreter for each sample (untimed). Its worker re-runs the parent's
  ``__main__`` *by path*, which fails for ``python -m benchmarks`` (relative imports), so this row
  hides ``__main__.__file__`` while it runs.

*Thread work*: nothing in the stdlib can stop a running thread, so there is no floor: absolute
medians only (ratio n/a). asyncbridge: ``ab.run_in_thread`` with a ``checkpoint()`` loop; for
reference, the hand-rolled way: a ``ThreadPoolExecutor`` task polling a ``threading.Event``.

POSIX only (``flock``): elsewhere the family has no groups.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextlib
import multiprocessing
import os
import random
import sys
import tempfile
import threading
import time
from typing import TYPE_CHECKING

import asyncbridge as ab

from ._harness import (
    BenchLoop,
    Block,
    Candidate,
    Config,
    Estimate,
    Family,
    Group,
    have,
    perf_counter,
    skipped,
)
from ._work import pause, spin, spin_checkpoint, spin_event
from .process_hop import START_METHOD, WORKERS, warm

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from contextlib import ExitStack

#: Samples per block and rounds, per run size: each sample starts, and may kill, a worker.
SIZES = {"full": (8, 5), "default": (5, 3), "quick": (3, 2)}
#: pebble's manager thread looks for cancelled tasks this often (``pebble.common.CONSTS.sleep_unit``).
PEBBLE_PERIOD = 0.1
#: A sample that waits longer than this for the work to start or stop is a hang.
TIMEOUT = 30.0


class Lock:
    """The parent's view of the file a ``spin*`` work locks while it runs."""

    def __init__(self, directory: str, name: str) -> None:
        self.path = os.path.join(directory, name)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)

    def close(self) -> None:
        os.close(self._fd)

    def held(self) -> bool:
        """True if some work holds the lock now."""
        import fcntl

        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        return False

    def wait_held(self) -> None:
        """Return once the work is running (it holds the lock)."""
        deadline = time.monotonic() + TIMEOUT
        while not self.held():
            if time.monotonic() > deadline:
                raise TimeoutError(f"the work did not start within {TIMEOUT} s")
            time.sleep(0.0005)

    def wait_free(self) -> None:
        """Return once the work has stopped (the lock is free)."""
        deadline = time.monotonic() + TIMEOUT
        while self.held():
            if time.monotonic() > deadline:
                raise TimeoutError(f"the work did not stop within {TIMEOUT} s")
            time.sleep(0.0002)

    async def wait_held_async(self) -> None:
        deadline = time.monotonic() + TIMEOUT
        while not self.held():
            if time.monotonic() > deadline:
                raise TimeoutError(f"the work did not start within {TIMEOUT} s")
            await asyncio.sleep(0.0005)


def ab_block(submit: Callable[[str], ab.Result[None]], lock: Lock) -> Block:
    """``h.cancel()`` -> ``h.wait()`` on running work, each singly timed; REVOKED is checked."""

    def block(n: int) -> list[float]:
        out = [0.0] * n
        for i in range(n):
            h = submit(lock.path)
            lock.wait_held()
            t0 = perf_counter()
            h.cancel()
            finished = h.wait(TIMEOUT)
            out[i] = perf_counter() - t0
            if not finished or h.state != ab.State.REVOKED:
                raise RuntimeError(f"expected REVOKED after cancel(), got {h.state}")
            if lock.held():
                raise RuntimeError("the handle was REVOKED while the work still held its lock")
        return out

    return block


def _process_group(cfg: Config, stack: ExitStack, locks: Callable[[str], Lock]) -> Group:
    ops, rounds = cfg.pick(SIZES)
    ctx = multiprocessing.get_context(START_METHOD)

    def pool(grace: float) -> ab.ProcessPool:
        p = ab.ProcessPool(WORKERS, start_method=START_METHOD, cancel_grace=grace)
        stack.callback(p.shutdown)
        warm(lambda: p.submit(pause, 0.05))
        return p

    # One pool per row: the terminate rows keep replacing workers, and a fresh worker's first task
    # runs cold (copy-on-write faults), which is no part of the cooperative path.
    default, eager, coop = pool(0.1), pool(0.0), pool(0.1)
    floor = "pebble: future.cancel() -> worker gone"
    candidates = [
        Candidate(
            f"ab.ProcessPool({WORKERS}), work never checks",
            ab_block(lambda path: default.submit(spin, path), locks("ab-default")),
            "asyncbridge",
            note="default cancel_grace=0.1: terminate after 0.1 s",
        ),
        Candidate(
            f"ab.ProcessPool({WORKERS}, cancel_grace=0), work never checks",
            ab_block(lambda path: eager.submit(spin, path), locks("ab-eager")),
            "asyncbridge",
            note="terminate at once",
        ),
        Candidate(
            f"ab.ProcessPool({WORKERS}), work calls ab.checkpoint()",
            ab_block(lambda path: coop.submit(spin_checkpoint, path), locks("ab-checkpoint")),
            "asyncbridge",
            note="checkpoint() raises; the worker lives on",
        ),
    ]

    if have("pebble"):
        import pebble

        pp = pebble.ProcessPool(max_workers=WORKERS, context=ctx)
        stack.callback(pp.join)
        stack.callback(pp.close)
        warm(lambda: pp.schedule(pause, args=(0.05,)))
        gone, marked = locks("pebble-gone"), locks("pebble-done")
        phase = random.Random(5)

        def settle() -> None:
            """Wait until pebble has replaced the killed worker: the new one's start-up would
            otherwise compete for the CPUs with whatever runs next."""
            deadline = time.monotonic() + TIMEOUT
            while (
                len({f.result(TIMEOUT) for f in [pp.schedule(pause, args=(0.02,)) for _ in range(WORKERS)]})
                < WORKERS
            ):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"pebble did not replace its worker within {TIMEOUT} s")

        def pebble_block(lock: Lock, until_gone: bool) -> Block:
            def block(n: int) -> list[float]:
                out = [0.0] * n
                for i in range(n):
                    f: cf.Future[None] = pp.schedule(spin, args=(lock.path,))  # pebble's cancel is untyped
                    lock.wait_held()
                    time.sleep(phase.uniform(0.0, PEBBLE_PERIOD))  # spread over pebble's cycle
                    t0 = perf_counter()
                    f.cancel()
                    if until_gone:
                        lock.wait_free()
                    elif not f.done():
                        raise RuntimeError("pebble's future is not done after cancel()")
                    out[i] = perf_counter() - t0
                    lock.wait_free()  # untimed for the "done" row: let the worker go first
                    settle()
                return out

            return block

        candidates.insert(0, Candidate(floor, pebble_block(gone, True), "floor", note="the work has stopped"))
        candidates.append(
            Candidate(
                "pebble: future.cancel() -> future.done()",
                pebble_block(marked, False),
                note="done at once, while the work still runs",
            )
        )
    else:
        candidates.insert(0, Candidate(floor, None, "floor", skip="pebble is not installed"))
        candidates.append(skipped("pebble: future.cancel() -> future.done()", "pebble"))

    name = "anyio to_process.run_sync(cancellable=True)"
    if have("anyio"):
        bench = stack.enter_context(BenchLoop("bench-anyio-loop"))
        candidates.append(
            Candidate(
                name,
                bench.block(lambda n: _anyio_samples(n, locks("anyio"))),
                note="scope.cancel() -> scope exits; SIGKILL",
            )
        )
    else:
        candidates.append(skipped(name, "anyio"))

    return Group(
        title="cancel a running process task: cancel() -> the caller sees it stopped",
        kind="latency",
        floor=floor,
        candidates=candidates,
        ops=ops,
        rounds=rounds,
        note="median of single cancels; the work spins on the CPU",
    )


@contextlib.contextmanager
def _main_file_hidden() -> Iterator[None]:
    """anyio's worker runs the parent's ``__main__`` file by path when there is one: hide it."""
    main = sys.modules["__main__"]
    saved = main.__dict__.pop("__file__", None)
    try:
        yield
    finally:
        if saved is not None:
            main.__file__ = saved


async def _anyio_samples(n: int, lock: Lock) -> list[float]:
    import anyio
    import anyio.to_process

    out = [0.0] * n
    with _main_file_hidden():
        for i in range(n):
            scope = anyio.CancelScope()
            stopped = anyio.Event()

            async def run(scope: anyio.CancelScope = scope, stopped: anyio.Event = stopped) -> None:
                with scope:
                    await anyio.to_process.run_sync(spin, lock.path, cancellable=True)
                stopped.set()

            async with anyio.create_task_group() as tg:
                tg.start_soon(run)
                await lock.wait_held_async()
                t0 = perf_counter()
                scope.cancel()
                with anyio.fail_after(TIMEOUT):
                    await stopped.wait()
                out[i] = perf_counter() - t0
            if lock.held():
                raise RuntimeError("anyio's scope exited while the work still held its lock")
    return out


def _thread_group(cfg: Config, stack: ExitStack, locks: Callable[[str], Lock]) -> Group:
    latency_ops = max(cfg.latency_ops // 20, 10)
    executor = cf.ThreadPoolExecutor(1, thread_name_prefix="bench-event")
    stack.callback(executor.shutdown)
    lock = locks("event")

    def event_block(n: int) -> list[float]:
        out = [0.0] * n
        for i in range(n):
            stop = threading.Event()
            f = executor.submit(spin_event, lock.path, stop)
            lock.wait_held()
            t0 = perf_counter()
            stop.set()
            f.result(TIMEOUT)
            out[i] = perf_counter() - t0
        return out

    return Group(
        title="cancel a running thread task that calls checkpoint(): cancel() -> REVOKED",
        kind="latency",
        floor="",
        candidates=[
            Candidate(
                "ab.run_in_thread, work calls ab.checkpoint()",
                ab_block(lambda path: ab.run_in_thread(spin_checkpoint, path), locks("thread")),
                "asyncbridge",
            ),
            Candidate(
                "ThreadPoolExecutor, work polls a threading.Event",
                event_block,
                "stdlib",
                note="hand-rolled, for reference: event.set() -> result()",
            ),
        ],
        ops=latency_ops,
        rounds=max(cfg.rounds // 8, 3),
        note="no stdlib floor: nothing in the stdlib stops a running thread; absolute times",
    )


def build(cfg: Config, stack: ExitStack) -> list[Group]:
    if not have("fcntl"):  # the samples see work start and stop through flock (POSIX)
        return []
    directory = stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-cancel-"))

    def locks(name: str) -> Lock:
        lock = Lock(directory, name)
        stack.callback(lock.close)
        return lock

    return [_process_group(cfg, stack, locks), _thread_group(cfg, stack, locks)]


FAMILY = Family(
    "cancel-latency",
    "Cancel latency",
    build,
    estimate=Estimate(groups=2, seconds={"quick": 7, "default": 13, "full": 27}),
)
