"""Race stress, issue #4: ``cancel()`` against completion, from every place completion comes from.

Every iteration releases the racing threads with a ``threading.Barrier`` under ``tight_switching``,
then checks the oracle: exactly one terminal state; ``cf.wait``, ``get()``, ``result()``,
``exception()``, ``await`` and the done-callbacks agree on it; each callback ran exactly once; a value
the work produced is delivered (``cancel()`` returning True never throws a produced result away:
REVOKED only if the work really stopped); and states only moved forward (every write of a handle's
state is audited against the table of legal moves, see ``audit``).

Tuning. The thread that arrives last at a barrier runs on while the other one wakes up, tens of
microseconds later, which alone would decide almost every race the same way. Each variant therefore
delays one side by a busy spin whose length a :class:`Staircase` adapts after every iteration (longer
for the side that keeps winning), plus jitter: the harness keeps racing at the crossover on any
machine and under any load. The spin changes who tends to win, never what is legal; every iteration is
checked in full. The shares asserted at the end prove the race really happened.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import queue
import threading
from collections import Counter
from collections.abc import Callable
from functools import partial
from typing import Any

import pytest
from conftest import SOAK  # type: ignore[import-not-found, unused-ignore]  # found when mypy runs on tests/
from oracle import (  # type: ignore[import-not-found, unused-ignore]
    HANG,
    TERMINAL,
    AwaitBatch,
    Calls,
    Outcome,
    S,
    Staircase,
    await_outcome,
    read_sync,
    same,
    spin,
    state_slot,
)

import asyncbridge as ab
from asyncbridge._result import Result

pytestmark = pytest.mark.stress

# CI iterations per variant (50,000 in all); ASYNCBRIDGE_SOAK=1 multiplies them.
ITERATIONS = {
    "thread_work": 12_000,
    "blank_handle": 12_000,
    "asyncio_task": 8_000,
    "from_callback": 10_000,
    "awaiter_timeout": 8_000,
}
# Thread work spins this long between its checkpoint() and its return, so that a cancel() accepted
# too late to stop it (the work must then end SUCCESS) is a common outcome, not a rare one.
AFTER_CHECKPOINT = 1_000
MIN_SHARE = 0.20  # each outcome (cancelled, completed) in at least this share of a variant's runs

RecordProperty = Callable[[str, object], None]


class Helper:
    """A thread that runs one job at a time for the harness; a job's exception fails the test."""

    def __init__(self, name: str) -> None:
        self.jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self.finished = threading.Semaphore(0)
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._serve, name=name)
        self.thread.start()

    def _serve(self) -> None:
        while (job := self.jobs.get()) is not None:
            try:
                job()
            except BaseException as exc:
                self.errors.append(exc)
            self.finished.release()

    def run(self, job: Callable[[], None]) -> None:
        self.jobs.put(job)

    def wait(self) -> None:
        assert self.finished.acquire(timeout=HANG), "helper job hung"
        if self.errors:
            raise self.errors.pop()

    def close(self) -> None:
        self.jobs.put(None)
        self.thread.join(HANG)


class LoopThread:
    """An asyncio loop running in its own thread (not the library's background loop)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), name="race-loop")
        self.thread.start()
        assert ready.wait(HANG)

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(ready.set)
        self.loop.run_forever()

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn()`` on the loop thread and return its result."""
        box: queue.SimpleQueue[tuple[bool, Any]] = queue.SimpleQueue()

        def run() -> None:
            try:
                box.put((True, fn()))
            except BaseException as exc:
                box.put((False, exc))

        self.loop.call_soon_threadsafe(run)
        ok, value = box.get(timeout=HANG)
        if not ok:
            raise value
        return value

    def close(self) -> None:
        async def drain() -> None:
            me = asyncio.current_task()
            tasks = [t for t in asyncio.all_tasks() if t is not me]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(drain(), self.loop).result(HANG)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(HANG)
        self.loop.close()


def report(record_property: RecordProperty, name: str, n: int, seen: Counter[str], **extra: object) -> None:
    print(f"\n[{name}] {n} iterations: {dict(seen)} {extra}")
    record_property(f"{name}_iterations", n)
    record_property(f"{name}_outcomes", dict(seen))
    for key, value in extra.items():
        record_property(f"{name}_{key}", value)


def assert_shares(seen: Counter[str], n: int, share: float = MIN_SHARE) -> None:
    """Both outcomes really happened: the harness still races."""
    cancelled = seen["REVOKED"]
    completed = n - cancelled
    assert min(cancelled, completed) >= share * n, (dict(seen), share)


# The two outcomes (REVOKED, completed) must each reach MIN_SHARE (issue #4). Which side of a
# completed run lost the race (cancel refused, or accepted too late) depends on the machine's
# load far more: measured 5-38% on an idle 2-core machine, 0.3% with a second test suite on the
# cores. Each sub-outcome must be seen SUB_MIN_COUNT times, to prove that interleaving is exercised.
SUB_MIN_COUNT = 10


def assert_share_of(seen: Counter[str], key: str, n: int) -> None:
    """A sub-outcome the oracle must see, out of ``n`` runs, to mean something."""
    assert seen[key] >= min(SUB_MIN_COUNT, n), (key, dict(seen), n)


class Trial:
    """One iteration's shared facts, handed to the racing functions as an argument.

    ``skew`` follows :class:`Staircase`: the cancelling side spins ``skew``, the completing side
    ``-skew`` (a negative spin is none).
    """

    __slots__ = ("delivered", "go", "produced", "skew", "stopped", "value")

    def __init__(self, skew: int) -> None:
        self.go = threading.Barrier(2)
        self.skew = skew
        self.value = object()
        self.produced: list[object] = []  # the work returned this value
        self.stopped: list[bool] = []  # the work saw the cancel request and stopped
        self.delivered: list[bool] = []  # set_result() was accepted (True) or refused (False)


def checkpointed_work(t: Trial) -> object:
    """Thread work that checks for cancellation once, right after the barrier."""
    t.go.wait(HANG)
    spin(-t.skew)
    try:
        ab.checkpoint()
    except ab.Cancelled:
        t.stopped.append(True)
        raise
    t.produced.append(t.value)
    spin(AFTER_CHECKPOINT)  # past the check, not yet returned: a cancel() landing here is accepted
    return t.value


def set_value(t: Trial, h: ab.Result[object], *_trigger: object) -> None:
    """Complete a blank handle and record whether that won (also used as a done-callback)."""
    spin(-t.skew)
    try:
        h.set_result(t.value)
    except cf.InvalidStateError:
        t.delivered.append(False)
    else:
        t.delivered.append(True)


def after_barrier(t: Trial, fn: Callable[[], object]) -> None:
    t.go.wait(HANG)
    fn()


async def task_work(t: Trial) -> object:
    """A task that yields once after the barrier: a cancel queued before that step stops it."""
    t.go.wait(HANG)  # blocks its loop until the cancelling thread arrives: intended
    spin(-t.skew)
    try:
        await asyncio.sleep(0)
    except asyncio.CancelledError:
        t.stopped.append(True)
        raise
    t.produced.append(t.value)
    return t.value


# -- (a) thread work: checkpoint() against cancel() -----------------------------------------------


def test_cancel_races_thread_work(
    tight_switching: None, audit: list[str], quiet_library: None, record_property: RecordProperty
) -> None:
    n = ITERATIONS["thread_work"] * SOAK
    seen: Counter[str] = Counter()
    stair = Staircase()
    awaits = AwaitBatch()
    all_calls: list[Calls] = []
    try:
        for _ in range(n):
            t = Trial(stair.next())
            h = ab.run_in_thread(checkpointed_work, t)
            calls = Calls(3)
            h.add_done_callback(calls.first)
            t.go.wait(HANG)
            spin(t.skew)
            accepted = h.cancel()
            h.add_done_callback(calls.second)  # during or after completion
            outcome = read_sync(h)
            h.add_done_callback(calls.third)  # after: runs here and now
            assert calls.ran.wait(HANG)
            calls.check(h.state)
            all_calls.append(calls)
            awaits.add(h, outcome)
            assert h.cancel_requested() is (accepted or outcome[0] == "REVOKED")

            if outcome[0] == "REVOKED":
                # REVOKED only if the work really stopped; cancel() was accepted
                assert accepted and t.stopped == [True] and not t.produced, (accepted, t.stopped, t.produced)
                seen["REVOKED"] += 1
            else:
                # the produced value is delivered even though cancel() may have said True
                assert outcome == ("SUCCESS", t.value) and t.produced == [t.value] and not t.stopped
                seen["SUCCESS" if accepted else "SUCCESS, cancel refused"] += 1
            stair.update(outcome[0] == "REVOKED")
    finally:
        awaits.close()
    for calls in all_calls:  # a duplicate that came late shows here
        assert len(calls.seen) == 3, calls.seen
    report(record_property, "thread_work", n, seen, awaited=awaits.checked, final_skew=stair.skew)
    assert_shares(seen, n)
    # Completed splits into a cancel() accepted too late to stop the work (about 30% of runs on 2
    # cores) and one refused because the work had ended (about 20%); asserted lower, each must occur.
    assert_share_of(seen, "SUCCESS", n)
    assert_share_of(seen, "SUCCESS, cancel refused", n)


# -- (b) and (d): a blank handle completed by set_result(), directly or from a done-callback -------


def race_blank(n: int, from_callback: bool, record_property: RecordProperty, name: str) -> None:
    """cancel() against set_result() on a blank handle. A blank PENDING handle has no hooks, so
    cancel() revokes it at once: exactly one of the two calls wins, and the loser learns it
    (cancel() returns False, or set_result() raises InvalidStateError)."""
    seen: Counter[str] = Counter()
    stair = Staircase()
    awaits = AwaitBatch()
    helper = Helper(f"race-{name}")
    all_calls: list[Calls] = []
    trigger_calls: list[Calls] = []
    try:
        for _ in range(n):
            t = Trial(stair.next())
            h: ab.Result[object] = ab.Result()
            trigger: ab.Result[None] | None = None
            if from_callback:
                # the helper completes `trigger`; its middle done-callback completes `h`
                trigger = ab.Result()
                tcalls = Calls(2)
                trigger.add_done_callback(tcalls.first)
                trigger.add_done_callback(partial(set_value, t, h))
                trigger.add_done_callback(tcalls.second)
                trigger_calls.append(tcalls)
                helper.run(partial(after_barrier, t, partial(trigger.set_result, None)))
            else:
                helper.run(partial(after_barrier, t, partial(set_value, t, h)))
            calls = Calls(3)
            h.add_done_callback(calls.first)
            t.go.wait(HANG)
            spin(t.skew)
            accepted = h.cancel()
            h.add_done_callback(calls.second)
            helper.wait()
            outcome = read_sync(h)
            h.add_done_callback(calls.third)
            assert calls.ran.wait(HANG)
            calls.check(h.state)
            all_calls.append(calls)
            awaits.add(h, outcome)
            if trigger is not None:
                assert read_sync(trigger) == ("SUCCESS", None)

            # exactly one side won, and each side knows whether it did
            if outcome[0] == "REVOKED":
                assert accepted and t.delivered == [False], (accepted, t.delivered)
            else:
                assert outcome == ("SUCCESS", t.value) and t.delivered == [True] and not accepted
            seen[outcome[0]] += 1
            stair.update(outcome[0] == "REVOKED")
    finally:
        helper.close()
        awaits.close()
    for calls in all_calls:
        assert len(calls.seen) == 3, calls.seen
    for calls in trigger_calls:
        assert len(calls.seen) == 2, calls.seen
    report(record_property, name, n, seen, awaited=awaits.checked, final_skew=stair.skew)
    assert_shares(seen, n)


def test_cancel_races_set_result_on_blank_handle(
    tight_switching: None, audit: list[str], quiet_library: None, record_property: RecordProperty
) -> None:
    race_blank(ITERATIONS["blank_handle"] * SOAK, False, record_property, "blank_handle")


def test_cancel_races_completion_from_a_done_callback(
    tight_switching: None, audit: list[str], quiet_library: None, record_property: RecordProperty
) -> None:
    race_blank(ITERATIONS["from_callback"] * SOAK, True, record_property, "from_callback")


# -- (c) an asyncio task on a loop in another thread, wrapped, against cancel() ------------------


async def watch(h: ab.Result[Any], into: queue.SimpleQueue[Outcome]) -> None:
    into.put(await await_outcome(h))


def test_cancel_races_asyncio_task_on_another_loop(
    tight_switching: None, audit: list[str], quiet_library: None, record_property: RecordProperty
) -> None:
    """The task yields once after the barrier; cancel() from this thread reaches it on its loop either
    before that step (REVOKED: the task really stopped) or after it (SUCCESS).

    Even iterations wrap the task on its own loop and await the handle there (the path that awaits
    the task directly); odd ones wrap it from this thread (the binding hops onto the loop), and the
    handle is awaited on the task's loop as well, from a coroutine started from here.
    """
    n = ITERATIONS["asyncio_task"] * SOAK
    seen: Counter[str] = Counter()
    stair = Staircase()
    awaits = AwaitBatch()
    lt = LoopThread()
    all_calls: list[Calls] = []

    def start(
        t: Trial, on_loop: bool, awaited: queue.SimpleQueue[Outcome]
    ) -> tuple[asyncio.Task[object], Any]:
        task = lt.loop.create_task(task_work(t))
        if not on_loop:
            return task, None
        h = ab.wrap(task)
        return task, (h, lt.loop.create_task(watch(h, awaited)))

    try:
        for i in range(n):
            t = Trial(stair.next())
            awaited: queue.SimpleQueue[Outcome] = queue.SimpleQueue()
            task, bound = lt.call(partial(start, t, i % 2 == 0, awaited))
            if bound is None:
                h = ab.wrap(task)
                watcher: object = asyncio.run_coroutine_threadsafe(watch(h, awaited), lt.loop)
            else:
                h, watcher = bound
            assert h.state is S.STARTED
            calls = Calls(3)
            h.add_done_callback(calls.first)
            h.add_done_callback(calls.second, loop=lt.loop)
            t.go.wait(HANG)
            spin(t.skew)
            accepted = h.cancel()
            outcome = read_sync(h)
            h.add_done_callback(calls.third)
            assert calls.ran.wait(HANG)
            calls.check(h.state)
            all_calls.append(calls)
            assert same(awaited.get(timeout=HANG), outcome)
            del watcher  # held until here: an awaiter task nobody references may be collected
            awaits.add(h, outcome)

            if outcome[0] == "REVOKED":
                assert accepted and t.stopped == [True] and not t.produced and task.cancelled()
                seen["REVOKED"] += 1
            else:
                assert outcome == ("SUCCESS", t.value) and t.produced == [t.value] and not t.stopped
                assert task.result() is t.value
                seen["SUCCESS" if accepted else "SUCCESS, cancel refused"] += 1
            stair.update(outcome[0] == "REVOKED")
    finally:
        lt.close()
        awaits.close()
    for calls in all_calls:
        assert len(calls.seen) == 3, calls.seen
    report(record_property, "asyncio_task", n, seen, awaited=awaits.checked, final_skew=stair.skew)
    assert_shares(seen, n)
    # As for thread work: accepted too late (about 33%) and refused (about 16%) both occur.
    assert_share_of(seen, "SUCCESS", n)
    assert_share_of(seen, "SUCCESS, cancel refused", n)


# -- (e) an awaiter's timeout against completion ----------------------------------------------------


def second_then_set(calls: Calls, ev: asyncio.Event, h: ab.Result[Any]) -> None:
    calls.second(h)
    ev.set()  # this callback runs on the loop that owns `ev`


def test_awaiter_timeout_races_completion(
    tight_switching: None, audit: list[str], quiet_library: None, record_property: RecordProperty
) -> None:
    """``asyncio.wait_for(h, tiny)`` on this thread's loop against completion from another thread.

    The timed-out awaiter cancels the work, as awaiting a task does. Odd iterations race a blank
    handle completed by ``set_result`` from a helper thread (the awaiter's cancel revokes it at once);
    even ones race thread work whose ``checkpoint()`` sees the awaiter's cancel. A ticker task keeps
    the loop out of its selector, so the timer fires on time rather than a millisecond late.
    """
    n = ITERATIONS["awaiter_timeout"] * SOAK
    seen: Counter[str] = Counter()
    stairs = {"blank": Staircase(), "thread": Staircase()}
    helper = Helper("race-completer")
    all_calls: list[Calls] = []
    tiny = 20e-6
    ticking = True

    async def ticker() -> None:
        while ticking:  # noqa: ASYNC110  # busy on purpose: keeps the loop out of its selector
            await asyncio.sleep(0)

    async def harness() -> None:
        loop = asyncio.get_running_loop()
        for i in range(n):
            kind = "thread" if i % 2 == 0 else "blank"
            stair = stairs[kind]
            t = Trial(stair.next())
            h: ab.Result[object]
            if kind == "blank":
                h = ab.Result()
                helper.run(partial(after_barrier, t, partial(set_value, t, h)))
            else:
                h = ab.run_in_thread(checkpointed_work, t)
            calls = Calls(3)
            on_loop = asyncio.Event()
            h.add_done_callback(calls.first)
            h.add_done_callback(partial(second_then_set, calls, on_loop), loop=loop)
            t.go.wait(HANG)  # blocks this loop until the completer arrives: intended
            spin(t.skew)
            got: Outcome
            try:
                got = ("SUCCESS", await asyncio.wait_for(h, tiny))
            except TimeoutError:
                got = ("TIMEOUT", None)
            if kind == "blank":
                helper.wait()
            outcome = read_sync(h)  # neither kind of handle belongs to this loop: get() may block here
            await asyncio.wait_for(on_loop.wait(), HANG)
            h.add_done_callback(calls.third)
            assert calls.ran.wait(HANG)
            calls.check(h.state)
            all_calls.append(calls)
            assert same(await await_outcome(h), outcome)

            if got[0] == "SUCCESS":
                assert got[1] is t.value and outcome == ("SUCCESS", t.value), (got, outcome)
            if kind == "blank":
                assert t.delivered == [outcome[0] == "SUCCESS"], (t.delivered, outcome)
                assert outcome[0] == "REVOKED" or outcome[1] is t.value
            elif outcome[0] == "REVOKED":
                assert t.stopped == [True] and not t.produced
            else:
                assert outcome == ("SUCCESS", t.value) and t.produced == [t.value] and not t.stopped
            cancel_won = outcome[0] == "REVOKED"
            seen[f"{kind}: {outcome[0]}, awaiter {got[0]}"] += 1
            seen[f"{kind}: {outcome[0]}"] += 1
            seen[outcome[0]] += 1
            stair.update(cancel_won)

    async def main() -> None:
        nonlocal ticking
        tick = asyncio.get_running_loop().create_task(ticker())
        try:
            await harness()
        finally:
            ticking = False
            await tick

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(main())
    finally:
        helper.close()
        loop.close()
    for calls in all_calls:
        assert len(calls.seen) == 3, calls.seen
    report(record_property, "awaiter_timeout", n, seen, final_skews={k: s.skew for k, s in stairs.items()})
    assert_shares(seen, n)
    for kind in stairs:
        runs = seen[f"{kind}: REVOKED"] + seen[f"{kind}: SUCCESS"]
        assert_shares(Counter({"REVOKED": seen[f"{kind}: REVOKED"]}), runs)
    # The awaiter timed out and cancelled, but the thread work was past its checkpoint: the handle
    # must end SUCCESS (about 30% of thread runs on 2 cores).
    assert_share_of(seen, "thread: SUCCESS, awaiter TIMEOUT", n // 2)


# -- concurrent.futures.wait on a wrapped foreign future (found by the oracle's cf.wait door) --------


def test_cf_wait_on_wrapped_running_cf_future_does_not_deadlock() -> None:
    """``cf.wait`` reads ``_state`` while holding the handle's lock (cf's ``_condition``); for a
    wrapped cf.Future that runs while its handle is still PENDING, ``_state`` polls the future and
    moves the handle to STARTED, which takes that same lock again."""
    fut: cf.Future[int] = cf.Future()
    h = ab.wrap(fut)
    assert fut.set_running_or_notify_cancel()
    box: list[tuple[set[Any], set[Any]]] = []
    t = threading.Thread(target=lambda: box.append(cf.wait([h], timeout=0)), name="cf-wait", daemon=True)
    t.start()
    t.join(HANG)
    hung = t.is_alive()
    if hung:
        fut.set_result(1)  # release the stuck thread before failing
    assert not hung, "cf.wait([h]) deadlocked on the handle's own lock"
    assert box[0][0] == set() and h.state is S.STARTED
    fut.set_result(1)
    assert h.get(timeout=HANG) == 1
    assert cf.wait([h], timeout=HANG).done == {h}


READER_GRACE = (
    1.0  # how long a transition lets the reader in: the run's length depends on it, never the verdict
)


def read_unlocked(h: ab.Result[Any]) -> tuple[object, object, object]:
    """What a reader that finds the handle terminal gets: get(), exception(), info."""
    try:
        exc: object = h.exception(timeout=0)
    except BaseException as e:
        exc = e
    return h.get(timeout=0, propagate=False), exc, h.info


@pytest.mark.parametrize("end", ["set_result", "set_exception", "cancel"])
def test_a_reader_that_sees_the_terminal_state_sees_the_outcome(
    monkeypatch: pytest.MonkeyPatch, end: str
) -> None:
    """A handle must store its outcome before it publishes a terminal state.

    ``get()``, ``exception()``, ``await`` and ``info`` read without the lock once the state is
    terminal. Seam: the state slot's setter lets a reader thread in right after each terminal write,
    while the completing call is still inside its transition (a reader that takes the lock waits for
    the transition to end, which is just as correct). Found by the awaiter-timeout race, where
    ``await asyncio.wait_for(h, tiny)`` returned None for a handle whose value was an object.
    """
    slot = state_slot()
    readers: list[threading.Thread] = []
    reads: list[tuple[object, object, object]] = []

    def put(h: Result[Any], new: S) -> None:
        slot.__set__(h, new)
        if new in TERMINAL:
            reader = threading.Thread(target=lambda: reads.append(read_unlocked(h)), name="reader")
            readers.append(reader)
            reader.start()
            reader.join(READER_GRACE)

    monkeypatch.setattr(Result, "_st", property(lambda h: slot.__get__(h, Result), put))
    h: ab.Result[object] = ab.Result()
    value, error = object(), ValueError("boom")
    if end == "set_result":
        h.set_result(value)
    elif end == "set_exception":
        h.set_exception(error)
    else:
        assert h.cancel()
    monkeypatch.undo()
    for reader in readers:
        reader.join(HANG)
    after = read_unlocked(h)
    assert len(reads) == 1
    got, exc, info = reads[0]
    if end == "set_result":
        assert after == (value, None, value)
        assert (got, exc, info) == (value, None, value), "the reader saw SUCCESS before the value"
    elif end == "set_exception":
        assert after == (error, error, error)
        assert (got, exc, info) == (error, error, error), "the reader saw FAILURE before the exception"
    else:
        assert all(isinstance(x, cf.CancelledError) for x in after), after
        assert all(isinstance(x, cf.CancelledError) for x in (got, exc, info)), (
            "the reader saw REVOKED before the CancelledError was stored",
            got,
            exc,
            info,
        )
