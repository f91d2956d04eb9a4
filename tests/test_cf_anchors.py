"""CPython's own future tests as anchors (issue #4, "Also"): what they check, asserted on handles.

The properties come from ``Lib/test/test_concurrent_futures/`` (``test_future.py``, ``test_wait.py``,
``test_as_completed.py``, CPython 3.13) and ``Lib/test/test_asyncio/test_futures.py`` (3.11): each
test here names its anchor. The tests are our own: they run on three kinds of handle, a blank
``ab.Result()`` completed by hand (as an executor completes a ``cf.Future``), thread work from
``ab.run_in_thread``, and ``ab.wrap(cf.Future())``, and mix them with plain futures.

Where asyncbridge differs from ``concurrent.futures`` on purpose, the test asserts asyncbridge's
documented behaviour and says so in a ``DIFFERS`` comment:

- ``cancel()`` returns True on a running handle (cf: False) and False on a revoked one (cf: True;
  asyncio: False): it is False exactly when the handle is done (``Result.cancel``'s docstring);
- ``result()`` re-raises with the original traceback every time (cf adds 3 frames per call);
- a raising callback is logged to the ``asyncbridge`` logger (cf: ``concurrent.futures``);
- ``set_exception()`` takes only an exception instance (cf stores anything, asyncio instantiates a
  class); the repr shows kind, state and id rather than the address and the outcome's type.
"""
# mypy: disable-error-code="comparison-overlap,unreachable"
# (tests read h.state again after the handle moved on, which mypy narrows to the first value read)

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import gc
import itertools
import logging
import re
import subprocess
import sys
import threading
import time
import traceback
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import pytest
from conftest import SOAK  # type: ignore[import-not-found, unused-ignore]  # found when mypy runs on tests/

import asyncbridge as ab

HANG = 30.0  # a hang guard only: it fires on a bug, never decides an outcome
S = ab.State


# -- the work and the handles --------------------------------------------------------------------


def hold(started: threading.Event, release: threading.Event) -> str:
    """Thread work that runs until released, and never checks for cancellation."""
    started.set()
    release.wait(HANG)
    return "done"


def hold_then_checkpoint(started: threading.Event, release: threading.Event) -> str:
    started.set()
    release.wait(HANG)
    ab.checkpoint()  # raises once the handle was cancelled: then it ends REVOKED
    return "done"


def fail_oserror() -> None:
    raise OSError("anchor")


def raise_when(gate: threading.Event) -> None:
    gate.wait(HANG)
    raise ValueError("this is an exception")


def mul(x: int, y: int) -> int:
    return x * y


def plain(state: str) -> cf.Future[Any]:
    """A plain ``cf.Future`` in one of cf's states, as CPython's ``create_future`` makes them."""
    f: cf.Future[Any] = cf.Future()
    if state == "RUNNING":
        f.set_running_or_notify_cancel()
    elif state == "CANCELLED":  # cancelled, executor not yet told: cf.wait counts it as pending
        f.cancel()
    elif state == "CANCELLED_AND_NOTIFIED":
        f.cancel()
        f.set_running_or_notify_cancel()
    elif state == "EXCEPTION":
        f.set_exception(OSError())
    elif state == "SUCCESS":
        f.set_result(42)
    return f


KINDS = ("blank", "future", "thread")
STATES = ("PENDING", "STARTED", "SUCCESS", "FAILURE", "REVOKED")
# Queued thread work is PENDING only while the shared pool is full, which this file does not force
# (tests/test_threads.py cancels queued work): the thread kind starts at STARTED.
CASES = [(k, s) for k in KINDS for s in STATES if (k, s) != ("thread", "PENDING")]
CASE_IDS = [f"{k}-{s}" for k, s in CASES]


class Maker:
    """Builds a handle of one kind in one state; ``finish(h, value)`` ends running work with
    ``value`` (the thread kind always returns "done"); ``close()`` releases whatever still runs."""

    def __init__(self) -> None:
        self.releases: list[threading.Event] = []
        self.sources: dict[int, cf.Future[Any]] = {}
        self.kinds: dict[int, str] = {}
        self.handles: list[ab.Result[Any]] = []

    def __call__(self, kind: str, state: str) -> ab.Result[Any]:
        h: ab.Result[Any]
        if kind == "blank":
            h = ab.Result()
            if state == "STARTED":
                assert h.set_running_or_notify_cancel()
            elif state == "SUCCESS":
                h.set_result(42)
            elif state == "FAILURE":
                h.set_exception(OSError("anchor"))
            elif state == "REVOKED":
                assert h.cancel()
        elif kind == "future":
            f: cf.Future[Any] = cf.Future()
            if state == "STARTED":
                f.set_running_or_notify_cancel()
            elif state == "SUCCESS":
                f.set_result(42)
            elif state == "FAILURE":
                f.set_exception(OSError("anchor"))
            elif state == "REVOKED":
                f.cancel()  # cancelled at the source: the handle follows
            h = ab.wrap(f)
            self.sources[id(h)] = f
        else:
            started, release = threading.Event(), threading.Event()
            self.releases.append(release)
            if state == "STARTED":
                h = ab.run_in_thread(hold, started, release)
                assert started.wait(HANG)
            elif state == "SUCCESS":
                h = ab.run_in_thread(int, "42")
            elif state == "FAILURE":
                h = ab.run_in_thread(fail_oserror)
            else:
                h = ab.run_in_thread(hold_then_checkpoint, started, release)
                assert started.wait(HANG)
                accepted = h.cancel()
                assert accepted
                release.set()
            if state != "STARTED":
                assert h.wait(HANG)
        self.handles.append(h)
        self.kinds[id(h)] = kind
        assert h.state == state, (kind, state, h)
        return h

    def finish(self, h: ab.Result[Any], value: object) -> None:
        kind = self.kinds[id(h)]
        if kind == "future":
            self.sources[id(h)].set_result(value)
        elif kind == "thread":
            for release in self.releases:
                release.set()
        else:
            h.set_result(value)

    def close(self) -> None:
        for release in self.releases:
            release.set()
        for h in self.handles:
            if self.kinds[id(h)] == "thread":
                assert h.wait(HANG)


@pytest.fixture
def make() -> Iterator[Maker]:
    maker = Maker()
    yield maker
    maker.close()


def has_waiter(h: ab.Result[Any]) -> bool:
    """Whether some caller waits on ``h``, read as cf.wait reads it: under the future's condition."""
    with h._condition:
        return bool(h._waiters)


def when_waited(h: ab.Result[Any], action: Callable[[], object]) -> threading.Thread:
    """Run ``action`` in a new thread once some caller blocks on ``h`` (its cf waiter list, which
    ``get()``/``result()``/``exception()`` join, is not empty), so the test acts on a waiting caller,
    as CPython's ``test_result_with_success`` means to (it sleeps a second instead)."""

    def run() -> None:
        deadline = time.monotonic() + HANG
        while not has_waiter(h) and time.monotonic() < deadline:
            time.sleep(0.0005)  # polling a condition, not timing an outcome
        action()

    t = threading.Thread(target=run)
    t.start()
    return t


# -- test_future.py: repr, done, cancelled, running ----------------------------------------------


@pytest.mark.parametrize(("kind", "state"), CASES, ids=CASE_IDS)
def test_repr_shows_kind_state_and_id(make: Maker, kind: str, state: str) -> None:
    """Anchor: test_future.py::test_repr. DIFFERS: cf shows ``<Future at 0x… state=finished returned
    int>``; a handle shows its id, its Celery state and what kind of work it runs."""
    h = make(kind, state)
    label = {"blank": "", "future": " future", "thread": r" thread \w+\(\)"}[kind]
    assert re.fullmatch(rf"<Result {h.id[:8]}… {state}{label}>", repr(h)), repr(h)


EXPECTED_FLAGS = {  # state: (done, cancelled, running)
    "PENDING": (False, False, False),
    "STARTED": (False, False, True),
    "SUCCESS": (True, False, False),
    "FAILURE": (True, False, False),
    "REVOKED": (True, True, False),
}


@pytest.mark.parametrize(("kind", "state"), CASES, ids=CASE_IDS)
def test_done_cancelled_running_in_each_state(make: Maker, kind: str, state: str) -> None:
    """Anchor: test_future.py::test_done, test_cancelled, test_running."""
    h = make(kind, state)
    assert (h.done(), h.cancelled(), h.running()) == EXPECTED_FLAGS[state]
    assert h.ready() == h.done()  # Celery's name says the same
    assert h.successful() == (state == "SUCCESS")
    assert h.failed() == (state == "FAILURE")


@pytest.mark.parametrize(("kind", "state"), CASES, ids=CASE_IDS)
@pytest.mark.parametrize("timeout", [0, 0.01])
def test_result_and_exception_with_a_timeout_in_each_state(
    make: Maker, kind: str, state: str, timeout: float
) -> None:
    """Anchor: test_future.py::test_result_with_timeout, test_exception_with_timeout. A REVOKED
    handle raises CancelledError even with ``timeout=0``; an unfinished one raises TimeoutError."""
    h = make(kind, state)
    if state in ("PENDING", "STARTED"):
        for call in (h.result, h.exception, h.get):
            with pytest.raises(TimeoutError):
                call(timeout=timeout)
        assert h.wait(timeout) is False
        assert not h.done()  # a timeout never cancels
    elif state == "REVOKED":
        with pytest.raises(cf.CancelledError):
            h.result(timeout=timeout)
        with pytest.raises(cf.CancelledError):
            h.exception(timeout=timeout)
        with pytest.raises(cf.CancelledError):
            h.get(timeout=timeout)
        assert isinstance(h.get(timeout, propagate=False), cf.CancelledError)
    elif state == "FAILURE":
        exc = h.exception(timeout=timeout)
        assert isinstance(exc, OSError)
        with pytest.raises(OSError, match="anchor") as info:
            h.result(timeout=timeout)
        assert info.value is exc  # the same exception object for every caller
        assert h.get(timeout, propagate=False) is exc
    else:
        assert h.result(timeout=timeout) == 42
        assert h.exception(timeout=timeout) is None
        assert h.get(timeout) == 42
    assert h.wait(timeout) is (state not in ("PENDING", "STARTED"))


@pytest.mark.parametrize(("kind", "state"), CASES, ids=CASE_IDS)
def test_cancel_in_each_state(make: Maker, kind: str, state: str) -> None:
    """Anchor: test_future.py::test_cancel, asyncio test_futures.py::test_cancel."""
    h = make(kind, state)
    before = h.state
    accepted = h.cancel()
    if state == "PENDING":
        assert accepted and h.state == S.REVOKED and h.cancelled()
        if kind == "future":
            assert make.sources[id(h)].cancelled()  # the request reached the source
    elif state == "STARTED":
        # DIFFERS: cf.Future.cancel() returns False for running work. A handle returns True (the
        # request is recorded and carried to the work), stays STARTED until the work stops, and
        # work that ignores the request ends SUCCESS: a produced result is never thrown away.
        assert accepted
        assert h.state == S.STARTED and not h.cancelled() and not h.done()
        make.finish(h, "done")
        assert h.get(HANG) == "done"
        assert h.state == S.SUCCESS and not h.cancelled()
    else:
        # DIFFERS for REVOKED: cf returns True when cancelling a cancelled future; a handle returns
        # False on every finished handle, as asyncio's Future does.
        assert not accepted
        assert h.state == before
    assert (h.cancel() is False) == h.done()  # a later request: False exactly when done


# -- test_future.py: waiting for an outcome set by another thread --------------------------------


@pytest.mark.parametrize(
    ("kind", "state"), [("blank", "PENDING"), ("future", "PENDING"), ("thread", "STARTED")]
)
def test_a_blocked_result_gets_the_value_set_later(make: Maker, kind: str, state: str) -> None:
    """Anchor: test_future.py::test_result_with_success."""
    h = make(kind, state)
    t = when_waited(h, lambda: make.finish(h, "done"))
    try:
        assert h.result(timeout=HANG) == "done"
    finally:
        t.join(HANG)


@pytest.mark.parametrize(
    ("kind", "state"), [("blank", "PENDING"), ("future", "PENDING"), ("thread", "STARTED")]
)
def test_a_blocked_result_raises_when_cancelled_from_another_thread(
    make: Maker, kind: str, state: str
) -> None:
    """Anchor: test_future.py::test_result_with_cancel. The thread kind must reach a checkpoint."""
    if kind == "thread":
        started, release = threading.Event(), threading.Event()
        make.releases.append(release)
        h: ab.Result[Any] = ab.run_in_thread(hold_then_checkpoint, started, release)
        assert started.wait(HANG)
        handle = h

        def cancel_then_release() -> None:
            handle.cancel()
            release.set()

        t = when_waited(h, cancel_then_release)
    elif kind == "future":
        h = make(kind, state)
        t = when_waited(h, make.sources[id(h)].cancel)  # cancelled elsewhere: at the source
    else:
        h = make(kind, state)
        t = when_waited(h, h.cancel)
    try:
        with pytest.raises(cf.CancelledError):
            h.result(timeout=HANG)
    finally:
        t.join(HANG)
    assert h.state == S.REVOKED


@pytest.mark.parametrize("kind", ["blank", "future"])
def test_a_blocked_exception_gets_the_error_set_later(make: Maker, kind: str) -> None:
    """Anchor: test_future.py::test_exception_with_success."""
    h = make(kind, "PENDING")
    error = OSError("later")
    target: Any = make.sources[id(h)] if kind == "future" else h
    t = when_waited(h, lambda: target.set_exception(error))
    try:
        assert h.exception(timeout=HANG) is error
    finally:
        t.join(HANG)


# -- test_future.py: set once --------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("state", ["SUCCESS", "FAILURE", "REVOKED"])
def test_setting_a_finished_handle_raises_invalid_state(make: Maker, kind: str, state: str) -> None:
    """Anchor: test_future.py::test_multiple_set_result, test_multiple_set_exception; asyncio
    test_futures.py::test_cancel/test_result/test_exception (set_* after the end)."""
    h = make(kind, state)
    outcome = h.get(0, propagate=False)
    with pytest.raises(cf.InvalidStateError, match=re.escape(f"{h!r} is already done")):
        h.set_result(2)
    with pytest.raises(cf.InvalidStateError, match="already done"):
        h.set_exception(Exception())
    assert h.state == state
    again = h.get(0, propagate=False)
    assert again is outcome or (state == "REVOKED" and isinstance(again, cf.CancelledError))


def test_set_running_or_notify_cancel_follows_the_executor_protocol() -> None:
    """Anchor: cf's executor protocol, used by test_future.py's create_future and by every executor:
    True and running for pending work; False for revoked work, and cf.wait is told."""
    h: ab.Result[int] = ab.Result()
    assert h.set_running_or_notify_cancel() is True
    assert h.running() and h.state == S.STARTED
    with pytest.raises(RuntimeError):
        h.set_running_or_notify_cancel()

    r: ab.Result[int] = ab.Result()
    waited: list[Any] = []
    t = threading.Thread(target=lambda: waited.append(cf.wait([r], HANG)))
    t.start()
    try:
        deadline = time.monotonic() + HANG
        while not has_waiter(r) and time.monotonic() < deadline:
            time.sleep(0.0005)  # polling a condition: cf.wait has joined the waiter list
        assert r.cancel()
        assert r.set_running_or_notify_cancel() is False
    finally:
        t.join(HANG)
    [(done, not_done)] = waited
    assert done == {r} and not not_done and r.state == S.REVOKED

    finished: ab.Result[int] = ab.Result()
    finished.set_result(1)
    with pytest.raises(RuntimeError):
        finished.set_running_or_notify_cancel()


# -- test_future.py: done-callbacks --------------------------------------------------------------


@pytest.mark.parametrize("kind", ["blank", "future"])
@pytest.mark.parametrize("outcome", ["result", "exception", "cancel"])
def test_done_callback_sees_the_outcome(make: Maker, kind: str, outcome: str) -> None:
    """Anchor: test_future.py::test_done_callback_with_result/_with_exception/_with_cancel."""
    h = make(kind, "PENDING")
    seen: list[object] = []
    h.add_done_callback(
        lambda r: seen.append(r.cancelled() if outcome == "cancel" else r.exception() or r.result())
    )
    target: Any = make.sources[id(h)] if kind == "future" else h
    if outcome == "result":
        target.set_result(5)
        assert seen == [5]
    elif outcome == "exception":
        target.set_exception(Exception("test"))
        [exc] = seen
        assert isinstance(exc, Exception) and exc.args == ("test",)
    else:
        assert h.cancel()
        assert seen == [True]


@pytest.mark.parametrize(("kind", "state"), [c for c in CASES if c[1] in ("SUCCESS", "FAILURE", "REVOKED")])
def test_done_callback_added_after_the_end_runs_at_once_in_the_adding_thread(
    make: Maker, kind: str, state: str
) -> None:
    """Anchor: test_future.py::test_done_callback_already_successful/_failed/_cancelled."""
    h = make(kind, state)
    seen: list[tuple[int, object]] = []
    h.add_done_callback(lambda r: seen.append((threading.get_ident(), r.get(0, propagate=False))))
    [(ident, got)] = seen  # ran before add_done_callback returned
    assert ident == threading.get_ident()
    if state == "SUCCESS":
        assert got == 42
    elif state == "FAILURE":
        assert isinstance(got, OSError)
    else:
        assert isinstance(got, cf.CancelledError)


@pytest.mark.parametrize("already_done", [False, True])
def test_a_raising_done_callback_is_logged_and_the_next_still_runs(
    caplog: pytest.LogCaptureFixture, already_done: bool
) -> None:
    """Anchor: test_future.py::test_done_callback_raises, test_done_callback_raises_already_succeeded.
    DIFFERS: cf logs "exception calling callback for <Future…>" to its own logger; a handle logs to
    the ``asyncbridge`` logger, naming the callback and the handle."""
    h: ab.Result[int] = ab.Result()
    calls: list[str] = []

    def raising_fn(_: ab.Result[int]) -> None:
        calls.append("raising")
        raise Exception("doh!")

    if already_done:
        h.set_result(5)
    with caplog.at_level(logging.ERROR, logger="asyncbridge"):
        h.add_done_callback(raising_fn)
        h.add_done_callback(lambda _: calls.append("next"))
        if not already_done:
            h.set_result(5)
    assert calls == ["raising", "next"]
    [record] = caplog.records
    assert "exception calling done-callback" in record.getMessage()
    assert repr(h) in record.getMessage()
    assert record.exc_info is not None and str(record.exc_info[1]) == "doh!"
    assert h.result(0) == 5


# -- asyncio test_futures.py: removing callbacks -------------------------------------------------


def bag_appender(bag: list[int], thing: int) -> Callable[[ab.Result[Any]], None]:
    def append(_: ab.Result[Any]) -> None:
        bag.append(thing)

    return append


@pytest.mark.parametrize(
    ("removed", "left"),
    [((0, 0), [17, 100]), ((0, 1, 0), [100]), ((2, 2), [42, 17])],
    ids=["first", "first_and_second", "third"],
)
def test_removed_callbacks_do_not_run(removed: tuple[int, ...], left: list[int]) -> None:
    """Anchor: asyncio test_futures.py::test_callbacks_remove_first_callback,
    _first_and_second_callback, _third_callback; test_callbacks_invoked_on_set_result."""
    bag: list[int] = []
    h: ab.Result[str] = ab.Result()
    cbs = [bag_appender(bag, 42), bag_appender(bag, 17), bag_appender(bag, 100)]
    for cb in cbs:
        h.add_done_callback(cb)
    for i in removed:
        h.remove_done_callback(cbs[i])
    assert bag == []
    h.set_result("foo")
    assert bag == left
    assert h.result(0) == "foo"


def test_remove_done_callback_counts_every_registration() -> None:
    """Anchor: asyncio test_futures.py::test_remove_done_callback."""
    bag: list[int] = []
    h: ab.Result[str] = ab.Result()
    cb1, cb2, cb3 = bag_appender(bag, 1), bag_appender(bag, 2), bag_appender(bag, 3)
    h.add_done_callback(cb1)
    h.add_done_callback(cb2)
    assert h.remove_done_callback(cb2) == 1
    assert h.remove_done_callback(cb3) == 0
    h.add_done_callback(cb2)
    for _ in range(5):
        h.add_done_callback(cb1)
    assert h.remove_done_callback(cb1) == 6
    assert bag == []
    h.set_result("foo")
    assert bag == [2]
    assert h.remove_done_callback(cb2) == 0  # after the end there is nothing left to remove


def test_a_callback_removing_others_during_dispatch_changes_nothing() -> None:
    """Anchor: asyncio test_futures.py::test_schedule_callbacks_list_mutation_1 (bpo-28963): the
    callbacks to run were taken when the handle ended, so every one of them still runs."""
    h: ab.Result[int] = ab.Result()
    ran: list[str] = []
    removed: list[int] = []

    def other(_: ab.Result[int]) -> None:
        ran.append("other")

    h.add_done_callback(lambda r: removed.append(r.remove_done_callback(other)))
    h.add_done_callback(other)
    h.add_done_callback(other)
    h.set_result(1)
    assert removed == [0] and ran == ["other", "other"]


REENTRANT_EQ = """
import asyncbridge as ab

h = ab.Result()
h.add_done_callback(str)
for _ in range(63):
    h.add_done_callback(id)
calls = 0


class Evil:
    def __eq__(self, other):
        global calls
        calls += 1
        if HOW == "remove":  # bpo-28963
            h.remove_done_callback(id)
        elif HOW == "clear":  # gh-97592
            h.remove_done_callback(other)
        elif calls < 100:  # "add", bpo-30828
            h.add_done_callback(id)
        return False

    __hash__ = None


removed = h.remove_done_callback(Evil())
h.set_result(1)  # the handle still works
print("removed", removed)
"""


@pytest.mark.parametrize("how", ["remove", "clear", "add"])
def test_remove_done_callback_survives_an_eq_that_reenters_the_handle(how: str) -> None:
    """Anchor: asyncio test_futures.py::test_remove_done_callbacks_list_mutation,
    test_remove_done_callbacks_list_clear, test_schedule_callbacks_list_mutation_2: an ``__eq__``
    that adds or removes callbacks while ``remove_done_callback`` compares must not crash or hang
    (GUIDE 1.5 rule 2: the lock is never held while user code runs). It runs in a subprocess, so a
    deadlock fails this test and leaves no thread stuck in this one."""
    code = f"HOW = {how!r}\n" + REENTRANT_EQ
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=8)
    except subprocess.TimeoutExpired:
        pytest.fail(
            f"remove_done_callback() deadlocked: __eq__ ({how}) re-entered the handle while "
            "remove_done_callback() held the handle's lock"
        )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("removed "), done.stdout


# -- traceback ---------------------------------------------------------------------------------


def raise_from_here() -> None:
    raise ValueError("original")


@pytest.mark.parametrize("read", ["result", "get"])
def test_every_retrieval_shows_the_same_traceback(read: str) -> None:
    """Anchor: reliability.md row 9 (asyncio test_futures2.py::test_future_traceback). DIFFERS:
    ``cf.Future.result()`` grows the same exception's traceback by 3 frames per call; a handle
    re-raises with the original frames each time, so the 10th retrieval reads like the 1st."""
    h: ab.Result[None] = ab.Result()
    try:
        raise_from_here()
    except ValueError as exc:
        h.set_exception(exc)
    lengths = []
    for _ in range(10):
        try:
            getattr(h, read)(0)
        except ValueError as exc:
            frames = [f.name for f in traceback.extract_tb(exc.__traceback__)]
            assert frames[-1] == "raise_from_here"
            lengths.append(len(frames))
    assert len(lengths) == 10 and len(set(lengths)) == 1, lengths
    stored = h.exception(0)
    assert stored is not None
    assert traceback.extract_tb(stored.__traceback__)[-1].name == "raise_from_here"


# -- test_wait.py: cf.wait over handles mixed with plain futures ---------------------------------


@pytest.fixture
def blocked() -> Iterator[Callable[[], ab.Result[str]]]:
    """Thread work that runs until the test ends."""
    release = threading.Event()
    handles: list[ab.Result[str]] = []

    def start() -> ab.Result[str]:
        started = threading.Event()
        h = ab.run_in_thread(hold, started, release)
        assert started.wait(HANG)
        handles.append(h)
        return h

    yield start
    release.set()
    for h in handles:
        assert h.wait(HANG)


def done_handle(value: object = 42) -> ab.Result[Any]:
    h: ab.Result[Any] = ab.Result()
    h.set_result(value)
    return h


def failed_handle() -> ab.Result[Any]:
    h: ab.Result[Any] = ab.Result()
    h.set_exception(OSError())
    return h


def revoked_handle() -> ab.Result[Any]:
    h: ab.Result[Any] = ab.Result()
    h.cancel()
    return h


def test_cf_wait_counts_a_duplicate_once(blocked: Callable[[], ab.Result[str]]) -> None:
    """Anchor: test_wait.py::test_20369."""
    h = ab.run_in_thread(mul, 2, 21)
    done, not_done = cf.wait([h, h], timeout=HANG, return_when=cf.ALL_COMPLETED)
    assert done == {h} and not_done == set()


def test_cf_wait_first_completed(blocked: Callable[[], ab.Result[str]]) -> None:
    """Anchor: test_wait.py::test_first_completed. A plain future in cf's intermediate CANCELLED
    state (cancelled, executor not yet told) counts as pending for cf.wait; a revoked handle never
    sits in that state."""
    cancelled_plain = plain("CANCELLED")
    quick = ab.run_in_thread(mul, 21, 2)
    slow, blank, wrapped = blocked(), ab.Result[int](), ab.wrap(cf.Future[int]())
    done, not_done = cf.wait(
        [cancelled_plain, quick, slow, blank, wrapped], timeout=HANG, return_when=cf.FIRST_COMPLETED
    )
    assert done == {quick}
    assert not_done == {cancelled_plain, slow, blank, wrapped}


def test_cf_wait_first_completed_some_already_completed(blocked: Callable[[], ab.Result[str]]) -> None:
    """Anchor: test_wait.py::test_first_completed_some_already_completed."""
    revoked, succeeded, notified, slow = (
        revoked_handle(),
        done_handle(),
        plain("CANCELLED_AND_NOTIFIED"),
        blocked(),
    )
    finished, pending = cf.wait([revoked, succeeded, notified, slow], return_when=cf.FIRST_COMPLETED)
    assert finished == {revoked, succeeded, notified}
    assert pending == {slow}


def test_cf_wait_first_exception(blocked: Callable[[], ab.Result[str]]) -> None:
    """Anchor: test_wait.py::test_first_exception."""
    first = ab.run_in_thread(mul, 2, 21)
    assert first.wait(HANG)
    gate = threading.Event()
    failing = ab.run_in_thread(raise_when, gate)
    slow, wrapped = blocked(), ab.wrap(cf.Future[int]())
    gate.set()
    members: list[cf.Future[Any]] = [first, failing, slow, wrapped]
    finished, pending = cf.wait(members, timeout=HANG, return_when=cf.FIRST_EXCEPTION)
    assert finished == {first, failing}
    assert pending == {slow, wrapped}


def test_cf_wait_first_exception_some_already_complete(blocked: Callable[[], ab.Result[str]]) -> None:
    """Anchor: test_wait.py::test_first_exception_some_already_complete."""
    succeeded, cancelled_plain, revoked = done_handle(), plain("CANCELLED"), revoked_handle()
    failing = ab.run_in_thread(divmod, 21, 0)
    slow = blocked()
    finished, pending = cf.wait(
        [succeeded, cancelled_plain, revoked, failing, slow], timeout=HANG, return_when=cf.FIRST_EXCEPTION
    )
    assert finished == {succeeded, revoked, failing}
    assert pending == {cancelled_plain, slow}
    assert isinstance(failing.exception(0), ZeroDivisionError)


def test_cf_wait_first_exception_one_already_failed(blocked: Callable[[], ab.Result[str]]) -> None:
    """Anchor: test_wait.py::test_first_exception_one_already_failed."""
    failed, slow = failed_handle(), blocked()
    finished, pending = cf.wait([failed, slow], return_when=cf.FIRST_EXCEPTION)
    assert finished == {failed} and pending == {slow}


def test_cf_wait_all_completed() -> None:
    """Anchor: test_wait.py::test_all_completed, with every kind of handle and plain future."""
    source: cf.Future[int] = cf.Future()
    wrapped = ab.wrap(source)
    finisher = threading.Thread(target=source.set_result, args=(7,))
    members: list[cf.Future[Any]] = [
        done_handle(),
        plain("CANCELLED_AND_NOTIFIED"),
        plain("EXCEPTION"),
        failed_handle(),
        revoked_handle(),
        ab.run_in_thread(divmod, 2, 0),
        ab.run_in_thread(mul, 2, 21),
        wrapped,
    ]
    finisher.start()
    try:
        finished, pending = cf.wait(members, timeout=HANG, return_when=cf.ALL_COMPLETED)
    finally:
        finisher.join(HANG)
    assert finished == set(members) and pending == set()
    assert wrapped.result(0) == 7


@pytest.mark.parametrize("timeout", [0, 0.05])
@pytest.mark.parametrize("return_when", [cf.ALL_COMPLETED, cf.FIRST_EXCEPTION])
def test_cf_wait_timeout_returns_what_finished(
    blocked: Callable[[], ab.Result[str]], timeout: float, return_when: str
) -> None:
    """Anchor: test_wait.py::test_timeout (and a zero timeout). FIRST_EXCEPTION with a failed handle
    in the set returns at once, timeout or not."""
    notified, failed, succeeded, slow = (
        plain("CANCELLED_AND_NOTIFIED"),
        failed_handle(),
        done_handle(),
        blocked(),
    )
    wrapped = ab.wrap(cf.Future[int]())
    finished, pending = cf.wait(
        [notified, failed, succeeded, slow, wrapped], timeout=timeout, return_when=return_when
    )
    assert finished == {notified, failed, succeeded}
    assert pending == {slow, wrapped}
    assert not slow.done() and not wrapped.done()  # a timeout never cancels


def test_cf_wait_first_completed_times_out_with_nothing_finished(
    blocked: Callable[[], ab.Result[str]],
) -> None:
    slow, blank = blocked(), ab.Result[str]()
    finished, pending = cf.wait([slow, blank], timeout=0.05, return_when=cf.FIRST_COMPLETED)
    assert finished == set() and pending == {slow, blank}


ROUNDS = 10 * SOAK


def test_pending_calls_race(tight_switching: None) -> None:
    """Anchor: test_wait.py::ThreadPoolWaitTests::test_pending_calls_race (issue #14406): switch
    threads every microsecond, release 100 handles at once, wait for ALL_COMPLETED; here for thread
    work, for blank handles completed from four threads and for wrapped futures, each round."""
    seen: dict[str, int] = {"thread": 0, "blank": 0, "wrapped": 0}
    for _ in range(ROUNDS):
        event = threading.Event()
        fs = {ab.run_in_thread(event.wait, HANG) for _ in range(100)}
        event.set()
        done, not_done = cf.wait(fs, timeout=HANG, return_when=cf.ALL_COMPLETED)
        assert not not_done and all(f.result(0) is True for f in done)
        seen["thread"] += len(done)

        blanks: list[ab.Result[int]] = [ab.Result() for _ in range(100)]
        sources: list[cf.Future[int]] = [cf.Future() for _ in range(100)]
        wrapped = [ab.wrap(s) for s in sources]
        go = threading.Barrier(5)

        def complete(
            i: int, go: threading.Barrier = go, blanks: Any = blanks, sources: Any = sources
        ) -> None:
            go.wait(HANG)
            for j in range(i, 100, 4):
                blanks[j].set_result(j)
                sources[j].set_result(j)

        threads = [threading.Thread(target=complete, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        go.wait(HANG)
        try:
            finished, pending = cf.wait([*blanks, *wrapped], timeout=HANG, return_when=cf.ALL_COMPLETED)
        finally:
            for t in threads:
                t.join(HANG)
        assert not pending and len(finished) == 200
        assert [h.result(0) for h in blanks] == [h.result(0) for h in wrapped] == list(range(100))
        seen["blank"] += 100
        seen["wrapped"] += 100
    print(f"\n[pending calls race] {ROUNDS} rounds, handles released at once: {seen}")


# -- test_as_completed.py ------------------------------------------------------------------------


def test_cf_as_completed_without_timeout_yields_every_one() -> None:
    """Anchor: test_as_completed.py::test_no_timeout."""
    source: cf.Future[int] = cf.Future()
    members: list[cf.Future[Any]] = [
        plain("CANCELLED_AND_NOTIFIED"),
        failed_handle(),
        done_handle(),
        ab.run_in_thread(mul, 2, 21),
        ab.run_in_thread(mul, 7, 6),
        ab.wrap(source),
    ]
    finisher = threading.Thread(target=source.set_result, args=(1,))
    finisher.start()
    try:
        completed = set(cf.as_completed(members, timeout=HANG))
    finally:
        finisher.join(HANG)
    assert completed == set(members)


@pytest.mark.parametrize("timeout", [0, 0.1])
def test_cf_as_completed_times_out_before_the_last_one(
    blocked: Callable[[], ab.Result[str]], timeout: float
) -> None:
    """Anchor: test_as_completed.py::test_future_times_out (zero and short timeouts)."""
    already_completed = {revoked_handle(), failed_handle(), plain("SUCCESS"), done_handle()}
    slow = blocked()
    completed: list[Any] = []
    with pytest.raises(TimeoutError):
        completed.extend(cf.as_completed(already_completed | {slow}, timeout))
    assert set(completed) == already_completed and len(completed) == 4
    assert not slow.done()


def test_cf_as_completed_yields_a_duplicate_once() -> None:
    """Anchor: test_as_completed.py::test_duplicate_futures (issues 20367, 31641)."""
    h = ab.run_in_thread(mul, 6, 7)
    completed = list(cf.as_completed(itertools.repeat(h, 3), timeout=HANG))
    assert completed == [h]


def test_cf_as_completed_timeout_message_counts_unfinished_handles() -> None:
    """Anchor: test_as_completed.py::test_correct_timeout_exception_msg."""
    running: ab.Result[int] = ab.Result()
    running.set_running_or_notify_cancel()
    with pytest.raises(TimeoutError) as info:
        list(cf.as_completed([revoked_handle(), ab.Result(), running, done_handle()], timeout=0))
    assert str(info.value) == "2 (of 4) futures unfinished"


AsCompleted = Callable[..., Iterator[Any]]
AS_COMPLETED: list[Any] = [
    pytest.param(cf.as_completed, id="cf.as_completed"),
    pytest.param(ab.as_completed, id="ab.as_completed"),
]


@pytest.mark.parametrize("as_completed", AS_COMPLETED)
def test_as_completed_does_not_keep_a_yielded_handle_alive(as_completed: AsCompleted) -> None:
    """Anchor: test_as_completed.py::test_free_reference_yielded_future (issue #14406): the iterator
    holds no reference to a handle it has yielded. Checked for cf's iterator over handles, and for
    asyncbridge's own ``as_completed``, which makes the same promise."""
    handles: list[ab.Result[Any]] = [ab.Result() for _ in range(8)]
    handles.append(revoked_handle())
    handles.append(done_handle())
    alive: list[str] = []

    def consume(iterator: Iterator[Any], then: Callable[[], object] = lambda: None) -> None:
        for h in iterator:
            handles.remove(h)
            wr = weakref.ref(h)
            del h
            gc.collect()  # only the iterator could keep the handle alive now
            if wr() is not None:
                alive.append(repr(wr()))
            then()

    with pytest.raises(TimeoutError):
        consume(as_completed(handles, timeout=0))
    assert len(handles) == 8
    handles[0].set_result("test")

    def finish_next() -> None:
        if handles:
            handles[0].set_result("test")

    consume(as_completed(handles, timeout=HANG), finish_next)
    assert not handles
    assert not alive, f"the iterator kept {len(alive)} yielded handles alive: {alive}"


@pytest.mark.parametrize("as_completed", AS_COMPLETED)
def test_as_completed_with_duplicates_and_zero_timeout(as_completed: AsCompleted) -> None:
    """Anchors: test_duplicate_futures and test_future_times_out (timeout 0) for both iterators."""
    h = done_handle()
    assert list(as_completed([h, h, h], timeout=0)) == [h]
    pending: ab.Result[int] = ab.Result()
    seen: list[Any] = []
    with pytest.raises(TimeoutError):
        seen.extend(as_completed([h, pending, h], timeout=0))
    assert seen == [h]


def test_ab_wait_counts_a_duplicate_once() -> None:
    """Anchor: test_wait.py::test_20369, for asyncbridge's own ``wait``."""
    h = ab.run_in_thread(mul, 2, 21)
    done, not_done = ab.wait([h, h]).get(HANG)
    assert done == {h} and not_done == set()


# -- asyncio test_futures.py ---------------------------------------------------------------------


def test_await_a_done_handle_stops_with_its_value() -> None:
    """Anchor: asyncio test_futures.py::test_future_stop_iteration_args: stepping a done handle's
    ``__await__`` stops at once, carrying the value (a tuple stays one value)."""
    h: ab.Result[tuple[int, int]] = ab.Result()
    h.set_result((1, 2))
    step = h.__await__()
    with pytest.raises(StopIteration) as info:
        step.send(None)
    assert info.value.args == ((1, 2),)


def test_set_exception_takes_an_instance_only() -> None:
    """Anchor: asyncio test_futures.py::test_exception_class. DIFFERS: asyncio instantiates an
    exception class and cf stores anything; ``Result.set_exception`` refuses a non-instance with a
    TypeError, so a later ``result()`` can never fail with an unrelated TypeError."""
    h: ab.Result[int] = ab.Result()
    with pytest.raises(TypeError, match="set_exception\\(\\) needs an exception, not type"):
        h.set_exception(RuntimeError)  # type: ignore[arg-type]
    assert h.state == S.PENDING


def test_a_dropped_failed_handle_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    """Anchor: asyncio test_futures.py::test_tb_logger_* (reliability.md row 12). asyncbridge keeps
    cf's policy: a failed handle whose exception nobody read is dropped silently (asyncio logs
    "exception was never retrieved")."""
    with caplog.at_level(logging.DEBUG):
        h = failed_handle()
        wr = weakref.ref(h)
        del h
        gc.collect()
    assert wr() is None
    assert not [r for r in caplog.records if r.name.startswith(("asyncbridge", "concurrent", "asyncio"))]


def test_asyncio_wrap_future_of_a_handle_cancels_it() -> None:
    """Anchor: asyncio test_futures.py::test_wrap_future_cancel: cancelling the asyncio future made
    by ``asyncio.wrap_future(handle)`` cancels the pending handle."""

    async def main() -> tuple[bool, ab.State]:
        h: ab.Result[int] = ab.Result()
        fut = asyncio.wrap_future(h)
        fut.cancel()
        await asyncio.sleep(0)  # let the cancellation travel to the handle
        return fut.cancelled(), h.state

    assert asyncio.run(main()) == (True, S.REVOKED)


def test_asyncio_wrap_future_cancelled_after_the_handle_finished_keeps_its_value() -> None:
    """Anchor: asyncio test_futures.py::test_wrap_future_cancel2: the handle finished first (with
    its loop not running, as there), so cancelling the asyncio future leaves the handle's value
    alone; the asyncio future, whose copy of the value was still on its way to the loop, ends
    cancelled."""
    loop = asyncio.new_event_loop()
    try:
        h: ab.Result[int] = ab.Result()
        fut = asyncio.wrap_future(h, loop=loop)
        h.set_result(42)
        fut.cancel()
        loop.run_until_complete(asyncio.sleep(0))  # the anchor's test_utils.run_briefly
        assert (fut.cancelled(), h.state, h.result(0)) == (True, S.SUCCESS, 42)
    finally:
        loop.close()


def test_asyncio_wrap_future_of_a_handle_finished_on_its_loop_acts_as_over_a_cf_future() -> None:
    """The same, the handle finished on the loop's own thread: the handle keeps its value, and the
    asyncio future does what it does over a plain ``cf.Future`` on this Python. Before gh-105836
    (3.11 to 3.13.0 here) the value still hops to the loop and the cancel wins; with it (3.14, later
    3.13.x) asyncio copies the value at once, on its own loop, and refuses the cancel. That part is
    asyncio's, not the handle's: a handle is a ``cf.Future`` (the README), so it must not differ."""

    async def finish_then_cancel(src: cf.Future[int]) -> tuple[bool, bool]:
        fut = asyncio.wrap_future(src)
        src.set_result(42)
        accepted = fut.cancel()
        await asyncio.sleep(0)
        return accepted, fut.cancelled()

    h: ab.Result[int] = ab.Result()
    over_handle = asyncio.run(finish_then_cancel(h))
    assert (h.state, h.result(0)) == (S.SUCCESS, 42)
    assert over_handle == asyncio.run(finish_then_cancel(cf.Future()))


@pytest.mark.anyio
async def test_awaiting_twice_gives_the_same_outcome() -> None:
    """Anchor: asyncio test_futures.py::test_yield_from_twice: the second await of a done handle
    returns at once with the same value (or raises the same exception object)."""
    h: ab.Result[int] = ab.Result()
    got: list[int] = []

    async def first() -> None:
        got.append(await h)

    async with anyio.create_task_group() as tg:
        tg.start_soon(first)
        await anyio.wait_all_tasks_blocked()
        h.set_result(42)
    assert got == [42]
    assert await h == 42

    failed = failed_handle()
    caught = []
    for _ in range(2):
        try:
            await failed
        except OSError as exc:
            caught.append(exc)
    assert len(caught) == 2 and caught[0] is caught[1]


@pytest.mark.anyio
async def test_awaiting_a_revoked_handle_raises_the_loops_cancelled_error(anyio_backend: Any) -> None:
    """Anchor: asyncio test_futures.py::test_cancel (await side): under asyncio, await raises
    asyncio.CancelledError; under trio, concurrent.futures.CancelledError (``Result.__await__``'s
    docstring: trio keeps its own Cancelled for cancel scopes)."""
    h = revoked_handle()
    expected: type[BaseException] = (
        asyncio.CancelledError if anyio_backend[0] == "asyncio" else cf.CancelledError
    )
    with pytest.raises(expected):
        await h


@pytest.mark.anyio
async def test_stop_iteration_as_the_outcome_is_not_lost() -> None:
    """Anchor: asyncio test_futures.py::test_exception ("StopIteration cannot be raised into a
    Future"). DIFFERS (not yet documented): asyncio refuses ``set_exception(StopIteration())``; a
    handle is a cf.Future and accepts it, as it must for ``run_in_thread(next, iterator)``. ``get()``
    re-raises the very StopIteration; ``await`` cannot let a StopIteration out of a coroutine (PEP 479
    turns it into RuntimeError), so the StopIteration must at least be that error's cause."""
    h: ab.Result[object] = ab.run_in_thread(next, iter([]))
    assert h.wait(HANG)
    stop = h.exception(0)
    assert isinstance(stop, StopIteration)
    with pytest.raises(StopIteration) as info:
        h.get(0)
    assert info.value is stop
    with pytest.raises(RuntimeError, match="raised StopIteration") as raised:
        await h
    assert raised.value.__cause__ is stop


def test_cf_wait_lets_go_of_a_wrapped_future_that_started_while_it_held_the_lock() -> None:
    """cf.wait and cf.as_completed take every future's ``_condition`` around their checks and read
    it again to release it. A wrapped cf.Future whose executor started it in between must not make
    that second read take the lock cf still holds (it did: reporting STARTED took it, for ever)."""
    src: cf.Future[int] = cf.Future()
    h = ab.wrap(src)
    locked = cf._base._AcquireFutures([h])  # what cf.wait does, exactly

    def check_while_it_starts() -> None:
        with locked:
            assert src.set_running_or_notify_cancel()  # the executor starts the work meanwhile

    t = threading.Thread(target=check_while_it_starts, daemon=True)
    t.start()
    t.join(HANG)
    assert not t.is_alive(), "cf's release of the handle's lock deadlocked"
    assert h.running() and h.state is ab.State.STARTED
    src.set_result(7)
    assert h.get(HANG) == 7
