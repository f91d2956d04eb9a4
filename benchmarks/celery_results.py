"""Celery results: awaiting Celery tasks through ``ab.wrap``, against Celery's own ways to wait.

The family starts its own cluster and stops it at the end: a ``redis-server`` on a free loopback
port (broker and result backend) and a real ``celery worker --pool=prefork --concurrency=2`` on
:mod:`benchmarks._celery_app`, whose task does nothing. If redis-server, celery or the redis client
is missing, every candidate is listed as skipped with the reason; a cluster that does not start
fails the family's candidates (and the run), not the other families.

- *round trip*: send one no-op task and wait for it, singly timed (the send included). Floor:
  Celery's own ``r.get()``; asyncbridge: ``await ab.wrap(r)``; ``await asyncio.to_thread(r.get)``
  beside them.
- *concurrent*: send N no-op tasks (not timed), then one timed wait for all of them, divided by N.
  Floor: ``asyncio.gather(*(asyncio.to_thread(r.get) for r in results))`` (the loop's default
  executor: at most ``min(32, cpus + 4)`` threads); a sync loop of ``r.get()``; asyncbridge's
  ``asyncio.gather(*(ab.wrap(r) ...))`` and ``ab.gather`` of the same handles (``ab.gather`` takes no
  ``AsyncResult`` itself). A sampler thread counts the
  threads alive during the wait that the family did not have when it started (the sampler itself
  and the waiting thread not counted), every :data:`SAMPLE_EVERY` seconds; the peaks are in the
  family's summary table and in each candidate's note in ``results.json``. The executor of the
  ``to_thread`` candidates is made (and its threads started) before each of their blocks and shut
  down after, so that its threads count only for them; asyncbridge's listener lingers about a
  second after its last handle ends, and one left over is not counted for the other candidates.

Every block of either group sends all its tasks from the benchmark loop's thread, and first sends
one task and ``get()``s it (not timed): Celery's result consumer of the sending thread subscribes to
every task it sends, and messages of tasks that asyncbridge awaited (so Celery never read them)
would otherwise be drained by the next block that calls ``r.get()``, at that block's expense.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextlib
import os
import shutil
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

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
    perf_counter,
    time_each,
)
from ._report import fmt
from ._servers import Process, celery_worker_argv, free_port, start_redis

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine, Iterator
    from contextlib import ExitStack

ROOT = Path(__file__).resolve().parent.parent
WORKER_CONCURRENCY = 2
#: Concurrent group: tasks per block (the issue's 1,000; fewer in the quick run).
TASKS = {"full": 1_000, "default": 1_000, "quick": 200}
#: Seconds between two counts of the threads alive during a concurrent wait.
SAMPLE_EVERY = 0.002
#: Seconds a blocking ``r.get()`` may wait (a hang fails the block instead of the loop).
GET_TIMEOUT = 60.0
#: The name of asyncbridge's listener thread (one per Celery app).
LISTENER = "asyncbridge-celery"
#: The goals of the issue: concurrent no slower than either baseline; round trip within 1.1x.
ROUND_TRIP_GOAL = 1.1
#: "No slower" allows this much above 1.0x: less than the spread of block medians on a quiet machine.
NOISE = 0.05
#: "A constant number of threads": asyncbridge runs one listener per app, and a new one can start
#: while the last, idle, is still closing its connection; a thread per result would be N.
CONSTANT_THREADS = 2

FLOOR_RT = "delay() + r.get()"
AB_RT = "delay() + await ab.wrap(r)"
THREAD_RT = "delay() + await asyncio.to_thread(r.get)"
FLOOR_N = "gather(*(to_thread(r.get) for r in results))"
SYNC_N = "for r in results: r.get()"
AB_WRAP_N = "gather(*(ab.wrap(r) for r in results))"
AB_GATHER_N = "ab.gather(*(ab.wrap(r) for r in results))"

#: Peak threads per candidate: name -> tasks per block -> (extra threads, all threads), per block.
THREADS: dict[str, dict[int, list[tuple[int, int]]]] = {}


# -- the cluster --------------------------------------------------------------------------------------


def unavailable() -> str:
    """Why the family cannot run here, or "" if it can."""
    if not have("celery"):
        return "celery is not installed (pip install asyncbridge[celery])"
    if not have("redis"):
        return "the redis client is not installed (pip install celery[redis])"
    if shutil.which("redis-server") is None:
        return "redis-server is not installed (Debian: apt-get install redis-server)"
    return ""


def start_cluster(stack: ExitStack) -> Any:
    """Start Redis and a prefork worker (stopped by ``stack``), warm the worker; return the task."""
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    redis = start_redis(port, ROOT)
    stack.callback(redis.stop)

    from . import _celery_app

    _celery_app.configure(url)
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, _celery_app.URL_ENV: url, "PYTHONPATH": path}
    argv = celery_worker_argv("benchmarks._celery_app", WORKER_CONCURRENCY, "WARNING")
    worker = Process(argv, "", env, "celery worker", ROOT)
    stack.callback(worker.stop)
    task = _celery_app.noop_task
    warm(task, worker)
    return task


def warm(task: Any, worker: Process, timeout: float = 60) -> None:
    """Wait until the worker answers, then keep both of its children busy a few times over."""
    from celery.exceptions import TimeoutError as CeleryTimeoutError  # not the builtin one

    deadline = time.monotonic() + timeout
    r = task.delay()
    while True:
        try:
            r.get(timeout=0.5)
            break
        except CeleryTimeoutError:
            if worker.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"the celery worker did not answer; its last output:\n{worker.output(5)}"
                ) from None
    for r in [task.delay() for _ in range(20 * WORKER_CONCURRENCY)]:
        r.get(timeout=GET_TIMEOUT)


def wait_listener_gone(timeout: float = 5.0) -> None:
    """Let asyncbridge's Celery listener see that nothing is pending and end, before Redis stops."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(t.name == LISTENER for t in threading.enumerate()):
            return
        time.sleep(0.05)


# -- counting threads -------------------------------------------------------------------------------


class ThreadPeak:
    """Samples, in a thread of its own, the peak number of threads alive that are not in ``base``
    and not named ``ignore``."""

    def __init__(self, base: set[threading.Thread], ignore: str | None = None) -> None:
        self._base = base
        self._ignore = ignore
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="asyncbridge-bench-sampler", daemon=True)
        self.extra = 0  # threads alive that the family did not have when it started
        self.total = 0  # threading.active_count(), the sampler not counted

    def _sample(self) -> None:
        alive = threading.enumerate()
        me, ignore = self._thread, self._ignore
        extra = sum(1 for t in alive if t not in self._base and t is not me and t.name != ignore)
        self.extra = max(self.extra, extra)
        self.total = max(self.total, len(alive) - 1)

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_EVERY):
            self._sample()

    def __enter__(self) -> Self:
        self._thread.start()
        self._sample()
        return self

    def __exit__(self, *exc: object) -> None:
        self._sample()
        self._stop.set()
        self._thread.join()


@contextlib.contextmanager
def fresh_default_executor(loop: asyncio.AbstractEventLoop) -> Iterator[None]:
    """Give ``loop`` a new default executor with all its threads started, and stop them after.

    ``asyncio.to_thread`` runs in the loop's default executor, whose threads live as long as the
    loop: without this they would be counted in the waits of every candidate after the first that
    used them. Starting them is not timed (a real application's executor is warm)."""
    executor = cf.ThreadPoolExecutor()
    workers = executor._max_workers  # what asyncio's default executor would get
    barrier = threading.Barrier(workers + 1)
    started = [executor.submit(barrier.wait, GET_TIMEOUT) for _ in range(workers)]
    barrier.wait(GET_TIMEOUT)  # every worker thread is running one of them
    cf.wait(started)
    loop.set_default_executor(executor)
    try:
        yield
    finally:
        executor.shutdown(wait=True)


# -- the groups -------------------------------------------------------------------------------------


def _groups(cfg: Config, blocks: dict[str, Block | None], skip: str) -> list[Group]:
    def cand(name: str, role: Role, note: str = "") -> Candidate:
        return Candidate(name, blocks.get(name), role, note, skip=skip)

    tasks = cfg.pick(TASKS)
    executor = min(32, (os.cpu_count() or 1) + 4)  # ThreadPoolExecutor's default max_workers
    return [
        Group(
            title="round trip of one no-op Celery task (send + wait)",
            kind="latency",
            floor=FLOOR_RT,
            candidates=[
                cand(FLOOR_RT, "floor", "Celery's own blocking get"),
                cand(AB_RT, "asyncbridge"),
                cand(THREAD_RT, "stdlib"),
            ],
            ops=max(cfg.latency_ops // 4, 15),
            rounds=max(cfg.rounds // 4, 3),
            note=f"Redis broker and backend, prefork worker x{WORKER_CONCURRENCY}",
        ),
        Group(
            title=f"{tasks:,} concurrently awaited no-op Celery tasks, per task",
            kind="throughput",
            floor=FLOOR_N,
            candidates=[
                cand(FLOOR_N, "floor", f"asyncio's default executor: at most {executor} threads"),
                cand(SYNC_N, "stdlib", "Celery's own blocking get, one thread"),
                cand(AB_WRAP_N, "asyncbridge", "asyncio.gather"),
                cand(AB_GATHER_N, "asyncbridge"),
            ],
            ops=tasks,
            rounds=max(cfg.throughput_rounds // 2, 3),
            note="the sends not timed; threads in the summary",
        ),
    ]


def _blocks(bench: BenchLoop, task: Any, base: set[threading.Thread]) -> dict[str, Block]:
    delay = task.delay

    def flush() -> None:
        """Drain Celery's result consumer of messages of tasks nobody get()-ed (see the docstring)."""
        delay().get(timeout=GET_TIMEOUT)

    def executor(to_thread: bool) -> contextlib.AbstractContextManager[None]:
        return fresh_default_executor(bench.loop) if to_thread else contextlib.nullcontext()

    def round_trip(op: Callable[[], Any], to_thread: bool = False) -> Block:
        async def run(n: int) -> list[float]:
            flush()
            with executor(to_thread):
                return await time_each(n, op)

        return bench.block(run)

    async def rt_get() -> None:
        delay().get(timeout=GET_TIMEOUT)

    async def rt_wrap() -> None:
        await ab.wrap(delay())

    async def rt_thread() -> None:
        await asyncio.to_thread(delay().get, timeout=GET_TIMEOUT)

    def concurrent(
        name: str, wait: Callable[[list[Any]], Coroutine[Any, Any, object]], to_thread: bool = False
    ) -> Block:
        async def run(n: int) -> list[float]:
            flush()
            results = [delay() for _ in range(n)]
            # asyncbridge's listener ends about a second after its last handle: one left over from
            # an earlier block is idle, and not counted for the candidates that do not use it
            ignore = None if name in (AB_WRAP_N, AB_GATHER_N) else LISTENER
            with executor(to_thread), ThreadPeak(base, ignore) as peak:
                t0 = perf_counter()
                await wait(results)
                dt = perf_counter() - t0
            THREADS.setdefault(name, {}).setdefault(n, []).append((peak.extra, peak.total))
            return [dt / n]

        return bench.block(run)

    async def n_to_thread(results: list[Any]) -> object:
        return await asyncio.gather(*(asyncio.to_thread(r.get, timeout=GET_TIMEOUT) for r in results))

    async def n_sync(results: list[Any]) -> object:
        return [r.get(timeout=GET_TIMEOUT) for r in results]

    async def n_wrap(results: list[Any]) -> object:
        return await asyncio.gather(*(ab.wrap(r) for r in results))

    async def n_ab_gather(results: list[Any]) -> object:
        return await ab.gather(*(ab.wrap(r) for r in results))  # it takes no AsyncResult itself

    return {
        FLOOR_RT: round_trip(rt_get),
        AB_RT: round_trip(rt_wrap),
        THREAD_RT: round_trip(rt_thread, to_thread=True),
        FLOOR_N: concurrent(FLOOR_N, n_to_thread, to_thread=True),
        SYNC_N: concurrent(SYNC_N, n_sync),
        AB_WRAP_N: concurrent(AB_WRAP_N, n_wrap),
        AB_GATHER_N: concurrent(AB_GATHER_N, n_ab_gather),
    }


def _failing(names: list[str], reason: str) -> dict[str, Block | None]:
    def fail(n: int) -> list[float]:
        raise RuntimeError(f"the Celery cluster did not start: {reason}")

    return dict.fromkeys(names, fail)


def build(cfg: Config, stack: ExitStack) -> list[Group]:
    THREADS.clear()
    reason = unavailable()
    if reason:
        return _groups(cfg, {}, reason)
    bench = stack.enter_context(BenchLoop())
    try:
        task = start_cluster(stack)
    except Exception as exc:  # what started is stopped by ``stack``; the other families go on
        names = [c.name for g in _groups(cfg, {}, "") for c in g.candidates]
        return _groups(cfg, _failing(names, _error_text(exc)), "")
    stack.callback(wait_listener_gone)  # runs before the cluster stops (the stack unwinds LIFO)
    base = set(threading.enumerate())
    return _groups(cfg, dict(_blocks(bench, task, base)), "")


# -- the summary ------------------------------------------------------------------------------------


def summary(results: list[GroupResult]) -> Table | None:
    """The issue's goals: the concurrent wait no slower than either baseline with a constant number
    of threads, and the round trip within :data:`ROUND_TRIP_GOAL` of Celery's own ``get()``. Also
    writes each concurrent candidate's thread peaks into its note (and so into ``results.json``)."""
    medians = {c.name: c.median for r in results for c in r.results}
    if all(m is None for m in medians.values()):
        return None
    t = Table(
        title="celery: the issue's goals",
        caption=(
            "extra threads: peak number of threads alive during the wait that the family did not "
            "start with (the waiting thread not counted), by tasks per block, over every block"
        ),
        title_justify="left",
    )
    for col in ("candidate", "median", "vs floor", f"vs {SYNC_N}", "extra threads", "goal"):
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
            vs_sync = ratio(c.name, SYNC_N) if r.group.kind == "throughput" else None
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
            if c.role == "asyncbridge" and vs_floor is not None:
                if r.group.kind == "throughput":
                    limit = 1.0 + NOISE
                    met = vs_floor <= limit and vs_sync is not None and vs_sync <= limit
                    met = met and max(peaks.values(), default=0) <= CONSTANT_THREADS
                    goal = f"no slower than either (+{NOISE:.0%}), at most {CONSTANT_THREADS} threads"
                else:
                    met = vs_floor <= ROUND_TRIP_GOAL
                    goal = f"within {ROUND_TRIP_GOAL}x of r.get()"
                goal = f"{'met' if met else '[red]missed[/red]'}: {goal}"
            t.add_row(c.name, fmt(c.median, "s"), text(vs_floor), text(vs_sync), threads, goal)
    return t


FAMILY = Family(
    "celery",
    "Celery results",
    build,
    summary,
    estimate=Estimate(groups=2, seconds={"quick": 10, "default": 32, "full": 115}),
)
