"""Dask futures and Dask clients through the handle (asyncbridge/contrib/dask.py, docs/dask.md), on
real parts only: an embedded ``LocalCluster`` (threads, in this process, on distributed's own "IO
loop" thread) and a real ``dask scheduler`` with a ``dask worker`` in processes of their own."""
# mypy: disable-error-code="comparison-overlap,unreachable,no-untyped-call"
# (tests read h.state again after the handle moved on, which mypy narrows to the first value read;
# much of distributed's Client API is not annotated)

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import os
import pathlib
import random
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

import anyio
import celery_work
import dask_work
import pytest
from conftest import LIBRARY_THREADS, TESTS_DIR
from distributed import Client, Future, LocalCluster
from distributed.client import ClosedClientError
from distributed.scheduler import KilledWorker
from oracle import settled
from test_celery import gates_opened_after_each_test, make_fifo, release, wait_for_progress  # noqa: F401
from tornado.ioloop import IOLoop

import asyncbridge as ab
from asyncbridge.contrib import dask as ab_dask
from benchmarks import _servers as servers
from benchmarks._servers import Process

S = ab.State
NOWHERE = ["no-such-worker"]  # a restriction no worker meets: the task stays pending


def parked(client: Client) -> Future[int]:
    """A task that stays pending, under a key of its own (Dask gives equal calls one key, and one
    state per key and client: cancelling one such future would cancel the others)."""
    return client.submit(celery_work.add, 1, 2, workers=NOWHERE, pure=False)


# -- the clusters ---------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """conftest's guard, less the pools Dask starts on demand and keeps for the life of a cluster
    in this process (the embedded workers' threads, the offload and callback threads: "Dask-...")."""

    def foreign() -> set[threading.Thread]:
        return {
            t
            for t in threading.enumerate()
            if t is not threading.main_thread()
            and not t.name.startswith(LIBRARY_THREADS)
            and "Dask-" not in t.name
        }

    before = foreign()
    yield
    leaked = foreign() - before
    for t in leaked:
        t.join(5.0)
    alive = [t.name for t in leaked if t.is_alive()]
    assert not alive, f"threads leaked by this test: {alive}"


class LoopThread:
    """An event loop in a thread of its own, for ``Client(loop=...)``. Named as the suite's
    long-lived threads are (asyncbridge-...), so that the leak guard of a test module that starts
    the subprocess cluster within a test (test_contract.py) counts it as the fixture's."""

    def __init__(self) -> None:
        ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self.io_loop: IOLoop | None = None

        async def run() -> None:
            self.io_loop, self._stop = IOLoop.current(), asyncio.Event()
            ready.set()
            await self._stop.wait()

        self.thread = threading.Thread(target=asyncio.run, args=(run(),), name="asyncbridge-test-dask-loop")
        self.thread.start()
        assert ready.wait(30), "the loop thread did not start"

    def stop(self) -> None:
        assert self.io_loop is not None and self._stop is not None
        self.io_loop.add_callback(self._stop.set)
        self.thread.join(30)


def dask_env() -> dict[str, str]:
    # The checkout first (the code under test), tests/ for the task functions; a task whose worker
    # dies fails at once (KilledWorker) instead of being tried on other workers.
    path = os.pathsep.join([str(TESTS_DIR.parent), str(TESTS_DIR)])
    return {**os.environ, "PYTHONPATH": path, "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "0"}


def start_scheduler(port: int | None = None) -> tuple[Process, str]:
    port = port or servers.free_port()
    argv = [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1"]
    argv += ["--port", str(port), "--dashboard-address", ":0"]
    return Process(argv, "Scheduler at:", dask_env(), "dask-scheduler", TESTS_DIR), f"tcp://127.0.0.1:{port}"


def start_worker(address: str, name: str, nthreads: int) -> Process:
    argv = [sys.executable, "-m", "distributed.cli.dask_worker", address, "--name", name, "--no-nanny"]
    argv += ["--nthreads", str(nthreads), "--host", "127.0.0.1", "--dashboard-address", ":0"]
    return Process(argv, "Registered to:", dask_env(), f"dask-worker-{name}", TESTS_DIR)


def subscribed(client: Client) -> Client:
    """``client``, once the scheduler has its subscription to progress events (a plain task's
    reports are delivered from then on): a task sent after it has come back."""
    ab.wrap(parked(client)).cancel()  # wrap() subscribes
    assert client.submit(celery_work.add, 0, 1, pure=False).result(60) == 1
    return client


@dataclass
class Cluster:
    client: Client
    address: str
    scheduler: Process
    worker: Process


@pytest.fixture(scope="module")
def dask_cluster() -> Iterator[Cluster]:
    """A real ``dask scheduler`` and ``dask worker`` (4 threads), each in a process of its own; the
    client of this process runs on a loop thread of the fixture's."""
    scheduler, address = start_scheduler()
    worker = start_worker(address, "main", 4)
    loop = LoopThread()
    try:
        scheduler.wait_ready()
        worker.wait_ready()
        client = Client(address, loop=loop.io_loop, set_as_default=False)
        try:
            yield Cluster(subscribed(client), address, scheduler, worker)
        finally:
            client.close()
    finally:
        loop.stop()
        worker.stop()
        scheduler.stop()


@pytest.fixture(scope="module")
def embedded() -> Iterator[Client]:
    """A ``LocalCluster`` of one worker with 4 threads in this process, and its client (both on
    distributed's own "IO loop" thread)."""
    with (
        LocalCluster(processes=False, n_workers=1, threads_per_worker=4, dashboard_address=":0") as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        yield subscribed(client)


@pytest.fixture(scope="module", params=["embedded", "subprocess"])
def client(request: pytest.FixtureRequest) -> Client:
    if request.param == "embedded":
        return request.getfixturevalue("embedded")  # type: ignore[no-any-return]
    return request.getfixturevalue("dask_cluster").client  # type: ignore[no-any-return]


class Moves:
    """The STARTED, PROGRESS and RETRY moves of a handle, as they happen."""

    def __init__(self, h: ab.Result[Any]) -> None:
        self.seen: list[tuple[S, Any]] = []
        self._events = {state: threading.Event() for state in (S.STARTED, S.PROGRESS, S.RETRY)}
        h._watch(self._record)

    def _record(self, _h: object, state: S, info: Any) -> None:
        self.seen.append((state, info))
        self._events[state].set()

    def wait(self, state: S) -> None:
        assert self._events[state].wait(30), f"never {state}: {self.seen}"


# -- wrap(): states, waiting from anywhere, failures ------------------------------------------------


def test_a_wrapped_future_pending_then_its_value(client: Client, tmp_path: pathlib.Path) -> None:
    fifo = make_fifo(tmp_path)
    future = client.submit(celery_work.rendezvous, fifo)
    h = ab.wrap(future)
    assert h.id == str(future.key) and "dask rendezvous" in repr(h)
    assert h.state is S.PENDING and not h.done()
    release(fifo, "opened")
    assert h.get(timeout=30) == "opened"
    assert h.state is S.SUCCESS and h.successful() and h.info == "opened"


@pytest.mark.anyio
async def test_await_from_another_loop_on_both_backends(client: Client) -> None:
    assert await ab.wrap(client.submit(celery_work.add, 20, 22)) == 42


def test_get_from_many_threads_and_callbacks_on_the_client_loop(
    client: Client, tmp_path: pathlib.Path
) -> None:
    fifo = make_fifo(tmp_path)
    h = ab.wrap(client.submit(celery_work.rendezvous, fifo))
    on_loop: list[bool] = []
    called = threading.Event()

    def callback(done: ab.Result[Any]) -> None:
        on_loop.append(asyncio.get_running_loop() is client.loop.asyncio_loop)  # type: ignore[union-attr]
        called.set()

    h.add_done_callback(callback)
    with cf.ThreadPoolExecutor(4) as pool:
        readers = [pool.submit(h.get, 30) for _ in range(4)]
        release(fifo, "for all")
        assert [r.result(30) for r in readers] == ["for all"] * 4
    assert called.wait(30) and on_loop == [True]


def test_a_failure_keeps_its_type_and_the_worker_traceback(client: Client) -> None:
    h = ab.wrap(client.submit(celery_work.fail, "bad input"))
    with pytest.raises(ValueError, match="bad input"):
        h.get(timeout=30)
    assert h.state is S.FAILURE and h.failed() and isinstance(h.exception(0), ValueError)
    assert "raise ValueError(message)  # the source line" in (h.traceback or "")
    assert "celery_work.py" in (h.traceback or "")


def test_progress_from_a_plain_dask_task(client: Client, tmp_path: pathlib.Path) -> None:
    fifo = make_fifo(tmp_path)
    h = ab.wrap(client.submit(celery_work.report_and_wait, fifo, "PROGRESS"))
    wait_for_progress(h)
    assert h.state is S.PROGRESS and h.info == {"step": 1, "of": 2} and h.running()
    release(fifo, "reported")
    assert h.get(timeout=30) == "reported"


def test_gather_dask_handles_with_other_kinds_of_work(client: Client) -> None:
    h = ab.wrap(client.submit(celery_work.add, 1, 2))
    assert list(ab.gather(h, ab.run_in_thread(lambda: "thread")).get(30)) == [3, "thread"]


def test_gather_takes_a_dask_future_as_it_is(dask_cluster: Cluster) -> None:
    future: Any = dask_cluster.client.submit(celery_work.add, 1, 2)  # a kind the type checker does not know
    assert ab.wrap(future).get(30) == 3  # done: the misstep cannot block the background loop
    assert list(ab.gather(future, ab.run_in_thread(lambda: "thread")).get(30)) == [3, "thread"]


# -- cancellation, both ways ------------------------------------------------------------------------


def test_cancel_through_the_handle_cancels_the_dask_future(client: Client) -> None:
    future = parked(client)
    h = ab.wrap(future)
    assert h.cancel()
    with pytest.raises(cf.CancelledError, match="cancelled through its asyncbridge handle"):
        h.get(timeout=30)
    assert h.state is S.REVOKED and h.cancelled()
    assert future.cancelled()  # Dask's own future says so too


def test_a_future_cancelled_elsewhere_revokes_the_handle_for_every_waiter(client: Client) -> None:
    future = parked(client)
    h = ab.wrap(future)
    with cf.ThreadPoolExecutor(3) as pool:
        waiters = [pool.submit(h.exception, 30) for _ in range(3)]
        client.cancel([future])  # not through the handle
        for w in waiters:
            with pytest.raises(cf.CancelledError):
                w.result(30)
    assert h.state is S.REVOKED and h.cancelled()


def test_a_cancel_racing_the_outcome_ends_each_handle_once(embedded: Client, audit: list[str]) -> None:
    """Cancel a task around the moment it ends: every handle ends once, legally, with its own value
    or REVOKED, and every way of reading it agrees (the oracle's settled())."""
    t = ab.task(engine=embedded)(celery_work.add)
    seen: Counter[S] = Counter()
    for i in range(60):
        h = t.delay(i, 1) if i % 2 else ab.wrap(embedded.submit(celery_work.add, i, 1, pure=False))
        time.sleep(random.uniform(0, 0.02))  # a skew (one that lets the embedded cluster run), not a sync
        h.cancel()
        state, outcome = settled(h, within=30)
        seen[state] += 1
        assert state is S.REVOKED or (state is S.SUCCESS and outcome == i + 1), (state, outcome)
    print(f"cancel racing the outcome: {dict(seen)}")


@pytest.mark.anyio
async def test_an_awaiter_that_times_out_cancels_the_dask_future(client: Client) -> None:
    future = parked(client)
    h = ab.wrap(future)
    with anyio.move_on_after(0.05):
        await h
    assert h.wait(30) and h.state is S.REVOKED and future.cancelled()


def test_every_wait_honours_its_timeout(client: Client) -> None:
    h = ab.wrap(parked(client))
    with pytest.raises(TimeoutError):
        h.get(timeout=0.05)
    assert not h.wait(0.05) and h.state is S.PENDING
    assert cf.wait([h], timeout=0.05).not_done == {h}
    h.cancel()


# -- @task(engine=client) -----------------------------------------------------------------------------


def test_a_task_reports_started_progress_and_its_value(client: Client, tmp_path: pathlib.Path) -> None:
    fifo = make_fifo(tmp_path)
    t = ab.task(engine=client)(celery_work.report_and_wait)
    assert t.name == "celery_work.report_and_wait" and "engine=dask:Client" in repr(t)
    h = t.delay(fifo, "PROGRESS")
    moves = Moves(h)
    wait_for_progress(h)
    assert h.state is S.PROGRESS and h.info == {"step": 1, "of": 2}
    release(fifo, "done")
    assert h.get(timeout=30) == "done" and h.id.startswith("report_and_wait-")
    # STARTED may come before the watch does
    assert [state for state, _ in moves.seen] in ([S.STARTED, S.PROGRESS], [S.PROGRESS])


def test_a_started_task_shows_started(dask_cluster: Cluster, tmp_path: pathlib.Path) -> None:
    fifo = make_fifo(tmp_path)
    h = ab.task(engine=dask_cluster.client)(dask_work.waits_unchecked).delay(fifo)
    moves = Moves(h)
    if h.state is S.PENDING:
        moves.wait(S.STARTED)
    assert h.state is S.STARTED and h.running()
    release(fifo, "went on")
    assert h.get(timeout=30) == "went on"


def test_dask_does_not_stop_a_running_task_but_the_handle_ends_at_once(
    dask_cluster: Cluster, tmp_path: pathlib.Path
) -> None:
    fifo = make_fifo(tmp_path)
    h = ab.task(engine=dask_cluster.client)(dask_work.waits_unchecked).delay(fifo)
    moves = Moves(h)
    if h.state is S.PENDING:
        moves.wait(S.STARTED)
    assert h.cancel()
    with pytest.raises(cf.CancelledError):
        h.get(timeout=30)
    release(fifo, "still there")  # the task still reads its pipe: Dask let it run on


def test_a_task_retries_on_the_worker_and_shows_retry(client: Client, tmp_path: pathlib.Path) -> None:
    flaky = ab.task(engine=client, retry=ab.Retry(attempts=3, on=ConnectionError))(dask_work.fails_until)
    h = flaky.delay(str(tmp_path / "calls"), 2)
    moves = Moves(h)
    assert h.get(timeout=30) == 3
    retries = [info for state, info in moves.seen if state is S.RETRY]
    assert len(retries) in (1, 2)  # the first may come before the watch does
    assert all(isinstance(e, ConnectionError) for e in retries)
    assert isinstance(retries[-1].__cause__, ab.RemoteTraceback)
    assert "attempt 2 failed" in str(retries[-1])
    h = flaky.delay(str(tmp_path / "more-calls"), 5)
    with pytest.raises(ConnectionError, match="attempt 3 failed"):
        h.get(timeout=30)


def test_a_cancel_during_a_retry_backoff_revokes(client: Client, tmp_path: pathlib.Path) -> None:
    patient = ab.Retry(attempts=2, backoff=60, on=ConnectionError)
    slow = ab.task(engine=client, retry=patient)(dask_work.fails_until)
    h = slow.delay(str(tmp_path / "calls"), 1)
    moves = Moves(h)
    if h.state is not S.RETRY:
        moves.wait(S.RETRY)
    assert h.cancel()
    with pytest.raises(cf.CancelledError):
        h.get(timeout=30)


def test_a_time_limit_stops_work_at_its_checkpoint(client: Client) -> None:
    h = ab.task(engine=client, timeout=0.1)(dask_work.checks_forever).delay()
    exc = h.exception(timeout=30)
    assert isinstance(exc, ab.TimeLimitExceeded) and "time limit of 0.1 s" in str(exc)


def test_cancel_stops_a_running_task_at_its_checkpoint(client: Client) -> None:
    h = ab.task(engine=client)(celery_work.checks_until_cancelled).delay()
    wait_for_progress(h)
    assert h.cancel()
    with pytest.raises(cf.CancelledError):
        h.get(timeout=30)
    assert h.state is S.REVOKED


def test_task_options_and_what_dask_has_not(dask_cluster: Cluster) -> None:
    t = ab.task(engine=dask_cluster.client)(celery_work.add)
    h = t.apply_async((1, 2), key="mine-1", priority=10, workers=["main"], allow_other_workers=False)
    assert h.id == "mine-1" and h.get(30) == 3
    with pytest.raises(TypeError, match="countdown= is not an option of a Dask task"):
        t.apply_async((1, 2), countdown=3)
    with pytest.raises(TypeError, match=r"retry=asyncbridge\.Retry"):
        t.apply_async((1, 2), retries=2)
    with pytest.raises(TypeError, match="key= must be a non-empty str"):
        t.apply_async((1, 2), key=5)
    with pytest.raises(TypeError, match="no canvas"):
        t.s(1, 2)
    with pytest.raises(TypeError, match="not a Celery task"):
        t.celery_task  # noqa: B018
    assert t._remote is not None and t._remote.native() is celery_work.add


@pytest.mark.anyio
async def test_await_a_task_on_both_backends(client: Client) -> None:
    assert await ab.task(engine=client)(celery_work.add).delay(1, 2) == 3


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", [("asyncio", {"debug": True})], ids=["asyncio"])
async def test_an_asynchronous_client_on_the_awaiting_loop(dask_cluster: Cluster) -> None:
    """An asynchronous Dask client lives on an asyncio loop: only asyncio runs this one."""
    async with Client(dask_cluster.address, asynchronous=True, set_as_default=False) as client:
        assert await ab.wrap(client.submit(celery_work.add, 1, 2)) == 3
        assert await ab.task(engine=client)(celery_work.add).delay(2, 3) == 5
        pending = ab.wrap(parked(client))
        with pytest.raises(RuntimeError, match="event loop of its Dask client"):
            pending.get(timeout=5)  # this loop must run for the outcome to arrive: refused
        pending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await pending
        assert pending.cancelled()
        # Asking the scheduler here would block this loop: the handle says it instead.
        with pytest.raises(ab.UnknownResult, match="the Dask scheduler has no task by that key"):
            await ab.Result("no-such-key", app=client)
        future = client.submit(celery_work.add, 4, 4)
        assert await ab.Result(str(future.key), app=client) == 8


# -- Result(key, app=client) ----------------------------------------------------------------------------


def test_a_result_by_key_from_this_client_and_another(dask_cluster: Cluster) -> None:
    future = dask_cluster.client.submit(celery_work.add, 5, 5)
    assert ab.wrap(future).get(30) == 10
    h: ab.Result[int] = ab.Result(str(future.key), app=dask_cluster.client)
    assert h.id == str(future.key) and h.get(30) == 10
    assert ab.Result(h.id).get(30) == 10  # the live handle of that id in this process
    with Client(dask_cluster.address, set_as_default=False) as other:  # it never held the key
        assert ab.Result(str(future.key), app=other).get(30) == 10
        failing = dask_cluster.client.submit(celery_work.fail, "by key")
        assert isinstance(ab.wrap(failing).exception(30), ValueError)
        with pytest.raises(ValueError, match="by key"):
            ab.Result(str(failing.key), app=other).get(30)


def test_a_result_by_an_unknown_key_says_so_at_once(client: Client) -> None:
    with pytest.raises(ab.UnknownResult, match="'no-such-key': the Dask scheduler has no task by that key"):
        ab.Result("no-such-key", app=client)


# -- bad input, faults, threads ----------------------------------------------------------------------------


def test_bad_input_fails_with_a_clear_error(client: Client) -> None:
    with pytest.raises(
        TypeError, match=r"wrap\(\) takes a distributed\.Future, not a distributed\.client\.Client"
    ):
        ab.wrap(client)
    with pytest.raises(TypeError, match="bound to no Dask client"):
        ab.wrap(Future("unbound"))
    with pytest.raises(TypeError, match="needs a function"):
        ab.task(engine=client)(42)  # type: ignore[call-overload]
    t = ab.task(engine=client)(celery_work.add)
    with pytest.raises(
        TypeError, match=r"argument 1 of Dask task celery_work\.add \(lock\) cannot be pickled"
    ):
        t.delay(1, threading.Lock())  # type: ignore[arg-type]


def test_get_on_the_client_loop_raises_instead_of_deadlocking(client: Client) -> None:
    pending = ab.wrap(parked(client))
    seen: list[BaseException] = []

    def callback(_done: ab.Result[Any]) -> None:  # runs on the client's loop thread
        try:
            pending.get(timeout=5)
        except BaseException as exc:
            seen.append(exc)

    h = ab.wrap(client.submit(celery_work.add, 2, 2))
    h.add_done_callback(callback)
    assert h.get(30) == 4
    pending.cancel()
    assert pending.wait(30)
    assert len(seen) == 1 and isinstance(seen[0], RuntimeError), seen
    assert "event loop of its Dask client" in str(seen[0])


def test_a_closed_client_fails_its_handles_and_refuses_new_ones(dask_cluster: Cluster) -> None:
    other = Client(dask_cluster.address, set_as_default=False)
    future = parked(other)
    h = ab.wrap(future)
    t = ab.task(engine=other)(celery_work.add)
    other.close()
    with pytest.raises(ClosedClientError, match="its Dask client was closed first"):
        h.get(timeout=30)
    with pytest.raises(ClosedClientError, match="is closed"):
        ab.wrap(future)
    with pytest.raises(ClosedClientError, match="is closed"):
        t.delay(1, 2)


def test_a_killed_worker_fails_the_task_with_killed_worker(
    dask_cluster: Cluster, tmp_path: pathlib.Path
) -> None:
    victim = start_worker(dask_cluster.address, "victim", 1)
    try:
        victim.wait_ready()
        t = ab.task(engine=dask_cluster.client)(dask_work.report_pid_and_wait)
        h = t.apply_async((make_fifo(tmp_path),), workers=["victim"])
        wait_for_progress(h)
        assert h.info == {"pid": victim.proc.pid}
        os.kill(victim.proc.pid, signal.SIGKILL)
        with pytest.raises(KilledWorker):
            h.get(timeout=30)
        assert h.state is S.FAILURE
    finally:
        victim.stop()


def test_a_lost_scheduler_fails_the_handles_and_a_new_one_gets_new_work(tmp_path: pathlib.Path) -> None:
    scheduler, address = start_scheduler()
    worker: Process | None = None
    try:
        scheduler.wait_ready()
        with Client(address, set_as_default=False, timeout=20) as client:  # no worker yet: nothing runs
            h = ab.wrap(client.submit(celery_work.add, 1, 2))
            t = ab.task(engine=client)(celery_work.report_and_wait)
            sent = t.delay(make_fifo(tmp_path), "PROGRESS")
            scheduler.proc.kill()
            for handle in (h, sent):
                with pytest.raises(ConnectionError, match="lost the connection to the scheduler"):
                    handle.get(timeout=30)
            # A scheduler back at that address: the client reconnects, and new work reports again.
            scheduler.stop()
            scheduler, _ = start_scheduler(int(address.rpartition(":")[2]))
            worker = start_worker(address, "after", 1)
            scheduler.wait_ready()
            worker.wait_ready()
            fifo = make_fifo(tmp_path)
            again = t.delay(fifo, "PROGRESS")
            wait_for_progress(again)
            release(fifo, "reconnected")
            assert again.get(timeout=30) == "reconnected"
    finally:
        if worker is not None:
            worker.stop()
        scheduler.stop()


def test_ten_thousand_awaited_futures_add_no_thread(dask_cluster: Cluster, tmp_path: pathlib.Path) -> None:
    """10,000 wrapped futures (100 tasks, each held by 100 Future objects), awaited at once from an
    asyncio loop: waiting takes no thread, and all get their value."""
    client = dask_cluster.client
    fifo = make_fifo(tmp_path)
    gate = client.submit(celery_work.rendezvous, fifo)
    tasks = client.map(dask_work.after, range(100), gate=gate)
    futures: list[Future[int]] = [Future(task.key, client) for task in tasks for _ in range(100)]
    before = set(threading.enumerate())

    async def main() -> tuple[set[threading.Thread], list[int]]:
        handles = [ab.wrap(f) for f in futures]
        awaited = asyncio.gather(*handles)  # 10,000 awaiters, each parked on its handle
        await asyncio.sleep(0)  # one turn of this loop: every awaiter has parked
        during = set(threading.enumerate())
        assert not any(h.done() for h in handles)
        release(fifo)
        return during, list(await awaited)

    during, values = asyncio.run(main())
    after = threading.active_count()
    print(f"threads: {len(before)} before, {len(during)} while 10,000 handles are awaited, {after} after")
    # The embedded cluster, alive in this process for the module, may start a pool thread of its own
    # meanwhile (Dask-...); anything else is the adapter's.
    new = [t.name for t in during - before if "Dask-" not in t.name]
    assert new == [] and len(during) - len(before) <= 2, (new, [t.name for t in during - before])
    assert values == [i for i in range(100) for _ in range(100)]


def test_the_adapter_is_found_by_the_package_it_handles() -> None:
    found = {ep.name: ep.value for ep in entry_points(group="asyncbridge.adapters")}
    assert found["distributed"] == ab_dask.__name__
