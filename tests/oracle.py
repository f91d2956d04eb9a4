"""The oracle of the reliability suite (issue #4), shared by every race and fault test.

After a scenario, for every handle: exactly one terminal state; ``cf.wait``, ``get()``, ``result()``,
``exception()``, ``await`` and the done-callbacks agree on it (:func:`read_sync`, :class:`AwaitBatch`,
:class:`Calls`); states only moved forward (the ``audit`` fixture checks every write of a handle's
state against ``LEGAL``). :class:`Staircase` keeps a race at its crossover on any machine.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import logging
import random
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any, TypeVar

import pytest

import asyncbridge as ab
from asyncbridge._result import Result

S = ab.State
T = TypeVar("T")
TERMINAL = frozenset({S.SUCCESS, S.FAILURE, S.REVOKED})
HANG = 10.0  # a hang guard only: it fires on a bug, never decides an outcome
TERMINAL_WITHIN = 5.0  # the bound: every handle terminal within 5 s

# The forward moves, from docs/architecture.md ("The state machine"), kept apart from the library's own table;
# RETRY -> FAILURE (a retry that can no longer run) is forward too.
LEGAL: dict[S, frozenset[S]] = {
    S.PENDING: frozenset({S.STARTED, S.REVOKED, S.SUCCESS, S.FAILURE}),
    S.STARTED: frozenset({S.PROGRESS, S.RETRY, S.SUCCESS, S.FAILURE, S.REVOKED}),
    S.PROGRESS: frozenset({S.PROGRESS, S.RETRY, S.SUCCESS, S.FAILURE, S.REVOKED}),
    S.RETRY: frozenset({S.STARTED, S.REVOKED, S.FAILURE}),
    S.SUCCESS: frozenset(),
    S.FAILURE: frozenset(),
    S.REVOKED: frozenset(),
}

Outcome = tuple[str, object]  # ("SUCCESS", value) | ("REVOKED", None) | ("FAILURE", exc)


def state_slot() -> Any:
    """The descriptor of the slot that holds a handle's state."""
    for klass in Result.__mro__:
        if "_st" in vars(klass):
            return vars(klass)["_st"]
    raise AssertionError("Result no longer keeps its state in `_st`: update this seam")


@pytest.fixture
def audit(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Audit every write of any handle's state; the test fails on an illegal move.

    ``Result._st`` is a slot: its descriptor is wrapped in a property that checks each write against
    ``LEGAL`` (a terminal state is never written again) before storing it. Reads and writes go on as
    before; only the check is added.
    """
    slot = state_slot()
    bad: list[str] = []

    def get(h: Result[Any]) -> S:
        return slot.__get__(h, Result)  # type: ignore[no-any-return]

    def put(h: Result[Any], new: S) -> None:
        try:
            old = slot.__get__(h, Result)
        except AttributeError:  # __init__'s first write
            old = None
        if (old is None and new is not S.PENDING) or (old is not None and new not in LEGAL[old]):
            bad.append(f"{old} -> {new}")
        slot.__set__(h, new)

    monkeypatch.setattr(Result, "_st", property(get, put))
    yield bad
    assert not bad, f"illegal state moves: {Counter(bad)}"


@pytest.fixture
def quiet_library(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Nothing in a race may make the library log (a waiter that failed to wake, a dropped callback)."""
    yield
    records = [r for r in caplog.get_records("call") if r.name.startswith("asyncbridge")]
    assert not records, [r.getMessage() for r in records]


def spin(n: int) -> None:
    """Busy-wait about ``n`` loop steps (tens of ns each), holding no lock: a skew, not a sync."""
    for _ in range(n):
        pass


class Staircase:
    """The skew between the two sides, adapted so that each side wins about half the races.

    ``next()`` > 0: the cancelling side spins that long before it cancels (helps completion);
    < 0: the completing side spins (helps cancellation). ``update(cancel_won)`` moves the skew
    against the winner; the step halves at each reversal and doubles after a run of the same
    outcome, so it finds the crossover fast and follows it when the machine's load changes.
    """

    def __init__(
        self, step: int = 512, floor: int = 16, jitter: int = 64, limit: int = 200_000, start: int = 0
    ) -> None:
        self.skew = start
        self.step = step
        self.floor = floor
        self.jitter = jitter
        self.limit = limit
        self.last: bool | None = None
        self.run = 0

    def next(self) -> int:
        return self.skew + random.randint(-self.jitter, self.jitter)

    def update(self, cancel_won: bool) -> None:
        if cancel_won == self.last:
            self.run += 1
            if self.run >= 4:
                self.step *= 2
                self.run = 0
        else:
            self.step = max(self.floor, self.step // 2)
            self.run = 0
        self.last = cancel_won
        self.skew += self.step if cancel_won else -self.step
        self.skew = max(-self.limit, min(self.limit, self.skew))


class Calls:
    """Done-callbacks of one handle; each records the state it saw, so duplicates show."""

    __slots__ = ("expected", "ran", "seen")

    def __init__(self, expected: int) -> None:
        self.seen: list[tuple[str, S]] = []
        self.expected = expected
        self.ran = threading.Event()

    def watch(self, h: ab.Result[T]) -> ab.Result[T]:
        """Add the three callbacks to ``h``; return it."""
        for callback in (self.first, self.second, self.third)[: self.expected]:
            h.add_done_callback(callback)
        return h

    def _record(self, tag: str, h: ab.Result[Any]) -> None:
        self.seen.append((tag, h.state))
        if len(self.seen) >= self.expected:
            self.ran.set()

    def first(self, h: ab.Result[Any]) -> None:
        self._record("first", h)

    def second(self, h: ab.Result[Any]) -> None:
        self._record("second", h)

    def third(self, h: ab.Result[Any]) -> None:
        self._record("third", h)

    def check(self, final: S) -> None:
        tags = sorted(tag for tag, _ in self.seen)
        assert tags == ["first", "second", "third"][: self.expected], self.seen
        assert all(st is final for _, st in self.seen), (self.seen, final)


def read_sync(h: ab.Result[Any]) -> Outcome:
    """The outcome through every synchronous door; each must agree with the others.

    ``cf.wait`` goes first: while the work is still finishing it exercises a live cf waiter.
    """
    done, not_done = cf.wait([h], timeout=HANG)
    assert done == {h} and not not_done, f"{h!r} not done within {HANG} s"
    st = h.state
    assert st in TERMINAL and h.done() and h.ready() and not h.running(), st
    outcome: Outcome
    if st is S.SUCCESS:
        value = h.get(timeout=HANG)
        assert h.result(timeout=HANG) is value
        assert h.exception(timeout=HANG) is None
        assert h.get(timeout=0, propagate=False) is value
        assert h.info is value
        assert (h.successful(), h.failed(), h.cancelled()) == (True, False, False)
        outcome = ("SUCCESS", value)
    elif st is S.REVOKED:
        with pytest.raises(cf.CancelledError):
            h.get(timeout=HANG)
        with pytest.raises(cf.CancelledError):
            h.result(timeout=HANG)
        with pytest.raises(cf.CancelledError):
            h.exception(timeout=HANG)
        assert isinstance(h.get(timeout=0, propagate=False), cf.CancelledError)
        assert (h.successful(), h.failed(), h.cancelled()) == (False, False, True)
        outcome = ("REVOKED", None)
    else:
        exc = h.exception(timeout=HANG)
        assert exc is not None
        with pytest.raises(BaseException) as info:  # noqa: PT011  # identity is checked just below
            h.get(timeout=HANG)
        assert info.value is exc
        assert (h.successful(), h.failed(), h.cancelled()) == (False, True, False)
        outcome = ("FAILURE", exc)
    assert h.state is st, "a terminal state changed"
    assert h.cancel() is False, "cancel() on a done handle must return False"
    return outcome


async def await_outcome(h: ab.Result[Any]) -> Outcome:
    try:
        value = await h
    except asyncio.CancelledError:
        return ("REVOKED", None)
    except BaseException as exc:
        return ("FAILURE", exc)
    return ("SUCCESS", value)


class AwaitBatch:
    """``await`` each finished handle on a private loop, a batch at a time, and compare outcomes."""

    def __init__(self, size: int = 500) -> None:
        self.size = size
        self.items: list[tuple[ab.Result[Any], Outcome]] = []
        self.loop = asyncio.new_event_loop()
        self.checked = 0

    def add(self, h: ab.Result[Any], outcome: Outcome) -> None:
        self.items.append((h, outcome))
        if len(self.items) >= self.size:
            self.flush()

    def flush(self) -> None:
        async def run() -> list[Outcome]:
            return [await await_outcome(h) for h, _ in self.items]

        got = self.loop.run_until_complete(run())
        for (h, want), seen in zip(self.items, got, strict=True):
            assert same(seen, want), (h, seen, want)
        self.checked += len(self.items)
        self.items.clear()

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self.loop.close()


def same(a: Outcome, b: Outcome) -> bool:
    return a[0] == b[0] and a[1] is b[1]


@pytest.fixture
def quiet(caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]) -> Iterator[None]:
    """The test must not log (any logger, WARNING and up) nor write to stderr."""
    caplog.set_level(logging.WARNING)
    yield
    records = [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.WARNING]
    out, err = capfd.readouterr()
    sys.stdout.write(out)  # the counts the test printed stay in the report
    assert not records, records
    assert err == "", err


def settled(h: ab.Result[Any], within: float = TERMINAL_WITHIN) -> tuple[S, object]:
    """Wait (``within`` s) for ``h``, check that every reading API agrees, return (state, outcome)."""
    # h.wait(), then cf.wait on the terminal handle: cf.wait on a pending wrapped cf.Future that has
    # started running deadlocks (test_races.py::test_cf_wait_on_wrapped_running_cf_future_does_not_deadlock)
    assert h.wait(within), f"{h!r} not terminal within {within} s"
    assert cf.wait([h], timeout=0).done == {h}
    st = h.state
    assert st in (S.SUCCESS, S.FAILURE, S.REVOKED), st
    assert h.done() and h.ready() and not h.running()
    assert h.cancelled() == (st is S.REVOKED)
    assert h.successful() == (st is S.SUCCESS)
    assert h.failed() == (st is S.FAILURE)
    got = h.get(timeout=0, propagate=False)
    if st is S.SUCCESS:
        assert h.result(timeout=0) is got and h.exception(timeout=0) is None and h.info is got
    elif st is S.FAILURE:
        assert isinstance(got, BaseException) and h.exception(timeout=0) is got and h.info is got
    else:
        assert isinstance(got, cf.CancelledError), repr(got)
        with pytest.raises(cf.CancelledError):
            h.result(timeout=0)
    return st, got


class Arrivals:
    """Counts coroutines arriving at a point; ``all_in`` is set when the last one arrives."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.count = 0
        self.all_in = asyncio.Event()

    def arrive(self) -> None:
        self.count += 1
        if self.count == self.expected:
            self.all_in.set()


async def await_handle(h: ab.Result[Any], shielded: bool, arrivals: Arrivals) -> Any:
    arrivals.arrive()  # the await below registers its waiter in this same step
    return await (ab.shield(h) if shielded else h)
