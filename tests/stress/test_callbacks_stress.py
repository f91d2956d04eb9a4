"""Done-callbacks under stress (issue #4): raising callbacks, and callbacks added and removed while
the handle completes on another thread.

- A callback that raises (even ``SystemExit``) is logged once to the ``asyncbridge`` logger; the
  other callbacks still run, and the thread or loop that completed the work lives on and serves more.
- Every registration of a callback runs exactly once or is removed by ``remove_done_callback``
  (which returns how many registrations it removed): never both, never neither.
"""

from __future__ import annotations

import logging
import random
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from conftest import SOAK  # type: ignore[import-not-found, unused-ignore]  # found when mypy runs on tests/

import asyncbridge as ab

pytestmark = pytest.mark.stress

HANG = 10.0  # a hang guard only
HANDLES = 1_000 * SOAK
ROUNDS = 3_000 * SOAK
ADDERS = 3  # threads adding and removing callbacks while the handle completes
PER_ADDER = 10  # callbacks each adder registers per round


class Boom(Exception):
    pass


RecordProperty = Callable[[str, object], None]


@pytest.fixture
def library_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.ERROR, logger="asyncbridge")
    return caplog


# -- raising callbacks ------------------------------------------------------------------------------


def thread_work(gate: threading.Event, i: int) -> int:
    assert gate.wait(HANG)
    return i


async def loop_work(gate: ab.Result[None], i: int) -> int:
    await gate
    return i


@pytest.mark.parametrize("where", ["thread", "loop"])
@pytest.mark.parametrize("error", [Boom, SystemExit], ids=["Exception", "SystemExit"])
def test_a_raising_callback_is_logged_once_and_the_others_run(
    library_log: pytest.LogCaptureFixture,
    record_property: RecordProperty,
    where: str,
    error: type[BaseException],
) -> None:
    """1,000 handles x 3 callbacks, the middle one raising; completed by a worker of
    ``run_in_thread`` (``thread``) or on the background loop by ``spawn`` (``loop``)."""
    first: Counter[int] = Counter()
    third: Counter[int] = Counter()
    raised: dict[int, BaseException] = {}
    completers: set[threading.Thread] = set()
    all_third = threading.Semaphore(0)
    lock = threading.Lock()

    def on_first(h: ab.Result[int]) -> None:
        with lock:
            first[h.result(0)] += 1
            completers.add(threading.current_thread())

    def on_middle(h: ab.Result[int]) -> None:
        exc = error(h.result(0))
        raised[h.result(0)] = exc
        raise exc

    def on_third(h: ab.Result[int]) -> None:
        with lock:
            third[h.result(0)] += 1
        all_third.release()

    thread_gate = threading.Event()
    loop_gate: ab.Result[None] = ab.Result()
    handles: list[ab.Result[int]] = []
    for i in range(HANDLES):
        h = (
            ab.run_in_thread(thread_work, thread_gate, i)
            if where == "thread"
            else ab.spawn(loop_work(loop_gate, i))
        )
        h.add_done_callback(on_first)
        h.add_done_callback(on_middle)
        h.add_done_callback(on_third)
        handles.append(h)
    assert not any(h.done() for h in handles)  # every callback was registered before completion
    thread_gate.set()
    loop_gate.set_result(None)

    assert [h.get(timeout=HANG) for h in handles] == list(range(HANDLES))
    for _ in range(HANDLES):  # callbacks may run after get() returns: wait for the last of each
        assert all_third.acquire(timeout=HANG)
    expected = Counter(range(HANDLES))
    assert first == expected and third == expected  # 1,000 / 1,000 each, exactly once
    records = [r for r in library_log.records if r.name == "asyncbridge"]
    logged = [r.exc_info[1] for r in records if r.exc_info]
    assert len(records) == len(logged) == HANDLES, len(records)
    assert Counter(id(e) for e in logged) == Counter(id(e) for e in raised.values())  # one record each
    assert all(r.levelno == logging.ERROR for r in records)

    # The completing threads (pool workers, or the background loop's thread) live on and serve more.
    assert completers and all(t.is_alive() for t in completers), completers
    names = {t.name for t in completers}
    if where == "thread":
        assert all(name.startswith("asyncbridge-worker-") for name in names), names
    else:
        assert names == {"asyncbridge-loop"}, names
    more_thread_gate = threading.Event()
    more_loop_gate: ab.Result[None] = ab.Result()
    served: set[threading.Thread] = set()
    more_done = threading.Semaphore(0)

    def note_thread(h: ab.Result[int]) -> None:
        served.add(threading.current_thread())
        more_done.release()

    more: list[ab.Result[int]] = []
    for i in range(100):
        m = (
            ab.run_in_thread(thread_work, more_thread_gate, i)
            if where == "thread"
            else ab.spawn(loop_work(more_loop_gate, i))
        )
        m.add_done_callback(on_middle)
        m.add_done_callback(note_thread)
        more.append(m)
    more_thread_gate.set()
    more_loop_gate.set_result(None)
    assert [m.get(timeout=HANG) for m in more] == list(range(100))
    for _ in more:  # let every callback finish here, not log into the next test
        assert more_done.acquire(timeout=HANG)
    assert all(t.is_alive() for t in completers)
    assert all(t.is_alive() and t.name.startswith("asyncbridge-") for t in served), served
    if where == "loop":
        assert served == completers  # the one background loop, still running
    print(
        f"\n[raising callbacks, {where}, {error.__name__}] {HANDLES} handles x 3 callbacks: "
        f"first {first.total()}, third {third.total()}, log records {len(records)}; "
        f"completing threads {sorted(t.name for t in completers)}"
    )
    record_property("handles", HANDLES)
    record_property("log_records", len(records))


# -- callbacks added and removed during completion ----------------------------------------------------


class Registration:
    """One callback, added ``times`` times by one thread; counts its runs and removals."""

    __slots__ = ("removed", "runs", "times")

    def __init__(self, times: int) -> None:
        self.times = times
        self.runs: list[str] = []  # the thread names it ran on
        self.removed = 0

    def __call__(self, h: ab.Result[Any]) -> None:
        self.runs.append(threading.current_thread().name)


def test_callbacks_added_and_removed_during_completion(
    tight_switching: None, record_property: RecordProperty
) -> None:
    """Adder threads register callbacks (some twice) and remove some of them while this thread
    completes the handle; every registration runs once or is removed, never both or neither."""
    seen: Counter[str] = Counter()
    start = threading.Barrier(ADDERS + 1)
    end = threading.Barrier(ADDERS + 1)
    current: list[ab.Result[int]] = []
    plans: list[list[list[Registration]]] = [[] for _ in range(ADDERS)]
    errors: list[BaseException] = []

    def adder(k: int) -> None:
        try:
            for _ in range(ROUNDS):
                start.wait(HANG)
                h = current[0]
                for reg in plans[k][-1]:
                    for _ in range(reg.times):
                        h.add_done_callback(reg)
                    if random.random() < 0.5:
                        reg.removed = h.remove_done_callback(reg)
                end.wait(HANG)
        except BaseException as exc:
            errors.append(exc)
            start.abort()
            end.abort()

    threads = [threading.Thread(target=adder, args=(k,), name=f"adder-{k}") for k in range(ADDERS)]
    for t in threads:
        t.start()
    try:
        for r in range(ROUNDS):
            h: ab.Result[int] = ab.Result()
            current[:] = [h]
            for k in range(ADDERS):
                plans[k].append([Registration(random.choice((1, 1, 2))) for _ in range(PER_ADDER)])
            delay = random.randrange(0, 400)
            start.wait(HANG)
            for _ in range(delay):  # a random skew: completion lands anywhere in the adders' run
                pass
            h.set_result(r)
            end.wait(HANG)
            for k in range(ADDERS):
                for reg in plans[k][-1]:
                    runs = len(reg.runs)
                    assert runs + reg.removed == reg.times, (runs, reg.removed, reg.times, reg.runs)
                    # the removal comes after every add of its callback: all pending, or none
                    assert reg.removed in (0, reg.times), (reg.removed, reg.times)
                    seen["removed"] += reg.removed
                    for name in reg.runs:
                        seen[
                            "ran in the completing thread" if name == "MainThread" else "ran at once on add"
                        ] += 1
            assert h.remove_done_callback(plans[0][-1][0]) == 0  # done: nothing left to remove
    finally:
        if errors:
            start.abort()
        for t in threads:
            t.join(HANG)
    assert not errors, errors
    regs = [reg for plan in plans for rnd in plan for reg in rnd]
    total = sum(reg.times for reg in regs)
    assert all(len(reg.runs) + reg.removed == reg.times for reg in regs)  # nothing ran late, twice
    print(
        f"\n[add/remove during completion] {ROUNDS} rounds, {len(regs)} callbacks, {total} registrations: "
        f"{dict(seen)}"
    )
    record_property("registrations", total)
    record_property("outcomes", dict(seen))
    # the race really happened: registrations ran on both sides of the completion, and were removed
    assert seen["ran in the completing thread"] and seen["ran at once on add"] and seen["removed"], seen
