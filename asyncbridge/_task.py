"""``@task``: Celery's shape for local engines, and the one door for per-call options.

A task call (``delay``) returns one handle that lives across every attempt. Each attempt runs on the
engine as an *inner* handle made by the ordinary adapters (thread pool, process pool, coroutine,
executor); a small job object binds the two:

- the inner handle's STARTED and PROGRESS moves are mirrored on the task's handle;
- its end decides: success or revocation ends the task's handle; a failure either ends it too or,
  under a :class:`Retry` policy, moves it to RETRY and starts the next attempt after the backoff;
- ``cancel()`` on the task's handle cancels the running attempt (or the pending retry).

So no engine grows retry or timeout logic of its own, and the waiting, callbacks and cancellation
stay those of the one handle.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextvars
import importlib
import inspect
import pickle
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Literal, ParamSpec, Protocol, TypeVar, cast, overload

from . import _registry as registry
from ._asyncio import BACKGROUND, check_time_limit, start_coroutine
from ._errors import close_coroutines
from ._process import ProcessPool, _unpicklable, shared_pool
from ._result import Owned, Result
from ._state import PENDING, PROGRESS, REVOKED, STARTED, SUCCESS
from ._store import ResultStore, store_arguments
from ._threads import POOL
from ._validate import seconds
from ._wrap import wrap

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine, Mapping

    from celery.app.task import Task as CeleryTask
    from celery.canvas import Signature

    from ._registry import Adapter, RemoteTask

P = ParamSpec("P")
T = TypeVar("T")


class CeleryApp(Protocol):
    """What ``engine=`` needs of a Celery application (``celery.Celery`` is one)."""

    def send_task(self, name: str, *args: Any, **kwargs: Any) -> Any: ...


#: ``"auto"``, ``"thread"``, ``"process"``, an executor, or the engine of an adapter (a Celery app,
#: a Dask client, an extension's own): the last are checked when the task is defined, not by type.
Engine = Literal["auto", "thread", "process"] | cf.Executor | CeleryApp | object


@dataclass(frozen=True, slots=True)
class Retry:
    """A retry policy: up to ``attempts`` attempts in all, retrying on the exceptions in ``on``.

    The delay before attempt n+1 is ``backoff * 2 ** (n - 1)`` seconds (0, the default: at once).
    Between attempts the handle shows RETRY with the last error as ``info``; the handle and its id
    stay the same; after the last attempt it ends with the last error. A cancelled or timed-out
    attempt is not retried unless ``on`` names :class:`asyncbridge.TimeLimitExceeded`.
    """

    attempts: int = 3
    backoff: float = 0.0
    on: type[BaseException] | tuple[type[BaseException], ...] = (Exception,)

    def __post_init__(self) -> None:
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int) or self.attempts < 1:
            raise ValueError(f"Retry(attempts=) must be an int >= 1, not {self.attempts!r}")
        seconds(self.backoff, "Retry(backoff=)")
        on = self.on
        if isinstance(on, type):
            on = (on,)
            object.__setattr__(self, "on", on)
        if (
            not isinstance(on, tuple)
            or not on
            or not all(isinstance(c, type) and issubclass(c, BaseException) for c in on)
        ):
            raise TypeError(f"Retry(on=) must be an exception class or a tuple of them, not {self.on!r}")

    def delay_before(self, attempt: int) -> float:
        """Seconds to wait before attempt number ``attempt`` (2 or more), at most ``TIMEOUT_MAX``."""
        if not self.backoff:
            return 0.0
        doublings = attempt - 2
        if doublings >= 64:  # past any useful delay; and 2.0 ** 1100 would overflow
            return threading.TIMEOUT_MAX
        return float(min(self.backoff * 2**doublings, threading.TIMEOUT_MAX))


class _TaskBase(Generic[P, T]):
    """What every task shares: its function, engine, options and name, ``delay()`` and Celery's
    calling shapes (``apply_async()``; ``s()``, ``si()`` and ``celery_task`` with a Celery engine)."""

    #: The task's name. With a Celery engine: the name it is registered under in the app (the
    #: ``name=`` given, else Celery's own rule: ``module.__name__``, the app's main name standing for
    #: ``__main__``); a worker finds the task by it. Otherwise: the ``name=`` given, else
    #: ``module.qualname``; it labels the task's handles.
    name: str

    def __init__(
        self,
        fn: Callable[..., Any],
        engine: Engine,
        timeout: float | None,
        retry: Retry | None,
        name: str | None = None,
        store: ResultStore | None = None,
        expires: float | None = None,
    ) -> None:
        # A task stands for its function: same name, module and docstring (functools.wraps would do,
        # but mypy cannot type it on an instance).
        self.__module__ = fn.__module__
        self.__name__ = getattr(fn, "__name__", type(fn).__name__)
        self.__qualname__ = getattr(fn, "__qualname__", self.__name__)
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn
        self.fn = fn
        self.engine: Engine = engine
        self.timeout = timeout
        self.retry = retry
        self.store = store  # each call's handle is recorded there (ResultStore.track)
        self.expires = expires
        self._is_async = inspect.iscoroutinefunction(fn)
        # On an engine of an adapter (a Celery app, a Dask client), the engine's own task, bound once
        self._remote: RemoteTask | None = None
        adapter = _adapter_of(engine)
        if adapter is not None and adapter.bind_task is not None:
            self._remote = adapter.bind_task(self, engine, name)
            self.name = self._remote.name
        else:
            self.name = name if name is not None else f"{self.__module__}.{self.__qualname__}"
        self._label_prefix = (
            "coroutine" if self._is_async else _engine_name("thread" if engine == "auto" else engine)
        )
        self._label_name = name if name is not None else self.__qualname__

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> Result[T]:
        """Run the task on its engine with these arguments; return its handle at once.

        The handle is PENDING until an attempt really starts, then STARTED (PROGRESS while the work
        reports), RETRY between attempts, and finally SUCCESS, FAILURE or REVOKED. ``cancel()`` stops
        the running attempt as its engine allows (see the README's cancellation table) or drops a
        pending retry. Arguments for the process engine are pickled here: an unpicklable one raises
        ``TypeError`` at once.
        """
        return self._start(args, kwargs, {})

    def apply_async(
        self,
        args: tuple[Any, ...] | list[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Result[T]:
        """Celery's calling shape: ``t.apply_async(args, kwargs)`` is ``t.delay(*args, **kwargs)``.

        With a Celery engine, ``options`` go to Celery's ``Task.apply_async`` as they are
        (``countdown``, ``eta``, ``expires``, ``queue``, ``priority``, ``task_id``, ...) and the handle
        follows the task sent; a ``task_id`` the result backend cannot key raises ``ValueError``
        before anything is sent. The arguments are not checked against the function's signature
        here (they are in ``delay()``, by the type checker).

        Raises:
            TypeError: an option on a local engine, where none applies; an argument the engine
                cannot carry (as ``delay()``).
        """
        if options and self._remote is None:
            given = ", ".join(f"{k}=" for k in options)
            raise TypeError(f"{given} needs a Celery engine; {self!r} runs locally, where no option applies")
        return self._start(tuple(args or ()), dict(kwargs or {}), options)

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        """Celery's signature of a call of this task (``celery.signature``), for ``chain``, ``group``,
        ``chord`` and ``|``. Partial as Celery's: in a chain, the previous task's result comes first.
        ``ab.wrap()`` takes what the canvas returns when applied.

        Raises:
            TypeError: the task does not run on a Celery engine.
        """
        return self._signature(args, kwargs, immutable=False)

    def si(self, *args: P.args, **kwargs: P.kwargs) -> Signature:
        """Celery's immutable signature of this call: in a chain it ignores the previous result, so
        its arguments are the whole call.

        Raises:
            TypeError: the task does not run on a Celery engine.
        """
        return self._signature(args, kwargs, immutable=True)

    def _signature(self, args: tuple[Any, ...], kwargs: dict[str, Any], *, immutable: bool) -> Signature:
        if self._remote is None:
            raise TypeError(
                f"{self!r} is not a Celery task: celery_task, s() and si() need a Celery engine "
                "(@task(engine=app))"
            )
        return cast("Signature", self._remote.signature(args, kwargs, immutable=immutable))

    @property
    def celery_task(self) -> CeleryTask:
        """The Celery task registered for this one (``app.tasks[t.name]``), for what Celery offers
        beyond this class: ``map``, ``chunks``, ``signature(options)``, its own ``apply_async``
        returning Celery's ``AsyncResult``, and its settings.

        Raises:
            TypeError: the task does not run on a Celery engine.
        """
        remote = self._remote
        if remote is None or remote.engine_name != "celery":
            raise TypeError(
                f"{self!r} is not a Celery task: celery_task, s() and si() need a Celery engine "
                "(@task(engine=app))"
            )
        return remote.native()

    def _start(self, args: tuple[Any, ...], kwargs: dict[str, Any], options: dict[str, Any]) -> Result[T]:
        if self._remote is not None:
            return self._remote.submit(args, kwargs, options)
        h: Result[T] = Owned()
        h._setup(f"{self._label_prefix} {self._label_name}()")
        if self.store is not None:
            self.store.track(h, expires=self.expires)
        _Job(self, h, args, kwargs).start()
        return h

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled by reference, so a process worker finds the same function: a decorated module-level
        # task by its own name; an ad-hoc task (task(...)(f)) as its function f, which must then be
        # importable by name itself.
        try:
            found = _find_task(self.__module__, self.__qualname__)
        except Exception:
            found = None
        if found is self:
            return (_find_task, (self.__module__, self.__qualname__))
        return (_same, (self.fn,))

    def __repr__(self) -> str:
        return f"<asyncbridge task {self.__qualname__} engine={_engine_name(self.engine)}>"


class Task(_TaskBase[P, T]):
    """A function decorated with :func:`task`: call it as before, or ``.delay(...)`` for a handle."""

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> T:
        """Call the function inline, in this thread, with no handle (as the undecorated function)."""
        return self.fn(*args, **kwargs)  # type: ignore[no-any-return]


class AsyncTask(_TaskBase[P, T]):
    """An async function decorated with :func:`task`: calling it gives the coroutine, as before;
    ``.delay(...)`` runs it (as :func:`asyncbridge.spawn` does) and returns its handle."""

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, T]:
        """Make the coroutine, as the undecorated function does."""
        return self.fn(*args, **kwargs)  # type: ignore[no-any-return]


def _find_task(module: str, qualname: str) -> Any:
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _same(fn: Callable[..., Any]) -> Callable[..., Any]:
    return fn


def _engine_name(engine: Engine) -> str:
    adapter = _adapter_of(engine)
    if adapter is not None:
        return f"{adapter.name}:{getattr(engine, 'main', None) or type(engine).__qualname__}"
    return engine if isinstance(engine, str) else type(engine).__qualname__


def _adapter_of(engine: object) -> Adapter | None:
    """The adapter whose engine ``engine`` is (a Celery app...), found through the registry; its
    module is imported only when the engine is an object of its library."""
    if isinstance(engine, str | cf.Executor):
        return None
    found: Adapter | None = registry.find(
        lambda a: a if a.is_engine is not None and a.is_engine(engine) else None, engine
    )
    return found


@overload
def task(fn: Callable[P, Coroutine[Any, Any, T]], /) -> AsyncTask[P, T]: ...  # type: ignore[overload-overlap]
@overload
def task(fn: Callable[P, T], /) -> Task[P, T]: ...
@overload
def task(
    *,
    engine: Engine = "auto",
    timeout: float | None = None,
    retry: Retry | None = None,
    name: str | None = None,
    store: ResultStore | str | bool | None = None,
    expires: float | None = None,
) -> _Decorator: ...


def task(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    engine: Engine = "auto",
    timeout: float | None = None,
    retry: Retry | None = None,
    name: str | None = None,
    store: ResultStore | str | bool | None = None,
    expires: float | None = None,
) -> Any:
    """Turn a function into a task: ``f(...)`` still calls it inline, ``f.delay(...)`` returns a handle.

    Use it bare (``@task``) or with options (``@task(engine="process", timeout=30, retry=Retry())``),
    or ad hoc: ``task(engine="thread", timeout=5)(some_function).delay(x)``.

    Args:
        engine: where the work runs. ``"auto"`` (default): a thread for a sync function, the event
            loop for an async one (as :func:`asyncbridge.spawn`). ``"thread"``: the shared thread
            pool. ``"process"``: the shared process pool (the function must be importable by name:
            a module-level function). A ``concurrent.futures.Executor``: its ``submit()``; an
            :class:`asyncbridge.ProcessPool` keeps every power (cancel and time limits stop the
            work), any other executor can cancel only work it has not started.
        timeout: an execution time limit in seconds, counted from the start of each attempt. When it
            runs out the work is stopped (thread work at its next ``checkpoint()``, process work by
            terminating its worker, a coroutine by cancelling it) and the attempt fails with
            :class:`asyncbridge.TimeLimitExceeded`. Not ``get(timeout=)``, which only stops waiting.
        retry: a :class:`Retry` policy.
        name: the task's name (``t.name``). With a Celery engine, the name it is registered under,
            by which a worker finds it: by default Celery's own rule (``module.__name__``), which
            serves module-level functions and those an app factory defines alike, as long as the
            worker imports the module that registers them; a lambda or a callable without a
            ``__name__`` needs one. On other engines it labels the task's handles (default: the
            function's qualified name).
        store: record each call's result in a :class:`asyncbridge.ResultStore` (or a store URL, or
            True for the default store), so that ``asyncbridge.Result(task_id)`` finds it from any
            process and in later runs (docs/store.md). Not with an engine that keeps results of its
            own (a Celery app).
        expires: seconds after its end that a stored result is removed (default: the store's).

    Raises:
        TypeError: not a function, an async function with a thread or process engine, a name that
            is not a non-empty str, or a lambda without a name for a Celery engine.
        ValueError: a bad timeout, or a timeout on an executor that cannot stop running work.
    """
    limit = check_time_limit(timeout)
    recorded_in, until = store_arguments(store, expires, "the task")
    if recorded_in is not None and _adapter_of(engine):
        raise ValueError(
            f"store= is for work asyncbridge runs; {_engine_name(engine)!r} keeps its results in its own "
            "backend (ab.Result(task_id, app=...) finds them)"
        )
    if retry is not None and not isinstance(retry, Retry):
        raise TypeError(f"retry must be an asyncbridge.Retry, not {type(retry).__qualname__}")
    if name is not None and (not isinstance(name, str) or not name):
        raise TypeError(f"name must be a non-empty str, not {name!r}")
    if not (
        engine in ("auto", "thread", "process") or isinstance(engine, cf.Executor) or _adapter_of(engine)
    ):
        raise ValueError(
            "engine must be 'auto', 'thread', 'process', a concurrent.futures.Executor or the engine of "
            f"an adapter (a Celery app), not {engine!r}"
        )
    if limit is not None and isinstance(engine, cf.Executor) and not isinstance(engine, ProcessPool):
        raise ValueError(
            f"timeout= needs an engine that can stop running work ('thread', 'process', a coroutine or an "
            f"asyncbridge.ProcessPool); {type(engine).__qualname__} cannot"
        )

    def decorate(f: object) -> Any:
        if isinstance(f, _TaskBase):
            f = f.fn
        if not callable(f):
            close_coroutines(f)
            raise TypeError(f"task() needs a function, not {type(f).__qualname__}")
        if inspect.iscoroutinefunction(f):
            if engine != "auto":  # a Celery worker runs plain functions too
                raise TypeError(
                    f"{getattr(f, '__qualname__', repr(f))} is an async function: it runs on an event loop "
                    f"(engine='auto'), not on engine={_engine_name(engine)!r}"
                )
            return AsyncTask(f, engine, limit, retry, name, recorded_in, until)
        return Task(f, engine, limit, retry, name, recorded_in, until)

    return decorate if fn is None else decorate(fn)


class _Decorator(Protocol):
    """The type of ``task(...)`` called with options only: apply it to a function."""

    @overload
    def __call__(self, fn: Callable[P, Coroutine[Any, Any, T]], /) -> AsyncTask[P, T]: ...  # type: ignore[overload-overlap]
    @overload
    def __call__(self, fn: Callable[P, T], /) -> Task[P, T]: ...


class _Job:
    """Runs the attempts of one task call and binds them to its handle."""

    __slots__ = ("args", "ctx", "handle", "inner", "kwargs", "lock", "payload", "retrying", "spec", "timer")

    def __init__(
        self, spec: _TaskBase[Any, Any], handle: Result[Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        self.spec = spec
        self.handle = handle
        self.args = args
        self.kwargs = kwargs
        self.ctx = contextvars.copy_context()
        self.inner: Result[Any] | None = None
        self.timer: tuple[asyncio.AbstractEventLoop, asyncio.TimerHandle] | None = None
        self.retrying = False  # between attempts: the last one failed, the next not yet begun
        self.lock = threading.Lock()
        self.payload: bytes | None = None
        engine = spec.engine
        if not spec._is_async and (engine == "process" or isinstance(engine, ProcessPool)):
            try:  # pickled once, here: a bad argument fails the call, not a later attempt
                self.payload = pickle.dumps((spec, args, kwargs))
            except Exception as exc:
                raise _unpicklable(spec, args, kwargs, exc) from exc

    def start(self) -> None:
        h = self.handle
        h._on_cancel(self._cancel)
        h._bind_source(probe=self._inner_started)
        self._attempt()

    def _inner_started(self, _source: object) -> bool:
        inner = self.inner
        return inner is not None and inner.state is not PENDING

    def _attempt(self) -> None:
        h = self.handle
        with self.lock:
            self.timer = None
            self.retrying = False
            if h.done():
                return
            if h._cancel_requested:
                h._set_cancelled()
                return
            inner: Result[Any] = Owned()
            inner._setup(h._label, time_limit=self.spec.timeout)
            inner._watch(self._mirror)  # before the work can start: no move is missed
            try:
                inner = self._launch(inner)
            except BaseException as exc:
                h._set_exception(exc)
                return
            self.inner = inner
        inner.add_done_callback(self._attempt_done)

    def _launch(self, inner: Result[Any]) -> Result[Any]:
        """Start one attempt for ``inner``; return the handle to follow (the executor's own, there)."""
        spec, engine = self.spec, self.spec.engine
        if spec._is_async:
            self.ctx.copy().run(start_coroutine, inner, spec.fn(*self.args, **self.kwargs))
        elif self.payload is not None:
            pool = engine if isinstance(engine, ProcessPool) else shared_pool()
            pool._enqueue(inner, self.payload)
        elif isinstance(engine, cf.Executor):
            return wrap(engine.submit(cast("Callable[..., Any]", spec), *self.args, **self.kwargs))
        else:
            POOL.submit((inner, self.ctx.copy(), spec.fn, self.args, self.kwargs))
        return inner

    def _mirror(self, _inner: Result[Any], st: Any, info: Any) -> None:
        if st is STARTED:
            self.handle._set_started()
        elif st is PROGRESS:
            self.handle._set_progress(info)

    def _attempt_done(self, inner: Result[Any]) -> None:
        h = self.handle
        st, value, tb = inner._ended()  # a failure is read here: the task's handle carries it on
        if st is SUCCESS:
            h._set_result(value)
            return
        if st is REVOKED:
            h._set_cancelled()
            return
        h._set_started()  # an attempt that failed before it could start did begin (else a no-op)
        retry = self.spec.retry
        if (
            retry is not None
            and h._attempts < retry.attempts
            and isinstance(value, retry.on)
            and not h._cancel_requested
        ):
            with self.lock:
                self.retrying = h._set_retry(value)
            if self.retrying:
                self._schedule(retry.delay_before(h._attempts + 1), inner)
                return
        h._fail_as(value, tb)

    def _schedule(self, delay: float, inner: Result[Any]) -> None:
        if delay <= 0:
            self._attempt()
            return
        # Wait on the attempt's own loop (a coroutine retries where it ran), else the background one.
        loop = inner._loop if isinstance(inner._loop, asyncio.AbstractEventLoop) else BACKGROUND.loop()

        def arm() -> None:
            with self.lock:
                if not self.handle.done():
                    self.timer = (loop, loop.call_later(delay, self._attempt))

        try:
            loop.call_soon_threadsafe(arm)
        except RuntimeError:  # that loop is closed: wait on the background loop instead
            loop = BACKGROUND.loop()
            loop.call_soon_threadsafe(arm)

    def _cancel(self) -> None:
        with self.lock:
            inner, timer, retrying = self.inner, self.timer, self.retrying
            self.timer = None
        if inner is not None and not inner.done():
            inner.cancel()  # the attempt ends REVOKED, and so does the task's handle
        elif retrying:  # between attempts: nothing runs, so it has stopped
            if timer is not None:
                loop, handle = timer
                try:
                    loop.call_soon_threadsafe(handle.cancel)  # TimerHandle.cancel is not thread-safe
                except RuntimeError:
                    pass  # loop closed: the timer will never fire anyway
            self.handle._set_cancelled()
