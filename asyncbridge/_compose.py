"""Handles made of handles: ``gather``, ``as_completed``, ``wait``, ``race`` and ``Result.then``.

Each works on any mix of kinds of work (coroutines, thread, process, executor, asyncio futures),
because it sees only handles: it listens with done-callbacks, answers through a handle of its own,
and cancels members through their ``cancel()``. Nothing here waits in a thread of its own.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures as cf
import functools
import inspect
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any, Generic, Literal, Protocol, TypeAlias, TypeVar, overload

from . import _registry as registry
from ._asyncio import BACKGROUND, spawn
from ._awaiting import shield
from ._errors import close_coroutines, format_seconds
from ._result import Owned, Result, install_then, outcomes
from ._state import REVOKED, SUCCESS
from ._threads import run_in_thread
from ._validate import callable_arg
from ._waiters import check_timeout
from ._wrap import wrap

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Iterator

T = TypeVar("T")
U = TypeVar("U")
T1 = TypeVar("T1")
T2 = TypeVar("T2")
T3 = TypeVar("T3")
T4 = TypeVar("T4")
T5 = TypeVar("T5")

T_co = TypeVar("T_co", covariant=True)


class _SupportsResult(Protocol[T_co]):
    """A ``concurrent.futures.Future``, for the type checker (covariant, unlike ``cf.Future``: in a
    union with ``Awaitable``, an invariant ``cf.Future[T]`` makes mypy infer ``Never`` for a handle,
    which is both)."""

    def result(self, timeout: float | None = None) -> T_co: ...


#: What the compositions take as a member, for the type checker: anything awaitable (handles,
#: asyncio futures, coroutines) or a ``concurrent.futures.Future``. Celery results, untyped, are Any.
Member: TypeAlias = "Awaitable[T] | _SupportsResult[T]"

FIRST_COMPLETED = cf.FIRST_COMPLETED
FIRST_EXCEPTION = cf.FIRST_EXCEPTION
ALL_COMPLETED = cf.ALL_COMPLETED


async def _await(awaitable: Awaitable[T]) -> T:
    return await awaitable


def _as_handle(obj: Any) -> Result[Any]:
    """A handle for one member (checked by _members): wrap() what it knows, spawn other awaitables.
    An adapter's kind of work that is also awaitable (a Dask future) is the adapter's to wrap."""
    if isinstance(obj, Result):
        return obj
    if (
        inspect.isawaitable(obj)
        and not isinstance(obj, Result | asyncio.Future)
        and not inspect.iscoroutine(obj)
        and not registry.wraps(obj)
    ):
        return spawn(_await(obj))
    return wrap(obj)


_FUTURES = (Result, asyncio.Future, cf.Future)


def _members(objs: Any, caller: str, *, unique: bool = False) -> list[Any]:
    """The members given, checked before any is started: on bad input nothing runs, and every
    coroutine given is closed. ``unique``: drop duplicates (cf.wait takes a set)."""
    try:
        members = list(objs)
    except TypeError:
        close_coroutines(objs)
        raise TypeError(f"{caller}() takes an iterable of handles, not {type(objs).__qualname__}") from None
    for m in members:
        if not (
            isinstance(m, _FUTURES)
            or inspect.isawaitable(m)
            or registry.wraps(m)  # an adapter's kind of work (a Celery result)
        ):
            close_coroutines(*members)
            raise TypeError(
                f"{caller}() takes handles, futures, coroutines, awaitables or Celery results, "
                f"not {type(m).__qualname__}"
            )
    if unique:
        try:
            members = list(dict.fromkeys(members))
        except TypeError as exc:
            close_coroutines(*members)
            raise TypeError(f"{caller}() needs hashable members: {exc}") from None
    return members


def _outcome_of(h: Result[Any]) -> BaseException | None:
    """The exception a finished member ended with (REVOKED: a cf.CancelledError), or None."""
    st, value, _ = h._ended()  # the composition carries a failure on: it is read here
    return None if st is SUCCESS else value


def _schedule(delay: float, fn: Callable[[], object]) -> Callable[[], None]:
    """Call ``fn`` after ``delay`` seconds on the background loop; return a thread-safe cancel."""
    loop = BACKGROUND.loop()
    box: list[asyncio.TimerHandle] = []
    loop.call_soon_threadsafe(lambda: box.append(loop.call_later(delay, fn)))

    def cancel_all() -> None:
        for timer in box:
            timer.cancel()

    def cancel() -> None:
        try:
            loop.call_soon_threadsafe(cancel_all)  # TimerHandle.cancel is not thread-safe
        except RuntimeError:
            pass  # the loop is shut down: the timer will never fire

    return cancel


# -- gather --------------------------------------------------------------------------------------


# The overloads follow asyncio.gather's in typeshed: a tuple type per position for up to five
# members (the value is a list at run time, as asyncio's is), a list of one type beyond.
@overload
def gather(m1: Member[T1], /, *, return_exceptions: Literal[False] = False) -> Result[tuple[T1]]: ...  # type: ignore[overload-overlap]
@overload
def gather(  # type: ignore[overload-overlap]
    m1: Member[T1], m2: Member[T2], /, *, return_exceptions: Literal[False] = False
) -> Result[tuple[T1, T2]]: ...
@overload
def gather(  # type: ignore[overload-overlap]
    m1: Member[T1], m2: Member[T2], m3: Member[T3], /, *, return_exceptions: Literal[False] = False
) -> Result[tuple[T1, T2, T3]]: ...
@overload
def gather(  # type: ignore[overload-overlap]
    m1: Member[T1],
    m2: Member[T2],
    m3: Member[T3],
    m4: Member[T4],
    /,
    *,
    return_exceptions: Literal[False] = False,
) -> Result[tuple[T1, T2, T3, T4]]: ...
@overload
def gather(  # type: ignore[overload-overlap]
    m1: Member[T1],
    m2: Member[T2],
    m3: Member[T3],
    m4: Member[T4],
    m5: Member[T5],
    /,
    *,
    return_exceptions: Literal[False] = False,
) -> Result[tuple[T1, T2, T3, T4, T5]]: ...
@overload
def gather(*members: Member[T], return_exceptions: Literal[False] = False) -> Result[list[T]]: ...  # type: ignore[overload-overlap]
@overload
def gather(m1: Member[T1], /, *, return_exceptions: bool) -> Result[tuple[T1 | BaseException]]: ...
@overload
def gather(
    m1: Member[T1], m2: Member[T2], /, *, return_exceptions: bool
) -> Result[tuple[T1 | BaseException, T2 | BaseException]]: ...
@overload
def gather(
    m1: Member[T1], m2: Member[T2], m3: Member[T3], /, *, return_exceptions: bool
) -> Result[tuple[T1 | BaseException, T2 | BaseException, T3 | BaseException]]: ...
@overload
def gather(*members: Member[T], return_exceptions: bool) -> Result[list[T | BaseException]]: ...
def gather(*members: Any, return_exceptions: bool = False) -> Result[Any]:
    """One handle for many: its value is the list of the members' values, in the order given
    (typed as a tuple for up to five members, as ``asyncio.gather`` is).

    Members may be handles, ``concurrent.futures``/asyncio futures, coroutines (spawned) or other
    awaitables, of any kinds of work mixed. The handle is awaitable and ``get()``-able.

    - The first member to fail (or be revoked) ends the gather with that error, and the others are
      cancelled; with ``return_exceptions=True`` every member runs to its end and the list holds
      each one's value or exception (a ``concurrent.futures.CancelledError`` for a revoked one).
    - Cancelling the gather cancels every member that has not finished.
    """
    handles = [_as_handle(m) for m in _members(members, "gather")]
    out: Result[list[Any]] = Owned()
    out._setup(f"gather of {len(handles)}")
    out._set_started()
    if not handles:
        out._set_result([])
        return out
    lock = threading.Lock()
    left = [len(handles)]

    def member_done(h: Result[Any]) -> None:
        failure = h._failure()  # read here: the gather carries it on
        if failure is not None and not return_exceptions:
            st, value, tb = failure
            if st is REVOKED:
                out._set_cancelled()
            else:
                out._fail_as(value, tb)
            for other in handles:
                other.cancel()
            return
        with lock:
            left[0] -= 1
            finished = left[0] == 0
        if finished:  # each member's value, or with return_exceptions its exception
            out._set_result(outcomes(handles))

    out._on_cancel(lambda: [m.cancel() for m in handles])
    for h in handles:
        h._register(member_done)
    return out


# -- wait ----------------------------------------------------------------------------------------


def wait(
    handles: Iterable[T], timeout: float | None = None, return_when: str = ALL_COMPLETED
) -> Result[tuple[set[T], set[T]]]:
    """A handle whose value is ``(done, pending)``, two sets of the objects given, once
    ``return_when`` holds or ``timeout`` seconds have passed (then with the sets as they are).

    As ``concurrent.futures.wait``: ``FIRST_COMPLETED``, ``FIRST_EXCEPTION`` (a member that failed;
    if none fails, when all are done) or ``ALL_COMPLETED``. ``await`` it or ``.get()`` it. It never
    cancels the members; cancelling it only stops the waiting.
    """
    originals = _members(handles, "wait", unique=True)  # cf.wait takes a set: duplicates count once
    if return_when not in (FIRST_COMPLETED, FIRST_EXCEPTION, ALL_COMPLETED):
        close_coroutines(*originals)
        raise ValueError(
            f"return_when must be FIRST_COMPLETED, FIRST_EXCEPTION or ALL_COMPLETED, not {return_when!r}"
        )
    try:
        limit = check_timeout(timeout)
    except (TypeError, ValueError):
        close_coroutines(*originals)
        raise
    pairs = [(o, _as_handle(o)) for o in originals]
    out: Result[tuple[set[Any], set[Any]]] = Owned()
    out._setup(f"wait for {len(pairs)}")
    out._set_started()
    lock = threading.Lock()
    done: set[Any] = set()

    def snapshot() -> tuple[set[Any], set[Any]]:
        with lock:
            finished = set(done)
        return finished, {o for o, _ in pairs if o not in finished}

    def settle() -> None:
        out._set_result(snapshot())

    def member_done(original: Any, h: Result[Any]) -> None:
        with lock:
            done.add(original)
            count = len(done)
        if (
            return_when == FIRST_COMPLETED
            or count == len(pairs)
            or (return_when == FIRST_EXCEPTION and h.failed())
        ):
            settle()

    if not pairs:
        settle()
        return out
    for original, h in pairs:
        h._register(functools.partial(member_done, original))
    if limit is not None and not out.done():
        if limit == 0:
            settle()
        else:
            cancel_timer = _schedule(limit, settle)
            out.add_done_callback(lambda _: cancel_timer())
    out._on_cancel(out._set_cancelled)  # nothing runs on its behalf: stopping the wait is all
    return out


# -- race ----------------------------------------------------------------------------------------


@overload
def race(m1: Member[T1], /) -> Result[T1]: ...
@overload
def race(m1: Member[T1], m2: Member[T2], /) -> Result[T1 | T2]: ...
@overload
def race(m1: Member[T1], m2: Member[T2], m3: Member[T3], /) -> Result[T1 | T2 | T3]: ...
@overload
def race(m1: Member[T1], m2: Member[T2], m3: Member[T3], m4: Member[T4], /) -> Result[T1 | T2 | T3 | T4]: ...
@overload
def race(*members: Member[T]) -> Result[T]: ...
def race(*members: Any) -> Result[Any]:
    """The first member to succeed wins: its value is the race's; the others are cancelled.

    If every member fails (or is revoked), the race fails with an ``ExceptionGroup`` of their errors,
    in the order given. Cancelling the race cancels every member.
    """
    if not members:
        raise ValueError("race() needs at least one member")
    handles = [_as_handle(m) for m in _members(members, "race")]
    out: Result[Any] = Owned()
    out._setup(f"race of {len(handles)}")
    out._set_started()
    lock = threading.Lock()
    left = [len(handles)]

    def member_done(h: Result[Any]) -> None:
        st, value, _ = h._ended()
        if st is SUCCESS:
            if out._set_result(value):
                for other in handles:
                    if other is not h:
                        other.cancel()
            return
        with lock:
            left[0] -= 1
            lost = left[0] == 0
        if lost:
            errors = [e for e in (_outcome_of(m) for m in handles) if e is not None]
            # an ExceptionGroup, unless a member ended with a BaseException (KeyboardInterrupt...)
            group = BaseExceptionGroup(f"all {len(handles)} members of the race failed", errors)
            if out._cancel_requested:
                out._set_cancelled()
            else:
                out._set_exception(group)

    out._on_cancel(lambda: [m.cancel() for m in handles])
    for h in handles:
        h._register(member_done)
    return out


# -- as_completed --------------------------------------------------------------------------------


class as_completed(Generic[T]):  # used as a function: for h in as_completed(...)
    """Iterate over the given objects as they finish, with ``for`` (blocking) or ``async for``.

    Yields the objects given (handles, futures), each once, in the order they finish; a coroutine or
    other awaitable given is spawned and its handle yielded. With ``timeout``, raises the builtin
    ``TimeoutError`` if that many seconds pass (from the call) before every one has finished. It
    never cancels the members.
    """

    # What it yields, for the type checker: the handles and futures given, and a handle for each
    # coroutine (which it spawns). Handles of different value types join as Result[Any].
    @overload
    def __init__(
        self: as_completed[Result[U]], handles: Iterable[Result[U]], timeout: float | None = None
    ) -> None: ...
    @overload
    def __init__(
        self: as_completed[Result[U]], handles: Iterable[Coroutine[Any, Any, U]], timeout: float | None = None
    ) -> None: ...
    @overload
    def __init__(
        self: as_completed[Result[Any]], handles: Iterable[Result[Any]], timeout: float | None = None
    ) -> None: ...
    @overload
    def __init__(self, handles: Iterable[T], timeout: float | None = None) -> None: ...
    def __init__(self, handles: Iterable[Any], timeout: float | None = None) -> None:
        originals = _members(handles, "as_completed", unique=True)
        try:
            self._limit = check_timeout(timeout)
        except (TypeError, ValueError):
            close_coroutines(*originals)
            raise
        self._deadline = None if self._limit is None else time.monotonic() + self._limit
        self._left = len(originals)
        self._lock = threading.Lock()
        self._ready: collections.deque[Any] = collections.deque()
        self._signal: Result[None] | None = None  # set when something is ready for a waiting reader
        # One waiter for every member, on each member's waiter list as cf.as_completed does (a
        # done-callback costs a tuple per member, and a partial per member would make 100,000
        # objects the cyclic GC keeps scanning); the few members that are not handles map back to
        # the object given.
        self._given: dict[Result[Any], Any] = {}
        self._unfinished: set[Result[Any]] = set()  # to detach from if the iteration stops early
        # Members hold this iterator only weakly: one abandoned mid-way is freed, not fed for ever.
        push = self._push_ref = _WeakPush(self)
        for original in originals:
            h = _as_handle(original)
            if h is not original and isinstance(original, cf.Future | asyncio.Future):
                self._given[h] = original
            self._unfinished.add(h)
            h._sync()  # a lazily bound member binds now, so that its end is reported
            if not h._add_waiter(push):  # already done
                push(h)

    def _push(self, h: Result[Any]) -> None:
        item = self._given.pop(h, h) if self._given else h
        with self._lock:
            self._unfinished.discard(h)
            self._ready.append(item)
            signal, self._signal = self._signal, None
        if signal is not None:
            signal._set_result(None)

    def _signal_unless_ready(self) -> Result[None] | None:
        """None if an item is ready (take it with _pop), else a handle that ends when one is."""
        with self._lock:
            if self._ready:
                return None
            if self._signal is None:
                self._signal = Result()
            return self._signal

    def _pop(self) -> Any:
        with self._lock:
            self._left -= 1
            return self._ready.popleft()

    def _remaining(self) -> float | None:
        return None if self._deadline is None else self._deadline - time.monotonic()

    def _timed_out(self) -> TimeoutError:
        limit = format_seconds(self._limit or 0.0)
        return TimeoutError(f"{self._left} of the objects given to as_completed() did not finish in {limit}")

    # The loops below never keep an item in a local variable: a handle yielded and dropped by the
    # caller must be freed then, not when the iteration moves on (CPython bpo-14406).

    def _detach(self) -> None:
        """The iteration stopped (done, timed out, abandoned): stop collecting what finishes later,
        which would keep it alive for nothing."""
        with self._lock:
            unfinished, self._unfinished = self._unfinished, set()
            self._ready.clear()
            self._given.clear()
        for h in unfinished:
            h._remove_waiter(self._push_ref)

    def __iter__(self) -> Iterator[T]:
        try:
            while self._left:
                signal = self._signal_unless_ready()
                if signal is None:
                    yield self._pop()
                    continue
                remaining = self._remaining()
                if remaining is not None and remaining <= 0:
                    raise self._timed_out()
                signal.wait(remaining)
                del signal
        finally:
            self._detach()

    def __aiter__(self) -> AsyncIterator[T]:
        return _AsyncAsCompleted(self)

    async def _anext(self) -> T:
        try:
            while True:
                if not self._left:
                    raise StopAsyncIteration
                signal = self._signal_unless_ready()
                if signal is None:
                    return self._pop()  # type: ignore[no-any-return]
                remaining = self._remaining()
                if remaining is not None and remaining <= 0:
                    raise self._timed_out()
                if remaining is None:
                    await shield(signal)
                else:
                    await wait([signal], timeout=remaining)  # the signal ends, or the deadline comes
                del signal
        except BaseException as exc:
            if not isinstance(exc, asyncio.CancelledError):  # a cancelled reader may come back
                self._detach()
            raise


class _WeakPush:
    __slots__ = ("_ref",)

    def __init__(self, it: as_completed[Any]) -> None:
        self._ref = weakref.ref(it)

    def __call__(self, h: Result[Any]) -> None:
        it = self._ref()
        if it is not None:
            it._push(h)

    # cf's waiter protocol: called by the member as it ends, in the thread that ends it.
    add_result = add_exception = add_cancelled = __call__


class _AsyncAsCompleted(Generic[T]):
    """``async for`` over :class:`as_completed`: a plain async iterator (not an async generator), so
    one left mid-way needs no ``aclose()``."""

    __slots__ = ("_it",)

    def __init__(self, it: as_completed[T]) -> None:
        self._it = it

    def __aiter__(self) -> _AsyncAsCompleted[T]:
        return self

    async def __anext__(self) -> T:
        return await self._it._anext()


# -- then ----------------------------------------------------------------------------------------


def then(source: Result[T], fn: Callable[[T], U] | Callable[[T], Coroutine[Any, Any, U]]) -> Result[U]:
    """A handle for ``fn(value)`` once ``source`` succeeds: see :meth:`Result.then`."""
    callable_arg(fn, "then")
    out: Result[U] = Owned()
    out._setup(f"then {getattr(fn, '__qualname__', '?')}()")
    step: list[Result[Any]] = []

    def source_done(h: Result[T]) -> None:
        st, value, tb = h._ended()
        if st is not SUCCESS:
            if st is REVOKED:
                out._set_cancelled()
            else:
                out._fail_as(value, tb)
            return
        if out._cancel_requested:
            out._set_cancelled()
            return
        out._set_started()  # the step begins now
        if inspect.iscoroutinefunction(fn):
            nxt: Result[Any] = spawn(fn(value))
        else:
            nxt = run_in_thread(fn, value)  # never on a loop thread: fn may block
        step.append(nxt)
        nxt.add_done_callback(out._adopt)

    def cancel() -> None:
        if not source.done():
            source.cancel()
        for s in step:
            s.cancel()

    out._on_cancel(cancel)
    source.add_done_callback(source_done)
    return out


install_then(then)
