"""Bad input across the whole public API (issue #4, row "bad input"; GUIDE 3.2).

Every public callable gets wrong types and values from hypothesis: ``st.from_type`` objects, a
``st.one_of`` of many kinds of junk, near misses of the strings an option takes (``st.from_regex``),
mixed with valid values so that each test also proves what is accepted. Each test computes, for every
example, whether the call is valid (its oracle), then checks:

- a valid call works: it returns, or raises only the documented outcome (the work's own error,
  ``TimeoutError`` from a timeout, ``RuntimeError`` where blocking could never end);
- an invalid call raises ``TypeError`` or ``ValueError`` whose message names the bad parameter, the
  bad value's type or the value itself (never ``AttributeError``, ``OverflowError``, a hang or a
  silent acceptance);
- no call hangs: every wait here has a small timeout (pytest-timeout is the last resort);
- the library's threads survive: after each test a thread hop and a coroutine still work, and after
  the module a process hop too.

Legitimately accepted (counted as "ok"): any callable as the work of ``run_in_thread``/
``run_in_process`` (its failure ends the handle FAILURE); any object for ``set_result`` and for
``remove_done_callback`` (which then removes nothing); ``timeout=0`` and ``float("inf")`` for
``get``/``result``/``exception``/``wait``; any object for ``propagate=``, read for its truth.
Documented errors of other classes: ``report_progress()`` outside work and ``get()`` on the loop thread
that runs the work (``RuntimeError``), ``set_result`` on a finished handle (``InvalidStateError``).

The gaps found so far each have a deterministic test at the end of the module, so the hypothesis tests
above keep checking everything else.
"""
# mypy: disable-error-code="comparison-overlap,unreachable"
# (tests read h.state again after the handle moved on, which mypy narrows to the first value read)

from __future__ import annotations

import asyncio
import collections
import concurrent.futures as cf
import decimal
import functools
import inspect
import ipaddress
import logging
import math
import multiprocessing
import pickle
import threading
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest
import workers
from conftest import SOAK  # type: ignore[import-not-found, unused-ignore]  # found when mypy runs on tests/
from hypothesis import HealthCheck, given, settings, strategies as st

import asyncbridge as ab

pytestmark = pytest.mark.stress

EXAMPLES = 200 * SOAK
HANG = 10.0  # a hang guard only: it fires on a bug, never decides an outcome
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)

# -- junk ----------------------------------------------------------------------------------------


class Opaque:
    """An instance of a class no API expects."""

    def __repr__(self) -> str:
        return "<Opaque>"


def plain_function(*args: object, **kwargs: object) -> str:
    return "plain"


async def one() -> int:
    return 1


async def async_square(x: int) -> int:
    return x * x


class Boom(Exception):
    """The failure of a FAILURE handle here: never a TypeError or ValueError, so it cannot pass for a
    validation error."""


CLOSED_LOOP = asyncio.new_event_loop()
CLOSED_LOOP.close()

SPECIAL: list[object] = [
    object(),
    Opaque(),
    Opaque,
    Ellipsis,
    NotImplemented,
    ValueError,
    ValueError("junk"),
    KeyboardInterrupt(),
    threading.Lock(),
    CLOSED_LOOP,
    plain_function,
    float("nan"),
    float("inf"),
    float("-inf"),
    -0.0,
    -1,
    10**30,
    2**63,
    "",
    "1",
    "0.5",
    b"1",
    (),
    range(3),
    memoryview(b"x"),
]


def _tame(x: object) -> bool:
    # Objects that draw from hypothesis lazily (generated functions, generators, iterators) must not
    # be consumed by a library thread after the example ends.
    return not (
        inspect.isfunction(x)
        or inspect.isgenerator(x)
        or isinstance(x, collections.abc.Iterator)
        or type(x).__module__.startswith("hypothesis")
    )


JUNK: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.complex_numbers(),
    st.decimals(),
    st.fractions(),
    st.text(max_size=10),
    st.binary(max_size=10),
    st.lists(st.integers(), max_size=3),
    st.tuples(st.integers(), st.text(max_size=3)),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.frozensets(st.integers(), max_size=3),
    st.from_type(object).filter(_tame),
    st.from_type(type),
    st.sampled_from(SPECIAL),
)
NOT_CALLABLE = JUNK.filter(lambda x: not callable(x))


def mixed(*valid: st.SearchStrategy[Any], junk: st.SearchStrategy[Any] = JUNK) -> st.SearchStrategy[Any]:
    """Half valid values, half junk. (``st.one_of`` flattens nested one_ofs and would give the 16 kinds
    of junk nearly every draw.)"""
    return st.booleans().flatmap(lambda v: st.one_of(*valid) if v else junk)


# Callables that are safe to call with junk from a library thread or a worker process (quick, no
# allocation sized by an argument, no files, picklable by reference).
SAFE_FNS: list[Callable[..., Any]] = [
    int,
    str,
    repr,
    bool,
    float,
    complex,
    abs,
    hash,
    type,
    id,
    len,
    isinstance,
    divmod,
    plain_function,
    workers.describe,
]
# Functions of this module would make a worker import it: keep to builtins and tests/workers.py there.
PROCESS_FNS = [f for f in SAFE_FNS if f is not plain_function]
UNPICKLABLE_FNS: list[Callable[..., Any]] = [
    lambda *a, **k: None,
    functools.partial(lambda *a, **k: None),
    threading.Lock().locked,
]
NUMBERS: st.SearchStrategy[Any] = st.one_of(
    st.none(), st.integers(-2, 3), st.floats(-1.0, 0.01), st.sampled_from([0, 0.0, 1e-9, float("inf")])
)
TIMEOUTS = mixed(NUMBERS)
KWARGS = st.dictionaries(st.sampled_from(["fn", "timeout", "executor", "x", "propagate"]), JUNK, max_size=2)
MEMBER_KINDS = ["done_cf", "failed_cf", "cancelled_cf", "done_handle", "failed_handle", "pending_handle"]


def is_number(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def ok_wait_timeout(x: object) -> bool:
    """get/result/exception/wait/ab.wait/as_completed: None, or a number >= 0 (huge ones clamp)."""
    return x is None or (is_number(x) and not math.isnan(x) and x >= 0)  # type: ignore[arg-type, operator]


def ok_time_limit(x: object) -> bool:
    """An execution time limit (spawn, @task): None, or a number > 0."""
    return x is None or (is_number(x) and x > 0)  # type: ignore[operator]


def short_repr(x: object) -> str:
    try:
        text = repr(x)
    except Exception:
        return ""
    return text if len(text) <= 60 else ""


def assert_clear(exc: BaseException | None, *names: str, bad: tuple[object, ...] = ()) -> None:
    """``exc`` is a TypeError or ValueError whose message names one of ``names`` (parameters,
    callables) or the type or value of one of the ``bad`` values."""
    assert exc is not None, "the call accepted bad input"
    assert isinstance(exc, TypeError | ValueError), f"unclear error class: {type(exc).__qualname__}: {exc}"
    message = str(exc)
    candidates = [*names]
    for b in bad:
        candidates += [type(b).__qualname__, type(b).__name__, short_repr(b)]
    assert any(c and c in message for c in candidates), f"{message!r} names none of {candidates}"


def attempt(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> tuple[Any, Exception | None]:
    try:
        return fn(*args, **kwargs), None
    except Exception as exc:
        return None, exc


def make_member(kind: str) -> Any:
    """A fresh valid member of gather/race/wait/as_completed."""
    if kind.endswith("_cf"):
        f: cf.Future[Any] = cf.Future()
        if kind == "done_cf":
            f.set_result(1)
        elif kind == "failed_cf":
            f.set_exception(Boom())
        else:
            f.cancel()
        return f
    h: ab.Result[Any] = ab.Result()
    if kind == "done_handle":
        h.set_result(1)
    elif kind == "failed_handle":
        h.set_exception(Boom())
    return h


def valid_member(x: object) -> bool:
    return isinstance(x, ab.Result | cf.Future | asyncio.Future) or inspect.isawaitable(x)


def hashable(x: object) -> bool:
    try:
        hash(x)
    except TypeError:
        return False
    return True


def finish_pending(members: list[Any]) -> None:
    for m in members:
        if isinstance(m, ab.Result) and not m.done():
            m.set_result(1)


def report(name: str, seen: collections.Counter[str]) -> None:
    print(f"\n[bad input] {name}: {sum(seen.values())} calls {dict(sorted(seen.items()))}")


class asyncbridge_log_quiet:
    """A done-callback registered with a closed ``loop=`` is dropped with an error logged to the
    ``asyncbridge`` logger, as documented; keep those records out of the test report."""

    def __enter__(self) -> None:
        self.logger = logging.getLogger("asyncbridge")
        self.level = self.logger.level
        self.logger.setLevel(logging.CRITICAL)

    def __exit__(self, *exc: object) -> None:
        self.logger.setLevel(self.level)


def library_still_works() -> None:
    assert ab.run_in_thread(int, "1").get(HANG) == 1
    assert ab.spawn(one()).get(HANG) == 1


@pytest.fixture(autouse=True)
def threads_survive() -> Iterator[None]:
    yield
    library_still_works()


@pytest.fixture(scope="module", autouse=True)
def processes_survive() -> Iterator[None]:
    yield
    library_still_works()
    assert ab.run_in_process(workers.square, 3).get(60) == 9


# -- wrap, spawn, shield -------------------------------------------------------------------------


def test_wrap_rejects_what_it_cannot_wrap() -> None:
    seen: collections.Counter[str] = collections.Counter()

    @SETTINGS
    @given(mixed(st.sampled_from(MEMBER_KINDS).map(make_member)))
    def run(obj: Any) -> None:
        h, exc = attempt(ab.wrap, obj)
        if isinstance(obj, ab.Result):
            assert h is obj
        elif isinstance(obj, cf.Future):
            assert isinstance(h, ab.Result) and h.done() == obj.done()
        else:
            assert_clear(exc, "wrap()", bad=(obj,))
            assert "accepts" in str(exc)  # ... and says what it takes
        seen["ok" if exc is None else type(exc).__name__] += 1

    run()
    report("wrap", seen)


def test_spawn_rejects_non_coroutines_and_bad_time_limits() -> None:
    seen: collections.Counter[str] = collections.Counter()

    @SETTINGS
    @given(JUNK, TIMEOUTS)
    def run(obj: Any, timeout: Any) -> None:
        _, exc = attempt(ab.spawn, obj)
        assert_clear(exc, "spawn()", bad=(obj,))
        seen["not a coroutine"] += 1

        coro = one()
        h, exc = attempt(ab.spawn, coro, timeout=timeout)
        if ok_time_limit(timeout):
            assert exc is None, exc
            outcome = h.get(HANG, propagate=False)
            assert outcome == 1 or isinstance(outcome, ab.TimeLimitExceeded), outcome
            seen["ok"] += 1
        else:
            coro.close()  # whether spawn() closes it itself is test_coroutine_is_closed_by_a_failing_call
            assert_clear(exc, "timeout", bad=(timeout,))
            seen["bad timeout"] += 1

    run()
    report("spawn", seen)


def test_shield_takes_only_handles() -> None:
    seen: collections.Counter[str] = collections.Counter()

    @SETTINGS
    @given(mixed(st.sampled_from(MEMBER_KINDS).map(make_member)))
    def run(obj: Any) -> None:
        shielded, exc = attempt(ab.shield, obj)
        if isinstance(obj, ab.Result):
            assert exc is None and shielded is not None
        else:
            assert_clear(exc, "shield()", bad=(obj,))
        seen["ok" if exc is None else type(exc).__name__] += 1

    run()
    report("shield", seen)


# -- run_in_thread, run_in_process, ProcessPool --------------------------------------------------


def test_run_in_thread_takes_any_callable_and_nothing_else() -> None:
    seen: collections.Counter[str] = collections.Counter()

    @SETTINGS
    @given(mixed(st.sampled_from(SAFE_FNS), junk=NOT_CALLABLE), st.lists(JUNK, max_size=3), KWARGS)
    def run(fn: Any, args: list[Any], kwargs: dict[str, Any]) -> None:
        h, exc = attempt(ab.run_in_thread, fn, *args, **kwargs)
        if callable(fn):
            assert exc is None, exc
            assert h.wait(HANG), f"{h!r} never finished"
            seen[str(h.state)] += 1
        else:
            assert_clear(exc, "run_in_thread()", bad=(fn,))
            seen[type(exc).__name__] += 1

    run()
    report("run_in_thread", seen)


def test_run_in_process_names_what_cannot_be_sent() -> None:
    seen: collections.Counter[str] = collections.Counter()
    handles: list[ab.Result[Any]] = []

    @SETTINGS
    @given(
        mixed(st.sampled_from(PROCESS_FNS), st.sampled_from(UNPICKLABLE_FNS), junk=NOT_CALLABLE),
        st.lists(JUNK, max_size=3),
        KWARGS,
    )
    def run(fn: Any, args: list[Any], kwargs: dict[str, Any]) -> None:
        h, exc = attempt(ab.run_in_process, fn, *args, **kwargs)
        if not callable(fn):
            assert_clear(exc, "run_in_process()", bad=(fn,))
            seen["not callable"] += 1
            return
        try:
            pickle.dumps((fn, args, kwargs))
        except Exception:
            assert_clear(exc, "cannot send")
            assert "run_in_process()" in str(exc) and "module-level function" in str(exc), exc
            seen["unpicklable"] += 1
        else:
            assert exc is None, exc
            handles.append(h)
            seen["sent"] += 1

    run()
    for h in handles:
        assert h.wait(60), f"{h!r} never finished"
        seen[f"sent: {h.state}"] += 1
    report("run_in_process", seen)


START_METHODS = multiprocessing.get_all_start_methods()


def test_process_pool_options_are_checked() -> None:
    seen: collections.Counter[str] = collections.Counter()

    @SETTINGS
    @given(
        mixed(st.none(), st.integers(-2, 4)),
        mixed(
            st.none(),
            st.sampled_from(START_METHODS),
            st.from_regex(r"\A(fork|spawn|forkserver|FORK|Spawn| fork)?[a-z_ ]{0,3}\Z"),
            junk=JUNK.filter(lambda x: not isinstance(x, tuple)),  # a tuple: test_start_method_...
        ),
        mixed(NUMBERS),
    )
    def run(max_workers: Any, start_method: Any, cancel_grace: Any) -> None:
        bad: dict[str, Any] = {}
        if not (
            max_workers is None
            or (is_number(max_workers) and isinstance(max_workers, int) and max_workers >= 1)
        ):
            bad["max_workers"] = max_workers
        if not (start_method is None or (isinstance(start_method, str) and start_method in START_METHODS)):
            bad["start_method"] = start_method
        if not (is_number(cancel_grace) and cancel_grace >= 0):  # NaN fails >= 0
            bad["cancel_grace"] = cancel_grace
        pool, exc = attempt(ab.ProcessPool, max_workers, start_method=start_method, cancel_grace=cancel_grace)
        if bad:
            assert_clear(exc, *bad, bad=tuple(bad.values()))
            seen[f"bad {'+'.join(bad)}"] += 1
        else:
            assert exc is None, exc
            pool.shutdown()
            seen["ok"] += 1

    run()
    report("ProcessPool", seen)


@pytest.mark.parametrize("start_method", ["nope", 3, (), ("fork", "spawn")], ids=repr)
def test_start_method_is_checked_by_name(start_method: Any) -> None:
    """ProcessPool passes ``start_method`` to multiprocessing unchecked, whose message names neither
    the parameter nor the choices ("cannot find context for 'nope'"), and for a tuple is nonsense (it
    formats the message with ``%``: "not enough arguments for format string")."""
    _, exc = attempt(ab.ProcessPool, 1, start_method=start_method)
    assert_clear(exc, "start_method")


def test_a_shut_down_pool_refuses_work_clearly() -> None:
    pool = ab.ProcessPool(1)
    pool.shutdown()
    with pytest.raises(RuntimeError, match="shut down"):
        pool.submit(workers.square, 3)
    with pytest.raises(TypeError, match="needs a callable, not int"):
        pool.submit(3)  # type: ignore[arg-type]


# -- task, Retry ---------------------------------------------------------------------------------


ENGINES = mixed(
    st.sampled_from(["auto", "thread", "process"]),
    st.from_regex(r"\A(auto|thread|process|Thread|AUTO|proc)?[a-z ]{0,2}\Z"),
)
RETRIES = mixed(st.none(), st.builds(ab.Retry, attempts=st.integers(1, 2)))
TASK_FNS = mixed(st.sampled_from([workers.square, async_square]), junk=NOT_CALLABLE)


def test_task_options_and_functions_are_checked() -> None:
    seen: collections.Counter[str] = collections.Counter()

    @SETTINGS
    @given(TASK_FNS, ENGINES, mixed(st.none(), st.floats(1, 30)), RETRIES)
    def run(fn: Any, engine: Any, timeout: Any, retry: Any) -> None:
        bare, exc = attempt(ab.task, fn)
        if fn is None:  # task(None) is task(): the decorator, with default options
            assert exc is None and not isinstance(bare, ab.Task | ab.AsyncTask)
        elif callable(fn):
            assert exc is None and bare.__wrapped__ is fn
        else:
            assert_clear(exc, "task()", bad=(fn,))

        bad: dict[str, Any] = {}
        if not (isinstance(engine, str) and engine in ("auto", "thread", "process")):
            bad["engine"] = engine
        if not ok_time_limit(timeout):
            bad["timeout"] = timeout
        if not (retry is None or isinstance(retry, ab.Retry)):
            bad["retry"] = retry
        decorator, exc = attempt(ab.task, engine=engine, timeout=timeout, retry=retry)
        if bad:
            assert_clear(exc, *bad, bad=tuple(bad.values()))
            seen[f"bad {'+'.join(bad)}"] += 1
            return
        assert exc is None, exc
        t, exc = attempt(decorator, fn)
        if not callable(fn):
            assert_clear(exc, "task()", bad=(fn,))
            seen["not a function"] += 1
            return
        if inspect.iscoroutinefunction(fn) and engine != "auto":
            assert_clear(exc, "async function", "engine")
            seen["async on a thread/process engine"] += 1
            return
        assert exc is None, exc
        outcome = t.delay(3).get(60, propagate=False)
        assert outcome == 9 or isinstance(outcome, ab.TimeLimitExceeded), outcome
        seen[f"ran on {engine}"] += 1

    run()
    report("task", seen)


def test_an_executor_engine_that_cannot_stop_work_refuses_a_time_limit() -> None:
    with cf.ThreadPoolExecutor(1) as executor:
        with pytest.raises(ValueError, match="timeout= needs an engine that can stop running work"):
            ab.task(engine=executor, timeout=1)
        assert ab.task(engine=executor)(workers.square).delay(4).get(HANG) == 16


EXCEPTION_CLASSES = st.sampled_from(
    [ValueError, OSError, Exception, BaseException, KeyboardInterrupt, ab.Cancelled]
)


def test_retry_policy_is_checked() -> None:
    seen: collections.Counter[str] = collections.Counter()

    @SETTINGS
    @given(
        mixed(st.integers(-1, 4)),
        mixed(NUMBERS),
        mixed(
            EXCEPTION_CLASSES,
            st.tuples(EXCEPTION_CLASSES, EXCEPTION_CLASSES),
            st.lists(EXCEPTION_CLASSES, max_size=2),
            st.tuples(EXCEPTION_CLASSES, JUNK),
        ),
    )
    def run(attempts: Any, backoff: Any, on: Any) -> None:
        bad: dict[str, Any] = {}
        if not (is_number(attempts) and isinstance(attempts, int) and attempts >= 1):
            bad["attempts"] = attempts
        if not (is_number(backoff) and backoff >= 0):
            bad["backoff"] = backoff
        classes = on if isinstance(on, tuple) else (on,)
        if not (classes and all(isinstance(c, type) and issubclass(c, BaseException) for c in classes)):
            bad["on"] = on
        policy, exc = attempt(ab.Retry, attempts=attempts, backoff=backoff, on=on)
        if bad:
            assert_clear(exc, *bad, bad=tuple(bad.values()))
            seen[f"bad {'+'.join(bad)}"] += 1
        else:
            assert exc is None, exc
            assert policy.on == classes and policy.delay_before(2) == min(
                float(backoff), threading.TIMEOUT_MAX
            )  # clamped, documented
            seen["ok"] += 1

    run()
    report("Retry", seen)


# -- gather, race, wait, as_completed ------------------------------------------------------------

# Mostly valid members, so that a list of four is often valid as a whole.
MEMBERS = st.lists(
    mixed(st.sampled_from(MEMBER_KINDS), junk=mixed(st.sampled_from(MEMBER_KINDS))), max_size=4
)


def build(tokens: list[Any]) -> list[Any]:
    """Member kinds become fresh futures and handles; junk stays junk."""
    return [make_member(t) if isinstance(t, str) and t in MEMBER_KINDS else t for t in tokens]


@pytest.mark.parametrize("combinator", [ab.gather, ab.race], ids=["gather", "race"])
def test_gather_and_race_take_only_awaitables(combinator: Callable[..., ab.Result[Any]]) -> None:
    seen: collections.Counter[str] = collections.Counter()
    name = combinator.__name__

    @SETTINGS
    @given(MEMBERS)
    def run(tokens: list[Any]) -> None:
        members = build(tokens)
        out, exc = attempt(combinator, *members)
        invalid = [m for m in members if not valid_member(m)]
        if invalid:
            assert_clear(exc, bad=tuple(invalid))
            assert f"{name}()" in str(exc)
            seen["bad member"] += 1
        elif name == "race" and not members:
            assert_clear(exc, "at least one")
            seen["empty"] += 1
        else:
            assert exc is None, exc
            finish_pending(members)
            assert out.wait(HANG), f"{out!r} never finished"
            seen[str(out.state)] += 1

    run()
    report(name, seen)


RETURN_WHEN = mixed(
    st.sampled_from([ab.FIRST_COMPLETED, ab.FIRST_EXCEPTION, ab.ALL_COMPLETED]),
    st.from_regex(r"\A(FIRST|ALL|first)?_?(COMPLETED|EXCEPTION|completed|COMPLETE)?\Z"),
)


def small(x: object) -> bool:
    """Junk that is not iterable, or iterates quickly: an IPv6 network is iterable too, over 2**128
    addresses, which wait() would dutifully read (as cf.wait would)."""
    if isinstance(x, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return False
    if not isinstance(x, range):
        return True
    try:
        return len(x) <= 10
    except OverflowError:  # a range longer than sys.maxsize has no len()
        return False


def is_snan(x: object) -> bool:
    return isinstance(x, decimal.Decimal) and x.is_snan()


# A signalling-NaN Decimal refuses to be hashed with a message of its own: see
# test_an_unhashable_member_is_named, which keeps that case apart.
HANDLE_LISTS = mixed(MEMBERS.filter(lambda ms: not any(map(is_snan, ms))).map(build), junk=JUNK.filter(small))


def members_problem(handles: Any) -> tuple[object, ...] | None:
    """The bad values among ``handles`` (or the non-iterable itself); None if every member is fine."""
    try:
        members = list(handles)
    except TypeError:
        return (handles,)
    bad = tuple(m for m in members if not (valid_member(m) and hashable(m)))
    return bad or None


def test_wait_checks_members_timeout_and_return_when() -> None:
    seen: collections.Counter[str] = collections.Counter()

    @SETTINGS
    @given(HANDLE_LISTS, TIMEOUTS, RETURN_WHEN)
    def run(handles: Any, timeout: Any, return_when: Any) -> None:
        members = list(handles) if isinstance(handles, list) else []
        names: list[str] = []
        bad: list[object] = []
        if return_when not in (ab.FIRST_COMPLETED, ab.FIRST_EXCEPTION, ab.ALL_COMPLETED):
            names.append("return_when")
            bad.append(return_when)
        if not ok_wait_timeout(timeout):
            names.append("timeout")
            bad.append(timeout)
        problem = members_problem(handles)
        if problem is not None:
            bad.extend(problem)
        out, exc = attempt(ab.wait, handles, timeout=timeout, return_when=return_when)
        if names or problem is not None:
            assert_clear(exc, *names, bad=tuple(bad))
            seen[f"bad {'+'.join(names) or 'members'}"] += 1
            return
        assert exc is None, exc
        finish_pending(members)
        done, pending = out.get(HANG)
        assert done | pending == set(members) and not done & pending
        seen["ok"] += 1

    run()
    report("wait", seen)


def test_as_completed_checks_members_and_timeout() -> None:
    seen: collections.Counter[str] = collections.Counter()

    @SETTINGS
    @given(HANDLE_LISTS, TIMEOUTS)
    def run(handles: Any, timeout: Any) -> None:
        members = list(handles) if isinstance(handles, list) else []
        bad: list[object] = []
        names = []
        if not ok_wait_timeout(timeout):
            names.append("timeout")
            bad.append(timeout)
        problem = members_problem(handles)
        if problem is not None:
            bad.extend(problem)
        it, exc = attempt(ab.as_completed, handles, timeout=timeout)
        if names or problem is not None:
            assert_clear(exc, *names, bad=tuple(bad))
            seen[f"bad {'+'.join(names) or 'members'}"] += 1
            return
        assert exc is None, exc
        finish_pending(members)
        try:
            yielded = list(it)
        except TimeoutError:
            assert timeout is not None  # only a timeout may cut the iteration short
            seen["timed out"] += 1
        else:
            assert len(yielded) == len(set(map(id, members))) and set(map(id, yielded)) == set(
                map(id, members)
            )
            seen["ok"] += 1

    run()
    report("as_completed", seen)


@pytest.mark.parametrize("member", [[], {}, decimal.Decimal("sNaN")], ids=repr)
@pytest.mark.parametrize("combinator", [ab.wait, ab.as_completed], ids=["wait", "as_completed"])
def test_an_unhashable_member_is_named(combinator: Callable[..., Any], member: object) -> None:
    """wait() and as_completed() drop duplicates through a dict before they look at the members, so an
    unhashable member fails with the hash's own error: fine for a list ("unhashable type: 'list'"),
    but a signalling-NaN Decimal says only "Cannot hash a signaling NaN value"."""
    _, exc = attempt(combinator, [ab.Result(), member])
    assert_clear(exc, combinator.__name__, bad=(member,))


# -- checkpoint, cancel_requested, report_progress, State ----------------------------------------


def report_and_return(meta: dict[str, Any]) -> str:
    ab.report_progress(**meta)
    return "reported"


def test_calls_made_inside_work_reject_arguments_they_do_not_take() -> None:
    seen: collections.Counter[str] = collections.Counter()
    handles: list[ab.Result[Any]] = []

    @SETTINGS
    @given(st.lists(JUNK, max_size=2), st.dictionaries(st.text(max_size=5), JUNK, max_size=3))
    def run(args: list[Any], meta: dict[str, Any]) -> None:
        for fn in (ab.checkpoint, ab.cancel_requested):
            result, exc = attempt(fn, *args)
            if args:
                assert_clear(exc, fn.__name__)
            else:
                assert exc is None and result in (None, False)
        _, exc = attempt(ab.report_progress, *args, **meta)
        if args:
            assert_clear(exc, "report_progress()")
            seen["positional"] += 1
        else:
            assert isinstance(exc, RuntimeError) and "outside asyncbridge work" in str(exc), exc
            seen["outside work"] += 1
        h = ab.run_in_thread(report_and_return, meta)
        assert h.get(HANG) == "reported"
        sent, exc = attempt(ab.run_in_process, ab.report_progress, **meta)
        try:
            pickle.dumps(meta)
        except Exception:
            assert_clear(exc, "cannot send argument")
            seen["process: unpicklable meta"] += 1
        else:
            assert exc is None, exc
            handles.append(sent)
            seen["process: sent"] += 1

    run()
    for h in handles:
        assert h.wait(60), f"{h!r} never finished"
        seen[f"process: {h.state}"] += 1
    report("checkpoint/cancel_requested/report_progress", seen)


def test_state_lookup_names_the_bad_value() -> None:
    seen: collections.Counter[str] = collections.Counter()
    names = [s.value for s in ab.State]

    @SETTINGS
    @given(mixed(st.sampled_from(names), st.from_regex(r"\A[A-Z]{0,8}\Z")))
    def run(value: Any) -> None:
        state, exc = attempt(ab.State, value)
        if isinstance(value, str) and value in names:
            assert state == value
            seen["ok"] += 1
        else:
            assert_clear(exc, "State", bad=(value,))
            seen["bad"] += 1

    run()
    report("State", seen)


# -- Result methods ------------------------------------------------------------------------------


@pytest.fixture
def handles() -> Iterator[dict[str, ab.Result[Any]]]:
    """One handle per state; the running one is thread work released when the test ends."""
    release, started = threading.Event(), threading.Event()

    def hold() -> str:
        started.set()
        release.wait(60)
        return "released"

    pending: ab.Result[Any] = ab.Result()
    success: ab.Result[Any] = ab.Result()
    success.set_result(42)
    failure: ab.Result[Any] = ab.Result()
    failure.set_exception(Boom("failed"))
    revoked: ab.Result[Any] = ab.Result()
    revoked.cancel()
    running = ab.run_in_thread(hold)
    assert started.wait(HANG)
    yield {"pending": pending, "running": running, "success": success, "failure": failure, "revoked": revoked}
    release.set()
    assert running.get(HANG) == "released"


STATE_NAMES = st.sampled_from(["pending", "running", "success", "failure", "revoked"])


def test_result_waiting_methods_check_their_timeout(handles: dict[str, ab.Result[Any]]) -> None:
    seen: collections.Counter[str] = collections.Counter()

    @SETTINGS
    # propagate= is read for its truth; NotImplemented is left out because Python itself warns
    # ("should not be used in a boolean context") for any truth test of it.
    @given(
        STATE_NAMES,
        st.sampled_from(["get", "result", "exception", "wait"]),
        TIMEOUTS,
        JUNK.filter(lambda x: x is not NotImplemented),
    )
    def run(which: str, method: str, timeout: Any, propagate: Any) -> None:
        h = handles[which]
        call = getattr(h, method)
        kwargs = {"propagate": propagate} if method == "get" else {}
        if not ok_wait_timeout(timeout):
            _, exc = attempt(call, timeout, **kwargs)
            assert_clear(exc, "timeout", bad=(timeout,))
            seen["bad timeout"] += 1
            return
        if not h.done() and (timeout is None or timeout > 0.01):
            seen["skipped: would block"] += 1  # a valid long wait on unfinished work
            return
        try:
            value = call(timeout, **kwargs)
        except TimeoutError:
            assert not h.done() and method != "wait"
            seen["TimeoutError (unfinished)"] += 1
        except (Boom, cf.CancelledError):
            assert h.state in (ab.State.FAILURE, ab.State.REVOKED)
            seen["the work's outcome raised"] += 1
        else:
            if method == "wait":
                assert value is h.done()
            seen["returned"] += 1

    run()
    report("Result.get/result/exception/wait", seen)


CALLBACKS = mixed(st.sampled_from([id, repr, str, bool, type, plain_function]), junk=NOT_CALLABLE)
LOOPS = mixed(st.none(), st.just(CLOSED_LOOP))


def test_result_callback_methods_check_fn_and_loop(handles: dict[str, ab.Result[Any]]) -> None:
    seen: collections.Counter[str] = collections.Counter()

    @SETTINGS
    @given(STATE_NAMES, st.sampled_from(["add_done_callback", "on_progress"]), CALLBACKS, LOOPS, JUNK)
    def run(which: str, method: str, fn: Any, loop: Any, other: Any) -> None:
        h = handles[which]
        _, exc = attempt(getattr(h, method), fn, loop=loop)
        if not callable(fn):
            assert_clear(exc, f"{method}()", bad=(fn,))
            seen["bad fn"] += 1
        elif not (loop is None or isinstance(loop, asyncio.AbstractEventLoop)):
            assert_clear(exc, "loop", bad=(loop,))
            seen["bad loop"] += 1
        else:
            assert exc is None, exc
            seen["ok"] += 1
        removed, exc = attempt(h.remove_done_callback, other)  # takes anything: removes nothing
        assert exc is None and removed == 0, (removed, exc)

    with asyncbridge_log_quiet():
        run()
    report("Result.add_done_callback/on_progress/remove_done_callback", seen)


def test_result_then_checks_fn(handles: dict[str, ab.Result[Any]]) -> None:
    seen: collections.Counter[str] = collections.Counter()

    @SETTINGS
    @given(STATE_NAMES, mixed(st.sampled_from([*SAFE_FNS, async_square]), junk=NOT_CALLABLE))
    def run(which: str, fn: Any) -> None:
        h = handles[which]
        nxt, exc = attempt(h.then, fn)
        if not callable(fn):
            assert_clear(exc, "then()", bad=(fn,))
            seen["bad fn"] += 1
            return
        assert exc is None, exc
        if h.done():
            assert nxt.wait(HANG), f"{nxt!r} never finished"
            seen[f"then on {which}: {nxt.state}"] += 1
        else:
            # Not cancelled: cancelling it would cancel its source, this test's shared handle.
            assert not nxt.done()
            seen[f"then on {which}"] += 1

    run()
    report("Result.then", seen)


def test_result_setters_check_their_argument() -> None:
    seen: collections.Counter[str] = collections.Counter()

    @SETTINGS
    @given(JUNK, st.booleans())
    def run(value: Any, finished: bool) -> None:
        h: ab.Result[Any] = ab.Result()
        if finished:
            h.set_result("first")
        _, exc = attempt(h.set_result, value)
        if finished:
            assert isinstance(exc, cf.InvalidStateError) and "already done" in str(exc), exc
        else:
            assert exc is None and h.result(0) is value
        g: ab.Result[Any] = ab.Result()
        if finished:
            g.set_result("first")
        _, exc = attempt(g.set_exception, value)
        if not isinstance(value, BaseException):
            assert_clear(exc, "set_exception()", bad=(value,))
            seen["set_exception: not an exception"] += 1
        elif finished:
            assert isinstance(exc, cf.InvalidStateError), exc
            seen["set_exception: already done"] += 1
        else:
            assert exc is None and g.exception(0) is value
            seen["set_exception: ok"] += 1

    run()
    report("Result.set_result/set_exception", seen)


NO_ARG_METHODS = [
    "cancel",
    "cancelled",
    "done",
    "running",
    "ready",
    "successful",
    "failed",
    "set_running_or_notify_cancel",
    "progress",
    "cancel_requested",
]


def test_result_methods_without_parameters_reject_arguments(handles: dict[str, ab.Result[Any]]) -> None:
    seen: collections.Counter[str] = collections.Counter()

    @SETTINGS
    @given(STATE_NAMES, st.sampled_from(NO_ARG_METHODS), st.lists(JUNK, min_size=1, max_size=2))
    def run(which: str, method: str, args: list[Any]) -> None:
        _, exc = attempt(getattr(handles[which], method), *args)
        assert_clear(exc, method)
        seen[method] += 1

    run()

    run()
    report("Result methods that take no arguments", seen)


def test_result_constructor_checks_task_id_and_app() -> None:
    """``Result()`` is a blank handle; ``Result(task_id, app=celery_app)`` is a Celery task's handle
    (with asyncbridge[celery]; without it, an ImportError that says so). A str id is never sent with
    ``app=None`` here: that would look it up in whatever Celery app is current."""
    seen: collections.Counter[str] = collections.Counter()

    @SETTINGS
    @given(
        mixed(st.none(), st.from_regex(r"\A[0-9a-f]{32}\Z"), st.from_regex(r"\A[\w:-]{0,12}\Z")),
        mixed(st.none()),
        st.lists(JUNK, min_size=2, max_size=3),
    )
    def construct(task_id: Any, app: Any, too_many: list[Any]) -> None:
        if isinstance(task_id, str) and task_id and app is None:
            app = Opaque()
        h, exc = attempt(ab.Result, task_id, app=app)
        if task_id is None and app is None:
            assert exc is None and h.state is ab.State.PENDING
            seen["blank"] += 1
        elif isinstance(exc, ImportError):
            assert "asyncbridge[celery]" in str(exc), exc
            seen["no celery"] += 1
        elif task_id is None:
            assert_clear(exc, "task id")
            seen["app without id"] += 1
        elif not (isinstance(task_id, str) and task_id):
            assert_clear(exc, "task id", bad=(task_id,))
            seen["bad id"] += 1
        else:
            assert_clear(exc, "app", bad=(app,))
            seen["bad app"] += 1
        _, exc = attempt(ab.Result, *too_many)
        assert_clear(exc, "Result")

    construct()
    report("Result(task_id, app=)", seen)


# -- inside a running loop, both backends ---------------------------------------------------------


@pytest.mark.anyio
@SETTINGS
@given(obj=JUNK, limit=TIMEOUTS, tokens=MEMBERS)
async def test_bad_input_inside_async_code(obj: Any, limit: Any, tokens: list[Any]) -> None:
    """In async code on either backend: the same checks, plus ``get()`` on the loop that runs the work
    (a documented RuntimeError that says to await, never a deadlock)."""
    _, exc = attempt(ab.spawn, obj)
    assert_clear(exc, "spawn()", bad=(obj,))
    _, exc = attempt(ab.wrap, obj)
    assert_clear(exc, "wrap()", bad=(obj,))
    _, exc = attempt(ab.shield, obj)
    assert_clear(exc, "shield()", bad=(obj,))

    h = ab.spawn(one())
    _, exc = attempt(h.get, limit)
    if ok_wait_timeout(limit):
        assert isinstance(exc, RuntimeError) and "await" in str(exc), exc
    else:
        assert_clear(exc, "timeout", bad=(limit,))
    assert await h == 1

    members = build(tokens)
    out, exc = attempt(ab.gather, *members, return_exceptions=True)
    invalid = [m for m in members if not valid_member(m)]
    if invalid:
        assert_clear(exc, "gather()", bad=tuple(invalid))
    else:
        finish_pending(members)
        assert len(await out) == len(members)


# -- the gaps, one deterministic test each -------------------------------------------------------


def site_params() -> list[Any]:
    """Calls that must not swallow a coroutine they were given and then fail (GUIDE 3.2: close it
    first, or Python also warns "never awaited", which under ``filterwarnings = error`` buries the
    real message), and must not start its work."""
    blank: Callable[[], ab.Result[Any]] = ab.Result
    sites: list[tuple[str, Callable[[Coroutine[Any, Any, Any]], object]]] = [
        ("run_in_thread", lambda c: ab.run_in_thread(c)),  # type: ignore[arg-type]
        ("run_in_process", lambda c: ab.run_in_process(c)),  # type: ignore[arg-type]
        ("ProcessPool.submit", lambda c: ab.ProcessPool(1).submit(c)),  # type: ignore[arg-type]
        ("add_done_callback", lambda c: blank().add_done_callback(c)),  # type: ignore[arg-type]
        ("on_progress", lambda c: blank().on_progress(c)),  # type: ignore[arg-type]
        ("then", lambda c: blank().then(c)),  # type: ignore[call-overload]
        ("task", lambda c: ab.task(c)),  # type: ignore[call-overload]
        ("task(engine=...)", lambda c: ab.task(engine="thread")(c)),  # type: ignore[call-overload]
        ("shield", lambda c: ab.shield(c)),  # type: ignore[arg-type]
        ("spawn(timeout=-1)", lambda c: ab.spawn(c, timeout=-1)),
        ("gather(coro, junk)", lambda c: ab.gather(c, 1)),  # type: ignore[call-overload]
        ("gather(junk, coro)", lambda c: ab.gather(1, c)),  # type: ignore[call-overload]
        ("race(coro, junk)", lambda c: ab.race(c, 1)),  # type: ignore[call-overload]
        ("race(junk, coro)", lambda c: ab.race(1, c)),  # type: ignore[call-overload]
        ("wait([coro, junk])", lambda c: ab.wait([c, 1])),
        ("wait([junk, coro])", lambda c: ab.wait([1, c])),
        ("wait(return_when=junk)", lambda c: ab.wait([c], return_when="ALL")),
        ("wait(timeout=-1)", lambda c: ab.wait([c], timeout=-1)),
        ("as_completed([coro, junk])", lambda c: ab.as_completed([c, 1])),
        ("as_completed([junk, coro])", lambda c: ab.as_completed([1, c])),
        ("as_completed(timeout=-1)", lambda c: ab.as_completed([c], timeout=-1)),
    ]
    return [pytest.param(call, id=name) for name, call in sites]


@pytest.mark.parametrize("call", site_params())
def test_coroutine_is_closed_by_a_failing_call(call: Callable[[Coroutine[Any, Any, Any]], object]) -> None:
    ran: list[str] = []

    async def work() -> str:
        ran.append("ran")
        return "work"

    coro = work()
    try:
        _, exc = attempt(call, coro)
        assert isinstance(exc, TypeError | ValueError), exc  # messages: the tests above
        # Let the background loop run anything the call may have scheduled before it failed: its
        # callbacks run in order, so once this spawn has finished, an earlier one has started.
        assert ab.spawn(one()).get(HANG) == 1
        state = inspect.getcoroutinestate(coro)
    finally:
        coro.close()  # so that a gap fails this test alone, not a later one with a stray warning
    assert not ran, f"the call raised {exc!r} but started the coroutine it was given"
    assert state == inspect.CORO_CLOSED, f"the call raised {exc!r} and left the coroutine {state}, unclosed"


def test_remove_done_callback_accepts_a_coroutine_and_removes_nothing() -> None:
    """Legitimately accepted: removal compares, it never calls; the caller keeps the coroutine."""
    coro = one()
    try:
        assert ab.Result().remove_done_callback(coro) == 0  # type: ignore[arg-type]
    finally:
        coro.close()


HUGE = 10**400  # an int too large for a float: a number all the same


def done() -> ab.Result[Any]:
    return ab.wrap(make_member("done_cf"))


def spawn_huge() -> object:
    coro = one()
    try:
        return ab.spawn(coro, timeout=HUGE).get(HANG)
    finally:
        coro.close()  # a no-op once it ran; spares a "never awaited" warning if spawn() refused it


def huge_timeout_sites() -> list[Any]:
    sites: list[tuple[str, str, Callable[[], object]]] = [
        ("get", "timeout", lambda: done().get(HUGE)),
        ("result", "timeout", lambda: done().result(HUGE)),
        ("exception", "timeout", lambda: done().exception(HUGE)),
        ("wait", "timeout", lambda: done().wait(HUGE)),
        ("ab.wait", "timeout", lambda: ab.wait([done()], timeout=HUGE).get(HANG)),
        ("ab.as_completed", "timeout", lambda: list(ab.as_completed([done()], timeout=HUGE))),
        ("spawn", "timeout", spawn_huge),
        ("task", "timeout", lambda: ab.task(timeout=HUGE)(workers.square).delay(2).get(HANG)),
        ("ProcessPool", "cancel_grace", lambda: ab.ProcessPool(1, cancel_grace=HUGE).shutdown()),
    ]
    return [pytest.param(param, call, id=name) for name, param, call in sites]


@pytest.mark.parametrize(("param", "call"), huge_timeout_sites())
def test_an_int_too_large_for_a_float_is_accepted_or_rejected_clearly(
    param: str, call: Callable[[], object]
) -> None:
    """A timeout of 10**400 seconds is a valid number (a float of 1e300 is accepted and clamped); it
    must work, or fail with a TypeError/ValueError naming the parameter, never OverflowError."""
    _, exc = attempt(call)
    if exc is not None:
        assert_clear(exc, param)


def test_retry_backoff_too_large_for_a_float_never_strands_the_task(caplog: pytest.LogCaptureFixture) -> None:
    """``Retry(backoff=10**400)`` passes the constructor's checks; the retry must then wait (or the
    constructor refuse it with a ValueError naming backoff), never break inside the library."""
    policy, exc = attempt(ab.Retry, attempts=2, backoff=HUGE)
    if exc is not None:
        assert_clear(exc, "backoff")
        return

    def fail() -> None:
        raise Boom("attempt failed")

    with caplog.at_level(logging.ERROR, logger="asyncbridge"):
        h = ab.task(retry=policy)(fail).delay()
        for _ in range(1000):  # the first attempt ends at once; then the handle waits in RETRY
            if h.state is ab.State.RETRY:
                break
            h.wait(0.01)
        accepted = h.cancel()
        h.wait(HANG)
    errors = [r.getMessage() + str(r.exc_info and r.exc_info[1]) for r in caplog.records]
    assert not errors, f"the library failed inside its own callback: {errors}"
    assert accepted and h.state is ab.State.REVOKED


def test_the_library_still_works_after_the_junk() -> None:
    """After everything above: a thread hop, a coroutine and a process hop still work."""
    library_still_works()
    assert ab.run_in_process(workers.square, 5).get(60) == 25
    names = {t.name for t in threading.enumerate()}
    assert "asyncbridge-loop" in names and any(n.startswith("asyncbridge-worker") for n in names)
