"""Lifecycle and fault stress, issue #4: loops closed, executors shut down, Ctrl-C, fork, interpreter
exit and the deadlock guard, for every kind of work that exists (coroutines through ``spawn``/``wrap``,
asyncio tasks, ``concurrent.futures`` futures, ``run_in_thread``).

Every wait is ordered by an event, a barrier, a pipe or a line a child process prints; the timeouts are
hang guards only (they fire on a bug, never decide an outcome). The only timed assertions are the
issue's own bounds (terminal within 5 s, exit within 10 s, Ctrl-C surfaces within 0.5 s). Each test
prints the counts it ran; ``ASYNCBRIDGE_SOAK=1`` multiplies them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import gc
import os
import subprocess
import sys
import textwrap
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped, unused-ignore]
import pytest
import trio
from children import BLOCKED_IN_GET_SEAM, Child, fork_child, sigint_each_ready  # type: ignore[import-not-found, unused-ignore]
from conftest import SOAK  # type: ignore[import-not-found, unused-ignore]  # found when mypy runs on tests/
from oracle import Arrivals, await_handle, settled  # type: ignore[import-not-found, unused-ignore]

import asyncbridge as ab

pytestmark = pytest.mark.stress

S = ab.State
HANG = 10.0  # a hang guard only
TERMINAL_WITHIN = 5.0  # the bound: every handle terminal within 5 s
EXIT_WITHIN = 10.0  # the bound: a child exits within 10 s
SIGINT_WITHIN = 0.5  # the bound: Ctrl-C surfaces within 0.5 s
MAX_WORKERS = min(32, (os.cpu_count() or 1) + 4)  # run_in_thread's documented bound

LOOP_ROUNDS = 100 * SOAK  # loops per scenario; PER_LOOP handles each: 1,000 handles per scenario
PER_LOOP = 10
EXECUTOR_ROUNDS = 200 * SOAK
SIGINT_ITERATIONS = 50 * SOAK
FORK_ITERATIONS = 20 * SOAK
DEADLOCK_ITERATIONS = 100 * SOAK


# -- helpers ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def module_leaks() -> Iterator[None]:
    """Around the module: no child process left, file descriptors back to their baseline."""
    ab.spawn(asyncio.sleep(0)).get(HANG)  # the library's loop and pool exist before the baseline
    ab.run_in_thread(int).get(HANG)
    me = psutil.Process()
    gc.collect()
    fds = me.num_fds()
    # Servers, workers and pools of earlier modules (a session's Celery worker, Redis, the shared
    # process pool) are the baseline; this module must add none.
    before = {p.pid for p in me.children(recursive=True)}
    yield
    gc.collect()
    left = [p for p in me.children(recursive=True) if p.pid not in before]
    assert left == [], "child processes left behind"
    assert me.num_fds() == fds, f"file descriptors: {fds} before the module, {me.num_fds()} after"


class Callbacks:
    """Counts done-callback calls per handle; waits (hang guard) until each ran."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.calls: Counter[int] = Counter()
        self.added = 0

    def add(self, h: ab.Result[Any]) -> None:
        self.added += 1
        h.add_done_callback(self._called)

    def _called(self, h: ab.Result[Any]) -> None:
        with self._cond:
            self.calls[id(h)] += 1
            self._cond.notify_all()

    def check(self, handles: list[ab.Result[Any]]) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: sum(self.calls.values()) >= self.added, HANG)
        assert all(self.calls[id(h)] == 1 for h in handles), "a callback did not run exactly once"


async def forever() -> None:
    await asyncio.Event().wait()


async def until(gate: cf.Future[Any]) -> Any:
    """A coroutine that waits for a cf.Future another thread completes."""
    return await asyncio.wrap_future(gate)


def cooperative(release: threading.Event, value: object) -> object:
    """Thread work that waits for ``release``, then checks for cancellation once."""
    assert release.wait(HANG)
    ab.checkpoint()
    return value


# -- 1. loops closed or stopped while work is pending -----------------------------------------------


async def returns_on_cancel(started: list[int], i: int) -> int:
    started.append(i)
    try:
        await forever()
    except asyncio.CancelledError:
        return i  # ignores the request: a produced result is never thrown away
    return -1


async def make_coroutine_work(
    made: list[tuple[str, int, ab.Result[Any]]], started: list[int], cbs: Callbacks, take_a_step: bool
) -> None:
    loop = asyncio.get_running_loop()
    for i in range(PER_LOOP):
        kind = ("spawn", "wrap-coroutine", "wrap-task", "returns-on-cancel")[i % 4]
        h: ab.Result[Any]
        if kind == "spawn":
            h = ab.spawn(forever())
        elif kind == "wrap-coroutine":
            h = ab.wrap(forever())
        elif kind == "wrap-task":
            h = ab.wrap(loop.create_task(forever()))
        else:
            h = ab.spawn(returns_on_cancel(started, i))
        cbs.add(h)
        made.append((kind, i, h))
    if take_a_step:
        await asyncio.sleep(0)  # every task takes its first step before the end


def test_work_loop_closed_by_asyncio_run(quiet: None) -> None:
    """``asyncio.run`` ends with spawned/wrapped coroutines and tasks pending: each ends REVOKED (or
    SUCCESS when the coroutine returns a value on cancel), every callback runs once."""
    seen: Counter[str] = Counter()
    cbs = Callbacks()
    everything: list[ab.Result[Any]] = []
    for r in range(LOOP_ROUNDS):
        made: list[tuple[str, int, ab.Result[Any]]] = []
        started: list[int] = []
        asyncio.run(make_coroutine_work(made, started, cbs, take_a_step=r % 2 == 1))
        for kind, i, h in made:
            st, got = settled(h)
            if kind == "returns-on-cancel" and i in started:
                assert (st, got) == (S.SUCCESS, i)
            else:
                assert st is S.REVOKED, (kind, st, got)
            seen[f"{kind} {st}"] += 1
            everything.append(h)
    cbs.check(everything)
    print(f"\nwork loop closed by asyncio.run: {len(everything)} handles, {LOOP_ROUNDS} loops: {dict(seen)}")


async def make_abandoned_work(made: list[tuple[bool, ab.Result[Any]]], cancel_first: bool) -> None:
    for i in range(PER_LOOP):
        loop = asyncio.get_running_loop()
        h = ab.spawn(forever()) if i % 2 else ab.wrap(loop.create_task(forever()))
        made.append((cancel_first, h))
    await asyncio.sleep(0)


def outcome_on_closed_loop(cancel_first: bool, h: ab.Result[Any]) -> str:
    if cancel_first:
        h.cancel()
    try:
        h.get(timeout=TERMINAL_WITHIN)
    except TimeoutError:
        return f"hang: {h!r}"
    except cf.CancelledError:
        return f"CancelledError {h.state}"
    except RuntimeError as exc:
        return f"RuntimeError {h.state} {'closed' in str(exc)}"
    return f"value {h.state}"


def test_work_loop_closed_by_hand() -> None:
    """A loop closed by hand (no ``asyncio.run``: its tasks are never cancelled) with work pending: the
    handle does not hang; get() ends with an error saying the loop was closed (GUIDE 1.5 rule 6), or,
    after a cancel() that can no longer reach the loop, the handle is REVOKED."""
    made: list[tuple[bool, ab.Result[Any]]] = []
    for r in range(LOOP_ROUNDS):
        loop = asyncio.new_event_loop()
        loop.run_until_complete(make_abandoned_work(made, cancel_first=r % 2 == 1))
        for t in asyncio.all_tasks(loop):
            t._log_destroy_pending = False  # type: ignore[attr-defined]  # asyncio's own complaint
        loop.close()
    # each get() may take a while to notice the closed loop: many at a time
    with cf.ThreadPoolExecutor(100, thread_name_prefix="lifecycle") as ex:
        seen = Counter(ex.map(outcome_on_closed_loop, *zip(*made, strict=True)))
    print(f"\nwork loop closed by hand: {len(made)} handles on {LOOP_ROUNDS} loops: {dict(seen)}")
    assert set(seen) <= {"CancelledError REVOKED", "RuntimeError FAILURE True"}, seen


class Outcomes:
    """Done-callbacks record (state, info) here; :meth:`wait` (hang guard) until ``n`` arrived."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.got: list[tuple[S, object]] = []

    def __call__(self, h: ab.Result[Any]) -> None:
        with self._cond:
            self.got.append((h.state, h.info))
            self._cond.notify_all()

    def wait(self, n: int) -> list[tuple[S, object]]:
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.got) >= n, HANG), self.got
            return list(self.got)


def spawn_and_drop(n: int, outcomes: Outcomes) -> list[weakref.ref[ab.Result[Any]]]:
    """Spawn ``n`` coroutines parked on an event only they can reach; keep weak references only."""
    refs = []
    for _ in range(n):
        h = ab.spawn(forever())
        h.add_done_callback(outcomes)
        refs.append(weakref.ref(h))
    return refs


def still_running(refs: list[weakref.ref[ab.Result[Any]]], outcomes: Outcomes) -> list[ab.Result[Any]]:
    handles = [r() for r in refs]
    assert outcomes.got == [], f"a garbage collection ended spawned work: {Counter(map(str, outcomes.got))}"
    assert all(h is not None for h in handles), "a running spawned coroutine's handle was collected"
    return [h for h in handles if h is not None]


def test_spawned_work_survives_its_dropped_handle(quiet: None) -> None:
    """Fire and forget: ``spawn(coro)`` from sync code with the handle dropped (a done-callback kept).
    asyncio holds tasks by weak reference only, so while the coroutine is parked on something only it
    can reach, task, coroutine and handle form an unreachable cycle. The library owns the background
    loop (and promises to cancel its tasks at exit): it must hold its running tasks, or a garbage
    collection destroys the work ("Task was destroyed but it is pending!") and the handle ends
    FAILURE(GeneratorExit) instead of running until it is cancelled (then REVOKED)."""
    n = 10 * PER_LOOP * SOAK
    outcomes = Outcomes()
    refs = spawn_and_drop(n, outcomes)
    ab.spawn(asyncio.sleep(0)).get(HANG)  # every coroutine above is parked
    gc.collect()
    for h in still_running(refs, outcomes):
        h.cancel()
    got = outcomes.wait(n)
    print(f"\nspawned on the background loop, handle dropped: {n}: {Counter(str(st) for st, _ in got)}")
    assert all(st is S.REVOKED for st, _ in got), got[:3]


def started_cooperative(started: threading.Event, release: threading.Event, value: object) -> object:
    started.set()
    return cooperative(release, value)


def complete_from_gate(h: ab.Result[Any], gate: cf.Future[Any]) -> None:  # a gate's callback
    if not gate.cancelled():
        try:
            h.set_result(gate.result())
        except cf.InvalidStateError:
            assert h.cancelled()  # revoked first: a blank handle has no work to wait for


class PendingWork:
    """Handles of every kind, all held until :meth:`release`: thread work, a running cf.Future from an
    executor, a coroutine on the background loop, a blank handle completed from a plain thread."""

    KINDS = ("thread", "future", "coroutine", "blank")

    def __init__(self, n: int, ex: cf.ThreadPoolExecutor) -> None:
        self._release = threading.Event()
        self._gates: list[tuple[cf.Future[Any], int]] = []
        self.made: list[tuple[str, ab.Result[Any]]] = []
        running: list[threading.Event] = []
        for i in range(n):
            kind = self.KINDS[i % 4]
            h: ab.Result[Any]
            if kind == "thread":
                h = ab.run_in_thread(cooperative, self._release, i)
            elif kind == "future":
                running.append(threading.Event())
                h = ab.wrap(ex.submit(started_cooperative, running[-1], self._release, i))
            else:
                gate: cf.Future[Any] = cf.Future()
                self._gates.append((gate, i))
                if kind == "coroutine":
                    h = ab.spawn(until(gate))  # sync code: a task on the background loop
                else:
                    h = ab.Result()
                    gate.add_done_callback(partial(complete_from_gate, h))
            self.made.append((kind, h))
        for ev in running:  # a running cf.Future is out of reach of cancel(): make that certain
            assert ev.wait(HANG)

    def release(self) -> None:
        self._release.set()
        for gate, v in self._gates:
            try:
                gate.set_result(v)
            except cf.InvalidStateError:
                assert gate.cancelled()  # asyncio.wrap_future cancels it with its awaiting task


def test_awaiting_loop_closed_with_waiters_registered(quiet: None) -> None:
    """Tasks on loop L await handles; L stops with every waiter registered and is then closed (even
    rounds) or left stopped and resumed later (odd rounds); the work completes from other threads.
    Closed: no "Event loop is closed" traceback, nothing logged, every result reached through
    ``get()``. Resumed: the awaiters get their results."""
    seen: Counter[str] = Counter()
    count = 0
    with cf.ThreadPoolExecutor(PER_LOOP, thread_name_prefix="lifecycle") as ex:
        for r in range(LOOP_ROUNDS):
            work = PendingWork(PER_LOOP, ex)
            loop = asyncio.new_event_loop()
            arrivals = Arrivals(PER_LOOP)
            tasks = [loop.create_task(await_handle(h, r % 4 == 1, arrivals)) for _, h in work.made]
            loop.run_until_complete(arrivals.all_in.wait())  # every awaiter is parked on its handle
            resume = r % 2 == 1
            if not resume:
                for t in tasks:
                    t._log_destroy_pending = False  # type: ignore[attr-defined]  # the test abandons them
                loop.close()
            work.release()
            for i, (kind, h) in enumerate(work.made):
                assert settled(h) == (S.SUCCESS, i), (kind, h)
                seen[f"{kind} {'resumed' if resume else 'closed'}"] += 1
                count += 1
            if resume:
                results = loop.run_until_complete(asyncio.wait_for(asyncio.gather(*tasks), HANG))
                assert results == list(range(PER_LOOP))
                loop.close()
            else:
                assert not any(t.done() for t in tasks)
    print(f"\nawaiting loop stopped/closed with waiters: {count} handles, {LOOP_ROUNDS} loops: {dict(seen)}")


AWAIT_MODES = ("unawaited", "awaited", "shielded")


async def abandon_awaiters(made: list[tuple[str, ab.Result[Any]]], modes: list[str]) -> None:
    awaited = [
        (h, mode == "shielded") for (_, h), mode in zip(made, modes, strict=True) if mode != "unawaited"
    ]
    arrivals = Arrivals(len(awaited))
    for h, shielded in awaited:
        asyncio.get_running_loop().create_task(await_handle(h, shielded, arrivals))
    await arrivals.all_in.wait()  # then return: asyncio.run cancels the awaiters


def test_asyncio_run_exits_with_handles_pending(quiet: None) -> None:
    """``asyncio.run`` returns while thread work, wrapped futures, background coroutines and blank
    handles are pending, some awaited by abandoned tasks. asyncio.run does not wait for them; an
    abandoned awaiter cancels the work (shield opts out); then every handle ends, and a value the work
    produced is always delivered."""
    seen: Counter[str] = Counter()
    count = 0
    with cf.ThreadPoolExecutor(PER_LOOP, thread_name_prefix="lifecycle") as ex:
        for r in range(LOOP_ROUNDS):
            work = PendingWork(PER_LOOP, ex)
            modes = [AWAIT_MODES[(i + r) % 3] for i in range(PER_LOOP)]
            asyncio.run(abandon_awaiters(work.made, modes))
            work.release()
            for i, ((kind, h), mode) in enumerate(zip(work.made, modes, strict=True)):
                st, got = settled(h)
                if mode == "awaited" and kind in ("thread", "coroutine", "blank"):
                    # cancelled by its abandoned awaiter: thread work stops at checkpoint(), the
                    # coroutine at its await, a blank handle at once
                    assert st is S.REVOKED, (kind, mode, st, got)
                else:
                    # a running cf.Future is out of reach of cancel(); the others were never asked
                    assert (st, got) == (S.SUCCESS, i), (kind, mode, st, got)
                seen[f"{kind} {mode} {st}"] += 1
                count += 1
    print(f"\nasyncio.run exits with handles pending: {count} handles in {LOOP_ROUNDS} runs: {dict(seen)}")


# -- 2. executor shut down under load -----------------------------------------------------------------


def barrier_then_wait(running: threading.Barrier, release: threading.Event, value: int) -> int:
    running.wait(HANG)
    assert release.wait(HANG)
    return value


@pytest.mark.parametrize("how", ["cancel_futures", "wait_false", "garbage_collected"])
def test_executor_shut_down_under_load(how: str, quiet: None) -> None:
    """A ThreadPoolExecutor with running and queued futures, all wrapped, is shut down (or dropped and
    collected) under load: every handle terminal within 5 s; those cancelled REVOKED, the rest SUCCESS
    with their value."""
    workers, per_round = 2, 6
    seen: Counter[str] = Counter()
    latest = 0.0
    for _ in range(EXECUTOR_ROUNDS):
        before = set(threading.enumerate())
        release = threading.Event()
        running = threading.Barrier(workers + 1)

        ex = cf.ThreadPoolExecutor(workers, thread_name_prefix="lifecycle")
        # the first futures are provably running at the shutdown, the others queued
        futures = [
            ex.submit(barrier_then_wait, running, release, i) if i < workers else ex.submit(int, i)
            for i in range(per_round)
        ]
        handles = [ab.wrap(f) for f in futures]
        running.wait(HANG)
        assert all(h.state is S.STARTED for h in handles[:workers])
        if how == "cancel_futures":
            ex.shutdown(wait=False, cancel_futures=True)
        elif how == "wait_false":
            ex.shutdown(wait=False)
        else:
            del ex
            gc.collect()
        release.set()
        t0 = time.monotonic()
        deadline = t0 + TERMINAL_WITHIN
        assert all(h.wait(max(deadline - time.monotonic(), 0)) for h in handles), [h.state for h in handles]
        latest = max(latest, time.monotonic() - t0)
        for i, (f, h) in enumerate(zip(futures, handles, strict=True)):
            st, got = settled(h)
            if f.cancelled():
                assert st is S.REVOKED
            else:
                assert (st, got) == (S.SUCCESS, i)
            if how == "cancel_futures":
                assert f.cancelled() == (i >= workers)
            seen[str(st)] += 1
        for t in set(threading.enumerate()) - before:  # the executor's threads end once idle
            t.join(HANG)
            assert not t.is_alive(), t
    print(f"\nexecutor {how}: {EXECUTOR_ROUNDS} shutdowns, {dict(seen)}, slowest {latest * 1000:.1f} ms")


# -- 3. KeyboardInterrupt -------------------------------------------------------------------------------


SIGINT_IN_GET = (
    BLOCKED_IN_GET_SEAM
    + """
    import asyncio, concurrent.futures as cf, signal, sys, threading, traceback
    import asyncbridge as ab

    async def until(gate, started):
        started.set()
        return await asyncio.wrap_future(gate)

    threading.Thread(target=announce, daemon=True).start()
    # The executor's thread (the test's, not the library's) is started with SIGINT blocked: only the
    # main thread and the library's own threads can be picked to receive the SIGINT.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    ex = cf.ThreadPoolExecutor(1)
    ex.submit(int).result()
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    for i in range(int(sys.argv[1])):
        kind = ("thread", "coroutine", "future")[i % 3]
        release, gate = threading.Event(), cf.Future()
        if kind == "thread":
            started = threading.Event()
            h = ab.run_in_thread(lambda i=i: (started.set(), release.wait(30), ab.checkpoint(), i)[3])
            started.wait(30)  # running, so STARTED: the pool starts it on its own time
        elif kind == "coroutine":
            started = threading.Event()
            h = ab.spawn(until(gate, started))
            started.wait(30)  # running, so STARTED (the background loop starts it on its own time)
        else:
            started = threading.Event()
            h = ab.wrap(ex.submit(lambda i=i: (started.set(), release.wait(30), i)[2]))
            started.wait(30)  # running, so its handle says STARTED (the executor starts it on its own time)
        _blocking.block_hook = hook
        try:
            h.get(timeout=30)
            print("not interrupted", flush=True)
        except KeyboardInterrupt as e:
            frames = [f.name for f in traceback.extract_tb(e.__traceback__)]
            print(f"caught {kind} in-get={'get' in frames} {h.state} done={h.done()}", flush=True)
        finally:
            _blocking.block_hook = original
        release.set()
        gate.set_result(i)
        value = h.get(timeout=30)
        print(f"final {kind} {value == i} {h.state}", flush=True)
    ex.shutdown()
"""
)


def test_sigint_while_main_thread_blocked_in_get(tmp_path: Path) -> None:
    """SIGINT while the main thread waits in ``h.get()`` (thread work, a background coroutine, a wrapped
    cf.Future): KeyboardInterrupt surfaces from get() within 0.5 s, the handle is untouched (still
    running), and a later get() returns the value. The child exits 0 with a clean stderr."""
    with Child(SIGINT_IN_GET, str(SIGINT_ITERATIONS), stderr=tmp_path / "err") as child:
        lines, slowest = sigint_each_ready(child, SIGINT_ITERATIONS)
        rc, err = child.finish()
    for i in range(SIGINT_ITERATIONS):
        kind = ("thread", "coroutine", "future")[i % 3]
        assert lines[2 * i] == f"caught {kind} in-get=True STARTED done=False", lines[2 * i]
        assert lines[2 * i + 1] == f"final {kind} True SUCCESS", lines[2 * i + 1]
    assert (rc, err) == (0, "")
    assert slowest < SIGINT_WITHIN, slowest
    print(f"\nSIGINT in get(): {SIGINT_ITERATIONS} interrupts in one child, slowest {slowest * 1000:.1f} ms")


SIGINT_IN_ASYNCIO_RUN = """
    import asyncio, sys, threading
    import asyncbridge as ab

    for i in range(int(sys.argv[1])):
        kind = ("await", "shield")[i % 2]
        release, started = threading.Event(), threading.Event()
        h = ab.run_in_thread(lambda i=i: (started.set(), release.wait(30), ab.checkpoint(), i)[3])
        started.wait(30)  # running, so STARTED when the interrupt comes (the pool starts it on its own time)

        async def main():
            print("ready", flush=True)
            await (h if kind == "await" else ab.shield(h))

        try:
            asyncio.run(main())
            print("not interrupted", flush=True)
        except KeyboardInterrupt:
            print(f"caught {kind} {h.state} requested={h.cancel_requested()}", flush=True)
        release.set()
        outcome = h.get(timeout=30, propagate=False)
        print(f"final {kind} {h.state} {outcome!r}", flush=True)
"""


def test_sigint_while_asyncio_run_awaits_a_handle(tmp_path: Path) -> None:
    """SIGINT while ``asyncio.run`` awaits thread work: asyncio.run raises KeyboardInterrupt within 0.5 s;
    the cancelled await cancels the work (it ends REVOKED at its checkpoint), a shielded one does not
    (SUCCESS). The child exits 0 with a clean stderr."""
    with Child(SIGINT_IN_ASYNCIO_RUN, str(SIGINT_ITERATIONS), stderr=tmp_path / "err") as child:
        lines, slowest = sigint_each_ready(child, SIGINT_ITERATIONS)
        rc, err = child.finish()
    for i in range(SIGINT_ITERATIONS):
        if i % 2 == 0:
            assert lines[2 * i] == "caught await STARTED requested=True", lines[2 * i]
            assert lines[2 * i + 1] == "final await REVOKED CancelledError()", lines[2 * i + 1]
        else:
            assert lines[2 * i] == "caught shield STARTED requested=False", lines[2 * i]
            assert lines[2 * i + 1] == f"final shield SUCCESS {i}", lines[2 * i + 1]
    assert (rc, err) == (0, "")
    assert slowest < SIGINT_WITHIN, slowest
    print(
        f"\nSIGINT in asyncio.run: {SIGINT_ITERATIONS} interrupts in one child, "
        f"slowest {slowest * 1000:.1f} ms"
    )


def raise_keyboard_interrupt() -> None:
    raise KeyboardInterrupt


async def coroutine_raising_keyboard_interrupt() -> None:
    await asyncio.sleep(0)
    raise KeyboardInterrupt


@pytest.mark.parametrize("kind", ["thread", "coroutine"])
def test_keyboard_interrupt_raised_in_work_fails_only_that_handle(kind: str, quiet: None) -> None:
    """A KeyboardInterrupt raised inside thread work or a background coroutine (signals only reach the
    main thread, so this is how one gets there) fails that handle; its neighbours complete, the pool and
    the background loop keep serving at full capacity."""
    for i in range(SIGINT_ITERATIONS):
        bad = (
            ab.run_in_thread(raise_keyboard_interrupt)
            if kind == "thread"
            else ab.spawn(coroutine_raising_keyboard_interrupt())
        )
        neighbours = [ab.run_in_thread(int, i), ab.spawn(asyncio.sleep(0, i))]
        st, got = settled(bad)
        assert st is S.FAILURE and type(got) is KeyboardInterrupt
        assert [settled(h) for h in neighbours] == [(S.SUCCESS, i)] * 2
    # every pool slot still serves: MAX_WORKERS items that can only finish together
    together = threading.Barrier(MAX_WORKERS)
    full = [ab.run_in_thread(together.wait, HANG) for _ in range(MAX_WORKERS)]
    assert {settled(h)[1] for h in full} == set(range(MAX_WORKERS))
    print(f"\nKeyboardInterrupt raised in {kind} work: {SIGINT_ITERATIONS} handles")


# -- 4. fork --------------------------------------------------------------------------------------------


def test_fork_child_uses_the_api() -> None:
    """fork() while the background loop and a full pool run (and work is queued behind it): within 5 s
    the child spawns, runs thread work, nests them, cancels; work queued at the fork fails in the child
    with a RuntimeError saying so (documented) and runs in the parent; the child exits 0."""
    slowest = 0.0
    seen: Counter[str] = Counter()
    for i in range(FORK_ITERATIONS):
        release = threading.Event()
        running = threading.Barrier(MAX_WORKERS + 1)

        blockers = [ab.run_in_thread(barrier_then_wait, running, release, j) for j in range(MAX_WORKERS)]
        running.wait(HANG)  # the pool is full (unless a thread lent earlier has not retired yet)
        queued = ab.run_in_thread(int, i)
        gate: cf.Future[int] = cf.Future()
        coro = ab.spawn(until(gate))

        def body(i: int = i, queued: ab.Result[int] = queued) -> str:
            at_fork = queued.state  # the child's copy, after the library's at-fork hook ran
            t0 = time.monotonic()
            assert ab.spawn(asyncio.sleep(0, i)).get(TERMINAL_WITHIN) == i
            assert ab.run_in_thread(int, i).get(TERMINAL_WITHIN) == i
            nested = ab.run_in_thread(lambda: ab.spawn(asyncio.sleep(0, i)).get(TERMINAL_WITHIN))
            assert nested.get(TERMINAL_WITHIN) == i
            stop = threading.Event()

            def loops() -> None:
                stop.set()
                while True:
                    ab.checkpoint()
                    time.sleep(0.001)  # the work's own pace, not synchronisation

            h = ab.run_in_thread(loops)
            assert stop.wait(TERMINAL_WITHIN)
            h.cancel()
            assert settled(h)[0] is S.REVOKED
            if at_fork is not S.SUCCESS:  # it was still queued at the fork (not run by a spare thread)
                lost = queued.get(TERMINAL_WITHIN, propagate=False)
                assert isinstance(lost, RuntimeError) and "forked" in str(lost), repr(lost)
            names = {t.name for t in threading.enumerate()} - {threading.main_thread().name}
            assert all(n.startswith(("asyncbridge-loop", "asyncbridge-worker")) for n in names), names
            return f"ok {time.monotonic() - t0:.3f} queued-at-fork:{at_fork}"

        report = fork_child(body)
        elapsed = float(report.split()[1])
        seen[report.split()[2]] += 1
        assert elapsed < TERMINAL_WITHIN, report
        slowest = max(slowest, elapsed)
        release.set()
        gate.set_result(i)
        assert [settled(h)[1] for h in blockers] == list(range(MAX_WORKERS))
        assert settled(queued) == (S.SUCCESS, i)
        assert settled(coro) == (S.SUCCESS, i)
    print(f"\nfork: {FORK_ITERATIONS} children, slowest {slowest * 1000:.0f} ms; {dict(seen)}")
    assert seen["queued-at-fork:FAILURE"] > 0, seen  # the queued case really happened


def outcomes_in_child(handles: list[ab.Result[Any]]) -> str:
    outcomes = []
    for h in handles:
        try:
            got = h.get(TERMINAL_WITHIN, propagate=False)
        except TimeoutError:
            return f"hang: {h!r}.get() did not end within {TERMINAL_WITHIN} s in the child"
        except RuntimeError as exc:
            got = exc
        outcomes.append(got)
        if not isinstance(got, RuntimeError):
            return f"{h!r}: {got!r} in the child"
    return "ok " + " | ".join(map(repr, outcomes))


def test_fork_child_does_not_hang_on_work_running_at_the_fork() -> None:
    """Thread work and a background coroutine running in the parent at the fork cannot finish in the
    child (their thread and loop do not exist there). In the child a get() on their handles must not
    block for ever: like work queued at the fork, they fail with a RuntimeError (or get() raises one
    at once)."""
    for i in range(FORK_ITERATIONS):
        release = threading.Event()
        running = threading.Event()
        thread_work = ab.run_in_thread(started_cooperative, running, release, i)
        assert running.wait(HANG)
        gate: cf.Future[int] = cf.Future()
        coro = ab.spawn(until(gate))
        ab.spawn(asyncio.sleep(0)).get(HANG)  # the coroutine has started on the background loop
        body = partial(outcomes_in_child, [thread_work, coro])
        report = fork_child(body)
        release.set()
        gate.set_result(i)
        assert settled(thread_work) == (S.SUCCESS, i)
        assert settled(coro) == (S.SUCCESS, i)
        assert report.startswith("ok"), report
    print(f"\nfork with work running: {FORK_ITERATIONS} children")


# -- 5. interpreter exit --------------------------------------------------------------------------------

EXIT_PRELUDE = """
    import asyncio, concurrent.futures as cf, os, sys, threading, time
    import asyncbridge as ab

    MAX = min(32, (os.cpu_count() or 1) + 4)

    keep = []  # the handles stay referenced (test_spawned_work_survives_its_dropped_handle is apart)

    def say(line):
        os.write(1, f"{line}\\n".encode())  # one write per line: threads never interleave

    def report(name):
        def callback(h):
            say(f"{name} {h.state} {h.info!r}")
        return callback

    def watch(name, h):
        keep.append(h)
        h.add_done_callback(report(name))

    def checking(started):
        started.wait()
        while True:
            ab.checkpoint()
            time.sleep(0.005)  # the work's own pace

    async def forever():
        await asyncio.Event().wait()
"""

# name -> (script body, expected exit code, check of the stdout lines)
EXIT_VARIANTS: dict[str, tuple[str, int, Callable[[list[str]], None]]] = {}


def exit_variant(name: str, code: str, rc: int = 0) -> Callable[[Callable[[list[str]], None]], None]:
    def register(check: Callable[[list[str]], None]) -> None:
        EXIT_VARIANTS[name] = (code, rc, check)

    return register


@exit_variant(
    "thread-cooperative-sys-exit",
    """
    started = threading.Barrier(4)
    for i in range(3):
        watch(f"work-{i}", ab.run_in_thread(checking, started))
    started.wait()
    sys.exit(3)
    """,
    rc=3,
)
def _(out: list[str]) -> None:
    # documented: running work is asked to stop at exit; its checkpoint() raises: REVOKED
    assert sorted(out) == [f"work-{i} REVOKED CancelledError()" for i in range(3)], out


@exit_variant(
    "thread-short-never-checks",
    """
    started = threading.Event()
    def short():
        started.set()
        time.sleep(0.3)  # the work itself: short, and never checks
        return 42
    watch("short", ab.run_in_thread(short))
    started.wait()
    say("main ends")
    """,
)
def _(out: list[str]) -> None:
    # documented: exit waits up to EXIT_GRACE for running work; this one finishes and is delivered
    assert out == ["main ends", "short SUCCESS 42"], out


@exit_variant(
    "thread-long-never-checks",
    """
    started, never = threading.Event(), threading.Event()
    def stuck():
        started.set()
        never.wait()
    watch("stuck", ab.run_in_thread(stuck))
    started.wait()
    say("main ends")
    """,
)
def _(out: list[str]) -> None:
    # documented: work that never checks is abandoned to the interpreter's shutdown (daemon threads)
    assert out == ["main ends"], out


@exit_variant(
    "queued-behind-full-pool",
    """
    started = threading.Barrier(MAX + 1)
    for i in range(MAX):
        watch("running", ab.run_in_thread(checking, started))
    started.wait()
    for i in range(5):
        watch("queued", ab.run_in_thread(say, "ran"))
    """,
)
def _(out: list[str]) -> None:
    # documented: queued work is revoked and never runs; running work is asked to stop
    expected = ["queued REVOKED CancelledError()"] * 5 + ["running REVOKED CancelledError()"] * MAX_WORKERS
    assert sorted(out) == expected, out


@exit_variant(
    "coroutines-pending",
    """
    for i in range(5):
        watch("coro", ab.spawn(forever()))
    ab.spawn(asyncio.sleep(0)).get(10)  # the coroutines above took their first step
    """,
)
def _(out: list[str]) -> None:
    # documented: the background loop's tasks are cancelled at exit
    assert out == ["coro REVOKED CancelledError()"] * 5, out


@exit_variant(
    "coroutines-just-spawned",
    """
    for i in range(100):
        watch("coro", ab.spawn(forever()))
    """,
)
def _(out: list[str]) -> None:
    # "starts queued before the shutdown still run first (and are cancelled at once)": all REVOKED
    assert out == ["coro REVOKED CancelledError()"] * 100, out


@exit_variant(
    "coroutines-clean-up-on-cancel",
    """
    async def cleans():
        try:
            await forever()
        except asyncio.CancelledError:
            await asyncio.sleep(0)
            say("cleaned up")
            raise
    async def answers():
        try:
            await forever()
        except asyncio.CancelledError:
            await asyncio.sleep(0)
            return "late answer"
    watch("cleans", ab.spawn(cleans()))
    watch("answers", ab.spawn(answers()))
    ab.spawn(asyncio.sleep(0)).get(10)
    """,
)
def _(out: list[str]) -> None:
    # cancelled at exit, each unwinds: one re-raises (REVOKED), one returns (its value is delivered)
    assert sorted(out) == ["answers SUCCESS 'late answer'", "cleaned up", "cleans REVOKED CancelledError()"]


@exit_variant(
    "coroutine-ignores-cancel",
    """
    async def stubborn():
        while True:
            try:
                await forever()
            except asyncio.CancelledError:
                pass
    watch("stubborn", ab.spawn(stubborn()))
    ab.spawn(asyncio.sleep(0)).get(10)
    say("main ends")
    """,
)
def _(out: list[str]) -> None:
    # the coroutine analogue of thread work that never checks: exit still ends in time, without
    # "Task was destroyed" noise; if the handle ends, it ends with a clear error, never GeneratorExit
    assert out[0] == "main ends", out
    assert all("GeneratorExit" not in line for line in out), out


@exit_variant(
    "asyncio-run-returns-then-exit",
    """
    started = threading.Event()
    def work():
        started.set()
        while True:
            ab.checkpoint()
            time.sleep(0.005)
    async def main():
        watch("thread", ab.run_in_thread(work))
        started.wait(10)
    asyncio.run(main())
    say("asyncio.run returned")
    """,
)
def _(out: list[str]) -> None:
    # asyncio.run does not wait for our pool (unlike to_thread); exit then stops the work: REVOKED
    assert out == ["asyncio.run returned", "thread REVOKED CancelledError()"], out


@exit_variant(
    "wrapped-executor-futures",
    """
    ex = cf.ThreadPoolExecutor(2)
    running = threading.Barrier(3)
    def job(i):
        if i < 2:
            running.wait()
            time.sleep(0.05)  # the work itself
        return i
    for i in range(6):
        watch(f"future-{i}", ab.wrap(ex.submit(job, i)))
    running.wait()
    """,
)
def _(out: list[str]) -> None:
    # the executor's own exit hook runs its queue to the end: every wrapped future is delivered
    assert sorted(out) == [f"future-{i} SUCCESS {i}" for i in range(6)], out


@exit_variant(
    "thread-work-waits-on-coroutine",
    """
    started = threading.Event()
    c = ab.spawn(forever())
    watch("coro", c)
    def waits():
        started.set()
        return c.get()
    watch("thread", ab.run_in_thread(waits))
    started.wait()
    """,
)
def _(out: list[str]) -> None:
    # the coroutine is REVOKED; the thread work, asked to stop while blocked in get(), is woken by that
    # revocation only after the pool's exit grace, and may or may not report before the interpreter ends
    assert "coro REVOKED CancelledError()" in out, out
    assert all(line.startswith(("coro REVOKED", "thread REVOKED", "thread FAILURE")) for line in out), out


@pytest.mark.parametrize("name", list(EXIT_VARIANTS))
def test_interpreter_exit_with_work_pending(name: str, tmp_path: Path) -> None:
    """A child interpreter exits with work pending: within 10 s, stderr clean (no "Exception ignored",
    no "Task was destroyed", no traceback, no warning), the documented outcome on stdout."""
    code, rc_expected, check = EXIT_VARIANTS[name]
    script = textwrap.dedent(EXIT_PRELUDE) + textwrap.dedent(code)
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-W", "default", "-c", script],
        capture_output=True,
        text=True,
        timeout=3 * EXIT_WITHIN,  # hang guard
    )
    elapsed = time.monotonic() - t0
    out = proc.stdout.splitlines()
    print(f"\nexit variant {name}: rc {proc.returncode} in {elapsed:.2f} s; stdout {out}")
    assert proc.stderr == "", proc.stderr
    assert proc.returncode == rc_expected
    assert elapsed < EXIT_WITHIN
    check(out)


# -- 6. deadlock guard ----------------------------------------------------------------------------------


def blocking_calls(h: ab.Result[Any]) -> list[tuple[str, Callable[[], object]]]:
    return [
        ("get(timeout)", lambda: h.get(timeout=HANG)),
        ("get()", lambda: h.get()),
        ("result", lambda: h.result(timeout=HANG)),
        ("exception", lambda: h.exception(timeout=HANG)),
        ("wait", lambda: h.wait(HANG)),
    ]


class Refusals:
    """Records, per place, that each blocking call raised RuntimeError (saying to await); anything
    else is kept as a problem (the check may run in a loop callback, where raising would be lost)."""

    def __init__(self) -> None:
        self.seen: Counter[str] = Counter()
        self.problems: list[str] = []

    def check(self, h: ab.Result[Any], where: str) -> None:
        for name, call in blocking_calls(h):
            try:
                call()
            except RuntimeError as exc:
                if "await" in str(exc):
                    self.seen[f"{where}: RuntimeError"] += 1
                else:
                    self.problems.append(f"{where} {name}: {exc!r}")
            except BaseException as exc:
                self.problems.append(f"{where} {name}: {exc!r} instead of RuntimeError")
            else:
                self.problems.append(f"{where} {name}: returned instead of raising RuntimeError")

    def done(self, test: str, expected: int) -> None:
        print(f"\n{test}: {dict(self.seen)}")
        assert not self.problems, self.problems
        assert sum(self.seen.values()) == expected * len(blocking_calls(ab.Result()))


async def parked_until(gate: asyncio.Event, i: int) -> int:
    await gate.wait()
    return i


async def refusals_on_this_loop(refusals: Refusals) -> None:
    loop = asyncio.get_running_loop()
    for i in range(DEADLOCK_ITERATIONS):
        gate = asyncio.Event()
        made = (
            ("spawn", ab.spawn(parked_until(gate, i))),
            ("wrap(task)", ab.wrap(loop.create_task(parked_until(gate, i)))),
            ("wrap(coroutine)", ab.wrap(parked_until(gate, i))),
        )
        for where, h in made:
            refusals.check(h, where)  # pending on this very loop
        gate.set()
        assert [await h for _, h in made] == [i] * 3  # the work was not disturbed
        # from this loop's thread, work of a thread or of another loop blocks as asked and completes
        assert ab.run_in_thread(int, i).get(timeout=HANG) == i
        background = ab.run_in_thread(ab.spawn, asyncio.sleep(0, i)).get(timeout=HANG)
        assert background.get(timeout=HANG) == i


async def refuse_on_background(other: ab.Result[Any], refusals: Refusals) -> None:
    refusals.check(other, "background loop")


async def trio_parked(gate: trio.Event, i: int) -> int:
    await gate.wait()
    return i


async def refusals_under_trio(refusals: Refusals, n: int) -> None:
    for i in range(n):
        gate = trio.Event()
        h = ab.spawn(trio_parked(gate, i))  # a system task of this run
        refusals.check(h, "trio run")
        gate.set()
        assert await h == i
        assert ab.run_in_thread(int, i).get(timeout=HANG) == i


def test_get_on_the_loop_thread_raises_at_once(quiet: None) -> None:
    """On the thread of the loop that must run the work (asyncio.run's loop, the background loop, a trio
    run) every blocking call raises RuntimeError at once; work of another loop or a thread completes."""
    refusals = Refusals()
    asyncio.run(refusals_on_this_loop(refusals))
    for _ in range(DEADLOCK_ITERATIONS):
        other = ab.spawn(forever())  # on the background loop, as is the check below
        ab.spawn(refuse_on_background(other, refusals)).get(timeout=HANG)
        other.cancel()
        assert settled(other)[0] is S.REVOKED
    n_trio = max(DEADLOCK_ITERATIONS // 10, 1)
    trio.run(refusals_under_trio, refusals, n_trio)
    refusals.done("get() on the loop thread", 3 * DEADLOCK_ITERATIONS + DEADLOCK_ITERATIONS + n_trio)


def check_in_callback(refusals: Refusals, h: ab.Result[Any], where: str, done: Callable[[], object]) -> None:
    try:
        refusals.check(h, where)
    finally:
        done()


async def refusals_in_callbacks(refusals: Refusals) -> None:
    loop = asyncio.get_running_loop()
    for _ in range(DEADLOCK_ITERATIONS):
        h = ab.spawn(forever())  # pending on this loop while the callbacks run
        called = asyncio.Event()
        loop.call_soon(check_in_callback, refusals, h, "loop.call_soon", called.set)
        await called.wait()
        called.clear()
        trigger = ab.spawn(asyncio.sleep(0))
        trigger.add_done_callback(
            partial(
                lambda h, ev, _t: check_in_callback(refusals, h, "done-callback(loop=)", ev.set), h, called
            ),
            loop=loop,
        )
        await called.wait()
        h.cancel()
        with pytest.raises(asyncio.CancelledError):
            await h


async def running_loop() -> asyncio.AbstractEventLoop:
    return asyncio.get_running_loop()


def test_get_inside_a_loop_callback_raises_at_once(quiet: None) -> None:
    """Inside a callback running on the work's loop (``loop.call_soon``, a done-callback with ``loop=``,
    ``call_soon_threadsafe`` onto the background loop) every blocking call raises RuntimeError."""
    refusals = Refusals()
    asyncio.run(refusals_in_callbacks(refusals))
    background = ab.spawn(running_loop()).get(timeout=HANG)
    for _ in range(DEADLOCK_ITERATIONS):
        h = ab.spawn(forever())
        called = threading.Event()
        background.call_soon_threadsafe(
            check_in_callback, refusals, h, "background call_soon_threadsafe", called.set
        )
        assert called.wait(HANG)
        h.cancel()
        assert settled(h)[0] is S.REVOKED
    refusals.done("get() inside a loop callback", 3 * DEADLOCK_ITERATIONS)


def test_get_inside_thread_work_on_its_own_full_pool() -> None:
    """Thread work fills the pool (twice over) and each item get()s other work queued behind it: thread
    work, a chain of thread work, a background coroutine that itself awaits thread work. The waiting
    workers lend their slots, so everything completes; never a hang."""
    seen: Counter[str] = Counter()

    async def awaits_thread_work(i: int) -> int:
        return await ab.run_in_thread(int, i)

    def outer(i: int) -> int:
        kind = i % 3
        if kind == 0:
            return ab.run_in_thread(int, i).get(timeout=HANG)
        if kind == 1:
            return ab.run_in_thread(lambda: ab.run_in_thread(int, i).get(timeout=HANG)).get(timeout=HANG)
        return ab.spawn(awaits_thread_work(i)).get(timeout=HANG)

    t0 = time.monotonic()
    for _ in range(DEADLOCK_ITERATIONS):
        handles = [ab.run_in_thread(outer, i) for i in range(2 * MAX_WORKERS)]
        for i, h in enumerate(handles):
            assert settled(h, HANG) == (S.SUCCESS, i)
            seen[("thread", "chain", "coroutine")[i % 3]] += 1
    print(
        f"\nget() in thread work on a full pool: {DEADLOCK_ITERATIONS} rounds of {2 * MAX_WORKERS} "
        f"({dict(seen)}) in {time.monotonic() - t0:.2f} s"
    )
