"""Leak checks, issue #4: threads, file descriptors, memory, reference cycles and weak references, for
every kind of work that exists (blank handles, thread work, coroutines, wrapped cf.Futures).

Each test prints what it measured (counts, bytes per handle, growth per round); ``ASYNCBRIDGE_SOAK=1``
multiplies the counts. Waits are ordered by events and barriers; timeouts are hang guards only.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import gc
import inspect
import os
import threading
import tracemalloc
import weakref
from _weakrefset import WeakSet
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psutil  # type: ignore[import-untyped, unused-ignore]
import pytest
import trio
from conftest import SOAK  # type: ignore[import-not-found, unused-ignore]  # found when mypy runs on tests/

import asyncbridge as ab

pytestmark = pytest.mark.stress

S = ab.State
HANG = 10.0  # a hang guard only
MAX_WORKERS = min(32, (os.cpu_count() or 1) + 4)  # run_in_thread's documented bound
LIBRARY_THREADS = ("asyncbridge-loop", "asyncbridge-worker")

GROWTH_PER_ROUND = 4096  # the bound: memory growth < 4 KiB per round, after gc
ROUNDS = 3 * SOAK
# handles per round: 100,000 where a handle is cheap to complete; fewer where each one is a thread hop
# or a loop hop (tracemalloc slows those a lot), to keep the CI profile short
MEMORY_HANDLES = {"blank": 100_000, "thread": 20_000, "coroutine": 10_000, "future": 10_000}
FAILED_GETS = 1_000 * SOAK
WEAKREF_ITERATIONS = 200 * SOAK
FD_ROUNDS = 100 * SOAK
PENDING_BUDGET = 1_736  # issue #3: a pending handle costs no more than a cf.Future plus an asyncio.Future


class Payload:
    """An object that can be weakly referenced (ints and strs cannot)."""

    def __init__(self, value: int) -> None:
        self.value = value


def make_payload(arg: Payload) -> Payload:
    return Payload(arg.value + 1)


async def make_payload_async(arg: Payload) -> Payload:
    await asyncio.sleep(0)
    return Payload(arg.value + 1)


def fail(i: int) -> None:
    raise ValueError(f"failure {i}")


async def fail_async(i: int) -> None:
    await asyncio.sleep(0)
    raise ValueError(f"failure {i}")


async def until(gate: cf.Future[Any]) -> Any:
    return await asyncio.wrap_future(gate)


def library_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(LIBRARY_THREADS)]


# -- threads ----------------------------------------------------------------------------------------


def test_library_threads_are_named_and_bounded() -> None:
    """After bursts of thread work, of work that waits on work in its own full pool (the pool lends
    slots), and of coroutines: every thread the library started is named ``asyncbridge-...``; there is
    one loop thread; the pool grew by at most one thread per waiting worker, and is back within its
    bound once the waits are over and work has flowed through it again."""
    before = set(threading.enumerate())
    n_plain = 2_000 * SOAK
    assert [h.get(HANG) for h in [ab.run_in_thread(int, i) for i in range(n_plain)]] == list(range(n_plain))

    peak = 0
    lock = threading.Lock()

    def outer(i: int) -> int:
        nonlocal peak
        value = ab.run_in_thread(int, i).get(timeout=HANG)
        with lock:
            peak = max(peak, len(library_threads()))
        return value

    rounds = 20 * SOAK
    for _ in range(rounds):
        n = 2 * MAX_WORKERS  # twice the pool, each item waiting on work queued behind all of them
        assert [h.get(HANG) for h in [ab.run_in_thread(outer, i) for i in range(n)]] == list(range(n))
    n_spawn = 1_000 * SOAK
    assert [h.get(HANG) for h in [ab.spawn(asyncio.sleep(0, i)) for i in range(n_spawn)]] == list(
        range(n_spawn)
    )
    for _ in range(20):  # work flows through every thread again: a thread lent earlier retires
        together = threading.Barrier(MAX_WORKERS)
        assert sorted(
            h.get(HANG) for h in [ab.run_in_thread(together.wait, HANG) for _ in range(MAX_WORKERS)]
        )
        assert [h.get(HANG) for h in [ab.run_in_thread(int, i) for i in range(4 * MAX_WORKERS)]]

    new = [t for t in set(threading.enumerate()) - before if t.is_alive()]
    workers = [t for t in library_threads() if t.name.startswith("asyncbridge-worker")]
    loops = [t for t in library_threads() if t.name.startswith("asyncbridge-loop")]
    print(
        f"\nthreads: {n_plain} plain items, {rounds} x {2 * MAX_WORKERS} lending items, {n_spawn} "
        f"coroutines; peak {peak} library threads, now {len(workers)} workers + {len(loops)} loop "
        f"(bound {MAX_WORKERS} workers)"
    )
    assert all(t.name.startswith(LIBRARY_THREADS) for t in new), [t.name for t in new]
    assert all(t.daemon for t in library_threads())
    assert len(loops) == 1
    assert peak <= 1 + MAX_WORKERS + 2 * MAX_WORKERS  # the loop, the pool, one loan per waiting worker
    assert len(workers) <= MAX_WORKERS


# -- file descriptors ---------------------------------------------------------------------------------


async def shielded(h: ab.Result[Any]) -> Any:
    return await ab.shield(h)


async def cross_loop_round(r: int, ex: cf.ThreadPoolExecutor, gate: cf.Future[int]) -> ab.Result[int]:
    """Await every kind of work from a fresh asyncio loop (each loop has its own self-pipe); leave an
    awaiter of a background coroutine pending when the loop ends."""
    assert await ab.run_in_thread(int, r) == r
    background = ab.run_in_thread(ab.spawn, asyncio.sleep(0, r)).get(HANG)  # on the background loop
    assert await background == r
    assert await ab.wrap(ex.submit(int, r)) == r
    assert await ab.spawn(asyncio.sleep(0, r)) == r  # on this loop
    pending: ab.Result[int] = ab.run_in_thread(ab.spawn, until(gate)).get(HANG)
    asyncio.get_running_loop().create_task(shielded(pending))  # cancelled by asyncio.run
    await asyncio.sleep(0)
    return pending


def cross_loop(r: int, ex: cf.ThreadPoolExecutor) -> None:
    gate: cf.Future[int] = cf.Future()
    pending = asyncio.run(cross_loop_round(r, ex, gate))
    gate.set_result(r)
    assert pending.get(HANG) == r


async def trio_round(r: int) -> None:
    assert await ab.run_in_thread(int, r) == r
    background = ab.run_in_thread(ab.spawn, asyncio.sleep(0, r)).get(HANG)
    assert await background == r


def test_file_descriptors_back_to_baseline() -> None:
    """Handles awaited from many short-lived asyncio loops and trio runs, thread work, background
    coroutines and wrapped futures: afterwards the process has exactly the file descriptors it had."""
    me = psutil.Process()
    with cf.ThreadPoolExecutor(2, thread_name_prefix="leaks") as ex:
        cross_loop(-1, ex)  # the library's loop and pool exist before the baseline
        trio.run(trio_round, -1)
        gc.collect()
        baseline = me.num_fds()
        for r in range(FD_ROUNDS):
            cross_loop(r, ex)
            if r % 10 == 0:
                trio.run(trio_round, r)
    gc.collect()
    after = me.num_fds()
    print(f"\nfds: {FD_ROUNDS} asyncio loops, {FD_ROUNDS // 10} trio runs: {baseline} before, {after} after")
    assert after == baseline


# -- memory -------------------------------------------------------------------------------------------


async def held_at(gate: cf.Future[None], value: int) -> int:
    await asyncio.wrap_future(gate)
    return value


def memory_round(kind: str, n: int) -> None:
    """Create ``n`` handles of ``kind``, complete them, get() each; every value arrives."""
    hs: list[ab.Result[Any]]
    if kind == "blank":
        hs = [ab.Result() for _ in range(n)]
        for i, h in enumerate(hs):
            h.set_result(i)
    elif kind == "future":
        fs: list[cf.Future[int]] = [cf.Future() for _ in range(n)]
        hs = [ab.wrap(f) for f in fs]
        for i, f in enumerate(fs):
            f.set_result(i)
        del fs
    elif kind == "thread":
        hs = [ab.run_in_thread(int, i) for i in range(n)]
    else:
        # All n coroutines wait at one gate until every one is spawned, so each round has the same
        # peak of live tasks: asyncio's containers (its task set, the loop's queues) keep the table
        # of their largest size, which would otherwise vary with timing and read as growth.
        gate: cf.Future[None] = cf.Future()
        hs = [ab.spawn(held_at(gate, i)) for i in range(n)]
        gate.set_result(None)
        del gate
    lost = [(i, h.state) for i, h in enumerate(hs) if h.get(HANG) != i]
    assert not lost, f"{len(lost)} results lost, e.g. {lost[:3]}"


@contextmanager
def traced() -> Iterator[None]:
    tracemalloc.start()
    try:
        yield
    finally:
        tracemalloc.stop()


def quiesce() -> None:
    """Let the library's threads finish what follows a completion (a worker drops its item after
    waking the getter; a task finishes its step and runs its callbacks after setting the result)."""
    together = threading.Barrier(MAX_WORKERS)  # every worker has finished its previous item
    assert all(h.wait(HANG) for h in [ab.run_in_thread(together.wait, HANG) for _ in range(MAX_WORKERS)])
    for _ in range(3):  # the background loop ran everything queued before
        ab.spawn(asyncio.sleep(0)).get(HANG)


def _line_of(function: Callable[..., Any], text: str) -> tracemalloc.Filter:
    """A filter that leaves out what the line of ``function`` holding ``text`` allocates."""
    lines, first = inspect.getsourcelines(function)
    offset = next(i for i, line in enumerate(lines) if text in line)
    return tracemalloc.Filter(False, inspect.getsourcefile(function) or "", first + offset)


# Tables and free lists that the standard library sizes by their peak and by timing, not by how many
# objects are alive now:
# - asyncio's set of all tasks (a WeakSet: deleted entries stay as dummies until a resize, whose new
#   size depends on how many tasks were live at that moment: 8 KiB to 1 MiB for 10,000 tasks);
# - the loop's ready queue (a deque keeps up to 16 freed 528-byte blocks);
# - the C future's await iterators: `await fut` allocates one (40 B) in the awaiting coroutine's
#   line, and up to 255 freed ones stay on a free list (10 KiB), as many as happened to be freed
#   before being reused;
# - tracemalloc's own objects (the measure, not the measured).
# They swing by more than the bound from one round to the next in both directions and do not grow
# with rounds; a task or a callback that leaks is still counted, since the objects themselves are
# allocated elsewhere.
PEAK_SIZED_TABLES = [
    _line_of(WeakSet.add, "self.data.add("),
    _line_of(asyncio.base_events.BaseEventLoop._call_soon, "self._ready.append("),  # type: ignore[attr-defined]
    _line_of(held_at, "await "),
    tracemalloc.Filter(False, tracemalloc.__file__),
]
# Python 3.14's call_soon_threadsafe appends to the ready queue itself (earlier ones go through
# _call_soon): the same deque blocks, from another line.
if "self._ready.append(" in inspect.getsource(asyncio.base_events.BaseEventLoop.call_soon_threadsafe):
    PEAK_SIZED_TABLES.append(
        _line_of(asyncio.base_events.BaseEventLoop.call_soon_threadsafe, "self._ready.append(")
    )


def settled_snapshot() -> tracemalloc.Snapshot:
    """What is traced once the library's threads are quiet and after gc, leaving out
    ``PEAK_SIZED_TABLES``."""
    quiesce()
    gc.collect()
    return tracemalloc.take_snapshot().filter_traces(PEAK_SIZED_TABLES)


def size_of(snapshot: tracemalloc.Snapshot) -> int:
    return sum(stat.size for stat in snapshot.statistics("filename"))


def grown_lines(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot, top: int = 8) -> str:
    """The source lines whose traced memory grew most from ``before`` to ``after``, for a failure."""
    grew = [d for d in after.compare_to(before, "lineno") if d.size_diff > 0][:top]
    return "\n".join(f"  {d.size_diff:+,} B, {d.count_diff:+} blocks: {d.traceback[0]}" for d in grew)


@pytest.mark.parametrize("kind", list(MEMORY_HANDLES))
def test_memory_is_flat_over_rounds(kind: str) -> None:
    """Rounds of create, complete, get: after a warm-up round, traced memory grows < 4 KiB a round."""
    n = MEMORY_HANDLES[kind]
    with traced():
        for _ in range(3):  # warm-up: free lists, caches, the library's threads, containers at their peak
            memory_round(kind, n)
        growth = []
        settled_snapshot()  # warm-up of the measure itself: a snapshot's filters fill fnmatch's caches
        first = last = settled_snapshot()
        last_size = size_of(last)
        for _ in range(ROUNDS):
            memory_round(kind, n)
            last = settled_snapshot()
            size = size_of(last)
            growth.append(size - last_size)
            last_size = size
    print(f"\nmemory, {kind}: {ROUNDS} rounds x {n:,} handles; growth per round (B): {growth}")
    # The message (which lines grew) is worked out only if the assertion fails.
    assert all(g < GROWTH_PER_ROUND for g in growth), (
        f"growth per round {growth}; grew most:\n{grown_lines(first, last)}"
    )


def traced_bytes() -> int:
    """Bytes traced now, after gc, all of them."""
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


def pending_cost(make: Callable[[int], list[Any]], n: int) -> float:
    """Bytes per object, traced, for ``n`` objects that ``make`` creates and keeps (after gc)."""
    before = traced_bytes()  # the pool is full of blockers here
    kept = make(n)
    cost = (traced_bytes() - before) / n
    del kept
    return cost


def test_bytes_per_pending_handle() -> None:
    """Reports the traced bytes per pending handle of each kind (with its list slot); a blank handle
    stays within issue #3's budget, a cf.Future plus an asyncio.Future (1,736 B)."""
    report: dict[str, float] = {}
    release = threading.Event()
    running = threading.Barrier(MAX_WORKERS + 1)
    blockers = [
        ab.run_in_thread(lambda: (running.wait(HANG), release.wait(HANG))) for _ in range(MAX_WORKERS)
    ]
    running.wait(HANG)  # the pool is full: thread work below stays queued
    gate: cf.Future[None] = cf.Future()
    queued: list[ab.Result[int]] = []
    coroutines: list[ab.Result[Any]] = []
    try:
        with traced():
            report["blank Result()"] = pending_cost(lambda n: [ab.Result() for _ in range(n)], 100_000)
            report["cf.Future() (for comparison)"] = pending_cost(
                lambda n: [cf.Future() for _ in range(n)], 20_000
            )
            report["wrap(cf.Future()), both"] = pending_cost(
                lambda n: [ab.wrap(cf.Future()) for _ in range(n)], 20_000
            )

            def queue_work(n: int) -> list[Any]:
                queued.extend(ab.run_in_thread(int, i) for i in range(n))
                return []

            report["run_in_thread, queued"] = pending_cost(queue_work, 20_000)

            def spawn_parked(n: int) -> list[Any]:
                coroutines.extend(ab.spawn(until(gate)) for _ in range(n))
                ab.spawn(asyncio.sleep(0)).get(HANG)  # all of them are parked
                return []

            report["spawn, parked coroutine"] = pending_cost(spawn_parked, 10_000)
    finally:
        release.set()
        gate.set_result(None)
    assert all(h.get(HANG) is None for h in coroutines)
    assert [h.get(HANG) for h in queued] == list(range(len(queued)))
    assert all(h.wait(HANG) for h in blockers)
    print("\nbytes per pending handle (traced, with its list slot):")
    for name, cost in report.items():
        print(f"  {name:32} {cost:8.0f} B")
    assert report["blank Result()"] <= PENDING_BUDGET


# -- reference cycles ----------------------------------------------------------------------------------


def failed_handle(kind: str, i: int, ex: cf.ThreadPoolExecutor) -> ab.Result[Any]:
    if kind == "blank":
        h: ab.Result[Any] = ab.Result()
        h.set_exception(ValueError(f"failure {i}"))
        return h
    if kind == "revoked":
        h = ab.Result()
        h.cancel()
        return h
    if kind == "thread":
        return ab.run_in_thread(fail, i)
    if kind == "coroutine":
        return ab.spawn(fail_async(i))
    return ab.wrap(ex.submit(fail, i))


@pytest.mark.parametrize("kind", ["blank", "revoked", "thread", "coroutine", "future"])
def test_failed_gets_leave_no_reference_cycles(kind: str) -> None:
    """1,000 failed ``get()``s with the collector off, then ``gc.collect()`` finds nothing: neither the
    stored exception nor the re-raise may tie the handle into a reference cycle through a traceback
    (a frame that holds the handle), which would keep every failed handle, its work's frames and their
    locals alive until a collection."""
    with cf.ThreadPoolExecutor(1, thread_name_prefix="leaks") as ex:
        failed_handle(kind, -1, ex).wait(HANG)  # warm-up
        gc.collect()
        gc.disable()
        try:
            for i in range(FAILED_GETS):
                h = failed_handle(kind, i, ex)
                try:
                    h.get(timeout=HANG)
                except (ValueError, cf.CancelledError):
                    pass
                else:
                    pytest.fail(f"{h!r} did not fail")
            del h
            ex.submit(int).result(HANG)  # the executor's thread has let go of the last one
            ab.run_in_thread(int).get(HANG)
            gc.set_debug(gc.DEBUG_SAVEALL)
            found = gc.collect()
            kinds = Counter(type(o).__name__ for o in gc.garbage)
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            gc.enable()
    top = dict(kinds.most_common(6))
    print(f"\ncycles, {kind}: {FAILED_GETS} failed get()s; gc.collect() found {found}: {top}")
    assert found == 0, f"{found} objects in reference cycles: {dict(kinds.most_common(8))}"


# -- weak references --------------------------------------------------------------------------------


def complete_with_payload(kind: str, arg: Payload, ex: cf.ThreadPoolExecutor) -> ab.Result[Payload]:
    if kind == "thread":
        return ab.run_in_thread(make_payload, arg)
    if kind == "coroutine":
        return ab.spawn(make_payload_async(arg))
    if kind == "future":
        return ab.wrap(ex.submit(make_payload, arg))
    h: ab.Result[Payload] = ab.Result()
    h.set_result(make_payload(arg))
    return h


@pytest.mark.parametrize("kind", ["thread", "coroutine", "future", "blank"])
def test_results_and_arguments_are_freed_with_the_handle(kind: str) -> None:
    """The work's argument and its result are freed as soon as the handle (and the caller's copy of the
    result) is dropped: by reference counting alone, the collector being off."""
    freed = 0
    with cf.ThreadPoolExecutor(1, thread_name_prefix="leaks") as ex:
        gc.collect()
        gc.disable()
        try:
            for i in range(WEAKREF_ITERATIONS):
                arg_dead, result_dead = threading.Event(), threading.Event()
                arg = Payload(i)
                weakref.finalize(arg, arg_dead.set)
                h = complete_with_payload(kind, arg, ex)
                result = h.get(timeout=HANG)
                assert result.value == i + 1
                weakref.finalize(result, result_dead.set)
                del h, arg, result
                # the worker may still be unwinding: wait (hang guard) for the last reference to go
                assert arg_dead.wait(HANG), f"{kind}: the argument outlives its dropped handle"
                assert result_dead.wait(HANG), f"{kind}: the result outlives its dropped handle"
                freed += 2
        finally:
            gc.enable()
    print(f"\nweakrefs, {kind}: {WEAKREF_ITERATIONS} handles, {freed} arguments and results freed")
