"""The handle against a plain model of its contract (issue #4: hypothesis, 1,000 examples x 50 steps).

A blank ``ab.Result()`` is driven through random schedules of its public operations; after every
step each reading door must agree with :class:`Model`, which is written from the contract (issue #3,
the docstrings, ``concurrent.futures``), not from the implementation. Everything runs on this thread,
so done-callbacks run synchronously inside the completing call and their counts are exact. A failure
shrinks to the shortest schedule hypothesis can find and prints it as replayable steps.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from conftest import SOAK  # type: ignore[import-not-found, unused-ignore]  # found when mypy runs on tests/
from hypothesis import HealthCheck, settings, strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

import asyncbridge as ab

pytestmark = pytest.mark.stress

S = ab.State
TERMINAL = frozenset({S.SUCCESS, S.FAILURE, S.REVOKED})
HANG = 10.0  # hang guard for awaits of a done handle, which never wait
EXAMPLES = 1_000 * SOAK
STEPS = 50
N_CALLBACKS = 3  # a small pool, so that the same callback is added twice and removed

VALUES = st.one_of(st.none(), st.integers(), st.text(max_size=3), st.builds(object))
ERRORS = st.one_of(
    st.builds(ValueError, st.text(max_size=3)),
    st.builds(KeyError, st.integers()),
    st.builds(KeyboardInterrupt),
    st.builds(SystemExit, st.integers(0, 3)),
    st.builds(cf.CancelledError),  # FAILURE with a CancelledError is not REVOKED
    st.builds(asyncio.CancelledError),
)

Outcome = tuple[str, object]  # ("value", v) | ("raised", exc) | ("timeout", None)


class Model:
    """What the contract says a blank handle does; no threads, no locks."""

    def __init__(self) -> None:
        self.state = S.PENDING
        self.value: object = None
        self.error: BaseException | None = None
        self.cancel_requested = False
        self.pending: list[int] = []  # callbacks registered and not yet run, in order
        self.runs: Counter[int] = Counter()  # how many times each callback must have run

    @property
    def done(self) -> bool:
        return self.state in TERMINAL

    def _end(self, state: S) -> None:
        self.state = state
        self.runs.update(self.pending)  # each registration runs exactly once, now
        self.pending = []

    def set_result(self, value: object) -> bool:
        """False: the handle was done and set_result() raises InvalidStateError."""
        if self.done:
            return False
        self.value = value
        self._end(S.SUCCESS)
        return True

    def set_exception(self, error: BaseException) -> bool:
        if self.done:
            return False
        self.error = error
        self._end(S.FAILURE)
        return True

    def cancel(self) -> bool:
        """False only when done. A blank PENDING handle has no work to reach: revoked at once. A
        STARTED one keeps running (REVOKED only once work really stopped): the request is recorded."""
        if self.done:
            return False
        self.cancel_requested = True
        if self.state is S.PENDING:
            self._end(S.REVOKED)
        return True

    def set_running_or_notify_cancel(self) -> bool | None:
        """cf's claim step: True (now STARTED), False (revoked), None: RuntimeError (any other state)."""
        if self.state is S.REVOKED:
            return False
        if self.state is S.PENDING:
            self.state = S.STARTED
            return True
        return None

    def add(self, cb: int) -> None:
        if self.done:
            self.runs[cb] += 1  # runs at once, here
        else:
            self.pending.append(cb)

    def remove(self, cb: int) -> int:
        removed = self.pending.count(cb)
        self.pending = [c for c in self.pending if c != cb]
        return removed


def outcome_of(fn: Callable[[], object]) -> Outcome:
    try:
        return ("value", fn())
    except TimeoutError:
        return ("timeout", None)
    except BaseException as exc:
        return ("raised", exc)


async def await_outcome(aw: Any, limit: float) -> Outcome:
    """Await ``aw`` for up to ``limit`` s, catching inside the awaiting task, so the very exception
    object comes back (a task boundary would replace a CancelledError with a new one)."""

    async def inner() -> Outcome:
        try:
            return ("value", await aw)
        except asyncio.CancelledError as exc:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # wait_for's timeout cancelled this task: not the handle's outcome
            return ("raised", exc)
        except BaseException as exc:
            return ("raised", exc)

    try:
        return await asyncio.wait_for(inner(), limit)
    except TimeoutError:
        return ("timeout", None)


RULES: Counter[str] = Counter()  # how often each operation ran, over all examples


class ResultMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.h: ab.Result[object] = ab.Result()
        self.m = Model()
        self.ran: list[tuple[int, S]] = []  # (callback, state it saw), in call order
        self.callbacks = [self._make_callback(i) for i in range(N_CALLBACKS)]
        RULES["examples"] += 1

    def _make_callback(self, i: int) -> Callable[[ab.Result[object]], None]:
        def callback(h: ab.Result[object]) -> None:
            assert h is self.h
            self.ran.append((i, h.state))

        return callback

    # -- producing --------------------------------------------------------------------------------

    @rule(value=VALUES)
    def set_result(self, value: object) -> None:
        RULES["set_result"] += 1
        got = outcome_of(lambda: self.h.set_result(value))
        if self.m.set_result(value):
            assert got == ("value", None), got
        else:
            assert got[0] == "raised" and isinstance(got[1], cf.InvalidStateError), got

    @rule(error=ERRORS)
    def set_exception(self, error: BaseException) -> None:
        RULES["set_exception"] += 1
        got = outcome_of(lambda: self.h.set_exception(error))
        if self.m.set_exception(error):
            assert got == ("value", None), got
        else:
            assert got[0] == "raised" and isinstance(got[1], cf.InvalidStateError), got

    @rule()
    def cancel(self) -> None:
        RULES["cancel"] += 1
        assert self.h.cancel() is self.m.cancel()

    @rule()
    def set_running_or_notify_cancel(self) -> None:
        RULES["set_running_or_notify_cancel"] += 1
        got = outcome_of(self.h.set_running_or_notify_cancel)
        want = self.m.set_running_or_notify_cancel()
        if want is None:
            assert got[0] == "raised" and isinstance(got[1], RuntimeError), got
        else:
            assert got == ("value", want), (got, want)

    # -- callbacks --------------------------------------------------------------------------------

    @rule(cb=st.integers(0, N_CALLBACKS - 1))
    def add_done_callback(self, cb: int) -> None:
        RULES["add_done_callback"] += 1
        self.h.add_done_callback(self.callbacks[cb])
        self.m.add(cb)

    @rule(cb=st.integers(0, N_CALLBACKS - 1))
    def remove_done_callback(self, cb: int) -> None:
        RULES["remove_done_callback"] += 1
        assert self.h.remove_done_callback(self.callbacks[cb]) == self.m.remove(cb)

    # -- reading ----------------------------------------------------------------------------------

    def expect(self, got: Outcome, *, propagate: bool = True) -> None:
        """``got`` is what get()/result() did; check it against the model."""
        m = self.m
        if not m.done:
            assert got == ("timeout", None), got
        elif m.state is S.SUCCESS:
            assert got[0] == "value" and got[1] is m.value, (got, m.value)
        elif m.state is S.FAILURE:
            assert got == ("raised" if propagate else "value", m.error) and got[1] is m.error, (got, m.error)
        elif propagate:
            assert got[0] == "raised" and type(got[1]) is cf.CancelledError, got
        else:
            assert got[0] == "value" and type(got[1]) is cf.CancelledError, got

    @rule(propagate=st.booleans())
    def get(self, propagate: bool) -> None:
        RULES["get"] += 1
        self.expect(outcome_of(lambda: self.h.get(timeout=0, propagate=propagate)), propagate=propagate)

    @rule()
    def result(self) -> None:
        RULES["result"] += 1
        self.expect(outcome_of(lambda: self.h.result(timeout=0)))

    @rule()
    def exception(self) -> None:
        RULES["exception"] += 1
        got = outcome_of(lambda: self.h.exception(timeout=0))
        m = self.m
        if not m.done:
            assert got == ("timeout", None), got
        elif m.state is S.SUCCESS:
            assert got == ("value", None), got
        elif m.state is S.FAILURE:
            assert got[0] == "value" and got[1] is m.error, (got, m.error)
        else:
            assert got[0] == "raised" and type(got[1]) is cf.CancelledError, got

    @rule()
    def wait(self) -> None:
        RULES["wait"] += 1
        assert self.h.wait(timeout=0) is self.m.done
        done, not_done = cf.wait([self.h], timeout=0)
        assert (done, not_done) == (({self.h}, set()) if self.m.done else (set(), {self.h}))

    @rule()
    def as_completed(self) -> None:
        RULES["as_completed"] += 1
        got = outcome_of(lambda: list(cf.as_completed([self.h], timeout=0)))
        assert got == (("value", [self.h]) if self.m.done else ("timeout", None)), got

    @precondition(lambda self: self.m.done)
    @rule(shielded=st.booleans())
    def await_done(self, shielded: bool) -> None:
        """``await`` on a fresh loop: the value, the very exception, or asyncio.CancelledError."""
        RULES["await_done"] += 1
        got = asyncio.run(await_outcome(ab.shield(self.h) if shielded else self.h, HANG))
        m = self.m
        if m.state is S.SUCCESS:
            assert got[0] == "value" and got[1] is m.value, (got, m.value)
        elif m.state is S.FAILURE:
            assert got[0] == "raised" and got[1] is m.error, (got, m.error)
        else:
            assert got[0] == "raised" and type(got[1]) is asyncio.CancelledError, got

    @precondition(lambda self: not self.m.done)
    @rule(shielded=st.booleans())
    def await_times_out(self, shielded: bool) -> None:
        """An awaiter that times out cancels the work, as awaiting a task does; ``shield`` opts out."""
        RULES["await_times_out"] += 1
        got = asyncio.run(await_outcome(ab.shield(self.h) if shielded else self.h, 1e-4))
        assert got == ("timeout", None), got
        if not shielded:
            self.m.cancel()

    @invariant()
    def agrees_with_the_model(self) -> None:
        h, m = self.h, self.m
        assert h.state is m.state and h.status is m.state
        assert h.done() is h.ready() is m.done
        assert h.cancelled() is (m.state is S.REVOKED)
        assert h.running() is (m.state is S.STARTED)
        assert h.successful() is (m.state is S.SUCCESS)
        assert h.failed() is (m.state is S.FAILURE)
        assert h.cancel_requested() is (m.cancel_requested or m.state is S.REVOKED)
        if m.state is S.SUCCESS:
            assert h.info is m.value
        elif m.state is S.FAILURE:
            assert h.info is m.error
        elif m.state is S.REVOKED:
            assert type(h.info) is cf.CancelledError
        else:
            assert h.info is None
        tb = h.traceback
        if m.state is S.FAILURE:
            assert isinstance(tb, str) and type(m.error).__name__ in tb, tb
        else:
            assert tb is None
        assert Counter(cb for cb, _ in self.ran) == +m.runs, (self.ran, m.runs)
        assert all(seen is m.state for _, seen in self.ran), self.ran


def test_handle_follows_its_model(record_property: Callable[[str, object], None]) -> None:
    RULES.clear()
    run_state_machine_as_test(
        ResultMachine,
        settings=settings(
            max_examples=EXAMPLES,
            stateful_step_count=STEPS,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
    print(f"\n[state machine] {dict(RULES)}")
    record_property("state_machine_rules", dict(RULES))
    assert RULES["examples"] >= EXAMPLES  # hypothesis ran the examples asked for (more while shrinking)
