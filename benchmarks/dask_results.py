"""Dask results: awaiting ``distributed`` futures through ``ab.wrap``, against Dask's own ways to wait.

The family starts its own cluster and stops it at the end: a ``distributed.LocalCluster`` with
``processes=False`` (the scheduler and one worker with one thread, on one event-loop thread of
this process, reached over ``inproc://``), an asynchronous ``Client`` on the benchmark loop and a
synchronous ``Client`` with its own loop thread. If ``distributed`` is missing, every candidate is
listed as skipped with the reason; a cluster that does not start fails the family's candidates
(and the run), not the other families.

Why in process. On a 2-core machine a cluster in other processes (a ``LocalCluster`` in a child
process, or a ``dask scheduler`` + ``dask worker`` pair, over TCP) was both slower and far noisier
in one comparison: 1,000 gathered no-op tasks took about 1.5 ms each with block medians from 0.9 to
2.9 ms, against about 0.8 ms with block medians from 0.5 to 0.9 ms in process. Out of process, the
benchmark, the scheduler and the worker are three busy processes on two cores, and every message
is serialised and parsed on both sides; in process, messages are handed over between threads and
the cluster shares the benchmark's GIL, which every candidate pays alike. Two settings of the
cluster, made for the family's duration only: ``distributed.scheduler.worker-saturation`` is
``inf`` (with the default, the scheduler feeds the one worker thread one or two tasks at a time,
each hand-over waiting out the 2-5 ms batching intervals of the scheduler's and worker's streams:
3 ms per no-op task whoever waits), and the worker's statistical profiler is off (in process it
would sample this process's every thread every 10 ms).

- *round trip*: submit one no-op task and wait for it, singly timed (the submission included).
  Floor: ``await client.submit(noop, pure=False)`` with the asynchronous client; asyncbridge:
  ``await ab.wrap(...)`` of the same on the same loop, and of a future of the synchronous client
  (whose events arrive on its own loop thread); ``await asyncio.to_thread(fut.result)`` with the
  synchronous client beside them. A ``Client`` sends its messages to the scheduler in batches at
  most every 10 ms (``BatchedSend(interval="10ms")``, fixed in distributed): back to back, round
  trips settle into that 10-ms cadence, and every candidate measures the same ~10.7 ms whatever its
  own cost (anything under ~8 ms would not show). So each submission is sent with that interval
  expired: every operation starts at least :data:`GAP` after the start of the one before (the pause
  not timed), and the block's futures are kept until it ends (releasing one would send a message
  of its own, and restart the interval).
- *concurrent*: submit N no-op tasks with one ``client.map`` (not timed), then one timed wait for
  all of them, divided by N. Floor: ``await client.gather(futures)`` (asynchronous client);
  ``await asyncio.to_thread(sync_client.gather, sync_futures)``; asyncbridge's
  ``ab.gather(*(ab.wrap(f) ...))`` and ``asyncio.gather(*(ab.wrap(f) ...))`` over the futures of
  either client. One ``map`` is one message: submitted in a loop, the synchronous client's tasks
  would start while the loop still runs (its loop thread sends them at once), and the asynchronous
  client's only when the timed wait yields to the loop; ``map`` returns in well under a
  millisecond, so either client's wait covers the whole of the tasks' journey. After the wait the
  block's futures are released and one more no-op task is waited for on that client (not timed),
  so that the scheduler forgets them before the next block. A sampler thread counts the threads
  alive during the wait that the family did not have when it started (as the Celery family does,
  :class:`benchmarks.celery_results.ThreadPeak`); the peaks are in the family's summary table and
  in each concurrent candidate's note in ``results.json``. The executor of the ``to_thread``
  candidates is made (and its threads started) before each of their blocks and shut down after.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextlib
import logging
import os
import threading
from typing import TYPE_CHECKING, Any

from rich.table import Table

import asyncbridge as ab

from ._harness import (
    BenchLoop,
    Block,
    Candidate,
    Config,
    Estimate,
    Family,
    Group,
    GroupResult,
    Role,
    _error_text,
    have,
    noop,
    perf_counter,
)
from ._report import fmt
from .celery_results import GET_TIMEOUT, ThreadPeak, fresh_default_executor

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine, Iterator
    from contextlib import ExitStack

#: Concurrent group: tasks per block (the issue's 1,000; fewer in the quick run).
TASKS = {"full": 1_000, "default": 1_000, "quick": 200}
#: Seconds from the start of one round trip to the start of the next: more than the 10 ms batching
#: interval of a Client's messages to the scheduler (see the docstring), with room for the
#: synchronous client's loop thread to send a little after ``submit()`` returns.
GAP = 0.012
#: Seconds a client may take to connect to the scheduler.
CONNECT_TIMEOUT = 30.0
#: The goal of the issue: the round trip within 1.1x of ``await future``.
ROUND_TRIP_GOAL = 1.1
#: "No thread per future": waiting on Dask futures from the loop starts no thread at all (the
#: handles' coroutines run on the clients' loops, which the family starts with).
MAX_EXTRA_THREADS = 0
#: The settings of the cluster for the family's duration (see the docstring).
DASK_CONFIG = {
    "distributed.scheduler.worker-saturation": float("inf"),
    "distributed.worker.profile.enabled": False,
}

FLOOR_RT = "await client.submit(noop)"
AB_RT = "await ab.wrap(client.submit(noop))"
AB_SYNC_RT = "await ab.wrap(sync_client.submit(noop))"
THREAD_RT = "await to_thread(sync_client.submit(noop).result)"
FLOOR_N = "await client.gather(futures)"
THREAD_N = "await to_thread(sync_client.gather, sync_futures)"
AB_GATHER_N = "ab.gather(*(ab.wrap(f) for f in futures))"
AB_WRAP_N = "asyncio.gather(*(ab.wrap(f) for f in futures))"
AB_GATHER_SYNC_N = "ab.gather(*(ab.wrap(f) for f in sync_futures))"
AB_WRAP_SYNC_N = "asyncio.gather(*(ab.wrap(f) for f in sync_futures))"
#: The baseline "from a thread" of each group: Dask's blocking wait, in asyncio's default executor.
FROM_THREAD = {"latency": THREAD_RT, "throughput": THREAD_N}

#: Peak threads per candidate: name -> tasks per block -> (extra threads, all threads), per block.
THREADS: dict[str, dict[int, list[tuple[int, int]]]] = {}


def noop_each(i: int) -> None:
    """The task of ``client.map``: nothing, so that only the waiting is measured."""


# -- the cluster --------------------------------------------------------------------------------------


def unavailable() -> str:
    """Why the family cannot run here, or "" if it can."""
    if not have("distributed"):
        return "distributed is not installed (pip install asyncbridge[dask])"
    return ""


def start_cluster(stack: ExitStack, bench: BenchLoop) -> tuple[Any, Any]:
    """Start the cluster and both clients (stopped by ``stack``) and warm them; return
    ``(client, sync_client)``: the asynchronous one lives on ``bench``'s loop."""
    import dask
    import distributed

    # Untyped constructors (mypy --strict would flag each call): called through Any.
    new_cluster: Any = distributed.LocalCluster
    new_client: Any = distributed.Client

    stack.enter_context(dask.config.set(DASK_CONFIG))
    quiet = logging.getLogger("distributed")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # e.g. its warnings about the GC time the harness spends
    stack.callback(quiet.setLevel, level)

    cluster = new_cluster(
        n_workers=1,
        threads_per_worker=1,
        processes=False,
        dashboard_address=None,  # no dashboard; but the scheduler's HTTP server always starts:
        scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},  # on a free port, not 8787
    )
    stack.callback(cluster.close)
    address = cluster.scheduler_address
    sync_client = new_client(address, timeout=CONNECT_TIMEOUT, set_as_default=False)
    stack.callback(sync_client.close)

    async def connect() -> Any:
        return await new_client(address, asynchronous=True, timeout=CONNECT_TIMEOUT, set_as_default=False)

    client = bench.run(connect())

    async def close() -> None:
        await client.close()

    stack.callback(lambda: bench.run(close()))

    async def warm() -> None:
        """Start what starts on first use (the worker's thread, asyncbridge's adapter and its
        subscription per client, the clients' gather paths) before the threads are counted."""
        for c in (client, sync_client):
            for _ in range(5):
                await ab.wrap(c.submit(noop, pure=False))
            await ab.gather(*(ab.wrap(f) for f in c.map(noop_each, range(50), pure=False)))
        for _ in range(5):
            await client.submit(noop, pure=False)
        await client.gather(client.map(noop_each, range(50), pure=False))

    bench.run(warm())
    sync_client.gather(sync_client.map(noop_each, range(50), pure=False))
    sync_client.submit(noop, pure=False).result(timeout=GET_TIMEOUT)
    return client, sync_client


@contextlib.contextmanager
def to_thread_executor(loop: asyncio.AbstractEventLoop) -> Iterator[None]:
    """:func:`fresh_default_executor`, and then a new default executor (with no thread started
    until it is used), so that nothing else on the loop meets the stopped one."""
    try:
        with fresh_default_executor(loop):
            yield
    finally:
        loop.set_default_executor(cf.ThreadPoolExecutor())


# -- the groups -------------------------------------------------------------------------------------


def _groups(cfg: Config, blocks: dict[str, Block | None], skip: str) -> list[Group]:
    def cand(name: str, role: Role, note: str = "") -> Candidate:
        return Candidate(name, blocks.get(name), role, note, skip=skip)

    tasks = cfg.pick(TASKS)
    executor = min(32, (os.cpu_count() or 1) + 4)  # ThreadPoolExecutor's default max_workers
    sync = "synchronous Client (its own loop thread)"
    return [
        Group(
            title="round trip of one no-op Dask task (submit + wait)",
            kind="latency",
            floor=FLOOR_RT,
            candidates=[
                cand(FLOOR_RT, "floor", "asynchronous Client on the benchmark loop"),
                cand(AB_RT, "asyncbridge", "the same client and loop"),
                cand(AB_SYNC_RT, "asyncbridge", sync),
                cand(THREAD_RT, "stdlib", sync),
            ],
            ops=max(cfg.latency_ops // 25, 15),
            rounds=max(cfg.rounds // 5, 3),
            note=(
                f"in-process LocalCluster, 1 worker x 1 thread; each op starts {GAP * 1e3:.0f} ms "
                "after the last (the client's 10 ms batching)"
            ),
        ),
        Group(
            title=f"{tasks:,} concurrently awaited no-op Dask tasks, per task",
            kind="throughput",
            floor=FLOOR_N,
            candidates=[
                cand(FLOOR_N, "floor", "asynchronous Client on the benchmark loop"),
                cand(THREAD_N, "stdlib", f"{sync}; asyncio's default executor: at most {executor} threads"),
                cand(AB_GATHER_N, "asyncbridge"),
                cand(AB_WRAP_N, "asyncbridge"),
                cand(AB_GATHER_SYNC_N, "asyncbridge", sync),
                cand(AB_WRAP_SYNC_N, "asyncbridge", sync),
            ],
            ops=tasks,
            rounds=max(cfg.throughput_rounds // 4, 3),
            note="one client.map, not timed; threads in the summary",
        ),
    ]


def _blocks(bench: BenchLoop, client: Any, sync_client: Any, base: set[threading.Thread]) -> dict[str, Block]:
    def executor(to_thread: bool) -> contextlib.AbstractContextManager[None]:
        return to_thread_executor(bench.loop) if to_thread else contextlib.nullcontext()

    def round_trip(op: Callable[[list[Any]], Coroutine[Any, Any, object]], to_thread: bool = False) -> Block:
        async def run(n: int) -> list[float]:
            keep: list[Any] = []  # the block's futures: released when it ends, not between its ops
            out = [0.0] * n
            with executor(to_thread):
                start = perf_counter()  # whatever was sent before the block: GAP ago by the first op
                for i in range(n):
                    pause = start + GAP - perf_counter()
                    if pause > 0:
                        await asyncio.sleep(pause)
                    start = perf_counter()
                    await op(keep)
                    out[i] = perf_counter() - start
            return out

        return bench.block(run)

    async def rt_floor(keep: list[Any]) -> None:
        f = client.submit(noop, pure=False)
        keep.append(f)
        await f

    async def rt_wrap(keep: list[Any]) -> None:
        f = client.submit(noop, pure=False)
        keep.append(f)
        await ab.wrap(f)

    async def rt_wrap_sync(keep: list[Any]) -> None:
        f = sync_client.submit(noop, pure=False)
        keep.append(f)
        await ab.wrap(f)

    async def rt_thread(keep: list[Any]) -> None:
        f = sync_client.submit(noop, pure=False)
        keep.append(f)
        await asyncio.to_thread(f.result, timeout=GET_TIMEOUT)

    def concurrent(
        name: str,
        c: Any,
        wait: Callable[[list[Any]], Coroutine[Any, Any, object]],
        to_thread: bool = False,
    ) -> Block:
        async def run(n: int) -> list[float]:
            futures = c.map(noop_each, range(n), pure=False)
            with executor(to_thread), ThreadPeak(base) as peak:
                t0 = perf_counter()
                await wait(futures)
                dt = perf_counter() - t0
            THREADS.setdefault(name, {}).setdefault(n, []).append((peak.extra, peak.total))
            del futures
            # The release of the block's futures goes first on the client's stream: once this task
            # is back, the scheduler has forgotten them (not timed; the synchronous client's is
            # waited for in this thread, as a thread of the default executor would linger).
            if c is client:
                await client.submit(noop, pure=False)
            else:
                c.submit(noop, pure=False).result(timeout=GET_TIMEOUT)
            return [dt / n]

        return bench.block(run)

    async def n_gather(futures: list[Any]) -> object:
        return await client.gather(futures)

    async def n_thread(futures: list[Any]) -> object:
        return await asyncio.to_thread(sync_client.gather, futures)

    async def n_ab_gather(futures: list[Any]) -> object:
        return await ab.gather(*(ab.wrap(f) for f in futures))

    async def n_wrap(futures: list[Any]) -> object:
        return await asyncio.gather(*(ab.wrap(f) for f in futures))

    return {
        FLOOR_RT: round_trip(rt_floor),
        AB_RT: round_trip(rt_wrap),
        AB_SYNC_RT: round_trip(rt_wrap_sync),
        THREAD_RT: round_trip(rt_thread, to_thread=True),
        FLOOR_N: concurrent(FLOOR_N, client, n_gather),
        THREAD_N: concurrent(THREAD_N, sync_client, n_thread, to_thread=True),
        AB_GATHER_N: concurrent(AB_GATHER_N, client, n_ab_gather),
        AB_WRAP_N: concurrent(AB_WRAP_N, client, n_wrap),
        AB_GATHER_SYNC_N: concurrent(AB_GATHER_SYNC_N, sync_client, n_ab_gather),
        AB_WRAP_SYNC_N: concurrent(AB_WRAP_SYNC_N, sync_client, n_wrap),
    }


def _failing(names: list[str], reason: str) -> dict[str, Block | None]:
    def fail(n: int) -> list[float]:
        raise RuntimeError(f"the Dask cluster did not start: {reason}")

    return dict.fromkeys(names, fail)


def build(cfg: Config, stack: ExitStack) -> list[Group]:
    THREADS.clear()
    reason = unavailable()
    if reason:
        return _groups(cfg, {}, reason)
    bench = stack.enter_context(BenchLoop())
    try:
        client, sync_client = start_cluster(stack, bench)
    except Exception as exc:  # what started is stopped by ``stack``; the other families go on
        names = [c.name for g in _groups(cfg, {}, "") for c in g.candidates]
        return _groups(cfg, _failing(names, _error_text(exc)), "")
    base = set(threading.enumerate())
    return _groups(cfg, dict(_blocks(bench, client, sync_client, base)), "")


# -- the summary ------------------------------------------------------------------------------------


def summary(results: list[GroupResult]) -> Table | None:
    """The issue's goals: the same-loop round trip within :data:`ROUND_TRIP_GOAL` of ``await
    future``, and no thread per future while many are awaited; each candidate beside both of Dask's
    own ways to wait (on the loop, and from a thread). Also writes each concurrent candidate's
    thread peaks into its note (and so into ``results.json``)."""
    medians = {c.name: c.median for r in results for c in r.results}
    if all(m is None for m in medians.values()):
        return None
    t = Table(
        title="dask: the issue's goals",
        caption=(
            "vs from a thread: against the group's asyncio.to_thread candidate (the synchronous "
            "client's blocking wait); extra threads: peak number of threads alive during the wait "
            "that the family did not start with, by tasks per block, over every block"
        ),
        title_justify="left",
    )
    for col in ("candidate", "median", "vs floor", "vs from a thread", "extra threads", "goal"):
        t.add_column(col, justify="left" if col in ("candidate", "extra threads", "goal") else "right")

    def ratio(name: str, base: str) -> float | None:
        m, b = medians.get(name), medians.get(base)
        return None if m is None or not b else m / b

    def text(x: float | None) -> str:
        return "" if x is None else f"{x:.2f}x"

    for r in results:
        t.add_section()
        for c in r.results:
            vs_floor = ratio(c.name, r.group.floor)
            vs_thread = ratio(c.name, FROM_THREAD[r.group.kind])
            by_n = sorted(THREADS.get(c.name, {}).items())
            peaks = {n: max(e for e, _ in v) for n, v in by_n}
            threads = ", ".join(f"{n:,}: {e}" for n, e in peaks.items())
            if threads:
                in_all = ", ".join(f"{n:,}: {max(a for _, a in v)}" for n, v in by_n)
                c.note = (
                    f"{c.note}; peak threads by tasks per block: {threads} extra; "
                    f"{in_all} in all (threading.active_count(), the sampler not counted)"
                ).lstrip("; ")
            goal = ""
            if c.name == AB_RT and vs_floor is not None:
                met = vs_floor <= ROUND_TRIP_GOAL
                goal = f"within {ROUND_TRIP_GOAL}x of await future"
            elif c.role == "asyncbridge" and r.group.kind == "throughput" and peaks:
                met = max(peaks.values()) <= MAX_EXTRA_THREADS
                goal = f"no thread per future ({MAX_EXTRA_THREADS} extra)"
            if goal:
                goal = f"{'met' if met else '[red]missed[/red]'}: {goal}"
            t.add_row(c.name, fmt(c.median, "s"), text(vs_floor), text(vs_thread), threads, goal)
    return t


FAMILY = Family(
    "dask",
    "Dask results",
    build,
    summary,
    estimate=Estimate(groups=2, seconds={"quick": 11, "default": 31, "full": 65}),
)
